// Shared by the browser tests: free ports, polling a URL, and Chromium.
import { createServer } from 'node:net';
import { chromium } from 'playwright-core';

export const root = new URL('../..', import.meta.url).pathname;
export const targetDir = process.env.CARGO_TARGET_DIR ?? `${root}target`;
export const pg = process.env.TEST_DATABASE_URL ?? 'postgres://postgres@127.0.0.1:5432';

export function freePort() {
  return new Promise((resolve) => {
    const srv = createServer();
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

/** Resolves once `url` answers 2xx, or fails after `deadlineMs`. */
export async function waitFor(url, deadlineMs) {
  const deadline = Date.now() + deadlineMs;
  while (Date.now() < deadline) {
    try {
      const res = await fetch(url);
      if (res.ok) return;
    } catch {}
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error(`${url} did not answer within ${deadlineMs} ms`);
}

/** Debian's Chromium, headless, with no network of its own beyond what a page asks for. */
export function launchChromium(extraArgs = []) {
  return chromium.launch({
    executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium',
    args: [
      '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync',
      ...extraArgs,
    ],
  });
}

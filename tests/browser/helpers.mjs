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

/** Waits until `check()` is truthy, polling, or fails after `deadlineMs` naming `what`. */
export async function until(what, check, deadlineMs = 10000) {
  const deadline = Date.now() + deadlineMs;
  for (;;) {
    const value = await check();
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`timed out after ${deadlineMs} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** A page that records what it logs as an error and every API call it makes. */
export async function watchedPage(context, errors, apiCalls = []) {
  const page = await context.newPage();
  page.on('console', (m) => { if (m.type() === 'error') errors.push(`${page.url()}: ${m.text()}`); });
  page.on('pageerror', (e) => errors.push(`${page.url()}: ${e.message}`));
  page.on('requestfailed', (r) => errors.push(`${r.url()} failed: ${r.failure()?.errorText}`));
  page.on('request', (r) => { if (new URL(r.url()).pathname.startsWith('/v1/')) apiCalls.push(r.url()); });
  return page;
}

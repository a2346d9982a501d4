// Shared by the browser tests: free ports, polling, Chromium, and the whole system started.
import { createServer } from 'node:net';
import { chromium } from 'playwright-core';
import { spawn, execFileSync } from 'node:child_process';

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

/**
 * The whole system as `make run` configures it (deploy/config/local.toml, the dev keys), on
 * ports, a database and broker names of `name`'s own: migrated and seeded, then the provider
 * emulator, the workers and the gateway started and ready. `stop()` ends them and removes the
 * database and the broker names.
 */
export async function startSystem(name) {
  const bin = `${targetDir}/debug`;
  const db = `ml_${name}_${process.pid}_${Date.now()}`;
  const [port, emulatorPort, workerMetrics, relayMetrics] = await Promise.all([freePort(), freePort(), freePort(), freePort()]);
  const base = `http://127.0.0.1:${port}`;
  const emulator = `http://127.0.0.1:${emulatorPort}`;
  execFileSync('psql', [`${pg}/postgres`, '-qc', `CREATE DATABASE ${db}`]);
  const env = {
    ...process.env,
    MEMBERLINE_CONFIG_DIR: `${root}deploy/config`,
    MEMBERLINE_ENV: 'local',
    MEMBERLINE__DATABASE__URL: `${pg}/${db}`,
    MEMBERLINE__HTTP__PORT: String(port),
    MEMBERLINE__AMQP__PREFIX: `${name}${process.pid}`,
    MEMBERLINE__WORKERS__METRICS_ADDR: `127.0.0.1:${workerMetrics}`,
    MEMBERLINE__RELAY__METRICS_ADDR: `127.0.0.1:${relayMetrics}`,
    MEMBERLINE__PAYMENTS__WECHAT__BASE_URL: emulator,
    MEMBERLINE__PAYMENTS__WECHAT__NOTIFY_URL: `${base}/v1/payments/wechat/notify`,
    MEMBERLINE__PAYMENTS__ALIPAY__GATEWAY_URL: `${emulator}/gateway.do`,
    MEMBERLINE__PAYMENTS__ALIPAY__NOTIFY_URL: `${base}/v1/payments/alipay/notify`,
    MEMBERLINE__PAYMENTS__WECHAT__LOGIN_BASE_URL: emulator,
    MEMBERLINE__PAYMENTS__PUBLIC_URL: base,
    MEMBERLINE__LOG__FILTER: 'warn',
    RUST_LOG: 'warn',
  };
  const processes = [];
  const start = (program, args) => {
    processes.push(spawn(`${bin}/${program}`, args, { env, cwd: root, stdio: ['ignore', 'ignore', 'inherit'] }));
  };
  const system = {
    base,
    emulator,
    dbUrl: `${pg}/${db}`,
    /** Runs `memberline args` (with `input` on standard input): what it printed. */
    memberline(args, input) {
      return execFileSync(`${bin}/memberline`, args, { env, cwd: root, input }).toString().trim();
    },
    /** A JSON request with a bearer token: `{status, body}`. */
    async api(method, path, bearer, body, headers = {}) {
      const res = await fetch(`${base}${path}`, {
        method,
        headers: { Authorization: `Bearer ${bearer}`, 'Content-Type': 'application/json', ...headers },
        body: body === undefined ? undefined : JSON.stringify(body),
      });
      return { status: res.status, body: await res.json().catch(() => null) };
    },
    async stop() {
      await Promise.all(processes.map((p) => new Promise((resolve) => {
        if (p.exitCode !== null) return resolve();
        p.once('exit', resolve);
        p.kill('SIGTERM');
      })));
      try {
        execFileSync('psql', [`${pg}/postgres`, '-qc', `DROP DATABASE IF EXISTS ${db} WITH (FORCE)`]);
      } catch {}
      try {
        execFileSync(`${bin}/delete-topology`, [], { env, cwd: root, stdio: 'ignore' });
      } catch {}
    },
  };
  system.memberline(['migrate', 'up']);
  system.memberline(['seed']);
  start('provider-emulator', ['--listen', `127.0.0.1:${emulatorPort}`, '--keys', 'deploy/dev-keys']);
  start('memberline-workers', []);
  start('memberline', ['serve']);
  await Promise.all([
    waitFor(`${base}/readyz`, 60000),
    waitFor(`http://127.0.0.1:${workerMetrics}/readyz`, 60000),
    waitFor(`${emulator}/emulator/healthz`, 60000),
  ]);
  return system;
}

// The API docs page, rendered from /openapi.json in a real (headless) Chromium.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, execFileSync } from 'node:child_process';
import { createServer } from 'node:net';
import { chromium } from 'playwright-core';

const root = new URL('../..', import.meta.url).pathname;
const targetDir = process.env.CARGO_TARGET_DIR ?? `${root}target`;
const bin = `${targetDir}/debug/memberline`;
const pg = process.env.TEST_DATABASE_URL ?? 'postgres://postgres@127.0.0.1:5432';
const db = `ml_browser_${process.pid}_${Date.now()}`;
let gateway;
let browser;
let base;

function freePort() {
  return new Promise((resolve) => {
    const srv = createServer();
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

async function waitFor(url, deadlineMs) {
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

before(async () => {
  const port = await freePort();
  base = `http://127.0.0.1:${port}`;
  execFileSync('psql', [`${pg}/postgres`, '-qc', `CREATE DATABASE ${db}`]);
  const env = {
    ...process.env,
    MEMBERLINE_CONFIG_DIR: '/nonexistent',
    MEMBERLINE__DATABASE__URL: `${pg}/${db}`,
    MEMBERLINE__HTTP__PORT: String(port),
    MEMBERLINE__RELAY__EMBEDDED: 'false',
    MEMBERLINE__LOG__FILTER: 'warn',
    // No secret is compiled in; a test-only one (this test mints no tokens).
    MEMBERLINE__AUTH__JWT_SECRET: `browser-test-secret-${process.pid}-0123456789abcdef`,
  };
  execFileSync(bin, ['migrate', 'up'], { env, stdio: 'ignore' });
  execFileSync(bin, ['seed'], { env, stdio: 'ignore' });
  gateway = spawn(bin, ['serve'], { env, stdio: 'ignore' });
  await waitFor(`${base}/healthz`, 30000);
  browser = await chromium.launch({
    executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium',
    args: [
      '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync',
    ],
  });
});

after(async () => {
  await browser?.close();
  gateway?.kill('SIGTERM');
  try {
    execFileSync('psql', [`${pg}/postgres`, '-qc', `DROP DATABASE IF EXISTS ${db} WITH (FORCE)`]);
  } catch {}
});

test('the API docs page lists every operation and shows its responses when opened', async () => {
  const page = await browser.newPage();
  const failed = [];
  page.on('requestfailed', (r) => failed.push(r.url()));
  await page.goto(`${base}/docs`);
  await page.waitForSelector('details.op');
  const ops = await page.$$eval('details.op', (els) =>
    els.map((e) => `${e.dataset.method.toUpperCase()} ${e.dataset.path}`));
  for (const op of ['GET /v1/plans', 'POST /v1/orders', 'GET /v1/orders/{id}', 'GET /v1/me', 'POST /v1/admin/users']) {
    assert.ok(ops.includes(op), `${op} is listed (got ${ops.join(', ')})`);
  }
  const order = page.locator('details.op[data-method="post"][data-path="/v1/orders"]');
  await order.locator('summary').click();
  const rows = await order.locator('tr.response td:first-child').allTextContents();
  assert.deepEqual(rows.slice(0, 3), ['201', '400', '401']);
  assert.ok(rows.includes('422'));
  assert.match(await order.textContent(), /insufficient_points/);
  assert.equal(await page.textContent('#error'), '');
  assert.deepEqual(failed, [], 'the page loads nothing from outside');
  await page.screenshot({ path: `${root}target/docs-page.png`, fullPage: false });
});

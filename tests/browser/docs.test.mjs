// The API docs page, rendered from /openapi.json in a real (headless) Chromium.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, execFileSync } from 'node:child_process';
import { freePort, launchChromium, pg, root, targetDir, waitFor } from './helpers.mjs';

const bin = `${targetDir}/debug/memberline`;
const db = `ml_browser_${process.pid}_${Date.now()}`;
let gateway;
let browser;
let base;

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
  browser = await launchChromium();
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

// /console's back office in a real (headless) Chromium, against the whole system: staff made
// with `memberline staff add`, signing in with a username and password, the catalogue edited,
// a buyer paying on /vip at the new price, a refund with its confirmation, the dashboard
// against the API, and a merchant's read-only console.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync, readFileSync } from 'node:fs';
import { launchChromium, root, startSystem, until, watchedPage } from './helpers.mjs';

const screenshots = `${root}tests/browser/screenshots`;
const ADMIN = { username: 'ops-admin', password: 'admin-password-for-tests' };
const MERCHANT = { username: 'shop-merchant', password: 'merchant-password-for-tests' };
const NEW_PRICE_FEN = 2580;
let system;
let browser;
let base;

/** What the tests share, in their order: the admin's page and token, the buyer, the order. */
const shared = {};

function memberline(args, input) {
  return system.memberline(args, input);
}

function api(...args) {
  return system.api(...args);
}

/** Integer fen as the pages show it: 2580 → "¥25.80". */
function yuan(fen) {
  const sign = fen < 0 ? '-' : '';
  const abs = Math.abs(fen);
  return `${sign}¥${Math.floor(abs / 100)}.${String(abs % 100).padStart(2, '0')}`;
}

before(async () => {
  system = await startSystem('backoffice');
  base = system.base;
  // Staff as an operator makes them: the password on standard input.
  memberline(['staff', 'add', '--username', ADMIN.username, '--role', 'admin'], `${ADMIN.password}\n`);
  memberline(['staff', 'add', '--username', MERCHANT.username, '--role', 'merchant'], `${MERCHANT.password}\n`);
  browser = await launchChromium();
});

after(async () => {
  await browser?.close();
  await system?.stop();
});

/** Signs `who` in on a fresh /console page; the page, once the back office shows. */
async function signIn(context, who, errors) {
  const page = await watchedPage(context, errors);
  await page.goto(`${base}/console`);
  await page.fill('#username', who.username);
  await page.fill('#password', who.password);
  await page.click('#signin button[type=submit]');
  await page.waitForSelector('#tabs', { state: 'visible', timeout: 30000 });
  await page.waitForFunction((name) => document.querySelector('#who').textContent.includes(name), who.username);
  return page;
}

async function openTab(page, name) {
  await page.click(`#tabs [data-tab="${name}"]`);
  await page.waitForSelector(`#tab-${name}`, { state: 'visible' });
}

/** The buttons on the page (dialogs included) whose words would change something. */
function editControls(page) {
  return page.evaluate(() => {
    const words = /Refund|Grant|Revoke|Adjust|Edit|New plan|New level|Delete|Archive|Save|Create/;
    const buttons = [...document.querySelectorAll('button')].filter((b) => words.test(b.textContent));
    return {
      marked: document.querySelectorAll('[data-admin]').length,
      buttons: buttons.map((b) => b.textContent.trim()),
      dialogForm: document.querySelectorAll('#dialog form').length,
    };
  });
}

test('an admin signs in with a username and password, changes the monthly plan\'s price, and a buyer pays the new price on /vip', async () => {
  const errors = [];
  const context = await browser.newContext();
  // A wrong password is refused on the form, and the page stays signed out.
  const page = await watchedPage(context, errors);
  await page.goto(`${base}/console`);
  await page.fill('#username', ADMIN.username);
  await page.fill('#password', 'not-the-password');
  await page.click('#signin button[type=submit]');
  await page.waitForFunction(() => /Wrong username or password/.test(document.querySelector('#signin .error').textContent),
    null, { timeout: 30000 });
  assert.equal(await page.isHidden('#app'), true);
  // A refused sign-in is a 401 the browser logs; it is expected here.
  errors.length = 0;
  await page.close();

  const admin = await signIn(context, ADMIN, errors);
  assert.match(await admin.textContent('#who'), /ops-admin · 管理员 Admin/);
  assert.equal(await admin.getAttribute('#who', 'data-role'), 'admin');
  const adminToken = await admin.evaluate(() => localStorage.getItem('memberline.console.token'));
  shared.adminContext = context;
  shared.admin = admin;
  shared.adminToken = adminToken;
  shared.errors = errors;

  // The Plans tab: the monthly plan at its seeded price, then edited to the new one.
  await openTab(admin, 'plans');
  const monthly = '#bo-plans tr[data-plan="monthly"]';
  await admin.waitForSelector(`${monthly} button.edit`);
  assert.equal(await admin.textContent(`${monthly} .price`), '¥30.00');
  await admin.click(`${monthly} button.edit`);
  await admin.waitForSelector('#dialog[open] [name=price]');
  assert.equal(await admin.inputValue('#dialog [name=price]'), '30.00');
  // Three decimals are not yuan: refused on the form.
  await admin.fill('#dialog [name=price]', '25.805');
  await admin.click('#dialog-ok');
  await admin.waitForFunction(() => /Price/.test(document.querySelector('#dialog-error').textContent));
  const patches = [];
  admin.on('request', (r) => { if (r.method() === 'PATCH') patches.push(r.postDataJSON()); });
  await admin.fill('#dialog [name=price]', '25.80');
  await admin.click('#dialog-ok');
  await admin.waitForSelector('#dialog', { state: 'hidden' });
  await admin.waitForFunction((sel) => document.querySelector(sel)?.textContent === '¥25.80', `${monthly} .price`);
  assert.deepEqual(patches, [{ price_fen: NEW_PRICE_FEN }], 'only the changed field is sent, in integer fen');
  const plans = await api('GET', '/v1/admin/plans', adminToken);
  const plan = plans.body.plans.find((p) => p.code === 'monthly');
  assert.equal(plan.price_fen, NEW_PRICE_FEN);
  assert.equal(plan.original_price_fen, 3800, 'the other prices stay');
  assert.equal(plan.price_points, 3000);
  shared.monthly = plan;

  // A new buyer (a Regular member: no level discount) with a balance.
  const created = await api('POST', '/v1/admin/users', adminToken, { name: 'Back-office buyer', balance_fen: 100000, points: 0 });
  assert.equal(created.status, 201, JSON.stringify(created.body));
  const buyerId = created.body.id;
  const buyerToken = memberline(['token', '--user', String(buyerId), '--role', 'user']);
  shared.buyerId = buyerId;
  shared.buyerToken = buyerToken;

  const buyerContext = await browser.newContext();
  const vip = await watchedPage(buyerContext, errors);
  await vip.goto(`${base}/vip`);
  await vip.fill('#token', buyerToken);
  await vip.click('#signin button[type=submit]');
  await vip.waitForSelector('[data-plan="monthly"] button[data-method="balance"]');
  assert.match(await vip.textContent('[data-plan="monthly"] .price'), /^¥25\.80/);
  await vip.click('[data-plan="monthly"] button[data-method="balance"]');
  await vip.waitForSelector('#orders tr[data-order]');
  const orders = await api('GET', '/v1/orders?limit=1', buyerToken);
  const order = orders.body.orders[0];
  assert.equal(order.plan_code, 'monthly');
  assert.equal(order.pay_method, 'balance');
  assert.equal(order.amount_fen, NEW_PRICE_FEN, 'the buyer paid the new price');
  assert.equal(order.status, 'paid');
  shared.order = order;
  // The membership the order bought, as the buyer sees it.
  const me = await until('the membership to start', async () => {
    const r = await api('GET', '/v1/me', buyerToken);
    return r.body?.membership?.status === 'active' ? r.body : null;
  }, 15000);
  shared.membershipEnds = me.membership.expires_at;
  await vip.waitForFunction(() => /Active until/.test(document.querySelector('#membership-status').textContent),
    null, { timeout: 15000 });
  await buyerContext.close();
  assert.deepEqual(errors, [], 'no page logs an error');
});

test('the admin finds the order by its buyer, refunds it after a confirmation listing what is reversed, and the buyer\'s membership is gone', async () => {
  const { admin, adminToken, buyerId, buyerToken, order, errors } = shared;
  assert.ok(admin && order, 'the previous test made the order');
  await openTab(admin, 'orders');
  await admin.fill('#order-filter [name=buyer_id]', String(buyerId));
  await admin.click('#order-filter button[type=submit]');
  const row = `#bo-orders tr[data-order="${order.id}"]`;
  await admin.waitForSelector(row);
  await admin.waitForFunction(() => document.querySelectorAll('#bo-orders tr[data-order]').length === 1);
  assert.match(await admin.textContent(`${row} .amount`), /¥25\.80/);

  // The CSV export of the same filter: the bearer token fetches it, the browser saves it.
  const [download] = await Promise.all([admin.waitForEvent('download'), admin.click('#orders-csv')]);
  const csv = readFileSync(await download.path(), 'utf8');
  assert.match(csv, new RegExp(order.order_no), 'the export has the order');

  // The order: every field, what a refund reverses, and the Refund button.
  await admin.click(row);
  await admin.waitForSelector('#order-dialog[open] #refund');
  assert.match(await admin.textContent('#order-detail'), /¥25\.80/);
  assert.match(await admin.textContent('#order-status'), /Paid/);
  await admin.click('#refund');
  await admin.waitForSelector('#dialog[open] #reversal');
  assert.match(await admin.textContent('#dialog #reverse-money'), /¥25\.80 → 余额 Balance/);
  assert.match(await admin.textContent('#dialog #reverse-days'), /30\.0/);
  // A reason is needed: nothing is sent without one.
  const refunds = [];
  admin.on('request', (r) => {
    if (r.method() === 'POST' && r.url().endsWith(`/v1/admin/orders/${order.id}/refund`)) refunds.push(r);
  });
  await admin.click('#dialog-ok');
  await admin.waitForFunction(() => /reason/.test(document.querySelector('#dialog-error').textContent));
  assert.equal(refunds.length, 0);
  await admin.fill('#dialog [name=reason]', 'The buyer asked for a refund');
  await admin.click('#dialog-ok');
  await admin.waitForSelector('#dialog', { state: 'hidden' });
  await admin.waitForFunction(() => /Refunded/.test(document.querySelector('#order-status')?.textContent || ''));
  assert.equal(refunds.length, 1);
  assert.match(refunds[0].headers()['idempotency-key'], /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/);
  assert.deepEqual(refunds[0].postDataJSON(), { reason: 'The buyer asked for a refund' });
  assert.equal(await admin.locator('#order-dialog #refund').count(), 0, 'a refunded order has no Refund button');
  await admin.click('#order-dialog button.close');
  await admin.waitForFunction((sel) => /Refunded/.test(document.querySelector(sel)?.textContent || ''), `${row} .status`);

  // The buyer's membership shrinks by the 30 days: this was their only one, so it is gone.
  const me = await until('the membership to be taken back', async () => {
    const r = await api('GET', '/v1/me', buyerToken);
    const m = r.body?.membership;
    return m && (m.status !== 'active' || new Date(m.expires_at) < new Date(shared.membershipEnds)) ? r.body : null;
  }, 15000);
  assert.notEqual(me.membership.status, 'active');
  assert.equal(me.balance_fen, 100000, 'the money is back on the balance');
  const detail = await api('GET', `/v1/admin/orders/${order.id}`, adminToken);
  assert.equal(detail.body.status, 'refunded');
  assert.equal(detail.body.reversal, null, 'a refunded order cannot be refunded again');
  assert.deepEqual(errors, [], 'no page logs an error');
});

test('the dashboard shows the same figures as the stats API for its range, with both charts drawn', async () => {
  const { admin, adminToken, buyerToken, errors } = shared;
  assert.ok(admin, 'the admin is signed in');
  // Two more sales that stay: the buyer's quarterly plan and the demo buyer's (user 1) yearly
  // plan for points, so the dashboard has members and two pay methods to show.
  const plans = (await api('GET', '/v1/plans', buyerToken)).body.plans;
  const planId = (code) => plans.find((p) => p.code === code).id;
  const quarterly = await api('POST', '/v1/orders', buyerToken, { plan_id: planId('quarterly'), pay_method: 'balance' },
    { 'Idempotency-Key': `dashboard-quarterly-${process.pid}` });
  assert.equal(quarterly.status, 201, JSON.stringify(quarterly.body));
  const demoToken = memberline(['token', '--user', '1', '--role', 'user']);
  const yearly = await api('POST', '/v1/orders', demoToken, { plan_id: planId('yearly'), pay_method: 'points' },
    { 'Idempotency-Key': `dashboard-yearly-${process.pid}` });
  assert.equal(yearly.status, 201, JSON.stringify(yearly.body));
  // The workers count the sales and the refund a moment after each; wait for all of them, on
  // today in the shop's time zone (which the API names).
  const utcToday = new Date().toISOString().slice(0, 10);
  const zone = (await api('GET', `/v1/admin/stats?from=${utcToday}&to=${utcToday}`, adminToken)).body.time_zone;
  const today = new Intl.DateTimeFormat('en-CA', { timeZone: zone }).format(new Date());
  await until('the sales and the refund in the stats', async () => {
    const r = await api('GET', `/v1/admin/stats?from=${today}&to=${today}`, adminToken);
    const d = r.body?.days?.at(-1);
    return d && d.paid_orders >= 3 && d.refunds >= 1 && d.active_at_end >= 2;
  }, 15000);

  await openTab(admin, 'dashboard');
  await admin.waitForFunction(() => document.querySelector('#stat-revenue').textContent !== '–');
  // Asked again, so the page and the API read the same rollups.
  await admin.click('#stats-range button[type=submit]');
  await admin.waitForFunction(() => document.querySelectorAll('#bo-days tr[data-day]').length > 0);
  const from = await admin.inputValue('#stats-range [name=from]');
  const to = await admin.inputValue('#stats-range [name=to]');
  const stats = await api('GET', `/v1/admin/stats?from=${from}&to=${to}`, adminToken);
  assert.equal(stats.status, 200, JSON.stringify(stats.body));
  const s = stats.body;
  // The default range: the last 30 days up to today, in the shop's time zone.
  const shopToday = new Intl.DateTimeFormat('en-CA', { timeZone: s.time_zone }).format(new Date());
  assert.equal(to, shopToday);
  assert.equal((Date.parse(to) - Date.parse(from)) / 86400000, 29);

  const sum = (k) => s.days.reduce((n, d) => n + d[k], 0);
  const shown = await admin.evaluate(() => Object.fromEntries(
    ['stat-revenue', 'stat-paid-orders', 'stat-refunds', 'stat-new-members', 'stat-active', 'stat-expiring']
      .map((id) => [id, document.getElementById(id).textContent])));
  assert.deepEqual(shown, {
    'stat-revenue': yuan(sum('net_revenue_fen')),
    'stat-paid-orders': String(sum('paid_orders')),
    'stat-refunds': String(sum('refunds')),
    'stat-new-members': String(sum('new_members')),
    'stat-active': String(s.days.at(-1).active_at_end),
    'stat-expiring': String(s.expiring_next_7_days),
  });
  assert.equal(sum('paid_orders'), 3, 'the three sales are counted');
  assert.equal(sum('revenue_fen'), NEW_PRICE_FEN + quarterly.body.amount_fen, 'revenue in fen (the points sale has none)');
  assert.equal(sum('refunds'), 1, 'the refund is counted');
  assert.equal(sum('net_revenue_fen'), sum('revenue_fen') - sum('refunded_fen'), 'a refund subtracts');
  assert.ok(sum('refunded_fen') > 0, 'the refunded sale was in fen');
  assert.equal(s.days.at(-1).active_at_end, 2, 'two members at the end');
  // One table row a day, and the day of the sale as the API has it.
  assert.equal(await admin.locator('#bo-days tr[data-day]').count(), s.days.length);
  const day = s.days.find((d) => d.paid_orders > 0);
  assert.equal(await admin.textContent(`#bo-days tr[data-day="${day.day}"] td:nth-child(3)`), yuan(day.revenue_fen));

  // Both charts drew, with the balance sale in the revenue chart.
  const charts = await admin.evaluate(() => ['chart-revenue', 'chart-members'].map((id) => {
    const chart = window.Chart.getChart(id);
    return chart && { labels: chart.data.labels.length, datasets: chart.data.datasets.map((d) => d.label) };
  }));
  assert.equal(charts[0].labels, s.days.length);
  assert.ok(charts[0].datasets.some((l) => /Balance/.test(l)), JSON.stringify(charts[0]));
  assert.equal(charts[1].datasets.length, 3);

  mkdirSync(screenshots, { recursive: true });
  await admin.setViewportSize({ width: 1360, height: 900 });
  await admin.screenshot({ path: `${screenshots}/dashboard.png`, fullPage: true });
  assert.deepEqual(errors, [], 'no page logs an error');
  await shared.adminContext.close();
});

test('a merchant signs in and sees every tab, an order and a member, with no control to change anything', async () => {
  const { order, buyerId } = shared;
  assert.ok(order, 'the first test made an order');
  const errors = [];
  const context = await browser.newContext();
  const page = await signIn(context, MERCHANT, errors);
  assert.match(await page.textContent('#who'), /shop-merchant · 商户 Merchant/);
  const seen = [];
  const look = async (where) => {
    const found = await editControls(page);
    seen.push(where);
    assert.deepEqual(found, { marked: 0, buttons: [], dialogForm: 0 }, `no edit control on ${where}`);
  };
  await look('live');

  await openTab(page, 'orders');
  await page.waitForSelector(`#bo-orders tr[data-order="${order.id}"]`);
  await look('orders');
  await page.click(`#bo-orders tr[data-order="${order.id}"]`);
  await page.waitForSelector('#order-dialog[open] #order-status');
  assert.match(await page.textContent('#order-detail'), new RegExp(order.order_no));
  await look('an order');
  await page.click('#order-dialog button.close');

  await openTab(page, 'members');
  await page.fill('#member-search [name=q]', String(buyerId));
  await page.click('#member-search button[type=submit]');
  await page.waitForSelector(`#bo-members tr[data-member="${buyerId}"]`);
  await page.click(`#bo-members tr[data-member="${buyerId}"]`);
  await page.waitForSelector(`#member-detail[data-member="${buyerId}"] #member-orders`);
  assert.match(await page.textContent('#member-orders'), new RegExp(order.order_no));
  await look('a member');

  await openTab(page, 'plans');
  await page.waitForSelector('#bo-plans tr[data-plan="monthly"]');
  assert.equal(await page.textContent('#bo-plans tr[data-plan="monthly"] .price'), '¥25.80');
  await look('plans');

  await openTab(page, 'levels');
  await page.waitForSelector('#bo-levels tr[data-level]');
  await look('levels');

  await openTab(page, 'dashboard');
  await page.waitForFunction(() => document.querySelector('#stat-revenue').textContent !== '–');
  await look('the dashboard');
  assert.deepEqual(seen, ['live', 'orders', 'an order', 'a member', 'plans', 'levels', 'the dashboard']);

  // And the API agrees: a merchant's token changes nothing.
  const token = await page.evaluate(() => localStorage.getItem('memberline.console.token'));
  const patch = await api('PATCH', `/v1/admin/plans/${shared.monthly.id}`, token, { price_fen: 1 });
  assert.equal(patch.status, 403);
  assert.deepEqual(errors, [], 'no page logs an error');
  await context.close();
});

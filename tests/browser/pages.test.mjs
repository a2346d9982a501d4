// /vip and /console in a real (headless) Chromium, against the whole system: the gateway with
// its relay, the workers, RabbitMQ, PostgreSQL and the payment provider emulator.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { launchChromium, root, startSystem, watchedPage } from './helpers.mjs';

let system;
let browser;
let base;
let emulator;

function token(user, role) {
  return system.memberline(['token', '--user', String(user), '--role', role]);
}

function api(...args) {
  return system.api(...args);
}

before(async () => {
  system = await startSystem('pages');
  ({ base, emulator } = system);
  browser = await launchChromium(['--autoplay-policy=no-user-gesture-required']);
});

after(async () => {
  await browser?.close();
  await system?.stop();
});

test('signed out, each page shows only its sign-in form and calls no API', async () => {
  const context = await browser.newContext();
  for (const path of ['/vip', '/console']) {
    const errors = [];
    const calls = [];
    const page = await watchedPage(context, errors, calls);
    await page.goto(`${base}${path}`);
    await page.waitForSelector('#signin:not([hidden])');
    assert.equal(await page.isHidden('#app'), true, `${path}: the app is hidden`);
    assert.equal(await page.isHidden('#signout'), true);
    assert.match(await page.textContent('#signin'), /登录.*Sign in/s);
    // A token that is not one is refused on the page, with no API call either.
    await page.fill('#token', 'not-a-token');
    await page.click('#signin button[type=submit]');
    assert.match(await page.textContent('#signin .error'), /valid token/);
    await page.waitForTimeout(300);
    assert.deepEqual(calls, [], `${path} calls no API while signed out`);
    assert.deepEqual(errors, [], `${path} logs no error`);
  }
  await context.close();
});

/** The console feed's newest number, read from the database. */
function newestFeedSeq() {
  const out = execFileSync('psql', [system.dbUrl, '-tAc', 'SELECT coalesce(max(seq), 0) FROM console_feed']);
  return Number(out.toString().trim());
}

async function until(what, check, deadlineMs) {
  const deadline = Date.now() + deadlineMs;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

test('a buyer pays with WeChat on /vip and sees the membership live while /console rings, reminds, and resumes after a drop', async () => {
  const admin = token(0, 'admin');
  const created = await api('POST', '/v1/admin/users', admin, { name: 'Browser buyer', balance_fen: 100000, points: 0 });
  assert.equal(created.status, 201);
  const buyerId = created.body.id;
  const buyerToken = token(buyerId, 'user');
  const errors = [];
  const calls = [];

  // The merchant signs in on /console and turns the sound on. What rings and what is spoken is
  // recorded (headless Chromium has no speakers).
  const merchantContext = await browser.newContext();
  await merchantContext.addInitScript(() => {
    window.sounds = { chimes: 0, spoken: [] };
    const create = AudioContext.prototype.createOscillator;
    AudioContext.prototype.createOscillator = function () {
      window.sounds.chimes += 1;
      return create.call(this);
    };
    if ('speechSynthesis' in window) speechSynthesis.speak = (u) => window.sounds.spoken.push(u.text);
  });
  const console_ = await watchedPage(merchantContext, errors, calls);
  await console_.goto(`${base}/console`);
  await console_.fill('#token', token(0, 'merchant'));
  await console_.click('#signin button[type=submit]');
  await console_.waitForFunction(() => document.querySelector('#connection').dataset.state === 'connected');
  assert.match(await console_.textContent('#connection'), /已连接 Connected/);
  await console_.click('#sound');
  assert.match(await console_.textContent('#sound'), /Sound: on/);

  // The buyer signs in on /vip: no membership yet, plans at their price, no code on screen.
  const buyerContext = await browser.newContext();
  const vip = await watchedPage(buyerContext, errors, calls);
  await vip.goto(`${base}/vip`);
  await vip.fill('#token', buyerToken);
  await vip.click('#signin button[type=submit]');
  await vip.waitForSelector('[data-plan="monthly"] button[data-method="wechat"]');
  assert.match(await vip.textContent('#membership-status'), /No membership yet/);
  assert.equal(await vip.isVisible('#checkout'), false, 'no checkout before a purchase');

  // Alipay, then changing one's mind: the code goes, the order is closed.
  // A desktop is offered the QR codes, and Alipay's desktop cashier beside its QR code.
  assert.equal(await vip.locator('[data-plan="quarterly"] button[data-channel="page"]').count(), 1);
  assert.equal(await vip.locator('button[data-channel="h5"], button[data-channel="wap"]').count(), 0);
  await vip.click('[data-plan="quarterly"] button[data-channel="qr"]');
  await vip.waitForSelector('#checkout #qr[src]', { state: 'visible' });
  assert.match(await vip.getAttribute('#code', 'data-code'), /^https:\/\/qr\.alipay\.com\//);
  await vip.click('#cancel');
  await vip.waitForSelector('#checkout', { state: 'hidden' });
  assert.match(await vip.textContent('#message'), /Order cancelled/);
  await vip.waitForFunction(() => /Closed/.test(document.querySelector('#orders tr .status')?.textContent));

  // WeChat: a QR code and a code to scan.
  await vip.click('[data-plan="monthly"] button[data-method="wechat"]');
  await vip.waitForFunction(() => {
    const img = document.querySelector('#qr');
    return img.complete && img.naturalWidth > 0;
  });
  assert.equal(await vip.isVisible('#checkout'), true);
  assert.match(await vip.textContent('#pay-status'), /Waiting for payment/);
  const code = await vip.getAttribute('#code', 'data-code');
  assert.match(code, /^weixin:\/\/wxpay\/bizpayurl\?pr=/);
  const orderId = Number(await vip.getAttribute('#checkout', 'data-order'));
  await vip.screenshot({ path: `${root}target/vip-page-qr.png`, fullPage: true });

  // The buyer's phone: the emulator's scan page, Pay.
  const phone = await buyerContext.newPage();
  await phone.goto(`${emulator}/emulator/scan?code=${encodeURIComponent(code)}`);
  await phone.click('button[type=submit]');
  await phone.waitForSelector('text=Payment successful');
  const paidAt = Date.now();

  // Within 2 s, without a reload: the buyer sees the membership, the console the order.
  await Promise.all([
    vip.waitForFunction(() => /Active until/.test(document.querySelector('#membership-status').textContent),
      null, { timeout: 2000 }),
    console_.waitForSelector(`#feed li[data-type="order.paid"][data-order="${orderId}"]`, { timeout: 2000 }),
  ]);
  const elapsed = Date.now() - paidAt;
  assert.ok(elapsed <= 2000, `both pages updated ${elapsed} ms after the payment`);
  assert.match(await vip.textContent('#membership-detail'), /30 days left/);
  assert.match(await vip.textContent('#pay-status'), /Active until/);
  await console_.waitForFunction(() => /新订单 New paid order/.test(document.querySelector('#announce').textContent));
  const sounds = await console_.evaluate(() => window.sounds);
  assert.ok(sounds.chimes >= 4, `the new order rang (the switch's own chime is 2): ${sounds.chimes}`);
  assert.match(sounds.spoken.at(-1), /^新订单，Monthly membership/);
  await console_.waitForSelector(`#orders tr[data-order="${orderId}"]`);
  // The code goes once paid; the result stays on the card.
  await vip.waitForSelector('#checkout', { state: 'hidden', timeout: 10000 });

  // "Remind the shop": a customer reminder on the console, then one a minute.
  await vip.click(`#orders tr[data-order="${orderId}"] button.remind`);
  await console_.waitForSelector(`#feed li[data-type="order.reminded"][data-order="${orderId}"]`, { timeout: 2000 });
  await console_.waitForFunction(() => /客户催单 Customer reminder/.test(document.querySelector('#announce').textContent));
  assert.match((await console_.evaluate(() => window.sounds.spoken)).at(-1), /^客户催单/);
  await vip.reload();
  const again = vip.locator(`#orders tr[data-order="${orderId}"] button.remind`);
  await again.waitFor();
  assert.equal(await again.isDisabled(), true, 'the button stays off for a minute, across a reload');
  assert.match(await again.textContent(), /Reminded/);

  // The console loses its network; the buyer buys two passes meanwhile; back online, the
  // console shows both, resumed from the feed.
  await merchantContext.setOffline(true);
  await console_.waitForFunction(() => document.querySelector('#connection').dataset.state === 'reconnecting');
  assert.match(await console_.textContent('#connection'), /重连中 Reconnecting/);
  for (let i = 0; i < 2; i++) {
    await vip.click('[data-plan="day_pass"] button[data-method="balance"]');
    await vip.waitForFunction((n) => document.querySelectorAll('#orders tr[data-order]').length === n, 3 + i);
  }
  const orders = await api('GET', '/v1/orders?limit=2', buyerToken);
  const meanwhile = orders.body.orders.map((o) => o.id);
  await until('both passes in the feed', () => newestFeedSeq() === 4, 10000);
  await merchantContext.setOffline(false);
  for (const id of meanwhile) {
    await console_.waitForSelector(`#feed li[data-type="order.paid"][data-order="${id}"]`, { timeout: 10000 });
  }
  await console_.waitForFunction(() => document.querySelector('#connection').dataset.state === 'connected');
  const seqs = await console_.$$eval('#feed li[data-seq]', (items) => items.map((li) => Number(li.dataset.seq)));
  assert.deepEqual([...seqs].sort((a, b) => a - b), [1, 2, 3, 4], 'every entry once, none missed');

  await vip.screenshot({ path: `${root}target/vip-page.png`, fullPage: true });
  await console_.screenshot({ path: `${root}target/console-page.png`, fullPage: true });
  assert.deepEqual(errors, [], 'no page logs an error');
  await merchantContext.close();
  await buyerContext.close();
});

test('on a phone a buyer pays by WeChat H5 and by Alipay\'s mobile cashier and sees each order paid live; a forged return pays nothing', async () => {
  const admin = token(0, 'admin');
  const created = await api('POST', '/v1/admin/users', admin, { name: 'Phone buyer', balance_fen: 0, points: 0 });
  assert.equal(created.status, 201);
  const buyerToken = token(created.body.id, 'user');
  const errors = [];
  const calls = [];
  const context = await browser.newContext({
    viewport: { width: 390, height: 844 },
    isMobile: true,
    hasTouch: true,
    userAgent: 'Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 '
      + '(KHTML, like Gecko) Version/17.5 Mobile/15E148 Safari/604.1',
  });
  const vip = await watchedPage(context, errors, calls);
  await vip.goto(`${base}/vip`);
  await vip.fill('#token', buyerToken);
  await vip.click('#signin button[type=submit]');
  // A phone cannot scan its own screen: it is offered the cashiers, not the QR codes.
  await vip.waitForSelector('[data-plan="monthly"] button[data-channel="h5"]');
  assert.equal(await vip.locator('[data-plan="monthly"] button[data-channel="wap"]').count(), 1);
  assert.equal(await vip.locator('button[data-channel="native"], button[data-channel="qr"], button[data-channel="page"]').count(), 0);

  // WeChat H5: WeChat's cashier, Pay, back on /vip following the order until it is paid.
  await vip.click('[data-plan="monthly"] button[data-channel="h5"]');
  await vip.waitForURL(/\/cgi-bin\/mmpayweb-bin\/checkmweb/);
  await vip.screenshot({ path: `${root}target/vip-phone-wechat-h5.png` });
  await vip.click('#pay');
  await vip.waitForURL(`${base}/vip`);
  await vip.waitForFunction(() => /Active until/.test(document.querySelector('#membership-status').textContent),
    null, { timeout: 10000 });
  assert.match(await vip.textContent('#membership-detail'), /30 days left/);
  const first = (await api('GET', '/v1/orders?limit=1', buyerToken)).body.orders[0];
  assert.equal(first.status, 'paid');
  assert.equal(first.pay_method, 'wechat');

  // Alipay's mobile cashier: Pay, Alipay's signed return, back on /vip; the order turns paid
  // live (the return itself pays nothing: Alipay's notification does).
  await vip.click('[data-plan="quarterly"] button[data-channel="wap"]');
  await vip.waitForURL(/\/gateway\.do\?/);
  await vip.screenshot({ path: `${root}target/vip-phone-alipay-wap.png` });
  await vip.click('#pay');
  await vip.waitForURL(`${base}/vip`);
  await vip.waitForFunction(() => /120 days left/.test(document.querySelector('#membership-detail').textContent),
    null, { timeout: 10000 });
  const second = (await api('GET', '/v1/orders?limit=1', buyerToken)).body.orders[0];
  assert.equal(second.status, 'paid');
  assert.equal(second.pay_method, 'alipay');
  await vip.waitForFunction((id) => /Paid/.test(document.querySelector(`#orders tr[data-order="${id}"] .status`)?.textContent),
    second.id);

  // A forged return for a pending order: the same way back, and nothing paid.
  const quarterly = (await api('GET', '/v1/plans', buyerToken)).body.plans.find((p) => p.code === 'quarterly');
  const pending = await api('POST', '/v1/orders', buyerToken,
    { plan_id: quarterly.id, pay_method: 'alipay', channel: 'wap' }, { 'Idempotency-Key': 'forged-return' });
  assert.equal(pending.status, 201);
  const forged = new URLSearchParams({
    out_trade_no: pending.body.order_no, total_amount: '80.00', trade_no: '2026120722001400000000000001',
    method: 'alipay.trade.wap.pay.return', app_id: '2021000148600001', sign_type: 'RSA2', sign: 'Zm9yZ2Vk',
  });
  await vip.goto(`${base}/v1/payments/alipay/return?${forged}`);
  await vip.waitForURL(`${base}/vip`);
  await vip.waitForSelector('#checkout', { state: 'visible' });
  assert.match(await vip.textContent('#checkout-title'), /Waiting for the payment/);
  await new Promise((r) => setTimeout(r, 1500));
  const after = await api('GET', `/v1/orders/${pending.body.id}`, buyerToken);
  assert.equal(after.body.status, 'pending_payment', 'a forged return pays nothing');
  assert.match(await vip.textContent('#membership-detail'), /120 days left/);

  await vip.screenshot({ path: `${root}target/vip-phone.png`, fullPage: true });
  // Leaving for a cashier cuts off what the page was still loading (ERR_ABORTED): not an error.
  const ours = errors.filter((e) => e.startsWith(base) && !e.endsWith('net::ERR_ABORTED'));
  assert.deepEqual(ours, [], 'no page of ours logs an error');
  await context.close();
});

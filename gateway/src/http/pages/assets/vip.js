// /vip: the buyer's page. Membership card, plans at the buyer's price, checkout (balance,
// points, free, or WeChat Pay / Alipay by the channel that suits the device: QR codes and
// Alipay's desktop cashier on a desktop, WeChat H5 and Alipay's mobile cashier on a phone,
// JSAPI inside WeChat's browser), the order's status live from its WebSocket (also on coming
// back from a cashier to /vip?order=<id>), and recent orders with "remind the shop".
import {
  Session, PAY_METHOD, STATUS, day, el, errorText, latest, price, randomKey, settled, socketUrl, t,
  when, yuan,
} from './common.js';

const $ = (id) => document.getElementById(id);
const REMIND_EVERY_MS = 60_000;

/** Friendlier words for the refusals a buyer can meet at checkout. */
const REFUSALS = {
  insufficient_balance: t('余额不足', 'Not enough balance'),
  insufficient_points: t('积分不足', 'Not enough points'),
  free_plan_already_claimed: t('免费套餐已领取过', 'You have already claimed this free plan'),
  already_permanent: t('您已是永久会员', 'You are already a permanent member'),
  price_changed: t('价格已变动，已为您刷新', 'The price changed; the plans are refreshed'),
  pay_method_unavailable: t('暂不支持该支付方式', 'This pay method is not available'),
  provider_unavailable: t('支付服务暂不可用，未扣款，请重试', 'The payment service is unavailable; nothing was charged, try again'),
  channel_unavailable: t('暂不支持该支付方式', 'This way to pay is not available'),
  wechat_identity_required: t('请先在微信中登录本店', 'Sign in with WeChat in this shop first'),
};

const UA = navigator.userAgent;
/** WeChat's own browser (an official account's pages): JSAPI pays there, no other cashier opens. */
const IN_WECHAT = /MicroMessenger/i.test(UA);
/** A phone cannot scan its own screen: it goes to a cashier page instead. */
const PHONE = IN_WECHAT || /Mobi|Android|iPhone|iPad/i.test(UA) || matchMedia('(max-width: 640px)').matches;

/** The button label of a way to pay that is not the pay method's plain one. */
const CHANNEL_LABEL = {
  page: t('支付宝网页支付', 'Alipay cashier'),
};

let plans = [];
let payMethods = [];
/** The ways to pay the shop takes (`channels` of `GET /v1/plans`). */
let channels = [];
/** Orders followed on their WebSocket, by id: `{order, socket, done, retry, paid}`. */
const watchers = new Map();
/** Keys of purchases whose answer never came, reused when the same button is pressed again. */
const unanswered = new Map();
let qrUrl = null;

const session = new Session('memberline.vip.token', ['user'], {
  onSignIn: () => {
    refresh();
    followReturn();
  },
  onSignOut: () => {
    for (const w of watchers.values()) finish(w);
    unanswered.clear();
    hideCheckout();
    say('');
    $('plans').replaceChildren();
    $('orders').replaceChildren();
  },
});

function say(text, ok = true) {
  $('message').textContent = text;
  $('message').className = ok ? 'ok' : 'error';
}

async function refresh() {
  await Promise.all([loadMe(), loadPlans(), loadOrders()]);
}

// Each list shows the answer of its latest request only, whatever order the answers come in.
const fetchMe = latest(() => session.api('GET', '/v1/me'));
const fetchPlans = latest(() => session.api('GET', '/v1/plans'));
const fetchOrders = latest(() => session.api('GET', '/v1/orders?limit=10'));

async function loadMe() {
  const res = await fetchMe();
  if (res.status !== 200) return;
  const me = res.body;
  showMembership(me.membership);
  $('wallet').replaceChildren(
    // `discount_percent` is the share of the price the level pays: 90 is 9折, 10 % off.
    el('div', {}, `${me.name} · ${me.level.name}` + (me.level.discount_percent < 100
      ? ` (${t(`${me.level.discount_percent / 10}折`, `${100 - me.level.discount_percent}% off`)})` : '')),
    el('div', {}, `${t('余额', 'Balance')}: ${yuan(me.balance_fen)} · ${t('积分', 'Points')}: ${me.points}`),
  );
}

/** The card, from `GET /v1/me`'s membership or a stream message's. */
function showMembership(m) {
  const status = $('membership-status');
  const detail = $('membership-detail');
  if (m.status === 'active' && m.permanent) {
    status.textContent = t('永久会员', 'Permanent member');
    detail.textContent = '';
  } else if (m.status === 'active') {
    const left = Math.max(0, Math.ceil((new Date(m.expires_at) - Date.now()) / 86_400_000));
    status.textContent = `${t('有效期至', 'Active until')} ${day(m.expires_at)}`;
    detail.textContent = `剩余 ${left} 天 · ${left} ${left === 1 ? 'day' : 'days'} left`;
  } else if (m.status === 'expired') {
    status.textContent = t('会员已过期', 'Expired');
    detail.textContent = m.expires_at ? `${t('过期于', 'Ended on')} ${day(m.expires_at)}` : '';
  } else {
    status.textContent = t('尚未开通会员', 'No membership yet');
    detail.textContent = '';
  }
}

async function loadPlans() {
  const res = await fetchPlans();
  if (res.status !== 200) return;
  plans = res.body.plans;
  payMethods = res.body.pay_methods;
  channels = res.body.channels;
  $('plans').replaceChildren(...plans.map(planCard));
}

function term(p) {
  if (p.kind === 'permanent') return t('永久有效', 'Never expires');
  if (p.kind === 'pass') return `${p.uses} ${t('次', 'uses')}`;
  return `${p.duration_days} ${t('天', 'days')}`;
}

/**
 * The ways this device pays with `method`: `[{channel, wechat_app}]`, `[{}]` for a pay method
 * without channels, `[]` when none suits it. Inside WeChat: JSAPI in the official account; on a
 * phone: WeChat H5 and Alipay's mobile cashier; on a desktop: the QR codes and Alipay's desktop
 * cashier. A phone falls back to the QR code when the shop has no cashier for it.
 */
function waysFor(method) {
  if (method !== 'wechat' && method !== 'alipay') return [{}];
  const has = (channel, app) => channels.find((c) => c.pay_method === method && c.channel === channel
    && (app === undefined || c.wechat_app === app));
  const qr = method === 'wechat' ? has('native') : has('qr');
  let ways;
  if (IN_WECHAT) ways = method === 'wechat' ? [has('jsapi', 'official_account')] : [];
  else if (PHONE) ways = [method === 'wechat' ? has('h5') : has('wap')];
  else ways = [qr, method === 'alipay' ? has('page') : undefined];
  ways = ways.filter(Boolean);
  if (ways.length === 0 && !IN_WECHAT && qr) ways = [qr];
  return ways.map((w) => ({ channel: w.channel, wechat_app: w.wechat_app }));
}

function planCard(p) {
  const fen = p.buyer_price_fen ?? p.price_fen;
  const methods = p.is_free
    ? ['free'].filter((m) => payMethods.includes(m))
    : payMethods.filter((m) => m !== 'free' && (m !== 'points' || p.buyer_price_points != null));
  // An admin may sell a plan for some of the shop's pay methods and channels only.
  const sold = (list, name) => !list || name === undefined || list.includes(name);
  const buttons = methods.filter((m) => sold(p.pay_methods, m)).flatMap((m) => waysFor(m)
    .filter((way) => sold(p.channels, way.channel)).map((way) => el('button', {
    type: 'button', class: m, 'data-method': m, 'data-channel': way.channel,
    onclick: (e) => buy(p, m, way, e.currentTarget),
  }, m === 'free' ? t('免费领取', 'Claim') : CHANNEL_LABEL[way.channel] || PAY_METHOD[m])));
  return el('div', { class: 'plan panel', 'data-plan': p.code },
    el('h3', {}, p.name),
    el('div', { class: 'term' }, term(p)),
    el('div', { class: 'price' }, p.is_free ? t('免费', 'Free') : yuan(fen),
      !p.is_free && p.original_price_fen > fen ? el('span', { class: 'was' }, yuan(p.original_price_fen)) : null),
    p.buyer_price_points != null && !p.is_free
      ? el('div', { class: 'points' }, `${t('或', 'or')} ${p.buyer_price_points} ${t('积分', 'points')}`) : null,
    el('div', { class: 'pay' }, buttons),
  );
}

async function buy(plan, method, way, button) {
  const body = { plan_id: plan.id, pay_method: method };
  if (way.channel) body.channel = way.channel;
  if (way.wechat_app) body.wechat_app = way.wechat_app;
  if (method === 'points') body.expected_price_points = plan.buyer_price_points;
  else if (method !== 'free') body.expected_price_fen = plan.buyer_price_fen ?? plan.price_fen;
  const slot = `${plan.id}/${method}/${way.channel || ''}`;
  const key = unanswered.get(slot) || randomKey();
  unanswered.set(slot, key);
  button.disabled = true;
  say(t('正在下单…', 'Placing the order…'));
  const res = await session.api('POST', '/v1/orders', body, { 'Idempotency-Key': key });
  button.disabled = false;
  if (res.status === -1) return;
  // Until an answer settles it, the same button asks again with the same key: one order.
  if (settled(res.status)) unanswered.delete(slot);
  if (res.status !== 201) {
    const code = res.body?.error?.code;
    say(REFUSALS[code] || errorText(res), false);
    if (code === 'price_changed') loadPlans();
    return;
  }
  const order = res.body;
  const payment = order.payment;
  if (payment && (payment.h5_url || payment.pay_url)) {
    // The cashier sends the buyer back to /vip?order=<id>, where the order is followed.
    say(t('正在前往收银台…', 'Opening the cashier…'));
    window.location.assign(payment.h5_url || payment.pay_url);
    return;
  }
  if (payment) {
    say('');
    await showCheckout(order);
    if (payment.jsapi_params) payInWechat(payment.jsapi_params);
  } else {
    say(`${t('支付成功', 'Paid')}: ${order.plan_name} (${price(order)}). ${t('会员生效中…', 'Activating…')}`);
    loadMe();
  }
  loadOrders();
  watch(order);
}

/** The provider order whose code is on screen, if any. */
function shownCheckout() {
  const id = $('checkout').dataset.order;
  return id ? watchers.get(Number(id)) : undefined;
}

function hideCheckout() {
  $('checkout').hidden = true;
  delete $('checkout').dataset.order;
  if (qrUrl) URL.revokeObjectURL(qrUrl);
  qrUrl = null;
  $('qr').removeAttribute('src');
}

/**
 * Shows a pending provider order: its QR code to scan, or (paid on a cashier page or in
 * WeChat) that its payment is awaited. Its status then comes live from its WebSocket.
 */
async function showCheckout(order) {
  // A new code replaces one the buyer left unpaid: that order is no longer followed here.
  const previous = shownCheckout();
  if (previous) finish(previous);
  hideCheckout();
  const payment = order.payment;
  const scan = Boolean(payment?.code_url);
  $('checkout-title').textContent = !scan ? t('等待支付结果', 'Waiting for the payment')
    : payment.provider === 'wechat'
      ? t('微信扫码支付', 'Scan with WeChat to pay') : t('支付宝扫码支付', 'Scan with Alipay to pay');
  $('qr').hidden = !scan;
  $('code').hidden = !scan;
  $('code').textContent = scan ? payment.code_url : '';
  if (scan) $('code').dataset.code = payment.code_url;
  else delete $('code').dataset.code;
  $('pay-status').textContent = `${t('等待支付', 'Waiting for payment')} · ${yuan(order.amount_fen)}`
    + (payment ? ` · ${t('请在此前支付', 'Pay before')} ${when(payment.expires_at)}` : '');
  $('cancel').hidden = order.status !== 'pending_payment';
  $('checkout').dataset.order = String(order.id);
  $('checkout').hidden = false;
  if (!scan) return;
  const res = await session.api('GET', payment.qr_png_url);
  if (res.status === 200 && $('checkout').dataset.order === String(order.id)) {
    qrUrl = URL.createObjectURL(res.body);
    $('qr').src = qrUrl;
  }
}

/**
 * WeChat's payment sheet, inside WeChat's browser. What it answers is never proof of payment:
 * the order's own status, live, says whether the money came.
 */
function payInWechat(params) {
  const invoke = () => window.WeixinJSBridge.invoke('getBrandWCPayRequest', params, (r) => {
    if (r?.err_msg === 'get_brand_wcpay_request:cancel') say(t('已取消支付', 'Payment cancelled'), false);
    else if (r?.err_msg !== 'get_brand_wcpay_request:ok') say(t('微信支付未完成', 'WeChat Pay did not finish'), false);
  });
  if (window.WeixinJSBridge) invoke();
  else if (IN_WECHAT) document.addEventListener('WeixinJSBridgeReady', invoke, { once: true });
  else say(t('请在微信中打开本页支付', 'Open this page in WeChat to pay'), false);
}

/**
 * Back from a cashier (`/vip?order=<id>`, where WeChat H5 and Alipay send the buyer, paid or
 * not): the order is shown and followed live until it is paid, or closed.
 */
async function followReturn() {
  const id = Number(new URLSearchParams(window.location.search).get('order'));
  if (!Number.isSafeInteger(id) || id <= 0) return;
  // Once: a reload shows the page as usual.
  history.replaceState(null, '', window.location.pathname);
  const res = await session.api('GET', `/v1/orders/${id}`);
  if (res.status !== 200) return;
  const order = res.body;
  if (order.status === 'pending_payment') {
    say(t('正在确认支付结果…', 'Checking the payment…'));
    await showCheckout(order);
  }
  if (order.status === 'pending_payment' || order.status === 'paid') watch(order);
}

/** Follows `order` on its WebSocket until it reaches a state the buyer is done with. */
function watch(order) {
  const w = { order, socket: null, done: false, retry: 0, paid: false };
  watchers.set(order.id, w);
  const open = async () => {
    if (w.done) return;
    const ticket = await session.api('POST', '/v1/me/stream-ticket');
    if (w.done || ticket.status === -1) return;
    if (ticket.status !== 201) return reopen();
    const socket = new WebSocket(socketUrl(`/v1/orders/${order.id}/stream?ticket=${ticket.body.ticket}`));
    w.socket = socket;
    socket.onmessage = (e) => {
      w.retry = 0;
      onStatus(w, JSON.parse(e.data));
    };
    socket.onclose = () => {
      if (w.socket === socket) w.socket = null;
      reopen();
    };
  };
  const reopen = () => {
    if (w.done) return;
    w.retry += 1;
    w.timer = setTimeout(open, Math.min(10_000, 500 * 2 ** w.retry));
  };
  open();
}

/** Stops following `w`; its code, if on screen, goes a moment later (the result stays). */
function finish(w) {
  w.done = true;
  clearTimeout(w.timer);
  w.socket?.close(1000, 'done');
  w.socket = null;
  watchers.delete(w.order.id);
}

function onStatus(w, m) {
  if (m.type !== 'order.status') return;
  const onScreen = $('checkout').dataset.order === String(w.order.id);
  if (m.status === 'paid' && !w.paid) {
    w.paid = true;
    if (onScreen) {
      $('pay-status').textContent = `${t('支付成功', 'Payment received')} · ${t('会员生效中…', 'Activating…')}`;
      $('cancel').hidden = true;
      say(`${t('支付成功', 'Payment received')}: ${w.order.plan_name}`);
    }
    loadOrders();
    // A pass changes no membership: paid is the end of it.
    if (w.order.plan_kind === 'pass') {
      loadMe();
      done(w, onScreen);
    }
  }
  if (m.membership) {
    showMembership(m.membership);
    if (m.membership.status === 'active') {
      const until = m.membership.permanent
        ? t('永久会员', 'Permanent member')
        : `${t('有效期至', 'Active until')} ${day(m.membership.expires_at)}`;
      say(`${t('会员已生效', 'Membership active')} · ${until}`);
      if (onScreen) $('pay-status').textContent = `${t('支付成功', 'Paid')} · ${until}`;
    }
    loadMe();
    done(w, onScreen);
  }
  if (m.status === 'closed') {
    if (onScreen) $('pay-status').textContent = t('订单已关闭，未扣款', 'Order closed; nothing was charged');
    loadOrders();
    done(w, onScreen);
  }
  if (m.status === 'refund_pending' || m.status === 'refunded') {
    say(`${STATUS[m.status]}: ${w.order.order_no}`);
    loadMe();
    loadOrders();
    if (m.status === 'refunded') done(w, onScreen);
  }
}

/** The end of `w`: its code, if on screen, goes after a moment to read the result. */
function done(w, onScreen) {
  finish(w);
  if (!onScreen) return;
  $('cancel').hidden = true;
  setTimeout(() => {
    if ($('checkout').dataset.order === String(w.order.id)) hideCheckout();
  }, 3000);
}

$('cancel').addEventListener('click', async () => {
  const id = $('checkout').dataset.order;
  if (!id) return;
  $('cancel').disabled = true;
  const res = await session.api('POST', `/v1/orders/${id}/cancel`);
  $('cancel').disabled = false;
  if (res.status === -1) return;
  if (res.status === 200) {
    say(t('订单已取消，未扣款', 'Order cancelled; nothing was charged'));
    const w = watchers.get(Number(id));
    if (w) finish(w);
    if ($('checkout').dataset.order === id) hideCheckout();
  } else {
    say(res.body?.error?.code === 'order_not_pending' ? t('订单已支付，无法取消', 'Already paid; it cannot be cancelled') : errorText(res), false);
  }
  loadOrders();
});

function remindedAt(orderId) {
  return Number(localStorage.getItem(`memberline.vip.reminded.${orderId}`) || 0);
}

async function loadOrders() {
  const res = await fetchOrders();
  if (res.status !== 200) return;
  const rows = res.body.orders.map((o) => el('tr', { 'data-order': o.id },
    el('td', {}, o.order_no),
    el('td', {}, o.plan_name),
    el('td', {}, price(o)),
    el('td', { class: 'status' }, STATUS[o.status] || o.status),
    el('td', {}, when(o.paid_at || o.created_at)),
    el('td', {}, o.status === 'paid' ? remindButton(o) : null),
  ));
  $('orders').replaceChildren(...(rows.length ? rows
    : [el('tr', {}, el('td', { colspan: 6, class: 'empty' }, t('暂无订单', 'No orders yet')))]));
}

function remindButton(order) {
  const button = el('button', { type: 'button', class: 'remind' }, t('提醒商家', 'Remind the shop'));
  const wait = remindedAt(order.id) + REMIND_EVERY_MS - Date.now();
  const hold = (ms) => {
    button.disabled = true;
    button.textContent = t('已提醒', 'Reminded');
    setTimeout(() => {
      button.disabled = false;
      button.textContent = t('提醒商家', 'Remind the shop');
    }, ms);
  };
  if (wait > 0) hold(wait);
  button.addEventListener('click', async () => {
    button.disabled = true;
    const res = await session.api('POST', `/v1/orders/${order.id}/remind`);
    if (res.status === -1) return;
    if (res.status === 202) {
      localStorage.setItem(`memberline.vip.reminded.${order.id}`, String(Date.now()));
      say(`${t('已提醒商家', 'The shop has been reminded')}: ${order.order_no}`);
      hold(REMIND_EVERY_MS);
    } else if (res.status === 429) {
      const secs = Number(res.headers.get('Retry-After') || 60);
      say(`${t('提醒太频繁，请稍后再试', 'One reminder a minute; try again in')} ${secs}s`, false);
      hold(secs * 1000);
    } else {
      button.disabled = false;
      say(errorText(res), false);
    }
  });
  return button;
}

session.start();

// /console's back office, beside the live feed: sign-in with a username and password, and the
// Orders, Members, Plans, Levels and Dashboard tabs. Merchants read; admins also refund, grant,
// revoke, adjust balances and points, and edit the catalogue. What a merchant may not do is not
// on their page at all: every such control is made only for an admin (each carries
// `data-admin`).
import {
  PAY_METHOD, STATUS, claims, el, errorText, latest, price, randomKey, settled, t, when, yuan,
} from './common.js';

const $ = (id) => document.getElementById(id);
const STAFF_KEY = 'memberline.console.staff';
const TAB_KEY = 'memberline.console.tab';
const ZONE_KEY = 'memberline.console.time_zone';
const TABS = ['live', 'orders', 'members', 'plans', 'levels', 'dashboard'];

export const ROLE = { merchant: t('商户', 'Merchant'), admin: t('管理员', 'Admin') };

const CHANNEL = {
  native: t('微信扫码', 'WeChat QR code'),
  jsapi: t('微信内支付', 'WeChat JSAPI'),
  h5: t('微信 H5', 'WeChat H5'),
  qr: t('支付宝扫码', 'Alipay QR code'),
  wap: t('支付宝手机网站', 'Alipay mobile cashier'),
  page: t('支付宝电脑网站', 'Alipay desktop cashier'),
};
const KIND = {
  membership: t('会员', 'Membership'),
  permanent: t('永久会员', 'Permanent'),
  pass: t('次卡', 'Pass'),
};
/** The pay methods a plan can be sold for (an admin grant is none). */
const PLAN_PAY_METHODS = ['balance', 'points', 'free', 'wechat', 'alipay'];
const CHANNELS = Object.keys(CHANNEL);
const LEDGER = { balance: t('余额', 'Balance'), points: t('积分', 'Points') };
const CHART_COLORS = {
  balance: '#14324a', points: '#a15c00', free: '#8a949e', wechat: '#07c160', alipay: '#1677ff',
  admin_grant: '#7b4bb3',
};

// ---------------------------------------------------------------------------------------------
// Pure helpers: money and dates.

/**
 * Yuan typed by a person as integer fen, exactly (no floating point): "12.34" → 1234, "12" →
 * 1200, "0.5" → 50; null for anything else, three decimals included. A sign only when
 * `negative` allows it.
 */
export function parseYuan(text, { negative = false } = {}) {
  const m = /^\s*([-+])?\s*¥?\s*(\d{1,13})(?:\.(\d{1,2}))?\s*$/.exec(String(text ?? ''));
  if (!m || (m[1] === '-' && !negative)) return null;
  const fen = Number(m[2]) * 100 + Number((m[3] || '').padEnd(2, '0'));
  return m[1] === '-' && fen !== 0 ? -fen : fen;
}

/**
 * After an attempt that got no final answer (no connection, a time-out, a 5xx), the request
 * may have been done: the dialog keeps its Idempotency-Key, and its fields are frozen, so the
 * only way on is the same request again (answered once, whatever happened) or Cancel.
 */
function holdForRetry(form) {
  for (const input of form.querySelectorAll('input, textarea')) input.readOnly = true;
  for (const select of form.querySelectorAll('select')) select.disabled = true;
  return t('没有收到结果：再按一次会重试同一请求（不会重复执行）',
    'No answer yet: press again to retry the same request (it is never done twice)');
}

/** A whole number typed by a person, or null. */
export function parseInteger(text, { negative = false } = {}) {
  const m = /^\s*([-+])?(\d{1,15})\s*$/.exec(String(text ?? ''));
  if (!m || (m[1] === '-' && !negative)) return null;
  const n = Number(m[2]);
  return m[1] === '-' && n !== 0 ? -n : n;
}

/** Integer fen as a yuan amount to edit: 1234 → "12.34". */
export function fenText(fen) {
  return yuan(fen).replace('¥', '');
}

/** `YYYY-MM-DD` plus `n` days. */
export function addDays(date, n) {
  const d = new Date(`${date}T00:00:00Z`);
  d.setUTCDate(d.getUTCDate() + n);
  return d.toISOString().slice(0, 10);
}

/** Today's date (`YYYY-MM-DD`) in time zone `tz`. */
export function todayIn(tz) {
  try {
    return new Intl.DateTimeFormat('en-CA', { timeZone: tz, year: 'numeric', month: '2-digit', day: '2-digit' })
      .format(new Date());
  } catch {
    return new Intl.DateTimeFormat('en-CA', { year: 'numeric', month: '2-digit', day: '2-digit' }).format(new Date());
  }
}

/** Membership time in days, to one decimal: 2592000 s → "30.0". */
export function daysText(secs) {
  return (Math.round(secs / 8640) / 10).toFixed(1);
}

/** A key per confirmed act: the same on a retry of an unanswered request, new once answered. */
function newKey() {
  return crypto.randomUUID?.() ?? randomKey();
}

// ---------------------------------------------------------------------------------------------
// Small DOM helpers.

/** A labelled form field: `zh` and `en` above the control. */
function field(zh, en, control, attrs = {}) {
  return el('label', attrs, zh, ' ', el('span', { class: 'en' }, en), control);
}

function say(id, text, ok = true) {
  const p = $(id);
  p.textContent = text || '';
  p.className = `message ${ok ? 'ok' : 'error'}`;
}

function options(labels, { all = true, selected } = {}) {
  return [
    all ? el('option', { value: '' }, t('全部', 'All')) : null,
    ...Object.entries(labels).map(([value, label]) => el('option', { value, selected: value === selected }, label)),
  ].filter(Boolean);
}

function emptyRow(columns, text = t('无', 'None')) {
  return el('tr', {}, el('td', { colspan: columns, class: 'empty' }, text));
}

/** A small table: `[header, value(row)]` columns. */
function table(rows, columns, attrs = {}) {
  return el('table', { class: 'list', ...attrs },
    el('thead', {}, el('tr', {}, columns.map(([h]) => el('th', {}, h)))),
    el('tbody', {}, rows.length
      ? rows.map((r) => el('tr', {}, columns.map(([, v]) => el('td', {}, v(r) ?? ''))))
      : emptyRow(columns.length)));
}

/** A definition list of `[term, value]` pairs (a value of null or undefined is left out). */
function facts(pairs) {
  return el('dl', { class: 'facts' }, pairs.filter(([, v]) => v !== null && v !== undefined && v !== '')
    .flatMap(([k, v, id]) => [el('dt', {}, k), el('dd', id ? { id } : {}, v)]));
}

function methods(list, labels) {
  return list === null || list === undefined ? t('全部', 'All') : list.map((m) => labels[m] || m).join(', ');
}

/**
 * Opens `#dialog` with a form: `title`, `body` (nodes), a submit button. `onSubmit(form)` is
 * awaited: a string is an error shown in the dialog (it stays open), anything else closes it.
 */
function dialog({ title, body, submit, danger = false, onSubmit }) {
  const d = $('dialog');
  const error = el('p', { class: 'error', role: 'alert', id: 'dialog-error' });
  const ok = el('button', { type: 'submit', class: danger ? 'primary danger' : 'primary', id: 'dialog-ok' }, submit);
  const form = el('form', { id: 'dialog-form', novalidate: true },
    el('h2', {}, title), ...body, error,
    el('div', { class: 'buttons' },
      el('button', { type: 'button', id: 'dialog-cancel', onclick: () => d.close() }, t('取消', 'Cancel')), ok));
  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    ok.disabled = true;
    error.textContent = '';
    let problem;
    try {
      problem = await onSubmit(form);
    } finally {
      ok.disabled = false;
    }
    if (typeof problem === 'string') error.textContent = problem;
    else d.close();
  });
  d.replaceChildren(form);
  if (!d.open) d.showModal();
  form.querySelector('input:not([type=hidden]):not([type=checkbox]):not([type=radio]), textarea, select')?.focus();
  return form;
}

function reasonField(placeholder = '') {
  return field('原因', 'Reason (kept in the audit log)',
    el('textarea', { name: 'reason', maxlength: 200, rows: 2, placeholder, required: true }));
}

function reasonOf(form) {
  const reason = form.elements.reason.value.trim();
  return reason ? reason : null;
}

const NEED_REASON = t('请填写原因', 'Give a reason');

// ---------------------------------------------------------------------------------------------
// Signing in with a username and password.

/**
 * `POST /v1/auth/staff` with the form's username and password: `{token}` (the staff member is
 * remembered beside it) or `{error}`; null to sign in with the pasted token instead (its own
 * button, or a pasted token and no username or password).
 */
export async function staffCredentials(form, submitter) {
  const username = form.elements.username.value.trim();
  const password = form.elements.password.value;
  const pasted = form.elements.token.value.trim();
  if (submitter?.closest('fieldset.token') || (pasted && !username && !password)) return null;
  if (!username || !password) {
    return { error: t('请输入用户名和密码', 'Enter your username and password') };
  }
  let res;
  let body;
  try {
    res = await fetch('/v1/auth/staff', {
      method: 'POST',
      headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify({ username, password }),
    });
    body = await res.json().catch(() => null);
  } catch {
    return { error: errorText({ status: 0 }) };
  }
  if (res.status === 200 && body?.token) {
    localStorage.setItem(STAFF_KEY, JSON.stringify(body.staff));
    return { token: body.token };
  }
  if (res.status === 401) {
    return { error: `${t('用户名或密码错误', 'Wrong username or password')} (${body?.error?.message || 'invalid_credentials'})` };
  }
  if (res.status === 429) {
    const secs = Number(res.headers.get('Retry-After')) || 60;
    return { error: `${t('登录失败次数过多', 'Too many failed sign-ins')}: ${t(`请 ${secs} 秒后再试`, `try again in ${secs} s`)}` };
  }
  return { error: errorText({ status: res.status, body }) };
}

// ---------------------------------------------------------------------------------------------

export class BackOffice {
  /** `session`: the console's Session. */
  constructor(session) {
    this.session = session;
    this.role = null;
    this.tab = 'live';
    this.loaded = new Set();
    this.orderCursor = null;
    this.memberCursor = null;
    this.plans = [];
    this.levels = [];
    this.charts = [];
    this.memberId = null;
    this.statsRangeChosen = false;
    this.fetchOrders = latest((q) => session.api('GET', `/v1/admin/orders?${q}`));
    this.fetchMembers = latest((q) => session.api('GET', `/v1/admin/members?${q}`));
    this.fetchMember = latest((id) => session.api('GET', `/v1/admin/members/${id}`));
    this.fetchOrder = latest((id) => session.api('GET', `/v1/admin/orders/${id}`));
    this.fetchPlans = latest(() => session.api('GET', '/v1/admin/plans'));
    this.fetchLevels = latest(() => session.api('GET', '/v1/admin/levels'));
    this.fetchStats = latest((q) => session.api('GET', `/v1/admin/stats?${q}`));
    this.wire();
  }

  get admin() {
    return this.role === 'admin';
  }

  /** The static parts' listeners, once. */
  wire() {
    for (const button of document.querySelectorAll('#tabs [data-tab]')) {
      button.addEventListener('click', () => this.show(button.dataset.tab));
    }
    const filter = $('order-filter');
    filter.elements.status.append(...options(STATUS));
    filter.elements.pay_method.append(...options(PAY_METHOD));
    filter.elements.channel.append(...options(CHANNEL));
    filter.addEventListener('submit', (e) => {
      e.preventDefault();
      this.searchOrders();
    });
    $('orders-more').addEventListener('click', () => this.searchOrders(true));
    $('orders-csv').addEventListener('click', () => {
      const q = this.orderQuery();
      if (q.error) return say('orders-message', q.error, false);
      this.download(`/v1/admin/orders.csv?${q.params}`, 'orders.csv', 'orders-message');
    });
    $('member-search').addEventListener('submit', (e) => {
      e.preventDefault();
      this.searchMembers();
    });
    $('members-more').addEventListener('click', () => this.searchMembers(true));
    $('stats-range').addEventListener('submit', (e) => {
      e.preventDefault();
      this.statsRangeChosen = true;
      this.loadStats();
    });
    $('order-dialog').querySelector('button.close').addEventListener('click', () => $('order-dialog').close());
  }

  /** Signed in: who, the tabs a role has, the last tab shown. */
  start() {
    const c = claims(this.session.token) || {};
    this.role = c.role;
    let staff = null;
    try {
      staff = JSON.parse(localStorage.getItem(STAFF_KEY) || 'null');
    } catch {}
    // A pasted token names no username: only a remembered sign-in of the same account does.
    if (!staff || String(staff.id) !== String(c.sub) || staff.role !== c.role) staff = null;
    const who = $('who');
    who.textContent = `${staff ? staff.username : `#${c.sub}`} · ${ROLE[c.role] || c.role}`;
    who.dataset.role = c.role;
    who.hidden = false;
    const actions = [];
    if (this.admin) {
      actions.push(el('button', { type: 'button', id: 'new-plan', class: 'primary', 'data-admin': true,
        onclick: () => this.editPlan(null) }, t('新建套餐', 'New plan')));
    }
    $('plans-actions').replaceChildren(...actions);
    $('levels-actions').replaceChildren(...(this.admin ? [el('button', { type: 'button', id: 'new-level', class: 'primary',
      'data-admin': true, onclick: () => this.editLevel(null) }, t('新建等级', 'New level'))] : []));
    this.show(TABS.includes(sessionStorage.getItem(TAB_KEY)) ? sessionStorage.getItem(TAB_KEY) : 'live');
  }

  /** Signed out: nothing of the last staff member stays on the page. */
  stop() {
    this.role = null;
    this.loaded.clear();
    this.orderCursor = null;
    this.memberCursor = null;
    this.memberId = null;
    this.plans = [];
    this.levels = [];
    this.statsRangeChosen = false;
    localStorage.removeItem(STAFF_KEY);
    sessionStorage.removeItem(TAB_KEY);
    for (const d of [$('dialog'), $('order-dialog')]) if (d.open) d.close();
    $('dialog').replaceChildren();
    $('order-detail').replaceChildren();
    $('who').hidden = true;
    $('who').textContent = '';
    for (const id of ['bo-orders', 'bo-members', 'bo-plans', 'bo-levels', 'bo-days', 'plans-actions', 'levels-actions']) {
      $(id).replaceChildren();
    }
    for (const id of ['orders-message', 'members-message', 'plans-message', 'levels-message', 'stats-message', 'stats-zone']) {
      $(id).textContent = '';
    }
    for (const id of ['stat-revenue', 'stat-paid-orders', 'stat-refunds', 'stat-new-members', 'stat-active', 'stat-expiring']) {
      $(id).textContent = '–';
    }
    $('stat-refunded').textContent = '';
    $('stat-revenue-points').textContent = '';
    $('member-detail').hidden = true;
    $('member-detail').replaceChildren();
    $('orders-more').hidden = true;
    $('members-more').hidden = true;
    $('order-filter').reset();
    $('member-search').reset();
    $('stats-range').reset();
    this.destroyCharts();
    this.show('live', false);
  }

  /** Shows tab `name` (and loads what it shows). */
  show(name, load = true) {
    this.tab = name;
    if (load) sessionStorage.setItem(TAB_KEY, name);
    for (const b of document.querySelectorAll('#tabs [data-tab]')) {
      b.setAttribute('aria-selected', String(b.dataset.tab === name));
    }
    for (const p of document.querySelectorAll('#app [data-panel]')) p.hidden = p.dataset.panel !== name;
    if (!load) return;
    if (name === 'orders' && !this.loaded.has('orders')) this.searchOrders();
    if (name === 'members' && !this.loaded.has('members')) this.searchMembers();
    if (name === 'plans') this.loadPlans();
    if (name === 'levels') this.loadLevels();
    if (name === 'dashboard') this.loadStats();
  }

  /** Fetches `path` with the token and saves it as `name` (a CSV export). */
  async download(path, name, messageId) {
    say(messageId, t('正在导出…', 'Exporting…'));
    const res = await this.session.api('GET', path);
    if (res.status === -1) return;
    if (res.status !== 200 || !(res.body instanceof Blob)) {
      say(messageId, errorText(res), false);
      return;
    }
    const disposition = res.headers.get('Content-Disposition') || '';
    const filename = /filename="?([^";]+)"?/.exec(disposition)?.[1] || name;
    const url = URL.createObjectURL(res.body);
    const a = el('a', { href: url, download: filename, hidden: true });
    document.body.append(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(url), 60_000);
    say(messageId, `${t('已导出', 'Exported')}: ${filename}`);
  }

  // -------------------------------------------------------------------------------------------
  // Orders.

  /** The filter form as a query string, or `{error}`. Dates are whole days in this browser's time. */
  orderQuery() {
    const f = $('order-filter').elements;
    const params = new URLSearchParams();
    for (const name of ['status', 'pay_method', 'channel']) if (f[name].value) params.set(name, f[name].value);
    if (f.from.value) params.set('from', new Date(`${f.from.value}T00:00:00`).toISOString());
    if (f.to.value) params.set('to', new Date(`${addDays(f.to.value, 1)}T00:00:00`).toISOString());
    const buyer = f.buyer_id.value.trim();
    if (buyer) {
      const id = parseInteger(buyer);
      if (id === null) return { error: t('买家 ID 应为数字', 'The buyer id is a number') };
      params.set('buyer_id', String(id));
    }
    return { params };
  }

  async searchOrders(more = false) {
    this.loaded.add('orders');
    const q = this.orderQuery();
    if (q.error) return say('orders-message', q.error, false);
    q.params.set('limit', '20');
    if (more && this.orderCursor !== null) q.params.set('cursor', String(this.orderCursor));
    const res = await this.fetchOrders(q.params.toString());
    if (res.status === -1) return;
    if (res.status !== 200) return say('orders-message', errorText(res), false);
    say('orders-message', '');
    this.orderCursor = res.body.next_cursor;
    $('orders-more').hidden = res.body.next_cursor === null || res.body.next_cursor === undefined;
    const rows = res.body.orders.map((o) => this.orderRow(o));
    if (more) $('bo-orders').append(...rows);
    else $('bo-orders').replaceChildren(...(rows.length ? rows : [emptyRow(8, t('没有符合条件的订单', 'No orders match'))]));
  }

  orderRow(o) {
    return el('tr', { 'data-order': o.id, class: 'clickable', onclick: () => this.openOrder(o.id) },
      el('td', {}, el('button', { type: 'button', class: 'link' }, o.order_no)),
      el('td', {}, `${o.buyer_name || ''} #${o.buyer_id}`),
      el('td', {}, o.plan_name),
      el('td', {}, PAY_METHOD[o.pay_method] || o.pay_method),
      el('td', { class: 'amount' }, price(o)),
      el('td', { class: 'status' }, STATUS[o.status] || o.status),
      el('td', {}, when(o.created_at)),
      el('td', {}, when(o.paid_at)));
  }

  /** The order dialog: every field, what a refund reverses, and (admins) the Refund button. */
  async openOrder(id) {
    const d = $('order-dialog');
    d.querySelector('.error').textContent = '';
    const res = await this.fetchOrder(id);
    if (res.status === -1) return;
    if (res.status !== 200) {
      $('order-detail').replaceChildren(el('h2', {}, `${t('订单', 'Order')} #${id}`));
      d.querySelector('.error').textContent = errorText(res);
    } else {
      this.renderOrder(res.body);
    }
    if (!d.open) d.showModal();
  }

  renderOrder(o) {
    const r = o.reversal;
    const detail = $('order-detail');
    detail.dataset.order = o.id;
    detail.dataset.status = o.status;
    detail.replaceChildren(
      el('h2', {}, `${t('订单', 'Order')} ${o.order_no}`),
      facts([
        [t('状态', 'Status'), STATUS[o.status] || o.status, 'order-status'],
        [t('买家', 'Buyer'), el('button', { type: 'button', class: 'link', onclick: () => this.goToMember(o.buyer_id) },
          `${o.buyer_name || ''} #${o.buyer_id}`)],
        [t('套餐', 'Plan'), `${o.plan_name} (${KIND[o.plan_kind] || o.plan_kind}${o.duration_days ? `, ${o.duration_days} ${t('天', 'days')}` : ''}${o.uses ? `, ${o.uses} ${t('次', 'uses')}` : ''})`],
        [t('支付方式', 'Pay method'), PAY_METHOD[o.pay_method] || o.pay_method],
        [t('金额', 'Amount'), price(o), 'order-amount'],
        [t('原价', 'Original price'), o.original_price_fen ? yuan(o.original_price_fen) : null],
        [t('下单时间', 'Created'), when(o.created_at)],
        [t('支付时间', 'Paid'), when(o.paid_at)],
        [t('关闭时间', 'Closed'), when(o.closed_at)],
        [t('退款时间', 'Refunded'), when(o.refunded_at)],
        [t('退款原因', 'Refund reason'), o.refund_reason],
        ['ID', String(o.id)],
      ]),
      r ? el('section', { class: 'reversal' },
        el('h3', {}, t('退款将撤销', 'A refund reverses')),
        reversalList(o)) : null,
      this.admin && r && o.status === 'paid'
        ? el('div', { class: 'buttons' }, el('button', { type: 'button', id: 'refund', class: 'danger', 'data-admin': true,
          onclick: () => this.confirmRefund(o) }, t('退款', 'Refund')))
        : null,
    );
  }

  /** The confirmation of a refund: what it reverses, a reason; one key for this dialog's tries. */
  confirmRefund(o) {
    let key = newKey();
    dialog({
      title: `${t('确认退款', 'Refund order')} ${o.order_no}`,
      submit: t('确认退款', 'Confirm the refund'),
      danger: true,
      body: [el('p', {}, t('将撤销以下内容：', 'This reverses:')), reversalList(o), reasonField()],
      onSubmit: async (form) => {
        const reason = reasonOf(form);
        if (!reason) return NEED_REASON;
        const res = await this.session.api('POST', `/v1/admin/orders/${o.id}/refund`, { reason }, { 'Idempotency-Key': key });
        if (res.status === -1) return null;
        if (settled(res.status)) key = newKey();
        else return holdForRetry(form);
        if (res.status !== 200 && res.status !== 202) return errorText(res);
        const done = res.body.status === 'refund_pending'
          ? t('退款处理中', 'Refund pending: the provider confirms it')
          : t('已退款', 'Refunded');
        $('order-dialog').querySelector('.error').textContent = '';
        this.openOrder(o.id);
        say('orders-message', `${done}: ${o.order_no}`);
        if (this.loaded.has('orders')) this.searchOrders();
        if (this.memberId === o.buyer_id) this.refreshMember(o.buyer_id);
        return null;
      },
    });
  }

  // -------------------------------------------------------------------------------------------
  // Members.

  async searchMembers(more = false) {
    this.loaded.add('members');
    const q = new URLSearchParams();
    const text = $('member-search').elements.q.value.trim();
    if (text) q.set('q', text);
    q.set('limit', '20');
    if (more && this.memberCursor !== null) q.set('cursor', String(this.memberCursor));
    const res = await this.fetchMembers(q.toString());
    if (res.status === -1) return;
    if (res.status !== 200) return say('members-message', errorText(res), false);
    say('members-message', '');
    this.memberCursor = res.body.next_cursor;
    $('members-more').hidden = res.body.next_cursor === null || res.body.next_cursor === undefined;
    const rows = res.body.members.map((m) => el('tr', { 'data-member': m.id, class: 'clickable', onclick: () => this.openMember(m.id) },
      el('td', {}, String(m.id)),
      el('td', {}, el('button', { type: 'button', class: 'link' }, m.name)),
      el('td', {}, m.phone || ''),
      el('td', { class: 'amount' }, yuan(m.balance_fen)),
      el('td', {}, String(m.points)),
      el('td', {}, String(m.growth)),
      el('td', {}, this.levelName(m.level_id)),
      el('td', {}, membershipText(m)),
      el('td', {}, when(m.created_at))));
    if (more) $('bo-members').append(...rows);
    else $('bo-members').replaceChildren(...(rows.length ? rows : [emptyRow(9, t('没有找到会员', 'No members found'))]));
  }

  levelName(id) {
    const level = this.levels.find((l) => l.id === id);
    return level ? `${level.name} (${id})` : String(id ?? '');
  }

  /** From an order: that buyer in the Members tab. */
  goToMember(id) {
    $('order-dialog').close();
    this.show('members');
    this.openMember(id);
  }

  /** The member panel of buyer `id`, with `notice` (what was just done) on top. */
  async openMember(id, notice = '') {
    if (this.levels.length === 0) await this.loadLevels(false);
    const res = await this.fetchMember(id);
    if (res.status === -1) return;
    const box = $('member-detail');
    box.hidden = false;
    if (res.status !== 200) {
      box.replaceChildren(el('p', { class: 'error' }, errorText(res)));
      return;
    }
    this.memberId = id;
    const d = res.body;
    const m = d.member;
    const p = d.profile;
    box.dataset.member = m.id;
    const actions = this.admin ? [
      el('button', { type: 'button', id: 'grant', 'data-admin': true, onclick: () => this.grant(m) }, t('赠送会员', 'Grant a plan')),
      el('button', { type: 'button', id: 'revoke', class: 'danger', 'data-admin': true, onclick: () => this.revoke(m) }, t('撤销会员', 'Revoke membership')),
      el('button', { type: 'button', id: 'adjust', 'data-admin': true, onclick: () => this.adjust(m) }, t('调整余额/积分', 'Adjust balance or points')),
    ] : [];
    const ledgerCsv = (ledger) => el('button', { type: 'button', class: 'csv', 'data-ledger': ledger,
      onclick: () => this.download(`/v1/admin/ledger.csv?${new URLSearchParams({ buyer_id: m.id, ledger })}`,
        `ledger-${ledger}-${m.id}.csv`, 'member-message') },
    `${LEDGER[ledger]} CSV`);
    const ledgerColumns = (unit) => [
      [t('时间', 'Time'), (e) => when(e.created_at)],
      [t('原因', 'Reason'), (e) => e.reason],
      [t('变动', 'Change'), (e) => unit(e.delta, true)],
      [t('变动后', 'After'), (e) => unit(e.balance_after)],
      [t('订单', 'Order'), (e) => (e.order_id ? orderLink(this, e.order_id) : '')],
    ];
    const fen = (v, signed) => (signed && v > 0 ? '+' : '') + yuan(v);
    const pts = (v, signed) => (signed && v > 0 ? '+' : '') + String(v);
    box.replaceChildren(
      el('h2', {}, `${m.name} `, el('small', {}, `#${m.id}`)),
      el('div', { class: 'toolbar' }, ...actions, ledgerCsv('balance'), ledgerCsv('points')),
      el('p', { id: 'member-message', class: 'message ok', role: 'status' }, notice),
      facts([
        [t('手机', 'Phone'), m.phone],
        [t('余额', 'Balance'), yuan(m.balance_fen), 'member-balance'],
        [t('积分', 'Points'), String(m.points), 'member-points'],
        [t('成长值', 'Growth'), String(m.growth)],
        [t('等级', 'Level'), p?.level ? `${p.level.name} (${p.level.id})` : this.levelName(m.level_id)],
        [t('会员', 'Membership'), membershipText(m), 'member-membership'],
        [t('次卡', 'Passes'), p?.passes?.length ? p.passes.map((x) => `${x.plan_name} ${x.uses_left}/${x.uses_total}`).join(', ') : null],
        [t('购买次数', 'Purchases'), p ? String(p.purchase_count) : null],
        [t('累计节省', 'Saved in total'), p ? `${yuan(p.total_saved_fen)}${p.total_saved_points ? ` + ${p.total_saved_points} ${t('积分', 'points')}` : ''}` : null],
        [t('推广员', 'Promoter'), p ? (p.is_promoter ? t('是', 'Yes') : t('否', 'No')) : null],
        [t('注册', 'Joined'), when(m.created_at)],
      ]),
      el('h3', {}, t('微信身份', 'WeChat identities')),
      table(d.wechat || [], [['AppID', (w) => w.appid], ['OpenID', (w) => w.openid]]),
      el('h3', {}, t('会员期', 'Membership periods')),
      table(d.periods || [], [
        [t('开始', 'Starts'), (p) => when(p.starts_at)],
        [t('结束', 'Ends'), (p) => (p.permanent ? t('永久', 'Permanent') : when(p.ends_at))],
        [t('订单', 'Order'), (p) => orderLink(this, p.order_id)],
        [t('已撤销', 'Removed'), (p) => when(p.removed_at)],
      ], { id: 'member-periods' }),
      el('h3', {}, t('次卡', 'Passes')),
      table(d.passes || [], [
        [t('套餐', 'Plan'), (p) => p.plan_name],
        [t('剩余/总次数', 'Uses left / total'), (p) => `${p.uses_left} / ${p.uses_total}`],
        [t('订单', 'Order'), (p) => orderLink(this, p.order_id)],
        [t('已撤销', 'Revoked'), (p) => when(p.revoked_at)],
      ]),
      el('h3', {}, t('订单', 'Orders')),
      table(d.orders || [], [
        [t('订单号', 'Order'), (o) => orderLink(this, o.id, o.order_no)],
        [t('套餐', 'Plan'), (o) => o.plan_name],
        [t('支付', 'Pay method'), (o) => PAY_METHOD[o.pay_method] || o.pay_method],
        [t('金额', 'Amount'), (o) => price(o)],
        [t('状态', 'Status'), (o) => STATUS[o.status] || o.status],
        [t('时间', 'Time'), (o) => when(o.paid_at || o.created_at)],
      ], { id: 'member-orders' }),
      el('h3', {}, t('余额流水', 'Balance ledger')),
      table(d.balance_ledger || [], ledgerColumns(fen), { id: 'member-balance-ledger' }),
      el('h3', {}, t('积分流水', 'Points ledger')),
      table(d.point_ledger || [], ledgerColumns(pts), { id: 'member-point-ledger' }),
      el('h3', {}, t('站内信', 'Inbox')),
      table(d.inbox || [], [
        [t('时间', 'Time'), (n) => when(n.created_at)],
        [t('标题', 'Title'), (n) => n.title],
        [t('内容', 'Message'), (n) => n.body],
        [t('已读', 'Read'), (n) => when(n.read_at)],
      ]),
      el('h3', {}, t('操作记录', 'Audit log')),
      table(d.audit || [], [
        [t('时间', 'Time'), (a) => when(a.at)],
        [t('操作人', 'By'), (a) => a.actor_name || `#${a.actor_id}`],
        [t('操作', 'Action'), (a) => a.action],
        [t('原因', 'Reason'), (a) => a.reason],
        [t('订单', 'Order'), (a) => (a.order_id ? orderLink(this, a.order_id) : '')],
        [t('详情', 'Details'), (a) => el('code', {}, JSON.stringify(a.details ?? {}))],
      ], { id: 'member-audit' }),
    );
    box.scrollIntoView?.({ block: 'start' });
  }

  /** Re-reads the open member, now and once more after the workers had a moment. */
  refreshMember(id, notice) {
    this.openMember(id, notice);
    setTimeout(() => {
      if (this.memberId === id && this.role) this.openMember(id, notice);
    }, 1500);
  }

  async grant(m) {
    if (this.plans.length === 0) await this.loadPlans(false);
    const grantable = this.plans.filter((p) => !p.archived_at && !p.is_free);
    let key = newKey();
    dialog({
      title: `${t('赠送会员', 'Grant a plan to')} ${m.name} #${m.id}`,
      submit: t('赠送', 'Grant'),
      body: [
        field('套餐', 'Plan', el('select', { name: 'plan_id' },
          grantable.map((p) => el('option', { value: p.id }, `${p.name} (${p.code})`)))),
        reasonField(),
      ],
      onSubmit: async (form) => {
        const reason = reasonOf(form);
        if (!reason) return NEED_REASON;
        const planId = Number(form.elements.plan_id.value);
        if (!planId) return t('请选择套餐', 'Choose a plan');
        const res = await this.session.api('PUT', `/v1/admin/users/${m.id}/membership`, { plan_id: planId, reason },
          { 'Idempotency-Key': key });
        if (res.status === -1) return null;
        if (settled(res.status)) key = newKey();
        else return holdForRetry(form);
        if (res.status !== 201 && res.status !== 200) return errorText(res);
        this.refreshMember(m.id, `${t('已赠送', 'Granted')}: ${res.body.plan_name} · ${res.body.order_no}`);
        return null;
      },
    });
  }

  revoke(m) {
    let key = newKey();
    dialog({
      title: `${t('撤销会员', 'Revoke the membership of')} ${m.name} #${m.id}`,
      submit: t('撤销', 'Revoke'),
      danger: true,
      body: [el('p', {}, t('当前会员期立即结束，之后的会员期被移除（次卡保留）。',
        'The running period ends now and later ones are removed (passes are kept).')), reasonField()],
      onSubmit: async (form) => {
        const reason = reasonOf(form);
        if (!reason) return NEED_REASON;
        const res = await this.session.api('DELETE', `/v1/admin/users/${m.id}/membership`, { reason },
          { 'Idempotency-Key': key });
        if (res.status === -1) return null;
        if (settled(res.status)) key = newKey();
        else return holdForRetry(form);
        if (res.status < 200 || res.status > 299) return errorText(res);
        this.refreshMember(m.id, t('会员已撤销', 'Membership revoked'));
        return null;
      },
    });
  }

  adjust(m) {
    let key = newKey();
    const amount = el('input', { name: 'amount', inputmode: 'decimal', autocomplete: 'off', placeholder: '-12.34 / 12.34' });
    const unit = el('span', { class: 'en', id: 'adjust-unit' }, t('元，可为负数', 'yuan, may be negative'));
    const ledger = el('select', { name: 'ledger', onchange: () => {
      const balance = ledger.value === 'balance';
      unit.textContent = balance ? t('元，可为负数', 'yuan, may be negative') : t('积分，整数，可为负数', 'points, whole, may be negative');
      amount.placeholder = balance ? '-12.34 / 12.34' : '-100 / 100';
      amount.inputMode = balance ? 'decimal' : 'numeric';
    } }, el('option', { value: 'balance' }, LEDGER.balance), el('option', { value: 'points' }, LEDGER.points));
    dialog({
      title: `${t('调整余额/积分', 'Adjust the balance or points of')} ${m.name} #${m.id}`,
      submit: t('调整', 'Adjust'),
      body: [
        el('p', {}, `${t('当前', 'Now')}: ${yuan(m.balance_fen)} · ${m.points} ${t('积分', 'points')}`),
        field('账户', 'Ledger', ledger),
        el('label', {}, '数量 ', unit, amount),
        reasonField(),
      ],
      onSubmit: async (form) => {
        const which = form.elements.ledger.value;
        const text = form.elements.amount.value;
        const delta = which === 'balance' ? parseYuan(text, { negative: true }) : parseInteger(text, { negative: true });
        if (delta === null) {
          return which === 'balance'
            ? t('金额格式不对：元，最多两位小数，如 12.34 或 -5', 'Not an amount: yuan with at most two decimals, e.g. 12.34 or -5')
            : t('积分应为整数，如 100 或 -50', 'Points are a whole number, e.g. 100 or -50');
        }
        if (delta === 0) return t('调整数量不能为 0', 'The change cannot be 0');
        const reason = reasonOf(form);
        if (!reason) return NEED_REASON;
        const res = await this.session.api('POST', `/v1/admin/members/${m.id}/adjustments`, { ledger: which, delta, reason },
          { 'Idempotency-Key': key });
        if (res.status === -1) return null;
        if (settled(res.status)) key = newKey();
        else return holdForRetry(form);
        if (res.status !== 201 && res.status !== 200) return errorText(res);
        const after = res.body.ledger === 'balance' ? yuan(res.body.balance_after) : `${res.body.balance_after} ${t('积分', 'points')}`;
        this.openMember(m.id, `${t('已调整', 'Adjusted')}: ${LEDGER[res.body.ledger] || res.body.ledger} → ${after}`);
        return null;
      },
    });
  }

  // -------------------------------------------------------------------------------------------
  // Plans.

  async loadPlans(render = true) {
    const res = await this.fetchPlans();
    if (res.status === -1) return;
    if (res.status !== 200) return say('plans-message', errorText(res), false);
    this.plans = res.body.plans;
    if (!render) return;
    $('bo-plans').replaceChildren(...(this.plans.length ? this.plans.map((p) => this.planRow(p)) : [emptyRow(13)]));
  }

  planRow(p) {
    const archived = Boolean(p.archived_at);
    const term = p.kind === 'membership' ? `${p.duration_days} ${t('天', 'days')}`
      : p.kind === 'pass' ? `${p.uses} ${t('次', 'uses')}` : t('永久', 'Forever');
    const controls = this.admin && !archived ? [
      el('button', { type: 'button', class: 'edit', 'data-admin': true, onclick: () => this.editPlan(p) }, t('编辑', 'Edit')),
      el('button', { type: 'button', class: 'archive danger', 'data-admin': true, onclick: () => this.removePlan(p) },
        p.sold ? t('归档', 'Archive') : t('删除', 'Delete')),
    ] : [];
    return el('tr', { 'data-plan': p.code, 'data-plan-id': p.id, class: archived ? 'archived' : '' },
      el('td', {}, p.code),
      el('td', {}, p.name, archived ? el('span', { class: 'tag' }, t('已归档', 'Archived')) : null),
      el('td', {}, KIND[p.kind] || p.kind),
      el('td', {}, term),
      el('td', { class: 'amount' }, yuan(p.original_price_fen)),
      el('td', { class: 'amount price' }, p.is_free ? t('免费', 'Free') : yuan(p.price_fen)),
      el('td', {}, p.price_points === null || p.price_points === undefined ? '—' : String(p.price_points)),
      el('td', {}, p.on_shelf ? t('是', 'Yes') : t('否', 'No')),
      el('td', {}, String(p.sort)),
      el('td', {}, methods(p.pay_methods, PAY_METHOD)),
      el('td', {}, methods(p.channels, CHANNEL)),
      el('td', {}, p.sold ? t('是', 'Yes') : t('否', 'No')),
      el('td', { class: 'controls' }, controls));
  }

  /** The plan form: `plan` to edit (only the fields changed are sent), or null for a new one. */
  editPlan(plan) {
    const isNew = plan === null;
    const p = plan || { kind: 'membership', on_shelf: true, sort: 0, pay_methods: null, channels: null, is_free: false };
    const input = (name, value, attrs = {}) => el('input', { name, value: value ?? '', autocomplete: 'off', ...attrs });
    const kind = el('select', { name: 'kind', disabled: !isNew, onchange: () => showTerm() },
      options(KIND, { all: false, selected: p.kind }));
    const duration = field('时长（天）', 'Duration (days)', input('duration_days', p.duration_days, { inputmode: 'numeric' }));
    const uses = field('次数', 'Uses', input('uses', p.uses, { inputmode: 'numeric' }));
    const showTerm = () => {
      duration.hidden = kind.value !== 'membership';
      uses.hidden = kind.value !== 'pass';
    };
    showTerm();
    const body = [
      isNew ? field('代码', 'Code (a-z, 0-9, _; never changes)', input('code', '', { spellcheck: 'false' })) : null,
      field('名称', 'Name', input('name', p.name)),
      field('类型', 'Kind', kind),
      duration,
      uses,
      el('div', { class: 'row' },
        field('原价（元）', 'Original price (yuan)', input('original_price', isNew ? '' : fenText(p.original_price_fen), { inputmode: 'decimal' })),
        field('价格（元）', 'Price (yuan)', input('price', isNew ? '' : fenText(p.price_fen), { inputmode: 'decimal' })),
        field('积分价', 'Points price (empty: not for points)', input('price_points', p.price_points, { inputmode: 'numeric' }))),
      isNew ? field('免费套餐', 'Free plan (claimed once per buyer)', el('input', { type: 'checkbox', name: 'is_free' }), { class: 'check' }) : null,
      field('上架', 'On shelf', el('input', { type: 'checkbox', name: 'on_shelf', checked: p.on_shelf }), { class: 'check' }),
      field('排序', 'Sort', input('sort', p.sort, { inputmode: 'numeric' })),
      field('图片地址', 'Image URL (empty: none)', input('image_url', p.image_url, { spellcheck: 'false' })),
      choice('pay_methods', t('支付方式', 'Pay methods'), PLAN_PAY_METHODS, PAY_METHOD, p.pay_methods),
      choice('channels', t('支付渠道', 'Channels'), CHANNELS, CHANNEL, p.channels),
    ];
    dialog({
      title: isNew ? t('新建套餐', 'New plan') : `${t('编辑套餐', 'Edit plan')} ${p.code}`,
      submit: isNew ? t('创建', 'Create') : t('保存', 'Save'),
      body,
      onSubmit: async (form) => {
        const read = readPlan(form);
        if (read.error) return read.error;
        const values = read.values;
        let res;
        if (isNew) {
          const code = form.elements.code.value.trim();
          if (!code) return t('请填写代码', 'Give the plan a code');
          const body2 = { code, kind: form.elements.kind.value, ...values, is_free: form.elements.is_free.checked };
          if (body2.kind !== 'membership') delete body2.duration_days;
          if (body2.kind !== 'pass') delete body2.uses;
          for (const k of ['price_points', 'image_url', 'pay_methods', 'channels']) if (body2[k] === null) delete body2[k];
          res = await this.session.api('POST', '/v1/admin/plans', body2);
          if (res.status === -1) return null;
          if (res.status !== 201) return errorText(res);
        } else {
          const change = {};
          for (const [k, v] of Object.entries(values)) {
            if (k === 'duration_days' && p.kind !== 'membership') continue;
            if (k === 'uses' && p.kind !== 'pass') continue;
            if (!same(v, p[k])) change[k] = v;
          }
          if (Object.keys(change).length === 0) return null;
          res = await this.session.api('PATCH', `/v1/admin/plans/${p.id}`, change);
          if (res.status === -1) return null;
          if (res.status !== 200) return errorText(res);
        }
        say('plans-message', `${isNew ? t('已创建', 'Created') : t('已保存', 'Saved')}: ${res.body.name} (${res.body.code})`);
        this.loadPlans();
        return null;
      },
    });
  }

  removePlan(p) {
    dialog({
      title: `${p.sold ? t('归档套餐', 'Archive plan') : t('删除套餐', 'Delete plan')} ${p.code}`,
      submit: p.sold ? t('归档', 'Archive') : t('删除', 'Delete'),
      danger: true,
      body: [el('p', {}, p.sold
        ? t('此套餐已售出过：将被归档（永久下架，保留给已有订单）。', 'This plan was sold: it is archived (off the shelf for good, kept for its orders).')
        : t('此套餐从未售出：将被删除。', 'This plan was never sold: it is deleted.'))],
      onSubmit: async () => {
        const res = await this.session.api('DELETE', `/v1/admin/plans/${p.id}`);
        if (res.status === -1) return null;
        if (res.status !== 200) return errorText(res);
        say('plans-message', `${res.body.deleted ? t('已删除', 'Deleted') : t('已归档', 'Archived')}: ${p.name} (${p.code})`);
        this.loadPlans();
        return null;
      },
    });
  }

  // -------------------------------------------------------------------------------------------
  // Levels.

  async loadLevels(render = true) {
    const res = await this.fetchLevels();
    if (res.status === -1) return;
    if (res.status !== 200) {
      if (render) say('levels-message', errorText(res), false);
      return;
    }
    this.levels = res.body.levels;
    if (!render) return;
    $('bo-levels').replaceChildren(...(this.levels.length ? this.levels.map((l) => el('tr', { 'data-level': l.id },
      el('td', {}, String(l.id)),
      el('td', {}, l.name),
      el('td', {}, String(l.min_growth)),
      el('td', {}, `${l.discount_percent}%`),
      el('td', {}, `${l.points_bonus_percent}%`),
      el('td', {}, String(l.members)),
      el('td', { class: 'controls' }, this.admin ? [
        el('button', { type: 'button', class: 'edit', 'data-admin': true, onclick: () => this.editLevel(l) }, t('编辑', 'Edit')),
        el('button', { type: 'button', class: 'delete danger', 'data-admin': true, onclick: () => this.removeLevel(l) }, t('删除', 'Delete')),
      ] : []))) : [emptyRow(7)]));
  }

  editLevel(level) {
    const isNew = level === null;
    const l = level || { points_bonus_percent: 100, discount_percent: 100 };
    const input = (name, value, attrs = {}) => el('input', { name, value: value ?? '', autocomplete: 'off', ...attrs });
    dialog({
      title: isNew ? t('新建等级', 'New level') : `${t('编辑等级', 'Edit level')} ${l.name}`,
      submit: isNew ? t('创建', 'Create') : t('保存', 'Save'),
      body: [
        isNew ? field('ID', 'Id (a whole number)', input('id', '', { inputmode: 'numeric' })) : null,
        field('名称', 'Name', input('name', l.name)),
        field('最低成长值', 'Min growth', input('min_growth', l.min_growth, { inputmode: 'numeric' })),
        field('价格比例 %', 'Pays % of the price (100: no discount; 90: 10% off)', input('discount_percent', l.discount_percent, { inputmode: 'numeric' })),
        field('积分加成 %', 'Reward points % (100: as is)', input('points_bonus_percent', l.points_bonus_percent, { inputmode: 'numeric' })),
      ],
      onSubmit: async (form) => {
        const f = form.elements;
        const values = { name: f.name.value.trim() };
        for (const k of ['min_growth', 'discount_percent', 'points_bonus_percent']) {
          values[k] = parseInteger(f[k].value);
          if (values[k] === null) return `${k}: ${t('应为整数', 'a whole number')}`;
        }
        if (!values.name) return t('请填写名称', 'Give the level a name');
        let res;
        if (isNew) {
          const id = parseInteger(f.id.value);
          if (id === null) return `id: ${t('应为整数', 'a whole number')}`;
          res = await this.session.api('POST', '/v1/admin/levels', { id, ...values });
          if (res.status === -1) return null;
          if (res.status !== 201) return errorText(res);
        } else {
          const change = Object.fromEntries(Object.entries(values).filter(([k, v]) => v !== l[k]));
          if (Object.keys(change).length === 0) return null;
          res = await this.session.api('PATCH', `/v1/admin/levels/${l.id}`, change);
          if (res.status === -1) return null;
          if (res.status !== 200) return errorText(res);
        }
        say('levels-message', `${isNew ? t('已创建', 'Created') : t('已保存', 'Saved')}: ${res.body.name}`);
        this.loadLevels();
        return null;
      },
    });
  }

  removeLevel(l) {
    dialog({
      title: `${t('删除等级', 'Delete level')} ${l.name}`,
      submit: t('删除', 'Delete'),
      danger: true,
      body: [el('p', {}, t('只能删除没有会员的等级。', 'Only a level no buyer is at can be deleted.'))],
      onSubmit: async () => {
        const res = await this.session.api('DELETE', `/v1/admin/levels/${l.id}`);
        if (res.status === -1) return null;
        if (res.status !== 204 && res.status !== 200) return errorText(res);
        say('levels-message', `${t('已删除', 'Deleted')}: ${l.name}`);
        this.loadLevels();
        return null;
      },
    });
  }

  // -------------------------------------------------------------------------------------------
  // Dashboard.

  get timeZone() {
    return localStorage.getItem(ZONE_KEY) || Intl.DateTimeFormat().resolvedOptions().timeZone;
  }

  /** The last 30 days up to today, in the shop's time zone (as last told by the API). */
  defaultRange() {
    const f = $('stats-range').elements;
    const today = todayIn(this.timeZone);
    f.to.value = today;
    f.from.value = addDays(today, -29);
  }

  async loadStats() {
    const f = $('stats-range').elements;
    if (!this.statsRangeChosen || !f.from.value || !f.to.value) this.defaultRange();
    if (f.from.value > f.to.value) return say('stats-message', t('开始日期晚于结束日期', 'From is after To'), false);
    const q = new URLSearchParams({ from: f.from.value, to: f.to.value });
    const res = await this.fetchStats(q.toString());
    if (res.status === -1) return;
    if (res.status !== 200) return say('stats-message', errorText(res), false);
    const s = res.body;
    if (s.time_zone && s.time_zone !== localStorage.getItem(ZONE_KEY)) {
      const guessed = this.timeZone;
      localStorage.setItem(ZONE_KEY, s.time_zone);
      // Today in the shop's zone may be another day than in the one guessed: ask again.
      if (!this.statsRangeChosen && todayIn(guessed) !== todayIn(s.time_zone)) return this.loadStats();
    }
    say('stats-message', '');
    $('stats-zone').textContent = `${t('按店铺时区统计', 'Days in the shop\'s time zone')}: ${s.time_zone}`;
    this.renderStats(s);
  }

  renderStats(s) {
    const days = s.days || [];
    const sum = (k) => days.reduce((n, d) => n + (d[k] || 0), 0);
    const points = days.reduce((n, d) => n + (d.sales || []).reduce((m, x) => m + (x.revenue_points || 0), 0), 0);
    $('stat-revenue').textContent = yuan(sum('net_revenue_fen'));
    $('stat-revenue').dataset.fen = String(sum('net_revenue_fen'));
    $('stat-paid-orders').textContent = String(sum('paid_orders'));
    $('stat-refunds').textContent = String(sum('refunds'));
    $('stat-revenue-points').textContent = `${t('销售额', 'Sales')} ${yuan(sum('revenue_fen'))}`
      + (points ? ` + ${points} ${t('积分', 'points')}` : '');
    $('stat-refunded').textContent = `${t('退款金额', 'Refunded')} ${yuan(sum('refunded_fen'))}`;
    $('stat-new-members').textContent = String(sum('new_members'));
    $('stat-active').textContent = days.length ? String(days.at(-1).active_at_end) : '0';
    $('stat-expiring').textContent = String(s.expiring_next_7_days ?? 0);
    $('bo-days').replaceChildren(...(days.length ? [...days].reverse().map((d) => el('tr', { 'data-day': d.day },
      el('td', {}, d.day),
      el('td', {}, String(d.paid_orders)),
      el('td', { class: 'amount' }, yuan(d.revenue_fen)),
      el('td', {}, String((d.sales || []).reduce((m, x) => m + (x.revenue_points || 0), 0))),
      el('td', {}, String(d.refunds)),
      el('td', { class: 'amount' }, yuan(d.refunded_fen)),
      el('td', {}, String(d.new_members)),
      el('td', {}, String(d.renewals)),
      el('td', {}, String(d.lapsed)),
      el('td', {}, String(d.active_at_end)))) : [emptyRow(10)]));
    this.drawCharts(days);
  }

  destroyCharts() {
    for (const c of this.charts) c.destroy();
    this.charts = [];
  }

  drawCharts(days) {
    this.destroyCharts();
    if (typeof window.Chart !== 'function') {
      say('stats-message', t('图表脚本未加载', 'The chart script did not load'), false);
      return;
    }
    const labels = days.map((d) => d.day);
    const paidMethods = [...new Set(days.flatMap((d) => (d.sales || []).filter((x) => x.revenue_fen > 0).map((x) => x.pay_method)))];
    const revenue = paidMethods.map((m) => ({
      label: PAY_METHOD[m] || m,
      backgroundColor: CHART_COLORS[m] || '#5d6873',
      data: days.map((d) => ((d.sales || []).find((x) => x.pay_method === m)?.revenue_fen || 0) / 100),
      stack: 'revenue',
    }));
    const common = {
      animation: false,
      responsive: true,
      maintainAspectRatio: false,
      interaction: { mode: 'index', intersect: false },
      plugins: { legend: { position: 'bottom' } },
    };
    this.charts.push(new window.Chart($('chart-revenue'), {
      type: 'bar',
      data: { labels, datasets: revenue },
      options: {
        ...common,
        scales: { x: { stacked: true }, y: { stacked: true, beginAtZero: true, title: { display: true, text: '¥' } } },
      },
    }));
    this.charts.push(new window.Chart($('chart-members'), {
      data: {
        labels,
        datasets: [
          { type: 'line', label: t('期末有效会员', 'Active at day end'), data: days.map((d) => d.active_at_end),
            borderColor: '#14324a', backgroundColor: '#14324a', tension: 0.2, pointRadius: 2 },
          { type: 'bar', label: t('新会员', 'New members'), data: days.map((d) => d.new_members), backgroundColor: '#1b6e3a' },
          { type: 'bar', label: t('流失', 'Lapsed'), data: days.map((d) => d.lapsed), backgroundColor: '#a11' },
        ],
      },
      options: { ...common, scales: { y: { beginAtZero: true, ticks: { precision: 0 } } } },
    }));
  }
}

// ---------------------------------------------------------------------------------------------

function membershipText(m) {
  if (m.permanent) return t('永久会员', 'Permanent');
  if (!m.membership_ends_at) return t('无', 'None');
  const ends = new Date(m.membership_ends_at);
  return `${ends > new Date() ? t('有效至', 'Until') : t('已于', 'Ended')} ${when(m.membership_ends_at)}`;
}

function orderLink(office, id, label) {
  return el('button', { type: 'button', class: 'link', 'data-order': id, onclick: (e) => {
    e.stopPropagation();
    office.openOrder(id);
  } }, label || `#${id}`);
}

/** What refunding order `o` reverses, one line each (ids for the tests). */
function reversalList(o) {
  const r = o.reversal;
  const items = [];
  if (r.refund_fen > 0) {
    items.push(el('li', { id: 'reverse-money' }, `${t('退款', 'Money back')} ${yuan(r.refund_fen)} → ${PAY_METHOD[o.pay_method] || o.pay_method}`));
  }
  if (r.refund_points > 0) {
    items.push(el('li', { id: 'reverse-points' }, `${t('退回积分', 'Points back')} ${r.refund_points}`));
  }
  if (r.permanent ?? o.plan_kind === 'permanent') {
    items.push(el('li', { id: 'reverse-permanent' }, t('永久会员被取消', 'The permanent membership ends')));
  }
  if (r.membership_secs > 0) {
    items.push(el('li', { id: 'reverse-days' }, `${t('会员时长减少', 'Membership shortened by')} ${daysText(r.membership_secs)} ${t('天', 'days')}`));
  }
  if (r.reward_points > 0) {
    items.push(el('li', { id: 'reverse-reward' }, `${t('收回奖励积分', 'Reward points taken back')} ${r.reward_points}`));
  }
  if (r.pass_uses > 0) {
    items.push(el('li', { id: 'reverse-uses' }, `${t('收回次卡次数', 'Pass uses removed')} ${r.pass_uses}`));
  }
  if (items.length === 0) items.push(el('li', {}, t('无需退还（免费或赠送订单）', 'Nothing to give back (a free or granted order)')));
  return el('ul', { class: 'reversal-list', id: 'reversal' }, items);
}

/** Checkboxes for a plan's pay methods or channels: "all the shop takes" (null) or these. */
function choice(name, legend, values, labels, current) {
  const all = current === null || current === undefined;
  const boxes = values.map((v) => el('label', { class: 'check' },
    el('input', { type: 'checkbox', name, value: v, checked: !all && current.includes(v) }), labels[v] || v));
  return el('fieldset', { class: 'choice' },
    el('legend', {}, legend),
    el('label', { class: 'check' }, el('input', { type: 'radio', name: `${name}_mode`, value: 'all', checked: all }),
      t('店铺支持的全部', 'All the shop takes')),
    el('label', { class: 'check' }, el('input', { type: 'radio', name: `${name}_mode`, value: 'only', checked: !all }),
      t('仅以下', 'Only these:')),
    el('div', { class: 'boxes' }, boxes));
}

/** The plan form's values as the API takes them, or `{error}`. */
function readPlan(form) {
  const f = form.elements;
  const values = {};
  values.name = f.name.value.trim();
  if (!values.name) return { error: t('请填写名称', 'Give the plan a name') };
  const kind = f.kind.value;
  if (kind === 'membership') {
    values.duration_days = parseInteger(f.duration_days.value);
    if (!values.duration_days) return { error: t('时长应为正整数天数', 'The duration is a whole number of days, at least 1') };
  }
  if (kind === 'pass') {
    values.uses = parseInteger(f.uses.value);
    if (!values.uses) return { error: t('次数应为正整数', 'Uses is a whole number, at least 1') };
  }
  const money = t('元，最多两位小数', 'yuan with at most two decimals, e.g. 29.90');
  values.original_price_fen = parseYuan(f.original_price.value);
  if (values.original_price_fen === null) return { error: `${t('原价', 'Original price')}: ${money}` };
  values.price_fen = parseYuan(f.price.value);
  if (values.price_fen === null) return { error: `${t('价格', 'Price')}: ${money}` };
  const points = f.price_points.value.trim();
  values.price_points = points === '' ? null : parseInteger(points);
  if (values.price_points === null && points !== '') return { error: t('积分价应为整数', 'The points price is a whole number') };
  values.on_shelf = f.on_shelf.checked;
  values.sort = parseInteger(f.sort.value || '0', { negative: true });
  if (values.sort === null) return { error: t('排序应为整数', 'Sort is a whole number') };
  values.image_url = f.image_url.value.trim() || null;
  for (const name of ['pay_methods', 'channels']) {
    const mode = form.querySelector(`input[name=${name}_mode]:checked`)?.value || 'all';
    if (mode === 'all') {
      values[name] = null;
    } else {
      values[name] = [...form.querySelectorAll(`input[name=${name}]:checked`)].map((i) => i.value);
      if (values[name].length === 0) return { error: `${name}: ${t('至少选择一项', 'choose at least one, or All')}` };
    }
  }
  return { values };
}

/** Whether a form value equals the plan's (arrays as sets; null only equals null). */
function same(a, b) {
  if (Array.isArray(a) || Array.isArray(b)) {
    if (!Array.isArray(a) || !Array.isArray(b)) return false;
    return a.length === b.length && [...a].sort().join() === [...b].sort().join();
  }
  return (a ?? null) === (b ?? null);
}

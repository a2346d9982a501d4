// Shared by /vip and /console: the signed-in token, API calls, bilingual labels, formatting.

/** `zh` and `en` side by side, as every label on these pages is shown. */
export function t(zh, en) {
  return `${zh} ${en}`;
}

/** An element with attributes and children (strings become text, never HTML). */
export function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith('on')) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v === true ? '' : v);
  }
  for (const c of children.flat()) {
    if (c !== undefined && c !== null && c !== false) e.append(c);
  }
  return e;
}

/** Integer fen as yuan, without floating point: 1990 → "¥19.90". */
export function yuan(fen) {
  const sign = fen < 0 ? '-' : '';
  const abs = Math.abs(fen);
  return `${sign}¥${Math.floor(abs / 100)}.${String(abs % 100).padStart(2, '0')}`;
}

/** A time stamp in the browser's time zone, 24-hour clock. */
export function when(iso) {
  if (!iso) return '';
  return new Date(iso).toLocaleString('zh-CN', { hour12: false });
}

/** A date in the browser's time zone. */
export function day(iso) {
  return new Date(iso).toLocaleDateString('zh-CN');
}

export const STATUS = {
  pending_payment: t('待支付', 'Pending payment'),
  paid: t('已支付', 'Paid'),
  closed: t('已关闭', 'Closed'),
  refund_pending: t('退款中', 'Refund pending'),
  refunded: t('已退款', 'Refunded'),
};

export const PAY_METHOD = {
  balance: t('余额', 'Balance'),
  points: t('积分', 'Points'),
  free: t('免费', 'Free'),
  wechat: t('微信支付', 'WeChat Pay'),
  alipay: t('支付宝', 'Alipay'),
  admin_grant: t('赠送', 'Granted'),
};

/** What an order cost, in its own currency. */
export function price(order) {
  if (order.amount_points > 0) return `${order.amount_points} ${t('积分', 'points')}`;
  if (order.amount_fen > 0) return yuan(order.amount_fen);
  return t('免费', 'Free');
}

/** A random key (works outside secure contexts too, unlike `crypto.randomUUID`). */
export function randomKey() {
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  return Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join('');
}

/** The claims of a JWT, read without checking it (the server checks it), or null. */
export function claims(token) {
  try {
    const part = token.split('.')[1].replace(/-/g, '+').replace(/_/g, '/');
    return JSON.parse(atob(part + '='.repeat((4 - (part.length % 4)) % 4)));
  } catch {
    return null;
  }
}

/** Why `token` cannot be used by a page for `roles`, or null when it looks right. */
export function tokenProblem(token, roles) {
  const c = claims(token);
  if (!c) return t('这不是一个有效的令牌', 'This is not a valid token');
  if (typeof c.exp === 'number' && c.exp * 1000 <= Date.now()) {
    return t('令牌已过期', 'The token has expired');
  }
  if (c.role && !roles.includes(c.role)) {
    return t('此页面需要以下角色之一：', 'This page needs one of the roles: ') + roles.join(', ');
  }
  return null;
}

/**
 * The page's signed-in token, kept in the browser's storage under `key`, with the sign-in
 * form (`#signin`) and sign-out button (`#signout`). Signed out, only the form shows and the
 * page makes no API call.
 *
 * The form takes a pasted token (`token`). With `credentials`, it also signs in another way
 * (the console's username and password): `credentials(form, submitter)` is awaited for
 * `{token}`, `{error}`, or null to use the pasted token.
 */
export class Session {
  constructor(key, roles, { onSignIn, onSignOut, credentials }) {
    this.key = key;
    this.roles = roles;
    this.onSignIn = onSignIn;
    this.onSignOut = onSignOut;
    this.form = document.getElementById('signin');
    this.app = document.getElementById('app');
    this.signout = document.getElementById('signout');
    this.form.addEventListener('submit', async (e) => {
      e.preventDefault();
      const error = this.form.querySelector('.error');
      let token = this.form.elements.token.value.trim();
      if (credentials) {
        const submit = e.submitter || this.form.querySelector('button[type=submit]');
        submit.disabled = true;
        error.textContent = '';
        const answer = await credentials(this.form, e.submitter);
        submit.disabled = false;
        if (answer?.error) {
          error.textContent = answer.error;
          return;
        }
        if (answer) token = answer.token;
      }
      const problem = tokenProblem(token, roles);
      if (problem) {
        error.textContent = problem;
        return;
      }
      localStorage.setItem(key, token);
      this.form.reset();
      this.start();
    });
    this.signout.addEventListener('click', () => this.end());
    /** Bumped at each sign-out: an answer to a request made before it is dropped. */
    this.generation = 0;
  }

  get token() {
    return localStorage.getItem(this.key);
  }

  /** Shows the app when a usable token is stored, the form otherwise. */
  start() {
    const token = this.token;
    const problem = token ? tokenProblem(token, this.roles) : null;
    if (!token || problem) {
      this.end(problem);
      return;
    }
    this.form.hidden = true;
    this.app.hidden = false;
    this.signout.hidden = false;
    this.onSignIn();
  }

  /** Forgets the token and shows only the form, with `why` when given. */
  end(why) {
    this.generation += 1;
    localStorage.removeItem(this.key);
    this.onSignOut();
    this.app.hidden = true;
    this.signout.hidden = true;
    this.form.hidden = false;
    this.form.querySelector('.error').textContent = why || '';
  }

  /**
   * Calls the API with the token: `{status, body, headers}`; status 0 when the gateway could
   * not be reached or the answer was cut off, -1 when the page was signed out meanwhile (the
   * caller drops it). A 401 signs the page out (the token expired or was revoked).
   */
  async api(method, path, body, headers = {}) {
    const token = this.token;
    const generation = this.generation;
    if (!token) return { status: -1, body: null };
    // Offline, a request could only fail: the caller tries again when the network is back.
    if (!navigator.onLine) return { status: 0, body: null };
    const init = { method, headers: { Authorization: `Bearer ${token}`, ...headers } };
    if (body !== undefined) {
      init.headers['Content-Type'] = 'application/json';
      init.body = JSON.stringify(body);
    }
    let res;
    let parsed;
    try {
      res = await fetch(path, init);
      const type = res.headers.get('Content-Type') || '';
      parsed = type.includes('json') ? await res.json() : await res.blob();
    } catch {
      return generation === this.generation ? { status: 0, body: null } : { status: -1, body: null };
    }
    if (generation !== this.generation) return { status: -1, body: null };
    if (res.status === 401) {
      this.end(t('登录已失效，请重新登录', 'Signed out: the token is no longer valid'));
      return { status: -1, body: null };
    }
    return { status: res.status, body: parsed, headers: res.headers };
  }
}

/**
 * Whether an answer settles a purchase for good: a 2xx, or a refusal that the same request
 * would meet again. A timeout (408), a limit (429) or a server error may have bought already:
 * the purchase is asked again with the same Idempotency-Key.
 */
export function settled(status) {
  return (status >= 200 && status < 300) || (status >= 400 && status < 500 && status !== 408 && status !== 429);
}

/** Keeps only the latest of overlapping calls: `latest(fn)` drops the answers of older calls. */
export function latest(load) {
  let turn = 0;
  return async (...args) => {
    const mine = ++turn;
    const res = await load(...args);
    return mine === turn ? res : { status: -1, body: null };
  };
}

/** The message of an API error body, or a general one. */
export function errorText(res) {
  if (res.status === 0) return t('无法连接服务器，请重试', 'Cannot reach the server; try again');
  return res.body?.error?.message || `HTTP ${res.status}`;
}

/** The WebSocket URL of `path` on this gateway. */
export function socketUrl(path) {
  return `${location.protocol === 'https:' ? 'wss' : 'ws'}://${location.host}${path}`;
}

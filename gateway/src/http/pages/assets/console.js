// /console: the merchant's console. A live feed of paid orders, reminders and refunds from
// `GET /v1/merchant/stream`, rung with a sound and spoken aloud; it reconnects by itself and
// resumes after the last entry it showed, so nothing is missed across a dropped connection.
// Staff sign in with their username and password (or a pasted token); the back office's tabs
// (orders, members, plans, levels, dashboard) are in backoffice.js.
import { Session, STATUS, el, latest, price, socketUrl, t, when } from './common.js';
import { BackOffice, staffCredentials } from './backoffice.js';

const $ = (id) => document.getElementById(id);
const SEQ_KEY = 'memberline.console.seq';
const SOUND_KEY = 'memberline.console.sound';
const FEED_LIMIT = 200;

const STATES = {
  disconnected: t('未连接', 'Disconnected'),
  connecting: t('连接中', 'Connecting'),
  connected: t('已连接', 'Connected'),
  reconnecting: t('重连中', 'Reconnecting'),
};

const KINDS = {
  'order.paid': { css: 'order-paid', label: t('新订单', 'New paid order'), speak: '新订单' },
  'order.reminded': { css: 'order-reminded', label: t('客户催单', 'Customer reminder'), speak: '客户催单' },
  'order.refunded': { css: 'order-refunded', label: t('已退款', 'Refunded'), speak: '订单已退款' },
  'order.auto_refunded': { css: 'order-refunded', label: t('自动退款', 'Refunded automatically'), speak: '自动退款' },
};

let socket = null;
let running = false;
let retry = 0;
let timer = null;
/** The last feed number shown (kept for this tab, so a reload resumes too). */
let lastSeq = sessionStorage.getItem(SEQ_KEY) === null ? null : Number(sessionStorage.getItem(SEQ_KEY));
let audio = null;
let pending = [];
let announceTimer = null;
let ordersTimer = null;
/** Closes a socket that has been silent for too long (the server sends heartbeats). */
let watchdog = null;
let heartbeatMs = 15_000;

const session = new Session('memberline.console.token', ['merchant', 'admin'], {
  credentials: staffCredentials,
  onSignIn: () => {
    office.start();
    running = true;
    $('sound').hidden = false;
    showSound();
    connect();
    loadOrders();
  },
  onSignOut: () => {
    running = false;
    for (const id of [timer, announceTimer, ordersTimer, watchdog]) clearTimeout(id);
    pending = [];
    drop();
    lastSeq = null;
    sessionStorage.removeItem(SEQ_KEY);
    $('sound').hidden = true;
    $('announce').textContent = '';
    $('feed').replaceChildren(el('li', { class: 'empty', id: 'feed-empty' }, t('等待新订单…', 'Waiting for orders…')));
    $('orders').replaceChildren();
    setState('disconnected');
    office.stop();
  },
});
const office = new BackOffice(session);

function setState(state) {
  const badge = $('connection');
  badge.textContent = STATES[state];
  badge.className = `state ${state}`;
  badge.dataset.state = state;
}

/** A ticket is being fetched: one connection attempt at a time. */
let connecting = false;

async function connect() {
  clearTimeout(timer);
  if (!running || socket || connecting) return;
  if (!navigator.onLine) {
    setState('reconnecting'); // the `online` event tries again
    return;
  }
  setState(retry === 0 && lastSeq === null ? 'connecting' : 'reconnecting');
  connecting = true;
  const ticket = await session.api('POST', '/v1/merchant/stream-ticket');
  connecting = false;
  if (!running || socket || ticket.status === -1) return;
  if (ticket.status !== 201) {
    if (ticket.status === 403) {
      session.end(t('此令牌不是商户令牌', 'This token is not a merchant\'s'));
      return;
    }
    return later();
  }
  const after = lastSeq === null ? '' : `&after=${lastSeq}`;
  const ws = new WebSocket(socketUrl(`/v1/merchant/stream?ticket=${ticket.body.ticket}${after}`));
  socket = ws;
  ws.onopen = () => {
    if (socket === ws) setState('connected');
  };
  ws.onmessage = (e) => {
    if (socket !== ws) return;
    retry = 0;
    guard();
    receive(JSON.parse(e.data));
  };
  ws.onclose = () => {
    if (socket !== ws) return;
    clearTimeout(watchdog);
    socket = null;
    later();
  };
}

/** Lets go of the socket at once: its late events are ignored, and a new one can open. */
function drop() {
  clearTimeout(watchdog);
  const ws = socket;
  socket = null;
  ws?.close(1000, 'closing');
}

/** Restarts the countdown to treating the socket as dead: two and a half heartbeats. */
function guard() {
  clearTimeout(watchdog);
  watchdog = setTimeout(() => {
    drop();
    later();
  }, heartbeatMs * 2.5);
}

/** Tries again after a capped, jittered delay. */
function later() {
  if (!running) return;
  setState('reconnecting');
  const delay = Math.min(10_000, 500 * 2 ** retry) * (0.5 + Math.random() / 2);
  retry += 1;
  clearTimeout(timer);
  timer = setTimeout(connect, delay);
}

function remember(seq) {
  lastSeq = seq;
  sessionStorage.setItem(SEQ_KEY, String(seq));
}

function receive(m) {
  if (m.type === 'heartbeat') return;
  if (m.type === 'hello') {
    heartbeatMs = (m.heartbeat_secs || 15) * 1000;
    guard();
    if (lastSeq === null) remember(m.seq);
    else if (typeof m.newest === 'number' && m.newest < lastSeq) {
      // The feed was reset (a fresh database): start again from its newest entry.
      remember(m.newest);
      drop();
      connect();
    }
    return;
  }
  if (typeof m.seq !== 'number' || (lastSeq !== null && m.seq <= lastSeq)) return;
  remember(m.seq);
  show(m);
  pending.push(m);
  clearTimeout(announceTimer);
  announceTimer = setTimeout(announce, 250);
  clearTimeout(ordersTimer);
  ordersTimer = setTimeout(loadOrders, 300);
}

function show(m) {
  const kind = KINDS[m.type] || { css: '', label: m.type };
  const o = m.order || {};
  const amount = o.amount_fen !== undefined ? price(o) : '';
  $('feed-empty')?.remove();
  const item = el('li', { class: `${kind.css} fresh`, 'data-seq': m.seq, 'data-type': m.type, 'data-order': m.order_id },
    el('div', {}, el('strong', {}, kind.label), ' ', [m.order_no, o.plan_name].filter(Boolean).join(' · ')),
    el('div', { class: 'meta' }, [
      `#${m.seq}`, when(m.at), amount,
      o.buyer_id !== undefined ? `${t('买家', 'buyer')} ${o.buyer_id}` : null,
    ].filter(Boolean).join(' · ')),
  );
  const feed = $('feed');
  feed.prepend(item);
  while (feed.children.length > FEED_LIMIT) feed.lastElementChild.remove();
}

/** Rings and speaks what just arrived: one entry by name, several as a count. */
function announce() {
  const batch = pending;
  pending = [];
  if (batch.length === 0) return;
  const first = KINDS[batch[0].type] || { label: batch[0].type, speak: '' };
  const text = batch.length === 1
    ? `${first.label}: ${batch[0].order_no || ''}`
    : `${batch.length} ${t('条新动态', 'new entries')}`;
  $('announce').textContent = text;
  if (!soundOn()) return;
  chime();
  if ('speechSynthesis' in window) {
    const words = batch.length === 1 ? `${first.speak}，${batch[0].order?.plan_name || ''}` : `${batch.length}条新动态`;
    const u = new SpeechSynthesisUtterance(words);
    u.lang = 'zh-CN';
    speechSynthesis.speak(u);
  }
}

/** Browsers only let a page play sound once the user has touched it. */
function activated() {
  return navigator.userActivation?.hasBeenActive !== false;
}

function soundOn() {
  return localStorage.getItem(SOUND_KEY) === 'on' && activated();
}

/** Sound is on, but the page was reloaded and not touched since: it waits for a click. */
let soundWaiting = false;

function showSound() {
  const on = localStorage.getItem(SOUND_KEY) === 'on';
  soundWaiting = on && !activated();
  $('sound').textContent = !on ? t('声音：关', 'Sound: off')
    : soundWaiting ? t('点击启用声音', 'Click to enable sound') : t('声音：开', 'Sound: on');
}

// After a reload, a touch anywhere (but the sound button, which decides itself) lets it ring.
document.addEventListener('pointerdown', (e) => {
  if (soundWaiting && !e.target.closest?.('#sound')) setTimeout(showSound);
}, { capture: true });

/** Two short tones, made by the browser (no audio file). */
function chime() {
  try {
    audio ??= new AudioContext();
    if (audio.state === 'suspended') audio.resume();
    [880, 1320].forEach((hz, i) => {
      const osc = audio.createOscillator();
      const gain = audio.createGain();
      const start = audio.currentTime + i * 0.18;
      osc.frequency.value = hz;
      gain.gain.setValueAtTime(0.15, start);
      gain.gain.exponentialRampToValueAtTime(0.001, start + 0.16);
      osc.connect(gain).connect(audio.destination);
      osc.start(start);
      osc.stop(start + 0.17);
    });
  } catch {
    // No audio device: the words on screen still say it.
  }
}

$('sound').addEventListener('click', () => {
  // A click on "click to enable sound" keeps it on.
  const on = soundWaiting || localStorage.getItem(SOUND_KEY) !== 'on';
  localStorage.setItem(SOUND_KEY, on ? 'on' : 'off');
  showSound();
  if (on) chime();
});

const fetchOrders = latest(() => session.api('GET', '/v1/merchant/orders?limit=20'));

async function loadOrders() {
  const res = await fetchOrders();
  if (res.status !== 200) return;
  const rows = res.body.orders.map((o) => el('tr', { 'data-order': o.id },
    el('td', {}, o.order_no),
    el('td', {}, o.buyer_name || `#${o.buyer_id}`),
    el('td', {}, o.plan_name),
    el('td', {}, price(o)),
    el('td', {}, STATUS[o.status] || o.status),
    el('td', {}, when(o.paid_at || o.created_at)),
  ));
  $('orders').replaceChildren(...(rows.length ? rows
    : [el('tr', {}, el('td', { colspan: 6, class: 'empty' }, t('暂无订单', 'No orders yet')))]));
}

// A lost network closes the socket at once (rather than when a ping fails) and waits for it to
// come back; then the socket resumes after the last entry shown.
window.addEventListener('offline', () => {
  if (!running) return;
  drop();
  clearTimeout(timer);
  setState('reconnecting');
});
window.addEventListener('online', () => {
  retry = 0;
  if (running && !socket) connect();
  if (running) loadOrders();
});

session.start();

// paygate console: the operator's pages over the gateway's admin API. Plain JavaScript, no
// framework, nothing fetched but our own /admin/ answers. Pages are #/ (overview), #/orders,
// #/orders/<no>, #/notifications, #/jobs, #/products. Every element is built with textContent,
// never from HTML strings, so nothing an order or a notification says can run as code.
'use strict';

const state = { who: null, csrf: '' };
const main = () => document.getElementById('main');

// h('a', {href: '#/'}, 'text', child...): an element; attributes starting with "on" are handlers.
function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
    else if (k === 'class') el.className = v;
    else el.setAttribute(k, v === true ? '' : String(v));
  }
  for (const c of children.flat()) {
    if (c === undefined || c === null || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

const SVG = 'http://www.w3.org/2000/svg';
function s(tag, attrs, ...children) {
  const el = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs || {})) el.setAttribute(k, String(v));
  for (const c of children) el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return el;
}

const yuan = (fen) => (fen === undefined || fen === null ? '' : '¥' + (fen / 100).toFixed(2));
const when = (t) => {
  if (t === undefined || t === null || t === '') return '';
  const d = typeof t === 'number' ? new Date(t) : new Date(t);
  return isNaN(d) ? String(t) : d.toLocaleString();
};
const badge = (text) => h('span', { class: 'status ' + text }, text);

function toast(text) {
  const t = document.getElementById('toast');
  t.textContent = text;
  t.className = 'show';
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => { t.className = ''; }, 4000);
}

class ApiError extends Error {
  constructor(status, body) {
    super((body && (body.message || body.error)) || 'HTTP ' + status);
    this.status = status;
  }
}

async function api(method, path, body) {
  const headers = { Accept: 'application/json' };
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  if (method !== 'GET' && state.csrf) headers['X-CSRF-Token'] = state.csrf;
  const r = await fetch(path, { method, headers, credentials: 'same-origin',
                                body: body === undefined ? undefined : JSON.stringify(body) });
  const text = await r.text();
  let json = null;
  try { json = text ? JSON.parse(text) : null; } catch { json = null; }
  if (r.status === 401) { showLogin(json && json.message); throw new ApiError(401, json); }
  if (!r.ok) throw new ApiError(r.status, json);
  return json;
}

function render(...nodes) {
  const m = main();
  m.replaceChildren(...nodes.flat().filter((n) => n !== null && n !== undefined && n !== false));
}

function table(headers, rows, empty = 'Nothing here yet.') {
  if (!rows.length) return h('p', { class: 'muted' }, empty);
  return h('div', { class: 'table', tabindex: 0, role: 'region', 'aria-label': 'table' },
    h('table', {},
      h('thead', {}, h('tr', {}, headers.map((x) => h('th', { scope: 'col', class: x.num ? 'num' : '' }, x.label || x)))),
      h('tbody', {}, rows.map((cells) => h('tr', {}, cells.map((c, i) => h('td', { class: headers[i].num ? 'num' : '' }, c)))))));
}

// ---- login ----

function showLogin(message) {
  document.getElementById('nav').hidden = true;
  document.getElementById('who').replaceChildren();
  const input = h('input', { id: 'token', name: 'token', type: 'password', autocomplete: 'current-password', required: true });
  const err = h('p', { class: 'error', role: 'alert' }, message && message !== 'that is not a configured admin token' ? '' : '');
  const form = h('form', { class: 'login', onsubmit: async (e) => {
    e.preventDefault();
    err.textContent = '';
    try {
      const r = await fetch('/admin/login', { method: 'POST', credentials: 'same-origin',
        headers: { 'Content-Type': 'application/json' }, body: JSON.stringify({ token: input.value }) });
      const j = await r.json().catch(() => ({}));
      if (!r.ok) { err.textContent = j.message || 'Login failed'; input.select(); return; }
      input.value = '';
      signedIn(j);
      route();
    } catch (x) { err.textContent = String(x.message || x); }
  } },
    h('h1', {}, 'Sign in'),
    h('label', { for: 'token' }, 'Admin token', input),
    h('button', { type: 'submit' }, 'Sign in'),
    err,
    h('p', { class: 'muted' }, 'A token from admin.tokens in the gateway\'s config. The session is kept in a cookie for 12 hours.'));
  render(form);
  input.focus();
}

function signedIn(session) {
  state.who = session.name;
  state.csrf = session.csrf || '';
  document.getElementById('nav').hidden = false;
  const out = h('button', { class: 'secondary', type: 'button', onclick: async () => {
    await fetch('/admin/logout', { method: 'POST', credentials: 'same-origin' });
    state.who = null; state.csrf = '';
    showLogin();
  } }, 'Sign out');
  document.getElementById('who').replaceChildren('Signed in as ', h('strong', {}, session.name),
    session.name === 'loopback' ? '' : out);
}

// ---- overview ----

function barChart(title, values, cls, start, bucketMs) {
  const W = 240, H = 80, pad = 14, max = Math.max(1, ...values), bw = (W - 2) / values.length;
  const svg = s('svg', { viewBox: `0 0 ${W} ${H + pad}`, role: 'img', 'aria-label': `${title}: ${values.join(', ')} per 5 minutes` });
  values.forEach((v, i) => {
    const bh = Math.round((v / max) * (H - 4));
    const r = s('rect', { class: 'bar ' + (cls || ''), x: 1 + i * bw + 1, y: H - bh, width: Math.max(1, bw - 2), height: bh });
    r.append(s('title', {}, `${new Date(start + i * bucketMs).toLocaleTimeString()}: ${v}`));
    svg.append(r);
  });
  svg.append(s('line', { x1: 0, y1: H + 0.5, x2: W, y2: H + 0.5, stroke: '#d9dee7' }));
  svg.append(s('text', { x: 0, y: H + pad - 2 }, '-60 min'), s('text', { x: W - 22, y: H + pad - 2 }, 'now'),
             s('text', { x: 2, y: 10 }, 'max ' + max));
  return h('div', { class: 'card chart' }, h('div', { class: 'l' }, title), svg);
}

function metricValue(text, name, labels) {
  let sum = 0;
  for (const line of text.split('\n')) {
    if (line.startsWith('#')) continue;
    if (line.startsWith(name + ' ') || (line.startsWith(name + '{') && (!labels || line.includes(labels)))) {
      sum += Number(line.split(' ').pop()) || 0;
    }
  }
  return sum;
}

async function overview() {
  const midnight = new Date(); midnight.setHours(0, 0, 0, 0);
  const [o, metrics] = await Promise.all([api('GET', '/admin/overview?since=' + midnight.getTime()),
    fetch('/metrics', { credentials: 'same-origin' }).then((r) => (r.ok ? r.text() : '')).catch(() => '')]);
  const up = metricValue(metrics, 'paygate_upstream_requests_total'), upErr = metricValue(metrics, 'paygate_upstream_errors_total');
  const rate = up + upErr ? ((100 * upErr) / (up + upErr)).toFixed(1) + '%' : '—';
  const card = (n, l) => h('div', { class: 'card' }, h('div', { class: 'n' }, n), h('div', { class: 'l' }, l));
  const total = Object.values(o.orders).reduce((a, b) => a + b, 0);
  const notes = o.notifications.accepted + o.notifications.refused;
  render(
    h('h1', {}, 'Today'),
    h('div', { class: 'cards' },
      card(yuan(o.revenue), 'revenue (paid less refunded)'),
      card(o.paid.count, 'orders paid'),
      card(total, 'orders created'),
      card(notes ? `${o.notifications.accepted}/${notes}` : '—', 'notifications accepted'),
      card(o.notifications.refused, 'notifications refused'),
      card(o.jobs.queued, 'jobs queued'),
      card(o.jobs.dead, 'jobs dead'),
      card(rate, 'upstream error rate (since start)')),
    h('h2', {}, 'Orders by status today'),
    table(['status', { label: 'orders', num: true }],
      ['CREATED', 'PAYING', 'PAID', 'REFUNDING', 'REFUNDED', 'CLOSED'].map((k) => [badge(k), o.orders[k] || 0])),
    h('h2', {}, 'The last hour'),
    h('div', { class: 'charts' },
      barChart('orders created', o.series.created, '', o.series.start, o.series.bucket_ms),
      barChart('orders paid', o.series.paid, 'ok', o.series.start, o.series.bucket_ms),
      barChart('notifications refused', o.series.refused, 'bad', o.series.start, o.series.bucket_ms)));
}

// ---- orders ----

async function ordersPage(params) {
  const form = h('form', { class: 'filters', role: 'search', onsubmit: (e) => {
    e.preventDefault();
    const q = new URLSearchParams();
    for (const el of form.elements) if (el.name && el.value) q.set(el.name, el.name === 'from' || el.name === 'to' ? new Date(el.value).getTime() : el.value);
    location.hash = '#/orders' + (q.toString() ? '?' + q : '');
  } },
    h('label', {}, 'Order no., openid or transaction id', h('input', { name: 'q', value: params.get('q') || '', size: 28 })),
    h('label', {}, 'Status', h('select', { name: 'status' }, ['', 'CREATED', 'PAYING', 'PAID', 'CLOSED', 'REFUNDING', 'REFUNDED']
      .map((x) => h('option', { value: x, selected: params.get('status') === x }, x || 'any')))),
    h('label', {}, 'From', h('input', { name: 'from', type: 'datetime-local' })),
    h('label', {}, 'To', h('input', { name: 'to', type: 'datetime-local' })),
    h('button', { type: 'submit' }, 'Search'));
  const q = new URLSearchParams(params);
  if (!q.has('limit')) q.set('limit', '100');
  const r = await api('GET', '/admin/orders?' + q);
  render(h('h1', {}, 'Orders'), form,
    table(['order', 'status', { label: 'amount', num: true }, 'openid', 'created', 'transaction'],
      r.orders.map((o) => [h('a', { href: '#/orders/' + encodeURIComponent(o.order_no) }, o.order_no), badge(o.status),
        yuan(o.amount), o.openid, when(o.created_at), o.transaction_id || '']),
      'No order matches.'),
    r.orders.length >= Number(q.get('limit')) ? h('p', {}, h('a', { href: '#/orders?' + older(q, r.orders[r.orders.length - 1]) }, 'Older orders →')) : null);
}

// The next page of a search: the same filters, created before the last order shown.
function older(q, last) {
  const next = new URLSearchParams(q);
  next.set('to', String(last.created_ms));
  return next.toString();
}

function timeline(events) {
  const describe = (e) => {
    const d = e.data || {};
    const bits = [];
    if (d.amount !== undefined) bits.push(yuan(d.amount));
    if (d.via) bits.push('via ' + d.via);
    if (d.reason) bits.push('reason: ' + d.reason);
    if (d.refund && d.refund.amount !== undefined) bits.push(yuan(d.refund.amount) + ' ' + (d.refund.status || ''));
    if (d.transaction_id) bits.push('transaction ' + d.transaction_id);
    if (d.out_refund_no) bits.push(d.out_refund_no);
    if (d.kind) bits.push(d.kind + ' notification');
    if (d.after_close) bits.push('after close');
    return bits.join(' · ');
  };
  return h('ol', { class: 'timeline', 'aria-label': 'timeline' }, events.map((e) => h('li', { 'data-event': e.event },
    h('span', { class: 'ev' }, e.event.replace(/_/g, ' ')), ' ', h('span', {}, describe(e)),
    h('div', { class: 'meta' }, when(e.at), ' · by ', e.actor, e.last_error ? ' · hook error: ' + e.last_error : ''))));
}

function refundForm(o, reload) {
  const amount = h('input', { id: 'refund-amount', name: 'amount', inputmode: 'decimal', value: (o.refundable / 100).toFixed(2), size: 10 });
  const reason = h('input', { id: 'refund-reason', name: 'reason', maxlength: 80, size: 30, placeholder: 'shown to the payer' });
  const box = h('div', {});
  const form = h('form', { class: 'inline', onsubmit: (e) => {
    e.preventDefault();
    const fen = Math.round(Number(amount.value) * 100);
    if (!Number.isInteger(fen) || fen < 1 || fen > o.refundable) {
      toast(`Amount must be from 0.01 to ${(o.refundable / 100).toFixed(2)} yuan`);
      amount.focus();
      return;
    }
    const yes = h('button', { class: 'danger', type: 'button', id: 'refund-confirm', onclick: async () => {
      yes.disabled = true;
      try {
        const r = await api('POST', `/admin/orders/${encodeURIComponent(o.order_no)}/refund`,
          { amount: fen, reason: reason.value || undefined });
        toast(`Refund ${r.out_refund_no} of ${yuan(r.amount)} sent`);
        reload();
      } catch (x) { toast('Refund refused: ' + x.message); yes.disabled = false; }
    } }, `Yes, refund ${yuan(fen)}`);
    const no = h('button', { class: 'secondary', type: 'button', onclick: () => { box.replaceChildren(); amount.focus(); } }, 'Cancel');
    box.replaceChildren(h('div', { class: 'confirm', role: 'alertdialog', 'aria-label': 'confirm the refund' },
      h('p', {}, `Refund ${yuan(fen)} of order ${o.order_no} to the payer${reason.value ? ` (“${reason.value}”)` : ''}? WeChat Pay sends the money back; this cannot be undone.`),
      yes, ' ', no));
    yes.focus();
  } },
    h('label', { for: 'refund-amount' }, 'Amount (yuan)', amount),
    h('label', { for: 'refund-reason' }, 'Reason', reason),
    h('button', { type: 'submit', id: 'refund-start' }, 'Refund…'));
  return h('section', { 'aria-label': 'refund' }, h('h2', {}, 'Refund'),
    h('p', { class: 'muted' }, `${yuan(o.refundable)} can still be refunded.`), form, box);
}

async function orderPage(no) {
  let timer = null;
  const load = async () => {
    const o = await api('GET', '/admin/orders/' + encodeURIComponent(no));
    const f = o.fulfillment;
    const nodes = [
      h('p', {}, h('a', { href: '#/orders' }, '← Orders')),
      h('h1', {}, 'Order ', o.order_no, ' ', badge(o.status)),
      h('dl', { class: 'facts' },
        h('dt', {}, 'amount'), h('dd', { id: 'order-amount' }, yuan(o.amount), o.refunded ? ` (refunded ${yuan(o.refunded)})` : ''),
        h('dt', {}, 'openid'), h('dd', {}, o.openid),
        h('dt', {}, 'created'), h('dd', {}, when(o.created_at)),
        h('dt', {}, 'expires'), h('dd', {}, when(o.expires_at)),
        h('dt', {}, 'payment'), h('dd', {}, o.payment ? `${o.payment.transaction_id}, ${when(o.payment.paid_at)}` : 'not paid'),
        h('dt', {}, 'delivery'), h('dd', {}, f ? [badge(f.status), ` after ${f.attempts} attempt(s)`, f.last_error ? ' — ' + f.last_error : ''] : '—'),
        o.closed_reason ? [h('dt', {}, 'closed'), h('dd', {}, o.closed_reason)] : null),
      h('h2', {}, 'Items'),
      table(['product', 'name', { label: 'qty', num: true }, { label: 'price', num: true }, { label: 'paid', num: true }],
        o.items.map((i) => [i.product_id, i.name, i.qty, yuan(i.price), yuan(i.amount)])),
      o.adjustments.length ? [h('h2', {}, 'Adjustments'), table(['code', 'label', { label: 'amount', num: true }],
        o.adjustments.map((a) => [a.code, a.label, yuan(a.amount)]))] : null,
      h('h2', {}, 'Refunds'),
      table(['refund', 'status', { label: 'amount', num: true }, 'reason', 'error'],
        o.refunds.map((r) => [r.out_refund_no, badge(r.status), yuan(r.amount), r.reason || '', r.error || '']), 'No refunds.'),
      o.refundable > 0 ? refundForm(o, () => { clearTimeout(timer); load(); }) : null,
      h('h2', {}, 'Timeline'), timeline(o.timeline),
      h('h2', {}, 'Notifications about it'),
      table(['received', 'kind', 'outcome', 'reason'],
        o.notifications.map((n) => [when(n.received_at), n.kind, badge(n.outcome), n.reason || '']), 'None.'),
    ];
    if (location.hash !== '#/orders/' + encodeURIComponent(no)) return;
    const focused = document.activeElement && document.activeElement.id;
    render(...nodes);
    if (focused && document.getElementById(focused)) document.getElementById(focused).focus();
    // A refund under way settles on its own: look again until it does.
    if (o.status === 'REFUNDING' || o.refunds.some((r) => ['PENDING', 'PROCESSING'].includes(r.status))) {
      timer = setTimeout(load, 1000);
    }
  };
  await load();
}

// ---- notifications, jobs, products ----

async function notificationsPage(params) {
  const refused = params.get('outcome') === 'refused';
  const r = await api('GET', '/admin/notifications?limit=200' + (refused ? '&outcome=refused' : ''));
  render(h('h1', {}, 'Notifications'),
    h('p', {}, refused ? h('a', { href: '#/notifications' }, 'Show all') : h('a', { href: '#/notifications?outcome=refused' }, 'Show refusals only')),
    table(['received', 'kind', 'order', 'outcome', 'reason', 'id'],
      r.notifications.map((n) => [when(n.received_at), n.kind,
        n.order_no ? h('a', { href: '#/orders/' + encodeURIComponent(n.order_no) }, n.order_no) : '',
        badge(n.outcome), n.reason || '', n.notify_id || '']), 'No notifications yet.'));
}

async function jobsPage(params) {
  const dead = params.get('state') === 'dead';
  const r = await api('GET', '/admin/jobs?limit=200' + (dead ? '&state=dead' : ''));
  render(h('h1', {}, 'Jobs'),
    h('p', {}, dead ? h('a', { href: '#/jobs' }, 'Show all') : h('a', { href: '#/jobs?state=dead' }, 'Show dead jobs only')),
    table(['id', 'job', 'key', 'state', { label: 'attempts', num: true }, 'next run', 'last error', ''],
      r.jobs.map((j) => [j.id, j.name, j.key || '', badge(j.state), `${j.attempts}/${j.max_attempts}`, when(j.run_at), j.last_error || '',
        j.state === 'dead' ? h('button', { type: 'button', onclick: async (e) => {
          e.target.disabled = true;
          try { await api('POST', `/admin/jobs/${j.id}/retry`); toast(`Job ${j.id} queued again`); route(); }
          catch (x) { toast('Retry refused: ' + x.message); e.target.disabled = false; }
        } }, 'Retry') : '']), 'No jobs.'));
}

async function productsPage() {
  const r = await api('GET', '/admin/products');
  const save = async (id, fields, button) => {
    button.disabled = true;
    try {
      await api('PUT', `/admin/products/${id}`, fields);
      toast(`Product ${id} saved`);
      route();
    } catch (x) { toast('Not saved: ' + x.message); button.disabled = false; }
  };
  const row = (p) => {
    const name = h('input', { value: p.name, 'aria-label': `name of product ${p.id}`, size: 16 });
    const price = h('input', { value: (p.price / 100).toFixed(2), inputmode: 'decimal', 'aria-label': `price of product ${p.id} in yuan`, size: 7 });
    const stock = h('input', { value: p.stock, inputmode: 'numeric', 'aria-label': `stock of product ${p.id}`, size: 6 });
    const max = h('input', { value: p.max_per_order, inputmode: 'numeric', 'aria-label': `at most per order, product ${p.id}`, size: 4 });
    const b = h('button', { type: 'button', onclick: () => save(p.id, { name: name.value, price: Math.round(Number(price.value) * 100),
      stock: Number(stock.value), max_per_order: Number(max.value) }, b) }, 'Save');
    return [p.id, name, price, stock, p.reserved, p.sold, max, b];
  };
  const nid = h('input', { name: 'id', inputmode: 'numeric', size: 4, required: true });
  const nname = h('input', { name: 'name', size: 16, required: true });
  const nprice = h('input', { name: 'price', inputmode: 'decimal', size: 7, required: true });
  const nstock = h('input', { name: 'stock', inputmode: 'numeric', size: 6, required: true });
  const add = h('form', { class: 'inline', onsubmit: (e) => {
    e.preventDefault();
    save(Number(nid.value), { name: nname.value, price: Math.round(Number(nprice.value) * 100), stock: Number(nstock.value) }, e.submitter || add.querySelector('button'));
  } }, h('label', {}, 'Id', nid), h('label', {}, 'Name', nname), h('label', {}, 'Price (yuan)', nprice),
    h('label', {}, 'Stock', nstock), h('button', { type: 'submit' }, 'Add product'));
  render(h('h1', {}, 'Products and stock'),
    h('p', { class: 'muted' }, 'Stock is what is for sale now; reserved units are held by unpaid orders, sold ones by paid orders.'),
    table(['id', 'name', { label: 'price (yuan)' }, 'stock', { label: 'reserved', num: true }, { label: 'sold', num: true }, 'max/order', ''],
      r.products.map(row), 'No products.'),
    h('h2', {}, 'Add a product'), add);
}

// ---- routing ----

async function route() {
  if (!state.who) return;
  const [path, query] = (location.hash.slice(1) || '/').split('?');
  const params = new URLSearchParams(query || '');
  for (const a of document.querySelectorAll('#nav a')) {
    const target = a.getAttribute('href').slice(1);
    const current = target === '/' ? path === '/' : path.startsWith(target);
    if (current) a.setAttribute('aria-current', 'page'); else a.removeAttribute('aria-current');
  }
  try {
    if (path === '/' || path === '') await overview();
    else if (path === '/orders') await ordersPage(params);
    else if (path.startsWith('/orders/')) await orderPage(decodeURIComponent(path.slice(8)));
    else if (path === '/notifications') await notificationsPage(params);
    else if (path === '/jobs') await jobsPage(params);
    else if (path === '/products') await productsPage();
    else render(h('h1', {}, 'Not found'), h('p', {}, h('a', { href: '#/' }, 'Overview')));
  } catch (x) {
    if (x.status !== 401) render(h('h1', {}, 'Something went wrong'), h('p', { class: 'error', role: 'alert' }, x.message));
  }
}

window.addEventListener('hashchange', () => { route().then(() => main().focus()); });
window.addEventListener('DOMContentLoaded', async () => {
  try {
    signedIn(await api('GET', '/admin/session'));
    route();
  } catch (x) {
    if (x.status !== 401) showLogin(x.message);
  }
});

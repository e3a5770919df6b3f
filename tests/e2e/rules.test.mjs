// examples/rules/: each example is installed into one running shop by hot reload — its file
// copied over scripts/rules.lua, its settings written into the config's app table, then
// scripts/.reload touched (the shop runs with watch_marker) — and a purchase through the
// WeChat Pay sandbox shows what it does: the amount WeChat was asked for, the adjustments
// stored with the order, the refusals, the events fired.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync, writeFileSync, utimesSync } from 'node:fs';
import { join } from 'node:path';
import http from 'node:http';
import { eventually, ROOT } from './harness.mjs';
import { startWorld } from './shopenv.mjs';

let world, sandbox, gw, base;

before(async () => {
  world = await startWorld();
  sandbox = world.sandbox;
  gw = await world.startShop({ order_ttl_s: 600, reconcile_after_s: 3600 },
    { files: { '.reload': '' }, config: { watch: true, watch_marker: true } });
  base = { ...gw.config.app };
  for (const [id, name, price, stock] of [[1, 'Tea', 3800, 1000], [3, 'Pot', 9900, 50], [4, 'Gift card', 5000, 100]]) {
    assert.equal((await gw.put(`/admin/products/${id}`, { name, price, stock })).status, 200);
  }
});

after(async () => { if (world) await world.stop(); });

const health = async () => (await gw.get('/healthz')).json;

/** Install examples/rules/<name> with its settings, as a merchant would: one reload for both. */
async function install(name, settings) {
  const before = await health();
  gw.writeConfig({ app: { ...base, ...settings } });
  writeFileSync(join(gw.config.scripts, 'rules.lua'), readFileSync(join(ROOT, 'examples/rules', name)));
  const now = new Date();
  utimesSync(join(gw.config.scripts, '.reload'), now, now);
  const h = await eventually(async () => { const x = await health(); return x.generation > before.generation && x; }, 5000, 50);
  assert.equal(h.status, 'ok', JSON.stringify(h.last_reload));
  assert.equal(h.generation, before.generation + 1, 'one reload for the rules and the settings');
}

const login = (openid) => world.login(gw, openid);
const order = (user, items, extra = {}) => gw.post('/api/orders', { items, ...extra }, { headers: user.auth });
const view = async (user, no) => (await gw.get(`/api/orders/${no}`, { headers: user.auth })).json;
const atWeChat = async (no) => (await sandbox.get(`/sandbox/orders/${no}`)).json;
const adminOrder = async (no) => (await gw.get('/admin/orders?limit=500')).json.orders.find((o) => o.order_no === no);
const strip = (adjs) => adjs.map(({ code, amount, product_id }) => ({ code, amount, ...(product_id ? { product_id } : {}) }));

/** Pay an order at the sandbox; returns it once PAID, with its paid event DONE. */
async function buy(user, items, extra) {
  const r = await order(user, items, extra);
  assert.equal(r.status, 201, r.body);
  const pay = await gw.post(`/api/orders/${r.json.order_no}/pay`, undefined, { headers: user.auth });
  assert.equal(pay.status, 200, pay.body);
  await world.userPays(user, pay.json);
  await eventually(async () => (await view(user, r.json.order_no)).status === 'PAID', 8000, 100);
  await eventually(async () => (await adminOrder(r.json.order_no)).events.some((e) => e.event === 'paid' && e.status === 'DONE'), 8000, 100);
  return r.json;
}

/** What WeChat was asked for equals what the order says. */
async function charged(o, amount) {
  assert.equal(o.amount, amount);
  assert.equal((await atWeChat(o.order_no)).total, amount, 'WeChat was asked for the adjusted amount');
}

const iso = (ms) => new Date(ms).toISOString().replace(/\.\d+Z$/, '+00:00');

test('per_user_limit.lua: two of a product per person per day; the third is refused before anything is reserved', async () => {
  await install('per_user_limit.lua', { per_user_limit: 2 });
  const user = await login();
  const o = await buy(user, [{ product_id: 1, qty: 1 }]);
  await charged(o, 3800);
  assert.deepEqual(o.adjustments, []);
  const tea = (await gw.get('/test/products/1')).json;
  const r = await order(user, [{ product_id: 1, qty: 2 }]);
  assert.equal(r.status, 409);
  assert.equal(r.json.error, 'per_user_limit');
  assert.match(r.json.message, /Tea: at most 2 per person per day; 1 left for you today/);
  assert.deepEqual((await gw.get('/test/products/1')).json, tea, 'nothing reserved');
  assert.equal((await order(user, [{ product_id: 1, qty: 1 }])).status, 201);
  assert.equal((await order(await login(), [{ product_id: 1, qty: 2 }])).status, 201, 'another person may');
});

test('flash_sale.lua: its own price inside the window, one per order, and a cap of units at that price', async () => {
  const now = Date.now();
  await install('flash_sale.lua', { flash_sale: { product_id: 3, price: 5900, starts_at: iso(now - 60000),
    ends_at: iso(now + 3600000), cap: 3, per_order: 1 } });
  const listed = (await gw.get('/api/products')).json.products.find((p) => p.id === 3);
  assert.equal(listed.display_price, 5900);
  assert.deepEqual(listed.price_labels, ['Flash sale']);
  const a = await login();
  const o = await buy(a, [{ product_id: 3, qty: 1 }, { product_id: 1, qty: 1 }]);
  await charged(o, 5900 + 3800);
  assert.deepEqual(strip(o.adjustments), [{ code: 'flash_sale', amount: -4000, product_id: 3 }]);
  const two = await order(a, [{ product_id: 3, qty: 2 }]);
  assert.equal(two.status, 409);
  assert.equal(two.json.error, 'limit_reached');
  await charged(await buy(await login(), [{ product_id: 3, qty: 1 }]), 5900);
  await charged(await buy(await login(), [{ product_id: 3, qty: 1 }]), 5900);
  const late = await order(await login(), [{ product_id: 3, qty: 1 }]);
  assert.equal(late.status, 409, late.body);
  assert.equal(late.json.error, 'sale_sold_out');
  assert.equal((await order(await login(), [{ product_id: 1, qty: 1 }])).status, 201, 'other products as before');
});

test('threshold_discount.lua: 10% off from 100 yuan, on the order', async () => {
  await install('threshold_discount.lua', { threshold_discount: { from: 10000, percent: 10 } });
  const user = await login();
  const o = await buy(user, [{ product_id: 1, qty: 3 }]);
  await charged(o, 11400 - 1140);
  assert.deepEqual(o.adjustments, [{ code: 'threshold_discount', label: '10% off from 100 yuan', amount: -1140 }]);
  assert.deepEqual((await adminOrder(o.order_no)).adjustments, o.adjustments, 'stored, and shown to operators');
  const small = await order(user, [{ product_id: 1, qty: 2 }]);
  assert.equal(small.json.amount, 7600);
  assert.deepEqual(small.json.adjustments, []);
});

test('one_time_coupon.lua: our own welcome coupon, once per person; a closed order gives it back', async () => {
  await install('one_time_coupon.lua', { welcome: { code: 'WELCOME', off: 1000 } });
  const user = await login();
  const first = await order(user, [{ product_id: 1, qty: 1 }], { coupon: 'WELCOME' });
  assert.equal(first.status, 201, first.body);
  assert.equal(first.json.amount, 2800);
  const again = await order(user, [{ product_id: 1, qty: 1 }], { coupon: 'WELCOME' });
  assert.equal(again.status, 409);
  assert.equal(again.json.error, 'coupon_already_used');
  assert.equal((await order(user, [{ product_id: 1, qty: 1 }], { coupon: 'BOGUS' })).json.error, 'coupon_invalid');
  assert.equal((await gw.post(`/api/orders/${first.json.order_no}/cancel`, undefined, { headers: user.auth })).status, 200);
  await eventually(async () => (await adminOrder(first.json.order_no)).events.some((e) => e.event === 'closed' && e.status === 'DONE'), 8000, 100);
  const o = await buy(user, [{ product_id: 1, qty: 1 }], { coupon: 'WELCOME' });
  await charged(o, 2800);
  assert.deepEqual(strip(o.adjustments), [{ code: 'welcome', amount: -1000 }]);
  assert.equal((await order(user, [{ product_id: 1, qty: 1 }], { coupon: 'WELCOME' })).status, 409);
});

test('member_price.lua: members pay 80% (a line adjustment), see it in the product list; others pay the list price', async () => {
  const memberId = 'oMemberRules' + Date.now().toString(16);
  await install('member_price.lua', { member_price: { percent: 80, members: [memberId] } });
  const m = await login(memberId);
  const shown = (await gw.get('/api/products', { headers: m.auth })).json.products.find((p) => p.id === 3);
  assert.equal(shown.display_price, 7920);
  const o = await buy(m, [{ product_id: 3, qty: 1 }]);
  await charged(o, 7920);
  assert.deepEqual(strip(o.adjustments), [{ code: 'member_price', amount: -1980, product_id: 3 }]);
  const other = await login();
  assert.equal((await gw.get('/api/products', { headers: other.auth })).json.products.find((p) => p.id === 3).display_price, undefined);
  await charged(await buy(other, [{ product_id: 3, qty: 1 }]), 9900);
});

test('mixed_cart.lua: a gift card is sold on its own; mixed with anything else the order is refused', async () => {
  await install('mixed_cart.lua', { mixed_cart: { alone: [4] } });
  const user = await login();
  const card = (await gw.get('/test/products/4')).json;
  const mixed = await order(user, [{ product_id: 4, qty: 1 }, { product_id: 1, qty: 1 }]);
  assert.equal(mixed.status, 409);
  assert.equal(mixed.json.error, 'mixed_cart');
  assert.match(mixed.json.message, /Gift card is sold on its own/);
  assert.deepEqual((await gw.get('/test/products/4')).json, card, 'nothing reserved');
  await charged(await buy(user, [{ product_id: 4, qty: 2 }]), 10000);
  assert.equal((await order(user, [{ product_id: 1, qty: 2 }])).status, 201, 'other carts as before');
});

test('erp_delivery.lua: the ERP hears of each payment and refund once, retried with the same Idempotency-Key until it answers', async () => {
  const calls = [];
  let failFirst = 1;
  const erp = http.createServer((req, res) => {
    let body = '';
    req.on('data', (c) => { body += c; });
    req.on('end', () => {
      calls.push({ path: req.url, key: req.headers['idempotency-key'], body: JSON.parse(body) });
      if (failFirst-- > 0) { res.writeHead(503); res.end(); return; }
      res.writeHead(200, { 'Content-Type': 'application/json' });
      res.end('{"ok":true}');
    });
  });
  await new Promise((r) => erp.listen(0, '127.0.0.1', r));
  try {
    await install('erp_delivery.lua', { erp: { url: `http://127.0.0.1:${erp.address().port}/api`, timeout_ms: 2000 } });
    const user = await login();
    const o = await buy(user, [{ product_id: 1, qty: 2 }]);
    await charged(o, 7600);
    const shipments = calls.filter((c) => c.path === '/api/shipments');
    assert.equal(shipments.length, 2, 'refused once (503), taken the second time');
    assert.ok(shipments.every((c) => c.key === `paid:${o.order_no}`), 'the same key each time');
    assert.deepEqual(shipments[1].body, { order_no: o.order_no, buyer: user.openid, amount: 7600,
      lines: [{ sku: 1, qty: 2, amount: 7600 }] });
    const paid = (await adminOrder(o.order_no)).events.find((e) => e.event === 'paid');
    assert.deepEqual([paid.status, paid.attempts], ['DONE', 2]);

    const r = await gw.post(`/admin/orders/${o.order_no}/refund`, { items: [{ product_id: 1, qty: 1 }] });
    assert.equal(r.status, 202, r.body);
    const ret = await eventually(() => calls.find((c) => c.path === '/api/returns'), 10000, 100);
    assert.equal(ret.key, `refunded:${r.json.out_refund_no}`);
    assert.deepEqual(ret.body, { order_no: o.order_no, refund: r.json.out_refund_no, amount: 3800,
      lines: [{ product_id: 1, qty: 1, amount: 3800, restock: false }] });
    await eventually(async () => (await adminOrder(o.order_no)).events.some((e) => e.event === 'refunded' && e.status === 'DONE'), 5000, 100);
    assert.equal(calls.length, 3, 'nothing called twice once it was taken');
  } finally {
    await new Promise((r) => erp.close(r));
  }
});

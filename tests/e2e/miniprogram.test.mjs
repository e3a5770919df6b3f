// examples/miniprogram/paygate.js, the code a shop ships in its mini program, run with a
// stubbed `wx` (login, request, requestPayment, storage) against a real gateway and the
// sandbox. The stub's fault switches play what goes wrong on a phone: a request lost on the
// way out or on the way back, a session the server no longer takes, a payment that fails, is
// cancelled, or says "cancel" although WeChat took the money, a confirmation that is slow, the
// app killed while the payment sheet is up.
import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { createRequire } from 'node:module';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { ROOT, sleep, backends } from './harness.mjs';
import { startWorld } from './shopenv.mjs';
import { fakeWx as makeFakeWx } from './fakewx.mjs';

const require = createRequire(import.meta.url);
const paygate = require(`${ROOT}/examples/miniprogram/paygate.js`);

// The whole spec runs once per back end of the shop's gateway (the sandbox stays on SQLite);
// the body is not indented, to keep it one spec.
for (const backend of backends()) describe(`mini-program client on ${backend}`, () => {
let world, gw, gwReal;
let users = 0;
const newOpenid = () => `oMiniProgram${process.pid}x${++users}`;

// How SQLite runs the order list's two queries (shop.orders.LIST_SQL, LIST_AFTER_SQL).
const PLAN_HOOK = `
local app = require "paygate"
local orders = require "shop.orders"
app.get("/test/plan/orders", function(req)
  return 200, {
    first = db.query("EXPLAIN QUERY PLAN " .. orders.LIST_SQL, "o", 21),
    after = db.query("EXPLAIN QUERY PLAN " .. orders.LIST_AFTER_SQL, "o", 1, 1, "PG", 21),
  }
end)
`;

before(async () => {
  world = await startWorld({ backend });
  const init = readFileSync(join(ROOT, 'scripts/init.lua'), 'utf8') + 'require "test_hooks"\nrequire "plan_hook"\n';
  gw = await world.startShop({ order_ttl_s: 600, reconcile_after_s: 1 },
    { files: { 'init.lua': init, 'plan_hook.lua': PLAN_HOOK } });
  // The status-query settings at their real defaults (3 s, then every 5 s) and no early reconciler.
  gwReal = await world.startShop({ order_ttl_s: 600, status_query_after_s: undefined, status_query_every_s: undefined });
  for (const g of [gw, gwReal]) {
    assert.equal((await g.put('/admin/products/1', { name: 'Tea', price: 3800, stock: 1000 })).status, 200);
  }
});
after(async () => { if (world) await world.stop(); });

const fakeWx = (openid, opts) => makeFakeWx(world, openid, opts);

const shopOf = (wx, g = gw, opts = {}) =>
  paygate.create({ baseUrl: `http://127.0.0.1:${g.port}`, wxApi: wx, pollMs: 50, retryMs: 20, ...opts });
const logins = (wx) => wx.calls.filter((c) => c === 'login').length;
const stockOf = async (g) => (await g.get('/test/products/1')).json;

test('buy() logs in, orders, pays through wx.requestPayment and returns the PAID order; the session is stored', async () => {
  const wx = fakeWx(newOpenid());
  const shop = shopOf(wx);
  assert.equal((await shop.products())[0].name, 'Tea');
  const order = await shop.buy([{ product_id: 1, qty: 2 }]);
  assert.equal(order.status, 'PAID');
  assert.equal(order.amount, 7600);
  assert.ok(order.transaction_id);
  assert.deepEqual(wx.calls.filter((c) => c !== 'request'), ['login', 'requestPayment']);
  const s = wx.storage.get('paygate:session');
  assert.ok(s.token && s.expires_at > Date.now() + 6 * 24 * 3600 * 1000, 'token and its expiry (7 days) kept');
  assert.equal(shop.pendingOrder(), null, 'nothing left pending once paid');
  assert.ok(wx.requests.every((r) => r.timeout === 10000), 'every wx.request has a timeout');
});

test('a payment the user cancels rejects with code cancelled, the order_no and the unpaid order', async () => {
  const wx = fakeWx(newOpenid(), { payResult: 'CANCEL' });
  const shop = shopOf(wx, gw, { confirmAfterFailMs: 300 });
  const e = await shop.buy([{ product_id: 1, qty: 1 }]).then(() => assert.fail('resolved'), (x) => x);
  assert.ok(e instanceof Error);
  assert.equal(e.code, 'cancelled');
  assert.match(e.order_no, /^PG/);
  assert.match(e.errMsg, /cancel/);
  assert.equal(e.order.status, 'PAYING');
  assert.equal(shop.pendingOrder(), null);
  const closed = await shop.cancel(e.order_no);
  assert.equal(closed.status, 'CLOSED');
});

test('a payment that fails rejects with code payment_failed and keeps WeChat\'s errMsg', async () => {
  const wx = fakeWx(newOpenid(), { payResult: 'FAIL' });
  const shop = shopOf(wx, gw, { confirmAfterFailMs: 300 });
  const e = await shop.buy([{ product_id: 1, qty: 1 }]).then(() => assert.fail('resolved'), (x) => x);
  assert.ok(e instanceof Error);
  assert.equal(e.code, 'payment_failed');
  assert.match(e.order_no, /^PG/);
  assert.match(e.errMsg, /^requestPayment:fail/);
  assert.match(e.message, /requestPayment:fail/);
  assert.equal((await shop.getOrder(e.order_no)).status, 'PAYING');
});

test('wx.requestPayment saying "fail cancel" when WeChat took the money still ends PAID', async () => {
  const wx = fakeWx(newOpenid(), { payReports: 'requestPayment:fail cancel' });
  const order = await shopOf(wx).buy([{ product_id: 1, qty: 1 }]);
  assert.equal(order.status, 'PAID');
});

test('with the real status-query defaults and no notification, buy() keeps asking until the server learns PAID', async () => {
  const wx = fakeWx(newOpenid(), { slowConfirmation: true });
  const shop = shopOf(wx, gwReal, { pollMs: 500 });
  const t0 = Date.now();
  const order = await shop.buy([{ product_id: 1, qty: 1 }]);
  assert.equal(order.status, 'PAID');
  const gets = wx.requests.filter((r) => /^GET \/api\/orders\/PG/.test(r.what)).length;
  assert.ok(gets >= 3, `asked ${gets} times`);
  assert.ok(Date.now() - t0 >= 2500, 'the server asked WeChat only after status_query_after_s (3 s)');
});

test('an undecided payment returns {pending, order_no}, stays saved, and resume() finds it PAID later', async () => {
  const storage = new Map();
  const openid = newOpenid();
  const wx = fakeWx(openid, { storage, slowConfirmation: true });
  const shop = shopOf(wx, gwReal, { pollMs: 200, confirmMs: 800 });
  const r = await shop.buy([{ product_id: 1, qty: 1 }]);
  assert.equal(r.pending, true);
  assert.match(r.order_no, /^PG/);
  assert.equal(r.order.status, 'PAYING');
  assert.equal(shop.pendingOrder().order_no, r.order_no);
  // onShow of a later start: a new client on the same storage.
  const again = shopOf(fakeWx(openid, { storage }), gwReal, { pollMs: 500 });
  const order = await again.resume({ waitMs: 15000 });
  assert.equal(order.status, 'PAID');
  assert.equal(order.order_no, r.order_no);
  assert.equal(again.pendingOrder(), null);
  assert.equal(await again.resume(), null, 'nothing pending any more');
});

test('status checks that fail on the network after paying are asked through, not reported as errors', async () => {
  const wx = fakeWx(newOpenid());
  wx.drop({ match: /^GET \/api\/orders\/PG/, nth: 1 });
  wx.drop({ match: /^GET \/api\/orders\/PG/, nth: 2, after: true });
  const order = await shopOf(wx).buy([{ product_id: 1, qty: 1 }]);
  assert.equal(order.status, 'PAID');
  assert.ok(wx.requests.filter((r) => /^GET \/api\/orders\/PG/.test(r.what)).length >= 3);
});

test('an app killed while paying finds the order on its next start with resume()', async () => {
  const storage = new Map();
  const openid = newOpenid();
  const wx = fakeWx(openid, { storage, payNeverReturns: true });
  const shop = shopOf(wx);
  shop.buy([{ product_id: 1, qty: 1 }]);   // never settles: the app is gone
  let saved;
  for (let i = 0; i < 200 && !(saved = storage.get('paygate:pending')); i++) await sleep(20);
  assert.ok(saved && saved.order_no, 'the order was saved before the payment sheet opened');
  const wx2 = fakeWx(openid, { storage });
  const order = await shopOf(wx2).resume({ waitMs: 10000 });
  assert.equal(order.status, 'PAID');
  assert.equal(order.order_no, saved.order_no);
  assert.equal(logins(wx2), 0, 'the stored session is used after a restart');
});

test('paying an order that is already PAID returns it instead of an error', async () => {
  const wx = fakeWx(newOpenid());
  const shop = shopOf(wx);
  const paid = await shop.buy([{ product_id: 1, qty: 1 }]);
  const again = await shop.pay(paid.order_no);
  assert.equal(again.status, 'PAID');
  assert.equal(again.order_no, paid.order_no);
  assert.equal(wx.calls.filter((c) => c === 'requestPayment').length, 1, 'no second payment sheet');
});

test('every failure is an Error with a code, and order_no once the order exists; buy works detached', async () => {
  const wx = fakeWx(newOpenid());
  const shop = shopOf(wx);
  await assert.rejects(shop.createOrder([{ product_id: 1, qty: 1000 }]),
    (e) => e instanceof Error && e.status === 400 && e.code === 'invalid_request');
  await assert.rejects(shop.getOrder('PG000000000000000000000000'),
    (e) => e instanceof Error && e.status === 404 && e.code === 'not_found' && e.order_no === 'PG000000000000000000000000');
  wx.drop({ match: /^POST \/api\/orders\/PG.*\/pay$/ });
  const { buy } = shop;
  await assert.rejects(buy([{ product_id: 1, qty: 1 }]),
    (e) => e instanceof Error && e.code === 'network' && /^PG/.test(e.order_no) && /request:fail/.test(e.errMsg));
  const noLogin = fakeWx(newOpenid(), { loginFails: 1 });
  await assert.rejects(shopOf(noLogin).getOrder('PG1'),
    (e) => e instanceof Error && e.code === 'login_failed' && /login:fail/.test(e.message));
});

test('a wx.request that takes longer than timeoutMs fails as a network error', async () => {
  const wx = fakeWx(newOpenid());
  const shop = shopOf(wx, gw, { timeoutMs: 150 });
  await shop.login();
  await world.sandbox.post('/sandbox/faults', { latency: { ms: 1500 } });   // WeChat answers slowly
  try {
    const order = await shop.createOrder([{ product_id: 1, qty: 1 }]);
    await assert.rejects(shop.pay(order.order_no), (e) => e.code === 'network' && /timeout/.test(e.errMsg) && e.order_no === order.order_no);
  } finally {
    await world.sandbox.post('/sandbox/faults', { latency: false });
  }
});

test('protected calls log in by themselves, and concurrent calls after the session expired share one login', async () => {
  const wx = fakeWx(newOpenid());
  const shop = shopOf(wx);
  const order = await shop.createOrder([{ product_id: 1, qty: 1 }]);   // no login() first
  assert.equal(logins(wx), 1);
  wx.expireTokens();
  const all = await Promise.all(Array.from({ length: 6 }, () => shop.getOrder(order.order_no)));
  assert.ok(all.every((o) => o.order_no === order.order_no));
  assert.equal(logins(wx), 2, 'one more login for all six');
  const cold = Promise.all([shopOf(fakeWx(newOpenid())).orders(), shopOf(fakeWx(newOpenid())).quote([{ product_id: 1, qty: 1 }])]);
  assert.equal((await cold)[1].amount, 3800);
});

test('a 401 that keeps coming is retried once with a new login, then is a clear error', async () => {
  const wx = fakeWx(newOpenid(), { reject401: true });
  const shop = shopOf(wx);
  const t0 = Date.now();
  await assert.rejects(shop.getOrder('PG1'), (e) => e instanceof Error && e.code === 'unauthorized' && e.status === 401);
  assert.equal(logins(wx), 2, 'the first login, and one after the 401');
  await assert.rejects(Promise.all([shop.getOrder('PG1'), shop.getOrder('PG2'), shop.orders()]), (e) => e.code === 'unauthorized');
  assert.ok(logins(wx) <= 4, `${logins(wx)} logins`);
  assert.ok(Date.now() - t0 < 10000);
});

test('the stored session is used after a restart until it expires', async () => {
  const storage = new Map();
  const openid = newOpenid();
  await shopOf(fakeWx(openid, { storage })).login();
  const wx2 = fakeWx(openid, { storage });
  await shopOf(wx2).orders();
  assert.equal(logins(wx2), 0);
  storage.set('paygate:session', { ...storage.get('paygate:session'), expires_at: Date.now() - 1 });
  const wx3 = fakeWx(openid, { storage });
  await shopOf(wx3).orders();
  assert.equal(logins(wx3), 1, 'an expired session is replaced before the call');
});

test('an order whose answer was lost is asked for again with the same Idempotency-Key: one order, not two', async () => {
  const wx = fakeWx(newOpenid());
  const shop = shopOf(wx);
  const before = await stockOf(gw);
  wx.drop({ match: /^POST \/api\/orders$/, after: true });   // created on the server, the answer lost
  wx.drop({ match: /^POST \/api\/orders$/, nth: 2 });        // the first retry never gets there
  const order = await shop.buy([{ product_id: 1, qty: 3 }]);
  assert.equal(order.status, 'PAID');
  const keys = wx.requests.filter((r) => r.what === 'POST /api/orders').map((r) => r.header['Idempotency-Key']);
  assert.equal(keys.length, 3);
  assert.equal(new Set(keys).size, 1, 'one key for every attempt');
  const mine = await shop.orders();
  assert.deepEqual(mine.orders.map((o) => o.order_no), [order.order_no], 'one order');
  const after = await stockOf(gw);
  assert.equal(after.sold - before.sold, 3);
  assert.equal(after.reserved, before.reserved);
});

test('when every attempt fails the key comes back with the error, and passing it in gets that same order', async () => {
  const wx = fakeWx(newOpenid());
  const shop = shopOf(wx, gw, { orderRetries: 1 });
  wx.drop({ match: /^POST \/api\/orders$/, after: true });
  wx.drop({ match: /^POST \/api\/orders$/, nth: 2 });
  const e = await shop.createOrder([{ product_id: 1, qty: 1 }]).then(() => assert.fail('resolved'), (x) => x);
  assert.equal(e.code, 'network');
  assert.ok(e.idempotency_key);
  const order = await shop.createOrder([{ product_id: 1, qty: 1 }], {}, { idempotencyKey: e.idempotency_key });
  const again = await shop.createOrder([{ product_id: 1, qty: 1 }], {}, { idempotencyKey: e.idempotency_key });
  assert.equal(again.order_no, order.order_no);
  assert.equal((await shop.orders()).orders.length, 1);
  await assert.rejects(shop.createOrder([{ product_id: 1, qty: 2 }], {}, { idempotencyKey: e.idempotency_key }),
    (x) => x.code === 'idempotency_mismatch' && x.status === 422);
});

test('GET /api/orders lists the caller\'s own orders, newest first, a page at a time', async () => {
  const wx = fakeWx(newOpenid());
  const shop = shopOf(wx);
  const made = [];
  for (let i = 0; i < 5; i++) made.push((await shop.createOrder([{ product_id: 1, qty: 1 }])).order_no);
  const other = shopOf(fakeWx(newOpenid()));
  const theirs = (await other.createOrder([{ product_id: 1, qty: 1 }])).order_no;
  const newest = made.slice().reverse();
  const p1 = await shop.orders({ limit: 2 });
  assert.deepEqual(p1.orders.map((o) => o.order_no), newest.slice(0, 2));
  assert.equal(p1.orders[0].items[0].product_id, 1);
  const p2 = await shop.orders({ limit: 2, before: p1.next });
  assert.deepEqual(p2.orders.map((o) => o.order_no), newest.slice(2, 4));
  const p3 = await shop.orders({ limit: 2, before: p2.next });
  assert.deepEqual(p3.orders.map((o) => o.order_no), newest.slice(4));
  assert.equal(p3.next, undefined, 'no next on the last page');
  assert.deepEqual((await shop.orders()).orders.map((o) => o.order_no), newest, 'default limit holds them all');
  await assert.rejects(shop.orders({ before: theirs }), (e) => e.status === 400 && e.code === 'invalid_request');
  await assert.rejects(shop.orders({ limit: 'x' }), (e) => e.status === 400 && e.code === 'invalid_request');
  assert.equal((await gw.get('/api/orders')).status, 401);
  for (const no of made) await shop.cancel(no);
});

test('a page of the order list reads the index orders_by_owner in order, never the whole table or a full sort',
  { skip: backend !== 'sqlite' && 'SQLite\'s query plan (on a table this small PostgreSQL\'s planner may rightly scan it)' }, async () => {
  const plans = (await gw.get('/test/plan/orders')).json;
  for (const [which, plan] of Object.entries(plans)) {
    const text = plan.map((r) => r.detail).join(' | ');
    assert.match(text, /SEARCH orders USING INDEX orders_by_owner \(openid=\?/, `${which}: ${text}`);
    assert.doesNotMatch(text, /SCAN orders|USE TEMP B-TREE/, `${which}: ${text}`);
  }
});

test('quote() shows the price with a coupon first, and buy() with the same coupon is charged that', async () => {
  assert.equal((await gw.post('/admin/coupons', { code: 'MINI5', kind: 'amount', value: 500 })).status, 201);
  const wx = fakeWx(newOpenid());
  const shop = shopOf(wx);
  const price = await shop.quote([{ product_id: 1, qty: 1 }], { coupon: 'MINI5' });
  assert.equal(price.amount, 3300);
  assert.deepEqual(price.adjustments.map((a) => [a.code, a.amount]), [['coupon:MINI5', -500]]);
  const order = await shop.buy([{ product_id: 1, qty: 1 }], { coupon: 'MINI5' });
  assert.equal(order.status, 'PAID');
  assert.equal(order.amount, 3300);
  await assert.rejects(shop.quote([{ product_id: 1, qty: 1 }], { coupon: 'NOPE' }), (e) => e.status === 409 && e.code === 'coupon_invalid');
});
});

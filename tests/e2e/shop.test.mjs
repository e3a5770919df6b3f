// The shop flow end to end: the real gateway (scripts/) against the WeChat Pay sandbox
// (examples/sandbox/), both real paygate processes on 127.0.0.1, spoken to over HTTP.
import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import crypto from 'node:crypto';
import { eventually, sleep, backends } from './harness.mjs';
import { startWorld, MCHID, APPID } from './shopenv.mjs';

// The whole spec runs once per back end of the shop's gateways (the sandbox stays on SQLite);
// the body is not indented, to keep it one spec.
for (const backend of backends()) describe(`shop on ${backend}`, () => {
let world, keys, sandbox, gw, shortGw;
const k = (name) => world.k(name);

before(async () => {
  world = await startWorld({ backend });
  ({ keys, sandbox } = world);
  gw = await world.startShop({ order_ttl_s: 600, reconcile_after_s: 1 });
  shortGw = await world.startShop({ order_ttl_s: 2, reconcile_after_s: 3600 });   // only expiry finds out
  for (const g of [gw, shortGw]) {
    for (const [id, name, price, stock] of [[1, 'Tea', 3800, 1000], [2, 'Cup', 1200, 10], [3, 'Pot', 9900, 5]]) {
      const r = await g.put(`/admin/products/${id}`, { name, price, stock });
      assert.equal(r.status, 200, r.body);
    }
  }
});

after(async () => { if (world) await world.stop(); });

// ---- helpers: a user, an order, a payment ----

const login = (g = gw) => world.login(g);

async function order(user, items, g = gw, headers = {}) {
  return g.post('/api/orders', { items }, { headers: { ...user.auth, ...headers } });
}

async function pay(user, no, g = gw) {
  const r = await g.post(`/api/orders/${no}/pay`, undefined, { headers: user.auth });
  assert.equal(r.status, 200, r.body);
  return r.json;
}

const userPays = (user, params, result) => world.userPays(user, params, result);

const get = (user, no, g = gw) => g.get(`/api/orders/${no}`, { headers: user.auth });
const product = async (id, g = gw) => (await g.get(`/test/products/${id}`)).json;
const faults = (spec) => sandbox.post('/sandbox/faults', spec);

async function paidOrder(user, items = [{ product_id: 1, qty: 1 }], g = gw) {
  const o = (await order(user, items, g)).json;
  await userPays(user, await pay(user, o.order_no, g));
  await eventually(async () => (await get(user, o.order_no, g)).json.status === 'PAID', 5000);
  return o;
}

// ---- the purchase ----

test('the whole purchase: login, order, pay, the user pays, the notification makes it PAID, delivered once', async () => {
  const user = await login();
  const before = await product(1);
  const created = await order(user, [{ product_id: 1, qty: 2 }, { product_id: 2, qty: 1 }]);
  assert.equal(created.status, 201, created.body);
  const o = created.json;
  assert.equal(o.status, 'CREATED');
  assert.equal(o.amount, 2 * 3800 + 1200);
  assert.match(o.order_no, /^PG[0-9a-z]{9}[0-9a-f]{18}$/);   // prefix, time (base 36), 72 random bits
  assert.deepEqual(o.items.map((i) => [i.product_id, i.qty, i.price]), [[1, 2, 3800], [2, 1, 1200]]);
  assert.equal((await product(1)).reserved, before.reserved + 2);

  const params = await pay(user, o.order_no);
  assert.equal(params.signType, 'RSA');
  assert.match(params.package, /^prepay_id=/);
  assert.equal((await get(user, o.order_no)).json.status, 'PAYING');
  const again = await pay(user, o.order_no);
  assert.equal(again.package, params.package, 'asking twice reuses the prepay_id');

  const paid = await userPays(user, params);
  assert.equal(paid.errMsg, 'requestPayment:ok');
  const final = await eventually(async () => {
    const r = (await get(user, o.order_no)).json;
    return r.status === 'PAID' && r;
  }, 5000);
  assert.equal(final.transaction_id, paid.transaction_id);
  const p1 = await product(1);
  assert.equal(p1.sold, before.sold + 2);
  assert.equal(p1.reserved, before.reserved);
  assert.equal(p1.stock + p1.reserved + p1.sold, before.stock + before.reserved + before.sold, 'units conserved');
  const f = await eventually(async () => { const x = (await gw.get(`/test/fulfillments/${o.order_no}`)).json; return x && x.status === 'DONE' && x; });
  assert.equal(f.attempts, 1);
  const adm = await gw.get('/admin/orders?status=PAID&limit=500');
  assert.ok(adm.json.orders.some((x) => x.order_no === o.order_no && x.fulfillment.status === 'DONE'));
});

test('the operator filters orders by status in any case; an unknown status or a bad limit is a 400', async () => {
  const paid = (await gw.get('/admin/orders?status=paid&limit=500')).json.orders;
  assert.ok(paid.length > 0 && paid.every((x) => x.status === 'PAID'), 'lowercase status filters too');
  assert.ok((await gw.get('/admin/orders?limit=2')).json.orders.length <= 2);
  assert.equal((await gw.get('/admin/orders?status=SHIPPED')).status, 400);
  assert.equal((await gw.get('/admin/orders?limit=0')).status, 400);
  assert.equal((await gw.get('/admin/orders?limit=many')).status, 400);
});

test('products are listed with price and stock', async () => {
  const r = await gw.get('/api/products');
  assert.equal(r.status, 200);
  assert.deepEqual(Object.keys(r.json.products[0]).sort(), ['id', 'name', 'price', 'stock']);
});

test('ordering more than is left is 409 out_of_stock naming the product, and reserves nothing', async () => {
  const user = await login();
  const before = await product(3);
  const r = await order(user, [{ product_id: 1, qty: 1 }, { product_id: 3, qty: before.stock + 1 }]);
  assert.equal(r.status, 409);
  assert.equal(r.json.error, 'out_of_stock');
  assert.match(r.json.message, /Pot \(product 3\)/);
  assert.deepEqual(await product(3), before);
});

test('200 concurrent buyers of 10 units: exactly 10 orders, stock 0, never negative', async () => {
  await gw.put('/admin/products/4', { name: 'Limited', price: 100, stock: 10 });
  const users = await Promise.all(Array.from({ length: 200 }, () => login()));
  const results = await Promise.all(users.map((u) => order(u, [{ product_id: 4, qty: 1 }])));
  const ok = results.filter((r) => r.status === 201).length;
  const sold = results.filter((r) => r.status === 409 && r.json.error === 'out_of_stock').length;
  assert.equal(ok, 10);
  assert.equal(sold, 190);
  const p = await product(4);
  assert.equal(p.stock, 0);
  assert.equal(p.reserved, 10);
});

test('another user\'s order is a 404 for reading, paying and cancelling', async () => {
  const alice = await login(), mallory = await login();
  const o = (await order(alice, [{ product_id: 1, qty: 1 }])).json;
  for (const r of [await get(mallory, o.order_no),
    await gw.post(`/api/orders/${o.order_no}/pay`, undefined, { headers: mallory.auth }),
    await gw.post(`/api/orders/${o.order_no}/cancel`, undefined, { headers: mallory.auth })]) {
    assert.equal(r.status, 404);
    assert.equal(r.json.error, 'not_found');
  }
  assert.equal((await get(alice, o.order_no)).status, 200);
  assert.equal((await gw.get(`/api/orders/${o.order_no}`)).status, 401, 'no token: 401');
  assert.equal((await gw.get(`/api/orders/${o.order_no}`, { headers: { Authorization: 'Bearer 1.x.' + 'a'.repeat(64) } })).status, 401);
});

test('quantities 0, -1, 1.5, "1", 2^53, null, huge arrays and duplicates are 400', async () => {
  const user = await login();
  const before = await product(1);
  for (const qty of ['0', '-1', '1.5', '"1"', '9007199254740992', 'null', '1e3', '100']) {
    const r = await gw.post('/api/orders', `{"items":[{"product_id":1,"qty":${qty}}]}`, { headers: user.auth });
    assert.equal(r.status, 400, `qty ${qty}: ${r.body}`);
    assert.equal(r.json.error, 'invalid_request');
  }
  const huge = JSON.stringify({ items: Array.from({ length: 21 }, (_, i) => ({ product_id: i + 1, qty: 1 })) });
  assert.equal((await gw.post('/api/orders', huge, { headers: user.auth })).status, 400);
  const bigger = JSON.stringify({ items: Array.from({ length: 5000 }, () => ({ product_id: 1, qty: 1 })) });
  assert.ok([400, 413].includes((await gw.post('/api/orders', bigger, { headers: user.auth })).status));
  for (const items of ['[]', '{}', '"x"', '[{"product_id":1,"qty":1},{"product_id":1,"qty":1}]', '[{"product_id":99,"qty":1}]',
    '[{"product_id":"1","qty":1}]', '[{"qty":1}]', '[1]']) {
    const r = await gw.post('/api/orders', `{"items":${items}}`, { headers: user.auth });
    assert.equal(r.status, 400, `items ${items}: ${r.body}`);
  }
  assert.deepEqual(await product(1), before, 'nothing reserved by refused orders');
});

test('an Idempotency-Key replays the first answer, refuses another body (422), and makes one order', async () => {
  const user = await login();
  const key = { 'Idempotency-Key': 'k-' + crypto.randomUUID() };
  const a = await order(user, [{ product_id: 1, qty: 1 }], gw, key);
  const b = await order(user, [{ product_id: 1, qty: 1 }], gw, key);
  assert.equal(a.status, 201);
  assert.equal(b.status, 201);
  assert.equal(b.json.order_no, a.json.order_no);
  assert.equal(b.headers['idempotent-replayed'], 'true');
  const c = await order(user, [{ product_id: 1, qty: 2 }], gw, key);
  assert.equal(c.status, 422);
  assert.equal(c.json.error, 'idempotency_mismatch');
  const other = await login();   // keys are per user
  const d = await order(other, [{ product_id: 1, qty: 1 }], gw, key);
  assert.equal(d.status, 201);
  assert.notEqual(d.json.order_no, a.json.order_no);
  // a refused order is an answer too: the same key gets the same 409, even once stock is back
  const key2 = { 'Idempotency-Key': 'k-' + crypto.randomUUID() };
  const stock3 = (await product(3)).stock;
  const e1 = await order(user, [{ product_id: 3, qty: stock3 + 1 }], gw, key2);
  assert.equal(e1.status, 409);
  await gw.put('/admin/products/3', { stock: stock3 + 5 });
  const e2 = await order(user, [{ product_id: 3, qty: stock3 + 1 }], gw, key2);
  assert.equal(e2.status, 409);
  assert.equal(e2.json.error, 'out_of_stock');
  assert.equal(e2.headers['idempotent-replayed'], 'true');
  await gw.put('/admin/products/3', { stock: stock3 });
});

// ---- notifications ----

test('a notification delivered twice at once by WeChat makes one PAID and one fulfillment', async () => {
  const user = await login();
  const o = (await order(user, [{ product_id: 1, qty: 1 }])).json;
  await faults({ notify_duplicate: { count: 1, concurrent: true, match: o.order_no } });
  await userPays(user, await pay(user, o.order_no));
  // Both copies first: reading the order before them would ask WeChat and could learn the payment that way.
  await eventually(async () => (await gw.get(`/test/notification_log/${o.order_no}`)).json.log.filter((l) => l.kind === 'pay').length >= 2);
  await eventually(async () => (await get(user, o.order_no)).json.status === 'PAID', 5000);
  await eventually(async () => (await gw.get(`/test/fulfillments/${o.order_no}`)).json.status === 'DONE');
  const log = (await gw.get(`/test/notification_log/${o.order_no}`)).json.log.filter((l) => l.kind === 'pay');
  assert.equal(log.filter((l) => l.outcome === 'paid').length, 1, JSON.stringify(log));
  assert.equal((await gw.get(`/test/fulfillments/${o.order_no}`)).json.attempts, 1);
});

test('the same notification 20 times at once: one PAID, one fulfillment, every copy answered 204', async () => {
  const user = await login();
  const o = (await order(user, [{ product_id: 1, qty: 1 }])).json;
  await pay(user, o.order_no);
  const n = signedNotification(transaction({ ...o, openid: user.openid }));
  const answers = await Promise.all(Array.from({ length: 20 }, () => gw.post('/wechat/notify/pay', n.body, { headers: n.headers })));
  assert.deepEqual(answers.map((a) => a.status), Array(20).fill(204));
  assert.equal((await get(user, o.order_no)).json.status, 'PAID');
  const log = (await gw.get(`/test/notification_log/${o.order_no}`)).json.log;
  assert.equal(log.filter((l) => l.outcome === 'paid').length, 1);
  await eventually(async () => (await gw.get(`/test/fulfillments/${o.order_no}`)).json.status === 'DONE');
  await sleep(300);
  assert.equal((await gw.get(`/test/fulfillments/${o.order_no}`)).json.attempts, 1);
});

// A notification built by the test with the sandbox's own keys: as genuine as WeChat's.
function signedNotification(tx, { ts = Math.floor(Date.now() / 1000), id = crypto.randomUUID() } = {}) {
  const apiv3 = readFileSync(k('apiv3_key'));
  const nonce = crypto.randomBytes(6).toString('hex');
  const c = crypto.createCipheriv('aes-256-gcm', apiv3, Buffer.from(nonce));
  c.setAAD(Buffer.from('transaction'));
  const ct = Buffer.concat([c.update(JSON.stringify(tx)), c.final(), c.getAuthTag()]).toString('base64');
  const body = JSON.stringify({
    id, create_time: '2026-11-28T16:00:00+08:00', resource_type: 'encrypt-resource', event_type: 'TRANSACTION.SUCCESS',
    summary: '支付成功', resource: { original_type: 'transaction', algorithm: 'AEAD_AES_256_GCM', ciphertext: ct,
      associated_data: 'transaction', nonce },
  });
  const wnonce = crypto.randomBytes(16).toString('hex');
  const sig = crypto.sign('sha256', Buffer.from(`${ts}\n${wnonce}\n${body}\n`), readFileSync(k('platform_key.pem'))).toString('base64');
  return { body, headers: { 'Wechatpay-Timestamp': String(ts), 'Wechatpay-Nonce': wnonce, 'Wechatpay-Signature': sig,
    'Wechatpay-Serial': readFileSync(k('platform_serial'), 'utf8').trim(), 'Content-Type': 'application/json' } };
}

function transaction(o, over = {}) {
  return { appid: APPID, mchid: MCHID, out_trade_no: o.order_no, transaction_id: '42000000' + crypto.randomInt(1e9, 1e10 - 1) + '0000000000',
    trade_type: 'JSAPI', trade_state: 'SUCCESS', trade_state_desc: '支付成功', bank_type: 'OTHERS',
    success_time: '2026-11-28T16:00:00+08:00', payer: { openid: o.openid || 'x' },
    amount: { total: o.amount, payer_total: o.amount, currency: 'CNY', payer_currency: 'CNY' }, ...over };
}

test('tampered amount, wrong mchid or appid, unknown order, bad signature, a 6-minute-old replay: refused, order unchanged', async () => {
  const user = await login();
  const o = (await order(user, [{ product_id: 1, qty: 1 }])).json;
  await pay(user, o.order_no);
  const cases = [
    ['amount', transaction(o, { amount: { total: 1, payer_total: 1, currency: 'CNY', payer_currency: 'CNY' } }), {}, 400],
    ['mchid', transaction(o, { mchid: '1230000109' }), {}, 400],
    ['appid', transaction(o, { appid: 'wx0000000000000000' }), {}, 400],
    ['currency', transaction(o, { amount: { total: o.amount, payer_total: o.amount, currency: 'USD', payer_currency: 'USD' } }), {}, 400],
    ['unknown order', transaction({ ...o, order_no: 'PG' + 'f'.repeat(24) }), {}, 400],
    ['state', transaction(o, { trade_state: 'NOTPAY' }), {}, 400],
    ['replay after 6 minutes', transaction(o), { ts: Math.floor(Date.now() / 1000) - 360 }, 401],
  ];
  for (const [name, tx, opts, status] of cases) {
    const n = signedNotification(tx, opts);
    const r = await gw.post('/wechat/notify/pay', n.body, { headers: n.headers });
    assert.equal(r.status, status, `${name}: ${r.body}`);
    assert.equal(r.json.code, 'FAIL', name);
  }
  const bad = signedNotification(transaction(o));
  const tampered = bad.body.replace('"summary":"支付成功"', '"summary":"支付成功 "');
  assert.equal((await gw.post('/wechat/notify/pay', tampered, { headers: bad.headers })).status, 401, 'body changed after signing');
  const probe = signedNotification(transaction(o));
  probe.headers['Wechatpay-Signature'] = 'WECHATPAY/SIGNTEST/' + probe.headers['Wechatpay-Signature'].slice(19);
  assert.equal((await gw.post('/wechat/notify/pay', probe.body, { headers: probe.headers })).status, 401, 'probe');
  const now = (await get(user, o.order_no)).json;
  assert.equal(now.status, 'PAYING');
  assert.equal(now.transaction_id, undefined);
  const refused = (await gw.get('/test/refused')).json.log.map((l) => l.reason);
  for (const reason of ['amount_mismatch', 'mchid_mismatch', 'appid_mismatch', 'currency_mismatch', 'unknown_order', 'stale_timestamp', 'bad_signature', 'signature_probe']) {
    assert.ok(refused.includes(reason), `refusal recorded: ${reason} in ${refused}`);
  }
});

test('a notification reusing another order\'s transaction_id is refused with 400 and changes neither order', async () => {
  const user = await login();
  const a = (await order(user, [{ product_id: 1, qty: 1 }])).json;
  const b = (await order(user, [{ product_id: 1, qty: 1 }])).json;
  await pay(user, a.order_no);
  await pay(user, b.order_no);
  const txA = transaction({ ...a, openid: user.openid });
  const na = signedNotification(txA);
  assert.equal((await gw.post('/wechat/notify/pay', na.body, { headers: na.headers })).status, 204);
  const before = (await gw.get('/api/products')).json;
  const forged = signedNotification(transaction({ ...b, openid: user.openid }, { transaction_id: txA.transaction_id }));
  const r = await gw.post('/wechat/notify/pay', forged.body, { headers: forged.headers });
  assert.equal(r.status, 400, r.body);
  assert.equal(r.json.code, 'FAIL');
  const nowB = (await get(user, b.order_no)).json;
  assert.equal(nowB.status, 'PAYING');
  assert.equal(nowB.transaction_id, undefined);
  const nowA = (await get(user, a.order_no)).json;
  assert.equal(nowA.status, 'PAID');
  assert.equal(nowA.transaction_id, txA.transaction_id);
  assert.deepEqual((await gw.get('/api/products')).json, before, 'stock unchanged');
  const refused = (await gw.get('/test/refused')).json.log.map((l) => l.reason);
  assert.ok(refused.includes('transaction_of_another_order'), `refusal recorded: ${refused}`);
});

test('a genuine notification replayed after it was applied changes nothing (same id, then same transaction)', async () => {
  const user = await login();
  const o = (await order(user, [{ product_id: 1, qty: 1 }])).json;
  await pay(user, o.order_no);
  const tx = transaction({ ...o, openid: user.openid });
  const n = signedNotification(tx);
  assert.equal((await gw.post('/wechat/notify/pay', n.body, { headers: n.headers })).status, 204);
  assert.equal((await gw.post('/wechat/notify/pay', n.body, { headers: n.headers })).status, 204, 'same id again: 204, nothing new');
  const n2 = signedNotification(tx);   // another id, same transaction
  assert.equal((await gw.post('/wechat/notify/pay', n2.body, { headers: n2.headers })).status, 204);
  const applied = (await gw.get(`/test/notification_log/${o.order_no}`)).json.log;
  assert.equal(applied.filter((l) => l.outcome === 'paid').length, 1);
  assert.equal(applied.filter((l) => l.outcome === 'duplicate').length, 2, 'both repeats recorded as duplicates');
  await eventually(async () => (await gw.get(`/test/fulfillments/${o.order_no}`)).json.status === 'DONE');
  await sleep(200);
  assert.equal((await gw.get(`/test/fulfillments/${o.order_no}`)).json.attempts, 1);
});

test('a notification that never comes: reconciliation asks WeChat and marks the order PAID', async () => {
  const user = await login();
  const o = (await order(user, [{ product_id: 1, qty: 1 }])).json;
  await faults({ notify_drop: { count: 1, match: o.order_no } });
  await userPays(user, await pay(user, o.order_no));
  // nobody reads the order: only the reconcile job (1 s in this config) can find out
  const admin = async () => (await gw.get('/admin/orders?limit=500')).json.orders.find((x) => x.order_no === o.order_no);
  await eventually(async () => (await admin()).status === 'PAID', 8000, 100);
  const log = (await gw.get(`/test/notification_log/${o.order_no}`)).json.log;
  assert.ok(log.some((l) => l.kind === 'query' && l.outcome === 'paid'));
});

test('reading a PAYING order asks WeChat, so the mini program learns the payment at once', async () => {
  const user = await login();
  const o = (await order(user, [{ product_id: 1, qty: 1 }])).json;
  await faults({ notify_drop: { count: 1, match: o.order_no } });
  await userPays(user, await pay(user, o.order_no));
  assert.equal((await get(user, o.order_no)).json.status, 'PAID');
});

// ---- expiry and cancel ----

test('an unpaid order expires: closed at WeChat, then its stock is back', async () => {
  const user = await login(shortGw);
  const before = await product(3, shortGw);
  const o = (await order(user, [{ product_id: 3, qty: 2 }], shortGw)).json;
  await pay(user, o.order_no, shortGw);
  assert.equal((await product(3, shortGw)).stock, before.stock - 2);
  const closed = await eventually(async () => { const r = (await get(user, o.order_no, shortGw)).json; return r.status === 'CLOSED' && r; }, 10000, 100);
  assert.equal(closed.closed_reason, 'expired');
  assert.deepEqual(await product(3, shortGw), before);
  const at = (await sandbox.get(`/sandbox/orders/${o.order_no}`)).json;
  assert.equal((at.order || at).trade_state, 'CLOSED', 'closed at WeChat first');
  assert.equal((await shortGw.post(`/api/orders/${o.order_no}/pay`, undefined, { headers: user.auth })).status, 409);
});

test('expiry racing a late payment: WeChat says paid, the order is PAID and keeps its stock', async () => {
  const user = await login(shortGw);
  const before = await product(1, shortGw);
  const o = (await order(user, [{ product_id: 1, qty: 1 }], shortGw)).json;
  await faults({ notify_delay: { count: 1, ms: 60000, match: o.order_no } });
  await userPays(user, await pay(user, o.order_no, shortGw));
  // no status reads and no reconciler here: only the expiry job can find out, when its close meets ORDERPAID
  const admin = async () => (await shortGw.get('/admin/orders?limit=500')).json.orders.find((x) => x.order_no === o.order_no);
  await eventually(async () => (await admin()).status === 'PAID', 10000, 100);
  await sleep(500);
  assert.equal((await admin()).status, 'PAID');
  const log = (await shortGw.get(`/test/notification_log/${o.order_no}`)).json.log;
  assert.ok(log.some((l) => l.kind === 'query' && l.outcome === 'paid'), 'found by the expiry job asking WeChat');
  const p = await product(1, shortGw);
  assert.equal(p.sold, before.sold + 1);
  assert.equal(p.stock, before.stock - 1);
});

test('cancel closes at WeChat and gives the stock back; a paid order cannot be cancelled', async () => {
  const user = await login();
  const before = await product(2);
  const o = (await order(user, [{ product_id: 2, qty: 1 }])).json;
  await pay(user, o.order_no);
  const c = await gw.post(`/api/orders/${o.order_no}/cancel`, undefined, { headers: user.auth });
  assert.equal(c.status, 200, c.body);
  assert.equal(c.json.status, 'CLOSED');
  assert.deepEqual(await product(2), before);
  const p = await paidOrder(user, [{ product_id: 1, qty: 1 }]);
  const c2 = await gw.post(`/api/orders/${p.order_no}/cancel`, undefined, { headers: user.auth });
  assert.equal(c2.status, 409);
  assert.equal(c2.json.error, 'not_cancellable');
});

test('stock is never released on an unknown outcome: a failed close keeps the reservation until WeChat confirms', async () => {
  const user = await login();
  const before = await product(2);
  const o = (await order(user, [{ product_id: 2, qty: 1 }])).json;
  await pay(user, o.order_no);
  await faults({ system_error: { count: 1, match: o.order_no } });
  const c = await gw.post(`/api/orders/${o.order_no}/cancel`, undefined, { headers: user.auth });
  assert.equal(c.status, 502, c.body);
  assert.equal((await get(user, o.order_no)).json.status, 'PAYING');
  assert.equal((await product(2)).reserved, before.reserved + 1, 'still reserved');
  await faults({ timeout: { count: 1, ms: 4000, match: o.order_no } });      // WeChat closes it; the answer comes too late
  const t = await gw.post(`/api/orders/${o.order_no}/cancel`, undefined, { headers: user.auth });
  assert.equal(t.status, 502, 'a timeout is an unknown outcome too');
  assert.equal((await product(2)).reserved, before.reserved + 1, 'still reserved');
  const ok = await gw.post(`/api/orders/${o.order_no}/cancel`, undefined, { headers: user.auth });
  assert.equal(ok.status, 200, ok.body);
  assert.deepEqual(await product(2), before);
});

test('an expiry that cannot reach WeChat is retried, and only then releases the stock', async () => {
  const user = await login(shortGw);
  const before = await product(3, shortGw);
  const o = (await order(user, [{ product_id: 3, qty: 1 }], shortGw)).json;
  await pay(user, o.order_no, shortGw);
  await faults({ system_error: { count: 1, match: o.order_no } });
  await sleep(2300);                                   // expired; the first close fails
  const mid = (await shortGw.get('/admin/orders?limit=500')).json.orders.find((x) => x.order_no === o.order_no);
  assert.equal(mid.status, 'PAYING');
  assert.equal((await product(3, shortGw)).reserved, before.reserved + 1);
  await eventually(async () => (await shortGw.get('/admin/orders?limit=500')).json.orders
    .find((x) => x.order_no === o.order_no).status === 'CLOSED', 8000, 100);   // the job's retry (about 1 s)
  assert.deepEqual(await product(3, shortGw), before);
});

test('an order that WeChat never confirms closed keeps trying to close for days, holding its stock, then closes', async () => {
  const user = await login();
  const before = await product(3);
  const o = (await order(user, [{ product_id: 3, qty: 1 }])).json;
  await pay(user, o.order_no);
  const key = `expire:${o.order_no}`;
  const job = async () => (await gw.get(`/test/jobs/${key}`)).json.job ?? null;
  await faults({ system_error: { count: 1000, match: `${o.order_no}/close` } });   // every close fails
  try {
    await gw.post(`/test/jobs/${key}/due`, {});                                     // the order expires now
    await eventually(async () => { const x = await job(); return x.attempts === 1 && x.state === 'queued'; }, 8000, 50);
    // 40 failed closes: with the backoff capped at an hour, about a day and a half of WeChat failing
    await gw.post(`/test/jobs/${key}/due`, { attempts: 40 });
    const j = await eventually(async () => { const x = await job(); return x.attempts === 41 && x.state !== 'running' && x; }, 8000, 100);
    assert.equal(j.state, 'queued', 'still trying, not given up');
    assert.match(j.last_error, /cannot confirm the close/);
    assert.equal((await get(user, o.order_no)).json.status, 'PAYING');
    assert.equal((await product(3)).reserved, before.reserved + 1, 'the stock stays reserved meanwhile');
  } finally {
    await faults({ system_error: false });
  }
  await gw.post(`/test/jobs/${key}/due`, {});                                       // WeChat answers again
  await eventually(async () => (await get(user, o.order_no)).json.status === 'CLOSED', 8000, 100);
  await eventually(async () => (await job()) === null, 5000, 50);                  // done, not dead
  assert.deepEqual(await product(3), before);
});

test('WeChat unreachable during pay: 502 upstream_error, the order is kept and payable again', async () => {
  const user = await login();
  const o = (await order(user, [{ product_id: 1, qty: 1 }])).json;
  // every one of the pay call's prepay_attempts (3) tries fails (bills.test.mjs: fewer are absorbed)
  await faults({ system_error: { count: 3, match: '/jsapi' } });     // the prepay call's path
  const r = await gw.post(`/api/orders/${o.order_no}/pay`, undefined, { headers: user.auth });
  assert.equal(r.status, 502);
  assert.equal(r.json.error, 'upstream_error');
  assert.equal((await get(user, o.order_no)).json.status, 'CREATED');
  await faults({ bad_signature: { count: 3, match: '/jsapi' } });
  assert.equal((await gw.post(`/api/orders/${o.order_no}/pay`, undefined, { headers: user.auth })).status, 502, 'an unverifiable answer is not trusted');
  assert.equal((await gw.post(`/api/orders/${o.order_no}/pay`, undefined, { headers: user.auth })).status, 200);
});

test('a payment for an order already closed is kept: re-sold when stock allows', async () => {
  const user = await login();
  const o = (await order(user, [{ product_id: 1, qty: 1 }])).json;
  await faults({ notify_delay: { count: 1, ms: 1500, match: o.order_no } });
  await userPays(user, await pay(user, o.order_no));
  assert.equal((await gw.post(`/test/force-close/${o.order_no}`)).json.closed, true);
  const r = await eventually(async () => { const x = (await get(user, o.order_no)).json; return x.status === 'PAID' && x; }, 8000, 100);
  assert.ok(r.transaction_id);
});

test('a payment for an order already closed, with the stock gone, is refunded automatically', async () => {
  await gw.put('/admin/products/5', { name: 'Last one', price: 500, stock: 1 });
  const user = await login();
  const o = (await order(user, [{ product_id: 5, qty: 1 }])).json;
  await faults({ notify_delay: { count: 1, ms: 1500, match: o.order_no } });
  await userPays(user, await pay(user, o.order_no));
  await gw.post(`/test/force-close/${o.order_no}`);
  const other = await login();
  assert.equal((await order(other, [{ product_id: 5, qty: 1 }])).status, 201, 'the unit went to someone else');
  const r = await eventually(async () => { const x = (await get(user, o.order_no)).json; return x.status === 'REFUNDED' && x; }, 10000, 100);
  assert.equal(r.refunded, o.amount);
  const refunds = (await gw.get(`/test/refunds/${o.order_no}`)).json.refunds;
  assert.equal(refunds.length, 1);
  assert.equal(refunds[0].amount, o.amount);
  assert.equal(refunds[0].status, 'SUCCESS');
});

// ---- refunds ----

test('partial refunds add up to the paid amount and no further', async () => {
  const user = await login();
  const o = await paidOrder(user, [{ product_id: 1, qty: 2 }]);   // 7600
  const r1 = await gw.post(`/admin/orders/${o.order_no}/refund`, { amount: 3000, reason: 'one broke' });
  assert.equal(r1.status, 202, r1.body);
  const r2 = await gw.post(`/admin/orders/${o.order_no}/refund`, { amount: 4000 });
  assert.equal(r2.status, 202);
  const r3 = await gw.post(`/admin/orders/${o.order_no}/refund`, { amount: 601 });
  assert.equal(r3.status, 409);
  assert.equal(r3.json.error, 'refund_exceeds_paid');
  const r4 = await gw.post(`/admin/orders/${o.order_no}/refund`, {});   // the rest: 600
  assert.equal(r4.status, 202);
  assert.equal(r4.json.amount, 600);
  assert.equal((await gw.post(`/admin/orders/${o.order_no}/refund`, { amount: 1 })).status, 409);
  const done = await eventually(async () => { const x = (await get(user, o.order_no)).json; return x.status === 'REFUNDED' && x.refunded === 7600 && x; }, 10000, 100);
  assert.equal(done.refunded, 7600);
  const at = (await sandbox.get(`/sandbox/orders/${o.order_no}`)).json;
  const refunded = (at.refunds || []).reduce((s, r) => s + r.refund, 0);
  assert.equal(refunded, 7600, 'WeChat refunded the same total');
  assert.equal((await gw.post('/admin/orders/PGnope/refund', {})).status, 404);
});

test('a refund of an unpaid order is refused', async () => {
  const user = await login();
  const o = (await order(user, [{ product_id: 1, qty: 1 }])).json;
  const r = await gw.post(`/admin/orders/${o.order_no}/refund`, {});
  assert.equal(r.status, 409);
  assert.equal(r.json.error, 'not_refundable');
});

// ---- reload ----

test('a script reload in the middle of a purchase: the purchase completes', async () => {
  const user = await login();
  const o = (await order(user, [{ product_id: 1, qty: 1 }])).json;
  const params = await pay(user, o.order_no);
  const r = await gw.reload();
  assert.equal(r.status, 200, r.body);
  await userPays(user, params);
  await eventually(async () => (await get(user, o.order_no)).json.status === 'PAID', 5000);
  await eventually(async () => (await gw.get(`/test/fulfillments/${o.order_no}`)).json.status === 'DONE');
});

test('login errors map to the API: a used or unknown code is 400 invalid_code', async () => {
  const code = (await sandbox.post('/sandbox/login-code', { openid: 'oUser1' })).json.code;
  assert.equal((await gw.post('/api/login', { code })).status, 200);
  const again = await gw.post('/api/login', { code });
  assert.equal(again.status, 400);
  assert.equal(again.json.error, 'invalid_code');
  assert.equal((await gw.post('/api/login', { code: 'not a code!' })).status, 400);
  assert.equal((await gw.post('/api/login', {})).status, 400);
});
});

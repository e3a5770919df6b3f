// examples/miniprogram/paygate.js, the code a merchant pastes into a mini program, run with a
// stubbed `wx` (login, request, requestPayment) against a real gateway and the sandbox.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { createRequire } from 'node:module';
import { ROOT, request } from './harness.mjs';
import { startWorld, APPID } from './shopenv.mjs';

const require = createRequire(import.meta.url);
const paygate = require(`${ROOT}/examples/miniprogram/paygate.js`);
let world, gw;

before(async () => {
  world = await startWorld();
  gw = await world.startShop({ order_ttl_s: 600, reconcile_after_s: 1 });
  assert.equal((await gw.put('/admin/products/1', { name: 'Tea', price: 3800, stock: 100 })).status, 200);
});
after(async () => { if (world) await world.stop(); });

/** The wx object of one WeChat user: login codes from the sandbox, real HTTP, payment played in the sandbox. */
function fakeWx(openid, { payResult = 'SUCCESS' } = {}) {
  const calls = [];
  const wrap = (name, fn) => (opts) => {
    calls.push(name);
    fn(opts).then((r) => opts.success && opts.success(r), (e) => opts.fail && opts.fail(e));
  };
  return {
    calls,
    login: wrap('login', async () => ({ code: (await world.sandbox.post('/sandbox/login-code', { openid })).json.code })),
    request: wrap('request', async ({ url, method, data, header }) => {
      const u = new URL(url);
      const r = await request(Number(u.port), method, u.pathname + u.search, { body: data, headers: header });
      return { statusCode: r.status, data: r.json, header: r.headers };
    }),
    requestPayment: wrap('requestPayment', async (params) => {
      const prepay_id = params.package.replace('prepay_id=', '');
      const r = await world.sandbox.post('/sandbox/pay', { prepay_id, openid, result: payResult,
        pay_params: { ...params, appId: APPID } });   // the mini program's own appid, as WeChat knows it
      if (r.json.errMsg !== 'requestPayment:ok') throw { errMsg: r.json.errMsg };
      return r.json;
    }),
  };
}

test('buy() logs in, orders, pays through wx.requestPayment and returns the PAID order', async () => {
  const wx = fakeWx('oMiniProgramUser1');
  const shop = paygate.create({ baseUrl: `http://127.0.0.1:${gw.port}`, wxApi: wx, pollMs: 50 });
  assert.equal((await shop.products())[0].name, 'Tea');
  const order = await shop.buy([{ product_id: 1, qty: 2 }]);
  assert.equal(order.status, 'PAID');
  assert.equal(order.amount, 7600);
  assert.ok(order.transaction_id);
  assert.deepEqual(wx.calls.filter((c) => c !== 'request'), ['login', 'requestPayment']);
});

test('a payment the user cancels leaves the order unpaid and says so', async () => {
  const wx = fakeWx('oMiniProgramUser2', { payResult: 'CANCEL' });
  const shop = paygate.create({ baseUrl: `http://127.0.0.1:${gw.port}`, wxApi: wx, pollMs: 50 });
  const order = await shop.buy([{ product_id: 1, qty: 1 }]);
  assert.equal(order.cancelled, true);
  assert.equal(order.status, 'PAYING');
  const closed = await shop.cancel(order.order_no);
  assert.equal(closed.status, 'CLOSED');
});

test('API errors surface as exceptions with the error code', async () => {
  const wx = fakeWx('oMiniProgramUser3');
  const shop = paygate.create({ baseUrl: `http://127.0.0.1:${gw.port}`, wxApi: wx });
  await shop.login();
  await assert.rejects(shop.createOrder([{ product_id: 1, qty: 1000 }]), (e) => e.status === 400 && e.code === 'invalid_request');
  await assert.rejects(shop.getOrder('PG000000000000000000000000'), (e) => e.status === 404 && e.code === 'not_found');
});

test('quote() shows the price with a coupon first, and buy() with the same coupon is charged that', async () => {
  assert.equal((await gw.post('/admin/coupons', { code: 'MINI5', kind: 'amount', value: 500 })).status, 201);
  const wx = fakeWx('oMiniProgramUser4');
  const shop = paygate.create({ baseUrl: `http://127.0.0.1:${gw.port}`, wxApi: wx, pollMs: 50 });
  const price = await shop.quote([{ product_id: 1, qty: 1 }], { coupon: 'MINI5' });
  assert.equal(price.amount, 3300);
  assert.deepEqual(price.adjustments.map((a) => [a.code, a.amount]), [['coupon:MINI5', -500]]);
  const order = await shop.buy([{ product_id: 1, qty: 1 }], { coupon: 'MINI5' });
  assert.equal(order.status, 'PAID');
  assert.equal(order.amount, 3300);
  await assert.rejects(shop.quote([{ product_id: 1, qty: 1 }], { coupon: 'NOPE' }), (e) => e.status === 409 && e.code === 'coupon_invalid');
});

// APP pay through the standalone shop: an order of the "app" channel is placed at WeChat with the
// mobile app's appid (POST /v3/pay/transactions/app, no payer), /pay answers the OpenSDK's PayReq,
// the sandbox's app user pays it (its sign checked), and the notification is accepted only under
// the order's own appid. Real gateway, real sandbox, real HTTP.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import { readFileSync } from 'node:fs';
import { startWorld, APPID, APP_APPID, MCHID } from './shopenv.mjs';

let world, gw;

// payments.check on a made-up transaction for an order: what a notification or a query answer
// with this appid would get.
const CHECK_HOOK = `
local app = require "paygate"
local payments = require "shop.payments"
local orders = require "shop.orders"
app.post("/test/check/{no}", function(req)
  local b = app.read_json(req)
  local o = orders.load(req.params.no)
  local order, why = payments.check({ appid = b.appid, mchid = b.mchid, out_trade_no = o.order_no,
    trade_state = "SUCCESS", transaction_id = "4200000000000000000000000001",
    amount = { total = o.amount, currency = "CNY" } })
  return 200, { ok = order ~= nil, why = why }
end)
`;

before(async () => {
  world = await startWorld();
  gw = await world.startShop({ order_ttl_s: 600 }, {
    files: { 'check_hook.lua': CHECK_HOOK,
      'init.lua': readFileSync(new URL('../../scripts/init.lua', import.meta.url), 'utf8') +
        'require "test_hooks"\nrequire "check_hook"\n' },
  });
  assert.equal((await gw.put('/admin/products/1', { name: 'Gems', price: 600, stock: 100 })).status, 200);
});
after(async () => { if (world) await world.stop(); });

async function order(user, channel) {
  const r = await gw.post('/api/orders', { items: [{ product_id: 1, qty: 1 }], ...(channel ? { channel } : {}) },
    { headers: user.auth });
  assert.equal(r.status, 201, r.body);
  return r.json;
}

test('an "app" order pays through APP pay: PayReq from /pay, the app user pays, the order is PAID', async () => {
  const user = await world.login(gw);
  const o = await order(user, 'app');
  assert.equal(o.channel, 'app');
  const pay = await gw.post(`/api/orders/${o.order_no}/pay`, {}, { headers: user.auth });
  assert.equal(pay.status, 200, pay.body);
  const p = pay.json;
  assert.deepEqual(Object.keys(p).sort(), ['appid', 'noncestr', 'package', 'partnerid', 'prepayid', 'sign', 'timestamp']);
  assert.equal(p.appid, APP_APPID);
  assert.equal(p.partnerid, MCHID);
  assert.equal(p.package, 'Sign=WXPay');
  // the sign is the merchant key's RSA-SHA256 over appid, timestamp, noncestr, prepayid
  const cert = readFileSync(world.k('merchant_cert.pem'));
  const message = `${p.appid}\n${p.timestamp}\n${p.noncestr}\n${p.prepayid}\n`;
  assert.ok(crypto.verify('RSA-SHA256', Buffer.from(message), cert, Buffer.from(p.sign, 'base64')));
  const placed = await world.sandbox.get(`/sandbox/orders/${o.order_no}`);
  assert.equal(placed.json.appid, APP_APPID);
  assert.equal(placed.json.openid, '', 'an APP prepay names no payer');

  const paid = await world.sandbox.post('/sandbox/app-pay', { pay_req: p, openid: 'oAppUser000000000000000000001' });
  assert.equal(paid.status, 200, paid.body);
  assert.equal(paid.json.errCode, 0);
  let status;
  for (let i = 0; i < 100 && status !== 'PAID'; i++) {
    status = (await gw.get(`/api/orders/${o.order_no}`, { headers: user.auth })).json.status;
    if (status !== 'PAID') await new Promise((r) => setTimeout(r, 50));
  }
  assert.equal(status, 'PAID');
  const tx = await world.sandbox.get(`/sandbox/orders/${o.order_no}`);
  assert.equal(tx.json.trade_state, 'SUCCESS');
});

test('the sandbox refuses a PayReq that is not the merchant\'s: a bad sign, another partnerid', async () => {
  const user = await world.login(gw);
  const o = await order(user, 'app');
  const p = (await gw.post(`/api/orders/${o.order_no}/pay`, {}, { headers: user.auth })).json;
  const badSign = await world.sandbox.post('/sandbox/app-pay', { pay_req: { ...p, timestamp: String(Number(p.timestamp) + 1) } });
  assert.equal(badSign.status, 409, badSign.body);
  const otherMch = await world.sandbox.post('/sandbox/app-pay', { pay_req: { ...p, partnerid: '1900000000' } });
  assert.equal(otherMch.status, 409, otherMch.body);
  assert.equal((await world.sandbox.get(`/sandbox/orders/${o.order_no}`)).json.trade_state, 'NOTPAY');
});

test('a mini-program order (no channel) still pays through JSAPI with the mini program\'s appid', async () => {
  const user = await world.login(gw);
  const o = await order(user);
  assert.equal(o.channel, 'miniprogram');
  const p = (await gw.post(`/api/orders/${o.order_no}/pay`, {}, { headers: user.auth })).json;
  assert.equal(p.appId, APPID);
  assert.match(p.package, /^prepay_id=/);
});

test('notifications and queries are checked against the order\'s own appid', async () => {
  const user = await world.login(gw);
  const app = await order(user, 'app');
  const mini = await order(user, 'miniprogram');
  const check = async (no, appid) => (await gw.post(`/test/check/${no}`, { appid, mchid: MCHID })).json;
  assert.deepEqual(await check(app.order_no, APP_APPID), { ok: true });
  assert.deepEqual(await check(app.order_no, APPID), { ok: false, why: 'appid_mismatch' });
  assert.deepEqual(await check(mini.order_no, APPID), { ok: true });
  assert.deepEqual(await check(mini.order_no, APP_APPID), { ok: false, why: 'appid_mismatch' });
});

test('an unknown channel is refused with 400 and reserves nothing', async () => {
  const user = await world.login(gw);
  const before = (await gw.get('/test/products/1')).json;
  const r = await gw.post('/api/orders', { items: [{ product_id: 1, qty: 1 }], channel: 'h5' }, { headers: user.auth });
  assert.equal(r.status, 400, r.body);
  assert.equal(r.json.error, 'invalid_request');
  assert.deepEqual((await gw.get('/test/products/1')).json, before);
});

// The WeChat Pay merchant client (engine/wxclient.c + lualib/wechatpay.lua), end to end:
// a real gateway runs scripts that call `require "wechatpay"` against an independent fake
// WeChat Pay (tests/e2e/fakewechat.mjs, node:crypto + openssl CLI only).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { copyFileSync, chmodSync, writeFileSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import crypto from 'node:crypto';
import { startGateway, eventually, ROOT } from './harness.mjs';
import {
  makeMaterials, startFakeWechat, buildNotification, signHeaders, MCHID, APPID, PROBE,
} from './fakewechat.mjs';

const NOTIFY = 'https://shop.example/wechat/notify/pay';
const REFUND_NOTIFY = 'https://shop.example/wechat/notify/refund';
const OPENID = 'oUpF8uMuAJO_M2pxb1Q9zNjWeS6o';

let m, fake, gw;
const logs = [];            // logs of every gateway started here (checked for secrets at the end)
const metricsTexts = [];

const scripts = {
  'init.lua': `
local app = require "paygate"
local wechatpay = require "wechatpay"

-- Call any client function with JSON arguments; answer what the script observed.
app.post("/t/call", function(req)
  local b = app.read_json(req)
  local fn = wechatpay[b.fn]
  if type(fn) ~= "function" then app.fail(400, "no_such_fn", tostring(b.fn)) end
  local args = b.args or {}
  local res, why, msg = fn(table.unpack(args, 1, b.n or #args))
  return 200, { res = res, why = why, msg = msg }
end)

app.post("/t/refresh", function(req)
  local n, why, msg = wechatpay.refresh_certificates()
  return 200, { n = n, why = why, msg = msg, keys = wechatpay.settings().verifying_keys }
end)

app.get("/t/settings", function(req) return 200, wechatpay.settings() end)

app.post("/wechat/notify/peek", function(req)
  local seen = #req:body()
  local resource, env, msg = wechatpay.notification(req)
  if not resource then return 400, { reason = env, seen = seen } end
  return 200, { resource = resource, seen = seen }
end)

app.post("/wechat/notify/pay", function(req)
  local resource, env, msg = wechatpay.notification(req)
  if not resource then
    return 400, { code = "FAIL", message = "verification failed", reason = env, detail = msg }
  end
  return 200, { resource = resource, id = env.id, event_type = env.event_type }
end)
`,
};

function wxConfig(extra = {}) {
  return {
    mchid: MCHID, appid: APPID, merchant_serial: m.merchant.serial,
    private_key_file: m.merchant.keyFile, apiv3_key_file: m.apiv3File, app_secret_file: m.appSecretFile,
    platform_cert_files: [m.platA.certFile], base_url: fake.url, login_base_url: fake.url, sandbox: true,
    notify_url: NOTIFY, refund_notify_url: REFUND_NOTIFY, download_certificates: false, ...extra,
  };
}

async function gateway(wechatpay, extra = {}, dir = undefined) {
  return startGateway({ scripts, dir, config: { wechatpay, fetch: { timeout_ms: 500 }, ...extra } });
}

/** A gateway that must refuse to start; its directory is removed afterwards. */
async function failedStart(wechatpay) {
  const dir = mkdtempSync(join(tmpdir(), 'paygate-e2e-'));
  try { await gateway(wechatpay, {}, dir); } catch (e) { return e; } finally { rmSync(dir, { recursive: true, force: true }); }
  throw new Error('the gateway started');
}

async function stopGateway(g) {
  if (!g) return;
  logs.push(g.log);
  try { metricsTexts.push((await g.get('/metrics')).body); } catch {}
  await g.stop();
}

/** Call wechatpay[fn](...args) in the gateway; returns {res, why, msg, text} as the script saw them. */
async function call(g, fn, ...args) {
  const r = await g.post('/t/call', { fn, args, n: args.length });
  assert.equal(r.status, 200, `route /t/call ${fn} answered ${r.status}: ${r.body}`);
  return { ...r.json, text: r.body };
}

function notify(g, n) {
  return g.request('POST', '/wechat/notify/pay', { body: n.body, headers: n.headers });
}

async function metrics(g) {
  const text = (await g.get('/metrics')).body;
  const map = {};
  for (const l of text.split('\n')) {
    if (!l || l.startsWith('#')) continue;
    const i = l.lastIndexOf(' ');
    map[l.slice(0, i)] = Number(l.slice(i + 1));
  }
  return map;
}
const calls = (mt, result) => mt[`paygate_wechatpay_calls_total{result="${result}"}`] || 0;
const notes = (mt, result) => mt[`paygate_wechatpay_notifications_total{result="${result}"}`] || 0;

const txn = (over = {}) => ({
  mchid: MCHID, appid: APPID, out_trade_no: 'ORDER20261128001', transaction_id: '4200000000202611280000000001',
  trade_type: 'JSAPI', trade_state: 'SUCCESS', trade_state_desc: '支付成功', bank_type: 'OTHERS',
  attach: 'cart=7', success_time: '2026-11-28T16:00:05+08:00', payer: { openid: OPENID },
  amount: { total: 1200, payer_total: 1200, currency: 'CNY', payer_currency: 'CNY' }, ...over,
});

async function withFault(fault, fn) {
  fake.fault = fault;
  try { return await fn(); } finally { fake.fault = null; }
}

before(async () => {
  m = await makeMaterials();
  fake = await startFakeWechat(m);
  gw = await gateway(wxConfig());
});

after(async () => {
  await stopGateway(gw);
  await fake?.close();
  m?.cleanup();
});

// ---------------------------------------------------------------- 1. signed requests

test('jsapi_prepay sends exactly the documented fields, signed so WeChat Pay accepts it, and returns the prepay_id', async () => {
  const n0 = fake.requests.length;
  const r = await call(gw, 'jsapi_prepay', { out_trade_no: 'ORDER20261128001', description: '2 cups of tea', amount: 1200, openid: OPENID });
  assert.equal(r.why, undefined, r.msg);
  assert.equal(r.res.status, 200);
  assert.deepEqual(r.res.body, { prepay_id: 'wxORDER20261128001PREPAY' });
  assert.equal(r.res.raw, JSON.stringify({ prepay_id: 'wxORDER20261128001PREPAY' }));
  assert.match(r.res.request_id, /^REQ-[0-9A-Za-z]{12}$/);

  const sent = fake.requests.slice(n0);
  assert.equal(sent.length, 1);
  const q = sent[0];
  assert.equal(q.method, 'POST');
  assert.equal(q.url, '/v3/pay/transactions/jsapi');
  assert.equal(q.auth, null, 'the fake verified the merchant signature');
  assert.deepEqual(JSON.parse(q.body), {
    appid: APPID, mchid: MCHID, description: '2 cups of tea', out_trade_no: 'ORDER20261128001',
    notify_url: NOTIFY, amount: { total: 1200, currency: 'CNY' }, payer: { openid: OPENID },
  });
  assert.match(q.body, /"total":1200[,}]/, 'amount.total is a JSON integer');
  assert.match(q.headers.authorization,
    new RegExp(`^WECHATPAY2-SHA256-RSA2048 mchid="${MCHID}",nonce_str="[0-9A-Za-z]{32}",timestamp="\\d{10}",serial_no="${m.merchant.serial}",signature="[A-Za-z0-9+/]{342}=="$`));
  const ts = Number(q.headers.authorization.match(/timestamp="(\d+)"/)[1]);
  assert.ok(Math.abs(ts - Date.now() / 1000) < 5, 'timestamp is now, in seconds');
  assert.equal(q.headers['content-type'], 'application/json');
  assert.equal(q.headers.accept, 'application/json');
  assert.ok(q.headers['user-agent'] && q.headers['user-agent'].length > 0);
  assert.equal(q.headers['wechatpay-serial'], undefined, 'certificate mode sends no Wechatpay-Serial');
});

test('jsapi_prepay sends time_expire, attach and an overriding notify_url when given', async () => {
  const n0 = fake.requests.length;
  const r = await call(gw, 'jsapi_prepay', {
    out_trade_no: 'A_b-c|d*e1', description: '两杯茶', amount: 1, openid: OPENID,
    time_expire: '2026-11-28T16:00:00+08:00', attach: 'cart=7', notify_url: 'https://shop.example/other',
  });
  assert.equal(r.res.status, 200, r.msg);
  const q = fake.requests[n0];
  assert.equal(q.auth, null);
  assert.deepEqual(JSON.parse(q.body), {
    appid: APPID, mchid: MCHID, description: '两杯茶', out_trade_no: 'A_b-c|d*e1',
    time_expire: '2026-11-28T16:00:00+08:00', attach: 'cart=7', notify_url: 'https://shop.example/other',
    amount: { total: 1, currency: 'CNY' }, payer: { openid: OPENID },
  });
});

test('query is a signed GET whose signed URL includes ?mchid= and an escaped out_trade_no', async () => {
  const n0 = fake.requests.length;
  const r = await call(gw, 'query', 'ORDER|2026-11*28');
  assert.equal(r.why, undefined, r.msg);
  assert.equal(r.res.status, 200);
  assert.equal(r.res.body.out_trade_no, 'ORDER|2026-11*28');
  assert.equal(r.res.body.trade_state, 'SUCCESS');
  const q = fake.requests[n0];
  assert.equal(fake.requests.length, n0 + 1);
  assert.equal(q.method, 'GET');
  assert.equal(q.url, `/v3/pay/transactions/out-trade-no/ORDER%7C2026-11*28?mchid=${MCHID}`);
  assert.equal(q.auth, null, 'signature covers the path and query exactly as sent');
  assert.equal(q.body, '');
  assert.equal(q.headers['content-type'], undefined, 'no Content-Type without a body');
  assert.equal(q.headers.accept, 'application/json');
});

test('query with a dot-segment out_trade_no ("..", ".") cannot move the request off its API path', async () => {
  for (const no of ['..', '.']) {
    const n0 = fake.requests.length;
    const r = await call(gw, 'query', no);
    const sent = fake.requests.slice(n0);
    if (r.why === 'invalid') { assert.equal(sent.length, 0); continue; }
    assert.equal(sent.length, 1);
    assert.ok(sent[0].url.startsWith('/v3/pay/transactions/out-trade-no/'),
      `query(${JSON.stringify(no)}) was sent to ${sent[0].url} (signed for a different URL: ${sent[0].auth})`);
    assert.equal(sent[0].auth, null);
  }
});

test('query_by_id is a signed GET on /id/{transaction_id}?mchid=', async () => {
  const n0 = fake.requests.length;
  const r = await call(gw, 'query_by_id', '4200000000202611280000000001');
  assert.equal(r.res.status, 200, r.msg);
  assert.equal(r.res.body.transaction_id, '4200000000202611280000000001');
  assert.equal(fake.requests[n0].url, `/v3/pay/transactions/id/4200000000202611280000000001?mchid=${MCHID}`);
  assert.equal(fake.requests[n0].auth, null);
});

test('close posts {"mchid"} and accepts a 204 whose signature covers an empty body line', async () => {
  const n0 = fake.requests.length;
  const r = await call(gw, 'close', 'ORDER20261128001');
  assert.equal(r.why, undefined, r.msg);
  assert.equal(r.res.status, 204);
  assert.equal(r.res.raw, '');
  assert.equal(r.res.body, undefined);
  const q = fake.requests[n0];
  assert.equal(q.method, 'POST');
  assert.equal(q.url, '/v3/pay/transactions/out-trade-no/ORDER20261128001/close');
  assert.deepEqual(JSON.parse(q.body), { mchid: MCHID });
  assert.equal(q.auth, null);
  assert.equal(q.headers['content-type'], 'application/json');
});

test('a 204 signed over anything but the empty body is refused as bad_signature', async () => {
  const r = await withFault({ kind: 'sign_other_body', body: '{}' }, () => call(gw, 'close', 'ORDER20261128001'));
  assert.equal(r.res, undefined);
  assert.equal(r.why, 'bad_signature');
});

test('refund posts the documented fields with the refund notify_url and returns the refund', async () => {
  const n0 = fake.requests.length;
  const r = await call(gw, 'refund', { out_trade_no: 'ORDER20261128001', out_refund_no: 'R20261128001|x@y', refund: 100, total: 1200, reason: '缺货' });
  assert.equal(r.why, undefined, r.msg);
  assert.equal(r.res.status, 200);
  assert.equal(r.res.body.status, 'PROCESSING');
  assert.equal(r.res.body.out_refund_no, 'R20261128001|x@y');
  const q = fake.requests[n0];
  assert.equal(q.url, '/v3/refund/domestic/refunds');
  assert.equal(q.auth, null);
  assert.deepEqual(JSON.parse(q.body), {
    out_trade_no: 'ORDER20261128001', out_refund_no: 'R20261128001|x@y', reason: '缺货', notify_url: REFUND_NOTIFY,
    amount: { refund: 100, total: 1200, currency: 'CNY' },
  });
});

test('query_refund is a signed GET on /v3/refund/domestic/refunds/{out_refund_no}', async () => {
  const n0 = fake.requests.length;
  const r = await call(gw, 'query_refund', 'R20261128001');
  assert.equal(r.res.status, 200, r.msg);
  assert.equal(r.res.body.status, 'SUCCESS');
  assert.equal(fake.requests[n0].url, '/v3/refund/domestic/refunds/R20261128001');
  assert.equal(fake.requests[n0].method, 'GET');
  assert.equal(fake.requests[n0].auth, null);
});

test('request() signs any path with its raw query string', async () => {
  const n0 = fake.requests.length;
  const path = '/v3/bill/tradebill?bill_date=2026-11-27&bill_type=ALL';
  const r = await call(gw, 'request', 'GET', path);
  assert.equal(r.res.status, 200, r.msg);
  assert.deepEqual(r.res.body, { echo: path });
  assert.equal(fake.requests[n0].url, path);
  assert.equal(fake.requests[n0].auth, null);
});

test('concurrent calls are each signed with their own nonce and all verify', async () => {
  const n0 = fake.requests.length;
  const rs = await Promise.all(Array.from({ length: 20 }, (_, i) =>
    call(gw, 'jsapi_prepay', { ...good, out_trade_no: `PAR${String(i).padStart(6, '0')}` })));
  rs.forEach((r, i) => assert.deepEqual(r.res?.body, { prepay_id: `wxPAR${String(i).padStart(6, '0')}PREPAY` }, r.msg));
  const sent = fake.requests.slice(n0);
  assert.equal(sent.length, 20);
  assert.ok(sent.every((q) => q.auth === null));
  assert.equal(new Set(sent.map((q) => q.headers.authorization.match(/nonce_str="([^"]+)"/)[1])).size, 20);
});

// ---------------------------------------------------------------- 2. response faults

const faults = [
  [{ kind: 'tamper', from: '"trade_state":"SUCCESS"', to: '"trade_state":"REFUND"' }, 'bad_signature', 'a body altered after signing'],
  [{ kind: 'probe' }, 'signature_probe', 'a WECHATPAY/SIGNTEST/ probe'],
  [{ kind: 'stale', skew: -301 }, 'stale_timestamp', 'a timestamp 301 s in the past'],
  [{ kind: 'stale', skew: 301 }, 'stale_timestamp', 'a timestamp 301 s in the future'],
  [{ kind: 'unknown_serial' }, 'unknown_serial', 'a serial the client does not know'],
  [{ kind: 'missing', header: 'Wechatpay-Timestamp' }, 'missing_header', 'no Wechatpay-Timestamp'],
  [{ kind: 'missing', header: 'Wechatpay-Nonce' }, 'missing_header', 'no Wechatpay-Nonce'],
  [{ kind: 'missing', header: 'Wechatpay-Signature' }, 'missing_header', 'no Wechatpay-Signature'],
  [{ kind: 'missing', header: 'Wechatpay-Serial' }, 'missing_header', 'no Wechatpay-Serial'],
  [{ kind: 'sigtype' }, 'bad_signature_type', 'Wechatpay-Signature-Type WECHATPAY2-SM2-WITH-SM3'],
  [{ kind: 'bad_header' }, 'bad_header', 'a non-numeric Wechatpay-Timestamp'],
];

for (const [fault, reason, what] of faults) {
  test(`a 2xx answer with ${what} is refused as ${reason} and its body never reaches the script`, async () => {
    const r = await withFault(fault, () => call(gw, 'query', 'ORDER20261128001'));
    assert.equal(r.res, undefined);
    assert.equal(r.why, reason);
    assert.equal(typeof r.msg, 'string');
    assert.ok(!r.text.includes('trade_state') && !r.text.includes('4200000000202611280000000001'), r.text);
  });
}

test('a 2xx answer signed by another key under a known serial is refused as bad_signature', async () => {
  fake.signer = { ...m.platC, serial: m.platA.serial };
  try {
    const r = await call(gw, 'query', 'ORDER20261128001');
    assert.equal(r.res, undefined);
    assert.equal(r.why, 'bad_signature');
  } finally { fake.signer = m.platA; }
});

test('a timestamp 290 s off is still accepted (the window is 300 s)', async () => {
  for (const skew of [-290, 290]) {
    const r = await withFault({ kind: 'stale', skew }, () => call(gw, 'query', 'ORDER20261128001'));
    assert.equal(r.why, undefined, `skew ${skew}: ${r.msg}`);
    assert.equal(r.res.status, 200);
  }
});

test('unsigned 4xx/5xx answers pass through with status, code and message', async () => {
  const cases = [
    ['http500', 500, 'SYSTEM_ERROR', '系统错误'],
    ['http400', 400, 'PARAM_ERROR', '参数错误: description 过长'],
    ['http404', 404, 'ORDER_NOT_EXIST', '订单不存在'],
  ];
  for (const [kind, status, code, message] of cases) {
    const r = await withFault({ kind }, () => call(gw, 'query', 'ORDER20261128001'));
    assert.equal(r.why, undefined, `${kind}: ${r.msg}`);
    assert.equal(r.res.status, status);
    assert.equal(r.res.code, code);
    assert.equal(r.res.message, message);
    assert.equal(r.res.body.code, code);
    assert.match(r.res.request_id, /^REQ-/);
  }
});

test('a 401 SIGN_ERROR (WeChat Pay rejecting our signature) passes through as status 401', async () => {
  fake.expectSerial = 'AAAA' + m.merchant.serial.slice(4);
  try {
    const r = await call(gw, 'query', 'ORDER20261128001');
    assert.equal(r.why, undefined);
    assert.equal(r.res.status, 401);
    assert.equal(r.res.code, 'SIGN_ERROR');
    assert.equal(r.res.message, '错误的签名，验签失败');
  } finally { fake.expectSerial = null; }
});

test('calls are counted by result: ok, unverified, refused, upstream_error, timeout', async () => {
  const a = await metrics(gw);
  await call(gw, 'query', 'ORDER20261128001');
  await withFault({ kind: 'probe' }, () => call(gw, 'query', 'ORDER20261128001'));
  await withFault({ kind: 'http400' }, () => call(gw, 'query', 'ORDER20261128001'));
  await withFault({ kind: 'http500' }, () => call(gw, 'query', 'ORDER20261128001'));
  await withFault({ kind: 'delay', ms: 1200 }, () => call(gw, 'query', 'ORDER20261128001'));
  const b = await metrics(gw);
  for (const result of ['ok', 'unverified', 'refused', 'upstream_error', 'timeout'])
    assert.equal(calls(b, result) - calls(a, result), 1, result);
});

// ---------------------------------------------------------------- 3. invalid fields

const good = { out_trade_no: 'ORDER20261128001', description: '2 cups', amount: 1200, openid: OPENID };
const invalidPrepays = [
  ['out_trade_no of 5 characters', { out_trade_no: 'ABCDE' }],
  ['out_trade_no of 33 characters', { out_trade_no: 'A'.repeat(33) }],
  ['out_trade_no with a space', { out_trade_no: 'ORDER 0001' }],
  ['out_trade_no with a dot', { out_trade_no: 'ORDER.0001' }],
  ['out_trade_no with #', { out_trade_no: 'ORDER#0001' }],
  ['out_trade_no with non-ASCII', { out_trade_no: '订单000001' }],
  ['a missing out_trade_no', { out_trade_no: undefined }],
  ['an empty description', { description: '' }],
  ['a description of 128 bytes', { description: 'x'.repeat(128) }],
  ['a description of 43 CJK characters (129 bytes)', { description: '茶'.repeat(43) }],
  ['a missing description', { description: undefined }],
  ['amount 0', { amount: 0 }],
  ['amount -1', { amount: -1 }],
  ['amount 12.5', { amount: 12.5 }],
  ['a missing amount', { amount: undefined }],
  ['a missing openid', { openid: undefined }],
  ['an empty openid', { openid: '' }],
];

for (const [what, over] of invalidPrepays) {
  test(`jsapi_prepay with ${what} is "invalid" and sends nothing`, async () => {
    const n0 = fake.requests.length;
    const r = await call(gw, 'jsapi_prepay', { ...good, ...over });
    assert.equal(r.res, undefined);
    assert.equal(r.why, 'invalid');
    assert.equal(typeof r.msg, 'string');
    assert.equal(fake.requests.length, n0, 'no request reached WeChat Pay');
  });
}

test('jsapi_prepay with the amount as a string ("1200") is "invalid" and sends nothing', async () => {
  const n0 = fake.requests.length;
  const r = await call(gw, 'jsapi_prepay', { ...good, amount: '1200' });
  const sent = fake.requests.slice(n0).map((q) => q.body);
  assert.equal(r.why, 'invalid', `got ${JSON.stringify(r.res?.status)}; sent ${sent.join(' ')}`);
  assert.equal(fake.requests.length, n0);
});

test('jsapi_prepay with out_trade_no as a number is "invalid" and sends nothing', async () => {
  const n0 = fake.requests.length;
  const r = await call(gw, 'jsapi_prepay', { ...good, out_trade_no: 20261128001 });
  const sent = fake.requests.slice(n0).map((q) => q.body);
  assert.equal(r.why, 'invalid', `got ${JSON.stringify(r.res?.status)}; sent ${sent.join(' ')}`);
  assert.equal(fake.requests.length, n0);
});

test('the limits themselves are valid: 6 and 32 characters, 127-byte description, 42 CJK characters, amount 1', async () => {
  for (const over of [{ out_trade_no: 'ABCDEF' }, { out_trade_no: 'A'.repeat(32) }, { out_trade_no: '_-|*09azAZ' },
    { description: 'x'.repeat(127) }, { description: '茶'.repeat(42) }, { amount: 1 }]) {
    const n0 = fake.requests.length;
    const r = await call(gw, 'jsapi_prepay', { ...good, ...over });
    assert.equal(r.why, undefined, `${JSON.stringify(over)}: ${r.msg}`);
    assert.equal(r.res.status, 200);
    assert.equal(fake.requests.length, n0 + 1);
    assert.equal(fake.requests[n0].auth, null);
  }
});

test('refund with a bad out_refund_no or amounts is "invalid" and sends nothing', async () => {
  const base = { out_trade_no: 'ORDER20261128001', out_refund_no: 'R0001', refund: 100, total: 1200 };
  for (const over of [{ out_refund_no: '' }, { out_refund_no: 'R 1' }, { out_refund_no: 'R'.repeat(65) }, { out_refund_no: undefined },
    { refund: 0 }, { refund: 1201 }, { refund: 1.5 }, { total: undefined }, { refund: -1 }]) {
    const n0 = fake.requests.length;
    const r = await call(gw, 'refund', { ...base, ...over });
    assert.equal(r.why, 'invalid', JSON.stringify(over));
    assert.equal(fake.requests.length, n0, JSON.stringify(over));
  }
});

// ---------------------------------------------------------------- 4. timeouts

test('an answer slower than fetch.timeout_ms is nil, "timeout" (outcome unknown)', async () => {
  const t0 = Date.now();
  const r = await withFault({ kind: 'delay', ms: 1500 }, () => call(gw, 'query', 'ORDER20261128001'));
  const took = Date.now() - t0;
  assert.equal(r.res, undefined);
  assert.equal(r.why, 'timeout');
  assert.match(r.msg, /^timeout: /);
  assert.ok(took >= 450 && took < 1400, `took ${took} ms`);
});

test('a prepay whose answer is too slow is nil, "timeout" too', async () => {
  const r = await withFault({ kind: 'delay', ms: 1500 }, () => call(gw, 'jsapi_prepay', good));
  assert.equal(r.why, 'timeout');
  assert.equal(r.res, undefined);
});

// ---------------------------------------------------------------- 5. notifications

test('a valid notification is verified, decrypted and handed over with its exact plaintext', async () => {
  const a = await metrics(gw);
  const n = buildNotification(m, txn(), { id: '7f8fcdb2-573a-547a-901e-4c34f9761293' });
  const r = await notify(gw, n);
  assert.equal(r.status, 200, r.body);
  assert.deepEqual(r.json, { resource: txn(), id: '7f8fcdb2-573a-547a-901e-4c34f9761293', event_type: 'TRANSACTION.SUCCESS' });
  const b = await metrics(gw);
  assert.equal(notes(b, 'verified') - notes(a, 'verified'), 1);
});

test('a notification whose keys are in another order verifies when the signed bytes are sent as they are', async () => {
  const plain = txn();
  const n0 = buildNotification(m, plain);
  const sorted = JSON.stringify(Object.fromEntries(Object.entries(n0.envelope).sort()));
  const n = { body: sorted, headers: signHeaders(sorted, m.platA) };
  const r = await notify(gw, n);
  assert.equal(r.status, 200, r.body);
  assert.deepEqual(r.json.resource, plain);
});

test('reading the body before verifying does not disturb verification', async () => {
  const n = buildNotification(m, txn());
  const r = await gw.request('POST', '/wechat/notify/peek', { body: n.body, headers: n.headers });
  assert.equal(r.status, 200, r.body);
  assert.equal(r.json.seen, Buffer.byteLength(n.body));
  assert.deepEqual(r.json.resource, txn());
});

test('a re-serialised notification body (whitespace changed) is refused as bad_signature', async () => {
  const n = buildNotification(m, txn());
  const r = await notify(gw, { body: JSON.stringify(JSON.parse(n.body), null, 2), headers: n.headers });
  assert.equal(r.status, 400);
  assert.equal(r.json.reason, 'bad_signature');
  assert.equal(r.json.resource, undefined);
});

for (const header of ['Wechatpay-Timestamp', 'Wechatpay-Nonce', 'Wechatpay-Signature', 'Wechatpay-Serial']) {
  test(`a notification without ${header} is refused as missing_header`, async () => {
    const n = buildNotification(m, txn());
    delete n.headers[header];
    const r = await notify(gw, n);
    assert.equal(r.status, 400);
    assert.equal(r.json.reason, 'missing_header');
  });
}

const refusedNotifications = [
  ['a signature probe', () => { const n = buildNotification(m, txn()); n.headers['Wechatpay-Signature'] = PROBE + n.headers['Wechatpay-Signature']; return n; }, 'signature_probe'],
  ['a replay 6 minutes old', () => buildNotification(m, txn(), { ts: Math.floor(Date.now() / 1000) - 360 }), 'stale_timestamp'],
  ['a timestamp 6 minutes ahead', () => buildNotification(m, txn(), { ts: Math.floor(Date.now() / 1000) + 360 }), 'stale_timestamp'],
  ['an unknown serial (signed by a key the gateway never saw)', () => buildNotification(m, txn(), { signer: m.platC }), 'unknown_serial'],
  ['a signature by another key under the known serial', () => buildNotification(m, txn(), { signer: { ...m.platC, serial: m.platA.serial } }), 'bad_signature'],
  ['an unsupported Wechatpay-Signature-Type', () => { const n = buildNotification(m, txn()); n.headers['Wechatpay-Signature-Type'] = 'WECHATPAY2-SM2-WITH-SM3'; return n; }, 'bad_signature_type'],
  ['a flipped ciphertext byte (re-signed)', () => buildNotification(m, txn(), { mutateCiphertext: (b) => { b[3] ^= 0x01; } }), 'bad_tag'],
  ['a flipped tag byte (re-signed)', () => buildNotification(m, txn(), { mutateCiphertext: (b) => { b[b.length - 1] ^= 0x80; } }), 'bad_tag'],
  ['associated_data "refund" for data sealed with "transaction"', () => buildNotification(m, txn(), { envelopeAad: 'refund' }), 'bad_tag'],
  ['data sealed under another APIv3 key', () => buildNotification({ ...m, apiv3Key: 'Z'.repeat(32) }, txn()), 'bad_tag'],
  ['algorithm AEAD_SM4_GCM', () => buildNotification(m, txn(), { algorithm: 'AEAD_SM4_GCM' }), 'unsupported_algorithm'],
  ['a ciphertext that is not Base64', () => buildNotification(m, txn(), { envelope: { resource: { algorithm: 'AEAD_AES_256_GCM', nonce: 'abcdefghijkl', associated_data: 'transaction', ciphertext: '!!not base64!!' } } }), 'bad_base64'],
  ['a resource without a nonce', () => buildNotification(m, txn(), { envelope: { resource: { algorithm: 'AEAD_AES_256_GCM', associated_data: 'transaction', ciphertext: 'AAAAAAAAAAAAAAAAAAAAAAAAAAAA' } } }), 'bad_input'],
  ['a signed envelope that is not JSON', () => buildNotification(m, txn(), { rawBody: 'id=EV-1&event_type=TRANSACTION.SUCCESS' }), 'bad_json'],
  ['a signed envelope without a resource object', () => buildNotification(m, txn(), { rawBody: '{"id":"EV-1","event_type":"TRANSACTION.SUCCESS","resource":"x"}' }), 'bad_json'],
  ['a decrypted resource that is not JSON', () => buildNotification(m, 'trade_state=SUCCESS'), 'bad_json'],
];

for (const [what, build, reason] of refusedNotifications) {
  test(`a notification with ${what} is refused as ${reason}`, async () => {
    const r = await notify(gw, build());
    assert.equal(r.status, 400, r.body);
    assert.equal(r.json.reason, reason, r.json.detail);
    assert.equal(r.json.resource, undefined);
    assert.ok(!r.body.includes('4200000000202611280000000001'), 'nothing of the plaintext leaks');
  });
}

test('notifications are counted: verified, and refused by reason', async () => {
  const a = await metrics(gw);
  await notify(gw, buildNotification(m, txn()));
  await notify(gw, buildNotification(m, txn()));
  await notify(gw, buildNotification(m, txn(), { signer: m.platC }));
  await notify(gw, buildNotification(m, txn(), { ts: Math.floor(Date.now() / 1000) - 360 }));
  await notify(gw, buildNotification(m, txn(), { envelopeAad: 'refund' }));
  const b = await metrics(gw);
  assert.equal(notes(b, 'verified') - notes(a, 'verified'), 2);
  assert.equal(notes(b, 'unknown_serial') - notes(a, 'unknown_serial'), 1);
  assert.equal(notes(b, 'stale_timestamp') - notes(a, 'stale_timestamp'), 1);
  assert.equal(notes(b, 'bad_tag') - notes(a, 'bad_tag'), 1);
});

test('a refusal is logged with its reason', async () => {
  await notify(gw, buildNotification(m, txn(), { signer: m.platC }));
  assert.match(gw.log, /wechatpay notification refused: unknown_serial/);
});

// ---------------------------------------------------------------- 6. public-key mode

test('public-key mode: requests carry Wechatpay-Serial: PUB_KEY_ID_…, answers and notifications signed with the public key verify, certificate-signed ones do not', async () => {
  const pk = await gateway(wxConfig({ platform_cert_files: undefined, public_key_file: m.pub.pubFile, public_key_id: m.pub.serial }));
  fake.signer = m.pub;
  try {
    const s = await pk.get('/t/settings');
    assert.equal(s.json.mode, 'public_key');
    assert.equal(s.json.verifying_keys, 1);

    const n0 = fake.requests.length;
    const r = await call(pk, 'jsapi_prepay', good);
    assert.equal(r.why, undefined, r.msg);
    assert.equal(r.res.status, 200);
    const q = fake.requests[n0];
    assert.equal(q.auth, null);
    assert.equal(q.headers['wechatpay-serial'], m.pub.serial);
    assert.match(q.headers.authorization, new RegExp(`serial_no="${m.merchant.serial}"`), 'serial_no stays the merchant certificate serial');

    const g = await call(pk, 'query', 'ORDER20261128001');
    assert.equal(fake.last().headers['wechatpay-serial'], m.pub.serial);
    assert.equal(g.res.status, 200, g.msg);

    fake.signer = m.platA;
    const c = await call(pk, 'query', 'ORDER20261128001');
    assert.equal(c.why, 'unknown_serial', 'a certificate-signed answer is refused when only the public key is configured');

    const ok = await notify(pk, buildNotification(m, txn(), { signer: m.pub }));
    assert.equal(ok.status, 200, ok.body);
    assert.deepEqual(ok.json.resource, txn());
    const bad = await notify(pk, buildNotification(m, txn(), { signer: m.platA }));
    assert.equal(bad.status, 400);
    assert.equal(bad.json.reason, 'unknown_serial');
    const forged = await notify(pk, buildNotification(m, txn(), { signer: { ...m.platC, serial: m.pub.serial } }));
    assert.equal(forged.json.reason, 'bad_signature');
  } finally {
    fake.signer = m.platA;
    await stopGateway(pk);
  }
});

test('public key plus certificate configured (migration): notifications signed either way verify, others are unknown_serial', async () => {
  const both = await gateway(wxConfig({ public_key_file: m.pub.pubFile, public_key_id: m.pub.serial }));
  try {
    assert.equal((await both.get('/t/settings')).json.verifying_keys, 2);
    const viaPub = await notify(both, buildNotification(m, txn(), { signer: m.pub }));
    assert.equal(viaPub.status, 200, viaPub.body);
    assert.deepEqual(viaPub.json.resource, txn());
    const viaCert = await notify(both, buildNotification(m, txn({ out_trade_no: 'ORDER20261128002' }), { signer: m.platA }));
    assert.equal(viaCert.status, 200, viaCert.body);
    assert.equal(viaCert.json.resource.out_trade_no, 'ORDER20261128002');
    const other = await notify(both, buildNotification(m, txn(), { signer: m.platB }));
    assert.equal(other.json.reason, 'unknown_serial');
  } finally { await stopGateway(both); }
});

// ---------------------------------------------------------------- 7. pay_params

test('pay_params: paySign verifies with the merchant public key over appId, timeStamp, nonceStr, package', async () => {
  const r = await call(gw, 'pay_params', 'wx201410272009395522657a690389285100');
  const p = r.res;
  assert.deepEqual(Object.keys(p).sort(), ['appId', 'nonceStr', 'package', 'paySign', 'signType', 'timeStamp']);
  assert.equal(p.appId, APPID);
  assert.equal(p.package, 'prepay_id=wx201410272009395522657a690389285100');
  assert.equal(p.signType, 'RSA');
  assert.match(p.timeStamp, /^\d{10}$/);
  assert.ok(Math.abs(Number(p.timeStamp) - Date.now() / 1000) < 5);
  assert.match(p.nonceStr, /^[0-9A-Za-z]{1,32}$/);
  const msg = `${p.appId}\n${p.timeStamp}\n${p.nonceStr}\n${p.package}\n`;
  assert.ok(crypto.verify('sha256', Buffer.from(msg), m.merchant.publicKey, Buffer.from(p.paySign, 'base64')), 'paySign verifies');
  const again = (await call(gw, 'pay_params', 'wx201410272009395522657a690389285100')).res;
  assert.notEqual(again.nonceStr, p.nonceStr, 'a fresh nonce each time');
});

// ---------------------------------------------------------------- 8. login

test('login returns the openid and never the session_key; the secret is sent to jscode2session', async () => {
  const n0 = fake.requests.length;
  const r = await call(gw, 'login', 'okCode_0a-Z');
  assert.equal(r.why, undefined, r.msg);
  assert.deepEqual(r.res, { openid: 'oUpF8uMuAJO_M2pxb1Q9zNjWeS6o' });
  assert.ok(!r.text.includes('session_key') && !r.text.includes('SESSIONKEY'), r.text);
  const q = fake.requests[n0];
  assert.equal(q.method, 'GET');
  const u = new URL(q.url, 'http://x');
  assert.equal(u.pathname, '/sns/jscode2session');
  assert.deepEqual(Object.fromEntries(u.searchParams), { appid: APPID, secret: m.appSecret, js_code: 'okCode_0a-Z', grant_type: 'authorization_code' });
});

test('login returns the unionid when WeChat gives one, and accepts errcode 0', async () => {
  const r = await call(gw, 'login', 'union123');
  assert.deepEqual(r.res, { openid: 'oUpF8uMuAJO_M2pxb1Q9zNjWeS6o', unionid: 'o6_bmasdasdsad6_2sgVt7hMZOPfL' });
  assert.ok(!r.text.includes('session_key') && !r.text.includes('SESSIONKEY'));
  const z = await call(gw, 'login', 'zero1');
  assert.deepEqual(z.res, { openid: 'oUpF8uMuAJO_M2pxb1Q9zNjWeS6o' });
});

test('login maps errcodes: 40029 invalid_code, 45011 rate_limited, 40226 blocked, -1 busy, others upstream_error', async () => {
  for (const [code, reason] of [['e40029', 'invalid_code'], ['e45011', 'rate_limited'], ['e40226', 'blocked'],
    ['e-1', 'busy'], ['e40013', 'upstream_error'], ['e41008', 'upstream_error'], ['notjson', 'upstream_error']]) {
    const r = await call(gw, 'login', code);
    assert.equal(r.res, undefined, code);
    assert.equal(r.why, reason, code);
    assert.ok(!r.text.includes('session_key'));
  }
});

test('a login code that is not 1–128 of [A-Za-z0-9_-] is invalid_code without a request', async () => {
  const n0 = fake.requests.length;
  for (const code of ['', 'has space', 'a'.repeat(129), 'x&secret=y', 'abc/../x', 'código', 'a%26b', 'a\nb']) {
    const r = await call(gw, 'login', code);
    assert.equal(r.why, 'invalid_code', JSON.stringify(code));
    assert.equal(r.res, undefined);
  }
  assert.equal(fake.requests.length, n0);
  const ok = await call(gw, 'login', 'a'.repeat(128));
  assert.equal(ok.why, undefined, '128 characters is the limit, inclusive');
});

test('a login whose answer is too slow is nil, "timeout"', async () => {
  const r = await call(gw, 'login', 'slow1');
  assert.equal(r.why, 'timeout');
  assert.equal(r.res, undefined);
});

test('the app secret never appears in the gateway log', async () => {
  await call(gw, 'login', 'okAgain');
  assert.ok(!gw.log.includes(m.appSecret));
});

// ---------------------------------------------------------------- 9. certificates

// The manual refresh_certificates() tests run with download_certificates = false so that the
// lualib's background download job cannot race them; the automatic download is specified below.
test('refresh_certificates: a download that its own certificates do not verify is refused and the old set stays in force', async () => {
  const cg = await gateway(wxConfig({ download_certificates: false }));
  try {
    const platAok = async () => (await notify(cg, buildNotification(m, txn(), { signer: m.platA }))).status;
    const platB = async () => (await notify(cg, buildNotification(m, txn(), { signer: m.platB }))).json.reason;
    assert.equal(await platAok(), 200);
    assert.equal(await platB(), 'unknown_serial');

    const bad = [
      [{ certs: [m.platB], signer: m.platC }, 'unknown_serial', 'signed by a certificate not in the download'],
      [{ certs: [m.platB], signer: m.platA }, 'unknown_serial', 'signed by the old certificate only'],
      [{ certs: [m.platB], signer: { ...m.platC, serial: m.platB.serial } }, 'bad_signature', 'signed by another key under the new serial'],
      [{ certs: [m.platB], signer: m.platB, signedBody: '{"data":[]}' }, 'bad_signature', 'signature over other bytes'],
      [{ certs: [m.platB], signer: m.platB, aad: 'transaction', envelopeAad: 'certificate' }, 'bad_tag', 'sealed with other associated data than it claims'],
      [{ certs: [m.platB], signer: m.platB, aad: 'certificate', envelopeAad: 'transaction' }, 'bad_tag', 'claiming other associated data than it was sealed with'],
      [{ certs: [], signer: m.platB }, 'bad_json', 'an empty list'],
      [{ certs: [m.platB], signer: m.platB, skew: -400 }, 'stale_timestamp', 'a replayed download 400 s old'],
      [{ certs: [m.platB], signer: m.platB, probe: true }, 'signature_probe', 'a signature probe'],
      [{ certs: [m.platB, { serial: 'ABCDEF', certPem: 'not a certificate' }], signer: m.platB }, 'bad_certificate', 'an entry that decrypts to no certificate'],
    ];
    for (const [download, reason, what] of bad) {
      fake.certDownload = download;
      const n0 = fake.requests.length;
      const r = await cg.post('/t/refresh', {});
      assert.equal(r.status, 200, `${what}: ${r.body}`);
      assert.equal(r.json.n, undefined, what);
      assert.equal(r.json.why, reason, what);
      assert.equal(r.json.keys, 1, what);
      assert.equal(fake.requests[n0].url, '/v3/certificates?algorithm_type=RSA');
      assert.equal(fake.requests[n0].auth, null, 'the download request is signed');
      assert.equal(await platAok(), 200, `${what}: the old certificate still verifies`);
      assert.equal(await platB(), 'unknown_serial', `${what}: the refused certificate is not trusted`);
    }
  } finally {
    fake.certDownload = null;
    await stopGateway(cg);
  }
});

test('refresh_certificates: a verified download replaces the trusted set', async () => {
  const cg = await gateway(wxConfig({ download_certificates: false }));
  try {
    fake.certDownload = { certs: [m.platB], signer: m.platB };
    const r = await cg.post('/t/refresh', {});
    assert.equal(r.status, 200, r.body);
    assert.equal(r.json.why, undefined, r.json.msg);
    assert.equal(r.json.n, 1);
    assert.equal(r.json.keys, 1);

    const viaB = await notify(cg, buildNotification(m, txn(), { signer: m.platB }));
    assert.equal(viaB.status, 200, viaB.body);
    assert.deepEqual(viaB.json.resource, txn());
    const viaC = await notify(cg, buildNotification(m, txn(), { signer: m.platC }));
    assert.equal(viaC.json.reason, 'unknown_serial', 'a certificate not in the download is unknown');
    const viaA = await notify(cg, buildNotification(m, txn(), { signer: m.platA }));
    assert.equal(viaA.json.reason, 'unknown_serial', 'the configured certificate was replaced');

    fake.signer = m.platB;
    const q = await call(cg, 'query', 'ORDER20261128001');
    assert.equal(q.res.status, 200, 'answers signed by the downloaded certificate verify');

    // rotation: both certificates in the download, signed by the old one
    fake.certDownload = { certs: [m.platB, m.platA], signer: m.platA };
    const two = await cg.post('/t/refresh', {});
    assert.equal(two.json.n, 2, two.json.msg);
    assert.equal(two.json.keys, 2);
    assert.equal((await notify(cg, buildNotification(m, txn(), { signer: m.platA }))).status, 200);
    assert.equal((await notify(cg, buildNotification(m, txn(), { signer: m.platB }))).status, 200);
  } finally {
    fake.certDownload = null;
    fake.signer = m.platA;
    await stopGateway(cg);
  }
});

test('refresh_certificates: a signed download that is not JSON is refused as bad_json (no script error)', async () => {
  const cg = await gateway(wxConfig({ download_certificates: false }));
  try {
    const seen = [];
    for (const raw of ['<html>gateway error</html>', '{"data":[1]}', '{"data":["x"]}', '{"data":{}}', '[]', '{"data":[{"encrypt_certificate":"x"}]}']) {
      fake.certDownload = { raw, signer: m.platA };
      const r = await cg.post('/t/refresh', {});
      seen.push(`${raw} -> ${r.status} ${r.status === 200 ? r.json.why : ''}`);
      assert.equal((await notify(cg, buildNotification(m, txn(), { signer: m.platA }))).status, 200, 'the old set stays');
    }
    assert.deepEqual(seen, seen.map((s) => s.replace(/-> .*/, '-> 200 bad_json')));
  } finally {
    fake.certDownload = null;
    await stopGateway(cg);
  }
});

test('refresh_certificates: a non-200 answer is refused and the old set stays', async () => {
  const cg = await gateway(wxConfig({ download_certificates: false }));
  try {
    fake.certDownload = { certs: [m.platB], signer: m.platB, status: 404 };
    const r = await cg.post('/t/refresh', {});
    assert.equal(r.json.n, undefined);
    assert.equal(typeof r.json.why, 'string');
    assert.equal(r.json.keys, 1);
    assert.equal((await notify(cg, buildNotification(m, txn(), { signer: m.platA }))).status, 200);
  } finally {
    fake.certDownload = null;
    await stopGateway(cg);
  }
});

test('with download_certificates the gateway downloads at start, and an unknown serial in a notification triggers a new download', async () => {
  fake.certDownload = { certs: [m.platB], signer: m.platB };
  const n0 = fake.requests.length;
  const ag = await gateway(wxConfig({ download_certificates: true }));
  try {
    assert.equal((await ag.get('/t/settings')).json.download_certificates, true);
    await eventually(async () => (await notify(ag, buildNotification(m, txn(), { signer: m.platB }))).status === 200, 5000, 100);
    fake.certDownload = { certs: [m.platB, m.platC], signer: m.platC };
    const first = await notify(ag, buildNotification(m, txn(), { signer: m.platC }));
    assert.equal(first.json.reason, 'unknown_serial');
    await eventually(async () => (await notify(ag, buildNotification(m, txn(), { signer: m.platC }))).status === 200, 5000, 100);
    const downloads = fake.requests.slice(n0).filter((q) => q.url.startsWith('/v3/certificates'));
    assert.ok(downloads.length >= 2);
    for (const q of downloads) {
      assert.equal(q.url, '/v3/certificates?algorithm_type=RSA');
      assert.equal(q.auth, null);
    }
  } finally {
    fake.certDownload = null;
    await stopGateway(ag);
  }
});

// ---------------------------------------------------------------- 10. secrets

test('an APIv3 key file that is not exactly 32 bytes stops the gateway at start without printing the key', async () => {
  const short = join(m.dir, 'apiv3_short.key');
  writeFileSync(short, m.apiv3Key.slice(0, 31), { mode: 0o600 });
  const e = await failedStart(wxConfig({ apiv3_key_file: short }));
  assert.match(e.message, /gateway exited[\s\S]*must be exactly 32 bytes/);
  assert.ok(!e.message.includes(m.apiv3Key.slice(0, 31)));
});

test('key files readable by others (private key, APIv3 key, app secret) are warned about; 0600 files are not', async () => {
  assert.ok(!gw.log.includes('readable by group or others'), 'the 0600 setup logs no warning');
  const shared = {};
  for (const [field, src] of [['private_key_file', m.merchant.keyFile], ['apiv3_key_file', m.apiv3File], ['app_secret_file', m.appSecretFile]]) {
    shared[field] = join(m.dir, `shared_${field}`);
    copyFileSync(src, shared[field]);
    chmodSync(shared[field], 0o644);
  }
  const g = await gateway(wxConfig(shared));
  try {
    for (const f of Object.values(shared)) assert.ok(g.log.includes(`key file ${f} is readable by group or others`), f);
  } finally { await stopGateway(g); }
});

test('a passphrase-protected private key stops the gateway at start (no prompt)', async () => {
  const enc = join(m.dir, 'encrypted_key.pem');
  copyFileSync(join(ROOT, 'tests', 'vectors', 'tv3_key_encrypted.pem'), enc);
  chmodSync(enc, 0o600);
  const t0 = Date.now();
  const e = await failedStart(wxConfig({ private_key_file: enc }));
  assert.match(e.message, /gateway exited/);
  assert.ok(Date.now() - t0 < 5000);
});

test('secrets (private key PEM, APIv3 key, app secret) appear in no log and no /metrics', async () => {
  const all = [gw.log, ...logs].join('\n');
  const allMetrics = [(await gw.get('/metrics')).body, ...metricsTexts].join('\n');
  const settings = (await gw.get('/t/settings')).body;
  const pemLines = m.merchant.keyPem.split('\n').filter((l) => l && !l.startsWith('-----'));
  assert.ok(pemLines.length > 20);
  for (const [name, text] of [['log', all], ['metrics', allMetrics], ['settings', settings]]) {
    assert.ok(!text.includes(m.apiv3Key), `APIv3 key in ${name}`);
    assert.ok(!text.includes(m.appSecret), `app secret in ${name}`);
    for (const l of pemLines) assert.ok(!text.includes(l.slice(0, 40)), `private key text in ${name}`);
  }
  assert.ok(all.length > 1000, 'the logs were captured');
});

// The WeChat Pay sandbox (examples/sandbox, run by build/paygate-sandbox), end to end: a sandbox
// paygate serves APIv3; a SEPARATE paygate configured as a merchant (`require "wechatpay"`)
// and node:crypto drive it; a node server on 127.0.0.1 receives its notifications.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import http from 'node:http';
import crypto from 'node:crypto';
import { startGateway, request, eventually, sleep, ROOT, SANDBOX_BIN } from './harness.mjs';

const MCHID = '1900007291';
const APPID = 'wxd678efh567hg6787';
const OPENID = 'oUpF8uMuAJO_M2pxb1Q9zNjWeS6o';
const SPEED = 200;                     // the main sandbox's clock_speed: 15 s → 75 ms
const SCHEDULE = [15, 15, 30, 180, 600, 1200, 1800, 1800, 1800, 3600, 10800, 10800, 10800, 21600, 21600];

let work, keys, sandbox, merchant, target;
const K = {};                          // key material read back for node:crypto

// ---- the notification target: answers by a plan per tag, records arrivals ----

function startTarget() {
  const arrivals = [];
  const plans = {};                    // tag -> list of statuses ('hang' = never answer)
  const server = http.createServer((req, res) => {
    const chunks = [];
    req.on('data', (c) => chunks.push(c));
    req.on('end', () => {
      const tag = req.url.split('/').pop();
      const body = Buffer.concat(chunks).toString('utf8');
      const a = { tag, at: Date.now(), headers: req.headers, body };
      try { a.envelope = JSON.parse(body); a.resource = decrypt(a.envelope.resource); } catch {}
      arrivals.push(a);
      const step = (plans[tag] || []).shift() ?? 204;
      if (step === 'hang') return;     // the sandbox's 1 s notify timeout gives up on us
      res.writeHead(step, { 'Content-Type': 'application/json' });
      res.end(step >= 300 ? JSON.stringify({ code: 'FAIL', message: '失败' }) : '');
    });
  });
  server.on('connection', (s) => s.setTimeout(5000, () => s.destroy()));
  return new Promise((r) => server.listen(0, '127.0.0.1', () => r({
    port: server.address().port, arrivals, plans,
    url: (tag) => `http://127.0.0.1:${server.address().port}/n/${tag}`,
    of: (tag) => arrivals.filter((a) => a.tag === tag),
    close: () => new Promise((c) => { server.closeAllConnections(); server.close(c); }),
  })));
}

function decrypt(r) {
  const raw = Buffer.from(r.ciphertext, 'base64');
  const d = crypto.createDecipheriv('aes-256-gcm', K.apiv3, Buffer.from(r.nonce));
  d.setAuthTag(raw.subarray(raw.length - 16));
  d.setAAD(Buffer.from(r.associated_data));
  return JSON.parse(Buffer.concat([d.update(raw.subarray(0, raw.length - 16)), d.final()]).toString('utf8'));
}

// ---- the two gateways ----

const merchantScripts = {
  'init.lua': `
local app = require "paygate"
local wechatpay = require "wechatpay"

app.migration(1, "notes", [[
  CREATE TABLE notes(id INTEGER PRIMARY KEY, path TEXT, ok INTEGER, reason TEXT, resource TEXT,
                     envelope_id TEXT, event_type TEXT, at INTEGER)
]])

local function out(res, why, msg)
  if not res then return 200, { ok = false, reason = why, message = msg } end
  return 200, { ok = true, status = res.status, body = res.body, code = res.code, message = res.message }
end

app.post("/m/prepay", function(req) return out(wechatpay.jsapi_prepay(app.read_json(req))) end)
app.get("/m/query/{no}", function(req) return out(wechatpay.query(req.params.no)) end)
app.get("/m/query-id/{id}", function(req) return out(wechatpay.query_by_id(req.params.id)) end)
app.post("/m/close/{no}", function(req) return out(wechatpay.close(req.params.no)) end)
app.post("/m/refund", function(req) return out(wechatpay.refund(app.read_json(req))) end)
app.get("/m/refund/{no}", function(req) return out(wechatpay.query_refund(req.params.no)) end)
app.post("/m/pay-params", function(req) return 200, wechatpay.pay_params(app.read_json(req).prepay_id) end)
app.post("/m/login", function(req)
  local r, why, msg = wechatpay.login(app.read_json(req).code)
  if not r then return 200, { ok = false, reason = why, message = msg } end
  return 200, { ok = true, openid = r.openid }
end)
app.post("/m/refresh-certs", function(req)
  local n, why, msg = wechatpay.refresh_certificates()
  return 200, { n = n, reason = why, message = msg }
end)

-- WeChat Pay's notifications: verified and decrypted by the C client, recorded, 204.
app.post("/notify/{tag}", function(req)
  local resource, env, msg = wechatpay.notification(req)
  if not resource then
    db.exec("INSERT INTO notes(path, ok, reason, at) VALUES (?, 0, ?, ?)", req.params.tag, env, clock.now())
    return 401, { code = "FAIL", message = "verification failed: " .. tostring(env) }
  end
  db.exec("INSERT INTO notes(path, ok, resource, envelope_id, event_type, at) VALUES (?, 1, ?, ?, ?, ?)",
    req.params.tag, json.encode(resource), env.id, env.event_type, clock.now())
  return 204
end)
app.get("/m/notes/{tag}", function(req)
  return 200, db.query("SELECT * FROM notes WHERE path = ? ORDER BY id", req.params.tag)
end)
`,
};

function keyFiles(dir) {
  return {
    platform_key_file: join(dir, 'platform_key.pem'), platform_cert_file: join(dir, 'platform_cert.pem'),
    merchant_cert_file: join(dir, 'merchant_cert.pem'), apiv3_key_file: join(dir, 'apiv3_key'),
    public_key_file: join(dir, 'pubkey_key.pem'), public_key_id_file: join(dir, 'pubkey_id'),
    app_secret_file: join(dir, 'app_secret'),
  };
}

/** A sandbox paygate running examples/sandbox/scripts with the test keys. */
async function startSandbox({ dir, app = {}, listen } = {}) {
  return startGateway({
    dir,
    bin: SANDBOX_BIN,
    config: {
      scripts: join(ROOT, 'examples', 'sandbox', 'scripts'), watch: false,
      log_level: 'info', ...(listen ? { listen } : {}),
      app: { mchid: MCHID, appid: APPID, mode: 'mixed', clock_speed: SPEED, notify_timeout_ms: 1000,
        refund_settle_s: 5, keys: keyFiles(keys), ...app },
    },
  });
}

before(async () => {
  work = mkdtempSync(join(tmpdir(), 'paygate-wxsandbox-'));
  keys = join(work, 'keys');
  execFileSync(join(ROOT, 'examples', 'sandbox', 'keys.sh'), [keys], { stdio: 'pipe' });
  const read = (f) => readFileSync(join(keys, f), 'utf8').trim();
  Object.assign(K, {
    merchantKey: read('merchant_key.pem'), merchantSerial: read('merchant_serial'),
    platformCert: read('platform_cert.pem'), platformSerial: read('platform_serial'),
    pubkey: read('pubkey.pem'), pubkeyId: read('pubkey_id'), apiv3: Buffer.from(read('apiv3_key')),
  });
  K.otherKey = crypto.generateKeyPairSync('rsa', { modulusLength: 2048 }).privateKey
    .export({ type: 'pkcs8', format: 'pem' });
  target = await startTarget();
  sandbox = await startSandbox({ dir: mkdtempSync(join(tmpdir(), 'paygate-e2e-')) });
  const base = `http://127.0.0.1:${sandbox.port}`;
  merchant = await startGateway({
    scripts: merchantScripts,
    config: {
      fetch: { timeout_ms: 1000 },
      wechatpay: {
        mchid: MCHID, appid: APPID, merchant_serial: K.merchantSerial,
        private_key_file: join(keys, 'merchant_key.pem'), apiv3_key_file: join(keys, 'apiv3_key'),
        app_secret_file: join(keys, 'app_secret'), platform_cert_files: [join(keys, 'platform_cert.pem')],
        public_key_file: join(keys, 'pubkey.pem'), public_key_id: K.pubkeyId,
        base_url: base, login_base_url: base, sandbox: true, notify_url: 'http://127.0.0.1:9/unused',
      },
    },
  });
});

after(async () => {
  await merchant?.stop();
  await sandbox?.stop({ clean: true });
  await target?.close();
  if (work) rmSync(work, { recursive: true, force: true });
});

// ---- helpers ----

let seq = 0;
const tradeNo = (p = 'T') => `${p}${Date.now()}${String(++seq).padStart(4, '0')}`;
const merchantNotify = (tag) => `http://127.0.0.1:${merchant.port}/notify/${tag}`;

/** Sign and send an APIv3 request with node:crypto; o overrides any part. */
async function wx(method, url, body, o = {}) {
  const port = o.port ?? sandbox.port;
  const ts = o.ts ?? Math.floor(Date.now() / 1000);
  const nonce = o.nonce ?? crypto.randomBytes(16).toString('hex').toUpperCase();
  const text = body === undefined ? '' : typeof body === 'string' ? body : JSON.stringify(body);
  const sig = o.signature ?? crypto.createSign('RSA-SHA256')
    .update(`${method}\n${url}\n${ts}\n${nonce}\n${text}\n`).sign(o.key ?? K.merchantKey, 'base64');
  const auth = o.authorization ?? `WECHATPAY2-SHA256-RSA2048 mchid="${o.mchid ?? MCHID}",nonce_str="${nonce}",` +
    `timestamp="${ts}",serial_no="${o.serial ?? K.merchantSerial}",signature="${sig}"`;
  const headers = { Accept: 'application/json', 'User-Agent': 'wxsandbox-e2e', Authorization: auth, ...o.headers };
  for (const h of o.drop || []) delete headers[h];
  return request(port, method, url, { body: text === '' ? undefined : text, headers });
}

/** Does the response carry a valid WeChat Pay signature (platform cert or public key)? */
function verified(r, publicKey = false) {
  const h = r.headers;
  if (!h['wechatpay-signature']) return false;
  const key = publicKey ? K.pubkey : K.platformCert;
  return crypto.createVerify('RSA-SHA256').update(`${h['wechatpay-timestamp']}\n${h['wechatpay-nonce']}\n${r.body}\n`)
    .verify(key, h['wechatpay-signature'], 'base64');
}

const prepayBody = (no, over = {}) => ({
  appid: APPID, mchid: MCHID, description: '2 cups 咖啡', out_trade_no: no,
  notify_url: target.url(no), amount: { total: 100, currency: 'CNY' }, payer: { openid: OPENID }, ...over,
});

async function place(no, over = {}, port) {
  const r = await wx('POST', '/v3/pay/transactions/jsapi', prepayBody(no, over), { port });
  assert.equal(r.status, 200, r.body);
  return r.json.prepay_id;
}

async function pay(prepay_id, openid = OPENID, extra = {}, gw = sandbox) {
  return gw.post('/sandbox/pay', { prepay_id, openid, ...extra });
}

const query = (no, o) => wx('GET', `/v3/pay/transactions/out-trade-no/${no}?mchid=${MCHID}`, undefined, o);
const faults = (spec, gw = sandbox) => gw.post('/sandbox/faults', spec);
const noWechatpayHeaders = (r) => Object.keys(r.headers).every((h) => !h.startsWith('wechatpay-'));

// ---- the request checks, in WeChat Pay's order ----

test('request checks run in WeChat Pay order: headers, Authorization, timestamp, serial, signature, mchid, fields', async () => {
  const url = '/v3/pay/transactions/jsapi';
  const bad = prepayBody('x'.repeat(35), { mchid: '1230000109' });
  const stale = Math.floor(Date.now() / 1000) - 301;
  // each request is also wrong in every later respect, so only the first check can answer
  let r = await wx('POST', url, bad, { drop: ['Accept'], ts: stale, key: K.otherKey, serial: 'ABC' });
  assert.equal(r.status, 400);
  assert.deepEqual(r.json, { code: 'INVALID_REQUEST', message: 'Http头缺少Accept或User-Agent' });
  r = await wx('POST', url, bad, { drop: ['User-Agent'] });
  assert.equal(r.json.code, 'INVALID_REQUEST');

  r = await wx('POST', url, bad, { drop: ['Authorization'] });
  assert.equal(r.status, 401);
  assert.deepEqual(r.json, { code: 'SIGN_ERROR', message: 'Http头Authorization值格式错误，请参考《微信支付商户REST API签名规则》' });
  r = await wx('POST', url, bad, { authorization: 'WECHATPAY2-SHA256-RSA2048 mchid="1",nonce_str="2"' });
  assert.equal(r.json.message, 'Http头Authorization值格式错误，请参考《微信支付商户REST API签名规则》');
  r = await wx('POST', url, bad, { authorization: 'Bearer abc' });
  assert.deepEqual([r.status, r.json.code, r.json.message], [401, 'SIGN_ERROR', 'HTTP头Authorization认证类型不正确']);

  r = await wx('POST', url, bad, { ts: stale, key: K.otherKey, serial: 'ABC' });
  assert.deepEqual([r.status, r.json.code, r.json.message],
    [401, 'SIGN_ERROR', 'Http头Authorization中的timestamp与发起请求的时间不得超过5分钟']);
  r = await wx('POST', url, bad, { ts: Math.floor(Date.now() / 1000) + 301 });
  assert.equal(r.json.message, 'Http头Authorization中的timestamp与发起请求的时间不得超过5分钟');
  r = await wx('POST', url, bad, { ts: Math.floor(Date.now() / 1000) - 290, key: K.otherKey, serial: 'ABC' });
  assert.equal(r.json.message, '商户证书序列号有误。请使用签名私钥匹配的证书序列号', '290 s of skew is accepted');

  r = await wx('POST', url, bad, { key: K.otherKey });
  assert.equal(r.status, 401);
  assert.equal(r.json.code, 'SIGN_ERROR');
  assert.equal(r.json.message, '错误的签名，验签失败');
  const info = r.json.detail.sign_information;
  assert.equal(r.json.detail.detail.issue, 'sign not match');
  assert.equal(info.method, 'POST');
  assert.equal(info.url, url);
  assert.ok(info.sign_message_length > 128 && info.truncated_sign_message.startsWith(`POST\n${url}\n`));

  r = await wx('GET', `/v3/pay/transactions/out-trade-no/NOPE123?mchid=${MCHID}`, undefined, { key: K.otherKey });
  assert.equal(r.json.detail.sign_information.truncated_sign_message.split('\n').slice(0, 2).join('\n'),
    `GET\n/v3/pay/transactions/out-trade-no/NOPE123?mchid=${MCHID}`, 'the query string is part of what is signed');

  r = await wx('POST', url, bad);
  assert.deepEqual([r.status, r.json.code, r.json.message],
    [400, 'PARAM_ERROR', 'http header中的mchid与post payload中的mchid不匹配']);
  r = await wx('POST', url, prepayBody('x'.repeat(35)));
  assert.deepEqual([r.status, r.json.code], [400, 'PARAM_ERROR']);
  assert.equal(r.json.message, '输入源“/body/out_trade_no”映射到值字段“商户订单号”字符串规则校验失败，字节数 35，大于最大值 32');
  assert.deepEqual(r.json.detail, { location: 'body', value: 35 });
  for (const h of [r]) assert.ok(noWechatpayHeaders(h), '4xx answers are not signed');
});

test('field validation answers PARAM_ERROR with the 输入源 messages', async () => {
  const url = '/v3/pay/transactions/jsapi';
  const cases = [
    [prepayBody('bad no!'), '输入源“/body/out_trade_no”映射到值字段“商户订单号”字符串规则校验失败，字符串必须匹配正则表达式“^[0-9a-zA-Z_\\-\\|\\*]+$”'],
    [prepayBody('ABC'), '输入源“/body/out_trade_no”映射到值字段“商户订单号”字符串规则校验失败，字节数 3，小于最小值 6'],
    [prepayBody(tradeNo(), { description: undefined }), '输入源“/body/description”映射到值字段“商品描述”必填性规则校验失败，此字段为必填项'],
    [prepayBody(tradeNo(), { attach: 'a'.repeat(203) }), '输入源“/body/attach”映射到值字段“附加数据”字符串规则校验失败，字节数 203，大于最大值 128'],
    [prepayBody(tradeNo(), { notify_url: 'https://shop.example/notify?x=1' }),
      '输入源“/body/notify_url”映射到值字段“通知地址”字符串规则校验失败，字符串必须匹配正则表达式“^https?://([^\\s/?#\\[\\]\\@]+\\@)?([^\\s/?#\\@:]+)(?::\\d{2,5})?([^\\s?#\\[\\]]*)$”'],
    [prepayBody(tradeNo(), { amount: { total: 0 } }), '输入源“/body/amount/total”映射到值字段“总金额”数值规则校验失败，值 0，小于最小值 1'],
    [prepayBody(tradeNo(), { payer: {} }), '输入源“/body/payer/openid”映射到值字段“用户标识”必填性规则校验失败，此字段为必填项'],
    [prepayBody(tradeNo(), { time_expire: 'tomorrow' }), '输入源“/body/time_expire”映射到值字段“支付结束时间”时间规则校验失败，必须是RFC3339格式'],
  ];
  for (const [body, message] of cases) {
    const r = await wx('POST', url, body);
    assert.equal(r.status, 400, r.body);
    assert.equal(r.json.code, 'PARAM_ERROR');
    assert.equal(r.json.message, message);
  }
  let r = await wx('GET', '/v3/pay/transactions/out-trade-no/ABCDEFGH', undefined);
  assert.equal(r.json.message, '输入源“/query/mchid”映射到值字段“直连商户号”必填性规则校验失败，此字段为必填项');
  r = await wx('GET', `/v3/pay/transactions/out-trade-no/${'9'.repeat(35)}?mchid=${MCHID}`);
  assert.equal(r.json.message, '输入源“/uri_template/out_trade_no”映射到值字段“商户订单号”字符串规则校验失败，字节数 35，大于最大值 32');
  assert.equal(r.json.detail.location, 'uri_template');
  r = await wx('GET', `/v3/pay/transactions/out-trade-no/ABCDEFGH?mchid=1230000109`);
  assert.equal(r.json.message, 'http header中的mchid与query中的mchid不匹配');
  r = await wx('POST', url, prepayBody(tradeNo(), { appid: 'wx0000000000000000' }));
  assert.deepEqual([r.status, r.json.code], [400, 'APPID_MCHID_NOT_MATCH']);
});

// ---- signed answers ----

test('2xx answers are signed with the platform certificate, or with the public key when the merchant asks', async () => {
  const no = tradeNo();
  let r = await wx('POST', '/v3/pay/transactions/jsapi', prepayBody(no));
  assert.equal(r.status, 200);
  assert.match(r.json.prepay_id, /^wx\d{14}[0-9a-f]{20}$/);
  assert.equal(r.headers['wechatpay-serial'], K.platformSerial);
  assert.match(r.headers['wechatpay-nonce'], /^[0-9A-F]{32}$/);
  assert.ok(r.headers['request-id']);
  assert.ok(verified(r), 'the signature verifies with the platform certificate');

  r = await query(no, { headers: { 'Wechatpay-Serial': K.pubkeyId } });
  assert.equal(r.headers['wechatpay-serial'], K.pubkeyId);
  assert.ok(verified(r, true), 'public-key mode: signed with the public key\'s private half');
  assert.ok(!verified(r, false));

  r = await query('NOSUCHORDER1');
  assert.deepEqual([r.status, r.json.code, r.json.message], [404, 'ORDER_NOT_EXIST', '订单不存在']);
  assert.ok(noWechatpayHeaders(r) && r.headers['request-id']);
});

test('the merchant client places, queries and closes through the sandbox and accepts its signatures', async () => {
  const no = tradeNo('M');
  let r = (await merchant.post('/m/prepay', { out_trade_no: no, description: 'tea', amount: 1200, openid: OPENID,
    notify_url: merchantNotify(no) })).json;
  assert.equal(r.ok, true, JSON.stringify(r));
  assert.equal(r.status, 200);
  assert.match(r.body.prepay_id, /^wx/);
  r = (await merchant.get(`/m/query/${no}`)).json;
  assert.deepEqual([r.ok, r.status, r.body.trade_state, r.body.trade_state_desc], [true, 200, 'NOTPAY', '订单未支付']);
  assert.equal(r.body.amount.total, 1200);
  r = (await merchant.post(`/m/close/${no}`)).json;
  assert.deepEqual([r.ok, r.status], [true, 204]);
  r = (await merchant.get(`/m/query/${no}`)).json;
  assert.equal(r.body.trade_state, 'CLOSED');
  r = (await merchant.post('/m/refresh-certs')).json;
  assert.equal(r.n, 1, 'the certificate download decrypts and verifies: ' + JSON.stringify(r));
});

// ---- the order state machine ----

test('a purchase: pay params from the merchant, the user pays, the order is SUCCESS with a 28-digit transaction_id', async () => {
  const no = tradeNo('P');
  const placed = (await merchant.post('/m/prepay', { out_trade_no: no, description: 'cake', amount: 1500,
    openid: OPENID, attach: 'cart=7', notify_url: merchantNotify(no) })).json;
  const prepay = placed.body.prepay_id;
  const params = (await merchant.post('/m/pay-params', { prepay_id: prepay })).json;

  let r = await pay(prepay, 'oSomeoneElse000000000000000', { pay_params: params });
  assert.equal(r.status, 409, 'another user cannot pay this order');
  assert.match(r.json.errMsg, /^requestPayment:fail/);
  r = await pay(prepay, OPENID, { pay_params: { ...params, paySign: params.paySign.slice(0, -4) + 'AAA=' } });
  assert.deepEqual([r.status, r.json.errMsg], [409, 'requestPayment:fail 支付验证签名失败']);
  r = await pay(prepay, OPENID, { pay_params: params, result: 'CANCEL' });
  assert.deepEqual([r.status, r.json.errMsg], [200, 'requestPayment:fail cancel']);
  r = await pay(prepay, OPENID, { result: 'FAIL' });
  assert.equal(r.json.errMsg, 'requestPayment:fail 支付失败');
  assert.equal((await query(no)).json.trade_state, 'NOTPAY', 'cancel and failure leave the order unpaid');

  r = await pay(prepay, OPENID, { pay_params: params });
  assert.deepEqual([r.status, r.json.errMsg], [200, 'requestPayment:ok']);
  const q = (await merchant.get(`/m/query/${no}`)).json.body;
  assert.equal(q.trade_state, 'SUCCESS');
  assert.match(q.transaction_id, /^42\d{26}$/);
  assert.deepEqual(q.payer, { openid: OPENID });
  assert.equal(q.attach, 'cart=7');
  assert.match(q.success_time, /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+08:00$/);
  const byId = (await merchant.get(`/m/query-id/${q.transaction_id}`)).json.body;
  assert.equal(byId.out_trade_no, no);

  r = await pay(prepay, OPENID);
  assert.deepEqual([r.status, r.json.errMsg], [409, 'requestPayment:fail 该订单已支付']);
  r = (await merchant.post(`/m/close/${no}`)).json;
  assert.deepEqual([r.status, r.code], [400, 'ORDERPAID']);
  r = (await merchant.post('/m/prepay', { out_trade_no: no, description: 'cake', amount: 1500, openid: OPENID,
    attach: 'cart=7', notify_url: merchantNotify(no) })).json;
  assert.deepEqual([r.status, r.code], [400, 'ORDERPAID'], 'the same order placed again once paid');

  // the payment notification, verified and decrypted by the merchant's C client
  const notes = await eventually(async () => {
    const n = (await merchant.get(`/m/notes/${no}`)).json;
    return n.length ? n : null;
  });
  assert.equal(notes[0].ok, 1);
  assert.equal(notes[0].event_type, 'TRANSACTION.SUCCESS');
  const res = JSON.parse(notes[0].resource);
  assert.deepEqual([res.out_trade_no, res.trade_state, res.amount.total, res.transaction_id, res.mchid, res.appid],
    [no, 'SUCCESS', 1500, q.transaction_id, MCHID, APPID]);
});

test('re-placing: same parameters give the current prepay_id (a new one after 2 h), others are 201 商户订单号重复', async () => {
  const no = tradeNo('R');
  const first = await place(no);
  assert.equal(await place(no), first);
  let r = await wx('POST', '/v3/pay/transactions/jsapi', prepayBody(no, { amount: { total: 101, currency: 'CNY' } }));
  assert.deepEqual([r.status, r.json.code, r.json.message], [400, 'INVALID_REQUEST', '201 商户订单号重复']);
  r = await wx('POST', '/v3/pay/transactions/jsapi', prepayBody(no, { payer: { openid: 'oOther' } }));
  assert.equal(r.json.message, '201 商户订单号重复');

  await sandbox.post('/sandbox/clock', { advance_s: 2 * 3600 + 1 });
  r = await pay(first);
  assert.deepEqual([r.status, r.json.errMsg], [409, 'requestPayment:fail prepay_id已失效，请重新下单']);
  const second = await place(no);
  assert.notEqual(second, first, 'a prepay_id lives 2 hours');
  assert.equal((await pay(second)).status, 200);
});

test('close and time_expire make an order CLOSED; closed orders cannot be paid or placed again', async () => {
  const no = tradeNo('C');
  const prepay = await place(no);
  let r = await wx('POST', `/v3/pay/transactions/out-trade-no/${no}/close`, { mchid: MCHID });
  assert.equal(r.status, 204);
  assert.equal(r.body, '');
  assert.ok(verified(r), 'a 204 is signed over the empty body');
  assert.equal((await query(no)).json.trade_state, 'CLOSED');
  assert.equal((await wx('POST', `/v3/pay/transactions/out-trade-no/${no}/close`, { mchid: MCHID })).status, 204);
  r = await wx('POST', '/v3/pay/transactions/jsapi', prepayBody(no));
  assert.deepEqual([r.status, r.json.code], [400, 'ORDER_CLOSED']);
  r = await pay(prepay);
  assert.deepEqual([r.status, r.json.errMsg], [409, 'requestPayment:fail 该订单已关闭']);
  r = await wx('POST', '/v3/pay/transactions/out-trade-no/NOSUCH0001/close', { mchid: MCHID });
  assert.deepEqual([r.status, r.json.code], [404, 'ORDER_NOT_EXIST']);

  const exp = tradeNo('E');
  const inThreeHours = new Date(Date.now() + 8 * 3600e3 + 120e3 + 3600e3 * 3).toISOString().slice(0, 19) + '+08:00';
  const p2 = await place(exp, { time_expire: inThreeHours });
  assert.equal((await query(exp)).json.trade_state, 'NOTPAY');
  await sandbox.post('/sandbox/clock', { advance_s: 5 * 3600 });
  assert.equal((await query(exp)).json.trade_state, 'CLOSED', 'unpaid past time_expire');
  assert.equal((await pay(p2)).status, 409);
});

test('partial refunds conserve the amount; REFUND.SUCCESS notifications reach the merchant', async () => {
  const no = tradeNo('F');
  await pay(await place(no));
  const refund = (out_refund_no, amount, over = {}) => merchant.post('/m/refund', {
    out_trade_no: no, out_refund_no, refund: amount, total: 100, reason: 'broken cup',
    notify_url: merchantNotify(out_refund_no), ...over }).then((r) => r.json);
  const r1 = await refund(`${no}-r1`, 30);
  assert.deepEqual([r1.ok, r1.status, r1.body.status, r1.body.amount.refund, r1.body.amount.total], [true, 200, 'PROCESSING', 30, 100]);
  assert.equal((await refund(`${no}-r1`, 30)).body.refund_id, r1.body.refund_id, 'the same out_refund_no refunds once');
  let r = await refund(`${no}-r1`, 40);
  assert.deepEqual([r.status, r.code], [400, 'INVALID_REQUEST']);
  assert.equal((await refund(`${no}-r2`, 50)).status, 200);
  r = await refund(`${no}-r3`, 30);
  assert.deepEqual([r.status, r.code, r.message], [400, 'INVALID_REQUEST', '申请退款金额超过订单可退金额']);
  assert.equal((await query(no)).json.trade_state, 'REFUND');
  assert.equal((await refund(`${no}-r4`, 20)).status, 200, 'refunds may add up to exactly the total');
  r = await refund(`${no}-r5`, 1);
  assert.equal(r.status, 400);
  const order = (await sandbox.get(`/sandbox/orders/${no}`)).json;
  assert.equal(order.refunded, 100);
  assert.equal(order.refunds.length, 3);

  const settled = await eventually(async () => {
    const q = (await merchant.get(`/m/refund/${no}-r1`)).json;
    return q.body.status === 'SUCCESS' ? q : null;
  });
  assert.match(settled.body.success_time, /\+08:00$/);
  const notes = await eventually(async () => {
    const n = (await merchant.get(`/m/notes/${no}-r1`)).json;
    return n.length ? n : null;
  });
  assert.equal(notes[0].event_type, 'REFUND.SUCCESS');
  const res = JSON.parse(notes[0].resource);
  assert.deepEqual([res.refund_status, res.out_refund_no, res.amount.refund, res.amount.total], ['SUCCESS', `${no}-r1`, 30, 100]);
  r = await wx('GET', '/v3/refund/domestic/refunds/NOSUCHREFUND');
  assert.deepEqual([r.status, r.json.code], [404, 'RESOURCE_NOT_EXISTS']);
  r = await refund('x-unpaid', 1, { out_trade_no: tradeNo('U') });
  assert.deepEqual([r.status, r.code], [404, 'RESOURCE_NOT_EXISTS']);
});

test('jscode2session: codes issued by the sandbox work once, for 5 minutes; others are 40029', async () => {
  const issued = (await sandbox.post('/sandbox/login-code', { openid: 'oLoginUser1' })).json;
  assert.match(issued.code, /^[0-9A-Za-z]{32}$/);
  let r = (await merchant.post('/m/login', { code: issued.code })).json;
  assert.deepEqual(r, { ok: true, openid: 'oLoginUser1' });
  r = (await merchant.post('/m/login', { code: issued.code })).json;
  assert.equal(r.reason, 'invalid_code', 'a code is single-use');
  r = (await merchant.post('/m/login', { code: 'NeverIssued123' })).json;
  assert.equal(r.reason, 'invalid_code');
  assert.match(r.message, /40029/);
  const old = (await sandbox.post('/sandbox/login-code', {})).json;
  assert.match(old.openid, /^o[0-9A-Za-z]{27}$/);
  await sandbox.post('/sandbox/clock', { advance_s: 301 });
  r = (await merchant.post('/m/login', { code: old.code })).json;
  assert.equal(r.reason, 'invalid_code', 'a code expires after 5 minutes');
  const raw = await sandbox.get(`/sns/jscode2session?appid=${APPID}&secret=wrong&js_code=x&grant_type=authorization_code`);
  assert.equal(raw.json.errcode, 40125);
});

// ---- notifications ----

test('a notification is WeChat Pay\'s signed envelope with an AES-256-GCM resource', async () => {
  const no = tradeNo('N');
  await pay(await place(no));
  const [a] = await eventually(() => target.of(no).length && target.of(no));
  const env = a.envelope;
  assert.match(env.id, /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/);
  assert.match(env.create_time, /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+08:00$/);
  assert.deepEqual([env.resource_type, env.event_type, env.summary], ['encrypt-resource', 'TRANSACTION.SUCCESS', '支付成功']);
  assert.deepEqual([env.resource.original_type, env.resource.algorithm, env.resource.associated_data],
    ['transaction', 'AEAD_AES_256_GCM', 'transaction']);
  assert.equal(env.resource.nonce.length, 12);
  assert.equal(a.resource.out_trade_no, no);
  assert.equal(a.headers['content-type'], 'application/json');
  const serial = a.headers['wechatpay-serial'];
  assert.ok([K.platformSerial, K.pubkeyId].includes(serial), 'mixed mode: either key, named by the serial');
  assert.ok(verified({ headers: a.headers, body: a.body }, serial === K.pubkeyId));
});

test('failed deliveries are retried on WeChat Pay\'s schedule (15s, 15s, 30s, 3m, 10m … scaled by clock_speed)', async () => {
  const no = tradeNo('S');
  target.plans[no] = [500, 503, 404, 'hang', 500];
  await pay(await place(no));
  const arrivals = await eventually(() => target.of(no).length >= 6 && target.of(no), 15000);
  const gaps = arrivals.slice(1).map((a, i) => a.at - arrivals[i].at);
  const expected = SCHEDULE.slice(0, 5).map((s) => (s * 1000) / SPEED);
  expected[3] += 1000;               // the 4th attempt hung: the 1 s notify timeout comes first
  gaps.forEach((g, i) => {
    assert.ok(g >= expected[i] - 5 && g <= expected[i] + 500, `gap ${i + 1} was ${g} ms, expected ~${expected[i]} (${gaps})`);
  });
  await sleep(300);
  assert.equal(target.of(no).length, 6, 'a 204 ends the schedule');
  const n = (await sandbox.get(`/sandbox/notifications?ref=${no}`)).json.notifications[0];
  assert.equal(n.state, 'delivered');
  assert.deepEqual(n.deliveries.map((d) => d.status ?? 'timeout'), [500, 503, 404, 'timeout', 500, 204]);
  assert.match(n.deliveries[3].error, /^timeout/);
  assert.ok(arrivals.every((a) => a.envelope.id === arrivals[0].envelope.id), 'every retry is the same notification');
});

test('the delivery schedule survives a sandbox restart', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'paygate-e2e-'));
  const app = { clock_speed: 100, mode: 'public_key' };
  let sb = await startSandbox({ dir, app });
  try {
    const no = tradeNo('D');
    target.plans[no] = [500, 500, 500, 500];      // attempts at 0, 150, 300, 600 ms; the 5th at +1800 ms
    const prepay = await place(no, {}, sb.port);
    assert.equal((await pay(prepay, OPENID, {}, sb)).status, 200);
    await eventually(() => target.of(no).length >= 4, 5000, 10);
    const port = sb.port;
    await sb.stop();
    assert.equal(target.of(no).length, 4);
    sb = await startSandbox({ dir, app, listen: `127.0.0.1:${port}` });
    const all = await eventually(() => target.of(no).length >= 5 && target.of(no), 8000);
    const gap = all[4].at - all[3].at;
    assert.ok(gap >= 1790 && gap < 3500, `the 5th attempt came ${gap} ms after the 4th (due 1800 ms)`);
    await sleep(500);
    assert.equal(target.of(no).length, 5, 'no attempt is repeated after the restart');
    const n = (await sb.get(`/sandbox/notifications?ref=${no}`)).json.notifications[0];
    assert.deepEqual(n.deliveries.map((d) => [d.attempt, d.status]), [[1, 500], [2, 500], [3, 500], [4, 500], [5, 204]]);
    assert.ok(all.every((a) => a.headers['wechatpay-serial'] === K.pubkeyId), 'public_key mode signs notifications with the public key');
    assert.ok(verified({ headers: all[4].headers, body: all[4].body }, true));

    const r = await wx('GET', '/v3/certificates', undefined, { port: sb.port });
    assert.deepEqual([r.status, r.json.code], [404, 'RESOURCE_NOT_EXISTS']);
    assert.match(r.json.message, /^无可用的平台证书/);
    const q = await query(no, { port: sb.port });
    assert.equal(q.headers['wechatpay-serial'], K.pubkeyId);
    assert.ok(verified(q, true));
  } finally {
    await sb.stop({ clean: true });
  }
});

// ---- faults ----

test('faults on API calls: SYSTEM_ERROR, slow, timeout after the effect, bad signatures, probes, latency', async () => {
  try {
    await faults({ system_error: { count: 1 } });
    let r = await query('NOSUCHORDER2');
    assert.deepEqual([r.status, r.json.code, r.json.message], [500, 'SYSTEM_ERROR', '系统错误']);
    assert.ok(noWechatpayHeaders(r));
    assert.equal((await query('NOSUCHORDER2')).status, 404, 'count = 1: only the next call');

    await faults({ slow: { count: 1, ms: 600 } });
    let t = performance.now();
    assert.equal((await query('NOSUCHORDER2')).status, 404);
    assert.ok(performance.now() - t >= 590);

    const no = tradeNo('X');
    await faults({ timeout: { count: 1, ms: 1500 } });
    r = (await merchant.post('/m/prepay', { out_trade_no: no, description: 'x', amount: 5, openid: OPENID,
      notify_url: merchantNotify(no) })).json;
    assert.deepEqual([r.ok, r.reason], [false, 'timeout'], JSON.stringify(r));
    assert.equal((await query(no)).json.trade_state, 'NOTPAY', 'the order was placed although the answer timed out');

    await faults({ bad_signature: { count: 1 } });
    r = await query(no);
    assert.equal(r.status, 200);
    assert.ok(!verified(r) && !verified(r, true));
    await faults({ bad_signature: { count: 1 } });
    r = (await merchant.get(`/m/query/${no}`)).json;
    assert.deepEqual([r.ok, r.reason], [false, 'bad_signature']);

    await faults({ probe: { count: 1 } });
    r = (await merchant.get(`/m/query/${no}`)).json;
    assert.deepEqual([r.ok, r.reason], [false, 'signature_probe']);
    await faults({ probe: { count: 1 } });
    r = await query(no);
    assert.match(r.headers['wechatpay-signature'], /^WECHATPAY\/SIGNTEST\//);
    assert.ok(verified(await query(no)), 'the fault is used up');

    await faults({ latency: { ms: 300 } });
    t = performance.now();
    await query(no);
    await query(no);
    assert.ok(performance.now() - t >= 600, 'latency applies to every call while set');
    await faults({ latency: false });
    const list = (await sandbox.get('/sandbox/faults')).json;
    assert.deepEqual(list.active, {});
    assert.equal((await faults({ nonsense: { count: 1 } })).status, 400);
  } finally {
    await sandbox.request('DELETE', '/sandbox/faults');
  }
});

test('faults on notifications: dropped, delayed, reordered, duplicated (also concurrently), probed', async () => {
  try {
    const A = tradeNo('ND');
    await faults({ notify_drop: { count: 1 } });
    await pay(await place(A));
    await sleep(600);
    assert.equal(target.of(A).length, 0, 'a dropped notification is never sent');
    assert.equal((await sandbox.get(`/sandbox/notifications?ref=${A}`)).json.notifications[0].state, 'dropped');

    const B = tradeNo('NL');
    await faults({ notify_delay: { count: 1, ms: 800 } });
    const t = Date.now();
    await pay(await place(B));
    const [b] = await eventually(() => target.of(B).length && target.of(B));
    assert.ok(b.at - t >= 790, `delayed by ${b.at - t} ms`);

    const C1 = tradeNo('NR'), C2 = tradeNo('NR');
    const [p1, p2] = [await place(C1), await place(C2)];
    await faults({ notify_reorder: { count: 2, ms: 400 } });
    await pay(p1);
    await pay(p2);
    await eventually(() => target.of(C1).length && target.of(C2).length, 5000);
    assert.ok(target.of(C2)[0].at < target.of(C1)[0].at, 'the later event arrived first');

    const D = tradeNo('NU');
    await faults({ notify_duplicate: { count: 1 } });
    await pay(await place(D));
    const dups = await eventually(() => target.of(D).length >= 2 && target.of(D), 5000);
    assert.equal(dups[0].envelope.id, dups[1].envelope.id);
    assert.ok(dups[1].at - dups[0].at >= 900, 'a duplicate about a second later');

    const E = tradeNo('NC');
    await faults({ notify_duplicate: { count: 1, concurrent: true } });
    await pay(await place(E, { notify_url: merchantNotify(E) }));
    const notes = await eventually(async () => {
      const n = (await merchant.get(`/m/notes/${E}`)).json;
      return n.length >= 2 ? n : null;
    });
    assert.ok(Math.abs(notes[1].at - notes[0].at) < 300, 'two deliveries at the same moment');
    assert.equal(notes[0].envelope_id, notes[1].envelope_id);

    const F = tradeNo('NP');
    await faults({ notify_probe: { count: 1 } });
    await pay(await place(F, { notify_url: merchantNotify(F) }));
    const probed = await eventually(async () => {
      const n = (await merchant.get(`/m/notes/${F}`)).json;
      return n.length >= 2 ? n : null;
    });
    assert.deepEqual(probed.map((n) => [n.ok, n.reason ?? null]), [[0, 'signature_probe'], [1, null]],
      'the merchant refuses the probe; the retry is genuine');
  } finally {
    await sandbox.request('DELETE', '/sandbox/faults');
  }
});

test('faults from the config apply by rate until a switch set through /sandbox/faults overrides them', async () => {
  const sb = await startSandbox({ app: { faults: { system_error: { rate: 1 } } } });
  try {
    const r = await query('NOSUCHORDER3', { port: sb.port });
    assert.deepEqual([r.status, r.json.code], [500, 'SYSTEM_ERROR']);
    await faults({ system_error: { rate: 0 } }, sb);
    assert.equal((await query('NOSUCHORDER3', { port: sb.port })).status, 404);
  } finally {
    await sb.stop({ clean: true });
  }
});

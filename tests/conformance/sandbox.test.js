// sandbox.test.js — the WeChat Pay sandbox (examples/sandbox) against the wechatpay-node-v3 SDK's own client.
//
// The SDK hard-codes https://api.mch.weixin.qq.com; its documented hook Pay#createHttp(service)
// replaces the HTTP layer. The service here rewrites that prefix to the sandbox on 127.0.0.1
// (and refuses any other URL, so nothing can reach the real host), sends with the SDK's own
// HTTP library (superagent), and keeps the raw answer so the SDK's verifySign can check it.
// SDK functions used: transactions_jsapi, query, close, verifySign (which downloads and
// decrypts /v3/certificates through fetchCertificates), the paySign it computes, and
// tradebill + downloadBill for a bill round trip: the sandbox's bill, fetched by the SDK, read by
// a parser written here and by paygate's own (lualib/wechatpay/bills.lua in build/paygate).
'use strict';

const { test, before, after } = require('node:test');
const assert = require('node:assert/strict');
const { execFileSync, spawn } = require('node:child_process');
const crypto = require('node:crypto');
const zlib = require('node:zlib');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');

const Pay = require('wechatpay-node-v3');
const superagent = require('superagent');

const ROOT = path.resolve(__dirname, '..', '..');
const BIN = process.env.PAYGATE_SANDBOX_BIN || path.join(ROOT, 'build', 'paygate-sandbox');
const GATEWAY_BIN = process.env.PAYGATE_BIN || path.join(ROOT, 'build', 'paygate');
const REAL_HOST = 'https://api.mch.weixin.qq.com';
const MCHID = '1900007291';
const APPID = 'wxd678efh567hg6787';
const OPENID = 'oUpF8uMuAJO_M2pxb1Q9zNjWeS6o';

let dir, child, base, keys = {}, pay, last, gateway, gatewayBase;

// superagent parser that keeps a body as its bytes.
function bytes(res, cb) {
  const chunks = [];
  res.on('data', (c) => chunks.push(c));
  res.on('end', () => cb(null, Buffer.concat(chunks)));
}

/** The SDK's http service, pointed at the sandbox; `last` keeps the raw answer for verifySign. */
function sandboxHttp() {
  const to = (url) => {
    if (!url.startsWith(REAL_HOST + '/')) throw new Error('refusing to send to ' + url);
    return base + url.slice(REAL_HOST.length);
  };
  const done = (res) => {
    last = { status: res.status, headers: res.headers, text: res.text };
    return { status: res.status, data: res.body, headers: res.headers };
  };
  const call = async (req) => {
    try {
      return done(await req);
    } catch (err) {
      if (!err.response) throw err;
      done(err.response);
      return { status: err.status, error: err.response.text };
    }
  };
  return {
    get: (url, headers) => call(url.includes('/v3/billdownload/')
      ? superagent.get(to(url)).set(headers).buffer(true).parse(bytes)     // a bill file: its bytes
      : superagent.get(to(url)).set(headers)),
    post: (url, params, headers) => call(superagent.post(to(url)).send(params).set(headers)),
  };
}

function sdk(privateKey) {
  const p = new Pay({
    appid: APPID, mchid: MCHID, publicKey: keys.merchantCert, privateKey, serial_no: keys.merchantSerial,
    key: keys.apiv3,
  });
  p.createHttp(sandboxHttp());
  return p;
}

/** The SDK's own verification of the last answer (platform certificate fetched by the SDK). */
function sdkVerify() {
  return pay.verifySign({
    timestamp: last.headers['wechatpay-timestamp'], nonce: last.headers['wechatpay-nonce'],
    body: last.text, serial: last.headers['wechatpay-serial'], signature: last.headers['wechatpay-signature'],
    apiSecret: keys.apiv3,
  });
}

function startSandbox() {
  const conf = path.join(dir, 'sandbox.conf.lua');
  const k = (f) => JSON.stringify(path.join(dir, 'keys', f));
  fs.writeFileSync(conf, `
listen = "127.0.0.1:0"
scripts = ${JSON.stringify(path.join(ROOT, 'examples', 'sandbox', 'scripts'))}
lualib = ${JSON.stringify(path.join(ROOT, 'lualib'))}
database = ${JSON.stringify(path.join(dir, 'sandbox.db'))}
watch = false
app = { mchid = "${MCHID}", appid = "${APPID}", mode = "certificate", clock_speed = 1000,
  keys = { platform_key_file = ${k('platform_key.pem')}, platform_cert_file = ${k('platform_cert.pem')},
           merchant_cert_file = ${k('merchant_cert.pem')}, apiv3_key_file = ${k('apiv3_key')},
           public_key_file = ${k('pubkey_key.pem')}, public_key_id_file = ${k('pubkey_id')},
           app_secret_file = ${k('app_secret')} } }
`);
  child = spawn(BIN, ['--config', conf], { stdio: ['ignore', 'pipe', 'pipe'] });
  return listening(child, 'the sandbox');
}

// paygate's bill reader as a script sees it: POST /parse?gzip=1&sha1=... with the file as the body.
const PARSER = `
local app = require "paygate"
local bill = require "wechatpay.bill"
local bills = require "wechatpay.bills"
app.post("/parse", function(req)
  local q = {}
  for k, v in (req.query or ""):gmatch("([^&=]+)=([^&]*)") do q[k] = v end
  local b, why, msg = bill.open(req:body(), { gzip = q.gzip == "1", sha1 = q.sha1 })
  if not b then return 422, { error = why, message = msg } end
  local recs = json.array()
  for r in bills.records(b, "trade") do recs[#recs + 1] = r end
  local s = bills.summary(b, "trade")
  b:close()
  return 200, { records = recs, summary = s }
end)
`;

function startGateway() {
  const scripts = path.join(dir, 'parser');
  fs.mkdirSync(scripts, { recursive: true });
  fs.writeFileSync(path.join(scripts, 'init.lua'), PARSER);
  const conf = path.join(dir, 'parser.conf.lua');
  fs.writeFileSync(conf, `
listen = "127.0.0.1:0"
scripts = ${JSON.stringify(scripts)}
lualib = ${JSON.stringify(path.join(ROOT, 'lualib'))}
database = ${JSON.stringify(path.join(dir, 'parser.db'))}
watch = false
`);
  gateway = spawn(GATEWAY_BIN, ['--config', conf], { stdio: ['ignore', 'pipe', 'pipe'] });
  return listening(gateway, 'paygate');
}

function listening(proc, what) {
  let out = '', errText = '';
  const child = proc;
  child.stderr.on('data', (d) => { errText += d; });
  return new Promise((resolve, reject) => {
    const t = setTimeout(() => reject(new Error(what + ' did not start:\n' + errText)), 10000);
    child.stdout.on('data', (d) => {
      out += d;
      const m = out.match(/listening on (http:\/\/127\.0\.0\.1:\d+)/);
      if (m) { clearTimeout(t); resolve(m[1]); }
    });
    child.on('exit', (code) => { clearTimeout(t); reject(new Error(`${what} exited (${code}):\n${errText}`)); });
  });
}

before(async () => {
  assert.ok(fs.existsSync(BIN), `build paygate first (make): ${BIN}`);
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'paygate-sandbox-sdk-'));
  execFileSync(path.join(ROOT, 'examples', 'sandbox', 'keys.sh'), [path.join(dir, 'keys')], { stdio: 'pipe' });
  const read = (f) => fs.readFileSync(path.join(dir, 'keys', f), 'utf8');
  keys = {
    merchantKey: read('merchant_key.pem'), merchantCert: read('merchant_cert.pem'),
    merchantSerial: read('merchant_serial').trim(), apiv3: read('apiv3_key').trim(),
  };
  base = await startSandbox();
  gatewayBase = await startGateway();
  pay = sdk(keys.merchantKey);
});

after(async () => {
  for (const p of [child, gateway]) {
    if (p && p.exitCode === null) {
      const exited = new Promise((r) => p.on('exit', r));
      process.kill(p.pid, 'SIGTERM');
      await exited;
    }
  }
  if (dir) fs.rmSync(dir, { recursive: true, force: true });
});

const outTradeNo = () => 'SDK' + Date.now() + crypto.randomInt(1000, 9999);

test('the SDK client gets a JSAPI prepay from the sandbox and its verifySign accepts the signed answer', async () => {
  const no = outTradeNo();
  const r = await pay.transactions_jsapi({
    description: 'SDK 测试', out_trade_no: no, notify_url: 'https://shop.example/wechat/notify/pay',
    amount: { total: 100, currency: 'CNY' }, payer: { openid: OPENID },
  });
  assert.equal(r.status, 200, JSON.stringify(r));
  assert.match(r.data.package, /^prepay_id=wx\d{14}[0-9a-f]{20}$/);
  assert.equal(r.data.signType, 'RSA');
  assert.equal(await sdkVerify(), true, 'verifySign fetched /v3/certificates, decrypted it and verified');

  // the paySign the SDK computed is accepted by the sandbox's wx.requestPayment
  const prepay_id = r.data.package.slice('prepay_id='.length);
  const paid = await superagent.post(base + '/sandbox/pay').send({ prepay_id, openid: OPENID, pay_params: r.data });
  assert.equal(paid.body.errMsg, 'requestPayment:ok');
  const q = await pay.query({ out_trade_no: no });
  assert.equal(q.status, 200);
  assert.equal(q.data.trade_state, 'SUCCESS');
  assert.equal(await sdkVerify(), true);
});

test('the SDK client queries and closes an order; both signed answers verify with the SDK', async () => {
  const no = outTradeNo();
  const placed = await pay.transactions_jsapi({
    description: 'close me', out_trade_no: no, notify_url: 'https://shop.example/wechat/notify/pay',
    amount: { total: 1 }, payer: { openid: OPENID },
  });
  assert.equal(placed.status, 200);
  let q = await pay.query({ out_trade_no: no });
  assert.equal(q.status, 200);
  assert.equal(q.data.trade_state, 'NOTPAY');
  assert.equal(await sdkVerify(), true);

  const c = await pay.close(no);
  assert.equal(c.status, 204);
  assert.equal(last.text, '');
  assert.equal(await sdkVerify(), true, 'the 204 is signed over the empty body');
  q = await pay.query({ out_trade_no: no });
  assert.equal(q.data.trade_state, 'CLOSED');

  last.text += ' ';
  assert.equal(await sdkVerify(), false, 'a changed body does not verify');
});

test('a request signed with the wrong key gets 401 SIGN_ERROR, unsigned', async () => {
  const wrong = crypto.generateKeyPairSync('rsa', { modulusLength: 2048 }).privateKey
    .export({ type: 'pkcs8', format: 'pem' });
  const r = await sdk(wrong).query({ out_trade_no: outTradeNo() });
  assert.equal(r.status, 401);
  const body = JSON.parse(r.error);
  assert.equal(body.code, 'SIGN_ERROR');
  assert.equal(body.message, '错误的签名，验签失败');
  assert.equal(last.headers['wechatpay-signature'], undefined, '4xx answers carry no Wechatpay-* headers');
});

// ---- a bill round trip ----

// An independent reader of WeChat Pay's bill format: a header line, detail lines whose every
// field starts with a backtick, a summary header and a summary line; amounts in yuan.
function readBill(text) {
  const lines = text.split(/\r?\n/).filter((l) => l !== '');
  const header = lines[0].split(',');
  let i = 1;
  const rows = [];
  for (; i < lines.length && lines[i].startsWith('`'); i++) rows.push(lines[i].slice(1).split(',`'));
  const sumHeader = lines[i].split(',');
  const sumValues = lines[i + 1].slice(1).split(',`');
  const obj = (names, values) => Object.fromEntries(names.map((n, j) => [n, values[j]]));
  return { details: rows.map((r) => obj(header, r)), summary: obj(sumHeader, sumValues) };
}

// "12.34" yuan → integer units of 10^-scale yuan, exactly (string arithmetic, no floats).
function units(s, scale) {
  const m = /^(-?)(\d+)(?:\.(\d+))?$/.exec(s);
  assert.ok(m, 'not an amount: ' + s);
  const frac = (m[3] || '').padEnd(scale, '0');
  assert.ok(/^0*$/.test(frac.slice(scale)), 'more decimals than ' + scale + ': ' + s);
  const n = Number(m[2] + frac.slice(0, scale));
  return m[1] === '-' ? -n : n;
}

test('a bill round trip: the SDK fetches the sandbox\'s trade bill; a parser written here and paygate\'s read the same fen', async () => {
  const paid = [];
  for (const total of [1, 250, 9999]) {
    const no = outTradeNo();
    const r = await pay.transactions_jsapi({
      description: '账单 测试', out_trade_no: no, notify_url: 'https://shop.example/wechat/notify/pay',
      amount: { total, currency: 'CNY' }, payer: { openid: OPENID },
    });
    assert.equal(r.status, 200, JSON.stringify(r));
    const prepay_id = r.data.package.slice('prepay_id='.length);
    const ok = await superagent.post(base + '/sandbox/pay').send({ prepay_id, openid: OPENID });
    assert.equal(ok.status, 200);
    paid.push({ no, total });
  }
  const date = (await superagent.post(base + '/sandbox/clock').send({ advance_s: 0 })).body.now.slice(0, 10);
  for (const gzip of [true, false]) {
    const b = await pay.tradebill({ bill_date: date, bill_type: 'ALL', ...(gzip ? { tar_type: 'GZIP' } : {}) });
    assert.equal(b.status, 200, JSON.stringify(b));
    assert.equal(await sdkVerify(), true, 'the tradebill answer is signed');
    assert.equal(b.data.hash_type, 'SHA1');
    // the URL as WeChat Pay would give it, so the SDK signs it as it signs WeChat's
    const url = REAL_HOST + b.data.download_url.slice(b.data.download_url.indexOf('/v3/'));
    const f = await pay.downloadBill(url);
    assert.equal(f.status, 200, JSON.stringify(f));
    assert.equal(last.headers['wechatpay-signature'], undefined, 'a bill file is not signed');
    const file = f.data;
    assert.ok(Buffer.isBuffer(file), 'the file as bytes');
    const text = (gzip ? zlib.gunzipSync(file) : file).toString('utf8');
    assert.equal(crypto.createHash('sha1').update(text).digest('hex'), b.data.hash_value,
                 'hash_value is the SHA1 of the bill after gzip is undone');

    const mine = readBill(text);
    const theirs = await superagent.post(`${gatewayBase}/parse?gzip=${gzip ? 1 : 0}&sha1=${b.data.hash_value}`)
      .set('Content-Type', 'application/octet-stream').send(file);
    assert.equal(theirs.status, 200, theirs.text);
    const recs = theirs.body.records;
    assert.equal(recs.length, mine.details.length);
    mine.details.forEach((d, j) => {
      const r = recs[j];
      assert.equal(r.out_trade_no, d['商户订单号']);
      assert.equal(r.transaction_id, d['微信订单号']);
      assert.equal(r.trade_state, d['交易状态']);
      assert.equal(r.total, units(d['订单金额'], 2));
      assert.equal(r.settlement_total, units(d['应结订单金额'], 2));
      assert.equal(r.refund, units(d['退款金额'], 2));
      assert.equal(r.fee, units(d['手续费'], 5));
    });
    for (const p of paid) {
      const d = mine.details.find((x) => x['商户订单号'] === p.no);
      assert.ok(d, 'paid order in the bill');
      assert.equal(units(d['订单金额'], 2), p.total);
    }
    const s = theirs.body.summary;
    assert.equal(s.count, units(mine.summary['总交易单数'], 0));
    assert.equal(s.total, units(mine.summary['订单总金额'], 2));
    assert.equal(s.fee_total, units(mine.summary['手续费总金额'], 5));
    assert.equal(s.total, mine.details.reduce((a, d) => a + units(d['订单金额'], 2), 0));

    const wrong = await superagent.post(`${gatewayBase}/parse?gzip=${gzip ? 1 : 0}&sha1=${'f'.repeat(40)}`)
      .set('Content-Type', 'application/octet-stream').send(file).ok(() => true);
    assert.equal(wrong.status, 422);
    assert.equal(wrong.body.error, 'hash_mismatch');
  }
});

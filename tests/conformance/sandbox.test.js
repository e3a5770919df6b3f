// sandbox.test.js — the WeChat Pay sandbox (examples/sandbox) against the wechatpay-node-v3 SDK's own client.
//
// The SDK hard-codes https://api.mch.weixin.qq.com; its documented hook Pay#createHttp(service)
// replaces the HTTP layer. The service here rewrites that prefix to the sandbox on 127.0.0.1
// (and refuses any other URL, so nothing can reach the real host), sends with the SDK's own
// HTTP library (superagent), and keeps the raw answer so the SDK's verifySign can check it.
// SDK functions used: transactions_jsapi, query, close, verifySign (which downloads and
// decrypts /v3/certificates through fetchCertificates), and the paySign it computes.
'use strict';

const { test, before, after } = require('node:test');
const assert = require('node:assert/strict');
const { execFileSync, spawn } = require('node:child_process');
const crypto = require('node:crypto');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');

const Pay = require('wechatpay-node-v3');
const superagent = require('superagent');

const ROOT = path.resolve(__dirname, '..', '..');
const BIN = process.env.PAYGATE_SANDBOX_BIN || path.join(ROOT, 'build', 'paygate-sandbox');
const REAL_HOST = 'https://api.mch.weixin.qq.com';
const MCHID = '1900007291';
const APPID = 'wxd678efh567hg6787';
const OPENID = 'oUpF8uMuAJO_M2pxb1Q9zNjWeS6o';

let dir, child, base, keys = {}, pay, last;

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
    get: (url, headers) => call(superagent.get(to(url)).set(headers)),
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
  let out = '', errText = '';
  child.stderr.on('data', (d) => { errText += d; });
  return new Promise((resolve, reject) => {
    const t = setTimeout(() => reject(new Error('the sandbox did not start:\n' + errText)), 10000);
    child.stdout.on('data', (d) => {
      out += d;
      const m = out.match(/listening on (http:\/\/127\.0\.0\.1:\d+)/);
      if (m) { clearTimeout(t); resolve(m[1]); }
    });
    child.on('exit', (code) => { clearTimeout(t); reject(new Error(`the sandbox exited (${code}):\n${errText}`)); });
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
  pay = sdk(keys.merchantKey);
});

after(async () => {
  if (child && child.exitCode === null) {
    const exited = new Promise((r) => child.on('exit', r));
    process.kill(child.pid, 'SIGTERM');
    await exited;
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

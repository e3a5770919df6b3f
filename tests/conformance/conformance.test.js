// conformance.test.js — paygate's wxp_tool against the wechatpay-node-v3 SDK's own signing, verification and decryption code.
//
// The SDK functions used (read in node_modules/wechatpay-node-v3/dist/index.js):
//   Pay#getSignature(method, nonce_str, timestamp, url, body)  request signature
//   Pay#getAuthorization(nonce_str, timestamp, signature)      Authorization header
//   Pay#verifySign({timestamp, nonce, body, serial, signature}) response/notification check
//   Pay#decipher_gcm(ciphertext, associated_data, nonce, key)  notification resource
//   Pay#transactions_jsapi(params)  JSAPI prepay + mini-program pay params (paySign),
//   Pay#transactions_app(params)    APP prepay + the OpenSDK PayReq (sign),
//                                   run against an in-memory http service (Pay#createHttp)
//   Pay#getSN(cert)                 certificate serial
// The keys are a fresh RSA-2048 pair and self-signed certificate made with the openssl CLI.
'use strict';

const { test, before, after } = require('node:test');
const assert = require('node:assert/strict');
const { execFileSync, spawnSync } = require('node:child_process');
const crypto = require('node:crypto');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');

const Pay = require('wechatpay-node-v3');
const { Certificate } = require('@fidm/x509');

const TOOL = process.env.WXP_TOOL;
const MCHID = '1900007291';
const APPID = 'wxd678efh567hg6787';

let dir, keyFile, certFile, keyPem, certPem, serial, pay;

/* Runs wxp_tool; returns stdout. Throws with its stderr on a non-zero exit unless allowed. */
function tool(args, allowFail = false) {
  const r = spawnSync(TOOL, args, { encoding: 'utf8' });
  if (r.status !== 0 && !allowFail) {
    throw new Error(`wxp_tool ${args[0]} exited ${r.status}: ${r.stderr}`);
  }
  return allowFail ? { status: r.status, out: r.stdout, err: r.stderr } : r.stdout;
}

let fileCounter = 0;
function writeTemp(content) {
  const f = path.join(dir, `data-${fileCounter++}`);
  fs.writeFileSync(f, content);
  return f;
}

/* Go-style serial (%X): uppercase, no leading zeros. The SDK keeps DER bytes in lowercase. */
function normalizeSerial(s) {
  return s.toUpperCase().replace(/^0+(?=.)/, '');
}

before(() => {
  assert.ok(TOOL && fs.existsSync(TOOL), 'set WXP_TOOL to the built tests/tools/wxp_tool (run.sh does)');
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'paygate-conformance-'));
  keyFile = path.join(dir, 'key.pem');
  certFile = path.join(dir, 'cert.pem');
  execFileSync('openssl', ['genpkey', '-algorithm', 'RSA', '-pkeyopt', 'rsa_keygen_bits:2048', '-out', keyFile],
    { stdio: 'pipe' });
  execFileSync('openssl', ['req', '-x509', '-new', '-key', keyFile, '-subj', '/CN=paygate conformance',
    '-days', '30', '-out', certFile], { stdio: 'pipe' });
  keyPem = fs.readFileSync(keyFile);
  certPem = fs.readFileSync(certFile);
  serial = tool(['serial', certFile]);
  pay = new Pay({ appid: APPID, mchid: MCHID, publicKey: certPem, privateKey: keyPem, serial_no: serial });
});

after(() => {
  if (dir) fs.rmSync(dir, { recursive: true, force: true });
});

test('certificate serial matches the SDK getSN (after Go-style %X normalisation)', () => {
  assert.match(serial, /^[0-9A-F]+$/);
  assert.equal(normalizeSerial(pay.getSN(certPem)), serial);
});

const requests = [
  {
    name: 'POST JSAPI prepay with a UTF-8 body',
    method: 'POST',
    url: '/v3/pay/transactions/jsapi',
    body: JSON.stringify({
      appid: APPID, mchid: MCHID, description: 'Image形象店-深圳腾大-QQ公仔', out_trade_no: 'A1217752501201407033233368018',
      notify_url: 'https://example.com/wechat/notify/pay', amount: { total: 100, currency: 'CNY' },
      payer: { openid: 'oUpF8uMuAJO_M2pxb1Q9zNjWeS6o' },
    }),
  },
  { name: 'GET query with the mchid in the URL', method: 'GET', url: '/v3/pay/transactions/out-trade-no/A12345678?mchid=1900007291', body: '' },
  { name: 'GET certificates', method: 'GET', url: '/v3/certificates', body: '' },
  { name: 'POST close order', method: 'POST', url: '/v3/pay/transactions/out-trade-no/A12345678/close', body: '{"mchid":"1900007291"}' },
];

for (const r of requests) {
  test(`Authorization header equals the SDK's for ${r.name}`, () => {
    const ts = String(Math.floor(Date.now() / 1000));
    const nonce = crypto.randomBytes(16).toString('hex').toUpperCase();
    const ours = tool(['authorization', keyFile, MCHID, serial, r.method, r.url, ts, nonce, writeTemp(r.body)]);
    // SDK quirk: getSignature drops the body line for a POST with an empty body, so only
    // bodies that are non-empty (POST) or empty (GET) are comparable; all cases here are.
    const sdkSig = pay.getSignature(r.method, nonce, ts, r.url, r.body);
    assert.equal(ours, pay.getAuthorization(nonce, ts, sdkSig));
    assert.equal(tool(['sign-request', keyFile, r.method, r.url, ts, nonce, writeTemp(r.body)]), sdkSig);
  });
}

test('the TV1a doc vector: SDK and wxp_tool both produce the published signature', () => {
  const tv1Key = fs.readFileSync(path.join(__dirname, '../vectors/tv1_merchant_key.pem'));
  const sdk = new Pay({ appid: APPID, mchid: MCHID, publicKey: certPem, privateKey: tv1Key, serial_no: 'X' });
  const body = '{"appid":"wxd678efh567hg6787","mchid":"1900007291","description":"Image形象店-深圳腾大-QQ公仔",' +
    '"out_trade_no":"1217752501201407033233368018","notify_url":"https://www.weixin.qq.com/wxpay/pay.php",' +
    '"amount":{"total":100,"currency":"CNY"},"payer":{"openid":"oUpF8uMuAJO_M2pxb1Q9zNjWeS6o"}}';
  const published = 'jnks4dlrPw3ZX+ozVvSK39oa0t7OMBsg83BHAwd8BRdUFiVaQNTLTvci+wURgP1OQBbKYhFGvt7iqYpDSTQkp7Uq1sltaQKyncCyrA1g88m5bsKERQfPyT0ahSwKTYJ1CAn9QiJuSJRq1QsQs07eehbU/k9BCS51jTyc1Jpsi2H77HF9f/BnjXAOP3/sPObg6V5Ee4EzwLox684hhuMuIwHo7D8KFk3LIHOKDcNI4It1aCXydFWNpNK+SG86VUDe5kwoDpw4Ulqfu9z8OFDGbDs9TCxEv8iqQzbpxOlEVoOe2kalSYM5kApQb3nZcxdUtoE0liJGW3RGUNE0t4v01A==';
  const args = ['/v3/pay/transactions/jsapi', '1554208460', '593BEC0C930BF1AFEB40B4A08C8FB242'];
  assert.equal(sdk.getSignature('POST', args[2], args[1], args[0], body), published);
  assert.equal(tool(['sign-request', path.join(__dirname, '../vectors/tv1_merchant_key.pem'), 'POST', args[0], args[1],
    args[2], writeTemp(body)]), published);
});

test('a response signed by wxp_tool passes the SDK verifySign, and an altered one fails', async () => {
  // verifySign looks keys up in Pay.certificates, filled by fetchCertificates exactly like this
  Pay.certificates[serial] = Certificate.fromPEM(certPem).publicKey.toPEM();
  const ts = String(Math.floor(Date.now() / 1000));
  const nonce = crypto.randomBytes(16).toString('hex');
  const body = '{"prepay_id":"wx26112221580621e9b071c00d9e093b0000","note":"支付"}';
  const signature = tool(['sign-response', keyFile, ts, nonce, writeTemp(body)]);
  assert.equal(await pay.verifySign({ timestamp: ts, nonce, body, serial, signature }), true);
  assert.equal(await pay.verifySign({ timestamp: ts, nonce, body: body.replace('支付', '支符'), serial, signature }), false);
  assert.equal(await pay.verifySign({ timestamp: String(Number(ts) + 1), nonce, body, serial, signature }), false);
  // and our verifier accepts it too, with the same reason names the gateway logs
  assert.equal(tool(['verify-response', certFile, serial, ts, nonce, signature, writeTemp(body), ts]), 'ok');
  const stale = tool(['verify-response', certFile, serial, ts, nonce, signature, writeTemp(body), String(Number(ts) + 300)], true);
  assert.equal(stale.status, 1);
  assert.equal(stale.out, 'stale_timestamp');
});

test('a notification resource encrypted by wxp_tool decrypts with the SDK decipher_gcm', () => {
  const apiv3Key = crypto.randomBytes(24).toString('base64').replace(/[+/]/g, 'x').slice(0, 32);
  const keyFileV3 = writeTemp(apiv3Key);
  const nonce = crypto.randomBytes(6).toString('hex');
  const plain = {
    mchid: MCHID, appid: APPID, out_trade_no: 'A1217752501201407033233368018', transaction_id: '4200000000002104083200000488',
    trade_type: 'JSAPI', trade_state: 'SUCCESS', trade_state_desc: '支付成功', success_time: '2018-06-08T10:34:56+08:00',
    payer: { openid: 'oUpF8uMuAJO_M2pxb1Q9zNjWeS6o' }, amount: { total: 100, payer_total: 100, currency: 'CNY', payer_currency: 'CNY' },
  };
  const ciphertext = tool(['encrypt-resource', keyFileV3, nonce, 'transaction', writeTemp(JSON.stringify(plain))]);
  assert.deepEqual(pay.decipher_gcm(ciphertext, 'transaction', nonce, apiv3Key), plain);
  // decipher_gcm never calls final(), so it does not check the tag; check it with node's own GCM
  const raw = Buffer.from(ciphertext, 'base64');
  const d = crypto.createDecipheriv('aes-256-gcm', apiv3Key, nonce);
  d.setAAD(Buffer.from('transaction'));
  d.setAuthTag(raw.subarray(raw.length - 16));
  const out = Buffer.concat([d.update(raw.subarray(0, raw.length - 16)), d.final()]);
  assert.equal(out.toString('utf8'), JSON.stringify(plain));
  // the other way: what WeChat Pay would send, opened by wxp_tool; a wrong AAD is refused
  const e = crypto.createCipheriv('aes-256-gcm', apiv3Key, nonce);
  e.setAAD(Buffer.from('refund'));
  const sealed = Buffer.concat([e.update('{"refund_status":"SUCCESS"}'), e.final(), e.getAuthTag()]).toString('base64');
  assert.equal(tool(['decrypt-resource', keyFileV3, nonce, 'refund', sealed]), '{"refund_status":"SUCCESS"}');
  const bad = tool(['decrypt-resource', keyFileV3, nonce, 'transaction', sealed], true);
  assert.equal(bad.status, 1);
  assert.match(bad.err, /bad_tag/);
});

test('the SDK transactions_jsapi request verifies with wxp_tool, and its paySign equals ours', async () => {
  const sent = [];
  pay.createHttp({
    post: async (url, params, headers) => {
      sent.push({ url, params, headers });
      return { status: 200, data: { prepay_id: 'wx201410272009395522657a690389285100' } };
    },
  });
  const result = await pay.transactions_jsapi({
    description: '测试商品', out_trade_no: 'A1217752501201407033233368018',
    notify_url: 'https://example.com/wechat/notify/pay', amount: { total: 1 }, payer: { openid: 'oUpF8uMuAJO_M2pxb1Q9zNjWeS6o' },
  });
  assert.equal(sent.length, 1);
  const req = sent[0];
  assert.equal(req.url, 'https://api.mch.weixin.qq.com/v3/pay/transactions/jsapi');
  // superagent sends JSON.stringify(params): the bytes the SDK signed
  const verdict = tool(['verify-authorization', certFile, 'POST', '/v3/pay/transactions/jsapi',
    writeTemp(JSON.stringify(req.params)), req.headers.Authorization], true);
  assert.equal(verdict.status, 0, verdict.err);
  assert.equal(verdict.out, 'ok');
  const tampered = tool(['verify-authorization', certFile, 'POST', '/v3/pay/transactions/jsapi',
    writeTemp(JSON.stringify({ ...req.params, amount: { total: 100 } })), req.headers.Authorization], true);
  assert.equal(tampered.status, 1);

  const p = result.data;
  assert.equal(p.appId, APPID);
  assert.equal(p.signType, 'RSA');
  assert.equal(p.package, 'prepay_id=wx201410272009395522657a690389285100');
  const ours = tool(['pay-sign', keyFile, p.appId, p.timeStamp, p.nonceStr, 'wx201410272009395522657a690389285100']);
  assert.equal(ours, p.paySign);
  const message = `${p.appId}\n${p.timeStamp}\n${p.nonceStr}\n${p.package}\n`;
  assert.equal(crypto.verify('RSA-SHA256', Buffer.from(message), certPem, Buffer.from(ours, 'base64')), true);
});

// APP pay: the SDK's transactions_app builds the OpenSDK's PayReq (appid of the mobile app,
// partnerid, prepayid, package "Sign=WXPay", noncestr, timestamp, sign). Its sign must equal
// ours (wxp_tool app-pay-sign: wxp_app_pay_sign, what wechatpay.app_pay_params uses), and the
// request it sends to /v3/pay/transactions/app must verify like any other.
test('the SDK transactions_app request verifies with wxp_tool, and its PayReq sign equals ours', async () => {
  const APP_APPID = 'wx8888888888888888';
  const appPay = new Pay({ appid: APP_APPID, mchid: MCHID, publicKey: certPem, privateKey: keyPem, serial_no: serial });
  const sent = [];
  appPay.createHttp({
    post: async (url, params, headers) => {
      sent.push({ url, params, headers });
      return { status: 200, data: { prepay_id: 'wx201410272009395522657a690389285100' } };
    },
  });
  const result = await appPay.transactions_app({
    description: '游戏道具-龙蛋', out_trade_no: 'GM1217752501201407033233368018',
    notify_url: 'https://example.com/wechat/notify/pay', amount: { total: 1800 },
  });
  assert.equal(sent.length, 1);
  const req = sent[0];
  assert.equal(req.url, 'https://api.mch.weixin.qq.com/v3/pay/transactions/app');
  assert.equal(req.params.appid, APP_APPID);
  assert.equal(req.params.payer, undefined);
  const verdict = tool(['verify-authorization', certFile, 'POST', '/v3/pay/transactions/app',
    writeTemp(JSON.stringify(req.params)), req.headers.Authorization], true);
  assert.equal(verdict.status, 0, verdict.err);

  const p = result.data;
  assert.equal(p.appid, APP_APPID);
  assert.equal(p.partnerid, MCHID);
  assert.equal(p.package, 'Sign=WXPay');
  assert.equal(p.prepayid, 'wx201410272009395522657a690389285100');
  const ours = tool(['app-pay-sign', keyFile, p.appid, p.timestamp, p.noncestr, p.prepayid]);
  assert.equal(ours, p.sign);
  const message = `${p.appid}\n${p.timestamp}\n${p.noncestr}\n${p.prepayid}\n`;
  assert.equal(crypto.verify('RSA-SHA256', Buffer.from(message), certPem, Buffer.from(ours, 'base64')), true);
  // the mini-program signature over the same fields is a different message: it must not pass as an APP sign
  const jsapi = tool(['pay-sign', keyFile, p.appid, p.timestamp, p.noncestr, p.prepayid]);
  assert.notEqual(jsapi, p.sign);
});

// fakewechat.mjs — an independent fake of WeChat Pay APIv3 (and jscode2session) for the e2e specs.
//
// Everything here is built from node:crypto and the openssl CLI only; nothing of paygate's C code
// is used, so the client under test is checked against a second implementation of the protocol
// (docs/wechatpay-v3.md sections 1, 2, 6, 8, 9).
//
//   const m = await makeMaterials();            // keys, certs, APIv3 key, app secret (files 0600)
//   const fake = await startFakeWechat(m);      // http://127.0.0.1:fake.port
//   fake.fault = { kind: 'tamper' };            // next answers are faulty until fake.fault = null
//   const n = buildNotification(m, plaintextObject, { signer: m.platA });
//
// Only 127.0.0.1 is used.

import crypto, { X509Certificate } from 'node:crypto';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { mkdtempSync, writeFileSync, readFileSync, chmodSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import http from 'node:http';

const run = promisify(execFile);

export const MCHID = '1900007291';
export const APPID = 'wxd678efh567hg6787';
export const SIG_TYPE = 'WECHATPAY2-SHA256-RSA2048';
export const PROBE = 'WECHATPAY/SIGNTEST/';

function randomAlnum(n) {
  const abc = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789';
  const b = crypto.randomBytes(n);
  return Array.from(b, (x) => abc[x % abc.length]).join('');
}

// A positive 20-byte serial without a leading zero nibble, as uppercase hex.
function randomSerial() {
  const b = crypto.randomBytes(20);
  b[0] = 0x10 + (b[0] % 0x60);
  return b.toString('hex').toUpperCase();
}

/** An RSA-2048 key and self-signed certificate made by the openssl CLI. */
async function makeIdentity(dir, name) {
  const serial = randomSerial();
  const keyFile = join(dir, `${name}_key.pem`), certFile = join(dir, `${name}_cert.pem`);
  await run('openssl', ['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', keyFile, '-out', certFile,
    '-days', '3650', '-subj', `/CN=${name}/O=paygate e2e`, '-set_serial', '0x' + serial]);
  const pubFile = join(dir, `${name}_pub.pem`);
  await run('openssl', ['pkey', '-in', keyFile, '-pubout', '-out', pubFile]);
  chmodSync(keyFile, 0o600);
  const keyPem = readFileSync(keyFile, 'utf8'), certPem = readFileSync(certFile, 'utf8');
  const x509 = new X509Certificate(certPem);
  if (x509.serialNumber.toUpperCase() !== serial) throw new Error(`serial mismatch ${x509.serialNumber} ${serial}`);
  return {
    name, serial, keyFile, certFile, pubFile, keyPem, certPem, pubPem: readFileSync(pubFile, 'utf8'),
    key: crypto.createPrivateKey(keyPem), publicKey: x509.publicKey,
  };
}

/**
 * Test material in a fresh temp dir: merchant identity, three platform identities (A, B, C:
 * C is never given to anyone), a WeChat Pay public key (pub, id PUB_KEY_ID_...), the APIv3 key
 * (exactly 32 bytes in its file) and the mini-program app secret. Secret files are mode 0600.
 */
export async function makeMaterials() {
  const dir = mkdtempSync(join(tmpdir(), 'paygate-wx-'));
  const [merchant, platA, platB, platC, pubIdent] = await Promise.all(
    ['merchant', 'platformA', 'platformB', 'platformC', 'wxpubkey'].map((n) => makeIdentity(dir, n)));
  const apiv3Key = randomAlnum(32);
  const apiv3File = join(dir, 'apiv3.key');
  writeFileSync(apiv3File, apiv3Key, { mode: 0o600 });
  const appSecret = 'sec' + crypto.randomBytes(14).toString('hex');   // 31 chars, like a real AppSecret
  const appSecretFile = join(dir, 'app_secret');
  writeFileSync(appSecretFile, appSecret + '\n', { mode: 0o600 });
  const pub = { ...pubIdent, serial: 'PUB_KEY_ID_0000000000000024101100397200000006' };
  return {
    dir, merchant, platA, platB, platC, pub, apiv3Key, apiv3File, appSecret, appSecretFile,
    cleanup: () => rmSync(dir, { recursive: true, force: true }),
  };
}

// ---- WeChat Pay's side of the crypto (section 2 and 6) ----

/** The Wechatpay-* headers of a message signed over TS\nNONCE\nBODY\n. */
export function signHeaders(body, signer, { ts = Math.floor(Date.now() / 1000), nonce = randomAlnum(32), serial = signer.serial } = {}) {
  const msg = Buffer.concat([Buffer.from(`${ts}\n${nonce}\n`), Buffer.from(body), Buffer.from('\n')]);
  const signature = crypto.sign('sha256', msg, signer.key).toString('base64');
  return {
    'Wechatpay-Timestamp': String(ts), 'Wechatpay-Nonce': nonce, 'Wechatpay-Signature': signature,
    'Wechatpay-Serial': serial, 'Wechatpay-Signature-Type': SIG_TYPE,
  };
}

/** AEAD_AES_256_GCM as WeChat Pay does it: Base64(ciphertext || 16-byte tag). */
export function encryptResource(apiv3Key, plaintext, { nonce = randomAlnum(12), aad = 'transaction' } = {}) {
  const c = crypto.createCipheriv('aes-256-gcm', Buffer.from(apiv3Key), Buffer.from(nonce));
  c.setAAD(Buffer.from(aad));
  const ct = Buffer.concat([c.update(Buffer.from(plaintext)), c.final(), c.getAuthTag()]);
  return { ciphertext: ct.toString('base64'), nonce, associated_data: aad };
}

/**
 * A payment notification: envelope JSON (key order as WeChat sends it) with the plaintext
 * object encrypted, signed by `signer`. opts: ts, nonce, serial, aad (encryption AAD),
 * envelopeAad (what the envelope claims), algorithm, mutateCiphertext(buf) (then re-signed),
 * envelope (overrides of envelope fields), rawBody (sign and send this text instead).
 */
export function buildNotification(m, plaintext, opts = {}) {
  const signer = opts.signer || m.platA;
  const enc = encryptResource(m.apiv3Key, typeof plaintext === 'string' ? plaintext : JSON.stringify(plaintext),
    { aad: opts.aad ?? 'transaction', nonce: opts.gcmNonce });
  let ciphertext = enc.ciphertext;
  if (opts.mutateCiphertext) {
    const b = Buffer.from(ciphertext, 'base64');
    opts.mutateCiphertext(b);
    ciphertext = b.toString('base64');
  }
  const envelope = {
    id: opts.id || crypto.randomUUID(),
    create_time: '2026-11-28T16:00:00+08:00',
    resource_type: 'encrypt-resource',
    event_type: opts.eventType || 'TRANSACTION.SUCCESS',
    summary: '支付成功',
    resource: {
      original_type: 'transaction', algorithm: opts.algorithm || 'AEAD_AES_256_GCM', ciphertext,
      associated_data: opts.envelopeAad ?? enc.associated_data, nonce: enc.nonce,
    },
    ...(opts.envelope || {}),
  };
  const body = opts.rawBody ?? JSON.stringify(envelope);
  const headers = signHeaders(body, signer, { ts: opts.ts, nonce: opts.nonce, serial: opts.serial });
  return { body, headers, envelope };
}

/** Verify the merchant's Authorization header exactly as WeChat Pay would; returns null or the problem. */
export function checkAuthorization(req, rawBody, m, { mchid = MCHID, nowS = Math.floor(Date.now() / 1000) } = {}) {
  const h = req.headers.authorization;
  if (!h) return 'no Authorization header';
  const scheme = 'WECHATPAY2-SHA256-RSA2048 ';
  if (!h.startsWith(scheme)) return 'HTTP头Authorization认证类型不正确';
  const fields = {};
  const rest = h.slice(scheme.length);
  const re = /\s*([a-z_]+)="([^"]*)"\s*(,|$)/gy;
  let mm, consumed = 0;
  while (consumed < rest.length && (mm = re.exec(rest))) {
    if (fields[mm[1]] !== undefined) return `duplicate ${mm[1]}`;
    fields[mm[1]] = mm[2];
    consumed = re.lastIndex;
  }
  if (consumed !== rest.length) return 'Http头Authorization值格式错误';
  const want = ['mchid', 'nonce_str', 'signature', 'serial_no', 'timestamp'];
  if (Object.keys(fields).sort().join() !== want.sort().join()) return `fields ${Object.keys(fields).join()}`;
  if (fields.mchid !== mchid) return 'mchid mismatch';
  if (fields.serial_no !== m.merchant.serial) return '商户证书序列号有误';
  if (!/^\d+$/.test(fields.timestamp) || Math.abs(nowS - Number(fields.timestamp)) > 300) return 'timestamp skew';
  if (!fields.nonce_str) return 'empty nonce';
  const msg = Buffer.concat([Buffer.from(`${req.method}\n${req.url}\n${fields.timestamp}\n${fields.nonce_str}\n`),
    rawBody, Buffer.from('\n')]);
  let ok = false;
  try { ok = crypto.verify('sha256', msg, m.merchant.publicKey, Buffer.from(fields.signature, 'base64')); } catch {}
  if (!ok) return '签名错误，验签失败';
  if (Buffer.from(fields.signature, 'base64').length !== 256) return 'signature length';
  return null;
}

/**
 * The fake WeChat Pay API and jscode2session endpoint.
 *   fake.requests     every request: {method, url, headers, body (string), auth: null | problem}
 *   fake.fault        null or {kind, ...}: applied to every 2xx answer of /v3 (see answer())
 *   fake.signer       identity signing answers (default platA)
 *   fake.certDownload {certs: [identity...], signer, tamper?, aad?, raw?} for GET /v3/certificates
 *   fake.expectSerial override the merchant serial the fake accepts (to force SIGN_ERROR)
 */
export async function startFakeWechat(m) {
  const fake = {
    requests: [], fault: null, signer: m.platA, certDownload: null, expectSerial: null, loginDelayMs: 0,
    reset() { this.fault = null; this.signer = m.platA; this.certDownload = null; this.expectSerial = null; },
    count(prefix) { return this.requests.filter((r) => r.url.startsWith(prefix)).length; },
    last(prefix = '/') { return [...this.requests].reverse().find((r) => r.url.startsWith(prefix)); },
  };
  const sockets = new Set();

  function sendJson(res, status, obj, headers = {}) {
    const body = obj === undefined ? '' : JSON.stringify(obj);
    res.writeHead(status, { ...(body ? { 'Content-Type': 'application/json' } : {}), 'Request-ID': 'REQ-' + randomAlnum(12), ...headers });
    res.end(body);
  }

  // A 2xx answer, signed (or faulted as fake.fault says).
  function answer(res, status, obj) {
    const f = fake.fault || {};
    const body = obj === undefined ? '' : JSON.stringify(obj);
    if (f.kind === 'http500') return sendJson(res, 500, { code: 'SYSTEM_ERROR', message: '系统错误' });
    if (f.kind === 'http400') return sendJson(res, 400, { code: 'PARAM_ERROR', message: '参数错误: description 过长' });
    if (f.kind === 'http404') return sendJson(res, 404, { code: 'ORDER_NOT_EXIST', message: '订单不存在' });
    let ts = Math.floor(Date.now() / 1000);
    if (f.kind === 'stale') ts += f.skew;
    const signer = f.kind === 'unknown_serial' ? m.platC : fake.signer;
    const signedBody = f.kind === 'sign_other_body' ? f.body : body;
    const h = signHeaders(signedBody, signer, { ts });
    let sent = body;
    if (f.kind === 'tamper') sent = body.replace(f.from, f.to);
    if (f.kind === 'probe') h['Wechatpay-Signature'] = PROBE + h['Wechatpay-Signature'];
    if (f.kind === 'missing') delete h[f.header];
    if (f.kind === 'sigtype') h['Wechatpay-Signature-Type'] = 'WECHATPAY2-SM2-WITH-SM3';
    if (f.kind === 'bad_header') h['Wechatpay-Timestamp'] = '16x0000000';
    const headers = { ...h, 'Request-ID': 'REQ-' + randomAlnum(12) };
    if (sent) headers['Content-Type'] = 'application/json';
    res.writeHead(status, headers);
    res.end(sent);
  }

  function certificatesBody() {
    const d = fake.certDownload;
    if (d.raw !== undefined) return d.raw;
    return JSON.stringify({
      data: d.certs.map((c) => ({
        serial_no: c.serial, effective_time: '2026-01-01T00:00:00+08:00', expire_time: '2031-01-01T00:00:00+08:00',
        encrypt_certificate: { algorithm: 'AEAD_AES_256_GCM', original_type: 'certificate',
          ...encryptResource(m.apiv3Key, c.certPem, { aad: d.aad ?? 'certificate' }),
          ...(d.envelopeAad !== undefined ? { associated_data: d.envelopeAad } : {}) },
      })),
    });
  }

  function route(req, res, raw) {
    const u = new URL(req.url, 'http://127.0.0.1');
    const body = raw.toString('utf8');
    let json;
    try { json = body ? JSON.parse(body) : undefined; } catch { json = undefined; }
    const p = u.pathname;
    if (req.method === 'POST' && p === '/v3/pay/transactions/jsapi') {
      if (!json || json.mchid !== MCHID) return sendJson(res, 400, { code: 'PARAM_ERROR', message: 'http header中的mchid与post payload中的mchid不匹配' });
      if (typeof json.out_trade_no !== 'string' || !Number.isInteger(json.amount?.total))
        return sendJson(res, 400, { code: 'PARAM_ERROR', message: '输入源"/body/out_trade_no"或"/body/amount/total"映射到值字段类型错误' });
      return answer(res, 200, { prepay_id: 'wx' + json.out_trade_no.replace(/[^0-9A-Za-z]/g, '') + 'PREPAY' });
    }
    let mm;
    if (req.method === 'GET' && (mm = p.match(/^\/v3\/pay\/transactions\/(out-trade-no|id)\/([^/]+)$/))) {
      if (u.searchParams.get('mchid') !== MCHID) return sendJson(res, 400, { code: 'PARAM_ERROR', message: 'mchid missing' });
      const key = decodeURIComponent(mm[2]);
      return answer(res, 200, {
        appid: APPID, mchid: MCHID, out_trade_no: mm[1] === 'id' ? 'ORDER0001' : key,
        transaction_id: mm[1] === 'id' ? key : '4200000000202611280000000001', trade_type: 'JSAPI',
        trade_state: 'SUCCESS', trade_state_desc: '支付成功', amount: { total: 1200, payer_total: 1200, currency: 'CNY', payer_currency: 'CNY' },
      });
    }
    if (req.method === 'POST' && (mm = p.match(/^\/v3\/pay\/transactions\/out-trade-no\/([^/]+)\/close$/))) {
      if (!json || json.mchid !== MCHID) return sendJson(res, 400, { code: 'PARAM_ERROR', message: 'mchid missing' });
      return answer(res, 204, undefined);
    }
    if (req.method === 'POST' && p === '/v3/refund/domestic/refunds') {
      return answer(res, 200, {
        refund_id: '50000000382019052709732678859', out_refund_no: json.out_refund_no, out_trade_no: json.out_trade_no,
        transaction_id: '4200000000202611280000000001', channel: 'ORIGINAL', status: 'PROCESSING',
        amount: { total: json.amount.total, refund: json.amount.refund, currency: 'CNY' },
      });
    }
    if (req.method === 'GET' && (mm = p.match(/^\/v3\/refund\/domestic\/refunds\/([^/]+)$/))) {
      return answer(res, 200, { out_refund_no: decodeURIComponent(mm[1]), status: 'SUCCESS', amount: { total: 1200, refund: 100, currency: 'CNY' } });
    }
    if (req.method === 'GET' && p === '/v3/certificates' && fake.certDownload) {
      const d = fake.certDownload;
      const b = certificatesBody();
      const h = signHeaders(d.signedBody ?? b, d.signer, { ts: Math.floor(Date.now() / 1000) + (d.skew || 0) });
      if (d.probe) h['Wechatpay-Signature'] = PROBE + h['Wechatpay-Signature'];
      res.writeHead(d.status || 200, { ...h, 'Content-Type': 'application/json', 'Request-ID': 'REQ-' + randomAlnum(12) });
      return res.end(b);
    }
    if (req.method === 'GET' && p.startsWith('/v3/')) {
      return answer(res, 200, { echo: req.url });
    }
    return sendJson(res, 404, { code: 'NOT_FOUND', message: 'no such API in the fake' });
  }

  function login(req, res, u) {
    const q = u.searchParams;
    const code = q.get('js_code') || '';
    const reply = (obj) => { res.writeHead(200, { 'Content-Type': 'text/plain' }); res.end(JSON.stringify(obj)); };
    if (q.get('appid') !== APPID || q.get('secret') !== m.appSecret || q.get('grant_type') !== 'authorization_code')
      return reply({ errcode: 40013, errmsg: 'invalid appid or secret' });
    const go = () => {
      const e = code.match(/^e(-?\d+)$/);
      if (e) return reply({ errcode: Number(e[1]), errmsg: `error ${e[1]}, rid: 6543` });
      if (code === 'notjson') { res.writeHead(502); return res.end('<html>bad gateway</html>'); }
      const out = { session_key: 'SESSIONKEYtZ7x1vV0/aQ==', openid: 'oUpF8uMuAJO_M2pxb1Q9zNjWeS6o' };
      if (code.startsWith('union')) out.unionid = 'o6_bmasdasdsad6_2sgVt7hMZOPfL';
      if (code.startsWith('zero')) out.errcode = 0;
      return reply(out);
    };
    if (code.startsWith('slow')) setTimeout(go, 1500); else go();
  }

  const server = http.createServer((req, res) => {
    const chunks = [];
    req.on('data', (c) => chunks.push(c));
    req.on('end', () => {
      const raw = Buffer.concat(chunks);
      const u = new URL(req.url, 'http://127.0.0.1');
      const rec = { method: req.method, url: req.url, headers: req.headers, body: raw.toString('utf8'), auth: null };
      fake.requests.push(rec);
      if (u.pathname === '/sns/jscode2session') return login(req, res, u);
      const mm = { ...m, merchant: { ...m.merchant, serial: fake.expectSerial || m.merchant.serial } };
      rec.auth = checkAuthorization(req, raw, mm);
      if (!req.headers.accept || !req.headers['user-agent'])
        return sendJson(res, 400, { code: 'INVALID_REQUEST', message: 'Http头缺少Accept或User-Agent' });
      if (rec.auth) {
        return sendJson(res, 401, { code: 'SIGN_ERROR', message: '错误的签名，验签失败',
          detail: { field: 'signature', location: 'authorization', detail: { issue: rec.auth } } });
      }
      const f = fake.fault;
      if (f && f.kind === 'delay') setTimeout(() => { if (!res.destroyed) route(req, res, raw); }, f.ms);
      else route(req, res, raw);
    });
  });
  server.on('connection', (s) => { sockets.add(s); s.on('close', () => sockets.delete(s)); });
  await new Promise((r) => server.listen(0, '127.0.0.1', r));
  fake.port = server.address().port;
  fake.url = `http://127.0.0.1:${fake.port}`;
  fake.close = () => new Promise((r) => { for (const s of sockets) s.destroy(); server.close(r); });
  return fake;
}

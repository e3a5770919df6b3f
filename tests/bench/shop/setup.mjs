// setup.mjs — what the shop benchmark needs before wrk runs, made through real HTTP:
//   node setup.mjs SANDBOX_URL GATEWAY_URL KEYS_DIR USERS TOKENS_FILE NOTIFICATIONS NOTIFY_FILE
// logs USERS users in (a wx.login code from the sandbox, then POST /api/login) and writes their
// session tokens, one a line; puts NOTIFICATIONS orders in PAYING (the bench hook) and writes, for
// each, a payment notification signed with the sandbox's TEST platform key and encrypted with its
// APIv3 key, as WeChat Pay would send it: "timestamp \t nonce \t signature \t serial \t body".
import crypto from 'node:crypto';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

const [sandbox, gateway, keys, users, tokensFile, count, notifyFile] = process.argv.slice(2);
const MCHID = '1900007291';
const APPID = 'wxd678efh567hg6787';

async function post(base, path, body) {
  const r = await fetch(base + path, {
    method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify(body),
  });
  const json = await r.json();
  if (!r.ok) throw new Error(`${path}: ${r.status} ${JSON.stringify(json)}`);
  return json;
}

async function login(i) {
  const openid = `oBenchUser${String(i).padStart(18, '0')}`;
  const { code } = await post(sandbox, '/sandbox/login-code', { openid });
  return (await post(gateway, '/api/login', { code })).token;
}

const tokens = [];
for (let i = 0; i < Number(users); i += 50) {
  const batch = [];
  for (let j = i; j < Math.min(i + 50, Number(users)); j++) batch.push(login(j));
  tokens.push(...await Promise.all(batch));
}
writeFileSync(tokensFile, tokens.join('\n') + '\n');

const orders = [];
for (let first = 0; first < Number(count); first += 500) {
  const n = Math.min(500, Number(count) - first);
  orders.push(...(await post(gateway, '/bench/paying', { first, n })).orders);
}

const key = crypto.createPrivateKey(readFileSync(join(keys, 'platform_key.pem')));
const serial = readFileSync(join(keys, 'platform_serial'), 'utf8').trim();
const apiv3 = Buffer.from(readFileSync(join(keys, 'apiv3_key'), 'utf8').trim());
const ts = String(Math.floor(Date.now() / 1000));
const lines = orders.map((o, i) => {
  const tx = {
    mchid: MCHID, appid: APPID, out_trade_no: o.order_no, transaction_id: `42000${String(i).padStart(23, '0')}`,
    trade_type: 'JSAPI', trade_state: 'SUCCESS', trade_state_desc: '支付成功', bank_type: 'OTHERS', attach: '',
    success_time: new Date().toISOString().replace(/\.\d+Z$/, '+00:00'), payer: { openid: o.openid },
    amount: { total: o.amount, payer_total: o.amount, currency: 'CNY', payer_currency: 'CNY' },
  };
  const gcmNonce = crypto.randomBytes(6).toString('hex');
  const c = crypto.createCipheriv('aes-256-gcm', apiv3, Buffer.from(gcmNonce));
  c.setAAD(Buffer.from('transaction'));
  const ct = Buffer.concat([c.update(JSON.stringify(tx)), c.final(), c.getAuthTag()]).toString('base64');
  const body = JSON.stringify({
    id: crypto.randomUUID(), create_time: tx.success_time, resource_type: 'encrypt-resource',
    event_type: 'TRANSACTION.SUCCESS', summary: '支付成功',
    resource: { original_type: 'transaction', algorithm: 'AEAD_AES_256_GCM', ciphertext: ct,
      associated_data: 'transaction', nonce: gcmNonce },
  });
  const nonce = crypto.randomBytes(16).toString('hex');
  const sig = crypto.sign('sha256', Buffer.from(`${ts}\n${nonce}\n${body}\n`), key).toString('base64');
  return `${ts}\t${nonce}\t${sig}\t${serial}\t${body}`;
});
writeFileSync(notifyFile, lines.join('\n') + '\n');
console.log(`setup: ${tokens.length} users logged in, ${lines.length} signed notifications for PAYING orders`);

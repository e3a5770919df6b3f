// Outbound TLS: paygate's own policy (TLS 1.2 at least, https:// to WeChat Pay, a ca_file that is
// the whole trust store), connections kept and shared, and failure reasons that say what
// happened. WeChat Pay is the sandbox behind a TLS front (tests/e2e/tlsfront.mjs) whose
// certificates come from a private CA this file makes with the openssl command.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFile, execFileSync } from 'node:child_process';
import { promisify } from 'node:util';
import { mkdtempSync, mkdirSync, writeFileSync, copyFileSync, rmSync, chmodSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import net from 'node:net';
import { startGateway, runPaygate, eventually, sleep, BIN } from './harness.mjs';
import { startWorld, freePort, MCHID, APPID } from './shopenv.mjs';
import { makePki, startTlsFront } from './tlsfront.mjs';

const run = promisify(execFile);
let world, pki, tmp;
const cleanups = [];

before(async () => {
  tmp = mkdtempSync(join(tmpdir(), 'paygate-tls-'));
  pki = makePki(join(tmp, 'pki'));
  world = await startWorld();
});

after(async () => {
  for (const c of cleanups.reverse()) await c();
  if (world) await world.stop();
  rmSync(tmp, { recursive: true, force: true });
});

async function front(opts) {
  const f = await startTlsFront(opts);
  cleanups.push(() => f.close());
  return f;
}

async function gateway(opts) {
  const g = await startGateway(opts);
  cleanups.push(() => g.stop());
  return g;
}

async function metrics(g) {
  return (await g.get('/metrics')).body;
}

function metric(text, series) {
  const line = text.split('\n').find((l) => l.startsWith(series + ' '));
  return line === undefined ? 0 : Number(line.split(' ').pop());
}

// ---- the shop over TLS ----

async function shopBehind(f, { fetch = {}, wechatpay = {} } = {}) {
  const gw = await world.startShop({}, {
    config: { fetch: { timeout_ms: 3000, ca_file: pki.ca, ...fetch } },
    wechatpay: { base_url: f.url, login_base_url: f.url, sandbox: undefined, ...wechatpay },
  });
  const r = await gw.put('/admin/products/1', { name: 'Tea', price: 3800, stock: 100 });
  assert.equal(r.status, 200, r.body);
  return gw;
}

async function purchase(gw) {
  const user = await world.login(gw);
  const o = await gw.post('/api/orders', { items: [{ product_id: 1, qty: 1 }] }, { headers: user.auth });
  assert.equal(o.status, 201, o.body);
  const pay = await gw.post(`/api/orders/${o.json.order_no}/pay`, undefined, { headers: user.auth });
  assert.equal(pay.status, 200, pay.body);
  await world.userPays(user, pay.json);
  await eventually(async () => (await gw.get(`/api/orders/${o.json.order_no}`, { headers: user.auth })).json.status === 'PAID', 8000);
}

test('a whole purchase over TLS 1.3 and HTTP/2, trusting only the configured CA', async () => {
  const f = await front({ ...pki.certs.good, target: world.sandbox.port, minVersion: 'TLSv1.3' });
  const gw = await shopBehind(f);
  await purchase(gw);
  assert.deepEqual(Object.keys(f.stats.versions), ['TLSv1.3']);
  assert.deepEqual(Object.keys(f.stats.alpn), ['h2']);
  // login and prepay always go through the front; a status query only when the notification is late
  assert.ok(f.stats.requests >= 2, 'login and prepay went through the front');
  const m = await metrics(gw);
  assert.equal(metric(m, 'paygate_upstream_tls_handshakes_total'), f.stats.connections);
  assert.equal(metric(m, 'paygate_upstream_connections_total'), f.stats.tcp);
  assert.ok(f.stats.connections < f.stats.requests, 'calls shared a connection');
});

test('a whole purchase over TLS 1.2 and HTTP/1.1', async () => {
  const f = await front({ ...pki.certs.good, target: world.sandbox.port, h2: false, maxVersion: 'TLSv1.2' });
  const gw = await shopBehind(f);
  await purchase(gw);
  assert.deepEqual(Object.keys(f.stats.versions), ['TLSv1.2']);
  assert.ok(!f.stats.alpn.h2);
});

test('fetch.tls_min_version = "1.3" refuses a server that stops at TLS 1.2', async () => {
  const f = await front({ ...pki.certs.good, target: world.sandbox.port, h2: false, maxVersion: 'TLSv1.2' });
  const gw = await shopBehind(f, { fetch: { tls_min_version: '1.3' } });
  const code = (await world.sandbox.post('/sandbox/login-code', { openid: 'oTls13Only' })).json.code;
  const r = await gw.post('/api/login', { code });
  assert.equal(r.status, 502, r.body);
  assert.equal(f.stats.connections, 0);
  assert.match(gw.log, /outbound https:\/\/localhost:\d+\/sns\/jscode2session failed: tls: /);
  assert.doesNotMatch(gw.log, /secret=/, 'the query string (the AppSecret) is not logged');
});

// ---- refused certificates: a 502 per call, the order kept, the reason `tls`, an error log line ----

test('a certificate for another name, expired, self-signed or from an unknown CA: refused as `tls`, order kept', async () => {
  for (const [name, certs] of Object.entries({ wrongName: pki.certs.wrongName, expired: pki.certs.expired,
    selfSigned: pki.certs.selfSigned, unknownCa: pki.certs.unknownCa })) {
    const f = await front({ ...certs, target: world.sandbox.port });
    const gw = await shopBehind(f, { wechatpay: { login_base_url: `http://127.0.0.1:${world.sandbox.port}`, sandbox: true } });
    const user = await world.login(gw);           // login goes to the sandbox directly
    const o = await gw.post('/api/orders', { items: [{ product_id: 1, qty: 1 }] }, { headers: user.auth });
    assert.equal(o.status, 201, o.body);
    const pay = await gw.post(`/api/orders/${o.json.order_no}/pay`, undefined, { headers: user.auth });
    assert.equal(pay.status, 502, `${name}: ${pay.body}`);
    assert.equal(pay.json.error, 'upstream_error');
    const mine = await gw.get(`/api/orders/${o.json.order_no}`, { headers: user.auth });
    assert.equal(mine.json.status, 'CREATED', `${name}: the order is kept, payable later`);
    assert.equal((await gw.get('/api/products')).status, 200, 'other requests flow');
    assert.equal(f.stats.requests, 0, `${name}: nothing was sent to the impostor`);
    const m = await metrics(gw);                  // (the prepay may have been asked again: each counts)
    assert.ok(metric(m, 'paygate_wechatpay_calls_total{result="tls"}') >= 1, name);
    assert.equal(metric(m, 'paygate_upstream_failures_total{reason="tls"}'),
      metric(m, 'paygate_wechatpay_calls_total{result="tls"}'), name);
    assert.equal(metric(m, 'paygate_wechatpay_calls_total{result="network"}'), 0, name);
    assert.match(gw.log, /level=error .*outbound https:\/\/localhost:\d+\/v3\/pay\/transactions\/jsapi failed: certificate refused, tls: /, name);
    assert.match(gw.log, /prepay failed.*reason=tls|"reason":"tls"|reason="tls"/, `${name}: the script saw reason tls`);
  }
});

// ---- what scripts receive: timeout, connect, tls, network ----

const REASON_SCRIPT = {
  'init.lua': `
local app = require "paygate"
local wechatpay = require "wechatpay"
app.get("/query", function(req)
  local res, why, msg = wechatpay.query("TLS0001")
  if res then return 200, { status = res.status } end
  return 502, { reason = why, message = msg }
end)
`,
};

async function wxGateway(baseUrl, extra = {}) {
  const k = world.k;
  return gateway({
    scripts: REASON_SCRIPT,
    config: {
      watch: false, fetch: { timeout_ms: 1500, connect_timeout_ms: 700, ca_file: pki.ca },
      wechatpay: { mchid: MCHID, appid: APPID, merchant_cert_file: k('merchant_cert.pem'),
        private_key_file: k('merchant_key.pem'), apiv3_key_file: k('apiv3_key'),
        platform_cert_files: [k('platform_cert.pem')], download_certificates: false,
        base_url: baseUrl, login_base_url: baseUrl, ...extra },
    },
  });
}

test('scripts are told timeout, connect, tls or network, each counted in /metrics', async () => {
  const silent = net.createServer(() => {});            // accepts, never says a word: a silent handshake
  const hangup = net.createServer((s) => s.end('\u0000\u0001 not http\r\n\r\n'));
  for (const s of [silent, hangup]) {
    const open = new Set();
    s.on('connection', (c) => { open.add(c); c.on('close', () => open.delete(c)); });
    await new Promise((r) => s.listen(0, '127.0.0.1', r));
    cleanups.push(() => new Promise((r) => { for (const c of open) c.destroy(); s.close(() => r()); }));
  }
  const self = await front({ ...pki.certs.selfSigned, target: world.sandbox.port });
  const cases = [
    ['timeout', `https://localhost:${silent.address().port}`, {}],
    ['connect', `https://localhost:${await freePort()}`, {}],
    ['tls', self.url, {}],
    ['network', `http://127.0.0.1:${hangup.address().port}`, { sandbox: true }],
  ];
  await Promise.all(cases.map(async ([reason, url, extra]) => {
    const gw = await wxGateway(url, extra);
    const r = await gw.get('/query');
    assert.equal(r.status, 502, r.body);
    assert.equal(r.json.reason, reason, `${url}: ${r.json.message}`);
    assert.ok(r.json.message.startsWith(reason + ': '), r.json.message);
    const m = await metrics(gw);
    assert.equal(metric(m, `paygate_wechatpay_calls_total{result="${reason}"}`), 1);
    assert.equal(metric(m, `paygate_upstream_failures_total{reason="${reason}"}`), 1);
    assert.match(gw.log, new RegExp(`level=${reason === 'tls' ? 'error' : 'warn'} .*outbound .* failed: `));
  }));
});

// ---- the TLS policy is paygate's, not the system's ----

const CALL_SCRIPT = {
  'init.lua': `
local app = require "paygate"
app.post("/call", function(req)
  local spec = app.read_json(req)
  local res, err = http.request{ url = spec.url }
  if not res then return 502, { error = err } end
  return 200, { status = res.status, body = res.body }
end)
`,
};

test('a TLS 1.1-only server is refused even when OPENSSL_CONF allows TLS 1.0 and weak ciphers', async () => {
  const conf = join(tmp, 'permissive.cnf');
  writeFileSync(conf, 'openssl_conf = openssl_init\n[openssl_init]\nssl_conf = ssl_sect\n[ssl_sect]\n' +
    'system_default = system_default_sect\n[system_default_sect]\nMinProtocol = TLSv1\nCipherString = DEFAULT@SECLEVEL=0\n');
  const old = await front({ ...pki.certs.good, h2: false, minVersion: 'TLSv1.1', maxVersion: 'TLSv1.1',
    ciphers: 'DEFAULT@SECLEVEL=0', handler: (req, res) => { res.writeHead(200); res.end('spoke TLS 1.1'); } });
  // The control: under this OPENSSL_CONF, libcurl left to the system's policy does speak TLS 1.1.
  const { stdout } = await run('curl', ['-sS', '--cacert', pki.ca, `${old.url}/`],
    { env: { ...process.env, OPENSSL_CONF: conf } });
  assert.equal(stdout, 'spoke TLS 1.1');
  assert.equal(old.stats.versions['TLSv1.1'], 1);

  const gw = await gateway({ scripts: CALL_SCRIPT, config: { fetch: { ca_file: pki.ca } }, env: { OPENSSL_CONF: conf } });
  const r = await gw.post('/call', { url: `${old.url}/` });
  assert.equal(r.status, 502, r.body);
  assert.match(r.json.error, /^tls: /);
  assert.equal(old.stats.versions['TLSv1.1'], 1, 'paygate never completed a TLS 1.1 handshake');
});

test('fetch.ca_file replaces the system CAs: a server the system trusts is refused', async (t) => {
  // The system's trust store (/etc/ssl/certs) is replaced, for the gateway's process only, by one
  // holding the other CA: a private mount namespace, so nothing outside the test sees it.
  const store = join(tmp, 'system-store');
  mkdirSync(store, { recursive: true });
  copyFileSync(pki.otherCa, join(store, 'ca-certificates.crt'));
  const hash = execFileSync('openssl', ['x509', '-hash', '-noout', '-in', pki.otherCa]).toString().trim();
  copyFileSync(pki.otherCa, join(store, `${hash}.0`));
  const wrapper = join(tmp, 'paygate-in-ns.sh');
  writeFileSync(wrapper, `#!/bin/sh\nexec unshare ${process.getuid() === 0 ? '' : '--map-root-user '}--mount ` +
    `sh -c 'mount --bind "$0" /etc/ssl/certs && exec "$@"' "${store}" "${BIN}" "$@"\n`);
  chmodSync(wrapper, 0o755);
  try {
    execFileSync(wrapper, ['--version'], { stdio: 'ignore' });
  } catch {
    t.skip('no private mount namespace here (unshare --mount refused): cannot stage a system CA');
    return;
  }
  const f = await front({ ...pki.certs.unknownCa, handler: (req, res) => { res.writeHead(200); res.end('trusted'); } });
  const system = await gateway({ bin: wrapper, scripts: CALL_SCRIPT });
  let r = await system.post('/call', { url: `${f.url}/` });
  assert.equal(r.status, 200, `the control: without ca_file the staged system store is used: ${r.body}`);
  const own = await gateway({ bin: wrapper, scripts: CALL_SCRIPT, config: { fetch: { ca_file: pki.ca } } });
  r = await own.post('/call', { url: `${f.url}/` });
  assert.equal(r.status, 502, r.body);
  assert.match(r.json.error, /^tls: .*certificate/);
});

// ---- connections worth keeping ----

test('a reconnect resumes the TLS session (TLS 1.3 and TLS 1.2)', async () => {
  for (const maxVersion of ['TLSv1.3', 'TLSv1.2']) {
    const f = await front({ ...pki.certs.good, h2: false, close: true, maxVersion,
      handler: (req, res) => { res.writeHead(200, { connection: 'close' }); res.end('ok'); } });
    const gw = await gateway({ scripts: CALL_SCRIPT, config: { fetch: { ca_file: pki.ca } } });
    for (let i = 0; i < 3; i++) {
      const r = await gw.post('/call', { url: `${f.url}/` });
      assert.equal(r.status, 200, r.body);
    }
    assert.equal(f.stats.connections, 3, `${maxVersion}: each call reconnected (Connection: close)`);
    // TLS 1.2 resumes by session id every time. A TLS 1.3 ticket is spent by its resumption and
    // this front sends no fresh one on a resumed connection, so there every other reconnect resumes.
    assert.equal(f.stats.resumed, maxVersion === 'TLSv1.2' ? 2 : 1, `${maxVersion}: reconnects resumed the session`);
    assert.equal(metric(await metrics(gw), 'paygate_upstream_tls_handshakes_total'), 3);
  }
});

test('a kept connection is reused, until it has been idle for fetch.keepalive_s; the reconnect resumes', async () => {
  const f = await front({ ...pki.certs.good, h2: false, maxVersion: 'TLSv1.2',
    handler: (req, res) => { res.writeHead(200); res.end('ok'); } });
  const gw = await gateway({ scripts: CALL_SCRIPT, config: { fetch: { ca_file: pki.ca, keepalive_s: 1 } } });
  const call = async () => assert.equal((await gw.post('/call', { url: `${f.url}/` })).status, 200);
  await call();
  await call();
  assert.equal(f.stats.tcp, 1, 'back to back: one connection');
  await sleep(2100);                                    // idle for more than 1 s
  await call();
  assert.equal(f.stats.tcp, 2, 'after the idle limit: a new connection');
  assert.equal(f.stats.resumed, 1, 'its handshake resumed the session');
});

async function burst(f, n, config) {
  const gw = await gateway({ scripts: CALL_SCRIPT, config: { fetch: { ca_file: pki.ca, ...config } } });
  const results = await Promise.all(Array.from({ length: n }, () => gw.post('/call', { url: `${f.url}/` })));
  assert.deepEqual(results.map((r) => r.status), Array(n).fill(200), results.find((r) => r.status !== 200)?.body);
  assert.equal(f.stats.requests, n);
  return gw;
}

test('50 concurrent calls over HTTP/1.1 open at most fetch.max_host_connections connections', async () => {
  const f = await front({ ...pki.certs.good, h2: false, delayMs: 100,
    handler: (req, res) => { res.writeHead(200); res.end('ok'); } });
  const gw = await burst(f, 50, { max_host_connections: 4 });
  assert.ok(f.stats.tcp <= 4, `opened ${f.stats.tcp} connections`);
  assert.ok(f.stats.maxOpen <= 4);
  assert.equal(metric(await metrics(gw), 'paygate_upstream_connections_total'), f.stats.tcp);
});

test('50 concurrent calls over HTTP/2 share one connection', async () => {
  const f = await front({ ...pki.certs.good, delayMs: 100, handler: (req, res) => { res.writeHead(200); res.end('ok'); } });
  await burst(f, 50, {});
  assert.equal(f.stats.tcp, 1);
  assert.deepEqual(f.stats.alpn, { h2: 1 });
});

// ---- what --check and start-up refuse ----

function wxTable(extra) {
  const k = world.k;
  return {
    mchid: MCHID, appid: APPID, merchant_cert_file: k('merchant_cert.pem'), private_key_file: k('merchant_key.pem'),
    apiv3_key_file: k('apiv3_key'), platform_cert_files: [k('platform_cert.pem')], download_certificates: false,
    ...extra,
  };
}

function lua(v) {
  if (v === undefined) return 'nil';
  if (typeof v !== 'object') return JSON.stringify(v);
  if (Array.isArray(v)) return '{' + v.map(lua).join(', ') + '}';
  return '{' + Object.entries(v).map(([k, x]) => `${k} = ${lua(x)}`).join(', ') + '}';
}

let nconf = 0;
async function check(fields) {
  const dir = join(tmp, `check-${nconf++}`);
  mkdirSync(join(dir, 'scripts'), { recursive: true });
  writeFileSync(join(dir, 'scripts', 'init.lua'), 'local app = require "paygate"\n');
  const conf = join(dir, 'paygate.conf.lua');
  writeFileSync(conf, Object.entries({ scripts: join(dir, 'scripts'), lualib: join(process.cwd(), 'lualib'), ...fields })
    .map(([k, v]) => `${k} = ${lua(v)}`).join('\n') + '\n');
  return runPaygate(['--config', conf, '--check']);
}

test('--check refuses http:// upstreams without the sandbox mark, and a non-local one even with it', async () => {
  let r = await check({ wechatpay: wxTable({ base_url: 'http://127.0.0.1:8090' }) });
  assert.notEqual(r.code, 0);
  assert.match(r.stderr, /wechatpay\.base_url is 'http:\/\/127\.0\.0\.1:8090': signed calls and the AppSecret would travel in clear text/);
  r = await check({ wechatpay: wxTable({ login_base_url: 'http://127.0.0.1:8090' }) });
  assert.notEqual(r.code, 0);
  assert.match(r.stderr, /wechatpay\.login_base_url is 'http:/);
  r = await check({ wechatpay: wxTable({ base_url: 'http://pay.example.com', sandbox: true }) });
  assert.notEqual(r.code, 0);
  assert.match(r.stderr, /allowed only to a local sandbox on a loopback address/);
  r = await check({ wechatpay: wxTable({ base_url: 'http://127.0.0.1:8090', sandbx: true }) });
  assert.match(r.stderr, /unknown key 'wechatpay\.sandbx' \(did you mean 'wechatpay\.sandbox'\?\)/, 'a misspelt mark is named');
  r = await check({ wechatpay: wxTable({ base_url: 'ftp://127.0.0.1' }) });
  assert.match(r.stderr, /wechatpay\.base_url must start with https:\/\//);
  for (const host of ['127.0.0.1.example.com', 'localhost.example.com', '[::1].example.com', '128.0.0.1']) {
    r = await check({ wechatpay: wxTable({ base_url: `http://${host}:8090`, sandbox: true }) });
    assert.match(r.stderr, /allowed only to a local sandbox on a loopback address/, host);
  }
  r = await check({ wechatpay: wxTable({ base_url: 'http://[::1]:8090', sandbox: true }) });
  assert.equal(r.code, 0, r.stderr);
  r = await check({ wechatpay: wxTable({ base_url: 'http://127.0.0.1:8090', login_base_url: 'http://localhost:8090', sandbox: true }) });
  assert.equal(r.code, 0, r.stderr);
  assert.match(r.stderr, /level=warn .*wechatpay\.sandbox: calls go to http:\/\/127\.0\.0\.1:8090 and http:\/\/localhost:8090 without TLS/);
  r = await check({ wechatpay: wxTable({}) });
  assert.equal(r.code, 0, 'the default https:// endpoints pass');
  assert.doesNotMatch(r.stderr, /wechatpay\.sandbox/);
  // and start-up refuses the same
  await assert.rejects(startGateway({ scripts: REASON_SCRIPT,
    config: { wechatpay: wxTable({ base_url: 'http://127.0.0.1:8090' }) }, expectExit: true }), /clear text/);
});

test('--check refuses a fetch.ca_file that is missing, not PEM or holds no CA, and a TLS floor under 1.2', async () => {
  const cases = [
    [join(tmp, 'nope.pem'), /fetch\.ca_file: cannot open .*nope\.pem/],
    [pki.notPem, /fetch\.ca_file: .*not-a-bundle\.pem holds no PEM certificate/],
    [pki.leafOnly, /fetch\.ca_file: .*good\.pem holds 1 certificate but no CA certificate/],
  ];
  for (const [file, why] of cases) {
    const r = await check({ fetch: { ca_file: file } });
    assert.notEqual(r.code, 0, file);
    assert.match(r.stderr, why);
  }
  assert.equal((await check({ fetch: { ca_file: pki.ca } })).code, 0);
  const r = await check({ fetch: { tls_min_version: '1.1' } });
  assert.notEqual(r.code, 0);
  assert.match(r.stderr, /fetch\.tls_min_version must be "1\.2" or "1\.3"/);
  assert.equal((await check({ fetch: { tls_min_version: '1.3', max_host_connections: 8, keepalive_s: 30 } })).code, 0);
});

// Outbound HTTP from scripts: http.request suspends only its coroutine, errors come back as
// values, limits hold, and a client that goes away releases the upstream call.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import net from 'node:net';
import { createHash } from 'node:crypto';
import { readdirSync } from 'node:fs';
import { startGateway, startSlowServer, eventually, request, sleep } from './harness.mjs';

// A handler that forwards whatever the test describes and reports the outcome as JSON.
const scripts = {
  'init.lua': `
local app = require "paygate"

local function kind_of(err) return (err:match("^(%a[%w_]*):")) end

app.post("/call", function(req)
  local spec = app.read_json(req)
  local res, err = http.request{
    method = spec.method, url = spec.url, headers = spec.headers, body = spec.body,
    timeout_ms = spec.timeout_ms, connect_timeout_ms = spec.connect_timeout_ms,
  }
  if not res then
    local kind = kind_of(err)
    return kind == "timeout" and 504 or 502, { error = kind, message = err }
  end
  return 200, { status = res.status, headers = res.headers, body = res.body }
end)

-- every byte value, NUL included, goes out as the body
app.post("/binary", function(req)
  local t = {}
  for i = 0, 255 do t[#t + 1] = string.char(i) end
  local body = table.concat(t) .. "\\0tail"
  local res, err = http.request{ method = "POST", url = config.echo .. "/bin", body = body,
    headers = { ["Content-Type"] = "application/octet-stream" } }
  if not res then return 502, { error = err } end
  return 200, { sent = #body, upstream = res.body }
end)

app.get("/slow", function(req)
  local t0 = clock.now()
  local res, err = http.request{ url = config.slow .. "/s?" .. req.query }
  if not res then return 502, { error = err } end
  return 200, { upstream = json.decode(res.body), ms = clock.now() - t0 }
end)

app.get("/ping", function(req) return 200, { pong = true } end)
`,
};

let echo, echoSeen, slow, gw;

function listenEcho() {
  const server = http.createServer((req, res) => {
    const chunks = [];
    req.on('data', (c) => chunks.push(c));
    req.on('end', () => {
      const body = Buffer.concat(chunks);
      echoSeen.push({ method: req.method, url: req.url, headers: req.headers, body });
      if (req.url.startsWith('/big/')) {
        const n = Number(req.url.slice(5));
        res.writeHead(200, { 'Content-Type': 'text/plain' });
        return res.end('x'.repeat(n));
      }
      if (req.url === '/redirect') {
        res.writeHead(302, { Location: '/elsewhere' });
        return res.end();
      }
      if (req.url === '/bin') {
        res.writeHead(200, { 'Content-Type': 'text/plain' });
        return res.end(`${body.length}:${createHash('sha256').update(body).digest('hex')}`);
      }
      res.writeHead(201, { 'Content-Type': 'text/plain', 'X-Upstream': 'yes', 'Set-Cookie': ['a=1', 'b=2'] });
      res.end(`seen ${req.method} ${req.url} ${body.length}`);
    });
  });
  return new Promise((r) => server.listen(0, '127.0.0.1', () => r(server)));
}

async function freePort() {
  const s = net.createServer();
  await new Promise((r) => s.listen(0, '127.0.0.1', r));
  const port = s.address().port;
  await new Promise((r) => s.close(r));
  return port;
}

before(async () => {
  echoSeen = [];
  echo = await listenEcho();
  slow = await startSlowServer(1000);
  gw = await startGateway({
    scripts,
    config: {
      fetch: { max_response_bytes: 4096 },
      app: { echo: `http://127.0.0.1:${echo.address().port}`, slow: `http://127.0.0.1:${slow.port}` },
    },
  });
});

after(async () => {
  await gw?.stop();
  await slow?.close();
  echo?.closeAllConnections?.();
  await new Promise((r) => (echo ? echo.close(r) : r()));
});

const echoUrl = (p) => `http://127.0.0.1:${echo.address().port}${p}`;

test('an outbound call returns the upstream status, lower-cased headers and body', async () => {
  const r = await gw.post('/call', { url: echoUrl('/hello?x=1') });
  assert.equal(r.status, 200, r.body);
  assert.equal(r.json.status, 201);
  assert.equal(r.json.body, 'seen GET /hello?x=1 0');
  assert.equal(r.json.headers['x-upstream'], 'yes');
  assert.equal(r.json.headers['content-type'], 'text/plain');
  assert.equal(r.json.headers['set-cookie'], 'a=1, b=2', 'repeated headers are joined');
  assert.equal(echoSeen.at(-1).method, 'GET');
});

test('a POST body arrives byte for byte and custom headers arrive', async () => {
  const body = '{"amount":{"total":100},"description":"caf\u00e9 \u2615","n":[1,2,3]}';
  const r = await gw.post('/call', {
    method: 'POST', url: echoUrl('/pay'), body,
    headers: { 'Content-Type': 'application/json', Authorization: 'WECHATPAY2-SHA256-RSA2048 mchid="1"', 'X-Trace': 'abc' },
  });
  assert.equal(r.status, 200, r.body);
  const seen = echoSeen.at(-1);
  assert.equal(seen.method, 'POST');
  assert.equal(seen.url, '/pay');
  assert.deepEqual(seen.body, Buffer.from(body, 'utf8'));
  assert.equal(seen.headers['content-type'], 'application/json');
  assert.equal(seen.headers.authorization, 'WECHATPAY2-SHA256-RSA2048 mchid="1"');
  assert.equal(seen.headers['x-trace'], 'abc');
  assert.equal(seen.headers.expect, undefined, 'no Expect: 100-continue round trip');

  const put = await gw.post('/call', { method: 'PUT', url: echoUrl('/put'), body: 'p' });
  assert.equal(put.json.body, 'seen PUT /put 1');
});

test('binary request bodies (every byte value, NUL included) are sent exactly', async () => {
  const r = await gw.post('/binary', {});
  assert.equal(r.status, 200, r.body);
  const expected = Buffer.concat([Buffer.from([...Array(256).keys()]), Buffer.from('\0tail', 'binary')]);
  assert.equal(r.json.sent, expected.length);
  assert.equal(r.json.upstream, `${expected.length}:${createHash('sha256').update(expected).digest('hex')}`);
});

test('while one request waits on a slow upstream, other requests are answered at once', async () => {
  const t0 = Date.now();
  const slowReq = gw.get('/slow');
  await eventually(() => slow.stats.requests > 0, 2000, 10);
  let worst = 0;
  for (let i = 0; i < 20; i++) {
    const t = Date.now();
    const r = await gw.get('/ping');
    assert.equal(r.status, 200);
    worst = Math.max(worst, Date.now() - t);
  }
  assert.ok(Date.now() - t0 < 900, 'the pings finished while the slow call was still pending');
  assert.ok(worst < 200, `a ping took ${worst} ms`);
  const r = await slowReq;
  assert.equal(r.status, 200, r.body);
  assert.equal(r.json.upstream.slow, true);
  assert.ok(r.json.ms >= 950, `slow call took ${r.json.ms} ms`);
});

test('a timeout comes back as a value ("timeout: ...") and the handler answers 504', async () => {
  const t0 = Date.now();
  const r = await gw.post('/call', { url: `http://127.0.0.1:${slow.port}/t`, timeout_ms: 200 });
  const took = Date.now() - t0;
  assert.equal(r.status, 504, r.body);
  assert.equal(r.json.error, 'timeout');
  assert.match(r.json.message, /^timeout: /);
  assert.ok(took >= 190 && took < 900, `took ${took} ms`);
  assert.equal((await gw.get('/ping')).status, 200);
});

test('a refused connection comes back as "connect: ..."', async () => {
  const port = await freePort();
  const r = await gw.post('/call', { url: `http://127.0.0.1:${port}/x` });
  assert.equal(r.status, 502, r.body);
  assert.equal(r.json.error, 'connect');
  assert.match(r.json.message, /^connect: /);
});

test('a non-http(s) URL, a missing URL or a bad method is a script error (500), not a value', async () => {
  for (const spec of [{ url: 'ftp://127.0.0.1/x' }, { url: 'file:///etc/passwd' }, {},
    { url: echoUrl('/'), method: 'get' }, { url: echoUrl('/'), headers: { 'X-Bad': 'a\r\nInjected: 1' } }]) {
    const r = await gw.post('/call', spec);
    assert.equal(r.status, 500, JSON.stringify(spec) + ' ' + r.body);
    assert.equal(r.json.error, 'internal_error');
  }
  await eventually(() => /url must start with http:\/\/ or https:\/\//.test(gw.log));
  assert.equal((await gw.get('/ping')).status, 200);
});

test('a response over fetch.max_response_bytes is refused as "too_large: ..."; one at the limit passes', async () => {
  const over = await gw.post('/call', { url: echoUrl('/big/10000') });
  assert.equal(over.status, 502, over.body);
  assert.equal(over.json.error, 'too_large');
  assert.match(over.json.message, /^too_large: /);
  const at = await gw.post('/call', { url: echoUrl('/big/4096') });
  assert.equal(at.status, 200, at.body);
  assert.equal(at.json.body.length, 4096);
});

test('redirects are returned to the script, not followed', async () => {
  const n = echoSeen.length;
  const r = await gw.post('/call', { url: echoUrl('/redirect') });
  assert.equal(r.json.status, 302);
  assert.equal(r.json.headers.location, '/elsewhere');
  assert.equal(echoSeen.length, n + 1, 'no second request');
});

test('beyond fetch.max_inflight an outbound call fails at once as a value, and the others proceed', async () => {
  const up = await startSlowServer(500);
  const g = await startGateway({ scripts, config: { fetch: { max_inflight: 2 }, app: { slow: `http://127.0.0.1:${up.port}` } } });
  try {
    const results = await Promise.all([1, 2, 3].map(async (i) => {
      await sleep(i * 30);
      return g.get(`/slow?i=${i}`);
    }));
    assert.deepEqual(results.map((r) => r.status), [200, 200, 502]);
    assert.match(results[2].json.error, /^error: too many outbound requests in flight/);
    assert.equal(up.stats.requests, 2);
    assert.equal((await g.get('/slow?i=4')).status, 200, 'the slots are released');
  } finally {
    await g.stop();
    await up.close();
  }
});

test('outbound outcomes are counted in upstream metrics', async () => {
  const ok0 = await gw.metric('paygate_upstream_requests_total');
  const err0 = await gw.metric('paygate_upstream_errors_total');
  await gw.post('/call', { url: echoUrl('/m') });
  await gw.post('/call', { url: `http://127.0.0.1:${await freePort()}/x` });
  assert.equal(await gw.metric('paygate_upstream_requests_total'), ok0 + 1);
  assert.equal(await gw.metric('paygate_upstream_errors_total'), err0 + 1);
});

test('1,000 concurrent requests that each call a slow upstream finish in about one delay', async () => {
  const delay = 600;
  const up = await startSlowServer(delay);
  // 1,000 connections from one address: over the default per-address cap of 256. One HTTP/1.1
  // upstream: the per-host connection cap (fetch.max_host_connections, 16 by default) would
  // queue the calls on purpose. Both lifted here, where the loop is what is measured.
  const g = await startGateway({ scripts, config: { log_level: 'info', limits: { max_connections_per_client: 0 },
    fetch: { max_host_connections: 1000 },
    app: { slow: `http://127.0.0.1:${up.port}` } } });
  try {
    const agent = new http.Agent({ keepAlive: true, maxSockets: 1500 });
    const t0 = Date.now();
    const results = await Promise.all(Array.from({ length: 1000 }, (_, i) =>
      new Promise((resolve, reject) => {
        const req = http.get({ host: '127.0.0.1', port: g.port, path: `/slow?n=${i}`, agent, timeout: 20000 }, (res) => {
          let text = '';
          res.on('data', (d) => { text += d; });
          res.on('end', () => resolve({ status: res.statusCode, text }));
        });
        req.on('error', reject);
        req.on('timeout', () => req.destroy(new Error('client timeout')));
      })));
    const wall = Date.now() - t0;
    agent.destroy();
    const bad = results.filter((r) => r.status !== 200);
    assert.equal(bad.length, 0, `failures: ${bad.length}, e.g. ${JSON.stringify(bad[0])}`);
    for (const [i, r] of results.entries()) assert.equal(JSON.parse(r.text).upstream.path, `/s?n=${i}`);
    assert.equal(up.stats.requests, 1000);
    assert.ok(wall < 5000, `wall time ${wall} ms for 1000 requests of ${delay} ms`);
    await eventually(async () => (await g.metric('paygate_http_inflight')) === 0);
  } finally {
    await g.stop();
    await up.close();
  }
});

// Open a raw connection, send one request, return the socket (the caller destroys it).
function rawRequest(port, path) {
  return new Promise((resolve, reject) => {
    const s = net.connect(port, '127.0.0.1', () => {
      s.write(`GET ${path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n`);
      resolve(s);
    });
    s.on('error', reject);
  });
}

const fdCount = (pid) => readdirSync(`/proc/${pid}/fd`).length;

test('a client that disconnects during an outbound call frees everything (50 times in a row)', async () => {
  const up = await startSlowServer(5000);
  const g = await startGateway({ scripts, config: { log_level: 'info', app: { slow: `http://127.0.0.1:${up.port}` } } });
  try {
    const idleInflight = await g.metric('paygate_http_inflight');   // script requests only
    assert.equal(idleInflight, 0, `idle inflight ${idleInflight}`);
    const aborts0 = await g.metric('paygate_http_client_aborts_total');
    const abortOnce = async (i) => {
      const seen = up.stats.requests, closed = up.stats.closedEarly;
      const s = await rawRequest(g.port, `/slow?abort=${i}`);
      await eventually(() => up.stats.requests > seen, 3000, 5);
      s.destroy();
      // the gateway closes its upstream connection long before the upstream would answer
      await eventually(() => up.stats.closedEarly > closed, 3000, 5);
    };
    await abortOnce(0);
    await eventually(() => up.stats.open === 0, 3000, 10);
    const [worker] = await g.workerPids();
    const fds0 = fdCount(worker);
    const t0 = Date.now();
    for (let i = 1; i <= 50; i++) await abortOnce(i);
    assert.ok(Date.now() - t0 < 20000, 'each abort was noticed promptly');
    await eventually(() => up.stats.open === 0, 3000, 10);
    assert.equal(up.stats.closedEarly, 51);
    assert.equal(await eventually(async () => (await g.metric('paygate_http_client_aborts_total')) === aborts0 + 51), true);
    await eventually(async () => (await g.metric('paygate_http_inflight')) === idleInflight);
    const h = await g.get('/healthz');
    assert.equal(h.json.inflight, idleInflight);
    const fds1 = fdCount(worker);
    assert.ok(fds1 <= fds0 + 3, `gateway fds grew from ${fds0} to ${fds1}`);
    assert.equal((await g.get('/ping')).status, 200);
    assert.match(g.log, /client disconnected; handler cancelled/);
  } finally {
    await g.stop();
    await up.close();
  }
});

test('a pipelined request arriving while the first one waits on an upstream is answered in order, no crash', async () => {
  const up = await startSlowServer(300);
  const g = await startGateway({ scripts, config: { log_level: 'info', app: { slow: `http://127.0.0.1:${up.port}` } } });
  try {
    let data = '';
    const s = await rawRequest(g.port, '/slow?first');
    s.on('data', (d) => { data += d; });
    await eventually(() => up.stats.requests === 1, 2000, 5);
    s.write('GET /ping HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n');
    await eventually(() => (data.match(/HTTP\/1\.1 200/g) || []).length === 2, 3000);
    assert.ok(data.indexOf('"slow":true') < data.indexOf('"pong":true'), 'answers in request order');
    s.destroy();
    assert.equal(g.child.exitCode, null, 'the gateway is still running');
    assert.equal((await g.get('/ping')).status, 200);
  } finally {
    await g.stop();
    await up.close();
  }
});

test('a client that disconnects during clock.sleep is cancelled and the server keeps working', async () => {
  const g = await startGateway({
    scripts: { 'init.lua': `
local app = require "paygate"
app.get("/nap", function(req) clock.sleep(3000); return 200, { woke = true } end)
app.get("/ping", function(req) return 200, { pong = true } end)
` }, config: { log_level: 'info' },
  });
  try {
    const aborts0 = await g.metric('paygate_http_client_aborts_total');
    for (let i = 0; i < 10; i++) {
      const s = await rawRequest(g.port, '/nap');
      await sleep(30);
      s.destroy();
    }
    await eventually(async () => (await g.metric('paygate_http_client_aborts_total')) === aborts0 + 10);
    assert.ok((await g.metric('paygate_http_inflight')) === 0);
    assert.equal((await g.get('/ping')).status, 200);
    await sleep(3200);   // the cancelled timers must not fire into freed coroutines
    assert.equal((await g.get('/ping')).status, 200);
    assert.equal(g.child.exitCode, null);
  } finally {
    await g.stop();
  }
});

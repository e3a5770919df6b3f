// The HTTP layer: routing, the JSON error shape, request ids, limits, handler failures.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import { startGateway, eventually } from './harness.mjs';

let gw;

const scripts = {
  'init.lua': `
local app = require "paygate"
app.get("/hello", function(req) return 200, { hello = "world" } end)
app.get("/items/{id}/parts/{part}", function(req)
  return 200, { id = req.params.id, part = req.params.part }
end)
app.post("/echo", function(req)
  local body = app.read_json(req)
  return 201, { got = body, method = req.method, ctype = req:header("Content-Type") }
end)
app.post("/qty", function(req)
  local body = app.read_json(req)
  return 200, { qty = app.integer(body.qty, 1, 99, "qty") }
end)
app.get("/text", function(req) return 200, "plain text", { ["Content-Type"] = "text/plain" } end)
app.get("/empty", function(req) return 200, json.array() end)
app.get("/fail", function(req) app.fail(409, "out_of_stock", "product 7 is out of stock") end)
app.get("/boom", function(req) local t = nil; return 200, { x = t.field } end)
app.get("/bad-status", function(req) return "nope" end)
app.get("/query", function(req) return 200, { query = req.query, path = req.path } end)
`,
};

before(async () => { gw = await startGateway({ scripts, config: { limits: { max_body_bytes: 4096, max_header_bytes: 2048 } } }); });
after(async () => { await gw.stop(); });

test('a declared route answers JSON with a request id', async () => {
  const r = await gw.get('/hello');
  assert.equal(r.status, 200);
  assert.deepEqual(r.json, { hello: 'world' });
  assert.match(r.headers['content-type'], /^application\/json/);
  assert.match(r.headers['x-request-id'], /^[0-9a-f]{16}$/);
});

test('path parameters are captured by name', async () => {
  const r = await gw.get('/items/42/parts/wheel');
  assert.deepEqual(r.json, { id: '42', part: 'wheel' });
});

test('a caller-supplied X-Request-Id is echoed; a malformed one is replaced', async () => {
  const ok = await gw.get('/hello', { headers: { 'X-Request-Id': 'abc-123' } });
  assert.equal(ok.headers['x-request-id'], 'abc-123');
  const bad = await gw.get('/hello', { headers: { 'X-Request-Id': 'has space' } });
  assert.match(bad.headers['x-request-id'], /^[0-9a-f]{16}$/);
});

test('unknown paths are 404 and wrong methods 405 with the methods the path does answer in Allow, both in the error shape', async () => {
  const nf = await gw.get('/nope');
  assert.equal(nf.status, 404);
  assert.equal(nf.json.error, 'not_found');
  assert.ok(nf.json.message.includes('/nope'));
  assert.ok(nf.headers['x-request-id']);
  const na = await gw.request('DELETE', '/hello');
  assert.equal(na.status, 405);
  assert.equal(na.json.error, 'method_not_allowed');
  assert.equal(na.headers.allow, 'GET, HEAD');
  const np = await gw.request('PUT', '/items/3/parts/wheel');
  assert.deepEqual([np.status, np.headers.allow], [405, 'GET, HEAD']);
});

test('TRACE is refused with a JSON 405', async () => {
  const r = await gw.request('TRACE', '/hello');
  assert.equal(r.status, 405);
});

test('a JSON body round-trips; integers stay integers', async () => {
  const r = await gw.post('/echo', { a: 1, b: [1, 2.5, 'x'], c: { d: null } });
  assert.equal(r.status, 201);
  assert.deepEqual(r.json.got, { a: 1, b: [1, 2.5, 'x'], c: { d: null } });
  assert.equal(r.json.method, 'POST');
  assert.equal(r.body.includes('"a":1'), true);
});

test('invalid JSON is a 400 invalid_request, not a crash', async () => {
  for (const body of ['{', 'null', '[1,2', '"str"', '{"a":NaN}']) {
    const r = await gw.post('/echo', body);
    assert.equal(r.status, 400, body);
    assert.equal(r.json.error, 'invalid_request');
  }
  const deep = '['.repeat(100) + ']'.repeat(100);
  assert.equal((await gw.post('/echo', deep)).status, 400);
});

test('integer checks refuse 0, -1, 1.5, "1", 2^53 and accept 1.0 as 1', async () => {
  for (const q of ['0', '-1', '1.5', '"1"', '9007199254740993', '1e300', 'true', '100']) {
    const r = await gw.post('/qty', `{"qty":${q}}`);
    assert.equal(r.status, 400, `qty=${q}`);
    assert.match(r.json.message, /qty must be an integer from 1 to 99/);
  }
  assert.deepEqual((await gw.post('/qty', '{"qty":3}')).json, { qty: 3 });
  assert.deepEqual((await gw.post('/qty', '{"qty":3.0}')).json, { qty: 3 });
});

test('app.fail answers the status and error shape the handler chose', async () => {
  const r = await gw.get('/fail');
  assert.equal(r.status, 409);
  assert.deepEqual(r.json, { error: 'out_of_stock', message: 'product 7 is out of stock' });
});

test('a handler error is a 500 JSON error, the stack is logged, the server lives on', async () => {
  const r = await gw.get('/boom');
  assert.equal(r.status, 500);
  assert.equal(r.json.error, 'internal_error');
  assert.ok(!r.body.includes('field'), 'no internals leak to the client');
  await eventually(() => gw.log.includes(`req=${r.headers['x-request-id']}`) && /stack traceback/.test(gw.log));
  assert.equal((await gw.get('/hello')).status, 200);
  const bad = await gw.get('/bad-status');
  assert.equal(bad.status, 500);
});

test('string bodies and handler headers pass through; empty arrays encode as []', async () => {
  const t = await gw.get('/text');
  assert.equal(t.body, 'plain text');
  assert.match(t.headers['content-type'], /^text\/plain/);
  assert.equal((await gw.get('/empty')).body, '[]');
});

test('the raw query string and path are visible to handlers', async () => {
  const r = await gw.get('/query?a=1&b=x%20y');
  assert.deepEqual(r.json, { query: 'a=1&b=x%20y', path: '/query' });
});

test('a body over the limit is refused with 413 and the server lives on', async () => {
  const r = await gw.post('/echo', JSON.stringify({ pad: 'x'.repeat(8000) }));
  assert.equal(r.status, 413);
  assert.equal((await gw.get('/hello')).status, 200);
});

test('headers over the limit are refused and the server lives on', async () => {
  const status = await new Promise((resolve) => {
    const s = net.connect(gw.port, '127.0.0.1', () => {
      s.write(`GET /hello HTTP/1.1\r\nHost: x\r\nX-Big: ${'a'.repeat(4000)}\r\n\r\n`);
    });
    let data = '';
    s.on('data', (d) => { data += d; });
    s.on('close', () => resolve(data.split(' ')[1] || 'closed'));
    s.on('error', () => resolve('closed'));
  });
  assert.ok(status === 'closed' || Number(status) >= 400, `got ${status}`);
  assert.equal((await gw.get('/hello')).status, 200);
});

test('healthz reports the generation and uptime', async () => {
  const r = await gw.get('/healthz');
  assert.equal(r.status, 200);
  assert.equal(r.json.status, 'ok');
  assert.equal(r.json.generation, 1);
  assert.equal(typeof r.json.uptime_s, 'number');
});

test('metrics are Prometheus text with request counters', async () => {
  const r = await gw.get('/metrics');
  assert.equal(r.status, 200);
  assert.match(r.body, /# TYPE paygate_http_requests_total counter/);
  assert.ok((await gw.metric('paygate_http_requests_total{code="2xx"}')) > 0);
});

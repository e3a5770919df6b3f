// Slow and many clients: a deadline for the whole request head and the whole body (not an idle
// timeout that every byte restarts), caps on open connections per worker and per client address
// with a refusal that costs nothing, the open-files limit the config asks for, and requests whose
// framing is ambiguous (the shape of request smuggling) refused and their connection closed.
// While each attack runs, /healthz from another connection answers within 100 ms.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import http from 'node:http';
import { mkdtempSync, writeFileSync, chmodSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { BIN, startGateway, sleep, eventually } from './harness.mjs';

const scripts = {
  'init.lua': `
local app = require "paygate"
app.get("/hello", function(req) return 200, { hello = "world" } end)
app.post("/echo", function(req) return 200, { body = req:body() } end)
`,
};

const stops = [];
after(async () => { for (const s of stops) await s(); });

async function gateway(limits, extra = {}) {
  const gw = await startGateway({ scripts, config: { log_level: 'info', limits: { timeout_s: 120, ...limits } }, ...extra });
  stops.push(() => gw.stop());
  return gw;
}

/** GET /healthz on a connection of its own; resolves with the milliseconds it took. */
function healthz(port, localAddress = '127.0.0.1') {
  return new Promise((resolve, reject) => {
    const t0 = process.hrtime.bigint();
    const req = http.get({ host: '127.0.0.1', port, path: '/healthz', agent: false, localAddress, timeout: 5000 }, (res) => {
      res.resume();
      res.on('end', () => {
        if (res.statusCode !== 200) reject(new Error(`/healthz answered ${res.statusCode}`));
        else resolve(Number(process.hrtime.bigint() - t0) / 1e6);
      });
    });
    req.on('timeout', () => req.destroy(new Error('/healthz did not answer in 5 s')));
    req.on('error', reject);
  });
}

/** Probe /healthz every 100 ms until stop() is called; stop() resolves with every time measured. */
function probeHealth(port) {
  const times = [];
  let running = true;
  const loop = (async () => {
    while (running) {
      times.push(await healthz(port));
      await sleep(100);
    }
  })();
  return async () => {
    while (running && times.length < 3) await sleep(20);
    running = false;
    await loop;
    return times;
  };
}

function assertFast(times, what) {
  assert.ok(times.length >= 3, `too few /healthz probes during ${what}`);
  console.log(`# /healthz during ${what}: ${times.length} probes, slowest ${Math.max(...times).toFixed(1)} ms`);
  const slow = times.filter((t) => t >= 100);
  assert.deepEqual(slow, [], `/healthz took 100 ms or more during ${what}: ${times.map((t) => t.toFixed(1)).join(', ')}`);
}

/** A raw connection; records everything it receives and when it was closed. */
function connect(port, localAddress = '127.0.0.1') {
  return new Promise((resolve, reject) => {
    const s = net.connect({ host: '127.0.0.1', port, localAddress });
    s.received = '';
    s.closedAt = null;
    s.gone = new Promise((r) => s.on('close', () => { s.closedAt = Date.now(); r(); }));
    s.on('data', (d) => { s.received += d; });
    s.on('error', () => {});
    s.once('connect', () => resolve(s));
    s.once('error', reject);
  });
}

/** Send `text` one byte every `everyMs` until the socket closes or the text runs out. */
async function trickle(s, text, everyMs) {
  for (const ch of text) {
    if (s.closedAt || s.destroyed) return;
    s.write(ch);
    await sleep(everyMs);
  }
}

const openFds = (pid) => readdirSync(`/proc/${pid}/fd`).length;

test('100 connections sending their head one byte at a time are closed by the head deadline', { timeout: 60000 }, async () => {
  const gw = await gateway({ header_timeout_ms: 1500 });
  const t0 = Date.now();
  const socks = await Promise.all(Array.from({ length: 100 }, () => connect(gw.port)));
  const stop = probeHealth(gw.port);
  // A byte every 200 ms: an idle timeout restarted by each byte never fires.
  const head = 'GET /hello HTTP/1.1\r\nHost: x\r\nX-Slow: ' + 'a'.repeat(200) + '\r\n\r\n';
  socks.forEach((s) => trickle(s, head, 200));
  await Promise.race([Promise.all(socks.map((s) => s.gone)), sleep(8000)]);
  const times = await stop();
  const open = socks.filter((s) => !s.closedAt).length;
  socks.forEach((s) => s.destroy());
  assert.equal(open, 0, `${open} of 100 slow connections were still open after 8 s (deadline 1.5 s)`);
  for (const s of socks) {
    assert.ok(s.closedAt - t0 >= 1400, `a connection was closed after ${s.closedAt - t0} ms, before its deadline`);
    assert.equal(s.received, '', 'a slow head got an answer');
  }
  assertFast(times, 'the slow heads');
  assert.match(gw.log, /took over 1500 ms to send its request head/);
  assert.equal((await gw.get('/hello')).status, 200);
  assert.equal(await gw.metric('paygate_http_connections_expired_total'), 100);
});

test('a body sent one byte at a time is cut off by the body deadline; a prompt one is served', { timeout: 30000 }, async () => {
  const gw = await gateway({ header_timeout_ms: 5000, body_timeout_ms: 1500 });
  const stop = probeHealth(gw.port);
  const s = await connect(gw.port);
  const t0 = Date.now();
  s.write('POST /echo HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n');
  trickle(s, 'x'.repeat(100), 150);
  await Promise.race([s.gone, sleep(6000)]);
  const times = await stop();
  s.destroy();
  assert.ok(s.closedAt, 'the slow body was still being read after 6 s (deadline 1.5 s)');
  assert.ok(s.closedAt - t0 >= 1400 && s.closedAt - t0 < 4000, `closed after ${s.closedAt - t0} ms`);
  assertFast(times, 'the slow body');
  assert.match(gw.log, /took over 1500 ms to send its request body/);
  const ok = await gw.post('/echo', 'x'.repeat(100));
  assert.equal(ok.status, 200);
  assert.equal(ok.json.body.length, 100);
});

test('a client address over its connection cap is refused at once with 503; other addresses are not', { timeout: 30000 }, async () => {
  const gw = await gateway({ max_connections_per_client: 10, header_timeout_ms: 30000 });
  const stop = probeHealth(gw.port);
  const held = [];
  for (let i = 0; i < 10; i++) held.push(await connect(gw.port, '127.0.0.2'));
  await sleep(100);
  assert.ok(held.every((s) => !s.closedAt), 'connections under the cap were closed');
  const over = await connect(gw.port, '127.0.0.2');
  await Promise.race([over.gone, sleep(3000)]);
  assert.ok(over.closedAt, 'the 11th connection from one address was kept open');
  assert.match(over.received, /^HTTP\/1\.1 503 /);
  assert.match(over.received, /too_many_connections/);
  // Another address is not affected, and a freed place can be used again.
  const other = await connect(gw.port, '127.0.0.3');
  other.write('GET /hello HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n');
  await Promise.race([other.gone, sleep(3000)]);
  assert.match(other.received, /^HTTP\/1\.1 200 /);
  held.pop().destroy();
  await sleep(200);
  const again = await connect(gw.port, '127.0.0.2');
  again.write('GET /hello HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n');
  await Promise.race([again.gone, sleep(3000)]);
  assert.match(again.received, /^HTTP\/1\.1 200 /);
  const times = await stop();
  held.forEach((s) => s.destroy());
  assertFast(times, 'the per-address cap');
  assert.match(gw.log, /max_connections_per_client reached/);
  assert.equal(await gw.metric('paygate_http_connections_refused_total'), 1);
});

test('300 idle connections against a cap of 100 and 200 open files do not take the gateway offline', { timeout: 60000 }, async () => {
  // The gateway runs under a hard limit of 200 descriptors (as a small container would give it).
  const dir = mkdtempSync(join(tmpdir(), 'paygate-fdlimit-'));
  stops.push(async () => rmSync(dir, { recursive: true, force: true }));
  const wrapper = join(dir, 'paygate-200');
  writeFileSync(wrapper, `#!/bin/sh\nulimit -n 200 || exit 1\nexec "${BIN}" "$@"\n`);
  chmodSync(wrapper, 0o755);
  const gw = await gateway({ max_connections: 100, open_files: 200, max_connections_per_client: 0, header_timeout_ms: 30000 },
    { bin: wrapper });
  const stop = probeHealth(gw.port);
  const socks = [];
  for (let i = 0; i < 300; i++) {
    socks.push(await connect(gw.port, `127.0.0.${2 + (i % 3)}`));
    if (i % 50 === 49) await sleep(50);
  }
  await sleep(300);
  const fds = openFds(gw.pid);
  const times = await stop();
  const open = socks.filter((s) => !s.closedAt).length;
  socks.forEach((s) => s.destroy());
  assert.ok(fds < 200, `the gateway holds ${fds} descriptors`);
  assert.ok(open <= 100, `${open} connections are open against a cap of 100`);
  assertFast(times, '300 idle connections');
  // A real request still works afterwards, and the gateway never ran out of descriptors.
  assert.equal((await gw.get('/hello')).status, 200);
  assert.doesNotMatch(gw.log, /Too many open files/);
  assert.ok(await gw.metric('paygate_http_connections_evicted_total') >= 200, 'the oldest idle connections made room');
});

test('a cap the open-files limit cannot hold, or a limit above the hard one, stops the start with a clear error', async () => {
  await assert.rejects(gateway({ max_connections: 1000, open_files: 512 }, { expectExit: true }),
    /limits\.max_connections = 1000 needs an open-files limit of at least 1064/);
  const dir = mkdtempSync(join(tmpdir(), 'paygate-fdlimit-'));
  stops.push(async () => rmSync(dir, { recursive: true, force: true }));
  const wrapper = join(dir, 'paygate-200');
  writeFileSync(wrapper, `#!/bin/sh\nulimit -n 200 || exit 1\nexec "${BIN}" "$@"\n`);
  chmodSync(wrapper, 0o755);
  // Above the kernel's own ceiling (fs.nr_open), so even a privileged process cannot have it.
  await assert.rejects(gateway({ max_connections: 100, open_files: 16777216 }, { bin: wrapper, expectExit: true }),
    /limits\.open_files = 16777216, but the open-files limit cannot be raised above its hard limit 200/);
});

/** Send raw bytes on a fresh connection; resolves with everything answered until the gateway closed it. */
async function raw(port, bytes) {
  const s = await connect(port);
  s.write(bytes);
  await Promise.race([s.gone, sleep(3000)]);
  const closed = !!s.closedAt;
  s.destroy();
  return { text: s.received, closed, answers: (s.received.match(/HTTP\/1\.1 \d{3}/g) || []).length };
}

const smuggled = 'GET /hello HTTP/1.1\r\nHost: x\r\n\r\n';

// evhttp itself refuses Content-Length with Transfer-Encoding (its own HTML 400, connection closed);
// the others reach our check, which answers in the JSON error shape.
for (const [name, head, body, ours] of [
  ['two different Content-Length headers', 'Content-Length: 2\r\nContent-Length: ' + (2 + smuggled.length), '{}' + smuggled, true],
  ['two equal Content-Length headers', 'Content-Length: 2\r\nContent-Length: 2', '{}' + smuggled, true],
  ['Content-Length with Transfer-Encoding: chunked', 'Content-Length: ' + (5 + smuggled.length) + '\r\nTransfer-Encoding: chunked',
    '0\r\n\r\n' + smuggled, false],
  ['a Transfer-Encoding other than chunked', 'Transfer-Encoding: gzip, chunked', '0\r\n\r\n' + smuggled, true],
]) {
  test(`ambiguous framing (${name}) is answered 400 and the connection closed, nothing after it is read`, async () => {
    const gw = await gateway({});
    const stop = probeHealth(gw.port);
    const r = await raw(gw.port, `POST /echo HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n${head}\r\n\r\n${body}`);
    const times = await stop();
    assert.match(r.text, /^HTTP\/1\.1 400 /, r.text);
    if (ours) assert.match(r.text, /"error":"bad_framing"/);
    assert.equal(r.answers, 1, `the bytes after the first request were read as another request:\n${r.text}`);
    assert.ok(r.closed, 'the connection was left open');
    assertFast(times, name);
    // A well-framed request on a new connection is served.
    const ok = await raw(gw.port, 'POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}');
    assert.match(ok.text, /^HTTP\/1\.1 200 /);
  });
}

test('keep-alive requests are not cut by the head deadline while they are answered in time', { timeout: 30000 }, async () => {
  const gw = await gateway({ header_timeout_ms: 1000 });
  const s = await connect(gw.port);
  for (let i = 0; i < 4; i++) {
    s.write('GET /hello HTTP/1.1\r\nHost: x\r\n\r\n');
    await eventually(() => (s.received.match(/HTTP\/1\.1 200/g) || []).length === i + 1, 3000);
    await sleep(600); // each wait is under the deadline, their sum is over it
  }
  assert.equal(s.closedAt, null);
  await Promise.race([s.gone, sleep(3000)]);
  assert.ok(s.closedAt, 'an idle kept-alive connection outlived the head deadline');
  s.destroy();
});

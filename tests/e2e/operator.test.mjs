// The operator's side (issue 13): every money event of an order in the append-only audit trail
// (order_events) with who asked, admin access that is safe by default (named tokens, loopback
// trust only when configured, the console's session cookie and its CSRF guard), strict
// configuration, and metrics a scraper can trust across reloads.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, writeFileSync, rmSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { eventually, runPaygate, startGateway, ROOT } from './harness.mjs';
import { startWorld } from './shopenv.mjs';

const TOKENS = { alice: 'alice-token-0123456789abcdef', bob: 'bob-token-0123456789abcdef00' };

// Test routes into the shop's state: stage a notification that does not match the order, and
// try to rewrite history the way a careless script might.
const STAGING = `
local app = require "paygate"
app.post("/test/order-amount/{no}", function(req)
  db.exec("UPDATE orders SET amount = amount + 1 WHERE order_no = ?", req.params.no)
  return 200, {}
end)
app.post("/test/rewrite-events/{no}", function(req)
  local del = pcall(db.exec, "DELETE FROM order_events WHERE order_no = ?", req.params.no)
  local upd, err = pcall(db.exec, "UPDATE order_events SET data = '{}' WHERE order_no = ?", req.params.no)
  return 200, { deleted = del, updated = upd, error = tostring(err) }
end)
`;

let world, gw, dir;

before(async () => {
  world = await startWorld();
  dir = mkdtempSync(join(tmpdir(), 'paygate-operator-'));
  const tokens = {};
  for (const [name, tok] of Object.entries(TOKENS)) {
    writeFileSync(join(dir, name), tok + '\n');
    tokens[name] = join(dir, name);
  }
  gw = await world.startShop({}, {
    files: { 'staging.lua': STAGING, 'init.lua': `${(await import('node:fs')).readFileSync(join(ROOT, 'scripts/init.lua'), 'utf8')}require "staging"\nrequire "test_hooks"\n` },
    config: { admin: { tokens } },
  });
  const as = { headers: { Authorization: 'Bearer ' + TOKENS.alice } };
  for (const [id, name, price, stock] of [[1, 'Tea', 3800, 1000], [3, 'Pot', 9900, 20]]) {
    assert.equal((await gw.put(`/admin/products/${id}`, { name, price, stock }, as)).status, 200);
  }
});

after(async () => {
  if (world) await world.stop();
  if (dir) rmSync(dir, { recursive: true, force: true });
});

const alice = { Authorization: 'Bearer ' + TOKENS.alice };
const detail = async (no) => {
  const r = await gw.get(`/admin/orders/${no}`, { headers: alice });
  assert.equal(r.status, 200, r.body);
  return r.json;
};
const trail = async (no) => (await detail(no)).timeline.map((e) => e.event);

async function buy(user, items = [{ product_id: 1, qty: 1 }]) {
  const o = await gw.post('/api/orders', { items }, { headers: user.auth });
  assert.equal(o.status, 201, o.body);
  const pay = await gw.post(`/api/orders/${o.json.order_no}/pay`, undefined, { headers: user.auth });
  assert.equal(pay.status, 200, pay.body);
  return { no: o.json.order_no, pay: pay.json };
}

test('every money event of a sale is in the order\'s timeline with who asked: created, prepay, paid by notification, delivered, a refund asked by a named token with its reason, settled', async () => {
  const user = await world.login(gw);
  const { no, pay } = await buy(user);
  await world.userPays(user, pay);
  await eventually(async () => (await trail(no)).includes('delivered'), 10000, 100);
  const r = await gw.post(`/admin/orders/${no}/refund`, { reason: 'customer asked' }, { headers: alice });
  assert.equal(r.status, 202, r.body);
  await eventually(async () => (await detail(no)).status === 'REFUNDED', 15000, 100);
  const t = (await detail(no)).timeline;
  assert.deepEqual(t.map((e) => e.event), ['created', 'prepay_requested', 'paid', 'delivered', 'refund_requested', 'refunded']);
  const by = Object.fromEntries(t.map((e) => [e.event, e]));
  assert.equal(by.created.actor, 'user');
  assert.equal(by.created.data.amount, 3800);
  assert.equal(by.paid.data.via, 'notification');
  assert.equal(by.refund_requested.actor, 'alice');
  assert.equal(by.refund_requested.data.reason, 'customer asked');
  assert.equal(by.refund_requested.data.amount, 3800);
  assert.equal(by.refunded.data.refund.out_refund_no, by.refund_requested.data.out_refund_no);
  assert.ok(t.every((e, i) => i === 0 || e.at >= t[i - 1].at), 'oldest first');
  // One logfmt line at info per event.
  for (const ev of ['created', 'paid', 'refund_requested']) {
    assert.match(gw.log, new RegExp(`level=info .*msg="order event".*event=${ev}\\b.*order=${no}|level=info .*msg="order event".*order=${no}.*event=${ev}\\b`));
  }
});

test('a payment learned by asking WeChat says so, and a cancel records the close asked by the user and confirmed', async () => {
  const user = await world.login(gw);
  const { no, pay } = await buy(user);
  await world.sandbox.post('/sandbox/faults', { notify_drop: { count: 1, match: no } });
  await world.userPays(user, pay);
  await eventually(async () => (await gw.get(`/api/orders/${no}`, { headers: user.auth })).json.status === 'PAID', 10000, 200);
  const paid = (await detail(no)).timeline.find((e) => e.event === 'paid');
  assert.equal(paid.data.via, 'status_query');

  const other = await buy(user);
  const c = await gw.post(`/api/orders/${other.no}/cancel`, undefined, { headers: user.auth });
  assert.equal(c.status, 200, c.body);
  const t = (await detail(other.no)).timeline;
  assert.deepEqual(t.map((e) => e.event), ['created', 'prepay_requested', 'close_requested', 'closed']);
  assert.equal(t[2].actor, 'user');
  assert.equal(t[2].data.reason, 'cancelled');
});

test('a notification that does not match the order is refused, and the refusal with its reason is in the order\'s timeline', async () => {
  const user = await world.login(gw);
  const { no, pay } = await buy(user);
  await gw.post(`/test/order-amount/${no}`, {});
  await world.userPays(user, pay);
  const ev = await eventually(async () => (await detail(no)).timeline.find((e) => e.event === 'notification_refused'), 10000, 100);
  assert.equal(ev.data.reason, 'amount_mismatch');
  assert.equal(ev.actor, 'wechat');
  const notes = (await gw.get('/admin/notifications?outcome=refused', { headers: alice })).json.notifications;
  assert.ok(notes.some((n) => n.order_no === no && n.reason === 'amount_mismatch'));
});

test('a payment that arrives after the order closed is in the trail as paid after close; a refund WeChat refuses is there as refund_failed', async () => {
  const user = await world.login(gw);
  const { no, pay } = await buy(user);
  await world.sandbox.post('/sandbox/faults', { notify_delay: { count: 1, ms: 1500, match: no } });
  await world.userPays(user, pay);
  assert.equal((await gw.post(`/test/force-close/${no}`, {})).json.closed, true);
  await eventually(async () => (await detail(no)).status === 'PAID', 10000, 100);
  const t = (await detail(no)).timeline;
  const paid = t.find((e) => e.event === 'paid');
  assert.equal(paid.data.after_close, true);
  assert.equal(paid.data.via, 'notification');
  assert.ok(t.findIndex((e) => e.event === 'closed') < t.indexOf(paid), 'closed, then paid');

  await world.sandbox.post('/sandbox/faults', { system_error: { count: 1, status: 400, match: '/v3/refund/domestic/refunds' } });
  const r = await gw.post(`/admin/orders/${no}/refund`, { amount: 100, reason: 'goodwill' }, { headers: { Authorization: 'Bearer ' + TOKENS.bob } });
  assert.equal(r.status, 202, r.body);
  const failed = await eventually(async () => (await detail(no)).timeline.find((e) => e.event === 'refund_failed'), 10000, 100);
  assert.equal(failed.data.refund.out_refund_no, r.json.out_refund_no);
  const asked = (await detail(no)).timeline.find((e) => e.event === 'refund_requested');
  assert.deepEqual([asked.actor, asked.data.reason, asked.data.amount], ['bob', 'goodwill', 100]);
});

test('orders are found by number, openid or transaction id (or their start), status and time range, a page at a time', async () => {
  const user = await world.login(gw);
  const first = await buy(user);
  await world.userPays(user, first.pay);
  await eventually(async () => (await detail(first.no)).status === 'PAID', 10000, 100);
  const second = await buy(user);
  const find = async (query) => (await gw.get('/admin/orders?' + query, { headers: alice })).json.orders.map((o) => o.order_no);
  assert.deepEqual(await find('q=' + user.openid), [second.no, first.no], 'newest first');
  assert.deepEqual(await find('q=' + encodeURIComponent(user.openid.slice(0, 12))), [second.no, first.no]);
  const tx = (await detail(first.no)).payment.transaction_id;
  assert.deepEqual(await find('q=' + tx), [first.no]);
  assert.deepEqual(await find('q=' + first.no), [first.no]);
  assert.deepEqual(await find(`q=${user.openid}&status=paying`), [second.no]);
  const page1 = (await gw.get(`/admin/orders?q=${user.openid}&limit=1`, { headers: alice })).json.orders;
  assert.deepEqual(page1.map((o) => o.order_no), [second.no]);
  assert.deepEqual(await find(`q=${user.openid}&limit=1&to=${page1[0].created_ms}`), [first.no], 'the next page');
  assert.deepEqual(await find(`q=${user.openid}&from=${page1[0].created_ms + 1}`), []);
  assert.equal((await gw.get('/admin/orders?from=yesterday', { headers: alice })).status, 400);
  assert.deepEqual(await find('q=100%25_'), [], 'LIKE wildcards are plain characters');
});

test('the audit trail is append-only: a script can neither delete its rows nor change what they say', async () => {
  const user = await world.login(gw);
  const { no } = await buy(user);
  const before = await trail(no);
  const r = await gw.post(`/test/rewrite-events/${no}`, {});
  assert.equal(r.json.deleted, false);
  assert.equal(r.json.updated, false);
  assert.match(r.json.error, /append-only/);
  assert.deepEqual(await trail(no), before);
});

test('admin access: named tokens in constant-time compare; a wrong one is 401; without a token nothing moves money; the refund says who', async () => {
  assert.equal((await gw.get('/admin/orders')).status, 401);
  assert.equal((await gw.get('/admin/orders', { headers: { Authorization: 'Bearer ' + TOKENS.alice.replace('a', 'b') } })).status, 401);
  assert.equal((await gw.put('/admin/products/1', { stock: 5 })).status, 401);
  assert.equal((await gw.post('/admin/reload', {})).status, 401);
  assert.equal((await gw.get('/admin/orders', { headers: { Authorization: 'Bearer ' + TOKENS.bob } })).status, 200);
});

test('the console\'s session: login sets an HttpOnly SameSite=Strict cookie; writes with it need the CSRF token; another site\'s request is refused', async () => {
  const bad = await gw.post('/admin/login', { token: 'nope-nope-nope-nope' });
  assert.equal(bad.status, 401);
  const login = await gw.post('/admin/login', { token: TOKENS.bob });
  assert.equal(login.status, 200, login.body);
  const cookie = [].concat(login.headers['set-cookie'])[0];
  assert.match(cookie, /^paygate_admin=[^;]+; Path=\/; Max-Age=\d+; HttpOnly; SameSite=Strict/);
  const jar = { Cookie: cookie.split(';')[0] };
  const s = await gw.get('/admin/session', { headers: jar });
  assert.deepEqual([s.status, s.json.name], [200, 'bob']);
  assert.equal(s.json.csrf, login.json.csrf);
  assert.equal((await gw.get('/admin/overview', { headers: jar })).status, 200);
  const noCsrf = await gw.put('/admin/products/3', { stock: 19 }, { headers: jar });
  assert.equal(noCsrf.status, 403);
  const cross = await gw.put('/admin/products/3', { stock: 19 }, { headers: { ...jar, 'X-CSRF-Token': s.json.csrf, Origin: 'http://evil.example' } });
  assert.equal(cross.status, 403);
  const ok = await gw.put('/admin/products/3', { stock: 19 }, { headers: { ...jar, 'X-CSRF-Token': s.json.csrf } });
  assert.equal(ok.status, 200, ok.body);
  const forged = { Cookie: jar.Cookie.replace(/.$/, (c) => (c === '0' ? '1' : '0')) };
  assert.equal((await gw.get('/admin/overview', { headers: forged })).status, 401);
});

test('admin is closed by default, open to loopback only with admin.trust_loopback (which warns at start), and even then not to another site\'s page', async () => {
  const closed = await startGateway({ scripts: { 'init.lua': 'require("paygate").get("/admin/x", function() return 200, {} end)' }, config: { admin: {} } });
  const trusting = await startGateway({ scripts: { 'init.lua': 'require("paygate").post("/admin/x", function(req) return 200, { who = req.admin } end)' } });
  try {
    const r = await closed.get('/admin/x');
    assert.equal(r.status, 403);
    assert.match(r.json.message, /admin\.tokens/);
    assert.doesNotMatch(closed.log, /reachable without a token/);
    const ok = await trusting.post('/admin/x', {});
    assert.deepEqual([ok.status, ok.json.who], [200, 'loopback']);
    assert.match(trusting.log, /level=warn .*admin is reachable without a token/);
    assert.equal((await trusting.post('/admin/x', {}, { headers: { Origin: 'http://evil.example' } })).status, 403);
    assert.equal((await trusting.post('/admin/x', {}, { headers: { 'Sec-Fetch-Site': 'cross-site' } })).status, 403);
    // DNS rebinding: another site's name resolved to 127.0.0.1 is still another site.
    assert.equal((await trusting.post('/admin/x', {}, { headers: { Host: 'evil.example:' + trusting.port, Origin: 'http://evil.example:' + trusting.port } })).status, 403);
    assert.equal((await trusting.get('/admin/x', { headers: { Host: 'evil.example' } })).status, 403);
    assert.equal((await trusting.post('/admin/x', {}, { headers: { Host: 'localhost:' + trusting.port } })).status, 200);
    const m = await trusting.request('GET', '/admin/reload');
    assert.deepEqual([m.status, m.headers.allow], [405, 'POST']);
  } finally {
    await closed.stop();
    await trusting.stop();
  }
});

test('strict configuration: an unknown key anywhere fails --check naming the resolved file and the nearest known key', async () => {
  const d = mkdtempSync(join(tmpdir(), 'paygate-conf-'));
  try {
    const check = async (text) => {
      writeFileSync(join(d, 'p.conf.lua'), `scripts = "${join(ROOT, 'scripts')}"\nlualib = "${join(ROOT, 'lualib')}"\n${text}\n`);
      return runPaygate(['--config', join(d, 'p.conf.lua'), '--check']);
    };
    let r = await check('lisen = "127.0.0.1:9"');
    assert.notEqual(r.code, 0);
    assert.match(r.stderr, new RegExp(`${d}/p\\.conf\\.lua: unknown key 'lisen' \\(did you mean 'listen'\\?\\)`));
    r = await check('limits = { max_body = 1024 }');
    assert.match(r.stderr, /unknown key 'limits\.max_body' \(did you mean 'limits\.max_body_bytes'\?\)/);
    r = await check('admin = { trust_loopbak = true }');
    assert.match(r.stderr, /did you mean 'admin\.trust_loopback'/);
    r = await check('app = { anything_goes = 1 }');
    assert.match(r.stderr, /the scripts in .* use wechatpay, but .*p\.conf\.lua has no wechatpay table/);
    assert.notEqual(r.code, 0);
    r = await check('admin = { token_file = "missing.token" }');
    assert.match(r.stderr, new RegExp(`admin\\.token_file: cannot open ${d}/missing\\.token`));
  } finally {
    rmSync(d, { recursive: true, force: true });
  }
});

test('metrics: labels given in any order are one series, a reload never splits it, and every series has HELP and TYPE', async () => {
  const script = (order) => `local app = require "paygate"
app.post("/count", function(req)
  metrics.inc("shop_things_total", ${order})
  return 200, {}
end)`;
  const g = await startGateway({ scripts: { 'init.lua': script('{ kind = "a", zone = "b" }') } });
  try {
    await g.post('/count', {});
    g.writeScripts({ 'init.lua': script('{ zone = "b", kind = "a" }') });
    assert.equal((await g.reload()).status, 200);
    await g.post('/count', {});
    const body = (await g.get('/metrics')).body;
    const lines = body.split('\n').filter((l) => l.startsWith('shop_things_total'));
    assert.deepEqual(lines, ['shop_things_total{kind="a",zone="b"} 2']);
    const names = new Set(body.split('\n').filter((l) => l && !l.startsWith('#')).map((l) => l.split(/[{ ]/)[0].replace(/_(bucket|sum|count)$/, '')));
    for (const n of names) {
      assert.match(body, new RegExp(`# HELP ${n} `), `HELP for ${n}`);
      assert.match(body, new RegExp(`# TYPE ${n} `), `TYPE for ${n}`);
    }
    assert.equal((await g.get('/healthz')).status, 200);
    const ready = await g.get('/readyz');
    assert.deepEqual([ready.status, ready.json.ready], [200, true]);
  } finally {
    await g.stop();
  }
});

// One HTTP/1.1 exchange on an open keep-alive socket: the status line's code and the body.
function ask(sock, path) {
  return new Promise((resolve) => {
    let buf = '';
    const onData = (d) => {
      buf += d;
      const end = buf.indexOf('\r\n\r\n');
      const len = end >= 0 && Number((buf.match(/content-length: (\d+)/i) || [])[1]);
      if (end >= 0 && buf.length >= end + 4 + len) {
        sock.off('data', onData);
        resolve({ status: Number(buf.split(' ')[1]), body: JSON.parse(buf.slice(end + 4, end + 4 + len)) });
      }
    };
    sock.on('data', onData);
    sock.write(`GET ${path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n`);
  });
}

test('while the gateway stops, /healthz still answers 200 and /readyz 503, so a balancer stops sending traffic', async () => {
  const g = await startGateway({ scripts: { 'init.lua': 'require("paygate").get("/slow", function() clock.sleep(1500) return 200, {} end)' } });
  const sock = net.connect(g.port, '127.0.0.1');
  await new Promise((r) => sock.once('connect', r));
  try {
    assert.deepEqual(await ask(sock, '/readyz'), { status: 200, body: { ready: true, generation: 1 } });
    const slow = g.get('/slow');                                  // keeps the gateway draining for a while
    await new Promise((r) => setTimeout(r, 100));
    process.kill(g.pid, 'SIGTERM');
    await new Promise((r) => setTimeout(r, 100));
    const ready = await ask(sock, '/readyz');
    assert.deepEqual([ready.status, ready.body.ready], [503, false]);
    assert.equal((await ask(sock, '/healthz')).status, 200);
    assert.equal((await slow).status, 200, 'the request in flight is still answered');
  } finally {
    sock.destroy();
    await g.stop();
  }
});

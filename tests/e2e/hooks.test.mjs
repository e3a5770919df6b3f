// The merchant's hooks (lualib/shop/hooks.lua): the pricing step and its adjustments, the
// order checks, lifecycle events from the durable queue, the library's coupons and refunds by
// line — the shop (scripts/) with a spec piece before shop.coupons, against the WeChat Pay
// sandbox, over real HTTP.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import crypto from 'node:crypto';
import { eventually, sleep } from './harness.mjs';
import { startWorld, MCHID } from './shopenv.mjs';

// A piece whose behaviour each order asks for in its request body. Every event it is told of
// is written to hook_calls; fail_event makes that event's hook fail fail_times times first.
const SPEC_RULES = `
local app = require "paygate"

app.migration(50, "spec: hook calls", [[
  CREATE TABLE hook_calls (id INTEGER PRIMARY KEY AUTOINCREMENT, hook TEXT NOT NULL, key TEXT, order_no TEXT, data TEXT)
]])

local spec = { name = "spec" }

local MISTAKES = {
  positive = function() return { { code = "oops", amount = 5 } } end,
  surcharge = function() return { { code = "gift_wrap", label = "Gift wrap", amount = 500, surcharge = true } } end,
  everything = function(ctx) return { { code = "all", amount = -ctx.total } } end,
  fraction = function() return { { code = "half", amount = -1.5 } } end,
  stranger = function() return { { code = "other", amount = -1, product_id = 999 } } end,
  single = function() return { code = "one", amount = -1 } end,
  typo = function() return { { code = "x", amout = -1 } } end,
  below = function(ctx, lines) return { { code = "x", amount = -lines[1].amount - 1, product_id = lines[1].product_id } } end,
}

-- Members (openids starting oMember) pay 300 fen less per Tea (product 1).
function spec.quote(ctx, lines)
  if ctx.body.pricing then return MISTAKES[ctx.body.pricing](ctx, lines) end
  if not (ctx.openid and ctx.openid:match("^oMember")) then return nil end
  for _, l in ipairs(lines) do
    if l.product_id == 1 then
      return { { code = "member_price", label = "Member price", product_id = 1, amount = -300 * l.qty } }
    end
  end
end

function spec.check(ctx, lines)
  if ctx.body.refuse then return { refuse = "members_only", message = "this shop is for members", status = 403 } end
  if ctx.body.check == "bad" then return "no" end
  if ctx.purpose == "resell" and ctx.body.resell == "refuse" then return { refuse = "sale_over", message = "the sale ended" } end
end

local function on(event)
  return function(ev)
    db.exec("INSERT INTO hook_calls(hook, key, order_no, data) VALUES (?, ?, ?, ?)", event, ev.key, ev.order.order_no,
            json.encode({ refund = ev.refund, reason = ev.reason, after_close = ev.after_close, status = ev.order.status,
                          amount = ev.order.amount, adjustments = ev.order.adjustments }))
    local c = db.one("SELECT context FROM orders WHERE order_no = ?", ev.order.order_no).context
    local body = c and json.decode(c) or {}
    if body.fail_event == event then
      local n = db.one("SELECT count(*) AS n FROM hook_calls WHERE hook = ? AND key = ?", event, ev.key).n
      if n <= (body.fail_times or 1) then error("the ERP is down (spec)", 0) end
    end
  end
end
spec.on_paid, spec.on_closed = on("paid"), on("closed")
spec.on_refunded, spec.on_refund_failed = on("refunded"), on("refund_failed")

app.get("/spec/calls/{no}", function(req)
  local calls = json.array()
  for _, c in ipairs(db.query("SELECT hook, key, data FROM hook_calls WHERE order_no = ? ORDER BY id", req.params.no)) do
    calls[#calls + 1] = { hook = c.hook, key = c.key, data = json.decode(c.data) }
  end
  return 200, { calls = calls }
end)

return spec
`;

let world, sandbox, gw;

before(async () => {
  world = await startWorld();
  sandbox = world.sandbox;
  gw = await world.startShop({ order_ttl_s: 600, reconcile_after_s: 3600 }, { files: {
    'spec_rules.lua': SPEC_RULES,
    'rules.lua': 'return { require "spec_rules", require("shop.coupons").piece }\n',
  } });
  for (const [id, name, price, stock] of [[1, 'Tea', 3800, 1000], [2, 'Cup', 1200, 100], [3, 'Pot', 9900, 5]]) {
    assert.equal((await gw.put(`/admin/products/${id}`, { name, price, stock })).status, 200);
  }
});

after(async () => { if (world) await world.stop(); });

const rand = () => crypto.randomBytes(5).toString('hex');
const member = () => world.login(gw, 'oMember' + rand());
const plain = () => world.login(gw);
const product = async (id) => (await gw.get(`/test/products/${id}`)).json;
const order = (user, body) => gw.post('/api/orders', body, { headers: user.auth });
const quote = (user, body) => gw.post('/api/quote', body, { headers: user.auth });
const view = async (user, no) => (await gw.get(`/api/orders/${no}`, { headers: user.auth })).json;
const calls = async (no, hook) => (await gw.get(`/spec/calls/${no}`)).json.calls.filter((c) => !hook || c.hook === hook);
const events = async (no) => (await gw.get(`/test/order_events/${no}`)).json.events;
const atWeChat = async (no) => (await sandbox.get(`/sandbox/orders/${no}`)).json;
const faults = (spec) => sandbox.post('/sandbox/faults', spec);
const admin = async (no) => (await gw.get('/admin/orders?limit=500')).json.orders.find((o) => o.order_no === no);

async function pay(user, no) {
  const r = await gw.post(`/api/orders/${no}/pay`, undefined, { headers: user.auth });
  assert.equal(r.status, 200, r.body);
  return r.json;
}

async function paidOrder(user, body) {
  const r = await order(user, body);
  assert.equal(r.status, 201, r.body);
  await world.userPays(user, await pay(user, r.json.order_no));
  await eventually(async () => (await view(user, r.json.order_no)).status === 'PAID', 8000, 100);
  return r.json;
}

async function metric(name, labels) {
  const text = (await gw.get('/metrics')).body;
  const want = labels ? `${name}{${labels}}` : name;
  const line = text.split('\n').find((l) => l.startsWith(want + ' '));
  return line === undefined ? 0 : Number(line.split(' ').pop());
}

const strip = (adjs) => adjs.map(({ code, amount, product_id }) => ({ code, amount, ...(product_id ? { product_id } : {}) }));

// ---- pricing ----

test('POST /api/quote prices like the order, reserves nothing; the order then charges WeChat that amount', async () => {
  const user = await member();
  const code = 'TEN' + rand();
  assert.equal((await gw.post('/admin/coupons', { code, kind: 'percent', value: 10 })).status, 201);
  const body = { items: [{ product_id: 2, qty: 1 }, { product_id: 1, qty: 2 }], coupon: code };
  const tea = await product(1);
  const q = await quote(user, body);
  assert.equal(q.status, 200, q.body);
  // 2 × 3800 + 1200 = 8800; member price −600 on the teas; 10% of 8200 = 820 off the order
  assert.equal(q.json.subtotal, 8800);
  assert.equal(q.json.amount, 7380);
  assert.deepEqual(strip(q.json.adjustments), [{ code: 'member_price', amount: -600, product_id: 1 }, { code: `coupon:${code}`, amount: -820 }]);
  assert.deepEqual(q.json.items.map((i) => [i.product_id, i.qty, i.price, i.amount]), [[1, 2, 3800, 6300], [2, 1, 1200, 1080]]);
  assert.deepEqual(await product(1), tea, 'a quote reserves nothing');
  assert.equal((await gw.get('/admin/coupons')).json.coupons.find((c) => c.code === code).used, 0, 'nor holds the coupon');

  const o = await paidOrder(user, body);
  assert.equal(o.amount, 7380);
  assert.equal(o.subtotal, 8800);
  assert.deepEqual(o.adjustments, q.json.adjustments);
  assert.deepEqual(o.items, q.json.items);
  assert.equal((await atWeChat(o.order_no)).total, 7380, 'WeChat was asked for the adjusted amount');
  const a = await admin(o.order_no);
  assert.deepEqual(a.adjustments, q.json.adjustments);
  assert.equal((await gw.get(`/test/coupon_redemptions/${o.order_no}`)).json.amount, 820);
  assert.equal((await gw.get('/admin/coupons')).json.coupons.find((c) => c.code === code).used, 1);
});

test('the product list shows a logged-in member the member price (display_price); others see the list price', async () => {
  const anyone = (await gw.get('/api/products')).json.products.find((p) => p.id === 1);
  assert.equal(anyone.price, 3800);
  assert.equal(anyone.display_price, undefined);
  const m = await member();
  const mine = (await gw.get('/api/products', { headers: m.auth })).json.products;
  assert.equal(mine.find((p) => p.id === 1).display_price, 3500);
  assert.deepEqual(mine.find((p) => p.id === 1).price_labels, ['Member price']);
  assert.equal(mine.find((p) => p.id === 2).display_price, undefined, 'a product the rule leaves alone');
  const other = await plain();
  assert.equal((await gw.get('/api/products', { headers: other.auth })).json.products.find((p) => p.id === 1).display_price, undefined);
});

test('pricing mistakes fail the order loudly (500 naming the pricing step) and reserve nothing; a marked surcharge is charged', async () => {
  const user = await plain();
  const tea = await product(1);
  const cases = {
    positive: /adjustment 1 from spec raises the price by 5 fen without surcharge = true/,
    everything: /leave the order at 0 fen/,
    fraction: /amount that is not a whole number of fen/,
    stranger: /names product 999, which is not a line of this order/,
    single: /answer from spec is not a list of adjustments/,
    typo: /unknown field 'amout'/,
    below: /takes Tea \(product 1\) below 0/,
  };
  for (const [pricing, message] of Object.entries(cases)) {
    const r = await order(user, { items: [{ product_id: 1, qty: 1 }], pricing });
    assert.equal(r.status, 500, `${pricing}: ${r.body}`);
    await eventually(() => message.test(gw.log), 3000).catch(() => assert.match(gw.log, message, pricing));
    assert.equal((await quote(user, { items: [{ product_id: 1, qty: 1 }], pricing })).status, 500, `quote ${pricing}`);
  }
  assert.match(gw.log, /the pricing step's/);
  assert.deepEqual(await product(1), tea, 'nothing reserved by the failed orders');
  const s = await order(user, { items: [{ product_id: 1, qty: 1 }], pricing: 'surcharge' });
  assert.equal(s.status, 201, s.body);
  assert.equal(s.json.amount, 4300);
  assert.deepEqual(strip(s.json.adjustments), [{ code: 'gift_wrap', amount: 500 }]);
});

test('a check refuses with its own status, code and message before anything is reserved; a malformed answer is a 500', async () => {
  const user = await plain();
  const pot = await product(3);
  const r = await order(user, { items: [{ product_id: 3, qty: 1 }], refuse: true });
  assert.equal(r.status, 403, r.body);
  assert.deepEqual(r.json, { error: 'members_only', message: 'this shop is for members' });
  assert.deepEqual(await product(3), pot);
  const q = await quote(user, { items: [{ product_id: 3, qty: 1 }], refuse: true });
  assert.equal(q.status, 403, 'the quote says so too');
  const bad = await order(user, { items: [{ product_id: 3, qty: 1 }], check: 'bad' });
  assert.equal(bad.status, 500);
  await eventually(() => /the check step's answer from spec is string/.test(gw.log), 3000);
  assert.deepEqual(await product(3), pot);
});

// ---- lifecycle events ----

test('on_paid runs once from the queue; a hook that fails is run again, and its event is DONE once it returned', async () => {
  const user = await plain();
  const errors0 = await metric('paygate_order_event_errors_total', 'event="paid"');
  const o = await paidOrder(user, { items: [{ product_id: 2, qty: 1 }], fail_event: 'paid', fail_times: 1 });
  const ev = await eventually(async () => { const e = (await events(o.order_no)).find((x) => x.event === 'paid'); return e?.status === 'DONE' && e; }, 8000, 100);
  assert.equal(ev.key, `paid:${o.order_no}`);
  assert.equal(ev.attempts, 2);
  assert.equal(ev.last_error, undefined);
  await sleep(1500);
  const paid = await calls(o.order_no, 'paid');
  assert.equal(paid.length, 2, 'one failure, one success, then never again');
  assert.ok(paid.every((c) => c.key === `paid:${o.order_no}` && c.data.status === 'PAID'));
  assert.equal(await metric('paygate_order_event_errors_total', 'event="paid"'), errors0 + 1);
  assert.ok((await admin(o.order_no)).events.some((e) => e.event === 'paid' && e.status === 'DONE'));
});

test('an event whose hook keeps failing stays PENDING with its error for the operator; the order is unaffected', async () => {
  const user = await plain();
  const o = await paidOrder(user, { items: [{ product_id: 2, qty: 1 }], fail_event: 'paid', fail_times: 1000 });
  const ev = await eventually(async () => { const e = (await admin(o.order_no)).events.find((x) => x.event === 'paid'); return e?.attempts >= 2 && e; }, 8000, 100);
  assert.equal(ev.status, 'PENDING');
  assert.match(ev.last_error, /spec: the ERP is down/);
  assert.equal((await view(user, o.order_no)).status, 'PAID');
  await eventually(async () => (await gw.get(`/test/fulfillments/${o.order_no}`)).json.status === 'DONE');
});

test('on_closed runs once when an order is cancelled (and releases nothing twice)', async () => {
  const user = await plain();
  const o = (await order(user, { items: [{ product_id: 3, qty: 1 }] })).json;
  await pay(user, o.order_no);
  assert.equal((await gw.post(`/api/orders/${o.order_no}/cancel`, undefined, { headers: user.auth })).status, 200);
  await eventually(async () => (await calls(o.order_no, 'closed')).length === 1, 8000, 100);
  assert.equal((await gw.post(`/api/orders/${o.order_no}/cancel`, undefined, { headers: user.auth })).status, 409);
  await sleep(500);
  const closed = await calls(o.order_no, 'closed');
  assert.equal(closed.length, 1);
  assert.equal(closed[0].data.reason, 'cancelled');
  assert.equal(closed[0].key, `closed:${o.order_no}`);
});

test('a payment after close runs the checks again: allowed, it is sold again (on_paid after_close)', async () => {
  const user = await plain();
  const o = (await order(user, { items: [{ product_id: 1, qty: 1 }] })).json;
  await faults({ notify_delay: { count: 1, ms: 1500, match: o.order_no } });
  await world.userPays(user, await pay(user, o.order_no));
  assert.equal((await gw.post(`/test/force-close/${o.order_no}`)).json.closed, true);
  await eventually(async () => (await view(user, o.order_no)).status === 'PAID', 8000, 100);
  const paid = await eventually(async () => { const c = await calls(o.order_no, 'paid'); return c.length === 1 && c; }, 8000, 100);
  assert.equal(paid[0].data.after_close, true);
  assert.equal((await calls(o.order_no, 'closed')).length, 1, 'the close was an event too');
});

test('a payment after close that the checks now refuse goes back in full (on_refunded), and nothing is sold', async () => {
  const user = await plain();
  const tea = await product(1);
  const o = (await order(user, { items: [{ product_id: 1, qty: 1 }], resell: 'refuse' })).json;
  await faults({ notify_delay: { count: 1, ms: 1500, match: o.order_no } });
  await world.userPays(user, await pay(user, o.order_no));
  await gw.post(`/test/force-close/${o.order_no}`);
  const done = await eventually(async () => { const v = await view(user, o.order_no); return v.status === 'REFUNDED' && v; }, 10000, 100);
  assert.equal(done.refunded, o.amount);
  const refunds = (await gw.get(`/test/refunds/${o.order_no}`)).json.refunds;
  assert.equal(refunds.length, 1);
  assert.equal(refunds[0].reason, 'paid after the order closed; refused: sale_over');
  const refunded = await eventually(async () => { const c = await calls(o.order_no, 'refunded'); return c.length === 1 && c; }, 8000, 100);
  assert.equal(refunded[0].data.refund.amount, o.amount);
  assert.equal((await calls(o.order_no, 'paid')).length, 0, 'never paid for the merchant');
  assert.deepEqual(await product(1), tea, 'units conserved: released at close, never sold again');
});

// ---- coupons (the library piece) ----

test('coupons are created and listed by the admin API; malformed ones are 400, a taken code 409', async () => {
  const code = 'C' + rand();
  const c = await gw.post('/admin/coupons', { code, kind: 'amount', value: 500, min_amount: 3000, per_user: 1,
    total_limit: 10, starts_at: '2026-01-01T00:00:00+08:00', ends_at: '2099-01-01T00:00:00+08:00' });
  assert.equal(c.status, 201, c.body);
  assert.equal(c.json.label, '5.00 yuan off');
  assert.equal(c.json.used, 0);
  assert.equal(c.json.starts_at, '2026-01-01T00:00:00+08:00');
  assert.ok((await gw.get('/admin/coupons')).json.coupons.some((x) => x.code === code && x.value === 500 && x.total_limit === 10));
  assert.equal((await gw.post('/admin/coupons', { code, kind: 'amount', value: 1 })).status, 409);
  for (const bad of [{ code: 'a b', kind: 'amount', value: 1 }, { code: 'X' + rand(), kind: 'gift', value: 1 },
    { code: 'X' + rand(), kind: 'percent', value: 101 }, { code: 'X' + rand(), kind: 'amount', value: 0 },
    { code: 'X' + rand(), kind: 'amount', value: 1.5 }, { code: 'X' + rand(), kind: 'amount', value: 1, ends_at: 'tomorrow' },
    { code: 'X' + rand(), kind: 'amount', value: 1, starts_at: '2027-01-01T00:00:00Z', ends_at: '2026-01-01T00:00:00Z' }]) {
    const r = await gw.post('/admin/coupons', bad);
    assert.equal(r.status, 400, JSON.stringify(bad) + ' ' + r.body);
  }
});

test('a one-use coupon: held by an open order, refused to the next buyer, released when that order closes', async () => {
  const code = 'ONCE' + rand();
  await gw.post('/admin/coupons', { code, kind: 'amount', value: 1000, total_limit: 1 });
  const a = await plain(), b = await plain();
  const first = await order(a, { items: [{ product_id: 1, qty: 1 }], coupon: code });
  assert.equal(first.status, 201, first.body);
  assert.equal(first.json.amount, 2800);
  const taken = await order(b, { items: [{ product_id: 1, qty: 1 }], coupon: code });
  assert.equal(taken.status, 409);
  assert.equal(taken.json.error, 'coupon_used_up');
  assert.equal((await quote(b, { items: [{ product_id: 1, qty: 1 }], coupon: code })).json.error, 'coupon_used_up');
  assert.equal((await gw.post(`/api/orders/${first.json.order_no}/cancel`, undefined, { headers: a.auth })).status, 200);
  assert.equal((await gw.get(`/test/coupon_redemptions/${first.json.order_no}`)).json.status, 'released');
  const second = await paidOrder(b, { items: [{ product_id: 1, qty: 1 }], coupon: code });
  assert.equal(second.amount, 2800);
  assert.equal((await atWeChat(second.order_no)).total, 2800);
  assert.equal((await gw.get('/admin/coupons')).json.coupons.find((c) => c.code === code).used, 1);
});

test('coupon rules: per user, validity window, minimum amount, unknown codes, percentages never take all', async () => {
  const user = await plain();
  const perUser = 'PU' + rand();
  await gw.post('/admin/coupons', { code: perUser, kind: 'percent', value: 50, per_user: 1 });
  assert.equal((await order(user, { items: [{ product_id: 2, qty: 1 }], coupon: perUser })).json.amount, 600);
  const again = await order(user, { items: [{ product_id: 2, qty: 1 }], coupon: perUser });
  assert.equal(again.status, 409);
  assert.equal(again.json.error, 'coupon_already_used');
  const later = 'LATER' + rand(), gone = 'GONE' + rand(), big = 'BIG' + rand(), all = 'ALL' + rand();
  await gw.post('/admin/coupons', { code: later, kind: 'amount', value: 100, starts_at: '2099-01-01T00:00:00+08:00' });
  await gw.post('/admin/coupons', { code: gone, kind: 'amount', value: 100, ends_at: '2020-01-01T00:00:00+08:00' });
  await gw.post('/admin/coupons', { code: big, kind: 'amount', value: 100, min_amount: 10000 });
  await gw.post('/admin/coupons', { code: all, kind: 'percent', value: 100 });
  const tea = await product(1);
  for (const [code, error] of [[later, 'coupon_not_started'], [gone, 'coupon_expired'], [big, 'coupon_min_amount'], ['NOPE' + rand(), 'coupon_invalid']]) {
    const r = await order(user, { items: [{ product_id: 1, qty: 1 }], coupon: code });
    assert.equal(r.status, 409, `${code}: ${r.body}`);
    assert.equal(r.json.error, error);
  }
  assert.equal((await order(user, { items: [{ product_id: 1, qty: 1 }], coupon: 7 })).status, 400);
  assert.deepEqual(await product(1), tea, 'refused coupons reserve nothing');
  assert.equal((await order(user, { items: [{ product_id: 1, qty: 3 }], coupon: big })).json.amount, 11300, 'from the minimum on');
  assert.equal((await order(user, { items: [{ product_id: 1, qty: 1 }], coupon: all })).json.amount, 1, '100% leaves the 1 fen WeChat needs');
});

test('a payment after close whose coupon went to someone else meanwhile goes back in full', async () => {
  const code = 'RACE' + rand();
  await gw.post('/admin/coupons', { code, kind: 'amount', value: 500, total_limit: 1 });
  const a = await plain(), b = await plain();
  const o = (await order(a, { items: [{ product_id: 2, qty: 1 }], coupon: code })).json;
  await faults({ notify_delay: { count: 1, ms: 2000, match: o.order_no } });
  await world.userPays(a, await pay(a, o.order_no));
  await gw.post(`/test/force-close/${o.order_no}`);                       // the coupon is released ...
  assert.equal((await order(b, { items: [{ product_id: 2, qty: 1 }], coupon: code })).status, 201);   // ... and taken
  const v = await eventually(async () => { const x = await view(a, o.order_no); return x.status === 'REFUNDED' && x; }, 10000, 100);
  assert.equal(v.refunded, 700);
  assert.equal((await gw.get(`/test/refunds/${o.order_no}`)).json.refunds[0].reason, 'paid after the order closed; refused: coupon_used_up');
  assert.equal((await gw.get('/admin/coupons')).json.coupons.find((c) => c.code === code).used, 1);
});

// ---- refunds by line ----

test('refunds by line and quantity are prorated over the adjustments, restock once refunded, and add up to the amount', async () => {
  const code = 'OFF' + rand();
  await gw.post('/admin/coupons', { code, kind: 'amount', value: 1000 });
  const user = await plain();
  const o = await paidOrder(user, { items: [{ product_id: 1, qty: 2 }, { product_id: 2, qty: 1 }], coupon: code });
  // 8800 − 1000 = 7800; the 1000 spread 864 / 136 over the lines: Tea 6736 (3368 a unit), Cup 1064
  assert.equal(o.amount, 7800);
  assert.deepEqual(o.items.map((i) => i.amount), [6736, 1064]);
  const tea = await product(1);

  assert.equal((await gw.post(`/admin/orders/${o.order_no}/refund`, { items: [{ product_id: 1, qty: 1 }], amount: 5 })).status, 400);
  assert.equal((await gw.post(`/admin/orders/${o.order_no}/refund`, { amount: 5, restock: true })).status, 400);
  assert.equal((await gw.post(`/admin/orders/${o.order_no}/refund`, { items: [{ product_id: 3, qty: 1 }] })).status, 400);
  const r1 = await gw.post(`/admin/orders/${o.order_no}/refund`, { items: [{ product_id: 1, qty: 1 }], restock: true, reason: 'broken' });
  assert.equal(r1.status, 202, r1.body);
  assert.equal(r1.json.amount, 3368);
  assert.deepEqual(r1.json.items, [{ product_id: 1, qty: 1, amount: 3368, restock: true }]);
  const part = await eventually(async () => { const v = await view(user, o.order_no); return v.status === 'PAID' && v.refunded === 3368 && v; }, 10000, 100);
  assert.equal(part.status, 'PAID', 'partly refunded: PAID, with the refunded amount beside it');
  const back = await product(1);
  assert.equal(back.stock, tea.stock + 1, 'the unit is back on sale');
  assert.equal(back.sold, tea.sold - 1);
  const told = await eventually(async () => { const c = await calls(o.order_no, 'refunded'); return c.length === 1 && c; }, 8000, 100);
  assert.deepEqual(told[0].data.refund.items, [{ product_id: 1, qty: 1, amount: 3368, restock: true }]);
  assert.equal(told[0].data.refund.amount, 3368);

  const over = await gw.post(`/admin/orders/${o.order_no}/refund`, { items: [{ product_id: 1, qty: 2 }] });
  assert.equal(over.status, 409);
  assert.equal(over.json.error, 'refund_exceeds_paid');
  const r2 = await gw.post(`/admin/orders/${o.order_no}/refund`, { items: [{ product_id: 1, qty: 1 }, { product_id: 2, qty: 1 }] });
  assert.equal(r2.status, 202, r2.body);
  assert.equal(r2.json.amount, 3368 + 1064);
  const all = await eventually(async () => { const v = await view(user, o.order_no); return v.status === 'REFUNDED' && v; }, 10000, 100);
  assert.equal(all.refunded, 7800);
  const wx = await atWeChat(o.order_no);
  assert.equal(wx.refunds.reduce((s, r) => s + r.refund, 0), 7800, 'WeChat refunded exactly what was paid');
  assert.equal((await product(1)).stock, tea.stock + 1, 'only the refund asking for it restocked');
  assert.equal((await gw.post(`/admin/orders/${o.order_no}/refund`, { items: [{ product_id: 2, qty: 1 }] })).status, 409);
  await eventually(async () => (await calls(o.order_no, 'refunded')).length === 2, 8000, 100);
});

// A refund notification built with the sandbox's keys: as genuine as WeChat's.
function refundNotification(resource) {
  const k = (name) => world.k(name);
  const apiv3 = readFileSync(k('apiv3_key'));
  const nonce = crypto.randomBytes(6).toString('hex');
  const c = crypto.createCipheriv('aes-256-gcm', apiv3, Buffer.from(nonce));
  c.setAAD(Buffer.from('refund'));
  const ct = Buffer.concat([c.update(JSON.stringify(resource)), c.final(), c.getAuthTag()]).toString('base64');
  const body = JSON.stringify({
    id: crypto.randomUUID(), create_time: '2026-11-28T16:00:00+08:00', resource_type: 'encrypt-resource',
    event_type: 'REFUND.CLOSED', summary: '退款关闭',
    resource: { original_type: 'refund', algorithm: 'AEAD_AES_256_GCM', ciphertext: ct, associated_data: 'refund', nonce },
  });
  const ts = Math.floor(Date.now() / 1000), wnonce = crypto.randomBytes(16).toString('hex');
  const sig = crypto.sign('sha256', Buffer.from(`${ts}\n${wnonce}\n${body}\n`), readFileSync(k('platform_key.pem'))).toString('base64');
  return { body, headers: { 'Wechatpay-Timestamp': String(ts), 'Wechatpay-Nonce': wnonce, 'Wechatpay-Signature': sig,
    'Wechatpay-Serial': readFileSync(k('platform_serial'), 'utf8').trim(), 'Content-Type': 'application/json' } };
}

test('a refund WeChat closes tells on_refund_failed, and the order is PAID again with nothing refunded', async () => {
  const user = await plain();
  const o = await paidOrder(user, { items: [{ product_id: 2, qty: 1 }] });
  await faults({ system_error: { count: 1000, match: '/v3/refund/domestic/refunds' } });      // the refund never reaches WeChat
  try {
    const r = await gw.post(`/admin/orders/${o.order_no}/refund`, { reason: 'changed mind' });
    assert.equal(r.status, 202);
    assert.equal((await view(user, o.order_no)).status, 'REFUNDING');
    const n = refundNotification({ mchid: MCHID, out_trade_no: o.order_no, out_refund_no: r.json.out_refund_no,
      refund_id: '50300' + rand(), refund_status: 'CLOSED', amount: { total: 1200, refund: 1200, payer_total: 1200, payer_refund: 1200 } });
    assert.equal((await gw.post('/wechat/notify/refund', n.body, { headers: n.headers })).status, 204);
    const v = await view(user, o.order_no);
    assert.equal(v.status, 'PAID');
    assert.equal(v.refunded, undefined);
    const failed = await eventually(async () => { const c = await calls(o.order_no, 'refund_failed'); return c.length === 1 && c; }, 8000, 100);
    assert.equal(failed[0].data.refund.out_refund_no, r.json.out_refund_no);
    assert.equal(failed[0].data.refund.status, 'CLOSED');
    assert.equal((await calls(o.order_no, 'refunded')).length, 0);
  } finally {
    await faults({ system_error: false });
  }
});

// The chaos proof. Per seed: a storm of mini-program users (login → order → pay → the user
// pays in WeChat → notification; cancels, abandoned orders that expire, refunds) against a shop
// gateway and the sandbox with WeChat's bad days switched on (errors, timeouts, dropped,
// duplicated, late and reordered notifications), while the gateway and the sandbox are killed
// with SIGKILL at seeded moments and started again on the same databases. Then a settle phase
// (faults off, every waiting job of the shop made due at once: a fast clock), both processes
// stopped, and the invariants read straight from both SQLite files:
//
//   - stock + reserved + sold of every product is what was stocked; reserved and sold match the orders
//   - every order WeChat has as SUCCESS (or REFUND) is PAID/REFUNDING/REFUNDED here, and nothing
//     is paid here that WeChat does not have; amounts and transaction ids equal; refunded amounts equal
//   - every order answered 201 is in the database
//   - every paid order's fulfillment is DONE, once in the outbox, and its delivery reached the receiver
//   - no job dead or left waiting, no notification undelivered, no order or refund left in between
//
// The choices (users' actions, faults, kill moments) come from the seed; the interleaving is
// the machine's. Seeds: CHAOS_SEEDS="1,2,3" (make test) or `make chaos SEEDS=N` (1..N);
// a failing seed prints the command that runs it alone.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import http from 'node:http';
import { sleep, seeded } from './harness.mjs';
import { startWorld, restartOnPort, freePort } from './shopenv.mjs';

const SEEDS = (process.env.CHAOS_SEEDS || '1,2,3').split(',').map(Number);
const STORM_MS = Number(process.env.CHAOS_STORM_MS || 2500);
const SETTLE_MS = 60000;
const PRODUCTS = [1, 2, 3, 4];
const STOCK = 40; // small enough that some orders find a product sold out
const USERS = 8;
const PAIDLIKE = new Set(['PAID', 'REFUNDING', 'REFUNDED']);

/** Rows of a query, read with the sqlite3 shell from the database file itself. */
function rows(db, query) {
  const out = execFileSync('sqlite3', ['-readonly', '-json', db, query], { encoding: 'utf8' });
  return out.trim() ? JSON.parse(out) : [];
}

/** The merchant's delivery: one POST per call to a receiver that counts them by order. */
const FULFILLMENT = `
local M = {}
function M.deliver(order, items)
  local res, err = http.request{ url = config.deliver_url, method = "POST", timeout_ms = 2000,
                                 headers = { ["Content-Type"] = "application/json" },
                                 body = json.encode({ order_no = order.order_no }) }
  if not res then error("receiver unreachable: " .. tostring(err), 0) end
  if res.status ~= 204 then error("receiver answered " .. res.status, 0) end
end
return M
`;

async function startReceiver() {
  const calls = new Map();
  const server = http.createServer((req, res) => {
    let body = '';
    req.on('data', (d) => { body += d; });
    req.on('end', () => {
      const no = JSON.parse(body).order_no;
      calls.set(no, (calls.get(no) || 0) + 1);
      res.writeHead(204);
      res.end();
    });
  });
  await new Promise((r) => server.listen(0, '127.0.0.1', r));
  return { calls, url: `http://127.0.0.1:${server.address().port}/deliver`, close: () => new Promise((r) => server.close(r)) };
}

/** WeChat's bad days, chosen by the seed (rates, so they keep firing through the storm). */
function faultsFor(rnd) {
  const pick = (max) => (rnd() % 1000) / 1000 * max;
  return {
    system_error: { rate: pick(0.08) },
    timeout: { rate: pick(0.04), ms: 2500 },   // past the gateway's 2 s: the call happened, the answer is lost
    slow: { rate: pick(0.1), ms: 200 },
    notify_drop: { rate: pick(0.25) },
    notify_duplicate: { rate: pick(0.2), concurrent: rnd() % 2 === 0 },
    notify_delay: { rate: pick(0.2), ms: 300 },
    notify_probe: { rate: pick(0.05) },
    notify_bad_signature: { rate: pick(0.05) },
  };
}

/** One user until the storm ends: every answer may be an error or a refused connection. */
async function shopper(ctx, user, rnd) {
  const { world, stats } = ctx;
  while (Date.now() < ctx.stormEnd) {
    const gw = ctx.gw;
    try {
      const n = 1 + (rnd() % 2);
      const items = [...PRODUCTS].sort(() => (rnd() % 3) - 1).slice(0, n).map((product_id) => ({ product_id, qty: 1 + (rnd() % 3) }));
      let r = await gw.post('/api/orders', { items }, { headers: user.auth, timeout: 5000 });
      if (r.status !== 201) { await sleep(20); continue; }
      const no = r.json.order_no;
      ctx.created.set(no, r.json.amount);
      const fate = rnd() % 10;
      if (fate === 0) { await gw.post(`/api/orders/${no}/cancel`, {}, { headers: user.auth, timeout: 5000 }); stats.cancels++; continue; }
      if (fate === 1) { stats.abandoned++; continue; } // it expires
      r = await gw.post(`/api/orders/${no}/pay`, {}, { headers: user.auth, timeout: 5000 });
      if (r.status !== 200) continue;
      if (fate === 2) { await gw.post(`/api/orders/${no}/cancel`, {}, { headers: user.auth, timeout: 5000 }); stats.cancels++; continue; }
      if (fate === 3) { stats.abandoned++; continue; } // prepaid, never paid: closed at WeChat when it expires
      if (fate === 4) await sleep(rnd() % 300); // pays late, maybe after a cancel raced it
      await world.userPays(user, r.json, fate === 5 ? 'CANCEL' : 'SUCCESS');
      stats.pays++;
      for (let i = 0; i < 10; i++) {
        r = await gw.get(`/api/orders/${no}`, { headers: user.auth, timeout: 5000 });
        if (r.json?.status === 'PAID') break;
        await sleep(30);
      }
      if (r.json?.status === 'PAID' && fate >= 8) { // the operator refunds some: all, or 1 fen
        const body = fate === 8 ? {} : { amount: 1, reason: 'partial' };
        r = await gw.post(`/admin/orders/${no}/refund`, body, { timeout: 5000 });
        if (r.status === 202) stats.refunds++;
      }
    } catch {
      await sleep(30); // the gateway or the sandbox is down: try again
    }
  }
}

/** kill -9 at the seeded moments, then start again on the same database and port. */
async function killer(ctx, plan) {
  const t0 = Date.now();
  for (const k of plan) {
    await sleep(Math.max(0, t0 + k.at - Date.now()));
    if (k.who === 'gateway') {
      await ctx.gw.kill();
      ctx.kills.gateway++;
      await sleep(k.down);
      ctx.gw = await restartOnPort(() => ctx.startShop());
    } else {
      await ctx.world.restartSandbox({ downMs: k.down });
      ctx.kills.sandbox++;
    }
  }
}

function settledWhy(shopDb, sandboxDb) {
  const why = [];
  const n = (db, q) => rows(db, q)[0].n;
  const open = n(shopDb, "SELECT count(*) AS n FROM orders WHERE status IN ('CREATED','PAYING','REFUNDING')");
  if (open) why.push(`${open} orders CREATED, PAYING or REFUNDING`);
  const refunds = n(shopDb, "SELECT count(*) AS n FROM refunds WHERE status IN ('PENDING','PROCESSING')");
  if (refunds) why.push(`${refunds} refunds pending`);
  const jobs = n(shopDb, "SELECT count(*) AS n FROM _paygate_jobs WHERE state <> 'dead'");
  if (jobs) why.push(`${jobs} shop jobs waiting`);
  const notes = n(sandboxDb, "SELECT count(*) AS n FROM notifications WHERE state = 'pending'");
  if (notes) why.push(`${notes} notifications still being sent`);
  const sjobs = n(sandboxDb, "SELECT count(*) AS n FROM _paygate_jobs WHERE state <> 'dead'");
  if (sjobs) why.push(`${sjobs} sandbox jobs waiting`);
  return why;
}

/** Everything the invariants say, read from the two database files; returns the violations. */
function check(shopDb, sandboxDb, ctx, receiver) {
  const v = [];
  const orders = new Map(rows(shopDb, 'SELECT order_no, status, amount, transaction_id, refunded, units FROM orders').map((o) => [o.order_no, o]));
  const items = rows(shopDb, 'SELECT order_no, product_id, qty FROM order_items');
  const products = rows(shopDb, 'SELECT id, stock, reserved, sold FROM products ORDER BY id');
  const wx = new Map(rows(sandboxDb, 'SELECT out_trade_no, trade_state, total, transaction_id FROM orders').map((o) => [o.out_trade_no, o]));
  const wxRefunded = new Map(rows(sandboxDb, "SELECT out_trade_no, sum(refund) AS n FROM refunds WHERE status = 'SUCCESS' GROUP BY out_trade_no")
    .map((r) => [r.out_trade_no, r.n]));
  const refunds = new Map(rows(shopDb, "SELECT order_no, sum(amount) AS n FROM refunds WHERE status = 'SUCCESS' GROUP BY order_no")
    .map((r) => [r.order_no, r.n]));
  const fulfillments = new Map(rows(shopDb, 'SELECT order_no, status FROM fulfillments').map((f) => [f.order_no, f]));

  // Stock: conserved, and where the orders say it is.
  const held = (units) => {
    const by = new Map(PRODUCTS.map((id) => [id, 0]));
    for (const it of items) if (orders.get(it.order_no)?.units === units) by.set(it.product_id, by.get(it.product_id) + it.qty);
    return by;
  };
  const reserved = held('reserved'), sold = held('sold');
  for (const p of products) {
    if (p.stock + p.reserved + p.sold !== STOCK) v.push(`product ${p.id}: stock ${p.stock} + reserved ${p.reserved} + sold ${p.sold} is not ${STOCK}`);
    if (p.reserved !== reserved.get(p.id)) v.push(`product ${p.id}: reserved ${p.reserved}, the open orders hold ${reserved.get(p.id)}`);
    if (p.sold !== sold.get(p.id)) v.push(`product ${p.id}: sold ${p.sold}, the paid orders hold ${sold.get(p.id)}`);
  }
  // Every 201 is stored with its amount.
  for (const [no, amount] of ctx.created) {
    const o = orders.get(no);
    if (!o) v.push(`order ${no} was answered 201 but is not in the database`);
    else if (o.amount !== amount) v.push(`order ${no}: amount ${o.amount}, answered ${amount}`);
  }
  // WeChat and the shop agree on every payment and refund.
  for (const [no, w] of wx) {
    const o = orders.get(no);
    if (w.trade_state === 'SUCCESS' || w.trade_state === 'REFUND') {
      if (!o || !PAIDLIKE.has(o.status)) v.push(`order ${no}: ${w.trade_state} at WeChat, ${o ? o.status : 'missing'} here`);
      else {
        if (o.amount !== w.total) v.push(`order ${no}: amount ${o.amount} here, ${w.total} at WeChat`);
        if (o.transaction_id !== w.transaction_id) v.push(`order ${no}: transaction ${o.transaction_id} here, ${w.transaction_id} at WeChat`);
      }
    }
  }
  for (const [no, o] of orders) {
    if (PAIDLIKE.has(o.status)) {
      const w = wx.get(no);
      if (!w || (w.trade_state !== 'SUCCESS' && w.trade_state !== 'REFUND')) v.push(`order ${no}: ${o.status} here, ${w ? w.trade_state : 'unknown'} at WeChat`);
      if ((wxRefunded.get(no) || 0) !== o.refunded) v.push(`order ${no}: ${o.refunded} refunded here, ${wxRefunded.get(no) || 0} at WeChat`);
      if ((refunds.get(no) || 0) !== o.refunded) v.push(`order ${no}: refunded ${o.refunded}, its successful refunds add up to ${refunds.get(no) || 0}`);
    }
  }
  // Fulfillment: once per paid order, done, and delivered.
  for (const [no, o] of orders) {
    const f = fulfillments.get(no);
    if (o.units === 'sold' && !f) v.push(`order ${no} was paid and sold but has no fulfillment`);
    if (f && !PAIDLIKE.has(o.status)) v.push(`order ${no} is ${o.status} but has a fulfillment`);
    if (f && f.status !== 'DONE') v.push(`order ${no}: fulfillment ${f.status} after settling`);
    if (f && f.status === 'DONE' && !receiver.calls.has(no)) v.push(`order ${no}: fulfillment DONE but never delivered`);
  }
  for (const no of receiver.calls.keys()) if (!fulfillments.has(no)) v.push(`order ${no} was delivered without a fulfillment`);
  // Nothing dead, nothing stuck.
  for (const [name, db] of [['shop', shopDb], ['sandbox', sandboxDb]]) {
    for (const j of rows(db, "SELECT name, key, state, attempts, last_error FROM _paygate_jobs")) {
      v.push(`${name} job ${j.name} ${j.key || ''} is ${j.state} after ${j.attempts} attempts: ${j.last_error}`);
    }
  }
  for (const n of rows(sandboxDb, "SELECT ref, state, attempts FROM notifications WHERE state IN ('pending', 'failed')")) {
    v.push(`WeChat's notification for ${n.ref} is ${n.state} after ${n.attempts} attempts`);
  }
  return v;
}

const totals = { seeds: [], orders: 0, paid: 0, refunded: 0, closed: 0, gatewayKills: 0, sandboxKills: 0, redeliveries: 0, violations: 0 };

for (const seed of SEEDS) {
  test(`chaos seed ${seed}: a storm with WeChat's faults and kill -9 of both sides ends with every invariant holding`,
    { timeout: STORM_MS + SETTLE_MS + 60000 }, async () => {
      const rnd = seeded(seed);
      const world = await startWorld({ keepSandbox: true });
      const receiver = await startReceiver();
      const home = mkdtempSync(join(tmpdir(), 'paygate-chaos-'));
      const ctx = {
        world, created: new Map(), kills: { gateway: 0, sandbox: 0 },
        stats: { cancels: 0, abandoned: 0, pays: 0, refunds: 0 },
      };
      let violations = [];
      try {
        const shopApp = { order_ttl_s: 2 + (rnd() % 3), reconcile_after_s: 1, deliver_url: receiver.url };
        const port = await freePort();
        ctx.workers = 1 + ((rnd() >>> 16) % 2); // a master with one or two workers on the same database
        ctx.startShop = () => world.startShop(shopApp, { files: { 'fulfillment.lua': FULFILLMENT }, dir: home, port,
          config: { workers: ctx.workers } });
        ctx.gw = await ctx.startShop();
        for (const id of PRODUCTS) {
          const r = await ctx.gw.put(`/admin/products/${id}`, { name: `product ${id}`, price: 100 * id + (rnd() % 50), stock: STOCK });
          assert.equal(r.status, 200, r.body);
        }
        const r = await world.sandbox.post('/sandbox/faults', faultsFor(rnd));
        assert.equal(r.status, 200, r.body);
        const users = [];
        for (let i = 0; i < USERS; i++) users.push(await world.login(ctx.gw));

        // The kills: 1 to 3 of the gateway, 0 or 1 of the sandbox, at seeded moments of the storm.
        const plan = [];
        const hi = () => rnd() >>> 16; // the high bits: the low ones of nearby seeds start alike
        for (let i = 0, n = 1 + (hi() % 3); i < n; i++) plan.push({ who: 'gateway', at: 200 + (rnd() % (STORM_MS - 400)), down: rnd() % 300 });
        if (hi() % 2) plan.push({ who: 'sandbox', at: 200 + (rnd() % (STORM_MS - 400)), down: rnd() % 300 });
        plan.sort((a, b) => a.at - b.at);

        ctx.stormEnd = Date.now() + STORM_MS;
        await Promise.all([killer(ctx, plan), ...users.map((u, i) => shopper(ctx, u, seeded(seed * 1000 + i + 1)))]);

        // Settle: WeChat's good days again, and every waiting job of the shop due now.
        await world.sandbox.request('DELETE', '/sandbox/faults');
        const shopDb = join(home, 'paygate.db'), sandboxDb = join(world.sandboxDir, 'paygate.db');
        const end = Date.now() + SETTLE_MS;
        let why, lastWhy = '';
        const settleStart = Date.now();
        for (;;) {
          why = settledWhy(shopDb, sandboxDb);
          if (process.env.CHAOS_DEBUG && why.join() !== lastWhy) console.log(`# +${Date.now() - settleStart} ms: ${(lastWhy = why.join()) || 'settled'}`);
          if (!why.length || Date.now() > end) break;
          if (process.env.CHAOS_DEBUG && Date.now() - settleStart > 4000 && !ctx.dumped) {
            ctx.dumped = true;
            console.log('# ' + JSON.stringify(rows(shopDb, 'SELECT name, key, state, run_at - ' + Date.now() + ' AS due_in, attempts, last_error FROM _paygate_jobs')));
            console.log('# ' + JSON.stringify(rows(shopDb, "SELECT * FROM refunds WHERE status IN ('PENDING','PROCESSING')")));
            console.log('# ' + JSON.stringify(rows(sandboxDb, 'SELECT name, key, state, run_at - ' + Date.now() + ' AS due_in, attempts, last_error FROM _paygate_jobs')));
          }
          for (const j of rows(shopDb, `SELECT key FROM _paygate_jobs WHERE state = 'queued' AND key IS NOT NULL AND key NOT LIKE 'test_wake:%' AND run_at > ${Date.now() + 50}`)) {
            await ctx.gw.post(`/test/jobs/${j.key}/due`, {}).catch(() => {});
          }
          await sleep(200);
        }
        await ctx.gw.stop();
        await world.sandbox.stop();
        if (why.length) violations.push(`not settled after ${SETTLE_MS / 1000} s: ${why.join('; ')}`);
        violations.push(...check(shopDb, sandboxDb, ctx, receiver));

        const orders = rows(shopDb, 'SELECT status, count(*) AS n FROM orders GROUP BY status');
        const count = (s) => orders.filter((o) => s.includes(o.status)).reduce((a, o) => a + o.n, 0);
        const redeliveries = [...receiver.calls.values()].reduce((a, n) => a + n - 1, 0);
        const line = { orders: count(['CREATED', 'PAYING', 'PAID', 'CLOSED', 'REFUNDING', 'REFUNDED']), paid: count(['PAID', 'REFUNDING', 'REFUNDED']),
          refunded: count(['REFUNDED']), closed: count(['CLOSED']) };
        console.log(`# chaos seed ${seed} (${ctx.workers} worker${ctx.workers > 1 ? 's' : ''}): ${line.orders} orders (${line.paid} paid, ${line.refunded} of them refunded, ${line.closed} closed; ` +
          `${ctx.stats.cancels} cancels, ${ctx.stats.abandoned} left to expire), ${ctx.kills.gateway} gateway kills, ` +
          `${ctx.kills.sandbox} sandbox kills, ${redeliveries} deliveries repeated after a kill; violations ${violations.length}`);
        totals.seeds.push(seed);
        for (const k of ['orders', 'paid', 'refunded', 'closed']) totals[k] += line[k];
        totals.gatewayKills += ctx.kills.gateway;
        totals.sandboxKills += ctx.kills.sandbox;
        totals.redeliveries += redeliveries;
        totals.violations += violations.length;
        assert.ok(line.paid > 0, 'the storm paid no order at all');
      } catch (e) {
        violations.push(`the run failed: ${e.stack || e}`);
      } finally {
        await world.stop();
        await receiver.close();
        rmSync(home, { recursive: true, force: true });
        if (violations.length) {
          console.log(`# chaos seed ${seed} FAILED; replay it with:  make chaos SEED=${seed} CHAOS_STORM_MS=${STORM_MS}`);
          for (const x of violations.slice(0, 40)) console.log(`#   ${x}`);
        }
      }
      assert.deepEqual(violations, [], `seed ${seed} broke invariants; replay with: make chaos SEED=${seed} CHAOS_STORM_MS=${STORM_MS}`);
    });
}

after(() => {
  console.log(`# chaos: seeds ${totals.seeds.join(',')} (${totals.seeds.length} of ${SEEDS.length}): ${totals.orders} orders, ` +
    `${totals.paid} paid, ${totals.refunded} refunded, ${totals.closed} closed; ${totals.gatewayKills} gateway kills, ` +
    `${totals.sandboxKills} sandbox kills; ${totals.redeliveries} repeated deliveries; violations ${totals.violations}`);
});

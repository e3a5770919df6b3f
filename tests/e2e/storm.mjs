// storm.mjs — the purchase storm and the money invariants, shared by the chaos spec (one gateway
// killed and restarted) and the nodes spec (three gateways on one PostgreSQL database):
// shoppers looping over seeded choices, WeChat's bad days, a receiver that counts the shop's
// deliveries, and the checks read straight from the databases afterwards.
import { execFileSync } from 'node:child_process';
import http from 'node:http';
import { sleep, pgRows } from './harness.mjs';

export const PAIDLIKE = new Set(['PAID', 'REFUNDING', 'REFUNDED']);

/** Rows of a query, read with the sqlite3 shell from the database file itself. */
export function sqliteRows(db, query) {
  const out = execFileSync('sqlite3', ['-readonly', '-json', db, query], { encoding: 'utf8' });
  return out.trim() ? JSON.parse(out) : [];
}

/** A query function (SQL → rows) for a database: a SQLite file, or a PostgreSQL URL read with psql. */
export const reader = (database) => (/^postgres(ql)?:/.test(database)
  ? (q) => pgRows(database, q) : (q) => sqliteRows(database, q));

/**
 * The merchant's delivery: one POST per call to a receiver that counts them by order
 * (config.deliver_url; a gateway may add ?node=N to it, so the receiver knows who delivered).
 */
export const FULFILLMENT = `
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

/**
 * The receiver of deliveries (POST /deliver, body {order_no}) and of anything else the
 * gateways report (POST /<what>, body {key}): calls counts deliveries by order; log has every
 * call as { what, key, node, at } (node from ?node=, at in ms).
 */
export async function startReceiver() {
  const calls = new Map();
  const log = [];
  const server = http.createServer((req, res) => {
    let body = '';
    req.on('data', (d) => { body += d; });
    req.on('end', () => {
      const u = new URL(req.url, 'http://x');
      const b = JSON.parse(body);
      const what = u.pathname.slice(1);
      const key = what === 'deliver' ? b.order_no : b.key;
      if (what === 'deliver') calls.set(key, (calls.get(key) || 0) + 1);
      log.push({ what, key, node: u.searchParams.get('node'), at: Date.now() });
      res.writeHead(204);
      res.end();
    });
  });
  await new Promise((r) => server.listen(0, '127.0.0.1', r));
  const base = `http://127.0.0.1:${server.address().port}`;
  return { calls, log, base, url: `${base}/deliver`, close: () => new Promise((r) => server.close(r)) };
}

/** WeChat's bad days, chosen by the seed (rates, so they keep firing through the storm). */
export function faultsFor(rnd) {
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

/**
 * One user until ctx.stormEnd, against ctx.gw (anything with get and post: a gateway, or a
 * client of several): every answer may be an error or a refused connection. ctx: world,
 * products (ids), created (Map order_no → amount answered 201), stats.
 */
export async function shopper(ctx, user, rnd) {
  const { world, stats, products } = ctx;
  // One write in eight hangs up after 1-40 ms, often while its handler is inside a transaction
  // or waits for its commit: nothing of it may stay half done, or hold anything.
  const patience = () => (rnd() % 8 === 0 ? 1 + (rnd() % 40) : 5000);
  while (Date.now() < ctx.stormEnd) {
    const gw = ctx.gw;
    try {
      const n = 1 + (rnd() % 2);
      const items = [...products].sort(() => (rnd() % 3) - 1).slice(0, n).map((product_id) => ({ product_id, qty: 1 + (rnd() % 3) }));
      let r = await gw.post('/api/orders', { items }, { headers: user.auth, timeout: patience() });
      if (r.status !== 201) { await sleep(20); continue; }
      const no = r.json.order_no;
      ctx.created.set(no, r.json.amount);
      const fate = rnd() % 10;
      if (fate === 0) { await gw.post(`/api/orders/${no}/cancel`, {}, { headers: user.auth, timeout: patience() }); stats.cancels++; continue; }
      if (fate === 1) { stats.abandoned++; continue; } // it expires
      r = await gw.post(`/api/orders/${no}/pay`, {}, { headers: user.auth, timeout: patience() });
      if (r.status !== 200) continue;
      if (fate === 2) { await gw.post(`/api/orders/${no}/cancel`, {}, { headers: user.auth, timeout: patience() }); stats.cancels++; continue; }
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
        r = await gw.post(`/admin/orders/${no}/refund`, body, { timeout: patience() });
        if (r.status === 202) stats.refunds++;
      }
    } catch (e) {
      if (/^timeout/.test(e?.message)) stats.hangups = (stats.hangups || 0) + 1;
      await sleep(30); // the gateway or the sandbox is down, or we hung up: go on
    }
  }
}

/** What the shop and the sandbox are still busy with (empty once settled); shop and sandbox are query functions. */
export function settledWhy(shop, sandbox) {
  const why = [];
  const n = (rows, q) => rows(q)[0].n;
  const open = n(shop, "SELECT count(*) AS n FROM orders WHERE status IN ('CREATED','PAYING','REFUNDING')");
  if (open) why.push(`${open} orders CREATED, PAYING or REFUNDING`);
  const refunds = n(shop, "SELECT count(*) AS n FROM refunds WHERE status IN ('PENDING','PROCESSING')");
  if (refunds) why.push(`${refunds} refunds pending`);
  const jobs = n(shop, "SELECT count(*) AS n FROM _paygate_jobs WHERE state <> 'dead'");
  if (jobs) why.push(`${jobs} shop jobs waiting`);
  const notes = n(sandbox, "SELECT count(*) AS n FROM notifications WHERE state = 'pending'");
  if (notes) why.push(`${notes} notifications still being sent`);
  const sjobs = n(sandbox, "SELECT count(*) AS n FROM _paygate_jobs WHERE state <> 'dead'");
  if (sjobs) why.push(`${sjobs} sandbox jobs waiting`);
  return why;
}

/** The shop's waiting jobs that are not due yet (to be made due at once while settling). */
export const waitingJobKeys = (shop) => shop(`SELECT key FROM _paygate_jobs WHERE state = 'queued' AND key IS NOT NULL
  AND key NOT LIKE 'test_wake:%' AND run_at > ${Date.now() + 50}`).map((j) => j.key);

/**
 * Everything the invariants say, read from the two databases (query functions); returns the
 * violations. ctx: products (ids), stock (each product's), created; receiver: startReceiver's.
 */
export function check(shop, sandbox, ctx, receiver) {
  const v = [];
  const orders = new Map(shop('SELECT order_no, status, amount, transaction_id, refunded, units FROM orders').map((o) => [o.order_no, o]));
  const items = shop('SELECT order_no, product_id, qty FROM order_items');
  const products = shop('SELECT id, stock, reserved, sold FROM products ORDER BY id');
  const wx = new Map(sandbox('SELECT out_trade_no, trade_state, total, transaction_id FROM orders').map((o) => [o.out_trade_no, o]));
  const wxRefunded = new Map(sandbox("SELECT out_trade_no, sum(refund) AS n FROM refunds WHERE status = 'SUCCESS' GROUP BY out_trade_no")
    .map((r) => [r.out_trade_no, r.n]));
  const refunds = new Map(shop("SELECT order_no, sum(amount) AS n FROM refunds WHERE status = 'SUCCESS' GROUP BY order_no")
    .map((r) => [r.order_no, r.n]));
  const fulfillments = new Map(shop('SELECT order_no, status FROM fulfillments').map((f) => [f.order_no, f]));

  // Stock: conserved, and where the orders say it is.
  const held = (units) => {
    const by = new Map(ctx.products.map((id) => [id, 0]));
    for (const it of items) if (orders.get(it.order_no)?.units === units) by.set(it.product_id, by.get(it.product_id) + it.qty);
    return by;
  };
  const reserved = held('reserved'), sold = held('sold');
  for (const p of products) {
    if (p.stock + p.reserved + p.sold !== ctx.stock) v.push(`product ${p.id}: stock ${p.stock} + reserved ${p.reserved} + sold ${p.sold} is not ${ctx.stock}`);
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
  for (const [name, rows] of [['shop', shop], ['sandbox', sandbox]]) {
    for (const j of rows('SELECT name, key, state, attempts, last_error FROM _paygate_jobs')) {
      v.push(`${name} job ${j.name} ${j.key || ''} is ${j.state} after ${j.attempts} attempts: ${j.last_error}`);
    }
  }
  for (const n of sandbox("SELECT ref, state, attempts FROM notifications WHERE state IN ('pending', 'failed')")) {
    v.push(`WeChat's notification for ${n.ref} is ${n.state} after ${n.attempts} attempts`);
  }
  return v;
}

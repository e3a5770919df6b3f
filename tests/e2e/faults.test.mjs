// Fault injection: the shop's order, pay, notification and refund paths with the Nth SQLite write,
// read, COMMIT or allocation failing (build/tests/paygate-faults, tests/faults/main.c). For each
// injection point the purchase is played through (order, pay, the user pays, WeChat's notification
// or our status query, a refund by line with restock); every answer must be a clean one (a JSON
// error, never a dropped connection), the gateway must keep serving, and the database must be
// whole: stock + reserved + sold conserved for every product and matching the orders, no order
// without its items, a transaction id on every paid order and none on an open one, refunds adding up.
//
// FAULT_SWEEP=short (make test: a few points of each kind) or full (make faults: every write, read
// and commit point up to the last one the purchase reaches, and allocations at growing strides).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ROOT, sleep } from './harness.mjs';
import { startWorld } from './shopenv.mjs';

const FAULTS_BIN = process.env.PAYGATE_FAULTS_BIN || join(ROOT, 'build', 'tests', 'paygate-faults');
const FULL = process.env.FAULT_SWEEP === 'full';
const STOCK = 100000;
const PRODUCTS = [1, 2];

const STATE = `
local app = require "paygate"
app.get("/faults/state", function(req)
  return 200, {
    products = db.query("SELECT id, stock, reserved, sold FROM products ORDER BY id"),
    orders = db.query("SELECT order_no, status, amount, transaction_id, refunded FROM orders"),
    items = db.query("SELECT order_no, product_id, qty FROM order_items"),
    refunds = db.query("SELECT out_refund_no, order_no, amount, status FROM refunds"),
    refund_items = db.query("SELECT out_refund_no, product_id, qty, restock, restocked FROM refund_items"),
  }
end)
`;

let world, gw, dir, faultFile, user;
const figures = { points: 0, fired: 0, violations: 0, byKind: {} };

before(async () => {
  world = await startWorld();
  dir = mkdtempSync(join(tmpdir(), 'paygate-faults-'));
  faultFile = join(dir, 'fault');
  writeFileSync(faultFile, 'none');
  const init = readFileSync(join(ROOT, 'scripts/init.lua'), 'utf8') + 'require "test_hooks"\nrequire "faults_state"\n';
  gw = await world.startShop({}, {
    bin: FAULTS_BIN, env: { PAYGATE_FAULT_FILE: faultFile },
    files: { 'faults_state.lua': STATE, 'init.lua': init },
  });
  for (const id of PRODUCTS) {
    const r = await gw.put(`/admin/products/${id}`, { name: `product ${id}`, price: 100 * id, stock: STOCK });
    assert.equal(r.status, 200, r.body);
  }
  user = await world.login(gw);
});
after(async () => {
  console.log(`# fault sweep (${FULL ? 'full' : 'short'}): ${figures.points} injection points, ${figures.fired} fired, ` +
    `violations ${figures.violations}; ${JSON.stringify(figures.byKind)}`);
  await world?.stop();
  rmSync(dir, { recursive: true, force: true });
});

function arm(spec) {
  writeFileSync(faultFile, spec);
  process.kill(gw.pid, 'SIGUSR2');
}

// Every answer must be clean: a status, and for an error a JSON body naming it.
function clean(what, r) {
  assert.ok(r && r.status, `${what}: no answer (${r?.error})`);
  if (r.status >= 400) assert.ok(r.json && typeof r.json.error === 'string', `${what}: ${r.status} without a JSON error: ${r.body}`);
  return r;
}

const call = (what, p, answers) => p.then((r) => { answers.push([what, r]); return r; },
  (e) => { answers.push([what, { error: e.message }]); return { error: e.message }; });

/** One purchase, as far as it gets: returns the answers and the order number. */
async function purchase() {
  const answers = [];
  const items = [{ product_id: 1, qty: 1 }, { product_id: 2, qty: 2 }];
  const o = await call('order', gw.post('/api/orders', { items }, { headers: user.auth }), answers);
  if (o.status !== 201) return { answers };
  const no = o.json.order_no;
  const p = await call('pay', gw.post(`/api/orders/${no}/pay`, {}, { headers: user.auth }), answers);
  let status;
  if (p.status === 200) {
    await world.userPays(user, p.json);
    for (let i = 0; i < 60 && status !== 'PAID'; i++) {   // WeChat's notification, else our status query
      const g = await call('status', gw.get(`/api/orders/${no}`, { headers: user.auth }), answers);
      status = g.json?.status;
      if (status !== 'PAID') await sleep(25);
    }
  }
  if (status === 'PAID') {
    const r = await call('refund', gw.post(`/admin/orders/${no}/refund`, { items: [{ product_id: 2, qty: 1 }], restock: true }),
      answers);
    if (r.status === 202) {
      for (let i = 0; i < 120; i++) {
        const x = (await gw.get(`/test/refunds/${no}`).catch(() => null))?.json?.refunds?.[0];
        if (x && ['SUCCESS', 'CLOSED', 'FAILED'].includes(x.status)) break;
        await sleep(25);
      }
    }
  }
  return { answers, no, created: o.json };
}

async function state() {
  for (let i = 0; i < 20; i++) {
    const r = await gw.get('/faults/state').catch(() => null);
    if (r?.status === 200) return r.json;
    await sleep(20);
  }
  throw new Error('the state could not be read');
}

const PAIDLIKE = new Set(['PAID', 'REFUNDING', 'REFUNDED']);

function checkState(s, created) {
  const orders = new Map(s.orders.map((o) => [o.order_no, o]));
  const itemsOf = new Map();
  for (const it of s.items) itemsOf.set(it.order_no, [...(itemsOf.get(it.order_no) || []), it]);
  for (const o of s.orders) {
    assert.ok(itemsOf.has(o.order_no), `order ${o.order_no} has no items: half an order`);
    if (PAIDLIKE.has(o.status)) assert.ok(o.transaction_id, `order ${o.order_no} is ${o.status} without a transaction id`);
    if (o.status === 'CREATED' || o.status === 'PAYING') assert.equal(o.transaction_id, undefined, `open order ${o.order_no} has a transaction id`);
    const refunds = s.refunds.filter((r) => r.order_no === o.order_no);
    const succeeded = refunds.filter((r) => r.status === 'SUCCESS').reduce((a, r) => a + r.amount, 0);
    if (o.status === 'PAID' || o.status === 'REFUNDED') assert.equal(o.refunded || 0, succeeded, `order ${o.order_no}: refunded is not the refunds that succeeded`);
    assert.ok(refunds.reduce((a, r) => a + (['FAILED', 'CLOSED'].includes(r.status) ? 0 : r.amount), 0) <= o.amount, `order ${o.order_no} refunds more than was paid`);
  }
  for (const r of s.refunds) {
    assert.ok(orders.has(r.order_no), `refund ${r.out_refund_no} of no order`);
    assert.ok(s.refund_items.some((it) => it.out_refund_no === r.out_refund_no), `refund ${r.out_refund_no} without its lines`);
  }
  for (const p of s.products) {
    assert.equal(p.stock + p.reserved + p.sold, STOCK, `product ${p.id}: units appeared or vanished`);
    const held = (statuses) => s.items.filter((it) => it.product_id === p.id && statuses(orders.get(it.order_no)?.status))
      .reduce((a, it) => a + it.qty, 0);
    assert.equal(p.reserved, held((st) => st === 'CREATED' || st === 'PAYING'), `product ${p.id}: reserved does not match the open orders`);
    const restocked = s.refund_items.filter((it) => it.product_id === p.id).reduce((a, it) => a + (it.restocked || 0), 0);
    assert.equal(p.sold, held((st) => PAIDLIKE.has(st)) - restocked, `product ${p.id}: sold does not match the paid orders`);
  }
  if (created) {
    const o = orders.get(created.order_no);
    assert.ok(o, `order ${created.order_no} was answered 201 but is not in the database`);
    assert.equal(o.amount, created.amount);
  }
}

async function sweepPoint(kind, n) {
  const before = gw.log.length;
  arm(`${kind} ${n}`);
  const run = await purchase();
  // stderr and the answers come on different pipes: give the line a moment to arrive
  const line = `paygate-faults: injected ${kind} ${n}\n`;
  let fired = false;
  for (let i = 0; i < 10 && !(fired = gw.log.slice(before).includes(line)); i++) await sleep(30);
  arm('none');
  figures.points++;
  figures.byKind[kind].points++;
  if (fired) { figures.fired++; figures.byKind[kind].fired++; }
  if (process.env.FAULT_SHOW) console.log(`# ${kind} ${n}${fired ? ' fired' : ''}: ${run.answers.map(([w, r]) => `${w} ${r.status || r.error}`).join(', ')}`);
  try {
    for (const [what, r] of run.answers) clean(`${kind} ${n}: ${what}`, r);
    assert.equal((await gw.get('/healthz')).status, 200, `${kind} ${n}: the gateway stopped serving`);
    checkState(await state(), run.created);
  } catch (e) {
    figures.violations++;
    e.message = `${kind} ${n}: ${e.message}\n  answers: ${run.answers.map(([w, r]) => `${w} ${r.status || r.error}`).join(', ')}`;
    throw e;
  }
  return fired;
}

/** How many events of `kind` one whole purchase has (armed far beyond them, then disarmed). */
async function events(kind) {
  const before = gw.log.length;
  arm(`${kind} 100000000`);
  const run = await purchase();
  assert.ok(run.answers.some(([w, r]) => w === 'refund' && r.status === 202), 'the purchase reaches the refund');
  arm('none');
  const re = new RegExp(`paygate-faults: counted ${kind} (\\d+)\n`);
  let m;
  for (let i = 0; i < 20 && !(m = gw.log.slice(before).match(re)); i++) await sleep(30);
  assert.ok(m, `no count of ${kind} events`);
  return Number(m[1]);
}

// short: four points spread over the purchase (order, pay, notification, refund); full: every
// write, read and commit, and one allocation in every few.
for (const kind of ['write', 'read', 'commit', 'malloc']) {
  test(`the Nth SQLite ${kind} failing during a purchase: clean answers, the gateway serves on, nothing half-done`,
    { timeout: FULL ? 3600000 : 120000 }, async () => {
      const total = await events(kind);
      figures.byKind[kind] = { events: total, points: 0, fired: 0 };
      if (total === 0) return; // none in a purchase (reads: the pages stay in the cache)
      const points = [];
      if (!FULL) {
        for (const f of [0, 0.3, 0.6, 0.9]) points.push(1 + Math.floor(f * (total - 1)));
      } else {
        const step = kind === 'malloc' ? Math.max(1, Math.floor(total / 150)) : 1;
        for (let n = 1; n <= total; n += step) points.push(n);
      }
      for (const n of [...new Set(points)]) await sweepPoint(kind, n);
    });
}

// Durability against power cuts. A shop gateway runs on a SQLite VFS that keeps every write
// not yet synced in memory (build/tests/paygate-crash, tests/crash/crashvfs.c); under a load of
// purchases and WeChat's notifications its power is cut at a write or sync chosen by the seed, keeping
// a random part of what was not synced, one page possibly torn. Then the database is opened
// again and everything that went out must be in it: every 201 (the order, its amount, its
// items), every 204 WeChat got (the order is PAID), every order a user saw PAID; and the money
// adds up (stock + reserved + sold is what was stocked, reserved and sold match the orders).
//
// Seeds: CRASH_SEEDS="1,2,3" (the default, make test) or `make crash SEEDS=N` (1..N).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { cpSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ROOT, startGateway, sleep, seeded } from './harness.mjs';
import { startWorld } from './shopenv.mjs';

const CRASH_BIN = process.env.PAYGATE_CRASH_BIN || join(ROOT, 'build', 'tests', 'paygate-crash');
const SEEDS = (process.env.CRASH_SEEDS || '1,2,3').split(',').map(Number);
const CRASH_EXIT = 77; // tests/crash/crashvfs.h
const PRODUCTS = [1, 2, 3, 4];
const STOCK = 400;
const USERS = 8;

// What the checker reads straight from the database, before anything (a job, a status query) could
// change it. It declares the shop's migrations and nothing else: the shop's jobs find no handler here.
const CHECKER = `
local app = require "paygate"
require "schema"
app.get("/check/state", function(req)
  return 200, {
    orders = db.query("SELECT order_no, status, amount FROM orders ORDER BY order_no"),
    items = db.query("SELECT order_no, product_id, qty FROM order_items ORDER BY order_no, product_id"),
    products = db.query("SELECT id, stock, reserved, sold FROM products ORDER BY id"),
  }
end)
`;

let world;
before(async () => { world = await startWorld(); });
after(async () => { await world?.stop(); });

/** One user buying again and again until the gateway is gone; records what it was told. */
async function shopper(gw, user, rnd, seen) {
  for (;;) {
    const n = 1 + (rnd() % 2);
    const ids = [...PRODUCTS].sort(() => (rnd() % 3) - 1).slice(0, n);
    const items = ids.map((product_id) => ({ product_id, qty: 1 + (rnd() % 2) }));
    let r = await gw.post('/api/orders', { items }, { headers: user.auth }).catch(() => null);
    if (!r) return;
    if (r.status !== 201) continue;
    const no = r.json.order_no;
    seen.created.set(no, { amount: r.json.amount, items });
    r = await gw.post(`/api/orders/${no}/pay`, {}, { headers: user.auth }).catch(() => null);
    if (!r) return;
    if (r.status !== 200) continue;
    await world.userPays(user, r.json).catch(() => {});
    for (let i = 0; i < 20; i++) {
      r = await gw.get(`/api/orders/${no}`, { headers: user.auth }).catch(() => null);
      if (!r) return;
      if (r.json?.status === 'PAID') { seen.paid.add(no); break; }
      await sleep(5);
    }
  }
}

/** The order numbers whose payment notification the gateway answered 204 (WeChat's own record). */
async function acknowledged(orderNos) {
  const acked = new Set();
  for (const no of orderNos) {
    const r = await world.sandbox.get(`/sandbox/notifications?ref=${no}`);
    for (const n of r.json.notifications || []) {
      if (n.deliveries.some((d) => d.status === 204 || d.status === 200)) acked.add(no);
    }
  }
  return acked;
}

for (const seed of SEEDS) {
  test(`seed ${seed}: after a power cut, every answer that went out is in the database and the money adds up`,
    { timeout: 90000 }, async () => {
      const rnd = seeded(seed);
      const cutAt = 10 + (rnd() % 1500);
      const home = mkdtempSync(join(tmpdir(), 'paygate-crash-'));
      try {
        // A short WAL between checkpoints: the checkpointer's thread copies pages into the database
        // file all through the load, so the power also goes in the middle of checkpoints.
        const gw = await world.startShop({}, {
          bin: CRASH_BIN, dir: home, expectExit: true, config: { db_checkpoint_pages: 10 },
          env: { PAYGATE_CRASH_AT: String(cutAt), PAYGATE_CRASH_SEED: String(seed) },
        });
        for (const id of PRODUCTS) {
          const r = await gw.put(`/admin/products/${id}`, { name: `product ${id}`, price: 100 * id, stock: STOCK });
          assert.equal(r.status, 200, r.body);
        }
        const users = [];
        for (let i = 0; i < USERS; i++) users.push(await world.login(gw));
        const seen = { created: new Map(), paid: new Set() };
        const load = Promise.all(users.map((u) => shopper(gw, u, seeded(seed * 100 + users.indexOf(u) + 1), seen)));
        await sleep(150);
        process.kill(gw.pid, 'SIGUSR2'); // arm: the power goes at the cutAt-th write or sync from now
        const { code } = await Promise.race([gw.exited, sleep(30000).then(() => ({ code: 'still running' }))]);
        await load;
        await gw.stop();
        assert.equal(code, CRASH_EXIT, `the power cut at write or sync ${cutAt} should have ended the gateway`);
        assert.ok(seen.created.size > 0, 'the load created orders before the cut');

        // Open the same database again, with only the checker's route.
        const scripts = mkdtempSync(join(tmpdir(), 'paygate-crash-checker-'));
        cpSync(join(ROOT, 'scripts'), scripts, { recursive: true });
        writeFileSync(join(scripts, 'init.lua'), CHECKER);
        const checker = await startGateway({ dir: home, config: { scripts: scripts, watch: false, log_level: 'warn' } });
        let state;
        try {
          const r = await checker.get('/check/state');
          assert.equal(r.status, 200, r.body);
          state = r.json;
        } finally {
          await checker.stop();
          rmSync(scripts, { recursive: true, force: true });
        }

        const orders = new Map(state.orders.map((o) => [o.order_no, o]));
        for (const [no, o] of seen.created) {
          assert.ok(orders.has(no), `order ${no} was answered 201 but is not in the database`);
          assert.equal(orders.get(no).amount, o.amount, `order ${no} changed its amount`);
          const stored = state.items.filter((it) => it.order_no === no).map((it) => `${it.product_id}x${it.qty}`);
          const sent = o.items.map((it) => `${it.product_id}x${it.qty}`).sort();
          assert.deepEqual(stored.sort(), sent, `order ${no} changed its items`);
        }
        const PAIDLIKE = new Set(['PAID', 'REFUNDING', 'REFUNDED']);
        for (const no of seen.paid) {
          assert.ok(PAIDLIKE.has(orders.get(no)?.status), `order ${no} was shown PAID but is ${orders.get(no)?.status}`);
        }
        const acked = await acknowledged([...seen.created.keys()]);
        for (const no of acked) {
          assert.ok(PAIDLIKE.has(orders.get(no)?.status),
            `WeChat got 204 for order ${no} but it is ${orders.get(no)?.status}`);
        }
        const held = (statuses) => {
          const by = new Map(PRODUCTS.map((id) => [id, 0]));
          for (const it of state.items) {
            if (statuses.has(orders.get(it.order_no)?.status)) by.set(it.product_id, by.get(it.product_id) + it.qty);
          }
          return by;
        };
        const reserved = held(new Set(['CREATED', 'PAYING'])), sold = held(PAIDLIKE);
        for (const p of state.products) {
          assert.equal(p.stock + p.reserved + p.sold, STOCK, `product ${p.id}: units appeared or vanished`);
          assert.equal(p.reserved, reserved.get(p.id), `product ${p.id}: reserved does not match the open orders`);
          assert.equal(p.sold, sold.get(p.id), `product ${p.id}: sold does not match the paid orders`);
        }
        console.log(`# seed ${seed}: cut at write or sync ${cutAt}; ${seen.created.size} orders answered 201, ` +
          `${seen.paid.size} seen PAID, ${acked.size} notifications answered 204; all in the database`);
      } finally {
        rmSync(home, { recursive: true, force: true });
      }
    });
}

test('a sync the disk fails: that batch\'s requests get no 201, nothing is left half-done, the gateway keeps serving',
  { timeout: 60000 }, async () => {
    const home = mkdtempSync(join(tmpdir(), 'paygate-crash-'));
    try {
      const gw = await world.startShop({}, { bin: CRASH_BIN, dir: home });
      for (const id of PRODUCTS) {
        assert.equal((await gw.put(`/admin/products/${id}`, { name: `product ${id}`, price: 100 * id, stock: STOCK })).status, 200);
      }
      const user = await world.login(gw);
      const buy = () => gw.post('/api/orders', { items: [{ product_id: 1, qty: 1 }] }, { headers: user.auth });
      process.kill(gw.pid, 'SIGUSR1'); // the next sync of the database fails
      const answers = await Promise.all([buy(), buy(), buy(), buy()]);
      const statuses = answers.map((r) => r.status);
      assert.ok(statuses.every((s) => [201, 503].includes(s)), `unexpected answers ${statuses}`);
      for (const r of answers.filter((a) => a.status === 503)) assert.equal(r.json.error, 'storage_failed', r.body);
      assert.ok(statuses.some((s) => s !== 201), `the batch whose sync failed answered 201: ${statuses}`);
      assert.ok(await gw.metric('paygate_db_batches_lost_total') >= 1);
      const after = await buy();
      assert.equal(after.status, 201, `the gateway did not recover: ${after.body}`);
      for (const r of [...answers.filter((a) => a.status === 201), after]) {
        assert.equal((await gw.get(`/api/orders/${r.json.order_no}`, { headers: user.auth })).status, 200);
      }
      const p = (await gw.get('/test/products/1')).json;
      const open = answers.filter((a) => a.status === 201).length + 1;
      assert.equal(p.stock + p.reserved + p.sold, STOCK, 'units appeared or vanished');
      assert.equal(p.reserved, open, 'only the orders answered 201 hold stock');
      await gw.stop();
    } finally {
      rmSync(home, { recursive: true, force: true });
    }
  });

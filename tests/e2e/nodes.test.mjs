// N nodes on one database: three shop gateways (one worker each) share one PostgreSQL database
// behind a round-robin balancer written here (every client call and every WeChat notification
// goes through it, so consecutive steps of one purchase land on different nodes). A storm of
// users with WeChat's faults on, durable jobs scheduled throughout (each sleeps a little, then
// reports its run), and `kill -9` of one node mid-storm, started again on the same database.
// Then, read from PostgreSQL and the sandbox's SQLite file: every invariant of the chaos spec
// holds (stock, money, WeChat agreeing, every 201 stored, nothing dead or stuck), every
// fulfillment was delivered once and every job ran once — a second delivery or run only where
// the first was on the killed node before it was killed (at least once across a crash, never
// twice by two live nodes).
//
// Before the storm: three nodes started at the same moment on an empty database must all come
// up, with each migration applied once (NODES_START_ROUNDS rounds, 8).
//
// Seeds: NODES_SEEDS="1" (make test); NODES_STORM_MS (3000). Runs where backends() has
// PostgreSQL; NODES_BACKEND=sqlite runs it on one SQLite file shared by the three (a check of
// the spec's own machinery on one machine, not a supported deployment).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import http from 'node:http';
import {
  ROOT, request, sleep, seeded, pgUnavailable, pgCreateDatabase, pgDropDatabase,
} from './harness.mjs';
import { startWorld, restartOnPort, freePort } from './shopenv.mjs';
import { FULFILLMENT, startReceiver, faultsFor, shopper, settledWhy, waitingJobKeys, check, reader } from './storm.mjs';

const SEEDS = (process.env.NODES_SEEDS || '1').split(',').map(Number);
const STORM_MS = Number(process.env.NODES_STORM_MS || 3000);
const SETTLE_MS = 60000;
const NODES = 3;
const PRODUCTS = [1, 2, 3, 4];
const STOCK = 40;
const USERS = 8;
const TICKS = 30;
const BACKEND = process.env.NODES_BACKEND || 'postgresql';
const skip = BACKEND === 'postgresql' ? pgUnavailable() : false;
console.log(skip ? `backends: none; postgresql SKIPPED: ${skip}` : `backends: ${BACKEND} (three nodes on one database)`);

// A job of the test's: sleeps, then reports its run to the receiver (as the node it ran on).
const NODE_HOOKS = `
local app = require "paygate"
app.post("/test/tick", function(req)
  local b = app.read_json(req)
  local _, created = jobs.schedule("test_tick", { key = b.key, ms = b.ms }, { key = "tick:" .. b.key, delay_ms = b.delay_ms })
  return 200, { created = created }
end)
app.job("test_tick", function(payload)
  clock.sleep(payload.ms)
  local res, err = http.request{ url = config.tick_url, method = "POST", timeout_ms = 2000,
                                 headers = { ["Content-Type"] = "application/json" },
                                 body = json.encode({ key = payload.key }) }
  if not res then error("receiver unreachable: " .. tostring(err), 0) end
  if res.status ~= 204 then error("receiver answered " .. res.status, 0) end
end)
`;

/**
 * A round-robin balancer on 127.0.0.1: each request goes to the next node; a node that refuses
 * the connection (down) is skipped, as nginx does. A request that reached a node that then
 * died is not sent again (it may have happened): the client gets 502.
 */
async function startBalancer(ports) {
  let next = 0;
  const served = ports.map(() => 0);
  const server = http.createServer((req, res) => {
    const chunks = [];
    req.on('data', (c) => chunks.push(c));
    req.on('end', () => {
      const body = Buffer.concat(chunks);
      const attempt = (tries) => {
        const i = next++ % ports.length;
        const up = http.request({ host: '127.0.0.1', port: ports[i], method: req.method, path: req.url, headers: req.headers }, (r) => {
          served[i]++;
          res.writeHead(r.statusCode, r.headers);
          r.pipe(res);
        });
        up.on('error', (e) => {
          if (e.code === 'ECONNREFUSED' && tries > 1) return attempt(tries - 1);
          if (!res.headersSent) { res.writeHead(502); res.end(); } else res.destroy();
        });
        up.end(body);
      };
      attempt(ports.length);
    });
  });
  await new Promise((r) => server.listen(0, '127.0.0.1', r));
  const port = server.address().port;
  return {
    port, served,
    get: (path, o) => request(port, 'GET', path, o),
    post: (path, body, o = {}) => request(port, 'POST', path, { ...o, body }),
    put: (path, body, o = {}) => request(port, 'PUT', path, { ...o, body }),
    close: () => new Promise((r) => { server.closeAllConnections(); server.close(r); }),
  };
}

/**
 * Repeats in the receiver's log (deliveries by order, job runs by key): a key seen more than
 * once is a violation, unless each call but one was made by a node that was killed after it
 * (one such call per kill: the node died between doing it and recording it).
 */
function repeats(log, what, kills, t0) {
  const by = new Map();
  for (const e of log.filter((x) => x.what === what)) by.set(e.key, [...(by.get(e.key) || []), e]);
  const v = [];
  let explained = 0;
  for (const [key, calls] of by) {
    if (calls.length < 2) continue;
    // A call is explained when its node was killed after it and before the next call. (A call
    // the killed node had sent may reach the receiver a moment after the kill.)
    calls.sort((a, b) => a.at - b.at);
    const unexplained = calls.filter((c, i) => i === calls.length - 1
      || !kills.some((k) => String(k.node) === c.node && k.at + 100 >= c.at && k.at <= calls[i + 1].at));
    if (unexplained.length === 1) explained += calls.length - 1;
    else v.push(`${what} ${key} ${calls.length} times: ${calls.map((c) => `node ${c.node} at +${c.at - t0} ms`).join(', ')}`);
  }
  return { violations: v, explained, keys: by };
}

const START_ROUNDS = Number(process.env.NODES_START_ROUNDS || 8);

test(`three nodes started at once on an empty database all come up, and each migration is applied once (${START_ROUNDS} rounds)`,
  { skip: skip || (BACKEND !== 'postgresql' && 'on PostgreSQL only'), timeout: START_ROUNDS * 15000 + 30000 }, async () => {
    const world = await startWorld();
    const failures = [];
    try {
      for (let round = 0; round < START_ROUNDS; round++) {
        const homes = [];
        for (let i = 0; i < NODES; i++) homes.push(mkdtempSync(join(tmpdir(), `paygate-node${i}-`)));
        const dbName = `paygate_start_${process.pid}_${round}`;
        const database = pgCreateDatabase(dbName);
        const started = await Promise.allSettled(homes.map((dir) => world.startShop({}, { dir, config: { workers: 1, database } })));
        try {
          for (const [i, x] of started.entries()) {
            if (x.status === 'rejected') failures.push(`round ${round}, node ${i}: ${x.reason.message.split('\n').find((l) => /level=error|paygate:/.test(l)) || x.reason.message}`);
          }
          if (started.every((x) => x.status === 'fulfilled')) {
            const applied = reader(database)('SELECT version, count(*) AS n FROM _paygate_migrations GROUP BY version ORDER BY version');
            if (!applied.length || applied.some((m) => m.n !== 1)) failures.push(`round ${round}: migrations recorded ${JSON.stringify(applied)}`);
            for (const [i, x] of started.entries()) {
              const r = await x.value.get('/api/products');
              if (r.status !== 200) failures.push(`round ${round}, node ${i}: GET /api/products answered ${r.status} ${r.body}`);
            }
          }
        } finally {
          for (const x of started) if (x.status === 'fulfilled') await x.value.stop();
          pgDropDatabase(dbName);
          for (const d of homes) rmSync(d, { recursive: true, force: true });
        }
      }
    } finally {
      await world.stop();
    }
    assert.deepEqual(failures, []);
  });

for (const seed of SEEDS) {
  test(`nodes seed ${seed}: three nodes on one database, a storm with WeChat's faults and kill -9 of one node: every invariant holds, ` +
    'every fulfillment and every job ran once', { skip, timeout: STORM_MS + SETTLE_MS + 90000 }, async () => {
    const rnd = seeded(seed);
    const world = await startWorld({ keepSandbox: true });   // its database outlives it, for the checks
    const receiver = await startReceiver();
    const homes = [];
    for (let i = 0; i < NODES; i++) homes.push(mkdtempSync(join(tmpdir(), `paygate-node${i}-`)));
    const dbName = `paygate_nodes_${process.pid}_${seed}`;
    const shared = mkdtempSync(join(tmpdir(), 'paygate-nodes-'));
    const database = BACKEND === 'postgresql' ? pgCreateDatabase(dbName) : join(shared, 'paygate.db');
    const ports = [];
    for (let i = 0; i < NODES; i++) ports.push(await freePort());
    const lb = await startBalancer(ports);
    const nodes = [];
    const kills = [];
    const ctx = {
      world, gw: lb, products: PRODUCTS, stock: STOCK, created: new Map(),
      stats: { cancels: 0, abandoned: 0, pays: 0, refunds: 0 },
    };
    const init = readFileSync(join(ROOT, 'scripts/init.lua'), 'utf8') + 'require "test_hooks"\nrequire "test_nodes"\n';
    const startNode = (i) => world.startShop(
      { order_ttl_s: 2 + (seed % 3), reconcile_after_s: 1, deliver_url: `${receiver.url}?node=${i}`, tick_url: `${receiver.base}/tick?node=${i}` },
      {
        files: { 'fulfillment.lua': FULFILLMENT, 'test_nodes.lua': NODE_HOOKS, 'init.lua': init },
        dir: homes[i], port: ports[i],
        // One worker each; a node's lease on a job runs out 3 s after it died (not 10 min).
        config: { workers: 1, database, jobs: { lease_ms: 3000 } },
        wechatpay: { notify_url: `http://127.0.0.1:${lb.port}/wechat/notify/pay`, refund_notify_url: `http://127.0.0.1:${lb.port}/wechat/notify/refund` },
      });
    const ticks = new Set();
    let violations = [];
    try {
      // All three at once on an empty database: the migrations run once, under the lock.
      // The first node makes the schema; the others start together on it (three starting at
      // once on an empty database is the spec below).
      nodes.push(await startNode(0));
      if (BACKEND === 'postgresql') {
        // Every start is waited for, so that none is left running when one fails.
        const started = await Promise.allSettled(ports.slice(1).map((_, i) => startNode(i + 1)));
        nodes.push(...started.filter((x) => x.status === 'fulfilled').map((x) => x.value));
        const failed = started.find((x) => x.status === 'rejected');
        if (failed) throw new Error(`a node did not start beside the others: ${failed.reason.message}`);
      } else for (let i = 1; i < NODES; i++) nodes.push(await startNode(i));
      for (const id of PRODUCTS) {
        const r = await lb.put(`/admin/products/${id}`, { name: `product ${id}`, price: 100 * id + (rnd() % 50), stock: STOCK });
        assert.equal(r.status, 200, r.body);
      }
      const r = await world.sandbox.post('/sandbox/faults', faultsFor(rnd));
      assert.equal(r.status, 200, r.body);
      const users = [];
      for (let i = 0; i < USERS; i++) users.push(await world.login(lb));

      const victim = rnd() % NODES;
      const killAt = Math.floor(STORM_MS * (0.3 + (rnd() % 400) / 1000));
      const down = 100 + (rnd() % 400);
      const t0 = Date.now();
      ctx.stormEnd = t0 + STORM_MS;
      const killer = (async () => {
        await sleep(killAt);
        kills.push({ node: victim, at: Date.now() });
        await nodes[victim].kill();
        await sleep(down);
        nodes[victim] = await restartOnPort(() => startNode(victim));
      })();
      // Jobs scheduled through the balancer all through the storm, some due at once, some later.
      const scheduler = (async () => {
        for (let i = 0; i < TICKS && Date.now() < ctx.stormEnd; i++) {
          const key = `s${seed}-${i}`;
          const t = await lb.post('/test/tick', { key, ms: 50 + (rnd() % 250), delay_ms: rnd() % 1500 }, { timeout: 5000 }).catch(() => undefined);
          if (t?.status === 200 && t.json.created) ticks.add(key);
          await sleep(STORM_MS / TICKS);
        }
      })();
      await Promise.all([killer, scheduler, ...users.map((u, i) => shopper(ctx, u, seeded(seed * 1000 + i + 1)))]);

      // Settle: faults off, every waiting job due now (asked of any node).
      await world.sandbox.request('DELETE', '/sandbox/faults');
      const shop = reader(database), sandbox = reader(join(world.sandboxDir, 'paygate.db'));
      const end = Date.now() + SETTLE_MS;
      let why;
      for (;;) {
        why = settledWhy(shop, sandbox);
        if (!why.length || Date.now() > end) break;
        for (const key of waitingJobKeys(shop)) await lb.post(`/test/jobs/${key}/due`, {}).catch(() => {});
        await sleep(200);
      }
      // Settled, and no node keeps a transaction open (one a hung-up request left would hold its locks).
      const open = BACKEND !== 'postgresql' ? 0 : shop("SELECT count(*) AS n FROM pg_stat_activity " +
        "WHERE datname = current_database() AND state LIKE 'idle in transaction%'")[0].n;
      if (open) violations.push(`${open} sessions left idle inside a transaction after settling`);
      for (const n of nodes) await n.stop();
      await world.sandbox.stop();
      if (why.length) violations.push(`not settled after ${SETTLE_MS / 1000} s: ${why.join('; ')}`);
      violations.push(...check(shop, sandbox, ctx, receiver));

      // Once: a repeat only where the first was on the killed node, before it died.
      const deliveries = repeats(receiver.log, 'deliver', kills, t0);
      const runs = repeats(receiver.log, 'tick', kills, t0);
      violations.push(...deliveries.violations, ...runs.violations);
      for (const key of ticks) if (!runs.keys.has(key)) violations.push(`job tick:${key} was scheduled but never ran`);
      for (const key of runs.keys.keys()) if (!ticks.has(key)) violations.push(`job ${key} ran but was never scheduled`);
      const migrations = shop('SELECT count(*) AS n FROM _paygate_migrations')[0].n;
      const orders = shop('SELECT status, count(*) AS n FROM orders GROUP BY status');
      const count = (s) => orders.filter((o) => s.includes(o.status)).reduce((a, o) => a + o.n, 0);
      const paid = count(['PAID', 'REFUNDING', 'REFUNDED']);
      const byNode = (what) => [0, 1, 2].map((i) => receiver.log.filter((e) => e.what === what && e.node === String(i)).length).join('/');
      console.log(`nodes seed ${seed} (${BACKEND}): ${ctx.created.size} orders answered 201 (${paid} paid), ${ctx.stats.hangups || 0} requests hung up on, requests per node ${lb.served.join('/')}, ` +
        `deliveries per node ${byNode('deliver')}, job runs per node ${byNode('tick')} for ${ticks.size} jobs; node ${victim} killed at +${killAt} ms ` +
        `for ${down} ms; repeats after the kill: ${deliveries.explained} deliveries, ${runs.explained} job runs; ${migrations} migrations recorded; ` +
        `violations ${violations.length}`);
      assert.ok(paid > 0, 'the storm paid no order at all');
      assert.ok(lb.served.every((n) => n > 0), `every node served requests: ${lb.served.join('/')}`);
      assert.ok(ticks.size >= 5, `only ${ticks.size} jobs were scheduled`);
    } catch (e) {
      violations.push(`the run failed: ${e.stack || e}`);
    } finally {
      for (const n of nodes) await n.stop().catch(() => {});
      await world.stop();
      await receiver.close();
      await lb.close();
      if (BACKEND === 'postgresql') pgDropDatabase(dbName);
      for (const d of [...homes, shared]) rmSync(d, { recursive: true, force: true });
      if (violations.length) {
        console.log(`nodes seed ${seed} FAILED; replay it with:  NODES_SEEDS=${seed} node --test tests/e2e/nodes.test.mjs`);
        for (const x of violations.slice(0, 40)) console.log(`  ${x}`);
      }
    }
    assert.deepEqual(violations, [], `seed ${seed} broke invariants`);
  });
}

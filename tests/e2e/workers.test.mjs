// Workers: `workers = N` processes under a master on one listening socket and one database —
// all of them serve, a dead one is restarted, a stuck one is ended by the watchdog while the others
// keep answering, a reload reaches every one, /metrics and /healthz speak for all, and a job runs
// on one worker at a time (claimed with an owner and a lease).
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { startGateway, eventually, sleep } from './harness.mjs';

const scripts = (version) => ({
  'init.lua': `
local app = require "paygate"
app.migration(1, "tables", [[
  CREATE TABLE hits(id INTEGER PRIMARY KEY, n INTEGER NOT NULL);
  CREATE TABLE job_log(id INTEGER PRIMARY KEY, n INTEGER NOT NULL, attempt INTEGER NOT NULL, phase TEXT NOT NULL)
]])
app.get("/version", function() return 200, { version = ${JSON.stringify(version)} } end)
app.get("/hello", function() return 200, { hello = "world" } end)
app.post("/hit", function(req)
  local n = app.read_json(req).n
  db.tx(function() db.exec("INSERT INTO hits(n) VALUES (?)", n) end)
  return 201, { n = n }
end)
app.get("/hits", function() return 200, db.one("SELECT count(*) AS c, count(DISTINCT n) AS d FROM hits") end)
-- never returns (the budget is set out of reach): only the watchdog can end it
app.get("/spin", function() local x = 0 while true do x = x + 1 end end)
app.post("/jobs", function(req)
  db.tx(function()
    for n = 1, app.read_json(req).count do jobs.schedule("slow", { n = n }) end
  end)
  return 201, {}
end)
app.job("slow", function(p, info)
  db.exec("INSERT INTO job_log(n, attempt, phase) VALUES (?, ?, 'start')", p.n, info.attempt)
  clock.sleep(1500)
  db.exec("INSERT INTO job_log(n, attempt, phase) VALUES (?, ?, 'done')", p.n, info.attempt)
end)
app.get("/job_log", function() return 200, db.query("SELECT n, attempt, phase FROM job_log ORDER BY id") end)
`,
});

const gateways = [];
after(async () => { for (const g of gateways) await g.stop(); });

async function start(config = {}) {
  const g = await startGateway({
    scripts: scripts('v1'),
    config: { workers: 2, watchdog_ms: 1000, log_level: 'info', script: { max_instructions: 2 ** 40 }, ...config },
  });
  gateways.push(g);
  return g;
}

const health = async (g) => (await g.get('/healthz')).json;

test('two workers both serve one port and one database, and /healthz and /metrics speak for both', async () => {
  const g = await start();
  const h = await health(g);
  assert.equal(h.workers.count, 2);
  assert.equal(h.workers.ready, 2);
  const pids = h.workers.list.map((w) => w.pid);
  assert.equal(new Set(pids).size, 2);
  assert.ok(!pids.includes(g.pid), 'the workers are not the master');

  const posts = await Promise.all(Array.from({ length: 200 }, (_, n) => g.post('/hit', { n })));
  assert.deepEqual(posts.filter((r) => r.status !== 201).map((r) => r.body), []);
  assert.deepEqual((await g.get('/hits')).json, { c: 200, d: 200 });

  // Each worker's figures appear with its label (the others' are at most a heartbeat old).
  await eventually(async () => {
    const m = (await g.get('/metrics')).body;
    const ok = (w) => Number((m.match(new RegExp(`paygate_http_requests_total\\{code="2xx",worker="${w}"\\} (\\d+)`)) || [])[1]);
    return ok(0) > 0 && ok(1) > 0 && ok(0) + ok(1) >= 201;
  }, 5000, 100);
  const m = (await g.get('/metrics')).body;
  assert.equal(m.split('\n').filter((l) => l === '# TYPE paygate_http_requests_total counter').length, 1,
    'one # TYPE per metric, whatever the number of workers');
});

test('a worker killed with SIGKILL is restarted; the port keeps answering', async () => {
  const g = await start();
  const [victim] = await g.workerPids();
  process.kill(victim, 'SIGKILL');
  await sleep(200); // the client drops its kept-alive connections to the dead worker
  for (let i = 0; i < 20; i++) assert.equal((await g.get('/hello')).status, 200);
  const h = await eventually(async () => {
    const x = await health(g);
    return x.workers.ready === 2 && !x.workers.list.some((w) => w.pid === victim) ? x : false;
  }, 5000, 50);
  assert.equal(h.workers.list.reduce((s, w) => s + w.restarts, 0), 1);
  assert.match(g.log, new RegExp(`worker \\d \\(pid ${victim}\\) was killed by signal 9 after \\d+ ms; restarting it`));
});

test('the watchdog ends a worker whose loop is stuck, names what it ran, and the other keeps answering', async () => {
  const g = await start();
  const stuck = g.get('/spin', { timeout: 10000 }).catch((e) => e);
  await sleep(100);
  // While one loop spins, /healthz keeps answering promptly (from the other worker).
  for (let i = 0; i < 10; i++) {
    const t0 = Date.now();
    assert.equal((await g.get('/healthz')).status, 200);
    assert.ok(Date.now() - t0 < 100, `healthz took ${Date.now() - t0} ms`);
  }
  const r = await stuck;
  assert.ok(r instanceof Error || r.status >= 500, 'the stuck request ends with the connection');
  assert.match(g.log, /watchdog: worker \d \(pid \d+\) made no progress for \d+ ms, running: \S+ \/spin; killing it/);
  await eventually(async () => (await health(g)).workers.ready === 2, 5000, 50);
  assert.equal((await g.get('/hello')).status, 200);
});

test('SIGHUP to the master and POST /admin/reload both reach every worker', async () => {
  const g = await start();
  const gens = async () => (await health(g)).workers.list.map((w) => w.generation);
  assert.deepEqual(await gens(), [1, 1]);
  g.writeScripts(scripts('v2'));
  process.kill(g.pid, 'SIGHUP');
  await eventually(async () => (await gens()).every((x) => x >= 2), 5000, 50);
  for (let i = 0; i < 10; i++) assert.equal((await g.get('/version')).json.version, 'v2');

  g.writeScripts(scripts('v3'));
  assert.equal((await g.reload()).status, 200);
  await eventually(async () => (await gens()).every((x) => x >= 3), 5000, 50);
  for (let i = 0; i < 10; i++) assert.equal((await g.get('/version')).json.version, 'v3');
});

test('jobs run once across workers; a restarted worker takes over only its own dead predecessor\'s jobs', async () => {
  // 20 at a time per worker: the 40 jobs spread over both.
  const g = await start({ jobs: { max_running: 20 } });
  assert.equal((await g.post('/jobs', { count: 40 })).status, 201);
  // Both workers claim jobs; kill one while its jobs sleep mid-run.
  await eventually(async () => (await g.get('/job_log')).json.filter((r) => r.phase === 'start').length >= 40, 5000, 20);
  const [victim] = await g.workerPids();
  process.kill(victim, 'SIGKILL');
  const log = await eventually(async () => {
    const rows = (await g.get('/job_log')).json;
    const done = new Set(rows.filter((r) => r.phase === 'done').map((r) => r.n));
    return done.size === 40 ? rows : false;
  }, 15000, 100).catch(async (e) => { console.log(g.log.slice(-4000), JSON.stringify((await g.get('/job_log')).json)); throw e; });
  const doneCount = {};
  for (const r of log.filter((x) => x.phase === 'done')) doneCount[r.n] = (doneCount[r.n] || 0) + 1;
  assert.deepEqual(Object.entries(doneCount).filter(([, c]) => c !== 1), [], 'no job finished twice');
  const retried = log.filter((r) => r.phase === 'start' && r.attempt === 2).length;
  assert.ok(retried > 0 && retried < 40, `only the killed worker's jobs ran again (${retried} of 40)`);
  assert.match(g.log, /re-queued \d+ job\(s\) left running by a stopped engine/);
});

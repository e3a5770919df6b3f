// Durable jobs: scheduled from handlers, run later as coroutines, retried with backoff,
// transactional with db.tx, and surviving restarts and reloads.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startGateway, eventually, sleep } from './harness.mjs';

// VERSION tags each run with the script generation's code that ran it.
const jobScripts = (VERSION) => ({
  'init.lua': `
local app = require "paygate"
local VERSION = ${JSON.stringify(VERSION)}

app.migration(1, "job_log", [[
  CREATE TABLE job_log(id INTEGER PRIMARY KEY, job_id INTEGER, name TEXT, payload TEXT,
                       attempt INTEGER, at INTEGER, version TEXT, phase TEXT)
]])

local function record(name, payload, info, phase)
  db.exec("INSERT INTO job_log(job_id, name, payload, attempt, at, version, phase) VALUES (?, ?, ?, ?, ?, ?, ?)",
          info.id, name, json.encode(payload), info.attempt, clock.now(), VERSION, phase or "run")
end

app.job("record", function(payload, info) record("record", payload, info) end)
app.job("flaky", function(payload, info)
  record("flaky", payload, info)
  error("flaky failure #" .. info.attempt)
end)
app.job("fail_once", function(payload, info)
  record("fail_once", payload, info)
  if info.attempt < 2 then error("not yet, attempt " .. info.attempt) end
end)
app.job("refuse", function(payload, info)
  record("refuse", payload, info)
  app.fail(409, "already_paid", "order " .. payload.order .. " is already paid")
end)
app.job("long", function(payload, info)
  record("long", payload, info, "start")
  clock.sleep(payload.ms)
  record("long", payload, info, "end")
end)

app.post("/schedule", function(req)
  local b = app.read_json(req)
  local now = clock.now()          -- before: scheduling writes (and fsyncs) the row, which takes time
  local id, created = jobs.schedule(b.name, b.payload, b.opts)
  return 200, { id = id, created = created, now = now }
end)
app.post("/cancel", function(req)
  return 200, { removed = jobs.cancel(app.read_json(req).key) }
end)
app.post("/tx", function(req)
  local b = app.read_json(req)
  db.tx(function()
    jobs.schedule("record", { via = "tx" }, { key = b.key })
    if b.raise then error("abort the transaction") end
  end)
  return 200, { committed = true }
end)
app.get("/log", function(req)
  return 200, db.query("SELECT * FROM job_log ORDER BY id")
end)
app.get("/jobs", function(req)
  return 200, db.query("SELECT id, name, key, payload, run_at, attempts, max_attempts, state, last_error FROM _paygate_jobs ORDER BY id")
end)
app.get("/version", function(req) return 200, { v = VERSION } end)
`,
});

const logOf = async (gw, pred = () => true) => (await gw.get('/log')).json.filter(pred);
// Runs are found by a tag in their payload (job ids alone are not used to tell runs apart).
const runsOf = async (gw, tag) => logOf(gw, (r) => JSON.parse(r.payload).tag === tag);
const jobRows = async (gw) => (await gw.get('/jobs')).json;
const schedule = async (gw, name, payload, opts) => {
  const r = await gw.post('/schedule', { name, payload, opts });
  assert.equal(r.status, 200, r.body);
  return r.json;
};

let gw;
before(async () => { gw = await startGateway({ scripts: jobScripts('A'), config: { watch: false } }); });
after(async () => { await gw?.stop(); });

test('a job scheduled from a handler runs with its payload, then its row is gone', async () => {
  const ok0 = await gw.metric('paygate_jobs_ok_total');
  const payload = { tag: 'first', order: 'W2024-001', amount: 100, nested: { list: [1, 2.5, 'x'], flag: true }, text: 'caf\u00e9' };
  const s = await schedule(gw, 'record', payload);
  assert.equal(s.created, true);
  assert.equal(typeof s.id, 'number');
  const [run] = await eventually(() => logOf(gw, (r) => r.job_id === s.id).then((l) => l.length && l));
  assert.deepEqual(JSON.parse(run.payload), payload);
  assert.equal(run.attempt, 1);
  assert.equal(run.name, 'record');
  await eventually(async () => !(await jobRows(gw)).some((j) => j.id === s.id));
  assert.equal(await gw.metric('paygate_jobs_ok_total'), ok0 + 1);
});

test('delay_ms and run_at are respected: a job never runs early', async () => {
  const a = await schedule(gw, 'record', { tag: 'delay' }, { delay_ms: 800 });
  const b = await schedule(gw, 'record', { tag: 'run_at' }, { run_at: a.now + 600 });
  await sleep(450);
  assert.equal((await runsOf(gw, 'delay')).length + (await runsOf(gw, 'run_at')).length, 0, 'nothing ran early');
  const row = (await jobRows(gw)).find((j) => j.id === a.id);
  assert.equal(row.state, 'queued');
  assert.ok(Math.abs(row.run_at - (a.now + 800)) <= 5, `run_at ${row.run_at - a.now} ms after scheduling`);
  const [ra] = await eventually(async () => { const l = await runsOf(gw, 'delay'); return l.length && l; }, 3000);
  const [rb] = await runsOf(gw, 'run_at');
  assert.ok(ra.at >= a.now + 800, `delay job ran ${ra.at - a.now} ms after scheduling`);
  assert.ok(rb.at >= a.now + 600, `run_at job ran ${rb.at - a.now} ms after scheduling`);
  assert.ok(ra.at < a.now + 1500 && rb.at < a.now + 1300, 'and not much later either');
});

test('a key dedupes: the second schedule returns created=false and only one job runs', async () => {
  const first = await schedule(gw, 'record', { tag: 'dedupe', n: 1 }, { key: 'notify:W1', delay_ms: 300 });
  const second = await schedule(gw, 'record', { tag: 'dedupe', n: 2 }, { key: 'notify:W1', delay_ms: 300 });
  assert.equal(first.created, true);
  assert.equal(second.created, false);
  assert.equal(second.id, undefined);
  const rows = (await jobRows(gw)).filter((j) => j.key === 'notify:W1');
  assert.equal(rows.length, 1);
  assert.deepEqual(JSON.parse(rows[0].payload), { tag: 'dedupe', n: 1 });
  await eventually(async () => (await runsOf(gw, 'dedupe')).length === 1, 3000);
  await sleep(200);
  assert.equal((await runsOf(gw, 'dedupe')).length, 1);
  // once it has run (and its row is gone) the key is free again
  const again = await schedule(gw, 'record', { tag: 'dedupe-again' }, { key: 'notify:W1' });
  assert.equal(again.created, true);
});

test('jobs.cancel removes a queued job before it runs', async () => {
  const s = await schedule(gw, 'record', { tag: 'cancelled' }, { key: 'cancel-me', delay_ms: 400 });
  assert.equal((await gw.post('/cancel', { key: 'cancel-me' })).json.removed, true);
  assert.equal((await gw.post('/cancel', { key: 'cancel-me' })).json.removed, false);
  assert.equal((await gw.post('/cancel', { key: 'never-existed' })).json.removed, false);
  assert.equal((await jobRows(gw)).some((j) => j.id === s.id), false);
  await sleep(700);
  assert.equal((await runsOf(gw, 'cancelled')).length, 0);
});

test('a failing job is retried after a ~1 s backoff, with last_error recorded in between', async () => {
  const failed0 = await gw.metric('paygate_jobs_failed_total');
  const s = await schedule(gw, 'fail_once', { tag: 'fail_once' });
  await eventually(async () => (await runsOf(gw, 'fail_once')).length === 1);
  const row = await eventually(async () => (await jobRows(gw)).find((j) => j.id === s.id && j.state === 'queued'));
  assert.equal(row.attempts, 1);
  assert.match(row.last_error, /not yet, attempt 1/);
  assert.equal(await gw.metric('paygate_jobs_failed_total'), failed0 + 1);
  const runs = await eventually(async () => { const l = await runsOf(gw, 'fail_once'); return l.length === 2 && l; }, 4000);
  const gap = runs[1].at - runs[0].at;
  assert.ok(gap >= 1000 && gap <= 1250 + 300, `retry came ${gap} ms after the failure`);
  assert.equal(runs[1].attempt, 2);
  await eventually(async () => !(await jobRows(gw)).some((j) => j.id === s.id));
});

test('with max_attempts=2 a job that always fails ends dead, keeps its last error and is not run again', async () => {
  const failed0 = await gw.metric('paygate_jobs_failed_total');
  const dead0 = await gw.metric('paygate_jobs_dead_total');
  const s = await schedule(gw, 'flaky', { tag: 'flaky' }, { max_attempts: 2 });
  const row = await eventually(async () => (await jobRows(gw)).find((j) => j.id === s.id && j.state === 'dead'), 4000);
  assert.equal(row.attempts, 2);
  assert.equal(row.max_attempts, 2);
  assert.match(row.last_error, /flaky failure #2/);
  assert.equal(await gw.metric('paygate_jobs_failed_total'), failed0 + 1);
  assert.equal(await gw.metric('paygate_jobs_dead_total'), dead0 + 1);
  assert.match(gw.log, /gave up after 2 attempts/);
  await sleep(1600);
  assert.equal((await runsOf(gw, 'flaky')).length, 2, 'a dead job stays dead');
});

test('a job whose name has no handler fails with a clear error', async () => {
  const s = await schedule(gw, 'ghost', {}, { max_attempts: 1 });
  const row = await eventually(async () => (await jobRows(gw)).find((j) => j.id === s.id && j.state === 'dead'));
  assert.match(row.last_error, /no handler for job 'ghost'/);
});

test('a job that stops with app.fail records its code and message in last_error', async () => {
  const s = await schedule(gw, 'refuse', { tag: 'refuse', order: 'W77' }, { max_attempts: 1 });
  const row = await eventually(async () => (await jobRows(gw)).find((j) => j.id === s.id && j.state === 'dead'));
  assert.match(row.last_error, /order W77 is already paid/);
  assert.match(row.last_error, /already_paid/);
});

test('a job scheduled inside db.tx exists only if the transaction commits', async () => {
  const r = await gw.post('/tx', { key: 'tx-rolled-back', raise: true });
  assert.equal(r.status, 500);
  assert.equal((await jobRows(gw)).some((j) => j.key === 'tx-rolled-back'), false);
  const ok = await gw.post('/tx', { key: 'tx-committed' });
  assert.equal(ok.status, 200);
  await eventually(async () => (await logOf(gw, (l) => JSON.parse(l.payload).via === 'tx')).length === 1);
  await sleep(200);
  assert.equal((await logOf(gw, (l) => JSON.parse(l.payload).via === 'tx')).length, 1, 'only the committed one ran');
});

test('job ids are never reused, even after earlier jobs finished and their rows were deleted', async () => {
  const g = await startGateway({ scripts: jobScripts('ids'), config: { watch: false } });
  try {
    const ids = [];
    for (let i = 0; i < 3; i++) {
      const s = await schedule(g, 'record', { tag: `id-${i}` });
      ids.push(s.id);
      await eventually(async () => (await runsOf(g, `id-${i}`)).length === 1 && (await jobRows(g)).length === 0);
    }
    // ids name jobs in logs ("job record #N") and request ids (job-N-attempt)
    assert.equal(new Set(ids).size, 3, `ids handed out: ${ids.join(', ')}`);
  } finally {
    await g.stop();
  }
});

test('jobs survive a restart: a delayed job runs on the next process', async () => {
  const g1 = await startGateway({ scripts: jobScripts('first'), config: { watch: false } });
  let g2;
  try {
    const s = await schedule(g1, 'record', { survive: 'restart' }, { delay_ms: 1500 });
    await g1.stop({ clean: false });
    g2 = await startGateway({ dir: g1.dir, scripts: jobScripts('second'), config: { watch: false } });
    const [run] = await eventually(() => logOf(g2, (r) => r.job_id === s.id).then((l) => l.length && l), 4000);
    assert.equal(run.version, 'second');
    assert.deepEqual(JSON.parse(run.payload), { survive: 'restart' });
    assert.ok(run.at >= s.now + 1500);
  } finally {
    await g1.stop({ clean: false });
    await g2?.stop({ clean: true });
  }
});

test('a job left running by a crash is re-queued and runs again on the next start', async () => {
  const g1 = await startGateway({ scripts: jobScripts('crashed'), config: { watch: false } });
  let g2;
  try {
    const s = await schedule(g1, 'long', { ms: 60000 });
    await eventually(async () => (await logOf(g1, (r) => r.job_id === s.id)).length === 1);
    assert.equal((await jobRows(g1)).find((j) => j.id === s.id).state, 'running');
    await g1.stop({ clean: false, signal: 'SIGKILL' });
    g2 = await startGateway({ dir: g1.dir, scripts: { 'init.lua': jobScripts('after')['init.lua'].replace('clock.sleep(payload.ms)', 'clock.sleep(10)') }, config: { watch: false } });
    const runs = await eventually(async () => { const l = await logOf(g2, (r) => r.job_id === s.id && r.phase === 'end'); return l.length && l; }, 3000);
    assert.equal(runs[0].version, 'after');
    assert.equal(runs[0].attempt, 2);
  } finally {
    await g1.stop({ clean: false });
    await g2?.stop({ clean: true });
  }
});

test('jobs survive a reload: a delayed job runs with the new handler', async () => {
  const g = await startGateway({ scripts: jobScripts('old'), config: { watch: false } });
  try {
    const s = await schedule(g, 'record', { survive: 'reload' }, { delay_ms: 700 });
    g.writeScripts(jobScripts('new'));
    const r = await g.reload();
    assert.equal(r.status, 200, r.body);
    const [run] = await eventually(() => logOf(g, (x) => x.job_id === s.id).then((l) => l.length && l), 3000);
    assert.equal(run.version, 'new');
  } finally {
    await g.stop();
  }
});

test('a long job started before a reload finishes on its own generation; later jobs use the new one', async () => {
  const g = await startGateway({ scripts: jobScripts('gen1'), config: { watch: false } });
  try {
    const s = await schedule(g, 'long', { ms: 800 });
    await eventually(async () => (await logOf(g, (r) => r.job_id === s.id)).length === 1);
    g.writeScripts(jobScripts('gen2'));
    assert.equal((await g.reload()).status, 200);
    assert.equal((await g.get('/version')).json.v, 'gen2');
    assert.equal(await g.metric('paygate_script_generations_draining'), 1, 'generation 1 is kept for the job');
    const later = await schedule(g, 'record', { after: 'reload' });
    const runs = await eventually(async () => { const l = await logOf(g, (r) => r.job_id === s.id); return l.length === 2 && l; }, 3000);
    assert.deepEqual(runs.map((r) => [r.phase, r.version]), [['start', 'gen1'], ['end', 'gen1']]);
    const [l2] = await logOf(g, (r) => r.job_id === later.id);
    assert.equal(l2.version, 'gen2');
    await eventually(async () => (await g.metric('paygate_script_generations_draining')) === 0);
    await eventually(async () => !(await jobRows(g)).some((j) => j.id === s.id), 1000);
  } finally {
    await g.stop();
  }
});

// Bounded work per request: every way one request was seen to freeze the gateway
// (a looping xpcall handler, C functions doing work per instruction, catastrophic
// patterns, runaway SQL, SQLite's memory, shared library tables) ends with a clear error,
// and while each runs the gateway keeps answering /healthz within 100 ms on another
// connection.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import { readFileSync } from 'node:fs';
import { startGateway } from './harness.mjs';

const init = `
local app = require "paygate"
app.get("/ok", function(req) return 200, { ok = true } end)

local evil = {
  xpcall_handler = function()
    return xpcall(function() error("x") end, function() while true do end end)
  end,
  xpcall_handler_after_budget = function()
    return xpcall(function() while true do end end, function() while true do end end)
  end,
  rep_loop = function()
    for i = 1, 1e9 do local s = string.rep("a", 4e6) end
  end,
  rep_empty = function() return #string.rep("", 1e15) end,
  rep_sep = function() return #string.rep("", 1e15, "") end,
  upper_loop = function()
    local s = string.rep("a", 4e6)
    for i = 1, 1e9 do local t = s:upper() end
  end,
  insert_loop = function()
    local t = {}
    for i = 1, 5e5 do t[i] = i end
    for i = 1, 1e9 do table.insert(t, 1, i); table.remove(t, 1) end
  end,
  concat_loop = function()
    local t = {}
    for i = 1, 1e5 do t[i] = "abcdefgh" end
    for i = 1, 1e9 do local s = table.concat(t) end
  end,
  json_loop = function()
    local big = json.encode({ s = string.rep("a", 1e6) })
    for i = 1, 1e9 do local t = json.decode(big) end
  end,
  find_lazy = function() return string.find(string.rep("a", 1e5), ".-b") end,
  find_optional = function()
    return string.find(string.rep("a", 40), string.rep("a?", 40) .. string.rep("a", 40) .. "b")
  end,
  plain_find_loop = function()
    local s, p = string.rep("a", 2e6), string.rep("a", 1e6) .. "b"
    for i = 1, 1e9 do local x = s:find(p, 1, true) end
  end,
  sql_recursive = function()
    return db.one("WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM c) SELECT count(*) AS n FROM c")
  end,
}

app.get("/evil/{name}", function(req)
  local f = evil[req.params.name]
  return 200, { result = tostring(f()) }
end)

-- SQLite's memory: an ordinary error the script can catch
app.get("/sql/zeroblob", function(req)
  local ok, err = pcall(db.one, "SELECT length(zeroblob(600000000) || 'x') AS n")
  return 200, { ok = ok, err = tostring(err) }
end)
app.get("/sql/zeroblob/uncaught", function(req)
  return 200, db.one("SELECT length(zeroblob(600000000) || 'x') AS n")
end)

-- the library's tables
app.get("/shared/tamper", function(req)
  local r = {}
  r.nested = { pcall(function() require("shop.orders").OPEN.CLOSED = true end) }
  r.field = { pcall(function() require("shop.orders").MAX_LINES = 1e9 end) }
  r.app = { pcall(function() require("paygate").fail = function() end end) }
  for k, v in pairs(r) do r[k] = { ok = v[1], err = tostring(v[2]) } end
  return 200, r
end)
app.get("/shared/look", function(req)
  local orders = require "shop.orders"
  local open = {}
  for k, v in pairs(orders.OPEN) do open[#open + 1] = k end
  table.sort(open)
  return 200, { open = open, closed = orders.OPEN.CLOSED == true, max_lines = orders.MAX_LINES,
                same = require("shop.orders") == orders }
end)
`;

async function withGateway(fn) {
  const gw = await startGateway({
    scripts: { 'init.lua': init },
    config: { watch: false, script: { memory_mb: 32, max_instructions: 1000000 } },
  });
  try { await fn(gw); } finally { await gw.stop({ signal: 'SIGKILL' }); }
}

// GET /healthz back to back on a connection of its own, from before `start()` sends the request
// until its answer: the slowest answer (a poll that arrives while the request runs waits for the
// loop, so it measures the stall).
async function healthzWhile(gw, start) {
  const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
  const one = () => new Promise((resolve) => {
    const t0 = performance.now();
    const req = http.get({ host: '127.0.0.1', port: gw.port, path: '/healthz', agent, timeout: 2000 }, (res) => {
      res.resume();
      res.on('end', () => resolve(res.statusCode === 200 ? performance.now() - t0 : Infinity));
    });
    req.on('timeout', () => req.destroy(new Error('timeout')));
    req.on('error', () => resolve(Infinity));
  });
  await one(); // the connection is open before the request goes out
  let done = false, slowest = 0, polls = 0;
  const poller = (async () => {
    do {
      slowest = Math.max(slowest, await one());
      polls++;
    } while (!done);
  })();
  const until = start();
  until.then(() => { done = true; }, () => { done = true; });
  const result = await until.catch((e) => ({ status: 0, error: e.message }));
  await poller;
  agent.destroy();
  return { result, slowest, polls };
}

async function expectStopped(gw, name) {
  const t0 = performance.now();
  const { result, slowest, polls } = await healthzWhile(gw, () => gw.get(`/evil/${name}`, { timeout: 5000 }));
  console.log(`# ${name}: stopped after ${(performance.now() - t0).toFixed(0)} ms; /healthz slowest ${slowest.toFixed(1)} ms of ${polls}`);
  assert.equal(result.status, 500, `${name}: must be stopped (got ${result.error || result.status + ' ' + result.body})`);
  assert.equal(result.json.error, 'script_timeout', `${name}: ${result.body}`);
  assert.ok(slowest < 100, `${name}: /healthz took ${slowest.toFixed(1)} ms while it ran`);
  assert.equal((await gw.get('/ok')).status, 200, 'the next request is served');
}

for (const [name, what] of [
  ['xpcall_handler', 'a message handler that loops after error("x")'],
  ['xpcall_handler_after_budget', 'a message handler that loops after the budget stopped the body'],
  ['rep_loop', 'string.rep of 4 MB a billion times'],
  ['rep_empty', 'string.rep("", 1e15)'],
  ['rep_sep', 'string.rep("", 1e15, "")'],
  ['upper_loop', 'upper of a 4 MB string in a loop'],
  ['insert_loop', 'table.insert at the front of a 500,000-element table in a loop'],
  ['concat_loop', 'table.concat of 100,000 strings in a loop'],
  ['json_loop', 'json.decode of a 1 MB document in a loop'],
  ['find_lazy', 'string.find(string.rep("a", 1e5), ".-b")'],
  ['find_optional', '"a?" x 40 .. "a" x 40 .. "b" on a 40-byte subject'],
  ['plain_find_loop', 'a plain find of a 1 MB needle in a 2 MB subject in a loop'],
  ['sql_recursive', 'an endless recursive CTE'],
]) {
  test(`${what} is stopped with 500 script_timeout; /healthz answers within 100 ms meanwhile`, async () => {
    await withGateway((gw) => expectStopped(gw, name));
  });
}

function peakRssMb(pid) {
  const m = readFileSync(`/proc/${pid}/status`, 'utf8').match(/VmHWM:\s+(\d+) kB/);
  return Number(m[1]) / 1024;
}

test('SELECT length(zeroblob(600000000) || \'x\') is an ordinary script error; the process stays small', async () => {
  await withGateway(async (gw) => {
    const { result, slowest } = await healthzWhile(gw, () => gw.get('/sql/zeroblob', { timeout: 5000 }));
    assert.equal(result.status, 200, result.error || result.body);
    assert.equal(result.json.ok, false, 'pcall sees an error');
    assert.match(result.json.err, /too big|memory/);
    assert.ok(slowest < 100, `/healthz took ${slowest.toFixed(1)} ms`);
    const r = await gw.get('/sql/zeroblob/uncaught');
    assert.equal(r.status, 500);
    assert.equal(r.json.error, 'internal_error');
    const pids = gw.workerPids ? await gw.workerPids() : [gw.pid];   // the daemon's workers serve
    const peak = Math.max(...pids.map(peakRssMb));
    assert.ok(peak < 200, `peak RSS ${peak.toFixed(0)} MB`);
    assert.equal((await gw.get('/ok')).status, 200);
  });
});

test('the library\'s module tables are read-only to scripts and nothing leaks into the next request', async () => {
  await withGateway(async (gw) => {
    const { result: t, slowest } = await healthzWhile(gw, () => gw.get('/shared/tamper'));
    assert.equal(t.status, 200, t.body);
    for (const k of ['nested', 'field', 'app']) {
      assert.equal(t.json[k].ok, false, `${k}: the write went through`);
      assert.match(t.json[k].err, /read-only/, k);
    }
    assert.ok(slowest < 100);
    const look = await gw.get('/shared/look');
    assert.equal(look.status, 200, look.body);
    assert.deepEqual(look.json, { open: ['CREATED', 'PAYING'], closed: false, max_lines: 20, same: true });
  });
});

// The script jail: the instruction budget, the memory cap, and what a script can (not) reach.
//
// Every test asserts what the handler observed (pcall results are sent back as JSON)
// and that the gateway still answers afterwards.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startGateway, eventually } from './harness.mjs';

let gw;

const init = `
local app = require "paygate"

local function spin() while true do end end

app.get("/ok", function(req) return 200, { ok = true } end)

-- ---- runaway code ----
app.get("/spin", function(req) spin() end)
app.get("/spin/pcall", function(req)
  local ok, err = pcall(spin)
  return 200, { escaped = true, ok = ok, err = tostring(err) }
end)
app.get("/spin/pcall-loop", function(req)
  while true do pcall(function() while true do end end) end
end)
app.get("/spin/xpcall", function(req)
  local ok, err = xpcall(spin, function(m) return "handled: " .. tostring(m) end)
  return 200, { escaped = true, ok = ok, err = tostring(err) }
end)
app.get("/spin/wrap", function(req)
  local f = coroutine.wrap(function() while true do end end)
  local ok, err = pcall(f)
  return 200, { escaped = true, ok = ok, err = tostring(err) }
end)
app.get("/spin/resume-loop", function(req)
  while true do
    local co = coroutine.create(function() while true do end end)
    coroutine.resume(co)
  end
end)
app.get("/recurse", function(req)
  local function f(n) return f(n + 1) + 1 end
  return 200, { n = f(1) }
end)
app.get("/recurse/c", function(req)
  local function r(s) return (s:gsub(".", r)) end
  return 200, { s = r("ab") }
end)

-- ---- memory ----
app.get("/mem/rep", function(req)
  local s = string.rep("x", 1 << 30)
  return 200, { len = #s }
end)
app.get("/mem/concat", function(req)
  local s = "x"
  while true do s = s .. s end
end)
app.get("/mem/table", function(req)
  local t, i = {}, 0
  while true do i = i + 1; t[i] = i end
end)
app.get("/mem/pcall", function(req)
  local ok, err = pcall(string.rep, "x", 1 << 30)
  return 200, { ok = ok, err = tostring(err) }
end)
app.get("/mem/used", function(req)
  collectgarbage("collect")
  return 200, { kb = collectgarbage("count") }
end)

-- ---- probes: each returns what pcall observed ----
local probes = {
  setmetatable_G = function() return setmetatable(_G, nil) end,
  setmetatable_G_new = function() return setmetatable(_G, {}) end,
  getmetatable_G = function() return getmetatable(_G) end,
  getmetatable_string = function() return getmetatable("") end,
  getmetatable_stringlib = function() return getmetatable(string) end,
  setmetatable_stringlib = function() return setmetatable(string, nil) end,
  string_dump = function() return string.dump end,
  string_dump_method = function() return ("").dump end,
  load_binary = function() return load("\\27LuaT\\0\\25\\147\\r\\n\\26\\n") end,
  load_mode_b = function() return load("return 1", "x", "b") end,
  load_mode_bt = function() return load("return 1", "x", "bt") end,
  load_reader = function() local done = false; return load(function() if done then return nil end done = true; return "return 1" end) end,
  load_text = function() return load("return 6 * 7")() end,
  load_text_jailed = function() return load("return io")() end,
  load_text_global = function() return load("newglobal_from_load = 1")() end,
  write_string = function() string.upper = function() return "pwned" end end,
  write_string_new = function() string.newfield = 1 end,
  write_table = function() table.insert = nil end,
  write_math = function() math.pi = 3 end,
  write_os = function() os.execute = print end,
  write_json = function() json.encode = nil end,
  write_db = function() db.exec = nil end,
  table_insert_into_lib = function() table.insert(math, 1) end,
  string_upper_still = function() return ("abc"):upper() .. string.upper("d") end,
  assign_global = function() newglobal = 1 end,
  assign_global_via_G = function() _G.newglobal2 = 1 end,
  read_global = function() return undefined_thing end,
  gc_stop = function() return collectgarbage("stop") end,
  gc_generational = function() return collectgarbage("generational") end,
  gc_setpause = function() return collectgarbage("setpause", 1000) end,
  gc_count = function() return collectgarbage("count") end,
  gc_collect = function() return collectgarbage("collect") end,
  require_dotdot = function() return require "../x" end,
  require_abs = function() return require "/etc/passwd" end,
  require_dots = function() return require "..etc.passwd" end,
  require_double_dot = function() return require "a..b" end,
  require_slash = function() return require "a/b" end,
  require_helper = function() return require("helper").name end,
  sleep_in_coroutine = function()
    local co = coroutine.create(function() clock.sleep(10) end)
    local ok, err = coroutine.resume(co)
    error(err, 0)
  end,
  generator = function()
    local gen = coroutine.wrap(function() for i = 1, 3 do coroutine.yield(i) end end)
    return gen() + gen() + gen()
  end,
}

app.get("/probe/{name}", function(req)
  local f = probes[req.params.name]
  if not f then app.fail(404, "no_probe", req.params.name) end
  local ok, v = pcall(f)
  if ok then return 200, { ok = true, type = type(v), value = tostring(v) } end
  return 200, { ok = false, err = tostring(v) }
end)

-- _G[name]: reading an absent global is an error
app.get("/global/{name}", function(req)
  local ok, v = pcall(function() return _G[req.params.name] end)
  return 200, { ok = ok, type = ok and type(v) or nil, err = not ok and tostring(v) or nil }
end)
app.get("/os/{name}", function(req)
  return 200, { type = type(os[req.params.name]) }
end)

-- ---- waiting in the wrong place ----
app.get("/yield", function(req) coroutine.yield() return 200, { resumed = true } end)
app.get("/yield/pcall", function(req) pcall(coroutine.yield) return 200, { resumed = true } end)
app.get("/sleep-in-wrap", function(req)
  coroutine.wrap(function() clock.sleep(10) end)()
  return 200, { slept = true }
end)
app.get("/sleep", function(req) clock.sleep(5) return 200, { slept = true } end)

-- ---- one request reaching into another ----
local parked = {}
app.get("/hijack/victim", function(req)
  parked.co = coroutine.running()
  clock.sleep(300)
  return 200, { answered_by = "victim" }
end)
app.get("/hijack/thief", function(req)
  local r = table.pack(pcall(coroutine.resume, parked.co, "from the thief"))
  local out = {}
  for i = 1, r.n do out[i] = tostring(r[i]) end
  return 200, { results = out, victim_status = coroutine.status(parked.co) }
end)

-- ---- globals shared between requests ----
app.get("/leak/set", function(req)
  local r = {}
  r.version = pcall(function() _VERSION = "pwned" end)
  r.rawlen = pcall(function() _G.rawlen = nil end)
  r.newkey = pcall(function() _G.leaked = 1 end)
  return 200, r
end)
app.get("/leak/get", function(req)
  local function look(f) local ok, v = pcall(f) return ok and v or ("error: " .. tostring(v)) end
  return 200, {
    version = look(function() return _VERSION end),
    rawlen = look(function() return type(rawlen) end),
    leaked = look(function() return leaked end) ~= 1,
  }
end)
`;

const scripts = { 'init.lua': init, 'helper.lua': 'return { name = "helper" }\n' };

before(async () => {
  gw = await startGateway({ scripts, config: { watch: false, script: { memory_mb: 16, max_instructions: 20000000 } } });
});
after(async () => { await gw.stop(); });

async function alive() {
  const r = await gw.get('/ok');
  assert.equal(r.status, 200, 'the gateway answers the next request');
  assert.deepEqual(r.json, { ok: true });
}

async function probe(name) {
  const r = await gw.get(`/probe/${name}`);
  assert.equal(r.status, 200, `probe ${name}: ${r.body}`);
  return r.json;
}

async function expectTimeout(path) {
  const before = await gw.metric('paygate_script_kills_total');
  const errors = await gw.metric('paygate_script_errors_total');
  const r = await gw.get(path, { timeout: 10000 });
  assert.equal(r.status, 500, `${path}: ${r.body}`);
  assert.equal(r.json.error, 'script_timeout', `${path}: ${r.body}`);
  assert.equal(await gw.metric('paygate_script_kills_total'), before + 1, 'kills metric counts it');
  assert.equal(await gw.metric('paygate_script_errors_total'), errors + 1, 'errors metric counts it');
  await alive();
}

async function expectOutOfMemory(path) {
  const r = await gw.get(path, { timeout: 10000 });
  assert.equal(r.status, 500, `${path}: ${r.body}`);
  assert.equal(r.json.error, 'internal_error', `${path}: ${r.body}`);
  assert.match(r.json.message, /memory/);
  await alive();
  await alive();
}

// ---- the instruction budget ----

test('a runaway loop is stopped with 500 script_timeout and counted in metrics', async () => {
  await expectTimeout('/spin');
});

test('a runaway loop inside pcall is still stopped', async () => {
  await expectTimeout('/spin/pcall');
});

test('a loop that keeps catching the stop with pcall is still stopped', async () => {
  await expectTimeout('/spin/pcall-loop');
});

test('a runaway loop inside xpcall with a message handler is still stopped', async () => {
  await expectTimeout('/spin/xpcall');
});

test('a runaway loop inside a coroutine the script created is still stopped', async () => {
  await expectTimeout('/spin/wrap');
});

test('a loop that restarts runaway coroutines with coroutine.resume is still stopped', async () => {
  await expectTimeout('/spin/resume-loop');
});

test('a runaway handler does not stop other requests from being answered', async () => {
  const [spin, ok] = await Promise.all([gw.get('/spin'), gw.get('/ok'), ]);
  assert.equal(spin.json.error, 'script_timeout');
  assert.equal(ok.status, 200);
});

test('deep Lua recursion (stack overflow) is a 500, not a crash', async () => {
  const r = await gw.get('/recurse');
  assert.equal(r.status, 500);
  assert.equal(r.json.error, 'internal_error');
  await eventually(() => gw.log.includes(`req=${r.headers['x-request-id']}`));
  await alive();
});

test('deep recursion through C functions (gsub callbacks) is a 500, not a crash', async () => {
  const r = await gw.get('/recurse/c');
  assert.equal(r.status, 500);
  assert.equal(r.json.error, 'internal_error');
  await eventually(() => /stack overflow/.test(gw.log));
  await alive();
});

// ---- the memory cap ----

test('string.rep of a gigabyte is refused: 500 out of memory, the server lives on', async () => {
  await expectOutOfMemory('/mem/rep');
});

test('repeated concatenation past the memory cap is a 500 out of memory', async () => {
  await expectOutOfMemory('/mem/concat');
});

test('a table growing past the memory cap is a 500 out of memory', async () => {
  await expectOutOfMemory('/mem/table');
});

test('an allocation failure caught with pcall is an ordinary error the handler sees', async () => {
  const r = await gw.get('/mem/pcall');
  assert.equal(r.status, 200);
  assert.equal(r.json.ok, false);
  assert.match(r.json.err, /memory/);
});

test('memory of a failed memory bomb is given back', async () => {
  for (let i = 0; i < 5; i++) await gw.get('/mem/concat');
  const r = await gw.get('/mem/used');
  assert.equal(r.status, 200);
  assert.ok(r.json.kb < 8 * 1024, `after the bombs the VM holds ${r.json.kb} KB of a 16 MB cap`);
  await alive();
});

// ---- escape attempts ----

test('the globals table metatable cannot be removed, replaced or read', async () => {
  let p = await probe('setmetatable_G');
  assert.equal(p.ok, false);
  assert.match(p.err, /protected metatable/);
  p = await probe('setmetatable_G_new');
  assert.equal(p.ok, false);
  assert.match(p.err, /protected metatable/);
  p = await probe('getmetatable_G');
  assert.deepEqual(p, { ok: true, type: 'boolean', value: 'false' });
  // strictness still in force
  p = await probe('read_global');
  assert.equal(p.ok, false);
});

test('getmetatable("") does not give the string metatable; string methods still work', async () => {
  const p = await probe('getmetatable_string');
  assert.equal(p.ok, true);
  assert.notEqual(p.type, 'table');
  assert.deepEqual(await probe('string_upper_still'), { ok: true, type: 'string', value: 'ABCD' });
});

test('library tables have protected metatables', async () => {
  const g = await probe('getmetatable_stringlib');
  assert.notEqual(g.type, 'table');
  const s = await probe('setmetatable_stringlib');
  assert.equal(s.ok, false);
  assert.match(s.err, /protected metatable/);
});

test('string.dump does not exist', async () => {
  assert.deepEqual(await probe('string_dump'), { ok: true, type: 'nil', value: 'nil' });
});

test('string.dump is not reachable through string methods either ("").dump', async () => {
  assert.deepEqual(await probe('string_dump_method'), { ok: true, type: 'nil', value: 'nil' });
});

test('load refuses binary chunks and any mode other than text', async () => {
  let p = await probe('load_binary');
  assert.equal(p.ok, false);
  assert.match(p.err, /binary chunks are not allowed/);
  p = await probe('load_mode_b');
  assert.equal(p.ok, false);
  assert.match(p.err, /only text chunks/);
  p = await probe('load_mode_bt');
  assert.equal(p.ok, false);
  assert.match(p.err, /only text chunks/);
  p = await probe('load_reader');
  assert.equal(p.ok, false, 'a reader function is not a text chunk');
});

test('load of text works and the loaded chunk runs in the same jail', async () => {
  assert.deepEqual(await probe('load_text'), { ok: true, type: 'number', value: '42' });
  let p = await probe('load_text_jailed');
  assert.equal(p.ok, false);
  assert.match(p.err, /undefined global 'io'/);
  p = await probe('load_text_global');
  assert.equal(p.ok, false);
  assert.match(p.err, /undeclared global 'newglobal_from_load'/);
});

test('io, debug, package, dofile, loadfile, rawset are absent (reading them is an error)', async () => {
  for (const name of ['io', 'debug', 'package', 'dofile', 'loadfile', 'rawset', 'module', 'setfenv', 'getfenv', 'newproxy']) {
    const r = await gw.get(`/global/${name}`);
    assert.equal(r.json.ok, false, `${name} is reachable: ${r.body}`);
    assert.match(r.json.err, new RegExp(`undefined global '${name}'`));
  }
  for (const name of ['print', 'require', 'db', 'http', 'json', 'jobs', 'log', 'metrics', 'clock', 'config', 'load', 'pcall']) {
    const r = await gw.get(`/global/${name}`);
    assert.equal(r.json.ok, true, `${name} should exist: ${r.body}`);
  }
});

test('os has time, clock, date and difftime only', async () => {
  for (const name of ['execute', 'getenv', 'exit', 'remove', 'rename', 'tmpname', 'setlocale']) {
    assert.equal((await gw.get(`/os/${name}`)).json.type, 'nil', `os.${name}`);
  }
  for (const name of ['time', 'clock', 'date', 'difftime']) {
    assert.equal((await gw.get(`/os/${name}`)).json.type, 'function', `os.${name}`);
  }
});

test('writing to string, table, math, os, json and db fields is an error', async () => {
  for (const name of ['write_string', 'write_string_new', 'write_table', 'write_math', 'write_os', 'write_json', 'write_db', 'table_insert_into_lib']) {
    const p = await probe(name);
    assert.equal(p.ok, false, `${name} succeeded`);
    assert.match(p.err, /read-only/, name);
  }
  // and nothing changed
  assert.deepEqual(await probe('string_upper_still'), { ok: true, type: 'string', value: 'ABCD' });
  await alive();
});

test('assigning an undeclared global is an error', async () => {
  let p = await probe('assign_global');
  assert.equal(p.ok, false);
  assert.match(p.err, /assignment to undeclared global 'newglobal'/);
  p = await probe('assign_global_via_G');
  assert.equal(p.ok, false);
  assert.match(p.err, /undeclared global 'newglobal2'/);
});

test('reading an undefined global is an error', async () => {
  const p = await probe('read_global');
  assert.equal(p.ok, false);
  assert.match(p.err, /undefined global 'undefined_thing'/);
});

test('collectgarbage("stop") and other tuning are refused; count and collect work', async () => {
  for (const name of ['gc_stop', 'gc_generational', 'gc_setpause']) {
    const p = await probe(name);
    assert.equal(p.ok, false, name);
    assert.match(p.err, /not allowed/);
  }
  const c = await probe('gc_count');
  assert.equal(c.ok, true);
  assert.equal(c.type, 'number');
  assert.equal((await probe('gc_collect')).ok, true);
});

test('require refuses path-like names: "../x", "/etc/passwd", "..x", "a..b", "a/b"', async () => {
  for (const name of ['require_dotdot', 'require_abs', 'require_dots', 'require_double_dot', 'require_slash']) {
    const p = await probe(name);
    assert.equal(p.ok, false, name);
    assert.match(p.err, /bad module name/, name);
  }
  assert.deepEqual(await probe('require_helper'), { ok: true, type: 'string', value: 'helper' });
});

test('coroutine.yield() at the top of a handler is a 500, not a hang', async () => {
  const r = await gw.get('/yield', { timeout: 5000 });
  assert.equal(r.status, 500);
  assert.equal(r.json.error, 'internal_error');
  await eventually(() => gw.log.includes('coroutine.yield() outside a coroutine created by the script'));
  const p = await gw.get('/yield/pcall', { timeout: 5000 });
  assert.equal(p.status, 500);
  await alive();
});

test('a coroutine the script created can yield to the script', async () => {
  assert.deepEqual(await probe('generator'), { ok: true, type: 'number', value: '6' });
});

test('clock.sleep inside a coroutine the script created is a clear error', async () => {
  const p = await probe('sleep_in_coroutine');
  assert.equal(p.ok, false);
  assert.match(p.err, /clock\.sleep can only wait in a request handler or a job, not in a coroutine the script created/);
  const r = await gw.get('/sleep-in-wrap', { timeout: 5000 });
  assert.equal(r.status, 500);
  assert.equal((await gw.get('/sleep')).status, 200, 'sleeping in the handler itself works');
  await alive();
});

test('a request cannot resume (steal) the coroutine of another waiting request', async () => {
  const victim = gw.get('/hijack/victim', { timeout: 5000 });
  await eventually(async () => (await gw.get('/healthz')).json.inflight >= 1, 1000, 5);   // the victim is parked
  const thief = await gw.get('/hijack/thief');
  assert.equal(thief.status, 200, thief.body);
  const v = await victim;
  assert.deepEqual({ status: v.status, body: v.json }, { status: 200, body: { answered_by: 'victim' } },
    `the victim got ${v.status} ${v.body}; the thief saw ${JSON.stringify(thief.json)}`);
  assert.ok(!thief.json.results.includes('{"answered_by":"victim"}'), 'the thief must not receive the victim\'s answer');
  await alive();
});

// Last in the file: when it fails, the shared env is polluted.
test('changing _G inside one request does not leak into another request', async () => {
  const set = await gw.get('/leak/set');
  assert.equal(set.status, 200);
  assert.equal(set.json.newkey, false, 'a new global is refused');
  const r = await gw.get('/leak/get');
  assert.equal(r.status, 200);
  assert.deepEqual(r.json, { version: 'Lua 5.4', rawlen: 'function', leaked: true },
    `request 1 could${set.json.version ? ' overwrite _VERSION' : ''}${set.json.rawlen ? ' remove rawlen' : ''}`);
});

// ---- hangs the instruction hook cannot see: each on its own gateway ----

async function ownGateway(handlerBody, fn) {
  const own = await startGateway({
    scripts: { 'init.lua': `local app = require "paygate"
app.get("/ok", function(req) return 200, { ok = true } end)
app.get("/evil", function(req)
${handlerBody}
end)
` },
    config: { watch: false, script: { memory_mb: 16, max_instructions: 1000000 } },
  });
  try { await fn(own); } finally { await own.stop({ signal: 'SIGKILL' }); }
}

async function answersWithin(gwx, path, ms) {
  try { return await gwx.get(path, { timeout: ms }); } catch (e) { return { status: 0, error: e.message }; }
}

test('a runaway loop in a __gc finalizer is stopped; the server lives on', async () => {
  await ownGateway(`
  setmetatable({}, { __gc = function() while true do end end })
  collectgarbage("collect")
  return 200, { collected = true }`, async (own) => {
    const r = await answersWithin(own, '/evil', 3000);
    assert.ok(r.status === 500 || r.status === 200, `the request must be answered (got ${r.error || r.status})`);
    const ok = await answersWithin(own, '/ok', 2000);
    assert.equal(ok.status, 200, 'the server must still answer');
  });
});

test('a catastrophic string pattern is stopped like a runaway loop', async () => {
  await ownGateway(`
  return 200, { found = string.find(string.rep("a", 5000), ".-.-.-.-b") }`, async (own) => {
    const r = await answersWithin(own, '/evil', 3000);
    assert.equal(r.status, 500, `the request must be stopped (got ${r.error || r.status})`);
    const ok = await answersWithin(own, '/ok', 2000);
    assert.equal(ok.status, 200, 'the server must still answer');
  });
});

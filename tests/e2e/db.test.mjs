// The `db` API: statements, values, transactions, concurrency, migrations and durability.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, existsSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startGateway, eventually } from './harness.mjs';

let gw;

const M1 = `app.migration(1, "items", [[
CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT NOT NULL, price INTEGER, note TEXT);
CREATE TABLE nums (id INTEGER PRIMARY KEY, v);
CREATE TABLE stock (id INTEGER PRIMARY KEY, n INTEGER NOT NULL);
INSERT INTO stock (id, n) VALUES (1, 0);
]])`;
const M1_EDITED = M1.replace('note TEXT', 'note TEXT, extra TEXT');
const M2 = `app.migration(2, "coupons", "CREATE TABLE coupons (code TEXT PRIMARY KEY, off INTEGER NOT NULL)")`;
const M3_BROKEN = `app.migration(3, "audit", [[
CREATE TABLE audit (id INTEGER PRIMARY KEY, what TEXT);
INSERT INTO coupons (code, off) VALUES ('FROM-M3', 1);
INSERT INTO no_such_table (x) VALUES (1);
]])`;

const routes = `
local function count(name)
  return db.one("SELECT count(*) AS n FROM items WHERE name = ?", name).n
end

app.post("/items", function(req)
  local b = app.read_json(req)
  local changes, rowid = db.exec("INSERT INTO items (name, price, note) VALUES (?, ?, ?)", b.name, b.price, b.note)
  return 201, { changes = changes, rowid = rowid }
end)
app.get("/items", function(req)
  return 200, db.query("SELECT id, name, price, note FROM items ORDER BY id")
end)
app.get("/items/{id}", function(req)
  local row = db.one("SELECT id, name, price, note FROM items WHERE id = ?", tonumber(req.params.id))
  if not row then app.fail(404, "not_found", "no item " .. req.params.id) end
  return 200, row
end)
app.get("/count/{name}", function(req) return 200, { n = count(req.params.name) } end)
app.get("/none", function(req)
  return 200, db.query("SELECT * FROM items WHERE id < 0")
end)
app.get("/none/one", function(req)
  return 200, { found = db.one("SELECT * FROM items WHERE id < 0") ~= nil }
end)
app.post("/update-many", function(req)
  local changes = db.exec("UPDATE items SET price = price + 1 WHERE name LIKE 'many-%'")
  return 200, { changes = changes }
end)

app.get("/values", function(req)
  local r = db.one("SELECT ? IS NULL AS a_nil, ? IS NULL AS b_null, ? AS t, ? AS f, ? AS s, NULL AS gone, 1 AS one",
                   nil, json.null, true, false, "it's")
  local keys = {}
  for k in pairs(r) do keys[#keys + 1] = k end
  table.sort(keys)
  return 200, { row = r, keys = keys }
end)

app.get("/numbers", function(req)
  db.exec("DELETE FROM nums")
  local input = { 3, 2.5, 4.0, -7, 0.1, math.maxinteger, 9007199254740993, 1e300 }
  for i, v in ipairs(input) do db.exec("INSERT INTO nums (id, v) VALUES (?, ?)", i, v) end
  local out = {}
  for _, row in ipairs(db.query("SELECT v FROM nums ORDER BY id")) do
    out[#out + 1] = { type = math.type(row.v), text = tostring(row.v) }
  end
  return 200, out
end)

app.get("/bind/table", function(req) return 200, { r = db.one("SELECT ? AS x", {}) } end)
app.get("/bind/errors", function(req)
  local function e(...) local ok, err = pcall(...) return ok and "no error" or tostring(err) end
  return 200, {
    table = e(db.one, "SELECT ? AS x", { 1 }),
    fn = e(db.one, "SELECT ? AS x", print),
    too_few = e(db.one, "SELECT ? AS x, ? AS y", 1),
    too_many = e(db.one, "SELECT ? AS x", 1, 2),
    bad_sql = e(db.exec, "SELEC nonsense"),
    constraint = e(db.exec, "INSERT INTO items (name) VALUES (NULL)"),
  }
end)
app.get("/two", function(req)
  db.exec("INSERT INTO items (name) VALUES ('two-a'); INSERT INTO items (name) VALUES ('two-b')")
  return 200, {}
end)
app.get("/two/probe", function(req)
  local errs = {}
  for _, f in ipairs({ db.exec, db.query, db.one }) do
    local ok, err = pcall(f, "INSERT INTO items (name) VALUES ('two-a'); INSERT INTO items (name) VALUES ('two-b')")
    errs[#errs + 1] = ok and "no error" or tostring(err)
  end
  return 200, { errs = errs, a = count("two-a"), b = count("two-b") }
end)

-- ---- transactions ----
app.post("/tx/ok", function(req)
  local a, b = db.tx(function(x, y)
    db.exec("INSERT INTO items (name) VALUES ('tx-ok')")
    db.exec("INSERT INTO items (name) VALUES ('tx-ok')")
    return x * 2, y .. "!"
  end, 21, "hi")
  return 200, { a = a, b = b }
end)
app.post("/tx/error", function(req)
  db.tx(function()
    db.exec("INSERT INTO items (name) VALUES ('tx-error')")
    db.exec("UPDATE stock SET n = n + 100 WHERE id = 1")
    error("boom after two writes")
  end)
  return 200, { unreachable = true }
end)
app.post("/tx/fail", function(req)
  db.tx(function()
    db.exec("INSERT INTO items (name) VALUES ('tx-fail')")
    app.fail(409, "conflict", "changed my mind")
  end)
end)
app.post("/tx/nested", function(req)
  local ok, err = db.tx(function()
    db.exec("INSERT INTO items (name) VALUES ('outer-1')")
    local ok, err = pcall(db.tx, function()
      db.exec("INSERT INTO items (name) VALUES ('inner')")
      error("inner boom", 0)
    end)
    db.exec("INSERT INTO items (name) VALUES ('outer-2')")
    return ok, err
  end)
  return 200, { ok = ok, err = err }
end)
app.post("/tx/nested-commit", function(req)
  db.tx(function()
    db.tx(function() db.exec("INSERT INTO items (name) VALUES ('nested-ok')") end)
    db.tx(function() db.tx(function() db.exec("INSERT INTO items (name) VALUES ('nested-ok')") end) end)
  end)
  return 200, { n = count("nested-ok") }
end)
app.post("/tx/sleep", function(req)
  local ok, err = pcall(db.tx, function()
    db.exec("INSERT INTO items (name) VALUES ('tx-sleep')")
    clock.sleep(1)
    db.exec("INSERT INTO items (name) VALUES ('tx-sleep')")
  end)
  return 200, { ok = ok, err = tostring(err), n = count("tx-sleep") }
end)
app.post("/tx/sleep-unprotected", function(req)
  db.tx(function()
    db.exec("INSERT INTO items (name) VALUES ('tx-sleep2')")
    clock.sleep(1)
  end)
  return 200, {}
end)

-- ---- concurrency ----
app.put("/stock", function(req)
  db.exec("UPDATE stock SET n = ? WHERE id = 1", app.integer(app.read_json(req).n, 0, 100000, "n"))
  return 200, {}
end)
app.get("/stock", function(req) return 200, db.one("SELECT n FROM stock WHERE id = 1") end)
app.post("/buy", function(req)
  clock.sleep(1)
  local changed = db.tx(function()
    return (db.exec("UPDATE stock SET n = n - 1 WHERE id = 1 AND n >= 1"))
  end)
  if changed ~= 1 then app.fail(409, "out_of_stock", "sold out") end
  return 200, { ok = true }
end)
app.post("/buy-rmw", function(req)
  clock.sleep(1)
  local got = db.tx(function()
    local n = db.one("SELECT n FROM stock WHERE id = 1").n
    if n < 1 then return false end
    db.exec("UPDATE stock SET n = ? WHERE id = 1", n - 1)
    return true
  end)
  if not got then app.fail(409, "out_of_stock", "sold out") end
  return 200, { ok = true }
end)

-- ---- schema ----
app.get("/tables", function(req)
  local names = json.array()
  for _, r in ipairs(db.query("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")) do
    names[#names + 1] = r.name
  end
  return 200, names
end)
app.get("/migrations", function(req)
  return 200, db.query("SELECT version, name FROM _paygate_migrations ORDER BY version")
end)
app.get("/coupons", function(req) return 200, db.query("SELECT code, off FROM coupons ORDER BY code") end)
`;

function initLua(migrations, extra = '') {
  return `local app = require "paygate"\n${migrations.join('\n')}\n${routes}\n${extra}\n`;
}

const baseScripts = { 'init.lua': initLua([M1]) };

before(async () => {
  gw = await startGateway({ scripts: baseScripts, config: { watch: false } });
});
after(async () => { await gw.stop({ clean: true }); });

async function count(name) {
  const r = await gw.get(`/count/${encodeURIComponent(name)}`);
  assert.equal(r.status, 200, r.body);
  return r.json.n;
}

async function tables() {
  const r = await gw.get('/tables');
  assert.equal(r.status, 200, r.body);
  return r.json;
}

// ---- statements and values ----

test('a table created by a migration is usable; exec returns changes and the new rowid', async () => {
  const a = await gw.post('/items', { name: 'apple', price: 120 });
  assert.equal(a.status, 201, a.body);
  assert.equal(a.json.changes, 1);
  assert.equal(typeof a.json.rowid, 'number');
  const b = await gw.post('/items', { name: 'pear', price: 80, note: 'ripe' });
  assert.equal(b.json.rowid, a.json.rowid + 1);
  for (let i = 0; i < 3; i++) await gw.post('/items', { name: `many-${i}`, price: i });
  const u = await gw.post('/update-many');
  assert.deepEqual(u.json, { changes: 3 }, 'changes counts every row an UPDATE touched');
});

test('query returns an array of rows keyed by column; one returns a row or nil', async () => {
  const all = await gw.get('/items');
  assert.equal(all.status, 200);
  assert.ok(Array.isArray(all.json));
  const apple = all.json.find((r) => r.name === 'apple');
  assert.deepEqual(Object.keys(apple).sort(), ['id', 'name', 'price'], 'a NULL column is absent from the row');
  assert.equal(apple.price, 120);
  const one = await gw.get(`/items/${apple.id}`);
  assert.deepEqual(one.json, { id: apple.id, name: 'apple', price: 120 });
  const pear = all.json.find((r) => r.name === 'pear');
  assert.equal(pear.note, 'ripe');
  assert.equal((await gw.get('/items/999999')).status, 404);
  assert.deepEqual((await gw.get('/none/one')).json, { found: false });
});

test('a query without rows encodes as []', async () => {
  const r = await gw.get('/none');
  assert.equal(r.status, 200);
  assert.equal(r.body, '[]');
});

test('nil and json.null bind as NULL, booleans as 1/0; NULL columns are absent', async () => {
  const r = await gw.get('/values');
  assert.equal(r.status, 200, r.body);
  assert.deepEqual(r.json.row, { a_nil: 1, b_null: 1, t: 1, f: 0, s: "it's", one: 1 });
  assert.ok(!r.json.keys.includes('gone'));
  // a JSON null in a request body is stored as NULL
  const c = await gw.post('/items', { name: 'nullnote', price: null, note: null });
  const row = await gw.get(`/items/${c.json.rowid}`);
  assert.deepEqual(row.json, { id: c.json.rowid, name: 'nullnote' });
});

test('integers stay integers and floats stay floats through the database', async () => {
  const r = await gw.get('/numbers');
  assert.equal(r.status, 200, r.body);
  assert.deepEqual(r.json, [
    { type: 'integer', text: '3' },
    { type: 'float', text: '2.5' },
    { type: 'float', text: '4.0' },
    { type: 'integer', text: '-7' },
    { type: 'float', text: '0.1' },
    { type: 'integer', text: '9223372036854775807' },
    { type: 'integer', text: '9007199254740993' },
    { type: 'float', text: '1e+300' },
  ]);
});

test('binding a table is an error (500), and so are other bad parameters', async () => {
  const r = await gw.get('/bind/table');
  assert.equal(r.status, 500);
  assert.equal(r.json.error, 'internal_error');
  await eventually(() => gw.log.includes(`req=${r.headers['x-request-id']}`) && /parameter 1 is a table/.test(gw.log));
  const e = (await gw.get('/bind/errors')).json;
  assert.match(e.table, /parameter 1 is a table/);
  assert.match(e.fn, /parameter 1 is a function/);
  assert.match(e.too_few, /2 parameters but 1 values/);
  assert.match(e.too_many, /1 parameters but 2 values/);
  assert.match(e.bad_sql, /syntax error/);
  assert.match(e.constraint, /NOT NULL constraint failed/);
});

test('two statements in one call are refused and neither runs', async () => {
  const r = await gw.get('/two');
  assert.equal(r.status, 500);
  const p = await gw.get('/two/probe');
  assert.equal(p.status, 200, p.body);
  for (const err of p.json.errs) assert.match(err, /exactly one SQL statement per call/);
  assert.equal(p.json.a, 0);
  assert.equal(p.json.b, 0);
});

// ---- transactions ----

test('db.tx commits and returns what its function returns', async () => {
  const r = await gw.post('/tx/ok');
  assert.deepEqual(r.json, { a: 42, b: 'hi!' });
  assert.equal(await count('tx-ok'), 2);
});

test('an error inside db.tx rolls back everything it wrote', async () => {
  const stock = (await gw.get('/stock')).json.n;
  const r = await gw.post('/tx/error');
  assert.equal(r.status, 500);
  assert.equal(r.json.error, 'internal_error');
  assert.equal(await count('tx-error'), 0);
  assert.equal((await gw.get('/stock')).json.n, stock, 'the UPDATE was rolled back too');
});

test('app.fail inside db.tx answers its error and rolls back', async () => {
  const r = await gw.post('/tx/fail');
  assert.equal(r.status, 409);
  assert.deepEqual(r.json, { error: 'conflict', message: 'changed my mind' });
  assert.equal(await count('tx-fail'), 0);
});

test('a failed nested db.tx caught with pcall rolls back to its savepoint; the outer work commits', async () => {
  const r = await gw.post('/tx/nested');
  assert.equal(r.status, 200, r.body);
  assert.deepEqual(r.json, { ok: false, err: 'inner boom' });
  assert.equal(await count('outer-1'), 1);
  assert.equal(await count('outer-2'), 1);
  assert.equal(await count('inner'), 0);
});

test('nested db.tx that succeed all commit', async () => {
  const r = await gw.post('/tx/nested-commit');
  assert.deepEqual(r.json, { n: 2 });
});

test('clock.sleep inside db.tx is an error naming db.tx, and nothing is written', async () => {
  const r = await gw.post('/tx/sleep');
  assert.equal(r.status, 200, r.body);
  assert.equal(r.json.ok, false);
  assert.match(r.json.err, /clock\.sleep cannot wait inside db\.tx\(\)/);
  assert.equal(r.json.n, 0);
  const u = await gw.post('/tx/sleep-unprotected');
  assert.equal(u.status, 500);
  assert.equal(await count('tx-sleep2'), 0);
  // the store is not left inside a transaction
  assert.deepEqual((await gw.post('/tx/ok')).json, { a: 42, b: 'hi!' });
  assert.equal(await count('tx-ok'), 4);
});

// ---- concurrency ----

async function stampede(path, initial, n) {
  assert.equal((await gw.put('/stock', { n: initial })).status, 200);
  const results = await Promise.all(Array.from({ length: n }, () => gw.post(path)));
  const byStatus = {};
  for (const r of results) byStatus[r.status] = (byStatus[r.status] || 0) + 1;
  assert.deepEqual(byStatus, { 200: initial, 409: n - initial }, JSON.stringify(byStatus));
  assert.deepEqual((await gw.get('/stock')).json, { n: 0 });
}

test('200 concurrent buyers of 50 items: exactly 50 succeed and stock ends at 0', async () => {
  await stampede('/buy', 50, 200);
});

test('a read-modify-write inside db.tx is atomic under 200 concurrent requests', async () => {
  await stampede('/buy-rmw', 37, 200);
});

// ---- migrations ----

test('a migration added to the scripts is applied on reload', async () => {
  const before = (await gw.get('/healthz')).json.generation;
  gw.writeScripts({ 'init.lua': initLua([M1, M2]) });
  const r = await gw.reload();
  assert.equal(r.status, 200, r.body);
  assert.equal(r.json.ok, true);
  assert.ok(r.json.generation > before);
  assert.ok((await tables()).includes('coupons'));
  assert.deepEqual((await gw.get('/migrations')).json, [{ version: 1, name: 'items' }, { version: 2, name: 'coupons' }]);
  assert.deepEqual((await gw.get('/coupons')).json, []);
});

test('a broken migration refuses the reload, applies nothing, and the old generation keeps serving', async () => {
  const before = (await gw.get('/healthz')).json;
  assert.equal(before.status, 'ok');
  gw.writeScripts({ 'init.lua': initLua([M1, M2, M3_BROKEN], 'app.get("/only-in-new", function() return 200, {} end)') });
  const r = await gw.reload();
  assert.equal(r.status, 422, r.body);
  assert.equal(r.json.error, 'reload_failed');
  assert.match(r.json.message, /no such table: no_such_table/);
  assert.match(r.json.message, /migration 3/);

  const h = (await gw.get('/healthz')).json;
  assert.equal(h.generation, before.generation, 'same generation serves');
  assert.equal(h.status, 'degraded');
  assert.equal(h.last_reload.ok, false);
  assert.match(h.last_reload.error, /no such table: no_such_table/);

  assert.ok(!(await tables()).includes('audit'), 'the CREATE TABLE of the failed migration was rolled back');
  assert.deepEqual((await gw.get('/coupons')).json, [], 'the INSERT of the failed migration was rolled back');
  assert.equal((await gw.get('/migrations')).json.length, 2);
  assert.equal((await gw.get('/only-in-new')).status, 404, 'the old routes serve');
  assert.equal((await gw.get('/items')).status, 200);

  gw.writeScripts({ 'init.lua': initLua([M1, M2]) });
  assert.equal((await gw.reload()).status, 200);
  assert.equal((await gw.get('/healthz')).json.status, 'ok');
});

test('editing an already applied migration refuses the reload with a message saying so', async () => {
  const before = (await gw.get('/healthz')).json.generation;
  gw.writeScripts({ 'init.lua': initLua([M1_EDITED, M2]) });
  const r = await gw.reload();
  assert.equal(r.status, 422, r.body);
  assert.match(r.json.message, /migration 1 \(items\) was changed after it was applied/);
  assert.equal((await gw.get('/healthz')).json.generation, before);
  gw.writeScripts({ 'init.lua': initLua([M1, M2]) });
  assert.equal((await gw.reload()).status, 200);
});

// ---- durability (last: replaces the gateway) ----

test('committed data survives a restart on the same directory', async () => {
  const c = await gw.post('/items', { name: 'durable', price: 1 });
  assert.equal(c.status, 201);
  const dir = gw.dir;
  const scripts = { 'init.lua': initLua([M1, M2]) };
  await gw.stop({ clean: false });
  gw = await startGateway({ dir, scripts, config: { watch: false } });
  assert.equal(await count('durable'), 1);
  assert.equal(await count('tx-ok'), 4);
  assert.equal((await gw.get('/migrations')).json.length, 2, 'applied migrations are not applied again');
});

test('committed data survives a SIGKILL', async () => {
  const c = await gw.post('/items', { name: 'durable-kill', price: 1 });
  assert.equal(c.status, 201);
  assert.equal((await gw.post('/tx/ok')).status, 200);
  const dir = gw.dir;
  await gw.stop({ clean: false, signal: 'SIGKILL' });
  gw = await startGateway({ dir, scripts: { 'init.lua': initLua([M1, M2]) }, config: { watch: false } });
  assert.equal(await count('durable-kill'), 1);
  assert.equal(await count('tx-ok'), 6);
});

// ---- SQL that reaches past the store: each on its own gateway ----

async function ownGateway(init, fn) {
  const own = await startGateway({ scripts: { 'init.lua': init }, config: { watch: false } });
  try { await fn(own); } finally { await own.stop(); }
}

test('a transaction opened by hand with db.exec("BEGIN") does not outlive its handler', async () => {
  await ownGateway(`local app = require "paygate"
app.migration(1, "t", "CREATE TABLE t (x)")
app.post("/raw-begin", function(req)
  local ok = pcall(db.exec, "BEGIN")
  pcall(db.exec, "INSERT INTO t VALUES (1)")
  return 200, { began = ok }
end)
app.post("/tx", function(req)
  local ok, err = pcall(db.tx, function() db.exec("INSERT INTO t VALUES (2)") end)
  return 200, { ok = ok, err = tostring(err) }
end)
`, async (own) => {
    assert.equal((await own.post('/raw-begin')).status, 200);
    const tx = await own.post('/tx');
    assert.equal(tx.json.ok, true, `a later request's db.tx fails: ${tx.json.err}`);
    const reload = await own.reload();
    assert.equal(reload.status, 200, `a later reload fails: ${reload.body}`);
  });
});

test('SQL cannot create or write other files: ATTACH and VACUUM INTO are refused', async () => {
  const outside = mkdtempSync(join(tmpdir(), 'paygate-outside-'));
  try {
    await ownGateway(`local app = require "paygate"
app.post("/attach", function(req)
  local dir = app.read_json(req).dir
  local function e(sql) local ok, err = pcall(db.exec, sql) return ok and "allowed" or tostring(err) end
  return 200, {
    attach = e("ATTACH DATABASE '" .. dir .. "/attached.db' AS other"),
    create = e("CREATE TABLE other.loot (x)"),
    vacuum = e("VACUUM INTO '" .. dir .. "/copy.db'"),
  }
end)
`, async (own) => {
      const r = await own.post('/attach', { dir: outside });
      assert.equal(r.status, 200, r.body);
      assert.notEqual(r.json.attach, 'allowed', 'ATTACH must be refused');
      assert.notEqual(r.json.vacuum, 'allowed', 'VACUUM INTO must be refused');
      assert.ok(!existsSync(join(outside, 'attached.db')), 'a script created a file through ATTACH');
      assert.ok(!existsSync(join(outside, 'copy.db')), 'a script created a file through VACUUM INTO');
    });
  } finally { rmSync(outside, { recursive: true, force: true }); }
});

test('the session-token key stays in C: scripts can neither read nor change its table, by query or migration', async () => {
  await ownGateway(`local app = require "paygate"
app.migration(1, "t", "CREATE TABLE t (x)")
app.get("/secret", function(req)
  local function e(f, sql) local ok, err = pcall(f, sql) return ok and "allowed" or tostring(err) end
  return 200, {
    read = e(db.query, "SELECT value FROM _paygate_secrets"),
    count = e(db.one, "SELECT count(*) AS n FROM _paygate_secrets"),
    copy = e(db.exec, "INSERT INTO t SELECT value FROM _paygate_secrets"),
    change = e(db.exec, "UPDATE _paygate_secrets SET value = x'00'"),
    remove = e(db.exec, "DELETE FROM _paygate_secrets"),
    drop = e(db.exec, "DROP TABLE _paygate_secrets"),
    copied = db.one("SELECT count(*) AS n FROM t").n,
  }
end)
`, async (own) => {
    const r = await own.get('/secret');
    assert.equal(r.status, 200, r.body);
    for (const k of ['read', 'count', 'copy', 'change', 'remove', 'drop']) {
      assert.match(r.json[k], /prohibited|not authorized/, `${k} must be refused: ${r.json[k]}`);
    }
    assert.equal(r.json.copied, 0);
    // A migration is the scripts' SQL too: one that copies the key out is refused, and nothing of it applies.
    writeFileSync(join(own.scriptsDir, 'init.lua'), `local app = require "paygate"
app.migration(1, "t", "CREATE TABLE t (x)")
app.migration(2, "steal", "CREATE TABLE loot AS SELECT value FROM _paygate_secrets")
`);
    const reload = await own.reload();
    assert.equal(reload.status, 422, reload.body);
    assert.match(reload.json.message, /prohibited|not authorized/);
    // Sessions still work: the key was neither read out nor changed.
    const health = await own.get('/healthz');
    assert.equal(health.json.generation, 1);
  });
});

test('WAL checkpoints run on their own thread while the gateway serves, and lose nothing', async () => {
  const init = `
local app = require "paygate"
app.migration(1, "rows", "CREATE TABLE rows(id INTEGER PRIMARY KEY, pad TEXT NOT NULL)")
app.post("/rows", function(req)
  db.tx(function() for _ = 1, 20 do db.exec("INSERT INTO rows(pad) VALUES (?)", string.rep("x", 500)) end end)
  return 201, {}
end)
app.get("/rows", function() return 200, db.one("SELECT count(*) AS n FROM rows") end)
`;
  const own = await startGateway({ scripts: { 'init.lua': init }, config: { watch: false, db_checkpoint_pages: 10 } });
  try {
    const dbFile = join(own.dir, 'paygate.db');
    const before = statSync(dbFile).size;
    const posts = await Promise.all(Array.from({ length: 200 }, () => own.post('/rows', {})));
    assert.deepEqual([...new Set(posts.map((r) => r.status))], [201]);
    // the pages reach the database file while the gateway runs: the checkpointer copied them
    await eventually(async () => (await own.metric('paygate_db_checkpoints_total')) > 0, 5000, 50);
    await eventually(() => statSync(dbFile).size > before + 1000000, 5000, 50);
    assert.equal(await own.metric('paygate_db_checkpoints_failed_total'), 0);
    assert.equal((await own.get('/rows')).json.n, 4000);
  } finally { await own.stop(); }
});

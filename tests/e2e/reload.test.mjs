// Hot reload: file changes, SIGHUP and POST /admin/reload swap the script generation
// without a restart; broken scripts never replace working ones; work in flight finishes
// on the generation it started on.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { writeFileSync, renameSync, mkdtempSync, mkdirSync, existsSync, rmSync, utimesSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startGateway, runPaygate, eventually, sleep, ROOT } from './harness.mjs';

// A script whose routes answer with version n.
const version = (n, extra = '') => `
local app = require "paygate"
local VERSION = ${n}
app.get("/v", function(req) return 200, { v = VERSION } end)
app.get("/slow", function(req) clock.sleep(500); return 200, { v = VERSION } end)
${extra}
`;

const health = async (gw) => (await gw.get('/healthz')).json;
const v = async (gw) => (await gw.get('/v')).json?.v;

async function withGateway(opts, fn) {
  const gw = await startGateway(opts);
  try { return await fn(gw); } finally { await gw.stop(); }
}

test('editing a script is live without a restart; a save by rename is seen too', async () => {
  await withGateway({ scripts: { 'init.lua': version(1) } }, async (gw) => {
    assert.equal(await v(gw), 1);
    assert.equal((await health(gw)).generation, 1);

    writeFileSync(join(gw.scriptsDir, 'init.lua'), version(2));
    await eventually(async () => (await v(gw)) === 2, 3000);
    assert.equal((await health(gw)).generation, 2);

    // an editor's save: write a temporary file, rename it over the old one
    const tmp = join(gw.scriptsDir, '.init.lua.swp~');
    writeFileSync(tmp, version(3));
    renameSync(tmp, join(gw.scriptsDir, 'init.lua'));
    await eventually(async () => (await v(gw)) === 3, 3000);
    const h = await health(gw);
    assert.equal(h.generation, 3);
    assert.equal(h.status, 'ok');
    assert.equal(await gw.metric('paygate_script_generation'), 3);
  });
});

test('a change to a module in a subdirectory reloads; non-.lua files do not', async () => {
  const scripts = {
    'init.lua': `local app = require "paygate"\nlocal util = require "lib.util"\napp.get("/v", function() return 200, { v = util.v } end)\n`,
    'lib/util.lua': 'return { v = 1 }\n',
  };
  await withGateway({ scripts }, async (gw) => {
    assert.equal(await v(gw), 1);
    gw.writeScripts({ 'lib/util.lua': 'return { v = 2 }\n' });
    await eventually(async () => (await v(gw)) === 2, 3000);
    const gen = (await health(gw)).generation;
    gw.writeScripts({ 'README.txt': 'notes', 'lib/data.json': '{}' });
    await sleep(400);
    assert.equal((await health(gw)).generation, gen, 'no reload for non-.lua files');
  });
});

test('a burst of saves is debounced into a single reload', async () => {
  await withGateway({ scripts: { 'init.lua': version(1) } }, async (gw) => {
    const ok0 = await gw.metric('paygate_reloads_ok_total');
    for (let i = 2; i <= 6; i++) {
      writeFileSync(join(gw.scriptsDir, 'init.lua'), version(i));
      await sleep(15);
    }
    await eventually(async () => (await v(gw)) === 6, 3000);
    await sleep(300);
    assert.equal(await gw.metric('paygate_reloads_ok_total'), ok0 + 1);
    assert.equal((await health(gw)).generation, 2);
  });
});

test('a syntax error keeps the old code serving, reports file:line everywhere, and a fix recovers', async () => {
  await withGateway({ scripts: { 'init.lua': version(1) } }, async (gw) => {
    const failed0 = await gw.metric('paygate_reloads_failed_total');
    writeFileSync(join(gw.scriptsDir, 'init.lua'), 'local app = require "paygate"\n\napp.get("/v", function(req)\n  return 200, { v = 2 \nend)\n');
    const h = await eventually(async () => { const x = await health(gw); return x.status === 'degraded' && x; }, 3000);
    assert.equal(h.generation, 1);
    assert.equal(h.last_reload.ok, false);
    assert.match(h.last_reload.error, /init\.lua:\d+:/);
    assert.equal(await v(gw), 1, 'the old generation keeps serving');
    assert.equal((await gw.get('/slow')).json.v, 1);

    const r = await gw.reload();
    assert.equal(r.status, 422);
    assert.equal(r.json.error, 'reload_failed');
    assert.match(r.json.message, /init\.lua:\d+:/);
    assert.match(gw.log, /init\.lua:\d+:/);
    assert.ok((await gw.metric('paygate_reloads_failed_total')) >= failed0 + 2);
    assert.equal(await gw.metric('paygate_script_generation'), 1);

    writeFileSync(join(gw.scriptsDir, 'init.lua'), version(2));
    await eventually(async () => (await v(gw)) === 2, 3000);
    const ok = await health(gw);
    assert.equal(ok.status, 'ok');
    assert.equal(ok.last_reload.ok, true);
    assert.equal(ok.last_reload.error, undefined);
    assert.equal(ok.generation, 2);
  });
});

test('a runtime error while loading keeps the old code serving (422 with the message)', async () => {
  await withGateway({ scripts: { 'init.lua': version(1) }, config: { watch: false } }, async (gw) => {
    gw.writeScripts({ 'init.lua': version(2, 'error("refusing to load: missing setting")') });
    const r = await gw.reload();
    assert.equal(r.status, 422);
    assert.match(r.json.message, /refusing to load: missing setting/);
    const h = await health(gw);
    assert.equal(h.status, 'degraded');
    assert.equal(h.generation, 1);
    assert.match(h.last_reload.error, /refusing to load/);
    assert.equal(await v(gw), 1);
  });
});

test('SIGHUP reloads the scripts', async () => {
  await withGateway({ scripts: { 'init.lua': version(1) }, config: { watch: false } }, async (gw) => {
    gw.writeScripts({ 'init.lua': version(2) });
    await sleep(200);
    assert.equal(await v(gw), 1, 'without watching, nothing changes by itself');
    process.kill(gw.pid, 'SIGHUP');
    await eventually(async () => (await v(gw)) === 2, 3000);
    assert.equal((await health(gw)).generation, 2);
    assert.equal(gw.child.exitCode, null, 'still running');
  });
});

test('a request in flight during a reload finishes on the old code; new requests get the new code', async () => {
  await withGateway({ scripts: { 'init.lua': version(1) }, config: { watch: false } }, async (gw) => {
    const inflight = gw.get('/slow');
    await eventually(async () => (await health(gw)).inflight >= 1, 1000, 10);   // /slow is waiting
    gw.writeScripts({ 'init.lua': version(2) });
    const r = await gw.reload();
    assert.equal(r.status, 200);
    assert.deepEqual(r.json, { ok: true, generation: 2 });
    assert.equal(await v(gw), 2);
    assert.equal(await gw.metric('paygate_script_generations_draining'), 1);
    const fresh = gw.get('/slow');
    assert.equal((await inflight).json.v, 1, 'started on generation 1, answered by generation 1');
    assert.equal((await fresh).json.v, 2);
    await eventually(async () => (await gw.metric('paygate_script_generations_draining')) === 0, 2000);
    assert.equal((await health(gw)).draining, 0);
    assert.match(gw.log, /script generation 1 drained and freed/);
  });
});

test('50 reloads under continuous load: no request fails, every answer is one of the two versions', async () => {
  await withGateway({ scripts: { 'init.lua': version(1) }, config: { watch: false, log_level: 'info' } }, async (gw) => {
    const ok0 = await gw.metric('paygate_reloads_ok_total');
    let stop = false;
    const seen = { 1: 0, 2: 0 }, failures = [];
    const loop = async () => {
      while (!stop) {
        try {
          const r = await gw.get('/v');
          if (r.status !== 200 || (r.json?.v !== 1 && r.json?.v !== 2)) failures.push(`${r.status} ${r.body}`);
          else seen[r.json.v]++;
        } catch (e) { failures.push(e.message); }
      }
    };
    const loops = Array.from({ length: 8 }, loop);
    for (let i = 0; i < 50; i++) {
      gw.writeScripts({ 'init.lua': version(i % 2 === 0 ? 2 : 1) });
      const r = await gw.reload();
      assert.equal(r.status, 200, r.body);
      assert.equal(r.json.generation, i + 2);
      await sleep(5);
    }
    stop = true;
    await Promise.all(loops);
    assert.deepEqual(failures, []);
    assert.ok(seen[1] > 0 && seen[2] > 0, JSON.stringify(seen));
    assert.equal(await v(gw), 1, 'the last reload (version 1) serves');
    assert.equal(await gw.metric('paygate_reloads_ok_total'), ok0 + 50);
    assert.equal((await health(gw)).generation, 51);
    await eventually(async () => (await gw.metric('paygate_script_generations_draining')) === 0, 2000);
  });
});

test('reloads are refused while script.max_draining old generations are still finishing work, and retried once one has drained', async () => {
  await withGateway({ scripts: { 'init.lua': version(1) }, config: { watch: false, script: { max_draining: 1 } } }, async (gw) => {
    const held = gw.get('/slow');
    await eventually(async () => (await health(gw)).inflight >= 1, 1000, 10);
    gw.writeScripts({ 'init.lua': version(2) });
    assert.equal((await gw.reload()).status, 200);
    gw.writeScripts({ 'init.lua': version(3) });
    const refused = await gw.reload();
    assert.equal(refused.status, 422);
    assert.match(refused.json.message, /still finishing work/);
    assert.equal(await v(gw), 2);
    gw.writeScripts({ 'init.lua': version(4) });   // saved again while refused; nobody asks for a reload
    assert.equal((await held).json.v, 1);
    // The refused reload is tried again once generation 1 has drained: the newest save goes live.
    await eventually(async () => (await v(gw)) === 4, 3000);
    assert.equal((await health(gw)).status, 'ok', '/healthz is no longer degraded');
    await eventually(async () => (await health(gw)).draining === 0, 2000);
    assert.equal((await gw.reload()).status, 200);
  });
});

const withTable = (n, migrations) => version(n, `
${migrations}
app.get("/tables", function(req)
  local names = {}
  for _, row in ipairs(db.query("SELECT name FROM sqlite_master WHERE type = 'table' AND substr(name, 1, 1) <> '_' AND name NOT LIKE 'sqlite%' ORDER BY name")) do
    names[#names + 1] = row.name
  end
  return 200, { tables = names }
end)
`);
const m1 = `app.migration(1, "items", "CREATE TABLE items(id INTEGER PRIMARY KEY, name TEXT)")`;

test('a failing migration keeps the old generation (422) and applies nothing of itself', async () => {
  await withGateway({ scripts: { 'init.lua': withTable(1, m1) }, config: { watch: false } }, async (gw) => {
    assert.deepEqual((await gw.get('/tables')).json.tables, ['items']);
    gw.writeScripts({ 'init.lua': withTable(2, `${m1}
app.migration(2, "extra", "CREATE TABLE extra(x); INSERT INTO no_such_table VALUES (1)")`) });
    const r = await gw.reload();
    assert.equal(r.status, 422);
    assert.equal(r.json.error, 'reload_failed');
    assert.match(r.json.message, /migration 2 \(extra\) failed: .*no_such_table/);
    const h = await health(gw);
    assert.equal(h.generation, 1);
    assert.equal(h.status, 'degraded');
    assert.equal(await v(gw), 1);
    assert.deepEqual((await gw.get('/tables')).json.tables, ['items'], 'the half-done migration was rolled back');

    // editing an applied migration is refused too
    gw.writeScripts({ 'init.lua': withTable(3, `app.migration(1, "items", "CREATE TABLE items(id INTEGER PRIMARY KEY, label TEXT)")`) });
    const edited = await gw.reload();
    assert.equal(edited.status, 422);
    assert.match(edited.json.message, /migration 1 \(items\) was changed after it was applied/);
    assert.equal((await health(gw)).generation, 1);

    // a good new migration goes live with its generation
    gw.writeScripts({ 'init.lua': withTable(4, `${m1}
app.migration(2, "extra", "CREATE TABLE extra(x)")`) });
    const good = await gw.reload();
    assert.equal(good.status, 200, good.body);
    assert.equal(await v(gw), 4);
    assert.deepEqual((await gw.get('/tables')).json.tables, ['extra', 'items']);
  });
});

test('--check exits 0 on good scripts and 1 with the error on broken ones, without touching the database', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'paygate-check-'));
  try {
    const scripts = join(dir, 'scripts');
    mkdirSync(scripts);
    const conf = join(dir, 'paygate.conf.lua');
    writeFileSync(conf, `listen = "127.0.0.1:0"\nscripts = ${JSON.stringify(scripts)}\nlualib = ${JSON.stringify(join(ROOT, 'lualib'))}\n` +
      `database = ${JSON.stringify(join(dir, 'paygate.db'))}\nwatch = false\n`);

    writeFileSync(join(scripts, 'init.lua'), withTable(1, m1));
    const good = await runPaygate(['--config', conf, '--check']);
    assert.equal(good.code, 0, good.stderr);
    assert.match(good.stdout, /configuration and scripts OK/);
    assert.equal(existsSync(join(dir, 'paygate.db')), false, 'migrations ran on an in-memory database');

    writeFileSync(join(scripts, 'init.lua'), 'local app = require "paygate"\napp.get("/x", function()\n  return 200,, {}\nend)\n');
    const bad = await runPaygate(['--config', conf, '--check']);
    assert.equal(bad.code, 1);
    assert.match(bad.stderr, /init\.lua:3:/);
    assert.doesNotMatch(bad.stdout, /OK/);

    writeFileSync(join(scripts, 'init.lua'), withTable(1, `app.migration(1, "bad", "CREATE TABLE (")`));
    const mig = await runPaygate(['--config', conf, '--check']);
    assert.equal(mig.code, 1);
    assert.match(mig.stderr, /migration 1 \(bad\) failed/);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

// ---- a reload as one unit: settings, several files, and errors that say where ----

const settings = `
local app = require "paygate"
app.get("/config", function(req) return 200, { greeting = config.greeting, limit = config.limit } end)
`;

test('a reload re-reads the config file\'s app settings; a broken config file refuses the reload and changes nothing', async () => {
  await withGateway({ scripts: { 'init.lua': settings }, config: { watch: false, app: { greeting: 'hello', limit: 2 } } }, async (gw) => {
    assert.deepEqual((await gw.get('/config')).json, { greeting: 'hello', limit: 2 });
    gw.writeConfig({ app: { greeting: 'bonjour', limit: 3 } });
    assert.deepEqual((await gw.get('/config')).json, { greeting: 'hello', limit: 2 }, 'nothing changes before a reload');
    const r = await gw.reload();
    assert.equal(r.status, 200, r.body);
    assert.deepEqual((await gw.get('/config')).json, { greeting: 'bonjour', limit: 3 });

    gw.writeConfig({ app: 'not a table' });
    const bad = await gw.reload();
    assert.equal(bad.status, 422);
    assert.match(bad.json.message, /config: .*paygate\.conf\.lua: app must be a table/);
    assert.equal((await health(gw)).status, 'degraded');
    assert.deepEqual((await gw.get('/config')).json, { greeting: 'bonjour', limit: 3 }, 'the running generation keeps its settings');

    gw.writeConfig({ app: { greeting: 'hallo' } });
    process.kill(gw.pid, 'SIGHUP');                                 // every trigger reads them
    await eventually(async () => (await gw.get('/config')).json.greeting === 'hallo', 3000);
    assert.equal((await health(gw)).status, 'ok');
  });
});

test('with watch_marker, saved files wait for scripts/.reload, and a change spanning files goes live at once', async () => {
  const two = (n) => ({
    'init.lua': `local app = require "paygate"\nlocal part = require "part"\napp.get("/v", function() return 200, { v = part.v${n} } end)\n`,
    'part.lua': `return { v${n} = ${n} }\n`,
  });
  await withGateway({ scripts: { ...two(1), '.reload': '' }, config: { watch_marker: true } }, async (gw) => {
    assert.equal(await v(gw), 1);
    const ok0 = await gw.metric('paygate_reloads_ok_total');
    const failed0 = await gw.metric('paygate_reloads_failed_total');
    // one file of the change alone would not load (init.lua asks part.v2, part.lua still has v1)
    gw.writeScripts({ 'init.lua': two(2)['init.lua'] });
    await sleep(400);
    gw.writeScripts({ 'part.lua': two(2)['part.lua'] });
    await sleep(400);
    assert.equal(await v(gw), 1, 'saving files alone reloads nothing');
    assert.equal(await gw.metric('paygate_reloads_failed_total'), failed0, 'and no half-saved set was tried');
    const now = new Date();
    utimesSync(join(gw.scriptsDir, '.reload'), now, now);            // touch scripts/.reload
    await eventually(async () => (await v(gw)) === 2, 3000);
    await sleep(300);
    assert.equal(await gw.metric('paygate_reloads_ok_total'), ok0 + 1, 'one reload for the whole change');
    assert.equal(await gw.metric('paygate_reloads_failed_total'), failed0);
    gw.writeScripts({ 'sub/.reload': 'x' });                           // only the one in scripts/ counts
    await sleep(400);
    assert.equal(await gw.metric('paygate_reloads_ok_total'), ok0 + 1);
  });
});

test('a failing migration names the file and line that declared it, for SQL and function migrations', async () => {
  await withGateway({ scripts: { 'init.lua': withTable(1, m1) }, config: { watch: false } }, async (gw) => {
    gw.writeScripts({
      'init.lua': withTable(2, `${m1}\nrequire "schema"`),
      'schema.lua': 'local app = require "paygate"\n\napp.migration(2, "extra", "CREATE TABLE extra(x); INSERT INTO nowhere VALUES (1)")\n',
    });
    const r = await gw.reload();
    assert.equal(r.status, 422);
    assert.match(r.json.message, /schema\.lua:3: migration 2 \(extra\) failed: .*no such table: nowhere/);
    assert.match((await health(gw)).last_reload.error, /schema\.lua:3: migration 2/);

    gw.writeScripts({ 'schema.lua': 'local app = require "paygate"\napp.migration(2, "fill", function()\n  db.exec("INSERT INTO nowhere VALUES (1)")\nend)\n' });
    const f = await gw.reload();
    assert.equal(f.status, 422);
    assert.match(f.json.message, /schema\.lua:2: migration 2 \(fill\) failed: .*schema\.lua:3: .*nowhere/);
    assert.deepEqual((await gw.get('/tables')).json.tables, ['items']);
  });
});

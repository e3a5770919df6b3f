// harness.mjs — start a real paygate on 127.0.0.1 with scripts written by the test, talk HTTP to it.
//
//   const gw = await startGateway({ scripts: { 'init.lua': '...' }, config: { ... } });
//   const r = await gw.get('/hello');          // { status, headers, body, json }
//   await gw.stop();
//
// Every gateway gets its own temporary directory (scripts, database, config) and is
// stopped by its PID. Nothing listens or connects anywhere but 127.0.0.1.
//
// Back ends: `startGateway({ backend: 'postgresql' })` gives the gateway a fresh database of
// its own on the PostgreSQL server in PAYGATE_TEST_PG (tests/run.sh starts a private one),
// named after its directory (a restart with the same opts.dir finds the same database), and
// drops it when the directory is cleaned. `backends()` lists the back ends a spec runs on.

import assert from 'node:assert/strict';
import { spawn, spawnSync, execFileSync } from 'node:child_process';
import { mkdtempSync, mkdirSync, writeFileSync, rmSync, cpSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, dirname, resolve, basename } from 'node:path';
import { fileURLToPath } from 'node:url';
import http from 'node:http';

export const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');
export const BIN = process.env.PAYGATE_BIN || join(ROOT, 'build', 'paygate');
/** The sandbox's binary: the same daemon plus WeChat Pay's side (examples/sandbox/). */
export const SANDBOX_BIN = process.env.PAYGATE_SANDBOX_BIN || join(ROOT, 'build', 'paygate-sandbox');

const agent = new http.Agent({ keepAlive: true, maxSockets: 2048 });

// Lua literal for a JS value (config files are Lua tables).
function lua(v) {
  if (v === null || v === undefined) return 'nil';
  if (typeof v === 'string') return JSON.stringify(v);
  if (typeof v === 'number' || typeof v === 'boolean') return String(v);
  if (Array.isArray(v)) return '{' + v.map(lua).join(', ') + '}';
  return '{' + Object.entries(v).map(([k, x]) => `[${JSON.stringify(k)}] = ${lua(x)}`).join(', ') + '}';
}

export function writeScripts(dir, scripts) {
  for (const [name, text] of Object.entries(scripts)) {
    const p = join(dir, name);
    mkdirSync(dirname(p), { recursive: true });
    writeFileSync(p, text);
  }
}

/** An HTTP request to 127.0.0.1:port; resolves with status, headers, body text and parsed json. */
export function request(port, method, path, { body, headers = {}, timeout = 30000 } = {}) {
  return new Promise((resolveP, reject) => {
    const data = body === undefined ? undefined
      : (typeof body === 'string' || Buffer.isBuffer(body) ? body : JSON.stringify(body));
    const req = http.request({ host: '127.0.0.1', port, method, path, agent, timeout,
      headers: { ...(data !== undefined ? { 'Content-Type': 'application/json' } : {}), ...headers } }, (res) => {
      const chunks = [];
      res.on('data', (c) => chunks.push(c));
      res.on('end', () => {
        const text = Buffer.concat(chunks).toString('utf8');
        let json;
        try { json = text ? JSON.parse(text) : undefined; } catch { json = undefined; }
        resolveP({ status: res.statusCode, headers: res.headers, body: text, json });
      });
    });
    req.on('timeout', () => req.destroy(new Error(`timeout: ${method} ${path}`)));
    req.on('error', reject);
    if (data !== undefined) req.write(data);
    req.end();
  });
}

// ---- PostgreSQL: the server in PAYGATE_TEST_PG, databases for gateways, rows read with psql ----

/** The test server's URL (postgresql://postgres@127.0.0.1:PORT/postgres), or '' when there is none. */
export const TEST_PG = process.env.PAYGATE_TEST_PG || '';

export const isPostgresUrl = (s) => typeof s === 'string' && /^postgres(ql)?:/.test(s);

/** The URL of database `name` on the test server. */
export function pgUrl(name) {
  if (!TEST_PG) throw new Error('PAYGATE_TEST_PG is not set: no PostgreSQL server for the tests (tests/run.sh starts one)');
  const u = new URL(TEST_PG);
  u.pathname = '/' + encodeURIComponent(name);
  return u.toString();
}

/** Run SQL with psql against url (the test server's own database by default); returns its unaligned output. */
export function psql(sql, url = TEST_PG) {
  return execFileSync('psql', ['-X', '-q', '-A', '-t', '-v', 'ON_ERROR_STOP=1', '-d', url, '-c', sql],
    { encoding: 'utf8', env: { ...process.env, PGCONNECT_TIMEOUT: '10' }, stdio: ['ignore', 'pipe', 'pipe'] });
}

/** Rows of a query on a PostgreSQL database, as JSON (bigint and numeric come back as numbers). */
export function pgRows(url, query) {
  const out = psql(`SELECT coalesce(json_agg(t), '[]') FROM (${query}) t`, url).trim();
  return JSON.parse(out);
}

const quoteIdent = (name) => '"' + name.replace(/"/g, '""') + '"';

/** The database a gateway with directory dir gets: the same name for the same directory. */
export const pgDatabaseFor = (dir) => ('paygate_' + basename(dir)).replace(/[^A-Za-z0-9_]/g, '_').slice(0, 63);

/** Create database `name` on the test server unless it exists; returns its URL. */
export function pgCreateDatabase(name) {
  const exists = psql(`SELECT 1 FROM pg_database WHERE datname = '${name.replace(/'/g, "''")}'`).trim() === '1';
  if (!exists) psql(`CREATE DATABASE ${quoteIdent(name)}`);
  return pgUrl(name);
}

/** Drop database `name` (ending any connection still open to it). */
export function pgDropDatabase(name) {
  psql(`DROP DATABASE IF EXISTS ${quoteIdent(name)} WITH (FORCE)`);
}

/**
 * Why this run cannot put gateways on PostgreSQL, or false when it can (usable as a test's
 * `skip` option): a server in
 * PAYGATE_TEST_PG, and an engine built with the PostgreSQL back end (linked with libpq).
 */
export function pgUnavailable() {
  if (!TEST_PG) return 'PAYGATE_TEST_PG is not set (tests/run.sh sets it when postgresql is installed)';
  let libs = '';
  try { libs = execFileSync('ldd', [BIN], { encoding: 'utf8' }); } catch (e) { return `cannot inspect ${BIN}: ${e.message}`; }
  if (!/libpq\.so/.test(libs)) return `${BIN} has no PostgreSQL back end (not linked with libpq)`;
  return false;
}

let backendsNoted = false;
/**
 * The back ends a spec runs on: ['sqlite', 'postgresql'], or ['sqlite'] with a note saying why
 * PostgreSQL is skipped. Use: for (const backend of backends()) describe(`... on ${backend}`, ...).
 */
export function backends() {
  const why = pgUnavailable();
  if (!backendsNoted) {
    backendsNoted = true;
    // tests/run.sh counts these lines for its summary.
    console.log(why ? `backends: sqlite; postgresql SKIPPED: ${why}` : `backends: sqlite, postgresql (${TEST_PG})`);
  }
  return why ? ['sqlite'] : ['sqlite', 'postgresql'];
}

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** A seeded pseudo-random generator (xorshift32): the same seed gives the same choices. */
export function seeded(seed) {
  let x = (seed * 2654435761) >>> 0 || 1;
  return () => { x ^= x << 13; x >>>= 0; x ^= x >>> 17; x ^= x << 5; x >>>= 0; return x; };
}

/** Poll fn until it returns a truthy value (or throw after timeoutMs). */
export async function eventually(fn, timeoutMs = 5000, stepMs = 50) {
  const end = Date.now() + timeoutMs;
  let last;
  while (Date.now() < end) {
    try { last = await fn(); if (last) return last; } catch (e) { last = e; }
    await sleep(stepMs);
  }
  throw new Error('condition not met in time' + (last instanceof Error ? ': ' + last.message : ''));
}

/**
 * The first sanitizer report in a process's output (ASan, LSan, UBSan, TSan), or undefined.
 * Only a sanitizer build prints one; a worker it aborted is restarted by the master, and a leak
 * is reported only as the process exits, so nothing else would notice.
 */
export function sanitizerReport(text) {
  const lines = text.split('\n');
  const at = lines.findIndex((l) => /ERROR: (AddressSanitizer|LeakSanitizer)|WARNING: ThreadSanitizer|: runtime error: /.test(l));
  return at < 0 ? undefined : lines.slice(Math.max(0, at - 2), at + 40).join('\n');
}

/**
 * Start a gateway. opts.scripts: files for the scripts dir (must include init.lua);
 * opts.config: extra config fields (Lua table syntax is generated); opts.dir: reuse a
 * directory (to restart on the same database); opts.backend: 'sqlite' (a file in the directory,
 * the default) or 'postgresql' (a database of its own on PAYGATE_TEST_PG, named after the
 * directory, dropped when the directory is cleaned). A `database` in opts.config wins over both
 * (a PostgreSQL URL given there belongs to the test: several gateways may share it).
 */
export async function startGateway(opts = {}) {
  const dir = opts.dir || mkdtempSync(join(tmpdir(), 'paygate-e2e-'));
  const scriptsDir = join(dir, 'scripts');
  mkdirSync(scriptsDir, { recursive: true });
  if (opts.scripts) writeScripts(scriptsDir, opts.scripts);
  const given = opts.config?.database;
  const backend = given !== undefined ? (isPostgresUrl(given) ? 'postgresql' : 'sqlite') : (opts.backend || 'sqlite');
  if (!['sqlite', 'postgresql'].includes(backend)) throw new Error(`unknown backend ${backend}`);
  // The database this gateway owns (created here, dropped with its directory); none when given.
  const ownDb = backend === 'postgresql' && given === undefined ? pgDatabaseFor(dir) : undefined;
  const config = {
    listen: '127.0.0.1:0', scripts: scriptsDir, lualib: join(ROOT, 'lualib'),
    database: ownDb ? pgCreateDatabase(ownDb) : join(dir, 'paygate.db'),
    log_level: 'debug', watch_debounce_ms: 100, admin: { trust_loopback: true },
    ...opts.config,
  };
  const confPath = join(dir, 'paygate.conf.lua');
  writeFileSync(confPath, Object.entries(config).map(([k, v]) => `${k} = ${lua(v)}`).join('\n') + '\n');

  const child = spawn(opts.bin || BIN, ['--config', confPath, ...(opts.args || [])],
    { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, ...opts.env } });
  let stdout = '', stderr = '';
  child.stdout.on('data', (d) => { stdout += d; });
  child.stderr.on('data', (d) => { stderr += d; });
  const exited = new Promise((r) => child.on('exit', (code, signal) => r({ code, signal })));
  let stopping = false;
  exited.then(({ code, signal }) => {
    // A gateway that dies under a test is a finding: show why (a crash, a sanitizer report).
    if (!stopping && !opts.expectExit) console.error(`# paygate ${child.pid} exited by itself (code ${code}, signal ${signal}):\n` +
      stderr.split('\n').slice(-60).map((l) => '#   ' + l).join('\n'));
  });

  const port = await new Promise((resolveP, reject) => {
    const t = setTimeout(() => reject(new Error('gateway did not start:\n' + stderr)), 10000);
    const check = () => {
      const m = stdout.match(/listening on http:\/\/127\.0\.0\.1:(\d+)/);
      if (m) { clearTimeout(t); resolveP(Number(m[1])); }
    };
    child.stdout.on('data', check);
    exited.then(({ code }) => { clearTimeout(t); reject(new Error(`gateway exited (${code}):\n${stderr}`)); });
  });

  let reported = false;
  const noSanitizerReport = () => {
    const report = reported ? undefined : sanitizerReport(stderr);
    if (report) {
      reported = true;
      throw new Error(`paygate ${child.pid}: a sanitizer reported:\n${report}`);
    }
  };

  const gw = {
    dir, scriptsDir, port, child, pid: child.pid, config, backend, database: config.database,
    /** Rewrite the config file with `changes` merged over the running config (a reload reads its `app`). */
    writeConfig(changes) {
      Object.assign(config, changes);
      writeFileSync(confPath, Object.entries(config).map(([k, v]) => `${k} = ${lua(v)}`).join('\n') + '\n');
    },
    get log() { return stderr; },
    request: (method, path, o) => request(port, method, path, o),
    get: (path, o) => request(port, 'GET', path, o),
    post: (path, body, o = {}) => request(port, 'POST', path, { ...o, body }),
    put: (path, body, o = {}) => request(port, 'PUT', path, { ...o, body }),
    writeScripts: (files) => writeScripts(scriptsDir, files),
    async reload() { return request(port, 'POST', '/admin/reload'); },
    /** The worker processes serving now (the daemon's master is child.pid), from /healthz. */
    async workerPids() { return (await request(port, 'GET', '/healthz')).json.workers.list.map((w) => w.pid); },
    async metric(name) {
      const r = await request(port, 'GET', '/metrics');
      const line = r.body.split('\n').find((l) => l.startsWith(name + ' ') || l.startsWith(name + '{') && l.includes(name));
      return line === undefined ? undefined : Number(line.split(' ').pop());
    },
    exited,
    /** kill -9 by PID (no clean-up at all, as a crash); resolves once the process is gone. */
    async kill() {
      stopping = true;
      if (child.exitCode === null && child.signalCode === null) {
        process.kill(child.pid, 'SIGKILL');
        await exited;
      }
      noSanitizerReport();
    },
    /** Stop by PID (SIGTERM, then SIGKILL after 5 s); keeps the directory unless clean is set.
     *  Throws when a sanitizer reported anything while it ran or as it exited. */
    async stop({ clean = !opts.dir, signal = 'SIGTERM' } = {}) {
      stopping = true;
      if (child.exitCode === null && child.signalCode === null) {
        process.kill(child.pid, signal);
        const t = setTimeout(() => { try { process.kill(child.pid, 'SIGKILL'); } catch {} }, 5000);
        await exited;
        clearTimeout(t);
      }
      if (clean) {
        rmSync(dir, { recursive: true, force: true });
        if (ownDb) pgDropDatabase(ownDb);
      }
      noSanitizerReport();
    },
  };
  return gw;
}

/** Is cmd on the PATH? (for specs that need a program, nginx say, and skip without it) */
export const have = (cmd) => spawnSync('sh', ['-c', `command -v ${cmd}`]).status === 0;

/**
 * A real nginx serving `site` (the text of a server-block file) with its pid, logs and temp files
 * in dir, once `nginx -t` accepts the config. stop() ends it by its PID (SIGQUIT: graceful).
 */
export function startNginx(dir, site) {
  writeFileSync(join(dir, 'site.conf'), site);
  writeFileSync(join(dir, 'nginx.conf'), `pid ${dir}/nginx.pid;\nerror_log ${dir}/error.log;\nevents {}\nhttp {\n` +
    `  access_log off;\n  client_body_temp_path ${dir}; proxy_temp_path ${dir}; fastcgi_temp_path ${dir}; uwsgi_temp_path ${dir}; scgi_temp_path ${dir};\n` +
    `  include ${dir}/site.conf;\n}\n`);
  const t = spawnSync('nginx', ['-t', '-c', join(dir, 'nginx.conf'), '-p', dir], { encoding: 'utf8' });
  assert.equal(t.status, 0, t.stderr);
  const child = spawn('nginx', ['-c', join(dir, 'nginx.conf'), '-p', dir, '-g', 'daemon off;'], { stdio: 'ignore' });
  const exited = new Promise((r) => child.on('exit', r));
  return {
    child,
    async stop() {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGQUIT');
      await exited;
    },
  };
}

/** Run paygate with arguments to completion (e.g. --check); resolves {code, stdout, stderr}. */
export function runPaygate(args) {
  return new Promise((resolveP) => {
    const child = spawn(BIN, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '', stderr = '';
    child.stdout.on('data', (d) => { stdout += d; });
    child.stderr.on('data', (d) => { stderr += d; });
    child.on('exit', (code) => resolveP({ code, stdout, stderr }));
  });
}

/** A slow local HTTP server on 127.0.0.1 (answers after delayMs); counts requests and open sockets. */
export async function startSlowServer(delayMs, handler) {
  const stats = { requests: 0, open: 0, closedEarly: 0 };
  const server = http.createServer((req, res) => {
    stats.requests++;
    let done = false;
    res.on('close', () => { if (!done) stats.closedEarly++; });
    const t = setTimeout(() => {
      done = true;
      if (handler) return handler(req, res);
      res.writeHead(200, { 'Content-Type': 'application/json' });
      res.end(JSON.stringify({ slow: true, path: req.url }));
    }, delayMs);
    req.on('close', () => { if (!done) clearTimeout(t); });
  });
  server.on('connection', (s) => { stats.open++; s.on('close', () => stats.open--); });
  server.maxConnections = 5000;
  await new Promise((r) => server.listen(0, '127.0.0.1', r));
  return { port: server.address().port, stats, close: () => new Promise((r) => { server.closeAllConnections?.(); server.close(r); }) };
}

export { agent };

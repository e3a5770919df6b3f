// game.mjs — the game-server example (examples/game-server) end to end, as a player and WeChat see it.
//
//   node tests/embed/game.mjs            (env: GAME, SANDBOX, LUALIB, KEYS, WORK; set by tests/embed/run.sh)
//
// Starts the WeChat Pay sandbox (build/paygate-sandbox with examples/sandbox/scripts) and the
// game built from the installed library; talks the game's line protocol; plays the paying user
// at the sandbox; checks what the game delivered. Then the same purchase once more with the game
// under valgrind: create → purchase → reload → free must leak nothing. Everything is on
// 127.0.0.1; every process is stopped by its PID. Prints "ok - ..." lines.
import { spawn, execSync } from 'node:child_process';
import { writeFileSync, readFileSync, mkdirSync, cpSync } from 'node:fs';
import { join, resolve, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import net from 'node:net';
import http from 'node:http';

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');
const { GAME, GAME_EPOLL, GAME_UV, GAME_TSAN, GAME_TSAN_UV, SANDBOX, LUALIB, KEYS, WORK } = process.env;
const MCHID = '1900007291';
const APPID = 'wxd678efh567hg6787';
const APP_APPID = 'wx1a2b3c4d5e6f7a8b';   // the game on a phone: APP pay
const children = new Set();
let passed = 0, failed = 0;

function report(ok, name, detail) {
  console.log(`${ok ? 'ok' : 'not ok'} - ${name}`);
  if (!ok && detail !== undefined) console.log('#   ' + String(detail).split('\n').join('\n#   '));
  ok ? passed++ : failed++;
}

const specOf = (name, fn) => spec(name, fn);

async function spec(name, fn) {
  try { await fn(); report(true, name); } catch (e) { report(false, name, e.stack || e); }
}

function assert(cond, msg) { if (!cond) throw new Error(msg); }

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function eventually(fn, ms, what) {
  const end = Date.now() + ms;
  let last;
  while (Date.now() < end) {
    last = await fn();
    if (last) return last;
    await sleep(100);
  }
  throw new Error(`not in ${ms} ms: ${what}`);
}

function freePort() {
  return new Promise((r) => { const s = net.createServer().listen(0, '127.0.0.1', () => {
    const p = s.address().port; s.close(() => r(p)); }); });
}

function httpJson(port, method, path, body) {
  return new Promise((res, rej) => {
    const data = body === undefined ? undefined : JSON.stringify(body);
    const req = http.request({ host: '127.0.0.1', port, method, path, timeout: 30000,
      headers: data ? { 'Content-Type': 'application/json' } : {} }, (r) => {
      let text = '';
      r.on('data', (c) => { text += c; });
      r.on('end', () => { let json; try { json = JSON.parse(text); } catch {} res({ status: r.statusCode, json, text }); });
    });
    req.on('timeout', () => req.destroy(new Error(`timeout ${method} ${path}`)));
    req.on('error', rej);
    if (data) req.write(data);
    req.end();
  });
}

// Start a process; resolves once `ready` matches its stdout, with the match.
function start(cmd, args, ready, log, timeoutMs) {
  const child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'] });
  children.add(child);
  let out = '', err = '';
  child.stdout.on('data', (d) => { out += d; });
  child.stderr.on('data', (d) => { err += d; });
  child.exited = new Promise((r) => child.on('exit', (code, signal) => {
    children.delete(child);
    writeFileSync(log, `--- stdout\n${out}\n--- stderr\n${err}`);
    r({ code, signal });
  }));
  child.output = () => out;
  return new Promise((res, rej) => {
    const t = setTimeout(() => rej(new Error(`${cmd} did not start in ${timeoutMs} ms:\n${err.slice(-3000)}`)), timeoutMs);
    const look = () => { const m = out.match(ready); if (m) { clearTimeout(t); res({ child, m }); } };
    child.stdout.on('data', look);
    child.exited.then(({ code }) => { clearTimeout(t); rej(new Error(`${cmd} exited (${code}):\n${err.slice(-3000)}`)); });
  });
}

function lua(v) {
  if (typeof v === 'string') return JSON.stringify(v);
  if (typeof v === 'number' || typeof v === 'boolean') return String(v);
  if (Array.isArray(v)) return '{' + v.map(lua).join(', ') + '}';
  return '{' + Object.entries(v).map(([k, x]) => `[${JSON.stringify(k)}] = ${lua(x)}`).join(', ') + '}';
}

function writeConfig(path, config) {
  writeFileSync(path, Object.entries(config).map(([k, v]) => `${k} = ${lua(v)}`).join('\n') + '\n');
}

// ---- the game's line protocol ----

function connect(port) {
  return new Promise((res, rej) => {
    const sock = net.connect(port, '127.0.0.1');
    const lines = [], waiters = [];
    let buf = '';
    sock.on('data', (d) => {
      buf += d;
      let i;
      while ((i = buf.indexOf('\n')) >= 0) {
        const line = buf.slice(0, i); buf = buf.slice(i + 1);
        waiters.length ? waiters.shift()(line) : lines.push(line);
      }
    });
    sock.on('error', rej);
    sock.on('connect', () => res({
      // one command → its answer: {ok, status, json}
      send(cmd, timeoutMs = 30000) {
        sock.write(cmd + '\n');
        return new Promise((r, j) => {
          const t = setTimeout(() => j(new Error(`no answer to ${cmd}`)), timeoutMs);
          const take = (line) => {
            clearTimeout(t);
            const m = line.match(/^(OK|ERR (\d+)) (.*)$/);
            r({ ok: m && m[1] === 'OK', status: m ? (m[2] ? Number(m[2]) : 200) : 0, json: m && JSON.parse(m[3]), line });
          };
          lines.length ? take(lines.shift()) : waiters.push(take);
        });
      },
      close() { sock.destroy(); },
    }));
  });
}

// ---- the world: sandbox, game config ----

let sandboxPort;

async function startSandbox() {
  const conf = join(WORK, 'sandbox.conf.lua');
  writeConfig(conf, {
    listen: '127.0.0.1:0', scripts: join(ROOT, 'examples', 'sandbox', 'scripts'), lualib: LUALIB,
    database: join(WORK, 'sandbox.db'), watch: false, log_level: 'info',
    app: { mchid: MCHID, appid: APPID, app_appid: APP_APPID, mode: 'certificate', clock_speed: 100, notify_timeout_ms: 5000,
      keys: { platform_key_file: join(KEYS, 'platform_key.pem'), platform_cert_file: join(KEYS, 'platform_cert.pem'),
        merchant_cert_file: join(KEYS, 'merchant_cert.pem'), apiv3_key_file: join(KEYS, 'apiv3_key'),
        public_key_file: join(KEYS, 'pubkey_key.pem'), public_key_id_file: join(KEYS, 'pubkey_id'),
        app_secret_file: join(KEYS, 'app_secret') } },
  });
  const { m } = await start(SANDBOX, ['--config', conf], /listening on http:\/\/127\.0\.0\.1:(\d+)/,
    join(WORK, 'sandbox.log'), 15000);
  sandboxPort = Number(m[1]);
}

async function gameConfig(name, httpPort, { scripts = join(ROOT, 'examples', 'game-server', 'scripts'), app = {} } = {}) {
  const conf = join(WORK, `${name}.conf.lua`);
  const base = `http://127.0.0.1:${sandboxPort}`;
  writeConfig(conf, {
    scripts, database: join(WORK, `${name}.db`),
    watch: false, log_level: 'info',
    wechatpay: { mchid: MCHID, appid: APPID, app_appid: APP_APPID, merchant_cert_file: join(KEYS, 'merchant_cert.pem'),
      private_key_file: join(KEYS, 'merchant_key.pem'), apiv3_key_file: join(KEYS, 'apiv3_key'),
      app_secret_file: join(KEYS, 'app_secret'), platform_cert_files: [join(KEYS, 'platform_cert.pem')],
      download_certificates: false, base_url: base, login_base_url: base, sandbox: true,
      notify_url: `http://127.0.0.1:${httpPort}/wechat/notify/pay` },
    app: { order_ttl_s: 900, ...app },
  });
  return conf;
}

async function startGame(name, { valgrind = false, scripts, app, bin = GAME, extra = [] } = {}) {
  const httpPort = await freePort();
  const conf = await gameConfig(name, httpPort, { scripts, app });
  const args = ['--config', conf, '--port', '0', '--http', String(httpPort), ...extra];
  const vlog = join(WORK, `${name}.valgrind.log`);
  const [cmd, argv] = valgrind
    ? ['valgrind', ['--leak-check=full', '--errors-for-leak-kinds=definite,indirect', '--error-exitcode=99',
        `--log-file=${vlog}`, bin, ...args]]
    : [bin, args];
  const { child, m } = await start(cmd, argv, /game listening on 127\.0\.0\.1:(\d+), http 127\.0\.0\.1:(\d+)/,
    join(WORK, `${name}.log`), valgrind ? 120000 : 15000);
  return { child, port: Number(m[1]), httpPort: Number(m[2]), vlog };
}

// A WeChat user: a login code from the sandbox, then LOGIN on the game.
async function login(c, player, openid) {
  const code = await httpJson(sandboxPort, 'POST', '/sandbox/login-code', { openid });
  assert(code.status === 200, 'sandbox login-code: ' + code.text);
  return c.send(`LOGIN ${player} ${code.json.code}`);
}

// The user pays at the sandbox: the app's user with the PayReq (APP pay, the OpenSDK), or the
// mini game's with wx.requestPayment's parameters.
async function pay(buy, openid) {
  if (buy.json.channel === 'app') {
    const r = await httpJson(sandboxPort, 'POST', '/sandbox/app-pay', { pay_req: buy.json.pay, openid });
    assert(r.status === 200 && r.json.errCode === 0, 'sandbox app-pay: ' + r.text);
    return;
  }
  const prepay = buy.json.pay.package.replace(/^prepay_id=/, '');
  const r = await httpJson(sandboxPort, 'POST', '/sandbox/pay', { prepay_id: prepay, openid, pay_params: buy.json.pay });
  assert(r.status === 200 && /requestPayment:ok/.test(r.text), 'sandbox pay: ' + r.text);
}

async function inventory(c, player) {
  const r = await c.send(`INV ${player}`);
  return r.json;
}

// ---- the specifications ----

// kind: 'libevent' (examples/game-server: paygate on the game's event_base), 'epoll'
// (examples/epoll-game: a plain epoll loop, paygate on its own thread) or 'driven' (the same
// game with --mode driven: no thread, the game's loop runs paygate's).
// 'uv' and 'uv-driven': examples/uv-game, the same on libuv.
const MODE = { libevent: [], epoll: ['--mode', 'thread'], driven: ['--mode', 'driven'],
  uv: ['--mode', 'thread'], 'uv-driven': ['--mode', 'driven'] };

async function mainRun(kind = 'libevent', bin = GAME) {
  const game = await startGame(`game-${kind}`, { bin, extra: MODE[kind] });
  const c = await connect(game.port);
  const OPENID = 'oGamePlayer42xxxxxxxxxxxxxxx';
  const spec = (name, fn) => specOf(`${kind}: ${name}`, fn);
  let buy;

  await spec('a player logs in with a wx.login code (the game calls the exported "login")', async () => {
    const r = await login(c, 42, OPENID);
    assert(r.ok && r.json.openid === OPENID && r.json.player === 42, r.line);
  });
  if (kind === 'driven' || kind === 'uv-driven') await spec('paygate\'s descriptors and timers reach the game\'s loop (ten logins ' +
      'through WeChat in well under the 1 s safety cap each)', async () => {
    const t0 = Date.now();
    for (let i = 0; i < 10; i++) assert((await login(c, 42, OPENID)).ok, 'login');
    const each = (Date.now() - t0) / 10;
    console.log(`# ${kind}: ${each.toFixed(1)} ms per login round trip`);
    assert(each < 300, `${each} ms per login`);
  });
  await spec('BUY answers the order and the OpenSDK\'s PayReq (APP pay, the mobile app\'s appid)', async () => {
    buy = await c.send('BUY 42 7');
    assert(buy.ok && /^GM/.test(buy.json.order_no) && buy.json.amount === 1800 && buy.json.item === 7, buy.line);
    const p = buy.json.pay;
    assert(buy.json.channel === 'app' && p.appid === APP_APPID && p.partnerid === MCHID && p.package === 'Sign=WXPay',
      buy.line);
    assert(/^wx/.test(p.prepayid) && /^\d+$/.test(p.timestamp) && p.noncestr.length === 32 && p.sign, buy.line);
  });
  await spec('the sandbox refuses a PayReq whose sign does not cover it (a changed noncestr): nothing is paid',
    async () => {
      const p = buy.json.pay;
      const other = await httpJson(sandboxPort, 'POST', '/sandbox/app-pay',
        { pay_req: { ...p, noncestr: p.noncestr.replace(/^./, (ch) => (ch === 'A' ? 'B' : 'A')) }, openid: OPENID });
      assert(other.status === 409 && other.json.errCode === -1, other.text);
      const order = await httpJson(sandboxPort, 'GET', `/sandbox/orders/${buy.json.order_no}`);
      assert(order.status === 200 && order.json.trade_state === 'NOTPAY', order.text);
    });
  await spec('the app user pays at the sandbox; the notification (APP appid) reaches paygate and host.deliver gives the item', async () => {
    await pay(buy, OPENID);
    const inv = await eventually(async () => { const i = await inventory(c, 42); return i['7'] === 1 && i; }, 20000,
      'item 7 delivered to player 42');
    assert(JSON.stringify(inv) === '{"7":1}', JSON.stringify(inv));
    const tx = await httpJson(sandboxPort, 'GET', `/sandbox/orders/${buy.json.order_no}`);
    assert(tx.json.appid === APP_APPID && tx.json.trade_state === 'SUCCESS', tx.text);
    assert(game.child.output().includes(`delivered item 7 x1 to player 42 (order ${buy.json.order_no})`), 'delivery line');
  });
  if (kind !== 'libevent') await spec('paygate serves its routes on its own port (paygate_listen)', async () => {
    const health = await httpJson(game.httpPort, 'GET', '/healthz');
    assert(health.status === 200 && health.json.status === 'ok', health.text);
  });
  if (kind === 'libevent') await spec('the game\'s own route and paygate\'s routes share the game\'s HTTP port', async () => {
    const own = await httpJson(game.httpPort, 'GET', '/game/status');
    const health = await httpJson(game.httpPort, 'GET', '/healthz');
    assert(own.status === 200 && own.json.shop_generation === 1, own.text);
    assert(health.status === 200 && health.json.status === 'ok', health.text);
  });
  await spec('a mini-game purchase (BUY ... miniprogram) goes through JSAPI under the mini program\'s appid', async () => {
    const b = await c.send('BUY 42 9 miniprogram');
    assert(b.ok && b.json.channel === 'miniprogram' && b.json.pay.appId === APPID && /^prepay_id=/.test(b.json.pay.package) &&
      b.json.pay.signType === 'RSA', b.line);
    await pay(b, OPENID);
    await eventually(async () => (await inventory(c, 42))['9'] === 1, 20000, 'item 9 delivered to player 42');
    const bad = await c.send('BUY 42 9 pigeon');
    assert(bad.status === 400, bad.line);
  });
  await spec('errors come back with their status: unknown item, unknown player, bad command', async () => {
    const item = await c.send('BUY 42 999');
    const player = await c.send('BUY 77 7');
    const bad = await c.send('DANCE');
    assert(item.status === 404 && item.json.error === 'unknown_item', item.line);
    assert(player.status === 404 && player.json.error === 'unknown_player', player.line);
    assert(bad.status === 400, bad.line);
  });
  await spec('a price event from the game (paygate_emit) changes the next order', async () => {
    const r = await c.send('PRICE 7 2500');
    assert(r.ok, r.line);
    await eventually(async () => (await c.send('BUY 42 7')).json.amount === 2500, 10000, 'amount 2500');
  });
  await spec('RELOAD makes a new generation; buying and delivering still work, the inventory is kept', async () => {
    const r = await c.send('RELOAD');
    assert(r.ok && r.json.generation === 2, r.line);
    const b = await c.send('BUY 42 1');
    assert(b.ok && b.json.amount === 600, b.line);
    await pay(b, OPENID);
    await eventually(async () => { const i = await inventory(c, 42); return i['1'] === 1 && i['7'] === 1 && i['9'] === 1; }, 20000,
      'item 1 delivered after the reload');
  });
  await spec('QUIT shuts the shop down gracefully and the game exits 0', async () => {
    const r = await c.send('QUIT');
    assert(r.ok, r.line);
    const { code } = await Promise.race([game.child.exited, sleep(15000).then(() => ({ code: 'timeout' }))]);
    assert(code === 0, 'exit code ' + code);
  });
  c.close();
}

// Routes on the game's HTTP port that look into the shop's state, and one that makes a waiting
// job due now, as if it had already failed b.attempts times (days of retrying, without the days).
const TEST_HOOKS = `
local app = require "paygate"
app.get("/test/orders/{no}", function(req)
  return 200, { order = db.one("SELECT * FROM orders WHERE order_no = ?", req.params.no) }
end)
app.get("/test/products/{id}", function(req)
  return 200, db.one("SELECT * FROM products WHERE id = ?", math.tointeger(tonumber(req.params.id)))
end)
app.get("/test/notification_log/{no}", function(req)
  return 200, { log = db.query("SELECT * FROM notification_log WHERE order_no = ? ORDER BY id", req.params.no) }
end)
app.get("/test/jobs/{key}", function(req)
  return 200, { job = db.one("SELECT * FROM _paygate_jobs WHERE key = ?", req.params.key) }
end)
app.get("/test/order_events/{no}", function(req)
  return 200, { events = db.query("SELECT event, key, status FROM order_events WHERE order_no = ? AND event IN ('paid', 'closed', 'refunded', 'refund_failed') ORDER BY id", req.params.no) }
end)
app.get("/test/migrations", function(req)
  return 200, { migrations = db.query("SELECT version, name FROM _paygate_migrations ORDER BY version") }
end)
app.post("/test/jobs/{key}/due", function(req)
  local b = app.read_json(req)
  db.exec("UPDATE _paygate_jobs SET run_at = ?, attempts = coalesce(?, attempts) WHERE key = ? AND state = 'queued'",
          clock.now(), b.attempts, req.params.key)
  jobs.schedule("test_wake", {}, { key = "test_wake:" .. secure.random_id(8) })   -- the scheduler looks again now
  return 200, { job = db.one("SELECT * FROM _paygate_jobs WHERE key = ?", req.params.key) }
end)
app.job("test_wake", function() end)
`;

// The game's scripts as shipped, plus the test hooks, in a copy.
function scriptsWithHooks() {
  const dir = join(WORK, 'game-scripts-hooks');
  cpSync(join(ROOT, 'examples', 'game-server', 'scripts'), dir, { recursive: true });
  writeFileSync(join(dir, 'test_hooks.lua'), TEST_HOOKS);
  writeFileSync(join(dir, 'init.lua'), readFileSync(join(dir, 'init.lua'), 'utf8') + 'require "test_hooks"\n');
  return dir;
}

const faults = (spec) => httpJson(sandboxPort, 'POST', '/sandbox/faults', spec);

// The money steps the game once copied (and that drifted) now come from lualib/shop: they must
// behave as the shop's do. The shop schedules its expiry with max_attempts 1000 ("until WeChat
// answers") and reconciles a PAYING order after reconcile_after_s.
async function libraryRun() {
  const game = await startGame('game-lib', { scripts: scriptsWithHooks(), app: { reconcile_after_s: 1 } });
  const c = await connect(game.port);
  const hook = (method, path, body) => httpJson(game.httpPort, method, path, body);
  const job = async (key) => (await hook('GET', `/test/jobs/${key}`)).json.job ?? null;

  await spec('paying in the game server schedules reconcile_order: a payment whose notification never comes is ' +
             'found at WeChat and delivered', async () => {
    const openid = 'oGameReconcile51xxxxxxxxxxxx';
    assert((await login(c, 51, openid)).ok, 'login');
    const b = await c.send('BUY 51 1');
    assert(b.ok, b.line);
    const no = b.json.order_no;
    const r = await job(`reconcile:${no}`);
    assert(r && r.name === 'reconcile_order' && r.state === 'queued', 'reconcile_order scheduled: ' + JSON.stringify(r));
    await faults({ notify_drop: { count: 1, match: no } });
    await pay(b, openid);
    await eventually(async () => (await inventory(c, 51))['1'] === 1, 15000, 'item 1 delivered to player 51');
    const log = (await hook('GET', `/test/notification_log/${no}`)).json.log;
    assert(log.some((l) => l.kind === 'query' && l.outcome === 'paid'), 'found by asking WeChat: ' + JSON.stringify(log));
    assert(!log.some((l) => l.kind === 'pay'), 'no notification came: ' + JSON.stringify(log));
    assert((await hook('GET', `/test/orders/${no}`)).json.order.status === 'PAID', 'PAID');
  });

  await spec('the game declares lualib/shop\'s later table changes (shop.schema.declare{ 4, 5, 6, 7 }): its paid orders ' +
             'record their lifecycle events like the shop\'s', async () => {
    const m = (await hook('GET', '/test/migrations')).json.migrations;
    assert(m.length === 7 && m[3].version === 4 && /^lualib\/shop 2:/.test(m[3].name) &&
           m[4].version === 5 && /^lualib\/shop 3:/.test(m[4].name) && m[5].version === 6 &&
           /^lualib\/shop 4:/.test(m[5].name) && m[6].version === 7 && /^lualib\/shop 5:/.test(m[6].name),
           'migrations: ' + JSON.stringify(m));
    const openid = 'oGameEvents53xxxxxxxxxxxxxxx';
    assert((await login(c, 53, openid)).ok, 'login');
    const b = await c.send('BUY 53 7');
    assert(b.ok, b.line);
    await pay(b, openid);
    await eventually(async () => (await inventory(c, 53))['7'] === 1, 15000, 'item 7 delivered to player 53');
    const ev = await eventually(async () => {
      const e = (await hook('GET', `/test/order_events/${b.json.order_no}`)).json.events;
      return e.length === 1 && e[0].status === 'DONE' && e;
    }, 8000, 'the paid event');
    assert(ev[0].event === 'paid' && ev[0].key === `paid:${b.json.order_no}`, JSON.stringify(ev));
  });

  await spec('a game-server order that WeChat never confirms keeps trying to close for days, like the shop\'s', async () => {
    const openid = 'oGameExpiry52xxxxxxxxxxxxxxx';
    assert((await login(c, 52, openid)).ok, 'login');
    const before = (await hook('GET', '/test/products/9')).json;
    const b = await c.send('BUY 52 9');
    assert(b.ok, b.line);
    const no = b.json.order_no, key = `expire:${no}`;
    const scheduled = await job(key);
    assert(scheduled && scheduled.max_attempts === 1000, 'expiry scheduled like the shop\'s: ' + JSON.stringify(scheduled));
    await faults({ system_error: { count: 1000, match: `${no}/close` } });          // every close fails
    try {
      await hook('POST', `/test/jobs/${key}/due`, {});                              // the order expires now
      await eventually(async () => { const x = await job(key); return x.attempts === 1 && x.state === 'queued'; }, 8000,
        'the first close attempt');
      // 40 failed closes: with the backoff capped at an hour, about a day and a half of WeChat failing
      await hook('POST', `/test/jobs/${key}/due`, { attempts: 40 });
      const j = await eventually(async () => { const x = await job(key); return x.attempts === 41 && x.state !== 'running' && x; },
        8000, 'the 41st close attempt');
      assert(j.state === 'queued', 'still trying, not given up: ' + JSON.stringify(j));
      assert((await hook('GET', `/test/orders/${no}`)).json.order.status === 'PAYING', 'still PAYING');
      const held = (await hook('GET', '/test/products/9')).json;
      assert(held.reserved === before.reserved + 1, 'the item stays reserved meanwhile: ' + JSON.stringify(held));
    } finally {
      await faults({ system_error: false });
    }
    await hook('POST', `/test/jobs/${key}/due`, {});                                // WeChat answers again
    await eventually(async () => (await hook('GET', `/test/orders/${no}`)).json.order.status === 'CLOSED', 8000, 'CLOSED');
    await eventually(async () => (await job(key)) === null, 5000, 'the expiry job done');
    const after = (await hook('GET', '/test/products/9')).json;
    assert(JSON.stringify(after) === JSON.stringify(before), 'the item is back on sale: ' + JSON.stringify([before, after]));
  });

  assert((await c.send('QUIT')).ok, 'QUIT');
  c.close();
  const { code } = await Promise.race([game.child.exited, sleep(15000).then(() => ({ code: 'timeout' }))]);
  assert(code === 0, 'the game exited ' + code);
}

async function valgrindRun(kind = 'libevent', bin = GAME) {
  const OPENID = 'oGamePlayer7xxxxxxxxxxxxxxxx';
  let game;
  await spec(`${kind} under valgrind: create → login → buy → pay → delivery → reload → quit`, async () => {
    game = await startGame(`game-${kind}-valgrind`, { valgrind: true, bin, extra: MODE[kind] });
    const c = await connect(game.port);
    const l = await login(c, 7, OPENID);
    assert(l.ok, l.line);
    const b = await c.send('BUY 7 9', 60000);
    assert(b.ok, b.line);
    await pay(b, OPENID);
    await eventually(async () => (await inventory(c, 7))['9'] === 1, 90000, 'delivery under valgrind');
    const r = await c.send('RELOAD', 60000);
    assert(r.ok && r.json.generation === 2, r.line);
    const q = await c.send('QUIT');
    assert(q.ok, q.line);
    c.close();
    const { code } = await Promise.race([game.child.exited, sleep(60000).then(() => ({ code: 'timeout' }))]);
    assert(code === 0, `exit code ${code} (99: valgrind found errors or leaks; see ${game.vlog})`);
  });
  await spec(`${kind} under valgrind: no leaks (definitely and indirectly lost: 0) and no memory errors`, async () => {
    const log = readFileSync(game.vlog, 'utf8');
    const summary = (log.match(/ERROR SUMMARY: .*/) || ['(none)'])[0];
    const definite = (log.match(/definitely lost: .*/) || ['definitely lost: 0 bytes in 0 blocks'])[0];
    const indirect = (log.match(/indirectly lost: .*/) || ['indirectly lost: 0 bytes in 0 blocks'])[0];
    console.log(`# valgrind (${kind}): ${summary}; ${definite}; ${indirect}`);
    assert(/ERROR SUMMARY: 0 errors/.test(summary), summary);
    assert(/ 0 bytes in 0 blocks/.test(definite) && / 0 bytes in 0 blocks/.test(indirect), definite + '; ' + indirect);
  });
}

// The epoll game and libpaygate built with -fsanitize=thread: the game's thread and paygate's
// share only the two queues; ThreadSanitizer must find no race across a whole purchase.
async function tsanRun(bin, kind = 'epoll') {
  const OPENID = 'oGamePlayer8xxxxxxxxxxxxxxxx';
  const tlog = join(WORK, `tsan-${kind}`);
  process.env.TSAN_OPTIONS = `log_path=${tlog} exitcode=66 halt_on_error=0`;
  await spec(`${kind} under ThreadSanitizer: create → login → buy → pay → delivery → reload → quit, no report`, async () => {
    const game = await startGame(`game-${kind}-tsan`, { bin, extra: MODE[kind] });
    const c = await connect(game.port);
    assert((await login(c, 8, OPENID)).ok, 'login');
    const b = await c.send('BUY 8 7', 60000);
    assert(b.ok, b.line);
    await pay(b, OPENID);
    await eventually(async () => (await inventory(c, 8))['7'] === 1, 60000, 'delivery under TSan');
    const r = await c.send('RELOAD', 60000);
    assert(r.ok && r.json.generation === 2, r.line);
    assert((await c.send('QUIT')).ok, 'QUIT');
    c.close();
    const { code } = await Promise.race([game.child.exited, sleep(60000).then(() => ({ code: 'timeout' }))]);
    let reports = '';
    try {
      reports = execSync(`cat ${tlog}.* 2>/dev/null || true`).toString();
    } catch {}
    assert(code === 0 && !/ThreadSanitizer/.test(reports), `exit ${code} (66: TSan reported)\n${reports.slice(0, 3000)}`);
  });
}

async function main() {
  mkdirSync(WORK, { recursive: true });
  const watchdog = setTimeout(() => { console.log('not ok - the game suite finished in time'); stopAll(); process.exit(1); },
    230000);
  try {
    await startSandbox();
    report(true, 'the WeChat Pay sandbox starts (paygate-sandbox, built in the tree)');
    await mainRun('libevent', GAME);
    if (GAME_EPOLL) await mainRun('epoll', GAME_EPOLL);
    if (GAME_EPOLL) await mainRun('driven', GAME_EPOLL);
    if (GAME_UV) await mainRun('uv', GAME_UV);
    if (GAME_UV) await mainRun('uv-driven', GAME_UV);
    await libraryRun();
    if (process.env.SKIP_VALGRIND !== '1') {
      await valgrindRun('libevent', GAME);
      if (GAME_EPOLL) await valgrindRun('epoll', GAME_EPOLL);
      if (GAME_EPOLL) await valgrindRun('driven', GAME_EPOLL);
      if (GAME_UV) await valgrindRun('uv', GAME_UV);
    }
    if (GAME_TSAN) await tsanRun(GAME_TSAN, 'epoll');
    if (GAME_TSAN_UV) await tsanRun(GAME_TSAN_UV, 'uv');
  } catch (e) {
    report(false, 'the game suite ran to its end', e.stack || e);
  } finally {
    clearTimeout(watchdog);
    await stopAll();
  }
  console.log(`${passed} passed, ${failed} failed`);
  process.exit(failed ? 1 : 0);
}

async function stopAll() {
  for (const child of children) {
    try { process.kill(child.pid, 'SIGTERM'); } catch {}
  }
  await Promise.race([Promise.all([...children].map((c) => c.exited)), sleep(5000)]);
  for (const child of children) {
    try { process.kill(child.pid, 'SIGKILL'); } catch {}
  }
}

main();

// shopenv.mjs — the shop's world for tests: keys, the WeChat Pay sandbox and shop gateways,
// all real paygate processes on 127.0.0.1, plus a few test-only routes into the shop's state.
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, cpSync, writeFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import net from 'node:net';
import assert from 'node:assert/strict';
import { ROOT, SANDBOX_BIN, startGateway, sleep } from './harness.mjs';

export const MCHID = '1900007291';
export const APPID = 'wxd678efh567hg6787';
export const APP_APPID = 'wx1a2b3c4d5e6f7a8b';   // the mobile app (APP pay)

export function freePort() {
  return new Promise((resolve) => {
    const s = net.createServer();
    s.listen(0, '127.0.0.1', () => { const p = s.address().port; s.close(() => resolve(p)); });
  });
}

/**
 * start() again until the port it listens on is free: after a kill -9 the old process (or the
 * workers it supervised) may hold the port for a moment.
 */
export async function restartOnPort(start, timeoutMs = 10000) {
  const end = Date.now() + timeoutMs;
  for (;;) {
    try {
      return await start();
    } catch (e) {
      if (Date.now() > end || !/cannot listen/.test(e.message)) throw e;
      await sleep(50);
    }
  }
}

// Routes that reach into the state the way an operator (or a crash) could, to stage rare cases.
const TEST_HOOKS = `
local app = require "paygate"
local orders = require "shop.orders"
app.post("/test/force-close/{no}", function(req)
  local ok = db.tx(function() return orders.close(orders.load(req.params.no), "test") end)
  return 200, { closed = ok }
end)
app.get("/test/products/{id}", function(req)
  return 200, db.one("SELECT * FROM products WHERE id = ?", math.tointeger(tonumber(req.params.id)))
end)
app.get("/test/fulfillments/{no}", function(req)
  return 200, db.one("SELECT * FROM fulfillments WHERE order_no = ?", req.params.no) or json.null
end)
app.get("/test/refunds/{no}", function(req)
  return 200, { refunds = db.query("SELECT * FROM refunds WHERE order_no = ? ORDER BY created_at", req.params.no) }
end)
app.get("/test/notification_log/{no}", function(req)
  return 200, { log = db.query("SELECT * FROM notification_log WHERE order_no = ? ORDER BY id", req.params.no) }
end)
app.get("/test/order_events/{no}", function(req)
  return 200, { events = db.query("SELECT * FROM order_events WHERE order_no = ? ORDER BY id", req.params.no) }
end)
app.get("/test/refund_items/{no}", function(req)
  return 200, { items = db.query([[SELECT ri.* FROM refund_items ri JOIN refunds r ON r.out_refund_no = ri.out_refund_no
                                   WHERE r.order_no = ? ORDER BY r.created_at, ri.product_id]], req.params.no) }
end)
app.get("/test/coupon_redemptions/{no}", function(req)
  return 200, db.one("SELECT * FROM coupon_redemptions WHERE order_no = ?", req.params.no) or json.null
end)
app.get("/test/refused", function(req)
  return 200, { log = db.query("SELECT * FROM notification_log WHERE outcome = 'refused' ORDER BY id") }
end)
app.get("/test/jobs/{key}", function(req)
  return 200, { job = db.one("SELECT * FROM _paygate_jobs WHERE key = ?", req.params.key) }
end)
-- Make a waiting job due now, optionally as if it had already failed b.attempts times (days of
-- retrying, without the days); scheduling a no-op job makes the scheduler look again at once.
app.post("/test/jobs/{key}/due", function(req)
  local b = app.read_json(req)
  db.exec("UPDATE _paygate_jobs SET run_at = ?, attempts = coalesce(?, attempts) WHERE key = ? AND state = 'queued'",
          clock.now(), b.attempts, req.params.key)
  jobs.schedule("test_wake", {}, { key = "test_wake:" .. secure.random_id(8) })
  return 200, { job = db.one("SELECT * FROM _paygate_jobs WHERE key = ?", req.params.key) }
end)
app.job("test_wake", function() end)
`;

/**
 * Keys (made by the sandbox's keys.sh), the shop scripts plus the test hooks, a running sandbox.
 * `sandboxApp` adds to the sandbox's app settings; `keepSandbox` gives the sandbox a directory
 * and port of its own, kept across world.restartSandbox() (its database survives a kill -9).
 * `backend` ('sqlite' or 'postgresql') is where the shop gateways keep their data; the sandbox
 * (WeChat's side) always stays on SQLite.
 */
export async function startWorld({ sandboxApp = {}, keepSandbox = false, backend = 'sqlite' } = {}) {
  const keys = mkdtempSync(join(tmpdir(), 'paygate-shop-keys-'));
  execFileSync(join(ROOT, 'examples/sandbox/keys.sh'), [keys]);
  const k = (name) => join(keys, name);
  const scripts = mkdtempSync(join(tmpdir(), 'paygate-shop-scripts-'));
  cpSync(join(ROOT, 'scripts'), scripts, { recursive: true });
  writeFileSync(join(scripts, 'test_hooks.lua'), TEST_HOOKS);
  writeFileSync(join(scripts, 'init.lua'), readFileSync(join(ROOT, 'scripts/init.lua'), 'utf8') + 'require "test_hooks"\n');
  const sandboxDir = keepSandbox ? mkdtempSync(join(tmpdir(), 'paygate-sandbox-')) : undefined;
  const sandboxConfig = {
    scripts: join(ROOT, 'examples/sandbox/scripts'), watch: false, log_level: 'info',
    // The gateways' calls and the tests' own all come from 127.0.0.1: no per-address cap.
    limits: { max_connections_per_client: 0 },
    ...(keepSandbox ? { listen: `127.0.0.1:${await freePort()}` } : {}),
    app: {
      mchid: MCHID, appid: APPID, app_appid: APP_APPID, mode: 'certificate', clock_speed: 1000, notify_timeout_ms: 5000,
      refund_settle_s: 1, latency_ms: 0,
      keys: {
        platform_key_file: k('platform_key.pem'), platform_cert_file: k('platform_cert.pem'),
        merchant_cert_file: k('merchant_cert.pem'), apiv3_key_file: k('apiv3_key'),
        public_key_file: k('pubkey_key.pem'), public_key_id_file: k('pubkey_id'), app_secret_file: k('app_secret'),
      },
      ...sandboxApp,
    },
  };
  const sandbox = await startGateway({ bin: SANDBOX_BIN, dir: sandboxDir, config: sandboxConfig });
  const copies = [];
  const world = {
    keys, k, sandbox, sandboxDir, gateways: [], backend,
    /**
     * A shop gateway wired to the sandbox; `app` adds to its app settings, `files` replaces
     * scripts of the shop (e.g. { 'stock.lua': ... } for another stock rule) in its own copy,
     * `config` adds to (or replaces) its other settings (e.g. { watch: true }); `bin`, `env`,
     * `dir` (the gateway's directory, kept) and `expectExit` go to startGateway; `port` starts it
     * on a given port (a restart where WeChat's notifications are addressed); `wechatpay` adds
     * to (or replaces) its wechatpay settings (e.g. base_url and sandbox for a TLS front);
     * `backend` overrides the world's.
     */
    async startShop(app = {}, { files, config = {}, wechatpay = {}, bin, env, dir: home, expectExit, port: fixedPort,
      backend: shopBackend = backend } = {}) {
      const port = fixedPort || await freePort();
      const sandbox = this.sandbox;
      let dir = scripts;
      if (files) {
        dir = mkdtempSync(join(tmpdir(), 'paygate-shop-scripts-'));
        cpSync(scripts, dir, { recursive: true });
        for (const [name, text] of Object.entries(files)) writeFileSync(join(dir, name), text);
        copies.push(dir);
      }
      const gw = await startGateway({
        bin, env, dir: home, expectExit, backend: shopBackend,
        config: {
          listen: `127.0.0.1:${port}`, scripts: dir, watch: false, log_level: 'info', fetch: { timeout_ms: 2000 },
          wechatpay: {
            mchid: MCHID, appid: APPID, app_appid: APP_APPID, merchant_serial: readFileSync(k('merchant_serial'), 'utf8').trim(),
            private_key_file: k('merchant_key.pem'), apiv3_key_file: k('apiv3_key'), app_secret_file: k('app_secret'),
            platform_cert_files: [k('platform_cert.pem')], download_certificates: false,
            base_url: `http://127.0.0.1:${sandbox.port}`, login_base_url: `http://127.0.0.1:${sandbox.port}`,
            sandbox: true,
            notify_url: `http://127.0.0.1:${port}/wechat/notify/pay`,
            refund_notify_url: `http://127.0.0.1:${port}/wechat/notify/refund`,
            ...wechatpay,
          },
          app: { test_mode: true, status_query_after_s: 0, status_query_every_s: 0, min_pay_window_s: 0, ...app },
          ...config,
        },
      });
      this.gateways.push(gw);
      return gw;
    },
    /** A mini-program user of gateway gw: a wx.login code from the sandbox, then POST /api/login. */
    async login(gw, openid = 'o' + Math.random().toString(16).slice(2) + Date.now().toString(16)) {
      const code = (await this.sandbox.post('/sandbox/login-code', { openid })).json.code;
      const r = await gw.post('/api/login', { code });
      assert.equal(r.status, 200, r.body);
      return { openid, auth: { Authorization: 'Bearer ' + r.json.token } };
    },
    /** The user confirms in WeChat; the sandbox checks our paySign as the WeChat client would. */
    async userPays(user, params, result = 'SUCCESS') {
      const prepay_id = params.package.replace('prepay_id=', '');
      const r = await this.sandbox.post('/sandbox/pay', { prepay_id, openid: user.openid, result, pay_params: params });
      assert.equal(r.status, 200, r.body);
      return r.json;
    },
    /** kill -9 the sandbox (keepSandbox), then start it again on its database and port. */
    async restartSandbox({ downMs = 0 } = {}) {
      await this.sandbox.kill();
      await sleep(downMs);
      this.sandbox = await restartOnPort(() => startGateway({ bin: SANDBOX_BIN, dir: sandboxDir, config: sandboxConfig }));
      return this.sandbox;
    },
    async stop() {
      for (const g of [...this.gateways, this.sandbox]) await g.stop();
      if (sandboxDir) rmSync(sandboxDir, { recursive: true, force: true });
      rmSync(keys, { recursive: true, force: true });
      for (const d of [scripts, ...copies]) rmSync(d, { recursive: true, force: true });
    },
  };
  return world;
}

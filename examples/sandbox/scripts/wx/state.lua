-- wx/state.lua — the sandbox's tables, settings and clocks.
--
-- Two clocks:
--   * real time (clock.now) signs messages: WeChat Pay's 5-minute skew rule is about real time;
--   * business time (state.now_ms) = real time + an offset that POST /sandbox/clock can advance,
--     so a test can let an order's time_expire, a prepay_id's 2 hours or a login code's
--     5 minutes pass without waiting.
-- clock_speed (config) divides the notification retry schedule: at 1000, "retry in 3 min"
-- happens after 180 ms.

local app = require "paygate"

local state = {}

app.migration(1, "sandbox tables", [[
  CREATE TABLE orders(
    out_trade_no TEXT PRIMARY KEY, mchid TEXT NOT NULL, appid TEXT NOT NULL,
    description TEXT NOT NULL, attach TEXT, notify_url TEXT NOT NULL,
    total INTEGER NOT NULL, currency TEXT NOT NULL, openid TEXT NOT NULL,
    time_expire TEXT, expire_at INTEGER NOT NULL, fingerprint TEXT NOT NULL,
    trade_state TEXT NOT NULL, transaction_id TEXT UNIQUE, success_time TEXT,
    refunded INTEGER NOT NULL DEFAULT 0, created_at INTEGER NOT NULL, updated_at INTEGER NOT NULL);
  CREATE TABLE prepays(
    prepay_id TEXT PRIMARY KEY, out_trade_no TEXT NOT NULL, expires_at INTEGER NOT NULL);
  CREATE INDEX prepays_order ON prepays(out_trade_no);
  CREATE TABLE refunds(
    out_refund_no TEXT PRIMARY KEY, refund_id TEXT UNIQUE NOT NULL, out_trade_no TEXT NOT NULL,
    transaction_id TEXT NOT NULL, refund INTEGER NOT NULL, total INTEGER NOT NULL, reason TEXT,
    notify_url TEXT, status TEXT NOT NULL, fingerprint TEXT NOT NULL,
    create_time TEXT NOT NULL, success_time TEXT, created_at INTEGER NOT NULL);
  CREATE TABLE login_codes(
    code TEXT PRIMARY KEY, openid TEXT NOT NULL, expires_at INTEGER NOT NULL, used_at INTEGER);
  CREATE TABLE notifications(
    id TEXT PRIMARY KEY, event_type TEXT NOT NULL, ref TEXT NOT NULL, url TEXT NOT NULL,
    body TEXT NOT NULL, state TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0,
    created_at INTEGER NOT NULL, done_at INTEGER);
  CREATE TABLE deliveries(
    id INTEGER PRIMARY KEY, notification_id TEXT NOT NULL, attempt INTEGER NOT NULL,
    duplicate INTEGER NOT NULL DEFAULT 0, at INTEGER NOT NULL, ms INTEGER NOT NULL,
    status INTEGER, error TEXT, serial TEXT, signature TEXT NOT NULL);
  CREATE INDEX deliveries_by_notification ON deliveries(notification_id, id);
  CREATE TABLE faults(name TEXT PRIMARY KEY, spec TEXT NOT NULL);
  CREATE TABLE kv(key TEXT PRIMARY KEY, value TEXT NOT NULL);
]])

--- A setting from the config's app table, or the default.
function state.setting(name, default)
  local v = config[name]
  if v == nil then return default end
  return v
end

state.mchid = state.setting("mchid", "1900007291")
state.appid = state.setting("appid", "wxd678efh567hg6787")
state.app_appid = state.setting("app_appid", "wx1a2b3c4d5e6f7a8b")   -- the mobile app (APP pay)
state.mode = state.setting("mode", "certificate")   -- "certificate" | "public_key" | "mixed"
assert(state.mode == "certificate" or state.mode == "public_key" or state.mode == "mixed",
  "config app.mode must be certificate, public_key or mixed")

local function kv_get(key)
  local row = db.one("SELECT value FROM kv WHERE key = ?", key)
  return row and row.value
end

local function kv_set(key, value)
  db.exec("INSERT INTO kv(key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
    key, tostring(value))
end

--- Business time in ms (real time plus what /sandbox/clock advanced).
function state.now_ms()
  return clock.now() + (tonumber(kv_get("clock_offset_ms")) or 0)
end

function state.now_s() return state.now_ms() // 1000 end

--- Move business time forward by ms (never back).
function state.advance(ms)
  local offset = (tonumber(kv_get("clock_offset_ms")) or 0) + ms
  kv_set("clock_offset_ms", math.tointeger(offset))
  return offset
end

--- A delay of the WeChat schedule in real ms, divided by clock_speed.
function state.scaled(seconds)
  local speed = state.setting("clock_speed", 1)
  return math.max(1, math.floor(seconds * 1000 / speed))
end

return state

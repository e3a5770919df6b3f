-- wx/notify.lua — payment and refund notifications: WeChat Pay's envelope, signature and retry schedule.
--
-- Each delivery attempt is a durable job (key "wx_notify:<id>:<attempt>"), so a sandbox that
-- stops mid-schedule carries on where it was when it starts again. An attempt succeeds only on
-- HTTP 200 or 204 within notify_timeout_ms (5 s); otherwise the next one is scheduled after
-- WeChat Pay's interval, divided by clock_speed. Every attempt is logged in `deliveries`.

local app = require "paygate"
local sandbox = require "wechatpay.sandbox"
local state = require "wx.state"
local protocol = require "wx.protocol"
local faults = require "wx.faults"

local notify = {}

-- Seconds to wait after failed attempt n (15 retries; 24 h 4 min in all).
notify.SCHEDULE = { 15, 15, 30, 180, 600, 1200, 1800, 1800, 1800, 3600, 10800, 10800, 10800, 21600, 21600 }

local SUMMARY = {
  ["TRANSACTION.SUCCESS"] = "支付成功",
  ["REFUND.SUCCESS"] = "退款成功",
  ["REFUND.ABNORMAL"] = "退款异常",
  ["REFUND.CLOSED"] = "退款关闭",
}

local function schedule_attempt(id, attempt, delay_ms, extra)
  local payload = { id = id, attempt = attempt }
  for k, v in pairs(extra or {}) do payload[k] = v end
  local key = "wx_notify:" .. id .. ":" .. (payload.duplicate and ("dup" .. attempt) or attempt)
  jobs.schedule("wx_notify", payload, { delay_ms = delay_ms, key = key, max_attempts = 3 })
end

--- Create a notification (call inside the transaction that changed the order or refund).
--- resource: the plaintext object; original_type: "transaction" | "refund" (also the AAD).
--- Returns the notification id, or nil when the notify_drop fault swallowed it.
function notify.create(event_type, original_type, ref, url, resource)
  local id = sandbox.uuid()
  local encrypted = protocol.keys:encrypt_resource(json.encode(resource), original_type)
  encrypted.original_type = original_type
  local body = json.encode({
    id = id, create_time = sandbox.beijing_time(state.now_s()), resource_type = "encrypt-resource",
    event_type = event_type, summary = SUMMARY[event_type] or event_type, resource = encrypted,
  })
  local dropped = faults.fire("notify_drop", ref) ~= nil
  db.exec([[INSERT INTO notifications(id, event_type, ref, url, body, state, created_at)
            VALUES (?, ?, ?, ?, ?, ?, ?)]], id, event_type, ref, url, body,
    dropped and "dropped" or "pending", clock.now())
  if dropped then
    log.info("notification dropped by the notify_drop fault", { id = id, ref = ref })
    return nil
  end
  local delay = 0
  local d = faults.fire("notify_delay", ref)
  if d then delay = delay + (d.ms or 1000) end
  local r = faults.fire("notify_reorder", ref)
  if r then delay = delay + r.remaining * (r.ms or 500) end
  local dup = faults.fire("notify_duplicate", ref)
  schedule_attempt(id, 1, delay, { dup_later = dup and not dup.concurrent or nil })
  if dup and dup.concurrent then schedule_attempt(id, 1, delay, { duplicate = true }) end
  return id
end

--- Sign notifications with the public-key mode key? (mixed mode ramps by notify_public_key_rate)
local function notification_public_key()
  if state.mode == "public_key" then return true end
  if state.mode == "certificate" or not protocol.info.public_key_id then return false end
  return math.random() < state.setting("notify_public_key_rate", 0.5)
end

local function deliver(n)
  local sig = {
    public_key = notification_public_key(),
    probe = faults.fire("notify_probe", n.ref) ~= nil,
    bad = faults.fire("notify_bad_signature", n.ref) ~= nil,
  }
  local headers = protocol.keys:sign_response(n.body, sig)
  headers["Content-Type"] = "application/json"
  headers["User-Agent"] = "Mozilla/4.0"
  headers["Accept"] = "*/*"
  headers["Pragma"] = "no-cache"
  local started = clock.now()
  local res, err = http.request{
    method = "POST", url = n.url, headers = headers, body = n.body,
    timeout_ms = state.setting("notify_timeout_ms", 5000),
  }
  local ok = res ~= nil and (res.status == 200 or res.status == 204)
  return {
    ok = ok, at = started, ms = clock.now() - started, status = res and res.status,
    error = err or (not ok and ("answered HTTP " .. res.status)) or nil,
    serial = headers["Wechatpay-Serial"],
    signature = sig.probe and "probe" or sig.bad and "bad" or "good",
  }
end

local function record(p, d)
  db.exec([[INSERT INTO deliveries(notification_id, attempt, duplicate, at, ms, status, error, serial, signature)
            VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)]], p.id, p.attempt, p.duplicate and 1 or 0, d.at, d.ms,
    d.status, d.error, d.serial, d.signature)
end

app.job("wx_notify", function(p)
  local n = db.one("SELECT * FROM notifications WHERE id = ?", p.id)
  if not n then return end
  -- a re-run after a crash: this attempt's outcome is already recorded
  if not p.duplicate and (n.state ~= "pending" or n.attempts >= p.attempt) then return end
  local d = deliver(n)
  db.tx(function()
    record(p, d)
    if p.duplicate then return end
    if d.ok then
      db.exec("UPDATE notifications SET state = 'delivered', attempts = ?, done_at = ? WHERE id = ?",
        p.attempt, clock.now(), p.id)
      if p.dup_later then schedule_attempt(p.id, p.attempt, 1000, { duplicate = true }) end
    elseif p.attempt > #notify.SCHEDULE then
      db.exec("UPDATE notifications SET state = 'failed', attempts = ?, done_at = ? WHERE id = ?",
        p.attempt, clock.now(), p.id)
    else
      db.exec("UPDATE notifications SET attempts = ? WHERE id = ?", p.attempt, p.id)
      schedule_attempt(p.id, p.attempt + 1, state.scaled(notify.SCHEDULE[p.attempt]), { dup_later = p.dup_later })
    end
  end)
end)

--- Notifications (newest first) with their delivery attempts; filter by ref (out_trade_no / out_refund_no).
function notify.list(ref)
  local rows
  if ref then
    rows = db.query("SELECT * FROM notifications WHERE ref = ? ORDER BY created_at DESC, id", ref)
  else
    rows = db.query("SELECT * FROM notifications ORDER BY created_at DESC, id LIMIT 200")
  end
  for _, n in ipairs(rows) do
    n.deliveries = json.array(db.query(
      "SELECT attempt, duplicate, at, ms, status, error, serial, signature FROM deliveries WHERE notification_id = ? ORDER BY id",
      n.id))
  end
  return json.array(rows)
end

return notify

-- wx/faults.lua — failures on demand, so a merchant can be tested against WeChat Pay's bad days.
--
-- A fault is {rate = 0..1, count = N, ms = M, match = "text", ...}: it fires for the next
-- `count` calls (then stops), otherwise with probability `rate`; with `match`, only for calls
-- whose path (or notification's out_trade_no) contains that text. Switches set through POST /sandbox/faults
-- are stored (they survive a restart and count down exactly); the config's app.faults table
-- gives rate-based defaults for switches never set.
--
--   API calls (/v3/...):
--     latency        {ms}          every call waits ms first, while set (like app.latency_ms)
--     slow           {ms}          wait ms, then handle the call
--     timeout        {ms}          handle the call (its effect happens), then wait ms before answering
--     system_error   {status}      answer 500 SYSTEM_ERROR (or status 502/503) without handling
--     bad_signature  {}            a 2xx whose Wechatpay-Signature does not verify
--     probe          {}            a 2xx signed WECHATPAY/SIGNTEST/… (WeChat Pay's signature probe)
--     rate_limited   {}            answer 429 FREQUENCY_LIMITED without handling
--   login (jscode2session):
--     login_rate_limited {}        errcode 45011 (too many logins), the code stays unused
--   refunds (match: out_trade_no):
--     refund_abnormal {}           the refund settles ABNORMAL (the payer's account cannot take it)
--     refund_closed   {}           the refund settles CLOSED (the money stays with the merchant)
--   notifications:
--     notify_drop       {}             the notification is never sent
--     notify_delay      {ms}           the first delivery waits ms
--     notify_reorder    {ms}           of the next `count` notifications, each waits (remaining count × ms),
--                                      so later events arrive first
--     notify_duplicate  {concurrent}   delivered twice: at the same moment (concurrent) or again 1 s later
--     notify_probe      {}             a delivery signed WECHATPAY/SIGNTEST/ (the merchant must refuse it)
--     notify_bad_signature {}          a delivery whose signature does not verify

local faults = {}

faults.NAMES = {
  latency = true, slow = true, timeout = true, system_error = true, bad_signature = true, probe = true,
  notify_drop = true, notify_delay = true, notify_reorder = true, notify_duplicate = true,
  notify_probe = true, notify_bad_signature = true,
}

-- The failure paths of issue 14: FREQUENCY_LIMITED (429) on any /v3 call (match: the path),
-- errcode 45011 on jscode2session, and refunds that end ABNORMAL or CLOSED (match: out_trade_no).
faults.NAMES.rate_limited = true
faults.NAMES.login_rate_limited = true
faults.NAMES.refund_abnormal = true
faults.NAMES.refund_closed = true

local function stored(name)
  local row = db.one("SELECT spec FROM faults WHERE name = ?", name)
  return row and json.decode(row.spec)
end

local function from_config(name)
  local all = config.faults
  local spec = all and all[name]
  if type(spec) ~= "table" then return nil end
  return { rate = spec.rate, ms = spec.ms, status = spec.status, concurrent = spec.concurrent }
end

--- The fault's spec if it fires for this call, else nil (a count is used up when it fires).
--- subject: the request path (API faults) or the out_trade_no (notifications); a fault set
--- with {match = "..."} fires only for subjects containing that text.
function faults.fire(name, subject)
  local spec = stored(name)
  if spec and spec.match and not (subject and subject:find(spec.match, 1, true)) then return nil end
  if spec then
    if math.type(spec.count) == "integer" and spec.count > 0 then
      spec.remaining = spec.count
      spec.count = spec.count - 1
      if spec.count == 0 and not spec.rate then
        db.exec("DELETE FROM faults WHERE name = ?", name)
      else
        db.exec("UPDATE faults SET spec = ? WHERE name = ?", json.encode(spec), name)
      end
      return spec
    end
  else
    spec = from_config(name)
  end
  if spec and type(spec.rate) == "number" and spec.rate > 0 and math.random() < spec.rate then
    spec.remaining = 1
    return spec
  end
  return nil
end

--- Set (or with spec = false, clear) switches: {name = spec | false, ...}. Returns an error message on bad input.
function faults.set(changes)
  for name, spec in pairs(changes) do
    if not faults.NAMES[name] then return "unknown fault '" .. tostring(name) .. "'" end
    if spec ~= false and spec ~= json.null and type(spec) ~= "table" then
      return "fault '" .. name .. "' must be an object like {count = 1} or {rate = 0.5}, or false"
    end
  end
  db.tx(function()
    for name, spec in pairs(changes) do
      if spec == false or spec == json.null then
        db.exec("DELETE FROM faults WHERE name = ?", name)
      else
        db.exec("INSERT INTO faults(name, spec) VALUES (?, ?) ON CONFLICT(name) DO UPDATE SET spec = excluded.spec",
          name, json.encode(spec))
      end
    end
  end)
  return nil
end

function faults.clear() db.exec("DELETE FROM faults") end

--- Every stored switch, plus the config defaults.
function faults.list()
  local out = {}
  for _, row in ipairs(db.query("SELECT name, spec FROM faults ORDER BY name")) do
    out[row.name] = json.decode(row.spec)
  end
  return { active = out, config = config.faults or {}, latency_ms = config.latency_ms or 0 }
end

--- The per-call upstream latency in ms (config latency_ms plus the latency switch).
function faults.latency_ms()
  local ms = config.latency_ms or 0
  local f = stored("latency") or from_config("latency")   -- applies to every call while set
  if f and math.type(f.ms) == "integer" then ms = ms + f.ms end
  return ms
end

return faults

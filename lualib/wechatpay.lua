-- wechatpay: the WeChat Pay APIv3 calls a shop needs, on top of the engine's C client.
--
--   local wechatpay = require "wechatpay"
--   local res, why, msg = wechatpay.jsapi_prepay{ out_trade_no = no, description = "2 cups",
--                                                 amount = 1200, openid = user.openid,
--                                                 time_expire = "2026-11-28T16:00:00+08:00" }
--
-- Every call returns either a result table {status=, body=, code=, message=, raw=, request_id=}
-- (any HTTP status: check res.status) or nil, reason, message when no genuine answer came:
-- no answer: "timeout", "connect", "tls" (handshake or certificate refused) or "network" (the
-- outcome is unknown, ask again), a verification failure of a 2xx answer ("bad_signature",
-- "stale_timestamp", "unknown_serial", "signature_probe", ...: treat it the same way), or
-- "invalid" (refused before sending).
-- Signing, verification and decryption happen in C; keys never reach Lua.

local core = require "wechatpay.core"

local M = {
  notification = core.notification,   -- (req) -> resource, envelope | nil, reason, message
  pay_params = core.pay_params,       -- (prepay_id) -> {appId, timeStamp, nonceStr, package, signType, paySign}
  app_pay_params = core.app_pay_params, -- (prepay_id) -> {appid, partnerid, prepayid, package, noncestr, timestamp, sign}
  login = core.login,                 -- (code) -> {openid, unionid?} | nil, reason, message
  refresh_certificates = core.refresh_certificates,
  settings = core.settings,
  configured = core.configured,
  request = core.request,             -- (method, path [, body]) -> result | nil, reason, message
}

-- A path segment of our own ids: only the characters WeChat allows ("|" is sent escaped,
-- and the signature covers exactly what is sent). Anything else is refused before sending.
local function segment(s, extra)
  if type(s) ~= "string" or #s == 0 or #s > 64 or s:find("[^%w_%-|%*" .. (extra or "") .. "]") then
    return nil
  end
  return (s:gsub("|", "%%7C"))
end

local function invalid(what)
  return nil, "invalid", what .. " has characters WeChat does not allow"
end

local function mchid() return core.settings().mchid end

--- JSAPI (mini-program) prepay. o: out_trade_no, description, amount (fen), openid,
--- time_expire (RFC 3339), attach?, notify_url? (defaults to the configured one).
function M.jsapi_prepay(o)
  local ok, err = core.check_order(o)
  if not ok then return nil, "invalid", err end
  if type(o.openid) ~= "string" or o.openid == "" then return nil, "invalid", "openid is required" end
  local s = core.settings()
  local notify_url = o.notify_url or s.notify_url
  if not notify_url then return nil, "invalid", "no notify_url (configure wechatpay.notify_url)" end
  local body = json.encode({
    appid = s.appid, mchid = s.mchid, description = o.description, out_trade_no = o.out_trade_no,
    time_expire = o.time_expire, attach = o.attach, notify_url = notify_url,
    amount = { total = o.amount, currency = "CNY" }, payer = { openid = o.openid },
  })
  return core.request("POST", "/v3/pay/transactions/jsapi", body)
end

--- APP prepay (a mobile app paying through the OpenSDK). o: out_trade_no, description,
--- amount (fen), time_expire (RFC 3339), attach?, notify_url?. No payer: WeChat learns who
--- pays when the app's user pays. The appid is the mobile app's (wechatpay.app_appid).
--- Hand res.body.prepay_id to app_pay_params for the app's PayReq.
function M.app_prepay(o)
  local ok, err = core.check_order(o)
  if not ok then return nil, "invalid", err end
  local s = core.settings()
  if not s.app_appid then return nil, "invalid", "APP pay needs wechatpay.app_appid in the config" end
  local notify_url = o.notify_url or s.notify_url
  if not notify_url then return nil, "invalid", "no notify_url (configure wechatpay.notify_url)" end
  local body = json.encode({
    appid = s.app_appid, mchid = s.mchid, description = o.description, out_trade_no = o.out_trade_no,
    time_expire = o.time_expire, attach = o.attach, notify_url = notify_url,
    amount = { total = o.amount, currency = "CNY" },
  })
  return core.request("POST", "/v3/pay/transactions/app", body)
end

--- The appid an order of this channel is paid under: "miniprogram" (JSAPI, wechatpay.appid)
--- or "app" (APP pay, wechatpay.app_appid). nil for an unknown or unconfigured channel.
function M.appid_of(channel)
  local s = core.settings()
  if channel == nil or channel == "miniprogram" then return s.appid end
  if channel == "app" then return s.app_appid end
  return nil
end

--- Query an order by our out_trade_no (the only way before it is paid).
function M.query(out_trade_no)
  local seg = segment(out_trade_no)
  if not seg then return invalid("out_trade_no") end
  return core.request("GET", "/v3/pay/transactions/out-trade-no/" .. seg .. "?mchid=" .. mchid())
end

--- Query an order by WeChat's transaction_id.
function M.query_by_id(transaction_id)
  local seg = segment(transaction_id)
  if not seg then return invalid("transaction_id") end
  return core.request("GET", "/v3/pay/transactions/id/" .. seg .. "?mchid=" .. mchid())
end

--- Close an unpaid order (204 on success).
function M.close(out_trade_no)
  local seg = segment(out_trade_no)
  if not seg then return invalid("out_trade_no") end
  return core.request("POST", "/v3/pay/transactions/out-trade-no/" .. seg .. "/close",
    json.encode({ mchid = mchid() }))
end

--- Refund. o: out_trade_no or transaction_id, out_refund_no (reuse it when retrying),
--- refund and total (fen), reason?, notify_url? (defaults to the configured refund one).
function M.refund(o)
  if type(o.out_refund_no) ~= "string" or not o.out_refund_no:match("^[%w_%-|%*@]+$") or #o.out_refund_no > 64 then
    return nil, "invalid", "out_refund_no must be 1-64 of [0-9A-Za-z_-|*@]"
  end
  if math.type(o.refund) ~= "integer" or math.type(o.total) ~= "integer" or o.refund <= 0 or o.refund > o.total then
    return nil, "invalid", "refund and total must be integers with 0 < refund <= total"
  end
  local s = core.settings()
  return core.request("POST", "/v3/refund/domestic/refunds", json.encode({
    out_trade_no = o.out_trade_no, transaction_id = o.transaction_id, out_refund_no = o.out_refund_no,
    reason = o.reason, notify_url = o.notify_url or s.refund_notify_url,
    amount = { refund = o.refund, total = o.total, currency = "CNY" },
  }))
end

--- Query a refund by our out_refund_no.
function M.query_refund(out_refund_no)
  local seg = segment(out_refund_no, "@")
  if not seg then return invalid("out_refund_no") end
  return core.request("GET", "/v3/refund/domestic/refunds/" .. seg)
end

-- The daily bills: tradebill, fundflowbill, download_bill (lualib/wechatpay/bills.lua).
require("wechatpay.bills").install(M, core)

-- Certificate mode: download WeChat Pay's platform certificates at start and every
-- cert_refresh_s (they rotate), and at once when a notification names an unknown serial.
if core.configured() and core.settings().download_certificates then
  local app = require "paygate"
  local every_ms = core.settings().cert_refresh_s * 1000
  app.job("wechatpay_certificates", function()
    local n, why, msg = core.refresh_certificates()
    jobs.schedule("wechatpay_certificates", {},
                  { delay_ms = every_ms, key = "wechatpay:certificates:" .. clock.now() // every_ms })
    if not n then error("certificate download failed: " .. why .. ": " .. tostring(msg), 0) end
    log.info("platform certificates refreshed", { count = n })
  end)
  jobs.schedule("wechatpay_certificates", {}, { key = "wechatpay:certificates" })

  function M.notification(req)
    local resource, envelope, msg = core.notification(req)
    if not resource and envelope == "unknown_serial" then
      jobs.schedule("wechatpay_certificates", {}, { key = "wechatpay:certificates:now" })
    end
    return resource, envelope, msg
  end
end

return M

-- wx/control.lua — the parts of WeChat that are not WeChat Pay's API: the user, login, and the test controls.
--
--   POST /sandbox/login-code {openid?}            → {code, openid, expires_in}  (what wx.login gives the mini program)
--   GET  /sns/jscode2session?appid&secret&js_code  → {openid, session_key} | {errcode, errmsg}
--   POST /sandbox/pay {prepay_id, openid, result?, pay_params?}  plays wx.requestPayment
--   POST /sandbox/app-pay {pay_req, openid?, result?}  plays the mobile app's user paying a PayReq (APP pay)
--   GET/POST/DELETE /sandbox/faults                fault switches (see wx/faults.lua)
--   POST /sandbox/clock {advance_s}                move business time forward
--   GET  /sandbox/orders/{out_trade_no}            the order, its prepay_ids, refunds and notifications
--   GET  /sandbox/notifications?ref=               notifications and every delivery attempt
--   GET  /sandbox/info                             mchid, appid, mode, serials (nothing secret)

local app = require "paygate"
local sandbox = require "wechatpay.sandbox"
local state = require "wx.state"
local protocol = require "wx.protocol"
local faults = require "wx.faults"
local orders = require "wx.orders"
local notify = require "wx.notify"

local CODE_TTL_MS = 5 * 60 * 1000

local function body_or_empty(req)
  if req:body() == "" then return {} end
  return app.read_json(req)
end

-- ---- login ----

app.post("/sandbox/login-code", function(req)
  local b = body_or_empty(req)
  local openid = b.openid
  if openid ~= nil and (type(openid) ~= "string" or not openid:find("^[%w_%-]+$") or #openid > 128) then
    app.fail(400, "invalid_request", "openid must be 1-128 letters, digits, _ or -")
  end
  openid = openid or ("o" .. sandbox.random_alnum(27))
  local code = sandbox.random_alnum(32)
  db.exec("INSERT INTO login_codes(code, openid, expires_at) VALUES (?, ?, ?)", code, openid, state.now_ms() + CODE_TTL_MS)
  return 200, { code = code, openid = openid, expires_in = CODE_TTL_MS // 1000 }
end)

local function wx_error(errcode, errmsg)
  return 200, { errcode = errcode, errmsg = errmsg .. ", rid: " .. sandbox.random_hex(8) .. "-" .. sandbox.random_hex(8) }
end

app.get("/sns/jscode2session", function(req)
  local q = function(n) return protocol.query_param(req.query, n) end
  local appid, secret, code = q("appid"), q("secret"), q("js_code")
  if not appid or appid == "" then return wx_error(41002, "appid missing") end
  if appid ~= state.appid then return wx_error(40013, "invalid appid") end
  if not secret or secret == "" then return wx_error(41004, "appsecret missing") end
  if not protocol.info.app_secret or not protocol.keys:check_app_secret(secret) then
    return wx_error(40125, "invalid appsecret")
  end
  if not code or code == "" then return wx_error(41008, "missing code") end
  if faults.fire("login_rate_limited", "/sns/jscode2session") then
    return wx_error(45011, "api minute-quota reach limit  mustslower  retry next minute")
  end
  -- single use: the UPDATE claims the code only if it is unused and still valid
  local changed = db.exec("UPDATE login_codes SET used_at = ? WHERE code = ? AND used_at IS NULL AND expires_at > ?",
    state.now_ms(), code, state.now_ms())
  if changed ~= 1 then return wx_error(40029, "invalid code") end
  local row = db.one("SELECT openid FROM login_codes WHERE code = ?", code)
  return 200, { openid = row.openid, session_key = sandbox.random_alnum(22) .. "==" }
end)

-- ---- the user pays ----

app.post("/sandbox/pay", function(req)
  local b = app.read_json(req)
  if type(b.prepay_id) ~= "string" then app.fail(400, "invalid_request", "prepay_id is required") end
  if type(b.openid) ~= "string" then app.fail(400, "invalid_request", "openid is required (who pays)") end
  local result = b.result or "SUCCESS"
  if result ~= "SUCCESS" and result ~= "FAIL" and result ~= "CANCEL" then
    app.fail(400, "invalid_request", "result must be SUCCESS, FAIL or CANCEL")
  end
  return orders.pay(b.prepay_id, b.openid, result, b.pay_params)
end)

-- The mobile app's user pays through the OpenSDK: pay_req is the PayReq the merchant's server
-- gave the app (wechatpay.app_pay_params), its sign checked; openid is the user's openid under
-- the mobile app (made up when not given). Answers the OpenSDK's PayResp {errCode, errStr}.
app.post("/sandbox/app-pay", function(req)
  local b = app.read_json(req)
  if type(b.pay_req) ~= "table" then app.fail(400, "invalid_request", "pay_req (the app's PayReq) is required") end
  local openid = b.openid
  if openid ~= nil and (type(openid) ~= "string" or not openid:find("^[%w_%-]+$") or #openid > 128) then
    app.fail(400, "invalid_request", "openid must be 1-128 letters, digits, _ or -")
  end
  local result = b.result or "SUCCESS"
  if result ~= "SUCCESS" and result ~= "FAIL" and result ~= "CANCEL" then
    app.fail(400, "invalid_request", "result must be SUCCESS, FAIL or CANCEL")
  end
  return orders.app_pay(b.pay_req, openid or ("o" .. sandbox.random_alnum(27)), result)
end)

-- ---- faults ----

app.get("/sandbox/faults", function() return 200, faults.list() end)

app.post("/sandbox/faults", function(req)
  local problem = faults.set(app.read_json(req))
  if problem then app.fail(400, "invalid_request", problem) end
  return 200, faults.list()
end)

app.delete("/sandbox/faults", function()
  faults.clear()
  return 200, faults.list()
end)

-- ---- time ----

app.post("/sandbox/clock", function(req)
  local b = app.read_json(req)
  local ms = b.advance_ms or (b.advance_s and b.advance_s * 1000)
  if math.type(ms) ~= "integer" or ms < 0 then
    app.fail(400, "invalid_request", "give advance_s or advance_ms: a non-negative integer")
  end
  local offset = state.advance(ms)
  return 200, { offset_ms = offset, now = sandbox.beijing_time(state.now_s()) }
end)

-- ---- looking inside ----

app.get("/sandbox/orders/{no}", function(req)
  local no = protocol.unescape(req.params.no)
  local o = orders.get(no)
  if not o then app.fail(404, "not_found", "no order " .. no) end
  o.fingerprint = nil
  o.prepays = json.array(db.query("SELECT prepay_id, expires_at FROM prepays WHERE out_trade_no = ? ORDER BY expires_at", no))
  o.refunds = json.array(db.query(
    "SELECT out_refund_no, refund_id, refund, status, create_time, success_time FROM refunds WHERE out_trade_no = ? ORDER BY created_at", no))
  o.notifications = notify.list(no)
  return 200, o
end)

app.get("/sandbox/notifications", function(req)
  local ref = protocol.query_param(req.query, "ref")
  return 200, { notifications = notify.list(ref) }
end)

app.get("/sandbox/info", function()
  return 200, {
    mchid = state.mchid, appid = state.appid, app_appid = state.app_appid, mode = state.mode, clock_speed = state.setting("clock_speed", 1),
    platform_serial = protocol.info.platform_serial, merchant_serial = protocol.info.merchant_serial,
    public_key_id = protocol.info.public_key_id,
  }
end)

return {}

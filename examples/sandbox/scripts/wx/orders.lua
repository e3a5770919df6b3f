-- wx/orders.lua — WeChat Pay's order and refund state machine.
--
--   NOTPAY ──pay──▶ SUCCESS ──refund──▶ REFUND
--     │
--     └──close / time_expire passed──▶ CLOSED
--
-- A prepay_id is valid 2 hours; placing the same out_trade_no again with the same parameters
-- gives the current prepay_id (or a new one once it expired), with other parameters
-- "201 商户订单号重复". Refunds never add up to more than the order's total.

local app = require "paygate"
local sandbox = require "wechatpay.sandbox"
local timefmt = require "timefmt"
local state = require "wx.state"
local protocol = require "wx.protocol"
local notify = require "wx.notify"

local orders = {}

local PREPAY_TTL_MS = 2 * 3600 * 1000
local DEFAULT_EXPIRE_MS = 7 * 24 * 3600 * 1000
local MIN_EXPIRE_MS = 60 * 1000
local MAX_EXPIRE_MS = 90 * 24 * 3600 * 1000

local DESC = {
  NOTPAY = "订单未支付", SUCCESS = "支付成功", CLOSED = "订单已关闭", REFUND = "订单发生过退款",
}

-- ---- ids ----

local function compact_time(ms)   -- yyyyMMddHHmmss in Beijing time
  return (sandbox.beijing_time(ms // 1000):gsub("[^%d]", ""):sub(1, 14))
end

-- 28 digits like 4200000000002104083200000488
local function new_transaction_id()
  return "420000" .. compact_time(state.now_ms()):sub(1, 8) .. sandbox.random_digits(14)
end

-- like wx201410272009395522657a690389285100
local function new_prepay_id()
  return "wx" .. compact_time(state.now_ms()) .. sandbox.random_hex(20)
end

local function new_refund_id()
  return "503000" .. compact_time(state.now_ms()):sub(1, 8) .. sandbox.random_digits(15)
end

-- ---- time ----

-- Days since 1970-01-01 of a civil date (Howard Hinnant's algorithm).
--- RFC 3339 → Unix ms, or nil when malformed.
orders.parse_time = timefmt.parse

-- ---- reading ----

--- The order, with an unpaid order past its time_expire turned CLOSED; nil if unknown.
function orders.get(out_trade_no)
  local o = db.one("SELECT * FROM orders WHERE out_trade_no = ?", out_trade_no)
  if o and o.trade_state == "NOTPAY" and state.now_ms() >= o.expire_at then
    db.exec("UPDATE orders SET trade_state = 'CLOSED', updated_at = ? WHERE out_trade_no = ?",
      state.now_ms(), out_trade_no)
    o.trade_state = "CLOSED"
  end
  return o
end

function orders.get_by_transaction_id(id)
  local o = db.one("SELECT out_trade_no FROM orders WHERE transaction_id = ?", id)
  return o and orders.get(o.out_trade_no)
end

--- The transaction object: the query answer and the TRANSACTION.SUCCESS resource.
function orders.transaction(o)
  local t = {
    appid = o.appid, mchid = o.mchid, out_trade_no = o.out_trade_no,
    trade_state = o.trade_state, trade_state_desc = DESC[o.trade_state],
    amount = { total = o.total, currency = o.currency, payer_currency = o.currency },
    promotion_detail = json.array(),
  }
  if o.transaction_id then
    t.transaction_id = o.transaction_id
    t.trade_type = o.appid == state.app_appid and "APP" or "JSAPI"
    t.bank_type = "OTHERS"
    t.attach = o.attach or ""
    t.success_time = o.success_time
    t.payer = { openid = o.openid }
    t.amount.payer_total = o.total
  end
  return t
end

-- ---- placing ----

local function fingerprint(b)
  return json.encode({ b.appid, b.mchid, b.description, b.attach or "", b.notify_url, b.amount.total,
    b.amount.currency or "CNY", b.payer and b.payer.openid or "", b.time_expire or "", b.goods_tag or "" })
end

--- Field checks of the prepay body, in the order of its fields.
function orders.check_prepay(b)
  local S = protocol.check_string
  S(b.appid, { path = "appid", label = "应用ID", required = true, max = 32 })
  S(b.mchid, { path = "mchid", label = "直连商户号", required = true, max = 32 })
  S(b.description, { path = "description", label = "商品描述", required = true, max = 127 })
  S(b.out_trade_no, { path = "out_trade_no", label = "商户订单号", required = true, min = 6, max = 32,
    check = protocol.is_trade_no, regex = "^[0-9a-zA-Z_\\-\\|\\*]+$" })
  if S(b.time_expire, { path = "time_expire", label = "支付结束时间", max = 64 }) and not orders.parse_time(b.time_expire) then
    protocol.fail(400, "PARAM_ERROR", "输入源“/body/time_expire”映射到值字段“支付结束时间”时间规则校验失败，必须是RFC3339格式",
      { location = "body", value = b.time_expire })
  end
  S(b.attach, { path = "attach", label = "附加数据", max = 128 })
  S(b.notify_url, { path = "notify_url", label = "通知地址", required = true, max = 255, check = protocol.is_notify_url,
    regex = "^https?://([^\\s/?#\\[\\]\\@]+\\@)?([^\\s/?#\\@:]+)(?::\\d{2,5})?([^\\s?#\\[\\]]*)$" })
  S(b.goods_tag, { path = "goods_tag", label = "订单优惠标记", max = 32 })
  local amount = protocol.check_object(b.amount, { path = "amount", label = "订单金额", required = true })
  protocol.check_integer(amount.total, { path = "amount/total", label = "总金额", required = true, min = 1 })
  S(amount.currency, { path = "amount/currency", label = "货币类型", max = 16,
    check = function(c) return c == "CNY" end, regex = "^CNY$" })
  local payer = protocol.check_object(b.payer, { path = "payer", label = "支付者", required = true })
  S(payer.openid, { path = "payer/openid", label = "用户标识", required = true, min = 1, max = 128 })
end

local function issue_prepay(out_trade_no)
  local id = new_prepay_id()
  db.exec("INSERT INTO prepays(prepay_id, out_trade_no, expires_at) VALUES (?, ?, ?)",
    id, out_trade_no, state.now_ms() + PREPAY_TTL_MS)
  return id
end

-- time_expire: absent → 7 days; earlier than now + 1 min → now + 1 min; beyond 90 days → day 90.
local function expire_at(time_expire, now)
  if not time_expire then return now + DEFAULT_EXPIRE_MS end
  local t = orders.parse_time(time_expire)
  return math.max(now + MIN_EXPIRE_MS, math.min(t, now + MAX_EXPIRE_MS))
end

-- Place (or re-place) an order under `appid` for `openid` ("" for APP pay: the payer is not
-- known yet); returns the prepay_id or stops with WeChat Pay's error.
local function place(b, appid, openid)
  if b.appid ~= appid then protocol.fail(400, "APPID_MCHID_NOT_MATCH", "appid和mch_id不匹配") end
  local fp = fingerprint(b)
  return db.tx(function()
    local o = orders.get(b.out_trade_no)
    if o then
      if o.fingerprint ~= fp then protocol.fail(400, "INVALID_REQUEST", "201 商户订单号重复") end
      if o.trade_state == "SUCCESS" or o.trade_state == "REFUND" then
        protocol.fail(400, "ORDERPAID", "该订单已支付")
      end
      if o.trade_state == "CLOSED" then protocol.fail(400, "ORDER_CLOSED", "该订单已关闭") end
      local p = db.one("SELECT prepay_id FROM prepays WHERE out_trade_no = ? AND expires_at > ? ORDER BY expires_at DESC",
        b.out_trade_no, state.now_ms())
      return p and p.prepay_id or issue_prepay(b.out_trade_no)
    end
    local now = state.now_ms()
    db.exec([[INSERT INTO orders(out_trade_no, mchid, appid, description, attach, notify_url, total, currency,
                openid, time_expire, expire_at, fingerprint, trade_state, created_at, updated_at)
              VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'NOTPAY', ?, ?)]],
      b.out_trade_no, b.mchid, b.appid, b.description, b.attach, b.notify_url, b.amount.total,
      b.amount.currency or "CNY", openid, b.time_expire, expire_at(b.time_expire, now), fp, now, now)
    return issue_prepay(b.out_trade_no)
  end)
end

--- Place (or re-place) a JSAPI order; returns the prepay_id or stops with WeChat Pay's error.
function orders.place(b)
  return place(b, state.appid, b.payer.openid)
end

--- Close an unpaid order (closing a closed one again is fine).
function orders.close(out_trade_no)
  local o = orders.get(out_trade_no)
  if not o then protocol.fail(404, "ORDER_NOT_EXIST", "订单不存在") end
  if o.trade_state == "SUCCESS" or o.trade_state == "REFUND" then
    protocol.fail(400, "ORDERPAID", "订单已支付，不能发起关单")
  end
  db.exec("UPDATE orders SET trade_state = 'CLOSED', updated_at = ? WHERE out_trade_no = ?", state.now_ms(), out_trade_no)
end

-- ---- the user paying (wx.requestPayment) ----

local function user_fail(status, msg) return status, { errMsg = "requestPayment:fail " .. msg } end

-- paySign as wx.requestPayment checks it: signed by the merchant key over appId, timeStamp, nonceStr, package.
local function pay_params_ok(o, prepay_id, pp)
  if type(pp) ~= "table" then return true end
  local fields = { pp.appId, pp.timeStamp, pp.nonceStr, pp.package, pp.paySign }
  for i = 1, 5 do if type(fields[i]) ~= "string" then return false end end
  return pp.appId == o.appid and pp.package == "prepay_id=" .. prepay_id and pp.signType == "RSA"
    and protocol.keys:verify_pay_sign(pp.appId, pp.timeStamp, pp.nonceStr, pp.package, pp.paySign)
end

--- Play wx.requestPayment for prepay_id as user openid; result SUCCESS | FAIL | CANCEL.
--- pay_params (optional): the object the merchant gave the mini program; its paySign is checked.
function orders.pay(prepay_id, openid, result, pay_params)
  local pp = db.one("SELECT * FROM prepays WHERE prepay_id = ?", prepay_id)
  if not pp then return user_fail(404, "prepay_id不存在") end
  local o = orders.get(pp.out_trade_no)
  if not pay_params_ok(o, prepay_id, pay_params) then return user_fail(409, "支付验证签名失败") end
  if o.trade_state == "SUCCESS" or o.trade_state == "REFUND" then return user_fail(409, "该订单已支付") end
  if o.trade_state == "CLOSED" then return user_fail(409, "该订单已关闭") end
  if state.now_ms() >= pp.expires_at then return user_fail(409, "prepay_id已失效，请重新下单") end
  if openid ~= o.openid then return user_fail(409, "当前用户与下单用户不一致") end
  if result == "CANCEL" then return 200, { errMsg = "requestPayment:fail cancel" } end
  if result == "FAIL" then return 200, { errMsg = "requestPayment:fail 支付失败" } end
  local tid = new_transaction_id()
  db.tx(function()
    db.exec([[UPDATE orders SET trade_state = 'SUCCESS', transaction_id = ?, success_time = ?, updated_at = ?
              WHERE out_trade_no = ?]], tid, sandbox.beijing_time(state.now_s()), state.now_ms(), o.out_trade_no)
    local paid = orders.get(o.out_trade_no)
    notify.create("TRANSACTION.SUCCESS", "transaction", o.out_trade_no, o.notify_url, orders.transaction(paid))
  end)
  return 200, { errMsg = "requestPayment:ok", transaction_id = tid, out_trade_no = o.out_trade_no }
end

-- ---- APP pay: the mobile app's prepay and its user paying through the OpenSDK ----

--- Field checks of the APP prepay body: the JSAPI ones without payer (the app's user is not known yet).
function orders.check_app_prepay(b)
  if b.payer ~= nil then
    protocol.fail(400, "PARAM_ERROR", "APP下单不需要payer参数", { location = "body", path = "payer" })
  end
  local jsapi = { payer = { openid = "-" } }   -- the JSAPI checks, on a copy with a stand-in payer
  for k, v in pairs(b) do jsapi[k] = v end
  orders.check_prepay(jsapi)
end

--- Place (or re-place) an APP order under the mobile app's appid; returns the prepay_id.
function orders.place_app(b)
  return place(b, state.app_appid, "")
end

-- The PayReq as WeChat checks it when the app calls sendReq: partnerid is the merchant,
-- package "Sign=WXPay", and sign is the merchant key's over appid, timestamp, noncestr, prepayid.
local function pay_req_ok(o, prepay_id, r)
  if type(r) ~= "table" then return false end
  local fields = { r.appid, r.partnerid, r.prepayid, r.package, r.noncestr, r.timestamp, r.sign }
  for i = 1, 7 do if type(fields[i]) ~= "string" then return false end end
  return r.appid == o.appid and r.partnerid == o.mchid and r.prepayid == prepay_id and r.package == "Sign=WXPay"
    and protocol.keys:verify_pay_sign(r.appid, r.timestamp, r.noncestr, r.prepayid, r.sign)
end

--- Play the app's user paying the PayReq pay_req (required: the OpenSDK always sends it) as
--- openid (the user's openid under the mobile app); result SUCCESS | FAIL | CANCEL. The answer
--- is the OpenSDK's PayResp: errCode 0 paid, -1 failed, -2 cancelled.
function orders.app_pay(pay_req, openid, result)
  local function resp(status, code, str) return status, { errCode = code, errStr = str } end
  local prepay_id = type(pay_req) == "table" and pay_req.prepayid
  local pp = type(prepay_id) == "string" and db.one("SELECT * FROM prepays WHERE prepay_id = ?", prepay_id)
  if not pp then return resp(404, -1, "prepayid不存在") end
  local o = orders.get(pp.out_trade_no)
  if o.appid ~= state.app_appid then return resp(409, -1, "该订单不是APP支付订单") end
  if not pay_req_ok(o, prepay_id, pay_req) then return resp(409, -1, "支付验证签名失败") end
  if o.trade_state == "SUCCESS" or o.trade_state == "REFUND" then return resp(409, -1, "该订单已支付") end
  if o.trade_state == "CLOSED" then return resp(409, -1, "该订单已关闭") end
  if state.now_ms() >= pp.expires_at then return resp(409, -1, "prepayid已失效，请重新下单") end
  if result == "CANCEL" then return resp(200, -2, "用户取消") end
  if result == "FAIL" then return resp(200, -1, "支付失败") end
  local tid = new_transaction_id()
  db.tx(function()
    db.exec([[UPDATE orders SET trade_state = 'SUCCESS', transaction_id = ?, success_time = ?, openid = ?,
              updated_at = ? WHERE out_trade_no = ?]],
      tid, sandbox.beijing_time(state.now_s()), openid, state.now_ms(), o.out_trade_no)
    local paid = orders.get(o.out_trade_no)
    notify.create("TRANSACTION.SUCCESS", "transaction", o.out_trade_no, o.notify_url, orders.transaction(paid))
  end)
  return 200, { errCode = 0, errStr = "", transaction_id = tid, out_trade_no = o.out_trade_no }
end

-- ---- refunds ----

--- The refund object (answer of apply and query).
function orders.refund_object(r)
  return {
    refund_id = r.refund_id, out_refund_no = r.out_refund_no, transaction_id = r.transaction_id,
    out_trade_no = r.out_trade_no, channel = "ORIGINAL", user_received_account = "支付用户零钱",
    success_time = r.success_time, create_time = r.create_time, status = r.status, funds_account = "AVAILABLE",
    amount = {
      total = r.total, refund = r.refund, from = json.array(), payer_total = r.total, payer_refund = r.refund,
      settlement_refund = r.refund, settlement_total = r.total, discount_refund = 0, currency = "CNY", refund_fee = 0,
    },
    promotion_detail = json.array(),
  }
end

function orders.check_refund(b)
  local S = protocol.check_string
  S(b.transaction_id, { path = "transaction_id", label = "微信支付订单号", max = 32 })
  S(b.out_trade_no, { path = "out_trade_no", label = "商户订单号", max = 32 })
  if not b.transaction_id and not b.out_trade_no then
    protocol.fail(400, "PARAM_ERROR", "transaction_id和out_trade_no必须二选一", { location = "body" })
  end
  S(b.out_refund_no, { path = "out_refund_no", label = "商户退款单号", required = true, min = 1, max = 64,
    check = protocol.is_refund_no, regex = "^[0-9a-zA-Z_\\-\\|\\*@]+$" })
  S(b.reason, { path = "reason", label = "退款原因", max = 80 })
  S(b.notify_url, { path = "notify_url", label = "退款结果回调url", max = 256, check = protocol.is_notify_url,
    regex = "^https?://([^\\s/?#\\[\\]\\@]+\\@)?([^\\s/?#\\@:]+)(?::\\d{2,5})?([^\\s?#\\[\\]]*)$" })
  local amount = protocol.check_object(b.amount, { path = "amount", label = "金额信息", required = true })
  protocol.check_integer(amount.refund, { path = "amount/refund", label = "退款金额", required = true, min = 1 })
  protocol.check_integer(amount.total, { path = "amount/total", label = "原订单金额", required = true, min = 1 })
  S(amount.currency, { path = "amount/currency", label = "退款币种", required = true, max = 16,
    check = function(c) return c == "CNY" end, regex = "^CNY$" })
end

local function refund_fingerprint(b, o)
  return json.encode({ o.out_trade_no, b.amount.refund, b.amount.total, b.reason or "", b.notify_url or "" })
end

--- Accept a refund (status PROCESSING; it settles to SUCCESS after refund_settle_s, scaled).
function orders.refund(b)
  local o = b.transaction_id and orders.get_by_transaction_id(b.transaction_id) or orders.get(b.out_trade_no or "")
  if not o or (b.out_trade_no and o.out_trade_no ~= b.out_trade_no) then
    protocol.fail(404, "RESOURCE_NOT_EXISTS", "订单不存在")
  end
  if o.trade_state ~= "SUCCESS" and o.trade_state ~= "REFUND" then
    protocol.fail(400, "INVALID_REQUEST", "订单未支付，不能发起退款")
  end
  local fp = refund_fingerprint(b, o)
  return db.tx(function()
    local old = db.one("SELECT * FROM refunds WHERE out_refund_no = ?", b.out_refund_no)
    if old then
      if old.fingerprint ~= fp then
        protocol.fail(400, "INVALID_REQUEST", "订单金额或退款金额与之前请求不一致，请核实后再试")
      end
      return old
    end
    if b.amount.total ~= o.total then
      protocol.fail(400, "INVALID_REQUEST", "退款请求中的订单金额与原订单金额不一致")
    end
    if o.refunded + b.amount.refund > o.total then
      protocol.fail(400, "INVALID_REQUEST", "申请退款金额超过订单可退金额")
    end
    if db.one("SELECT count(*) AS n FROM refunds WHERE out_trade_no = ?", o.out_trade_no).n >= 50 then
      protocol.fail(400, "INVALID_REQUEST", "退款次数超过限制，一笔订单最多退款50次")
    end
    local r = {
      out_refund_no = b.out_refund_no, refund_id = new_refund_id(), out_trade_no = o.out_trade_no,
      transaction_id = o.transaction_id, refund = b.amount.refund, total = o.total, reason = b.reason,
      notify_url = b.notify_url or state.setting("refund_notify_url"), status = "PROCESSING", fingerprint = fp,
      create_time = sandbox.beijing_time(state.now_s()), created_at = state.now_ms(),
    }
    db.exec([[INSERT INTO refunds(out_refund_no, refund_id, out_trade_no, transaction_id, refund, total, reason,
                notify_url, status, fingerprint, create_time, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)]],
      r.out_refund_no, r.refund_id, r.out_trade_no, r.transaction_id, r.refund, r.total, r.reason,
      r.notify_url, r.status, r.fingerprint, r.create_time, r.created_at)
    db.exec("UPDATE orders SET refunded = refunded + ?, trade_state = 'REFUND', updated_at = ? WHERE out_trade_no = ?",
      r.refund, state.now_ms(), o.out_trade_no)
    jobs.schedule("wx_refund_settle", { out_refund_no = r.out_refund_no },
      { delay_ms = state.scaled(state.setting("refund_settle_s", 5)), key = "wx_refund_settle:" .. r.out_refund_no })
    return r
  end)
end

function orders.get_refund(out_refund_no)
  return db.one("SELECT * FROM refunds WHERE out_refund_no = ?", out_refund_no)
end

--- How a PROCESSING refund ends: SUCCESS, or ABNORMAL / CLOSED when a fault says so.
function orders.refund_outcome(r)
  local faults = require "wx.faults"
  if faults.fire("refund_abnormal", r.out_trade_no) then return "ABNORMAL" end
  if faults.fire("refund_closed", r.out_trade_no) then return "CLOSED" end
  return "SUCCESS"
end

--- A CLOSED refund gives its amount back to what the order can still refund.
function orders.refund_closed(r)
  db.exec([[UPDATE orders SET refunded = refunded - ?, updated_at = ?,
              trade_state = CASE WHEN refunded - ? = 0 THEN 'SUCCESS' ELSE trade_state END
            WHERE out_trade_no = ?]], r.refund, state.now_ms(), r.refund, r.out_trade_no)
end

-- A refund reaches its end at WeChat: its status (and success time), the order's money back
-- when CLOSED, and the REFUND.<status> notification naming `account` as where the money went.
local function settle_refund(r, status, account)
  local when = sandbox.beijing_time(state.now_s())
  db.exec("UPDATE refunds SET status = ?, success_time = ? WHERE out_refund_no = ?",
    status, status == "SUCCESS" and when or nil, r.out_refund_no)
  if status == "CLOSED" then orders.refund_closed(r) end
  if r.notify_url then
    notify.create("REFUND." .. status, "refund", r.out_refund_no, r.notify_url, {
      mchid = state.mchid, out_trade_no = r.out_trade_no, transaction_id = r.transaction_id,
      out_refund_no = r.out_refund_no, refund_id = r.refund_id, refund_status = status,
      success_time = status == "SUCCESS" and when or nil, create_time = r.create_time,
      user_received_account = account,
      amount = { total = r.total, refund = r.refund, payer_total = r.total, payer_refund = r.refund },
    })
  end
end

--- An ABNORMAL refund ends when the merchant deals with it at WeChat Pay: SUCCESS (paid to
--- another account) or CLOSED (refunded offline). POST /sandbox/refunds/{no}/resolve plays that.
function orders.resolve_refund(out_refund_no, status)
  return db.tx(function()
    local r = orders.get_refund(out_refund_no)
    if not r or r.status ~= "ABNORMAL" then return nil end
    settle_refund(r, status, status == "SUCCESS" and "支付用户零钱" or nil)
    return orders.get_refund(out_refund_no)
  end)
end

app.job("wx_refund_settle", function(p)
  db.tx(function()
    local r = orders.get_refund(p.out_refund_no)
    if not r or r.status ~= "PROCESSING" then return end
    settle_refund(r, orders.refund_outcome(r), "支付用户零钱")
  end)
end)

return orders

-- payments: starting a payment at WeChat, and deciding what a WeChat transaction (a
-- notification or a query answer) means for an order.
local app = require "paygate"
local orders = require "shop.orders"
local timefmt = require "timefmt"
local wechatpay = require "wechatpay"
local events = require "shop.events"

local M = {}

local PREPAY_LIFE_MS = 110 * 60 * 1000     -- WeChat keeps a prepay_id 2 hours; renew a little before

--- Check a transaction against our records. Returns the order, or nil and the reason
--- the transaction is refused (nothing is changed then).
--- The appid is the one of the order's own channel (a mini-program order paid under the
--- app's appid, or the other way round, is refused).
function M.check(tx)
  local s = wechatpay.settings()
  if tx.mchid ~= s.mchid then return nil, "mchid_mismatch" end
  if type(tx.out_trade_no) ~= "string" then return nil, "no_out_trade_no" end
  local order = orders.load(tx.out_trade_no)
  if not order then return nil, "unknown_order" end
  local appid = wechatpay.appid_of(order.channel)
  if not appid or tx.appid ~= appid then return nil, "appid_mismatch" end
  if tx.trade_state ~= "SUCCESS" then return nil, "trade_state_" .. tostring(tx.trade_state) end
  local amount = type(tx.amount) == "table" and tx.amount or {}
  if amount.total ~= order.amount then return nil, "amount_mismatch" end
  if amount.currency ~= "CNY" then return nil, "currency_mismatch" end
  if type(tx.transaction_id) ~= "string" or tx.transaction_id == "" then return nil, "no_transaction_id" end
  -- One WeChat transaction pays one order: another order's id is a forgery or a mix-up.
  if db.one("SELECT 1 AS taken FROM orders WHERE transaction_id = ? AND order_no <> ?",
            tx.transaction_id, order.order_no) then
    return nil, "transaction_of_another_order"
  end
  return order
end

--- Apply a checked payment inside the caller's db.tx: PAID at most once, a late payment
--- for a closed order re-sold or refunded, a repeat changes nothing. Returns the outcome.
function M.apply(order, tx, via)
  local paid_at = timefmt.parse(tx.success_time) or clock.now()
  if orders.OPEN[order.status] and orders.mark_paid(order, tx.transaction_id, paid_at, via) then
    return "paid"
  end
  if order.status == "CLOSED" then
    return orders.paid_after_close(order, tx.transaction_id, paid_at, via) == "PAID" and "paid_after_close"
        or "refunding_after_close"
  end
  if order.transaction_id == tx.transaction_id then return "duplicate" end
  log.error("second transaction for one order: recorded, needs an operator",
    { order = order.order_no, transaction = tx.transaction_id, known = order.transaction_id })
  return "conflict"
end

--- Record a notification's fate for the audit trail (accepted or refused, with why); a refusal
--- about an order we have is also an event of that order.
function M.log(kind, notify_id, order_no, outcome, reason)
  db.exec([[INSERT INTO notification_log(kind, notify_id, order_no, outcome, reason, received_at)
            VALUES (?, ?, ?, ?, ?, ?)]], kind, notify_id, order_no, outcome, reason, clock.now())
  if outcome == "refused" and type(order_no) == "string" and orders.load(order_no) then
    events.record(order_no, "notification_refused", { kind = kind, reason = reason, notify_id = notify_id },
                  "notification_refused:" .. (notify_id or secure.random_id(12)) .. ":" .. order_no, "wechat")
  end
  metrics.inc("paygate_notifications_total", { kind = kind, outcome = outcome })
end

--- Ask WeChat about an order and apply the answer exactly like a notification.
--- Returns the outcome ("paid", "notpay", ...) or nil, reason when WeChat could not be asked.
--- via: who asked, for the audit trail (default "query").
function M.query_and_apply(order_no, via)
  local res, why, msg = wechatpay.query(order_no)
  if not res then return nil, why .. ": " .. tostring(msg) end
  if res.status == 404 then return "not_found" end
  if res.status ~= 200 or type(res.body) ~= "table" then
    return nil, "query answered " .. res.status .. " " .. tostring(res.code)
  end
  local tx = res.body
  if tx.trade_state ~= "SUCCESS" then return string.lower(tostring(tx.trade_state)) end
  return db.tx(function()
    local order, reason = M.check(tx)
    if not order then
      M.log("query", nil, tx.out_trade_no, "refused", reason)
      return "refused:" .. reason
    end
    local outcome = M.apply(order, tx, via or "query")
    M.log("query", nil, order.order_no, outcome, nil)
    return outcome
  end)
end

-- A prepay answer worth asking again for: no answer (network, connect, timeout; not a refused
-- certificate), an answer that did not verify (a signature probe, a bad signature), a 5xx, or
-- 429 FREQUENCY_LIMITED.
local function transient(res, why)
  if not res then return why ~= "invalid" and why ~= "tls" end   -- a refused certificate stays refused
  return res.status >= 500 or res.status == 429
end

-- One prepay of the order's channel: JSAPI for the mini program (the payer's openid), APP pay
-- for the mobile app (no payer: WeChat learns who pays when the app's user pays).
local function prepay_once(order)
  local o = { out_trade_no = order.order_no, description = order.description, amount = order.amount,
              time_expire = timefmt.rfc3339(order.expires_at) }
  if order.channel == "app" then return wechatpay.app_prepay(o) end
  o.openid = order.openid
  return wechatpay.jsapi_prepay(o)
end

--- The prepay of order's channel, asked again on a transient failure with the same
--- out_trade_no and the same parameters (WeChat answers the same prepay_id for them) at most
--- config.prepay_attempts times in all (default 3), 100 ms, 200 ms ... apart. Returns what the
--- last attempt returned.
function M.prepay(order)
  local attempts = math.tointeger(config.prepay_attempts) or 3
  local res, why, msg
  for attempt = 1, math.max(1, attempts) do
    res, why, msg = prepay_once(order)
    if not transient(res, why) or attempt >= attempts then break end
    metrics.inc("paygate_prepay_retries_total", { reason = why or tostring(res.status) })
    log.warn("prepay failed on a transient cause; asking again", { order = order.order_no, attempt = attempt,
             reason = why or (res.code or tostring(res.status)) })
    clock.sleep(100 * attempt)
  end
  return res, why, msg
end

--- Start (or resume) paying order_no for its owner openid: WeChat's prepay once (JSAPI, or
--- APP pay for an order of the "app" channel), the order CREATED → PAYING, and a
--- reconcile_order job in case the notification never comes. Asking again while the
--- prepay_id is valid reuses it. Returns the parameters of wx.requestPayment, or for an "app"
--- order the OpenSDK's PayReq (appid, partnerid, prepayid, package "Sign=WXPay", noncestr,
--- timestamp, sign). Raises app.fail: 404 not_found (no such order of this user),
--- 409 not_payable (not open, about to expire, WeChat has it paid or closed, or APP pay is not
--- configured), 502 upstream_error (WeChat did not take it after its attempts; the order is
--- kept and can be paid again). Waits for WeChat: call it outside db.tx.
function M.pay(order_no, openid)
  local order = orders.load_owned(order_no, openid)
  if not order then app.fail(404, "not_found", "no such order") end
  local now = clock.now()
  local min_left_ms = (config.min_pay_window_s or 60) * 1000   -- WeChat wants time_expire a minute away
  if not orders.OPEN[order.status] or order.expires_at - now < min_left_ms then
    app.fail(409, "not_payable", "the order is " .. (orders.OPEN[order.status] and "about to expire" or order.status))
  end
  local app_pay = order.channel == "app"
  local params = app_pay and wechatpay.app_pay_params or wechatpay.pay_params
  if app_pay and not wechatpay.appid_of("app") then
    app.fail(409, "not_payable", "APP pay is not set up (wechatpay.app_appid)")
  end
  if order.prepay_id and now - order.prepay_at < PREPAY_LIFE_MS then
    return params(order.prepay_id)
  end

  local res, why, msg = M.prepay(order)
  if not res or res.status ~= 200 or type(res.body) ~= "table" or type(res.body.prepay_id) ~= "string" then
    if res and (res.code == "ORDERPAID" or res.code == "ORDER_CLOSED") then
      app.fail(409, "not_payable", "WeChat says the order is " .. (res.code == "ORDERPAID" and "paid" or "closed"))
    end
    log.warn("prepay failed", { order = order.order_no, reason = why or (res and res.code),
                                detail = msg or (res and res.message) })
    app.fail(502, "upstream_error", "WeChat Pay did not take the order; the order is kept, try again")
  end

  local prepay_id = res.body.prepay_id
  local reconcile_ms = (config.reconcile_after_s or 60) * 1000
  local stored = db.tx(function()
    local changed = db.exec([[UPDATE orders SET status = 'PAYING', prepay_id = ?, prepay_at = ?, updated_at = ?
                              WHERE order_no = ? AND status IN ('CREATED', 'PAYING')]],
                            prepay_id, clock.now(), clock.now(), order.order_no)
    if changed == 1 then
      events.record(order.order_no, "prepay_requested", { prepay_id = prepay_id, amount = order.amount },
                    "prepay_requested:" .. prepay_id, "user")
      jobs.schedule("reconcile_order", { order_no = order.order_no, attempt = 1 },
                    { delay_ms = reconcile_ms, key = "reconcile:" .. order.order_no })
    end
    return changed == 1
  end)
  if not stored then app.fail(409, "not_payable", "the order closed while WeChat was asked") end
  return params(prepay_id)
end

--- The order of openid as it stands now: a PAYING order is first checked at WeChat (after
--- config.status_query_after_s, then at most every status_query_every_s per order), so the
--- mini program learns the payment right after wx.requestPayment returns. Returns the order
--- row; 404 not_found for an order that is not this user's. Waits: call it outside db.tx.
function M.refresh(order_no, openid)
  local order = orders.load_owned(order_no, openid)
  if not order then app.fail(404, "not_found", "no such order") end
  local now = clock.now()
  local after_ms = (config.status_query_after_s or 3) * 1000
  local every_ms = (config.status_query_every_s or 5) * 1000
  if order.status == "PAYING" and now - (order.prepay_at or 0) >= after_ms
     and now - (order.checked_at or 0) >= every_ms then
    db.exec("UPDATE orders SET checked_at = ? WHERE order_no = ?", now, order.order_no)
    local outcome, why = M.query_and_apply(order.order_no, "status_query")
    if not outcome then log.warn("status query failed", { order = order.order_no, reason = why }) end
    order = orders.load(order.order_no)
  end
  return order
end

-- A PAYING order whose notification has not come is asked about: first after
-- reconcile_after_s, then less and less often, until an hour after it expired.
local BACKOFF_S = { 60, 120, 300, 600, 1800, 3600 }

--- The reconcile_order job's work: ask WeChat about a PAYING order and apply the answer
--- like a notification; schedule the next ask while it stays PAYING. Raises when WeChat
--- cannot be asked (the job runs again later).
function M.reconcile(order_no, attempt)
  local order = orders.load(order_no)
  if not order or order.status ~= "PAYING" then return nil end
  local outcome, why = M.query_and_apply(order.order_no, "reconciler")
  if not outcome then error("query failed: " .. tostring(why), 0) end
  order = orders.load(order.order_no)
  if order.status == "PAYING" and clock.now() < order.expires_at + 3600 * 1000 then
    local next_attempt = (attempt or 1) + 1
    local wait = BACKOFF_S[math.min(next_attempt, #BACKOFF_S)] * 1000 // (config.test_mode and 60 or 1)
    jobs.schedule("reconcile_order", { order_no = order.order_no, attempt = next_attempt },
                  { delay_ms = wait, key = "reconcile:" .. order.order_no .. ":" .. next_attempt })
  end
  log.info("reconciled", { order = order.order_no, outcome = outcome, status = order.status })
  return outcome
end

return M

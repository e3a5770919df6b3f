-- payments: deciding what a WeChat transaction (a notification or a query answer) means for an order.
local orders = require "shop.orders"
local timefmt = require "timefmt"
local wechatpay = require "wechatpay"

local M = {}

--- Check a transaction against our records. Returns the order, or nil and the reason
--- the transaction is refused (nothing is changed then).
function M.check(tx)
  local s = wechatpay.settings()
  if tx.appid ~= s.appid then return nil, "appid_mismatch" end
  if tx.mchid ~= s.mchid then return nil, "mchid_mismatch" end
  if type(tx.out_trade_no) ~= "string" then return nil, "no_out_trade_no" end
  local order = orders.load(tx.out_trade_no)
  if not order then return nil, "unknown_order" end
  if tx.trade_state ~= "SUCCESS" then return nil, "trade_state_" .. tostring(tx.trade_state) end
  local amount = type(tx.amount) == "table" and tx.amount or {}
  if amount.total ~= order.amount then return nil, "amount_mismatch" end
  if amount.currency ~= "CNY" then return nil, "currency_mismatch" end
  if type(tx.transaction_id) ~= "string" or tx.transaction_id == "" then return nil, "no_transaction_id" end
  return order
end

--- Apply a checked payment inside the caller's db.tx: PAID at most once, a late payment
--- for a closed order re-sold or refunded, a repeat changes nothing. Returns the outcome.
function M.apply(order, tx)
  local paid_at = timefmt.parse(tx.success_time) or clock.now()
  if orders.OPEN[order.status] and orders.mark_paid(order, tx.transaction_id, paid_at) then
    return "paid"
  end
  if order.status == "CLOSED" then
    return orders.paid_after_close(order, tx.transaction_id, paid_at) == "PAID" and "paid_after_close"
        or "refunding_after_close"
  end
  if order.transaction_id == tx.transaction_id then return "duplicate" end
  log.error("second transaction for one order: recorded, needs an operator",
    { order = order.order_no, transaction = tx.transaction_id, known = order.transaction_id })
  return "conflict"
end

--- Record a notification's fate for the audit trail (accepted or refused, with why).
function M.log(kind, notify_id, order_no, outcome, reason)
  db.exec([[INSERT INTO notification_log(kind, notify_id, order_no, outcome, reason, received_at)
            VALUES (?, ?, ?, ?, ?, ?)]], kind, notify_id, order_no, outcome, reason, clock.now())
  metrics.inc("paygate_notifications_total", { kind = kind, outcome = outcome })
end

--- Ask WeChat about an order and apply the answer exactly like a notification.
--- Returns the outcome ("paid", "notpay", ...) or nil, reason when WeChat could not be asked.
function M.query_and_apply(order_no)
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
    local outcome = M.apply(order, tx)
    M.log("query", nil, order.order_no, outcome, nil)
    return outcome
  end)
end

return M

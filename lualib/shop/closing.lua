-- closing: ending an unpaid order safely. Stock is released only once WeChat confirms the
-- order can no longer be paid; if WeChat says it was paid, the order becomes PAID instead.
local app = require "paygate"
local orders = require "shop.orders"
local payments = require "shop.payments"
local wechatpay = require "wechatpay"
local events = require "shop.events"

local M = {}

--- Close `order` (CREATED or PAYING) for `reason`. Returns "closed", "paid" (WeChat had
--- it paid), "already" (someone else finished it first) or "unknown", why (nothing changed:
--- try again later).
function M.close(order, reason)
  -- Asked once per reason in the trail, however often WeChat must be asked again.
  db.tx(function()
    events.record(order.order_no, "close_requested", { reason = reason },
                  "close_requested:" .. order.order_no .. ":" .. reason, reason == "cancelled" and "user" or "system")
  end)
  local res, why, msg = wechatpay.close(order.order_no)
  if not res then return "unknown", why .. ": " .. tostring(msg) end
  local confirmed = res.status == 204 or res.status == 200
      or res.status == 404                                  -- never prepaid: nothing to pay
      or res.code == "ORDER_NOT_EXIST" or res.code == "ORDERNOTEXIST" or res.code == "ORDER_CLOSED"
  if res.code == "ORDERPAID" or res.code == "ORDER_PAID" then
    local outcome, qwhy = payments.query_and_apply(order.order_no, "close")
    if outcome == "paid" or outcome == "duplicate" then return "paid" end
    return "unknown", "WeChat says paid but the query gave " .. tostring(outcome or qwhy)
  end
  if not confirmed then
    return "unknown", "close answered " .. res.status .. " " .. tostring(res.code) .. " " .. tostring(res.message)
  end
  local closed = db.tx(function() return orders.close(orders.load(order.order_no), reason) end)
  return closed and "closed" or "already"
end

--- The expiry job's work for order_no: close it if it is still open. Raises while WeChat
--- cannot confirm (so the job runs again later, with backoff); returns the close result, or
--- nil when the order was no longer open.
function M.expire(order_no)
  local order = orders.load(order_no)
  if not order or not orders.OPEN[order.status] then return nil end
  local result, why = M.close(order, "expired")
  if result == "unknown" then error("cannot confirm the close yet: " .. tostring(why), 0) end
  return result
end

--- The user gives up on order_no (theirs: openid): close at WeChat first, only then is
--- the stock released. Returns the CLOSED order row. Raises app.fail: 404 not_found,
--- 409 not_cancellable (not open, or paid meanwhile), 502 upstream_error (WeChat could not
--- confirm the close; nothing changed, try again). Waits: call it outside db.tx.
function M.cancel(order_no, openid)
  local order = orders.load_owned(order_no, openid)
  if not order then app.fail(404, "not_found", "no such order") end
  if not orders.OPEN[order.status] then
    app.fail(409, "not_cancellable", "the order is " .. order.status)
  end
  local result, why = M.close(order, "cancelled")
  if result == "unknown" then
    app.fail(502, "upstream_error", "WeChat could not confirm the close (" .. tostring(why) .. "); try again")
  end
  order = orders.load(order.order_no)
  if order.status ~= "CLOSED" then
    app.fail(409, "not_cancellable", "the order was paid meanwhile; it is " .. order.status)
  end
  return order
end

return M

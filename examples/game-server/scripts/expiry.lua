-- Unpaid orders: closed at WeChat when they expire; the item goes back on sale only once
-- WeChat confirmed (if WeChat says it was paid, it is delivered instead).
local app = require "paygate"
local closing = require "shop.closing"
local orders = require "shop.orders"

app.job("expire_order", function(p)
  local order = orders.load(p.order_no)
  if not order or not orders.OPEN[order.status] then return end
  local result, why = closing.close(order, "expired")
  if result == "unknown" then error("cannot confirm the close yet: " .. tostring(why), 0) end
end)

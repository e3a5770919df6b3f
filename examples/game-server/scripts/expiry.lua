-- Unpaid orders: closed at WeChat when they expire; the item goes back on sale only once
-- WeChat confirmed (if WeChat says it was paid, it is delivered instead).
local app = require "paygate"
local closing = require "shop.closing"

app.job("expire_order", function(p) closing.expire(p.order_no) end)

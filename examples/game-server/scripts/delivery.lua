-- Delivery: a paid order's item goes to the player through the game server's C function
-- host.deliver. lualib/shop calls deliver from a durable outbox until it returns once; if
-- host.deliver raises (the game is busy, the player is being migrated ...) it runs again
-- later. The game ignores an order_no it has delivered before, so one more call is harmless.
local shop_jobs = require "shop.jobs"

local function deliver(order, items)
  local buy = db.one("SELECT player, item FROM purchases WHERE order_no = ?", order.order_no)
  host.deliver({ order_no = order.order_no, player = buy.player, item = buy.item, qty = items[1].qty })
end

-- The shop's jobs, the same as the standalone shop's: expiry (closed at WeChat first),
-- reconciliation of silent payments, refunds, and delivery with ours.
shop_jobs.install{ deliver = deliver }

-- Delivery: a paid order's item goes to the player through the game server's C function
-- host.deliver. The "fulfill" job runs from a durable outbox until host.deliver returns once;
-- if it raises (the game is busy, the player is being migrated ...) it runs again later.
-- The game ignores an order_no it has delivered before, so one more call is harmless.
local app = require "paygate"

app.job("fulfill", function(p)
  local f = db.one("SELECT status FROM fulfillments WHERE order_no = ?", p.order_no)
  if not f or f.status == "DONE" then return end
  db.exec("UPDATE fulfillments SET attempts = attempts + 1 WHERE order_no = ?", p.order_no)
  local buy = db.one("SELECT player, item FROM purchases WHERE order_no = ?", p.order_no)
  host.deliver({ order_no = p.order_no, player = buy.player, item = buy.item, qty = 1 })
  db.exec("UPDATE fulfillments SET status = 'DONE', done_at = ? WHERE order_no = ? AND status = 'PENDING'",
          clock.now(), p.order_no)
end)

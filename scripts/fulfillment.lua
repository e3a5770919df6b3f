-- Fulfillment: deliver what was paid for. deliver(order, items) is called once per paid
-- order from a durable outbox: raise an error and it is called again later (with backoff)
-- until it returns; after it returned once it is never called for that order again.
-- Make deliveries idempotent by order_no: a crash right after delivering but before the
-- outbox records it means one more call.
local app = require "paygate"
local orders = require "shop.orders"

local function deliver(order, items)
  log.info("delivering", { order = order.order_no, items = #items, to = order.openid })
end

app.job("fulfill", function(p)
  local f = db.one("SELECT * FROM fulfillments WHERE order_no = ?", p.order_no)
  if not f or f.status == "DONE" then return end
  db.exec("UPDATE fulfillments SET attempts = attempts + 1 WHERE order_no = ?", p.order_no)
  local order = orders.load(p.order_no)
  local ok, err = pcall(deliver, order, orders.items(order.order_no))
  if not ok then
    db.exec("UPDATE fulfillments SET last_error = ? WHERE order_no = ?", tostring(err), p.order_no)
    error(err, 0)
  end
  db.exec("UPDATE fulfillments SET status = 'DONE', done_at = ?, last_error = NULL WHERE order_no = ? AND status = 'PENDING'",
          clock.now(), p.order_no)
  metrics.inc("paygate_fulfillments_total")
end)

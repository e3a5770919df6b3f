-- fulfillment: delivering each paid order exactly once, from a durable outbox. Marking an
-- order PAID queues it (a fulfillments row and a "fulfill" job, in the same transaction);
-- the job calls the merchant's deliver(order, items) until it returns once.
local orders = require "shop.orders"
local events = require "shop.events"

local M = {}

--- The fulfill job's work for order_no: call deliver(order, items) unless the order was
--- delivered already, then record it DONE. When deliver raises, the error is kept in
--- fulfillments.last_error and raised again, so the job runs again later (with backoff).
--- deliver runs outside any transaction (it may wait, e.g. for a delivery service) and
--- must be idempotent by order_no: a crash after it returned but before DONE was recorded
--- means one more call.
function M.run(order_no, deliver)
  local f = db.one("SELECT * FROM fulfillments WHERE order_no = ?", order_no)
  if not f or f.status == "DONE" then return end
  db.exec("UPDATE fulfillments SET attempts = attempts + 1 WHERE order_no = ?", order_no)
  local order = orders.load(order_no)
  local ok, err = pcall(deliver, order, orders.items(order_no))
  if not ok then
    local text = type(err) == "table" and tostring(err.error) .. ": " .. tostring(err.message) or tostring(err)
    db.exec("UPDATE fulfillments SET last_error = ? WHERE order_no = ?", text, order_no)
    error(err, 0)
  end
  db.tx(function()
    if db.exec([[UPDATE fulfillments SET status = 'DONE', done_at = ?, last_error = NULL
                 WHERE order_no = ? AND status = 'PENDING']], clock.now(), order_no) == 1 then
      events.record(order_no, "delivered", { attempts = f.attempts + 1 }, nil, "system")
    end
  end)
  metrics.inc("paygate_fulfillments_total")
end

return M

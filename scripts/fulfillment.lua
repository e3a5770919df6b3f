-- Fulfillment: what delivering a paid order means for this shop. lualib/shop calls
-- deliver(order, items) once per paid order from a durable outbox: raise an error and it is
-- called again later (with backoff) until it returns; after it returned once it is never
-- called for that order again. Make it idempotent by order.order_no: a crash right after
-- delivering, before the outbox records it, means one more call.
local M = {}

function M.deliver(order, items)
  log.info("delivering", { order = order.order_no, items = #items, to = order.openid })
end

return M

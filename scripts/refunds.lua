-- Refunds: an operator gives money back (all or part, never more than was paid). lualib/shop
-- sends it to WeChat from a durable job and follows it until WeChat says it is done.
local app = require "paygate"
local refunds = require "shop.refunds"

-- POST /admin/orders/{no}/refund {"amount"?, "reason"?}: amount defaults to what is left; or
-- {"items": [{"product_id", "qty"}], "restock"?, "reason"?}: those units, at what they were paid
-- (adjustments spread over them); restock puts them back on sale once the refund succeeded.
app.post("/admin/orders/{order_no}/refund", function(req)
  local body = app.read_json(req)
  return 202, refunds.start(req.params.order_no, { amount = body.amount, items = body.items, restock = body.restock,
                                                   reason = body.reason, by = req.admin })
end)

-- The stock rule: how an order takes units from the shelf. Edit freely; it reloads live.
--
-- reserve(openid, lines) runs inside the order's transaction. lines is a list of
-- { product_id, qty, product = <products row> } sorted by product_id. Take the units
-- with orders.move(lines, "stock", "reserved") and fail with app.fail to refuse the
-- order; whatever was taken is given back automatically when the order is refused.
-- examples/stock-rules/ has other rules (a per-user limit, a flash-sale window).
local app = require "paygate"
local orders = require "shop.orders"

local rule = {}

function rule.reserve(openid, lines)
  local short = orders.move(lines, "stock", "reserved")
  if short then
    app.fail(409, "out_of_stock",
      string.format("%s (product %d) has fewer than %d left", short.product.name, short.product_id, short.qty))
  end
end

return rule

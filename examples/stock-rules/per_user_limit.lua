-- Stock rule: plain stock, and no user buys more than LIMIT units of a product per day
-- (counting their paid and still-open orders). Copy over scripts/stock.lua to use it.
local app = require "paygate"
local orders = require "shop.orders"

local LIMIT = config.per_user_limit or 2
local DAY_MS = 24 * 3600 * 1000

local rule = {}

function rule.reserve(openid, lines)
  for _, l in ipairs(lines) do
    local had = db.one([[SELECT coalesce(sum(i.qty), 0) AS n FROM order_items i JOIN orders o ON o.order_no = i.order_no
                         WHERE o.openid = ? AND i.product_id = ? AND o.created_at > ?
                         AND o.status IN ('CREATED', 'PAYING', 'PAID')]], openid, l.product_id, clock.now() - DAY_MS).n
    if had + l.qty > LIMIT then
      app.fail(409, "limit_reached", string.format("at most %d of %s per person per day (you have %d)",
        LIMIT, l.product.name, had))
    end
  end
  local short = orders.move(lines, "stock", "reserved")
  if short then
    app.fail(409, "out_of_stock", string.format("%s (product %d) has fewer than %d left",
      short.product.name, short.product_id, short.qty))
  end
end

return rule

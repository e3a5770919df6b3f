-- Stock rule: plain stock, and no user buys more than LIMIT units of a product per day
-- (counting their paid and still-open orders). Copy over scripts/stock.lua to use it.
local LIMIT = config.per_user_limit or 2
local DAY_MS = 24 * 3600 * 1000

local rule = {}

-- Each product of the order is capped at what this user may still buy today.
function rule.decide(openid, lines)
  local left = {}
  for _, l in ipairs(lines) do
    local had = db.one([[SELECT coalesce(sum(i.qty), 0) AS n FROM order_items i JOIN orders o ON o.order_no = i.order_no
                         WHERE o.openid = ? AND i.product_id = ? AND o.created_at > ?
                         AND o.status IN ('CREATED', 'PAYING', 'PAID')]], openid, l.product_id, clock.now() - DAY_MS).n
    left[l.product_id] = LIMIT - had
  end
  return { limit = left, message = string.format("at most %d per person per day", LIMIT) }
end

return rule

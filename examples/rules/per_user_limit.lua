-- Rules: no one buys more than config.per_user_limit (default 2) units of a product per day,
-- counting their open, paid and refunded orders of the last 24 hours. A check: the order is
-- refused (409 per_user_limit) before anything is reserved. Copy over scripts/rules.lua.
local LIMIT = config.per_user_limit or 2
local DAY_MS = 24 * 3600 * 1000

local limit = { name = "per_user_limit" }

function limit.check(ctx, lines)
  for _, l in ipairs(lines) do
    local had = db.one([[SELECT coalesce(sum(i.qty), 0) AS n FROM order_items i JOIN orders o ON o.order_no = i.order_no
                         WHERE o.openid = ? AND i.product_id = ? AND o.created_at > ? AND o.status <> 'CLOSED']],
                       ctx.openid, l.product_id, ctx.now - DAY_MS).n
    if had + l.qty > LIMIT then
      return { refuse = "per_user_limit",
               message = string.format("%s: at most %d per person per day; %d left for you today", l.name, LIMIT,
                                       math.max(LIMIT - had, 0)) }
    end
  end
end

return { limit }

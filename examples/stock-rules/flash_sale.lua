-- Stock rule: a flash sale. Products listed in config.flash_sale = { product_ids = {...},
-- starts_at = "2026-11-28T20:00:00+08:00", ends_at = "...", per_order = 1 } sell only inside
-- the window and at most per_order units per order; other products sell normally.
-- Copy over scripts/stock.lua to use it.
local timefmt = require "timefmt"

local sale = config.flash_sale or {}
local on_sale = {}
for _, id in ipairs(sale.product_ids or {}) do on_sale[id] = true end
local starts, ends = timefmt.parse(sale.starts_at), timefmt.parse(sale.ends_at)
local per_order = sale.per_order or 1

local rule = {}

function rule.decide(openid, lines)
  local now = clock.now()
  local caps = {}
  for _, l in ipairs(lines) do
    if on_sale[l.product_id] then
      if not (starts and ends) or now < starts then
        return { refuse = "sale_not_started",
                 message = l.product.name .. " goes on sale at " .. tostring(sale.starts_at) }
      elseif now >= ends then
        return { refuse = "sale_over", message = "the sale of " .. l.product.name .. " is over" }
      end
      caps[l.product_id] = per_order
    end
  end
  return { limit = caps, message = "the flash sale's limit" }
end

return rule

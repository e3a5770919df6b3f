-- Stock rule: a flash sale. Products listed in config.flash_sale = { product_ids = {...},
-- starts_at = "2026-11-28T20:00:00+08:00", ends_at = "...", per_order = 1 } sell only inside
-- the window and one order line at a time; other products sell normally.
-- Copy over scripts/stock.lua to use it.
local app = require "paygate"
local orders = require "shop.orders"
local timefmt = require "timefmt"

local sale = config.flash_sale or {}
local on_sale = {}
for _, id in ipairs(sale.product_ids or {}) do on_sale[id] = true end
local starts, ends = timefmt.parse(sale.starts_at), timefmt.parse(sale.ends_at)

local rule = {}

function rule.reserve(openid, lines)
  local now = clock.now()
  for _, l in ipairs(lines) do
    if on_sale[l.product_id] then
      if not (starts and ends) or now < starts then
        app.fail(409, "sale_not_started", l.product.name .. " goes on sale at " .. tostring(sale.starts_at))
      elseif now >= ends then
        app.fail(409, "sale_over", "the sale of " .. l.product.name .. " is over")
      elseif l.qty > (sale.per_order or 1) then
        app.fail(409, "limit_reached", string.format("at most %d of %s per order in the sale",
          sale.per_order or 1, l.product.name))
      end
    end
  end
  local short = orders.move(lines, "stock", "reserved")
  if short then
    app.fail(409, "out_of_stock", string.format("%s (product %d) is sold out", short.product.name, short.product_id))
  end
end

return rule

-- Rules: a flash sale with its own price and cap. config.flash_sale = { product_id = 3,
-- price = 5900, starts_at = "2026-11-28T20:00:00+08:00", ends_at = "2026-11-28T22:00:00+08:00",
-- cap = 100, per_order = 1 }. Inside the window the product costs `price` (a line adjustment:
-- the order, WeChat and the product list all see it), at most per_order units per order, and
-- only `cap` units in all go at that price (open and paid orders count, closed ones give
-- theirs back): after that 409 sale_sold_out. Outside the window it sells at its list price.
-- Copy over scripts/rules.lua.
local timefmt = require "timefmt"

local sale = config.flash_sale or {}
local starts, ends = timefmt.parse(sale.starts_at), timefmt.parse(sale.ends_at)
-- A sale without its price or cap would fail every order in its window: refuse the reload instead.
assert(sale.product_id == nil
       or (math.type(sale.price) == "integer" and sale.price > 0 and math.type(sale.cap) == "integer"),
       "config.flash_sale needs price and cap (whole numbers) besides product_id; see examples/rules/flash_sale.lua")
local CODE = "flash_sale"

local function open(now) return sale.product_id ~= nil and starts and ends and now >= starts and now < ends end

local flash = { name = "flash_sale" }

-- The sale price, as a discount on the sale product's line.
function flash.quote(ctx, lines)
  if not open(ctx.now) then return nil end
  for _, l in ipairs(lines) do
    if l.product_id == sale.product_id and sale.price < l.price then
      return { { code = CODE, label = "Flash sale", product_id = l.product_id, amount = (sale.price - l.price) * l.qty } }
    end
  end
end

-- The cap: units sold at the sale price (this order's included) never exceed it. Also asked
-- when a payment arrives after the order closed: the sale may have sold out meanwhile.
function flash.check(ctx, lines)
  local at_sale_price = false
  for _, a in ipairs(ctx.adjustments) do at_sale_price = at_sale_price or a.code == CODE end
  if not at_sale_price then return nil end
  local qty = 0
  for _, l in ipairs(lines) do if l.product_id == sale.product_id then qty = l.qty end end
  local sold = db.one([[SELECT coalesce(sum(i.qty), 0) AS n FROM order_items i
                        JOIN orders o ON o.order_no = i.order_no
                        JOIN order_adjustments a ON a.order_no = i.order_no AND a.product_id = i.product_id AND a.code = ?
                        WHERE i.product_id = ? AND o.status <> 'CLOSED']], CODE, sale.product_id).n
  if sold + qty > (sale.cap or 0) then
    return { refuse = "sale_sold_out", message = "the flash sale is sold out; the product is back at its list price later" }
  end
end

-- At most per_order units of the sale product per order while the sale runs.
function flash.decide(openid, lines, ctx)
  if not open(ctx.now) then return { allow = true } end
  return { limit = { [sale.product_id] = sale.per_order or 1 }, message = "the flash sale's limit" }
end

return { flash }

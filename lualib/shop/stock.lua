-- stock: what a stock rule's decision means. A rule only decides; shop.orders.create moves
-- the units (stock → reserved) itself, so no rule can forget to reserve what it sells.
--
-- A rule is a function(openid, lines) that returns one decision, a table of one of these forms:
--   { allow = true }                                    take the units as ordered
--   { refuse = "sale_over", message = "..." }          409 {"error": "sale_over", "message": ...}
--   { limit = { [product_id] = n, ... }, message = "..." }
--                                                       allowed, but no line may ask for more than
--                                                       n units of that product: 409 limit_reached
-- Anything else (nil, a typo such as `refused`, two forms at once) is a mistake in the rule:
-- the order fails with a 500 and nothing is reserved.
local app = require "paygate"

local M = {}

local FORMS = { allow = true, refuse = true, limit = true }

local function invalid(why)
  error("the stock rule's decision " .. why .. " (see docs/shop.md, \"Stock rules\")", 0)
end

-- Which form the decision has; raises when it is not exactly one well-formed one.
local function form(d)
  if type(d) ~= "table" then invalid("is " .. type(d) .. ", not a table such as { allow = true }") end
  local found
  for k in pairs(d) do
    if FORMS[k] then
      if found then invalid("has both " .. found .. " and " .. k) end
      found = k
    elseif k ~= "message" then
      invalid("has an unknown field '" .. tostring(k) .. "'")
    end
  end
  if not found then invalid("says neither allow, refuse nor limit") end
  if d.message ~= nil and type(d.message) ~= "string" then invalid("has a message that is not a string") end
  if found == "allow" and d.allow ~= true then invalid("has allow that is not true") end
  if found == "refuse" and (type(d.refuse) ~= "string" or not d.refuse:match("^[%w_]+$")) then
    invalid("refuses with a code that is not a word like \"sale_over\"")
  end
  if found == "limit" then
    if type(d.limit) ~= "table" then invalid("has a limit that is not a table { [product_id] = n }") end
    for id, n in pairs(d.limit) do
      if math.type(id) ~= "integer" or math.type(n) ~= "integer" then
        invalid("has a limit that is not { [product_id] = whole number of units }")
      end
    end
  end
  return found
end

--- Apply a decision to lines ({product_id, qty, product} of an order): returns when the
--- order may take its units, raises the refusal's answer (app.fail 409) otherwise.
function M.enforce(decision, lines)
  local kind = form(decision)
  if kind == "refuse" then app.fail(409, decision.refuse, decision.message or decision.refuse) end
  if kind == "limit" then
    for _, l in ipairs(lines) do
      local max = decision.limit[l.product_id]
      if max and l.qty > max then
        app.fail(409, "limit_reached", string.format("%s (product %d): at most %d in this order%s",
          l.product.name, l.product_id, math.max(max, 0), decision.message and " (" .. decision.message .. ")" or ""))
      end
    end
  end
end

--- The rule used when a shop has none: every order may take what it asks for.
function M.allow_all() return { allow = true } end

-- Where an order's units are; orders written before the column existed go by their status.
local UNITS = [[coalesce(o.units, CASE WHEN o.status IN ('CREATED', 'PAYING') THEN 'reserved'
                                      WHEN o.status = 'CLOSED' THEN 'released' ELSE 'sold' END)]]

--- Recompute every product's reserved and sold from the orders: reserved is what open orders
--- hold, sold what paid orders took less the units their refunds put back. stock (what is for
--- sale) is the operator's count and stays. Run it when the columns disagree with the orders
--- (paygate_stock_mismatch_total counts each disagreement a transition met). Runs in its own
--- transaction; returns the products it changed: { product_id, name, reserved = {was, now},
--- sold = {was, now} }.
function M.recompute()
  return db.tx(function()
    local changed = json.array()
    for _, p in ipairs(db.query("SELECT id, name, reserved, sold FROM products ORDER BY id")) do
      local held = db.one([[SELECT coalesce(sum(i.qty), 0) AS n FROM order_items i JOIN orders o ON o.order_no = i.order_no
                            WHERE i.product_id = ? AND ]] .. UNITS .. " = 'reserved'", p.id).n
      local sold = db.one([[SELECT coalesce(sum(i.qty), 0) AS n FROM order_items i JOIN orders o ON o.order_no = i.order_no
                            WHERE i.product_id = ? AND ]] .. UNITS .. " = 'sold'", p.id).n
      local back = db.one("SELECT coalesce(sum(restocked), 0) AS n FROM refund_items WHERE product_id = ?", p.id).n
      sold = sold - back
      if held ~= p.reserved or sold ~= p.sold then
        db.exec("UPDATE products SET reserved = ?, sold = ?, updated_at = ? WHERE id = ?", held, sold, clock.now(), p.id)
        changed[#changed + 1] = { product_id = p.id, name = p.name, reserved = { p.reserved, held }, sold = { p.sold, sold } }
        log.warn("stock recomputed from the orders", { product = p.id, reserved = p.reserved .. ">" .. held,
                                                        sold = p.sold .. ">" .. sold })
        metrics.inc("paygate_stock_recomputed_total")
      end
    end
    return changed
  end)
end

return M

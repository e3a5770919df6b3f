-- Rules: some products are sold on their own only (gift cards, pre-orders ...).
-- config.mixed_cart = { alone = { 4 } }: an order with one of them and anything else is
-- refused (409 mixed_cart) before anything is reserved. Copy over scripts/rules.lua.
local alone = {}
for _, id in ipairs((config.mixed_cart or {}).alone or {}) do alone[id] = true end

local cart = { name = "mixed_cart" }

function cart.check(ctx, lines)
  if #lines < 2 then return nil end
  for _, l in ipairs(lines) do
    if alone[l.product_id] then
      return { refuse = "mixed_cart", message = l.name .. " is sold on its own: order it separately" }
    end
  end
end

return { cart }

-- Rules: "10% off from 100 yuan". config.threshold_discount = { from = 10000, percent = 10 }:
-- an order whose price so far is at least `from` fen gets `percent` off the whole order (an
-- order adjustment, rounded down to the fen). Copy over scripts/rules.lua; to keep the
-- library's coupons too, list require("shop.coupons").piece after it (a coupon then applies
-- to the discounted total).
local t = config.threshold_discount or {}
local FROM, PERCENT = t.from or 10000, t.percent or 10

local discount = { name = "threshold_discount" }

function discount.quote(ctx, lines)
  if ctx.total < FROM then return nil end
  return { { code = "threshold_discount", label = string.format("%d%% off from %d yuan", PERCENT, FROM // 100),
             amount = -(ctx.total * PERCENT // 100) } }
end

return { discount }

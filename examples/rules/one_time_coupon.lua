-- Rules: a welcome coupon, once per person — our own coupon logic in place of the library's
-- (shop.coupons), on the same hooks. config.welcome = { code = "WELCOME", off = 1000 }: an
-- order sent with {"coupon": "WELCOME"} gets `off` fen off (never all of it). The redemption
-- is the order's own adjustment, recorded in the order's transaction: while that order is
-- open or paid the code is used; once it closes (expired, cancelled) the code can be used
-- again. Any other code is 409 coupon_invalid. Copy over scripts/rules.lua.
local w = config.welcome or {}
local CODE, OFF = w.code or "WELCOME", w.off or 1000

local welcome = { name = "welcome_coupon" }

local function used_by(openid)
  return db.one([[SELECT count(*) AS n FROM order_adjustments a JOIN orders o ON o.order_no = a.order_no
                  WHERE a.code = 'welcome' AND o.openid = ? AND o.status <> 'CLOSED']], openid).n > 0
end

function welcome.quote(ctx, lines)
  if ctx.body.coupon ~= CODE then return nil end
  return { { code = "welcome", label = "Welcome coupon", amount = -math.min(OFF, ctx.total - 1) } }
end

-- Also asked when a payment arrives after the order closed: if the code went to another
-- order of the same person meanwhile, the money goes back.
function welcome.check(ctx, lines)
  local code = ctx.body.coupon
  if code == nil then return nil end
  if code ~= CODE then return { refuse = "coupon_invalid", message = "there is no coupon " .. tostring(code) } end
  if used_by(ctx.openid) then
    return { refuse = "coupon_already_used", message = "the welcome coupon is for one order per person" }
  end
end

return { welcome }

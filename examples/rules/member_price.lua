-- Rules: members pay a member price. config.member_price = { percent = 80, members = {
-- "oMember..." } }: a member pays `percent` % of the list price of every product (rounded down
-- to the fen per unit), shown as a line adjustment in the order and as display_price in the
-- product list of a logged-in member. A real shop would look its members up in its own table
-- (db.one("SELECT 1 FROM members WHERE openid = ?", ctx.openid)). Copy over scripts/rules.lua.
local mp = config.member_price or {}
local PERCENT = mp.percent or 90
local members = {}
for _, openid in ipairs(mp.members or {}) do members[openid] = true end

local member = { name = "member_price" }

function member.quote(ctx, lines)
  if not (ctx.openid and members[ctx.openid]) then return nil end
  local out = {}
  for _, l in ipairs(lines) do
    local unit = l.price * PERCENT // 100
    if unit < l.price then
      out[#out + 1] = { code = "member_price", label = "Member price", product_id = l.product_id,
                        amount = (unit - l.price) * l.qty }
    end
  end
  return out
end

return { member }

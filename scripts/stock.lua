-- The stock rule: which orders may take units off the shelf. Edit freely; it reloads live.
--
-- decide(openid, lines) runs inside the order's transaction, before anything is reserved.
-- lines is a list of { product_id, qty, product = <products row> } sorted by product_id.
-- It only decides, returning one of:
--   { allow = true }                                    reserve as ordered
--   { refuse = "code", message = "why" }               409 {"error": code, "message": why}
--   { limit = { [product_id] = n }, message = "why" }   at most n units of that product (409 limit_reached)
-- The library then reserves the units itself (409 out_of_stock when there are too few).
-- examples/stock-rules/ has other rules (a per-user limit, a flash-sale window); docs/shop.md
-- explains the format.
local rule = {}

function rule.decide(openid, lines)
  return { allow = true }           -- plain stock: anyone may buy what is left
end

return rule

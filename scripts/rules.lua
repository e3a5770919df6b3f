-- Our order rules: pieces the shop library asks while an order is priced, checked, placed,
-- paid, closed and refunded (docs/shop.md, "Hooks"). Each piece is a table of some of:
--   quote(ctx, lines)      → adjustments {code, label, amount <= 0, product_id?}: our prices
--   check(ctx, lines)      → nil, or { refuse = "code", message = "why", status = 409 }
--   decide(openid, lines, ctx) → a stock decision (like stock.lua's)
--   claim(ctx, order, lines), release(order, reason)   our own records, in the order's transaction
--   on_paid(ev), on_closed(ev), on_refunded(ev), on_refund_failed(ev)   once per event, may wait
-- They run in the order listed. Edit freely; the gateway reloads it live. examples/rules/ has
-- tested pieces to copy (a member price, a flash sale, a threshold discount, an ERP hook ...).
--
-- shop.coupons: codes from POST /admin/coupons, sent as {"coupon": "CODE"} with an order.
return {
  require("shop.coupons").piece,
}

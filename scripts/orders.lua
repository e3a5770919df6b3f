-- Orders: the routes of the mini program's purchase. Each one is a call into lualib/shop,
-- which keeps the money right (prices, stock, WeChat); what is ours to choose is here, in
-- stock.lua and in rules.lua.
local app = require "paygate"
local auth = require "shop.auth"
local closing = require "shop.closing"
local idempotency = require "shop.idempotency"
local orders = require "shop.orders"
local payments = require "shop.payments"

-- POST /api/quote {items: [{product_id, qty}], coupon?}: what the order would cost, with our
-- adjustments, without placing it (nothing is reserved). The same refusals as an order's checks.
app.post("/api/quote", function(req)
  local openid = auth.user(req)
  local body = app.read_json(req)
  return 200, orders.quote{ openid = openid, items = body.items, body = body }
end)

-- POST /api/orders {items: [{product_id, qty}], coupon?, channel?}: priced from our products table and
-- our rules, checked, the units reserved. The same Idempotency-Key gets the same answer again.
app.post("/api/orders", function(req)
  local openid = auth.user(req)
  local body = app.read_json(req)
  return idempotency.run(req, openid, function()
    local order = orders.create{ openid = openid, items = body.items, body = body, channel = body.channel }
    return 201, orders.view(order)
  end)
end)

-- GET /api/orders/{no}: a PAYING order is checked with WeChat first.
app.get("/api/orders/{order_no}", function(req)
  local order = payments.refresh(req.params.order_no, auth.user(req))
  return 200, orders.view(order)
end)

-- POST /api/orders/{no}/pay: what wx.requestPayment takes.
app.post("/api/orders/{order_no}/pay", function(req)
  return 200, payments.pay(req.params.order_no, auth.user(req))
end)

-- POST /api/orders/{no}/cancel: closed at WeChat first, then the stock is back on sale.
app.post("/api/orders/{order_no}/cancel", function(req)
  local order = closing.cancel(req.params.order_no, auth.user(req))
  return 200, orders.view(order)
end)

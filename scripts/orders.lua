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

-- GET /api/orders?limit=&before=: the caller's own orders, newest first, a page at a time;
-- `next` (when more remain) is the `before` of the next page. The mini program finds here an
-- order it lost track of (killed mid-payment). Stored as they are: WeChat is not asked.
app.get("/api/orders", function(req)
  local openid = auth.user(req)
  local limit = app.query(req, "limit")
  if limit then
    limit = math.tointeger(tonumber(limit))
    if not limit or limit < 1 then
      app.fail(400, "invalid_request", "limit must be a whole number from 1 to " .. orders.LIST_MAX)
    end
    limit = math.min(limit, orders.LIST_MAX)
  end
  local before = app.query(req, "before")
  local rows, next_no = orders.list_owned(openid, { limit = limit, before = before })
  local list = json.array()
  for _, o in ipairs(rows) do list[#list + 1] = orders.view(o) end
  return 200, { orders = list, next = next_no }
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

-- Orders: a user picks products; the server prices them, reserves the stock and saves the order.
local app = require "paygate"
local auth = require "shop.auth"
local idempotency = require "shop.idempotency"
local orders = require "shop.orders"
local closing = require "shop.closing"
local payments = require "shop.payments"
local stock = require "stock"

local MAX_LINES = 20
local TTL_S = config.order_ttl_s or 900          -- how long an unpaid order holds its stock
assert(TTL_S >= 300 or config.test_mode, "order_ttl_s must be at least 300 (WeChat's close needs 5 minutes)")

-- Check the items of a new order and price them from our own table (the client never sends prices).
local function priced_lines(items)
  if type(items) ~= "table" or #items == 0 or #items > MAX_LINES then
    app.fail(400, "invalid_request", "items must be a list of 1 to " .. MAX_LINES .. " {product_id, qty}")
  end
  local lines, seen = {}, {}
  for i, it in ipairs(items) do
    if type(it) ~= "table" then app.fail(400, "invalid_request", "item " .. i .. " is not an object") end
    local id = app.integer(it.product_id, 1, 2 ^ 31, "items[" .. i .. "].product_id")
    if seen[id] then app.fail(400, "invalid_request", "product " .. id .. " appears twice; put the quantity in one line") end
    seen[id] = true
    local product = db.one("SELECT * FROM products WHERE id = ?", id)
    if not product then app.fail(400, "invalid_request", "there is no product " .. id) end
    local qty = app.integer(it.qty, 1, product.max_per_order, "items[" .. i .. "].qty")
    lines[#lines + 1] = { product_id = id, qty = qty, product = product }
  end
  table.sort(lines, function(a, b) return a.product_id < b.product_id end)  -- one lock order
  return lines
end

local function describe(lines)
  local text = lines[1].product.name .. (#lines > 1 and (" and " .. (#lines - 1) .. " more") or "")
  return #text <= 120 and text or text:sub(1, 120)
end

app.post("/api/orders", function(req)
  local openid = auth.user(req)
  local body = app.read_json(req)
  return idempotency.run(req, openid, function()
    local order = db.tx(function()
      local lines = priced_lines(body.items)
      local amount = 0
      for _, l in ipairs(lines) do amount = amount + l.qty * l.product.price end
      stock.reserve(openid, lines)
      local now = clock.now()
      local no = "PG" .. secure.random_id(12)     -- 96 random bits: unguessable, 26 chars
      db.exec([[INSERT INTO orders(order_no, openid, status, amount, description, created_at, expires_at, updated_at)
                VALUES (?, ?, 'CREATED', ?, ?, ?, ?, ?)]], no, openid, amount, describe(lines), now, now + TTL_S * 1000, now)
      for _, l in ipairs(lines) do
        db.exec("INSERT INTO order_items(order_no, product_id, name, qty, price) VALUES (?, ?, ?, ?, ?)",
                no, l.product_id, l.product.name, l.qty, l.product.price)
      end
      jobs.schedule("expire_order", { order_no = no }, { run_at = now + TTL_S * 1000, key = "expire:" .. no,
                                                                   max_attempts = 1000 })   -- until WeChat answers
      metrics.inc("paygate_orders_total", { status = "CREATED" })
      return orders.load(no)
    end)
    return 201, orders.view(order)
  end)
end)

-- Reading a PAYING order asks WeChat first (at most every few seconds per order), so the
-- mini program learns the truth right after wx.requestPayment returns.
local ASK_AFTER_MS = (config.status_query_after_s or 3) * 1000
local ASK_EVERY_MS = (config.status_query_every_s or 5) * 1000

app.get("/api/orders/{order_no}", function(req)
  local openid = auth.user(req)
  local order = orders.load_owned(req.params.order_no, openid)
  if not order then app.fail(404, "not_found", "no such order") end
  local now = clock.now()
  if order.status == "PAYING" and now - (order.prepay_at or 0) >= ASK_AFTER_MS
     and now - (order.checked_at or 0) >= ASK_EVERY_MS then
    db.exec("UPDATE orders SET checked_at = ? WHERE order_no = ?", now, order.order_no)
    local outcome, why = payments.query_and_apply(order.order_no)
    if not outcome then log.warn("status query failed", { order = order.order_no, reason = why }) end
    order = orders.load(order.order_no)
  end
  return 200, orders.view(order)
end)

-- The user gives up: close at WeChat first; only then is the stock released.
app.post("/api/orders/{order_no}/cancel", function(req)
  local openid = auth.user(req)
  local order = orders.load_owned(req.params.order_no, openid)
  if not order then app.fail(404, "not_found", "no such order") end
  if not orders.OPEN[order.status] then
    app.fail(409, "not_cancellable", "the order is " .. order.status)
  end
  local result, why = closing.close(order, "cancelled")
  if result == "unknown" then
    app.fail(502, "upstream_error", "WeChat could not confirm the close (" .. tostring(why) .. "); try again")
  end
  order = orders.load(order.order_no)
  if order.status ~= "CLOSED" then
    app.fail(409, "not_cancellable", "the order was paid meanwhile; it is " .. order.status)
  end
  return 200, orders.view(order)
end)

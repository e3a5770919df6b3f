-- What the game asks of its shop (paygate_call in game.c) and what it tells it (paygate_emit).
local app = require "paygate"
local orders = require "shop.orders"
local timefmt = require "timefmt"
local wechatpay = require "wechatpay"

local TTL_S = config.order_ttl_s or 900    -- an unpaid order holds its item this long

-- login {player, code}: the code from wx.login in the WeChat mini game → the player's openid.
app.export("login", function(a)
  local player = app.integer(a.player, 1, 2 ^ 31, "player")
  if type(a.code) ~= "string" then app.fail(400, "invalid_request", "code (from wx.login) is required") end
  local user, why = wechatpay.login(a.code)
  if not user then app.fail(why == "invalid_code" and 400 or 502, why, "WeChat login failed") end
  db.exec([[INSERT INTO players(player, openid, updated_at) VALUES (?, ?, ?)
            ON CONFLICT(player) DO UPDATE SET openid = excluded.openid, updated_at = excluded.updated_at]],
          player, user.openid, clock.now())
  return { player = player, openid = user.openid }
end)

-- buy {player, item}: an order for one item, placed at WeChat Pay → what wx.requestPayment takes.
app.export("buy", function(a)
  local player = app.integer(a.player, 1, 2 ^ 31, "player")
  local item = app.integer(a.item, 1, 2 ^ 31, "item")
  local who = db.one("SELECT openid FROM players WHERE player = ?", player)
  if not who then app.fail(404, "unknown_player", "player " .. player .. " has not logged in with WeChat") end
  local order = db.tx(function()
    local product = db.one("SELECT * FROM products WHERE id = ?", item)
    if not product then app.fail(404, "unknown_item", "there is no item " .. item) end
    local lines = { { product_id = item, qty = 1 } }
    if orders.move(lines, "stock", "reserved") then app.fail(409, "sold_out", product.name .. " is sold out") end
    local now, no = clock.now(), "GM" .. secure.random_id(12)
    db.exec([[INSERT INTO orders(order_no, openid, status, amount, description, created_at, expires_at, updated_at)
              VALUES (?, ?, 'CREATED', ?, ?, ?, ?, ?)]], no, who.openid, product.price, product.name, now,
            now + TTL_S * 1000, now)
    db.exec("INSERT INTO order_items(order_no, product_id, name, qty, price) VALUES (?, ?, ?, 1, ?)",
            no, item, product.name, product.price)
    db.exec("INSERT INTO purchases(order_no, player, item) VALUES (?, ?, ?)", no, player, item)
    jobs.schedule("expire_order", { order_no = no }, { run_at = now + TTL_S * 1000, key = "expire:" .. no })
    return orders.load(no)
  end)

  local res, why = wechatpay.jsapi_prepay({
    out_trade_no = order.order_no, description = order.description, amount = order.amount,
    openid = who.openid, time_expire = timefmt.rfc3339(order.expires_at),
  })
  if not res or res.status ~= 200 or type(res.body) ~= "table" then
    -- The order stays CREATED; its expiry closes it at WeChat and puts the item back.
    app.fail(502, "upstream_error", "WeChat Pay did not take the order (" .. tostring(why or res.code) .. ")")
  end
  local prepay_id = res.body.prepay_id
  db.exec([[UPDATE orders SET status = 'PAYING', prepay_id = ?, prepay_at = ?, updated_at = ?
            WHERE order_no = ? AND status = 'CREATED']], prepay_id, clock.now(), clock.now(), order.order_no)
  return { order_no = order.order_no, item = item, amount = order.amount, pay = wechatpay.pay_params(prepay_id) }
end)

-- The game's designers change a price live: later orders use it.
app.on("set_price", function(e)
  local item = app.integer(e.item, 1, 2 ^ 31, "item")
  local price = app.integer(e.price, 1, 100000000, "price")
  db.exec("UPDATE products SET price = ?, updated_at = ? WHERE id = ?", price, clock.now(), item)
  log.info("price changed", { item = item, price = price })
end)

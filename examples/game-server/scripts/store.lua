-- What the game asks of its shop (paygate_call in game.c) and what it tells it (paygate_emit).
-- Orders and payment are lualib/shop's, the same code as the standalone shop's.
local app = require "paygate"
local orders = require "shop.orders"
local payments = require "shop.payments"
local wechatpay = require "wechatpay"

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

-- buy {player, item, channel?}: an order for one item, placed at WeChat Pay → what the game's
-- client pays with: channel "app" (the default: the game on a phone, APP pay) gives the
-- OpenSDK's PayReq; "miniprogram" (the WeChat mini game) gives what wx.requestPayment takes.
app.export("buy", function(a)
  local player = app.integer(a.player, 1, 2 ^ 31, "player")
  local item = app.integer(a.item, 1, 2 ^ 31, "item")
  local channel = a.channel or "app"
  if channel ~= "app" and channel ~= "miniprogram" then
    app.fail(400, "invalid_request", "channel must be app or miniprogram")
  end
  local who = db.one("SELECT openid FROM players WHERE player = ?", player)
  if not who then app.fail(404, "unknown_player", "player " .. player .. " has not logged in with WeChat") end
  if not db.one("SELECT id FROM products WHERE id = ?", item) then
    app.fail(404, "unknown_item", "there is no item " .. item)
  end
  local order = db.tx(function()                -- the order and who gets the item, together
    local o = orders.create{ openid = who.openid, items = { { product_id = item, qty = 1 } }, prefix = "GM",
                             channel = channel }
    db.exec("INSERT INTO purchases(order_no, player, item) VALUES (?, ?, ?)", o.order_no, player, item)
    return o
  end)
  -- If WeChat does not take it (502), the order stays CREATED and its expiry puts the item back.
  local pay = payments.pay(order.order_no, who.openid)
  return { order_no = order.order_no, item = item, amount = order.amount, channel = channel, pay = pay }
end)

-- The game's designers change a price live: later orders use it.
app.on("set_price", function(e)
  local item = app.integer(e.item, 1, 2 ^ 31, "item")
  local price = app.integer(e.price, 1, 100000000, "price")
  db.exec("UPDATE products SET price = ?, updated_at = ? WHERE id = ?", price, clock.now(), item)
  log.info("price changed", { item = item, price = price })
end)

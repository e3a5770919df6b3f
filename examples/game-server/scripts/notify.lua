-- WeChat Pay's notifications arrive on the game's HTTP port (notify_url in game.conf.lua);
-- lualib/shop verifies, checks and applies them at most once, 204 only after the commit.
local app = require "paygate"
local notifications = require "shop.notifications"

app.post("/wechat/notify/pay", function(req) return notifications.handle("pay", req) end)
app.post("/wechat/notify/refund", function(req) return notifications.handle("refund", req) end)

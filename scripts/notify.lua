-- WeChat's notifications (the notify_url and refund_notify_url of the config): checked,
-- applied at most once and answered by lualib/shop.
local app = require "paygate"
local notifications = require "shop.notifications"

app.post("/wechat/notify/pay", function(req) return notifications.handle("pay", req) end)
app.post("/wechat/notify/refund", function(req) return notifications.handle("refund", req) end)

-- init.lua — a local stand-in for WeChat Pay APIv3 (and jscode2session), running on paygate itself.
--
-- Start it with:  build/paygate-sandbox --config examples/sandbox/sandbox.conf.lua
-- (examples/sandbox/keys.sh makes the test keys it needs; examples/run-demo.sh does both.)
--
--   wx/state.lua     tables, settings, the business clock
--   wx/protocol.lua  keys, WeChat Pay's error bodies, signed answers, the request checks
--   wx/faults.lua    failures on demand
--   wx/orders.lua    orders, prepay_ids, payment, refunds
--   wx/notify.lua    notifications and their retry schedule
--   wx/api.lua       the /v3 endpoints
--   wx/control.lua   the user (pay, login) and the /sandbox controls
--   wx/bills.lua     the daily trade and fund flow bills, and controls to make them disagree

local state = require "wx.state"
require "wx.api"
require "wx.control"
require "wx.bills"        -- the daily bills (wx/bills.lua)

log.info("WeChat Pay sandbox loaded", {
  mchid = state.mchid, appid = state.appid, mode = state.mode, clock_speed = state.setting("clock_speed", 1),
})

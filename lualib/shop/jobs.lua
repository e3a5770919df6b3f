-- jobs: the shop's durable jobs, declared in one call so every shop built on lualib/shop
-- (the gateway's scripts, the game server) runs the same money steps in the background.
-- The job names are stored in the jobs table of existing databases: never rename them.
local app = require "paygate"
local closing = require "shop.closing"
local events = require "shop.events"
local fulfillment = require "shop.fulfillment"
local orders = require "shop.orders"
local payments = require "shop.payments"
local reconcile_bills = require "shop.reconcile_bills"
local refunds = require "shop.refunds"
local schema = require "shop.schema"

local M = {}

--- Declare the shop's jobs. o.deliver: function(order, items), what delivering a paid order
--- means (see shop.fulfillment). Also checks the order_ttl_s setting and that the host
--- declared the library's table changes (shop.schema.declare), so a scripts set with a bad
--- setting or a missing migration is refused at load (the running one keeps serving).
---   expire_order     at expires_at: close at WeChat, then release the stock (shop.closing)
---   reconcile_order  a PAYING order without notification: ask WeChat (shop.payments)
---   fulfill          a paid order: o.deliver, exactly once (shop.fulfillment)
---   submit_refund, query_refund   a refund: send it, then follow it (shop.refunds)
---   order_event      paid, closed, refunded, refund_failed: the on_<event> hooks, once (shop.events)
---   reconcile_daily, reconcile_bills   a day against WeChat's trade bill (shop.reconcile_bills)
function M.install(o)
  assert(type(o) == "table" and type(o.deliver) == "function", "shop.jobs.install{ deliver = function(order, items) }")
  orders.ttl_s()
  schema.check_declared()
  app.job("expire_order", function(p)
    local result = closing.expire(p.order_no)
    if result then log.info("order expired", { order = p.order_no, result = result }) end
  end)
  app.job("reconcile_order", function(p) payments.reconcile(p.order_no, p.attempt) end)
  app.job("fulfill", function(p) fulfillment.run(p.order_no, o.deliver) end)
  app.job("submit_refund", function(p) refunds.submit(p.out_refund_no) end)
  app.job("query_refund", function(p) refunds.query(p.out_refund_no) end)
  app.job("order_event", function(p) events.run(p.id) end)
  app.job("reconcile_bills", function(p) reconcile_bills.run(p.date) end)
  app.job("reconcile_daily", function() reconcile_bills.daily() end)
  reconcile_bills.start()
end

return M

-- Unpaid orders: closed when they expire, and asked about when WeChat stays silent.
local app = require "paygate"
local closing = require "shop.closing"
local orders = require "shop.orders"
local payments = require "shop.payments"

-- At expires_at: close at WeChat first; stock comes back only when WeChat confirms.
-- An unknown outcome (network, 5xx) raises, so the job runs again later with backoff.
app.job("expire_order", function(p)
  local result = closing.expire(p.order_no)
  if result then log.info("order expired", { order = p.order_no, result = result }) end
end)

-- A PAYING order whose notification has not come: ask WeChat, first after about a
-- minute, then less and less often, until it is paid or closed.
local BACKOFF_S = { 60, 120, 300, 600, 1800, 3600 }

app.job("reconcile_order", function(p)
  local order = orders.load(p.order_no)
  if not order or order.status ~= "PAYING" then return end
  local outcome, why = payments.query_and_apply(order.order_no)
  if not outcome then error("query failed: " .. tostring(why), 0) end
  order = orders.load(order.order_no)
  if order.status == "PAYING" and clock.now() < order.expires_at + 3600 * 1000 then
    local attempt = (p.attempt or 1) + 1
    local wait = BACKOFF_S[math.min(attempt, #BACKOFF_S)] * 1000 // (config.test_mode and 60 or 1)
    jobs.schedule("reconcile_order", { order_no = order.order_no, attempt = attempt },
                  { delay_ms = wait, key = "reconcile:" .. order.order_no .. ":" .. attempt })
  end
  log.info("reconciled", { order = order.order_no, outcome = outcome, status = order.status })
end)

-- Bench-only routes, added to a copy of the shop's scripts by tests/bench/shop.sh: orders put in
-- PAYING in bulk (as if WeChat's prepay had answered), one per payment notification to replay.
local app = require "paygate"
local orders = require "shop.orders"

-- POST /bench/paying {first, n}: n orders of one unit each, for openids bench<first+1> .. bench<first+n>.
app.post("/bench/paying", function(req)
  local b = app.read_json(req)
  local made = db.tx(function()        -- one transaction for the lot: each order is a savepoint in it
    local out = {}
    for i = b.first + 1, b.first + b.n do
      local order = orders.create{ openid = "bench" .. i, items = { { product_id = 1 + i % 5, qty = 1 } } }
      db.exec("UPDATE orders SET status = 'PAYING', prepay_id = ?, prepay_at = ?, updated_at = ? WHERE order_no = ?",
              "wx" .. order.order_no, clock.now(), clock.now(), order.order_no)
      out[#out + 1] = { order_no = order.order_no, amount = order.amount, openid = "bench" .. i }
    end
    return out
  end)
  return 200, { orders = made }
end)

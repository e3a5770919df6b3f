-- WeChat Pay's payment notification: verified and decrypted by the engine, checked against
-- our order, applied at most once, answered 204 only after the change is committed.
local app = require "paygate"
local payments = require "shop.payments"
local wechatpay = require "wechatpay"

app.post("/wechat/notify/pay", function(req)
  local tx, envelope = wechatpay.notification(req)
  if not tx then
    payments.log("pay", nil, nil, "refused", envelope)
    return 401, { code = "FAIL", message = "verification failed: " .. envelope }
  end
  local outcome, reason = db.tx(function()
    local order, why = payments.check(tx)
    if not order then
      payments.log("pay", envelope.id, tx.out_trade_no, "refused", why)
      return nil, why
    end
    local first = db.exec([[INSERT INTO processed_notifications(id, kind, order_no, outcome, received_at)
                            VALUES (?, 'pay', ?, 'applied', ?) ON CONFLICT(id) DO NOTHING]],
                          envelope.id, order.order_no, clock.now())
    if first == 0 then return "duplicate" end
    local result = payments.apply(order, tx)             -- PAID: queues the "fulfill" job
    payments.log("pay", envelope.id, order.order_no, result, nil)
    return result
  end)
  if not outcome then return 400, { code = "FAIL", message = "refused: " .. reason } end
  return 204
end)

-- WeChat's notifications: verified and decrypted by the core, checked against our order,
-- applied at most once, and answered 204 only after the change is committed.
local app = require "paygate"
local payments = require "shop.payments"
local refunds = require "shop.refunds"
local wechatpay = require "wechatpay"

-- WeChat retries anything that is not 200/204, with this body shape.
local function refuse(status, message)
  return status, { code = "FAIL", message = message }
end

app.post("/wechat/notify/pay", function(req)
  local tx, envelope, detail = wechatpay.notification(req)
  if not tx then
    local reason = envelope                           -- bad_signature, stale_timestamp, ...
    payments.log("pay", nil, nil, "refused", reason)
    return refuse(401, "verification failed: " .. reason)
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
    if first == 0 then                              -- this very notification was applied before
      payments.log("pay", envelope.id, order.order_no, "duplicate", nil)
      return "duplicate"
    end
    local result = payments.apply(order, tx)
    payments.log("pay", envelope.id, order.order_no, result, nil)
    return result
  end)
  if not outcome then
    -- Not ours, or it does not match our order: recorded, nothing changed; WeChat retries.
    log.error("payment notification refused", { reason = reason, order = tx.out_trade_no, id = envelope.id })
    return refuse(400, "refused: " .. reason)
  end
  return 204
end)

app.post("/wechat/notify/refund", function(req)
  local r, envelope = wechatpay.notification(req)
  if not r then
    payments.log("refund", nil, nil, "refused", envelope)
    return refuse(401, "verification failed: " .. envelope)
  end
  local done, why = db.tx(function()
    local ok, reason = refunds.check(r)
    if not ok then
      payments.log("refund", envelope.id, r.out_trade_no, "refused", reason)
      return nil, reason
    end
    local first = db.exec([[INSERT INTO processed_notifications(id, kind, order_no, outcome, received_at)
                            VALUES (?, 'refund', ?, 'applied', ?) ON CONFLICT(id) DO NOTHING]],
                          envelope.id, r.out_trade_no, clock.now())
    if first == 1 then
      refunds.apply(r)
      payments.log("refund", envelope.id, r.out_trade_no, "applied", r.refund_status)
    end
    return true
  end)
  if not done then return refuse(400, "refused: " .. why) end
  return 204
end)

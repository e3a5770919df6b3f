-- WeChat's notifications: verified and decrypted by the core, checked against our records,
-- applied at most once, and answered 204 only after the change is committed.
local app = require "paygate"
local payments = require "shop.payments"
local refunds = require "shop.refunds"
local wechatpay = require "wechatpay"

-- One notification, start to end. `check(resource)` returns what it concerns (or nil, why);
-- `apply(resource, subject)` changes our state and returns the outcome to record.
local function handle(kind, req, check, apply)
  local resource, envelope = wechatpay.notification(req)
  if not resource then
    local reason = envelope                          -- bad_signature, stale_timestamp, ...
    payments.log(kind, nil, nil, "refused", reason)
    return 401, { code = "FAIL", message = "verification failed: " .. reason }   -- WeChat will retry
  end
  local order_no = resource.out_trade_no
  local outcome, why = db.tx(function()
    local subject, reason = check(resource)
    if not subject then
      payments.log(kind, envelope.id, order_no, "refused", reason)
      return nil, reason
    end
    local first = db.exec([[INSERT INTO processed_notifications(id, kind, order_no, outcome, received_at)
                            VALUES (?, ?, ?, 'applied', ?) ON CONFLICT(id) DO NOTHING]],
                          envelope.id, kind, order_no, clock.now())
    local result = first == 1 and apply(resource, subject) or "duplicate"   -- the same id again
    payments.log(kind, envelope.id, order_no, result, nil)
    return result
  end)
  if not outcome then
    -- Not ours, or it does not match our records: recorded, nothing changed, WeChat retries.
    log.error(kind .. " notification refused", { reason = why, order = order_no, id = envelope.id })
    return 400, { code = "FAIL", message = "refused: " .. why }
  end
  return 204
end

app.post("/wechat/notify/pay", function(req)
  return handle("pay", req, payments.check, function(tx, order) return payments.apply(order, tx) end)
end)

app.post("/wechat/notify/refund", function(req)
  return handle("refund", req, refunds.check, function(r) return "refund_" .. string.lower(refunds.apply(r)) end)
end)

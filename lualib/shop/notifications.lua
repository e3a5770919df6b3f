-- notifications: WeChat Pay's payment and refund notifications, start to end. Verified and
-- decrypted by the core, checked against our records, applied at most once (by notification
-- id; a payment also by transaction id), and answered 204 only after the change is committed.
local payments = require "shop.payments"
local refunds = require "shop.refunds"
local wechatpay = require "wechatpay"

local M = {}

-- kind → what the resource concerns (check: subject or nil, why) and how it is applied
-- (apply: the outcome to record).
local KINDS = {
  pay = {
    check = payments.check,
    apply = function(tx, order) return payments.apply(order, tx, "notification") end,
  },
  refund = {
    check = refunds.check,
    apply = function(r) return "refund_" .. string.lower(refunds.apply(r)) end,
  },
}

--- Handle one notification request of `kind` ("pay" or "refund"): returns the status and
--- body to answer WeChat with. 204 once applied (or when it was applied before); 401 when
--- it does not verify, 400 when it does not match our records — both change nothing and are
--- recorded in notification_log, and WeChat sends them again later. Waits for nothing
--- outside the database, so it can answer within WeChat's 5 s.
function M.handle(kind, req)
  local k = assert(KINDS[kind], "notifications.handle: kind must be \"pay\" or \"refund\"")
  local resource, envelope = wechatpay.notification(req)
  if not resource then
    local reason = envelope                          -- bad_signature, stale_timestamp, ...
    payments.log(kind, nil, nil, "refused", reason)
    return 401, { code = "FAIL", message = "verification failed: " .. reason }   -- WeChat will retry
  end
  local order_no = resource.out_trade_no
  local outcome, why = db.tx(function()
    local subject, reason = k.check(resource)
    if not subject then
      payments.log(kind, envelope.id, order_no, "refused", reason)
      return nil, reason
    end
    local first = db.exec([[INSERT INTO processed_notifications(id, kind, order_no, outcome, received_at)
                            VALUES (?, ?, ?, 'applied', ?) ON CONFLICT(id) DO NOTHING]],
                          envelope.id, kind, order_no, clock.now())
    local result = first == 1 and k.apply(resource, subject) or "duplicate"   -- the same id again
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

return M

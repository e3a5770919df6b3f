-- Pay: create WeChat's order (JSAPI prepay) once, and hand the mini program the signed
-- parameters for wx.requestPayment. Asking twice reuses the same prepay_id while it is valid.
local app = require "paygate"
local auth = require "shop.auth"
local orders = require "shop.orders"
local timefmt = require "timefmt"
local wechatpay = require "wechatpay"

local PREPAY_LIFE_MS = 110 * 60 * 1000     -- WeChat keeps a prepay_id 2 hours; renew a little before
local RECONCILE_AFTER_MS = (config.reconcile_after_s or 60) * 1000
local MIN_TIME_LEFT_MS = (config.min_pay_window_s or 60) * 1000   -- WeChat wants time_expire a minute away

app.post("/api/orders/{order_no}/pay", function(req)
  local openid = auth.user(req)
  local order = orders.load_owned(req.params.order_no, openid)
  if not order then app.fail(404, "not_found", "no such order") end
  local now = clock.now()
  if not orders.OPEN[order.status] or order.expires_at - now < MIN_TIME_LEFT_MS then
    app.fail(409, "not_payable", "the order is " .. (orders.OPEN[order.status] and "about to expire" or order.status))
  end
  if order.prepay_id and now - order.prepay_at < PREPAY_LIFE_MS then
    return 200, wechatpay.pay_params(order.prepay_id)
  end

  local res, why, msg = wechatpay.jsapi_prepay({
    out_trade_no = order.order_no, description = order.description, amount = order.amount,
    openid = openid, time_expire = timefmt.rfc3339(order.expires_at),
  })
  if not res or res.status ~= 200 or type(res.body) ~= "table" or type(res.body.prepay_id) ~= "string" then
    if res and (res.code == "ORDERPAID" or res.code == "ORDER_CLOSED") then
      app.fail(409, "not_payable", "WeChat says the order is " .. (res.code == "ORDERPAID" and "paid" or "closed"))
    end
    log.warn("prepay failed", { order = order.order_no, reason = why or (res and res.code), detail = msg or (res and res.message) })
    app.fail(502, "upstream_error", "WeChat Pay did not take the order; the order is kept, try again")
  end

  local prepay_id = res.body.prepay_id
  local stored = db.tx(function()
    local changed = db.exec([[UPDATE orders SET status = 'PAYING', prepay_id = ?, prepay_at = ?, updated_at = ?
                              WHERE order_no = ? AND status IN ('CREATED', 'PAYING')]],
                            prepay_id, clock.now(), clock.now(), order.order_no)
    if changed == 1 then
      jobs.schedule("reconcile_order", { order_no = order.order_no, attempt = 1 },
                    { delay_ms = RECONCILE_AFTER_MS, key = "reconcile:" .. order.order_no })
    end
    return changed == 1
  end)
  if not stored then app.fail(409, "not_payable", "the order closed while WeChat was asked") end
  return 200, wechatpay.pay_params(prepay_id)
end)

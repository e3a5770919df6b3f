-- Refunds: an operator gives money back (all or part, never more than was paid); the
-- refund goes to WeChat from a durable job and its result comes back by notification.
local app = require "paygate"
local orders = require "shop.orders"
local refunds = require "shop.refunds"
local wechatpay = require "wechatpay"

local REFUNDABLE = { PAID = true, REFUNDING = true, REFUNDED = true }

-- POST /admin/orders/{no}/refund {"amount"?, "reason"}: amount defaults to what is left.
app.post("/admin/orders/{order_no}/refund", function(req)
  local body = app.read_json(req)
  local reason = body.reason
  if reason ~= nil and (type(reason) ~= "string" or #reason > 80) then
    app.fail(400, "invalid_request", "reason must be a string of at most 80 bytes")
  end
  local refund = db.tx(function()
    local order = orders.load(req.params.order_no)
    if not order then app.fail(404, "not_found", "no such order") end
    if not REFUNDABLE[order.status] or not order.transaction_id then
      app.fail(409, "not_refundable", "the order is " .. order.status)
    end
    local left = orders.refundable(order)
    local amount = body.amount == nil and left or app.integer(body.amount, 1, order.amount, "amount")
    if amount > left or left == 0 then
      app.fail(409, "refund_exceeds_paid", string.format("only %d fen can still be refunded", left))
    end
    local no = orders.start_refund(order.order_no, amount, reason)
    return db.one("SELECT out_refund_no, order_no, amount, reason, status FROM refunds WHERE out_refund_no = ?", no)
  end)
  return 202, refund
end)

-- Send a refund (the same out_refund_no on every retry: WeChat refunds it once).
app.job("submit_refund", function(p)
  local row = db.one([[SELECT r.*, o.amount AS total, o.transaction_id FROM refunds r
                       JOIN orders o ON o.order_no = r.order_no WHERE r.out_refund_no = ?]], p.out_refund_no)
  if not row or row.status ~= "PENDING" then return end
  local res, why, msg = wechatpay.refund({
    out_trade_no = row.order_no, out_refund_no = row.out_refund_no,
    refund = row.amount, total = row.total, reason = row.reason,
  })
  if not res or res.status >= 500 or res.status == 429 then
    error("refund not sent yet: " .. tostring(why or res.code) .. " " .. tostring(msg or res.message), 0)
  end
  db.tx(function()
    if res.status == 200 and type(res.body) == "table" then
      refunds.apply({ out_refund_no = row.out_refund_no, refund_id = res.body.refund_id,
                      status = res.body.status or "PROCESSING", amount = { refund = row.amount } })
    else
      db.exec("UPDATE refunds SET status = 'FAILED', error = ?, updated_at = ? WHERE out_refund_no = ?",
              tostring(res.code) .. ": " .. tostring(res.message), clock.now(), row.out_refund_no)
      orders.settle_refunds(row.order_no)
      log.error("refund refused by WeChat", { refund = row.out_refund_no, code = res.code, message = res.message })
    end
  end)
  jobs.schedule("query_refund", { out_refund_no = row.out_refund_no },
                { delay_ms = 60000, key = "query_refund:" .. row.out_refund_no, max_attempts = 1000 })
end)

-- A refund still PROCESSING after a minute: ask WeChat until it is final.
app.job("query_refund", function(p)
  local row = db.one("SELECT * FROM refunds WHERE out_refund_no = ?", p.out_refund_no)
  if not row or refunds.FINAL[row.status] then return end
  local res, why = wechatpay.query_refund(row.out_refund_no)
  if not res or res.status ~= 200 or type(res.body) ~= "table" then error("refund query failed: " .. tostring(why), 0) end
  local r = res.body
  local ok = refunds.check(r)
  if ok then db.tx(function() refunds.apply(r) end) end
  if not refunds.FINAL[(db.one("SELECT status FROM refunds WHERE out_refund_no = ?", row.out_refund_no)).status] then
    error("refund still " .. tostring(r.status), 0)       -- retried with backoff
  end
end)

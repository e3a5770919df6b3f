-- refunds: giving money back. An operator starts a refund (all or part, never more than
-- was paid); the submit_refund job sends it to WeChat, the refund notification or the
-- query_refund job brings its result back.
local app = require "paygate"
local orders = require "shop.orders"
local wechatpay = require "wechatpay"

local M = {}

local FINAL = { SUCCESS = true, CLOSED = true, FAILED = true }
local KNOWN = { SUCCESS = true, CLOSED = true, ABNORMAL = true, PROCESSING = true }

--- Does a refund result (notification resource) match a refund we asked for?
function M.check(r)
  if r.mchid ~= nil and r.mchid ~= wechatpay.settings().mchid then return nil, "mchid_mismatch" end
  local row = type(r.out_refund_no) == "string" and db.one("SELECT * FROM refunds WHERE out_refund_no = ?", r.out_refund_no)
  if not row then return nil, "unknown_refund" end
  if r.out_trade_no ~= nil and r.out_trade_no ~= row.order_no then return nil, "order_mismatch" end
  local amount = type(r.amount) == "table" and r.amount or {}
  if amount.refund ~= row.amount then return nil, "amount_mismatch" end
  local status = r.refund_status or r.status
  if not KNOWN[status] then return nil, "unknown_status" end
  return row
end

--- Apply a checked result inside the caller's db.tx. A final status never changes again.
function M.apply(r)
  local status = r.refund_status or r.status
  local row = db.one("SELECT * FROM refunds WHERE out_refund_no = ?", r.out_refund_no)
  if FINAL[row.status] then return row.status end
  db.exec("UPDATE refunds SET status = ?, refund_id = coalesce(?, refund_id), updated_at = ? WHERE out_refund_no = ?",
          status, r.refund_id, clock.now(), row.out_refund_no)
  orders.settle_refunds(row.order_no)
  if status == "ABNORMAL" then
    log.error("refund abnormal: needs an operator", { refund = row.out_refund_no, order = row.order_no })
  end
  if status == "SUCCESS" then metrics.inc("paygate_refunds_total", { status = "SUCCESS" }) end
  return status
end

local REFUNDABLE = { PAID = true, REFUNDING = true, REFUNDED = true }

--- Start a refund of order_no. o.amount: fen (default: all that is left); o.reason: at most
--- 80 bytes, shown to the payer. Records the refund (PENDING) and schedules submit_refund in
--- one transaction; returns the refund row {out_refund_no, order_no, amount, reason, status}.
--- Raises app.fail: 400 invalid_request, 404 not_found, 409 not_refundable (never paid),
--- 409 refund_exceeds_paid (the refunds would add up to more than the payment).
function M.start(order_no, o)
  o = o or {}
  if o.reason ~= nil and (type(o.reason) ~= "string" or #o.reason > 80) then
    app.fail(400, "invalid_request", "reason must be a string of at most 80 bytes")
  end
  return db.tx(function()
    local order = orders.load(order_no)
    if not order then app.fail(404, "not_found", "no such order") end
    if not REFUNDABLE[order.status] or not order.transaction_id then
      app.fail(409, "not_refundable", "the order is " .. order.status)
    end
    local left = orders.refundable(order)
    local amount = o.amount == nil and left or app.integer(o.amount, 1, order.amount, "amount")
    if amount > left or left == 0 then
      app.fail(409, "refund_exceeds_paid", string.format("only %d fen can still be refunded", left))
    end
    local no = orders.start_refund(order.order_no, amount, o.reason)
    return db.one("SELECT out_refund_no, order_no, amount, reason, status FROM refunds WHERE out_refund_no = ?", no)
  end)
end

--- The submit_refund job's work: send a PENDING refund to WeChat (the same out_refund_no
--- on every retry, so WeChat refunds it once) and record the answer. Raises while WeChat
--- cannot be reached (the job runs again later).
function M.submit(out_refund_no)
  local row = db.one([[SELECT r.*, o.amount AS total, o.transaction_id FROM refunds r
                       JOIN orders o ON o.order_no = r.order_no WHERE r.out_refund_no = ?]], out_refund_no)
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
      M.apply({ out_refund_no = row.out_refund_no, refund_id = res.body.refund_id,
                status = res.body.status or "PROCESSING", amount = { refund = row.amount } })
    else
      db.exec("UPDATE refunds SET status = 'FAILED', error = ?, updated_at = ? WHERE out_refund_no = ?",
              tostring(res.code) .. ": " .. tostring(res.message), clock.now(), row.out_refund_no)
      orders.settle_refunds(row.order_no)
      log.error("refund refused by WeChat", { refund = row.out_refund_no, code = res.code, message = res.message })
    end
  end)
  jobs.schedule("query_refund", { out_refund_no = row.out_refund_no },
                { delay_ms = 60000, key = "query_refund:" .. row.out_refund_no,
                  max_attempts = orders.UNTIL_DONE })
end

--- The query_refund job's work: ask WeChat about a refund until its status is final.
--- Raises while it is not (the job runs again later, with backoff).
function M.query(out_refund_no)
  local row = db.one("SELECT * FROM refunds WHERE out_refund_no = ?", out_refund_no)
  if not row or FINAL[row.status] then return end
  local res, why = wechatpay.query_refund(row.out_refund_no)
  if not res or res.status ~= 200 or type(res.body) ~= "table" then error("refund query failed: " .. tostring(why), 0) end
  local r = res.body
  if M.check(r) then db.tx(function() M.apply(r) end) end
  if not FINAL[(db.one("SELECT status FROM refunds WHERE out_refund_no = ?", row.out_refund_no)).status] then
    error("refund still " .. tostring(r.status), 0)       -- retried with backoff
  end
end

M.FINAL = FINAL
return M

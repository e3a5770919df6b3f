-- refunds: what a refund answer or notification means for our refund and its order.
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

M.FINAL = FINAL
return M

-- refunds: giving money back. An operator starts a refund (an amount, or lines and
-- quantities; never more than was paid); the submit_refund job sends it to WeChat, the refund
-- notification or the query_refund job brings its result back. A refund that succeeds puts
-- back the units it was asked to restock and records the refunded event; one that fails, the
-- refund_failed event (shop.events).
local app = require "paygate"
local events = require "shop.events"
local orders = require "shop.orders"
local pricing = require "shop.pricing"
local wechatpay = require "wechatpay"

local M = {}

local FINAL = { SUCCESS = true, CLOSED = true, FAILED = true }
local KNOWN = { SUCCESS = true, CLOSED = true, ABNORMAL = true, PROCESSING = true }

-- What the operator does about an ABNORMAL refund (shown with the refund and in its event).
M.ABNORMAL_ACTION = "WeChat Pay could not pay this refund back: the payer's card or account is closed or frozen. "
  .. "Do not start it again here. At WeChat Pay's merchant platform send it to another account of the payer "
  .. "(abnormal refund), or refund the payer offline; paygate keeps following it until WeChat reports it final."

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

--- A refund as its events tell it: {out_refund_no, amount, reason, status, items} (items:
--- {product_id, qty, amount, restock} of a refund by line, else empty).
function M.describe(out_refund_no)
  local row = db.one("SELECT out_refund_no, order_no, amount, reason, status, error FROM refunds WHERE out_refund_no = ?",
                     out_refund_no)
  local items = json.array()
  for _, it in ipairs(db.query("SELECT product_id, qty, amount, restock FROM refund_items WHERE out_refund_no = ? "
                               .. "ORDER BY product_id", out_refund_no)) do
    it.restock = it.restock == 1
    items[#items + 1] = it
  end
  row.items = items
  if row.status == "ABNORMAL" then row.action = M.ABNORMAL_ACTION end
  return row
end

-- A refund reached a final status (inside the transaction that recorded it): put back the
-- units it restocks once it succeeded, and record its event.
local function finished(out_refund_no, status)
  local row = db.one("SELECT order_no FROM refunds WHERE out_refund_no = ?", out_refund_no)
  if status == "SUCCESS" then
    for _, it in ipairs(db.query("SELECT product_id, qty FROM refund_items WHERE out_refund_no = ? AND restock = 1 "
                                 .. "AND restocked = 0", out_refund_no)) do
      if orders.move_all({ it }, "sold", "stock", row.order_no, "refunded") == 0 then
        db.exec("UPDATE refund_items SET restocked = qty WHERE out_refund_no = ? AND product_id = ?",
                out_refund_no, it.product_id)
      end
    end
    events.queue(row.order_no, "refunded", { refund = M.describe(out_refund_no) }, "refunded:" .. out_refund_no)
  else
    events.queue(row.order_no, "refund_failed", { refund = M.describe(out_refund_no) }, "refund_failed:" .. out_refund_no)
  end
end

--- Apply a checked result inside the caller's db.tx. A final status never changes again.
function M.apply(r)
  local status = r.refund_status or r.status
  local row = db.one("SELECT * FROM refunds WHERE out_refund_no = ?", r.out_refund_no)
  if FINAL[row.status] then return row.status end
  db.exec("UPDATE refunds SET status = ?, refund_id = coalesce(?, refund_id), updated_at = ? WHERE out_refund_no = ?",
          status, r.refund_id, clock.now(), row.out_refund_no)
  orders.settle_refunds(row.order_no)
  if FINAL[status] then finished(row.out_refund_no, status) end
  if status == "ABNORMAL" and row.status ~= "ABNORMAL" then
    -- Not final at WeChat, and never sent again from here: the operator settles it at WeChat
    -- Pay (another account, or offline). The merchant's on_refund_failed hears of it once.
    events.queue(row.order_no, "refund_failed", { refund = M.describe(row.out_refund_no), action = M.ABNORMAL_ACTION },
                 "refund_failed:" .. row.out_refund_no)
    metrics.inc("paygate_refunds_total", { status = "ABNORMAL" })
    log.error("refund abnormal: needs an operator", { refund = row.out_refund_no, order = row.order_no,
                                                     action = M.ABNORMAL_ACTION })
  end
  if status == "SUCCESS" then metrics.inc("paygate_refunds_total", { status = "SUCCESS" }) end
  return status
end

local REFUNDABLE = { PAID = true, REFUNDING = true, REFUNDED = true }

-- The lines of a refund by line: each {product_id, qty} of the order, at most the units not
-- refunded yet (refunds that failed do not count); each unit is worth its share of what was
-- paid for its line, adjustments included (shop.pricing.units_value).
local function line_items(order, list, restock)
  local ids, out = orders.item_ids(list), {}
  for i, it in ipairs(list) do
    local id = ids[i]
    local line = db.one([[SELECT qty, coalesce(net, qty * price) AS net FROM order_items
                          WHERE order_no = ? AND product_id = ?]], order.order_no, id)
    if not line then app.fail(400, "invalid_request", "the order has no product " .. id) end
    local qty = app.integer(it.qty, 1, line.qty, "items[" .. i .. "].qty")
    local done = db.one([[SELECT coalesce(sum(ri.qty), 0) AS n FROM refund_items ri
                          JOIN refunds r ON r.out_refund_no = ri.out_refund_no
                          WHERE r.order_no = ? AND ri.product_id = ? AND r.status NOT IN ('FAILED', 'CLOSED')]],
                        order.order_no, id).n
    if qty > line.qty - done then
      app.fail(409, "refund_exceeds_paid",
               string.format("only %d of product %d can still be refunded", line.qty - done, id))
    end
    out[#out + 1] = { product_id = id, qty = qty, amount = pricing.units_value(line.net, line.qty, done, qty),
                      restock = restock }
  end
  return out
end

--- Start a refund of order_no. o.amount: fen (default: all that is left); or o.items: the
--- lines to refund, {product_id, qty}, priced by what those units were paid, and o.restock:
--- put those units back on sale once the refund succeeded. o.reason: at most 80 bytes, shown
--- to the payer. o.by: who asks (an admin token's name, "loopback"), for the audit trail. Records the refund (PENDING) and schedules submit_refund in one transaction;
--- returns the refund row {out_refund_no, order_no, amount, reason, status, items}.
--- Raises app.fail: 400 invalid_request, 404 not_found, 409 not_refundable (never paid),
--- 409 refund_exceeds_paid (more than the payment, or more units than are left),
--- 409 nothing_to_refund (the units were free).
function M.start(order_no, o)
  o = o or {}
  if o.reason ~= nil and (type(o.reason) ~= "string" or #o.reason > 80) then
    app.fail(400, "invalid_request", "reason must be a string of at most 80 bytes")
  end
  if o.items ~= nil and o.amount ~= nil then
    app.fail(400, "invalid_request", "give amount or items, not both")
  end
  if o.restock ~= nil and (type(o.restock) ~= "boolean" or o.items == nil) then
    app.fail(400, "invalid_request", "restock is true or false, and goes with items")
  end
  return db.tx(function()
    local order = orders.load(order_no)
    if not order then app.fail(404, "not_found", "no such order") end
    if not REFUNDABLE[order.status] or not order.transaction_id then
      app.fail(409, "not_refundable", "the order is " .. order.status)
    end
    local left = orders.refundable(order)
    local amount, items
    if o.items ~= nil then
      items = line_items(order, o.items, o.restock == true)
      amount = 0
      for _, it in ipairs(items) do amount = amount + it.amount end
      if amount == 0 then app.fail(409, "nothing_to_refund", "those units were free") end
    else
      amount = o.amount == nil and left or app.integer(o.amount, 1, order.amount, "amount")
    end
    if amount > left or left == 0 then
      app.fail(409, "refund_exceeds_paid", string.format("only %d fen can still be refunded", left))
    end
    local no = orders.start_refund(order.order_no, amount, o.reason, items, o.by)
    local row = M.describe(no)
    row.error = nil
    return row
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
      finished(row.out_refund_no, "FAILED")
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

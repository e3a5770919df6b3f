-- reconcile_bills: the day as a whole against WeChat Pay's trade bill. A durable job downloads
-- a day's bill (WeChat publishes it from 10:00 the next day, Beijing time), compares it line by
-- line with the orders and refunds of that day, and records each difference in
-- reconciliation_items with its kind. The differences paygate can settle safely it settles
-- through the state machine — a payment WeChat has for an order still open here is asked about
-- and applied exactly as the reconciler does (shop.payments.query_and_apply); a refund WeChat
-- took that is still under way here is asked about and applied like its notification — and the
-- rest are left OPEN for the operator, with what to do. Running a day again is idempotent: a
-- difference is one row per (day, kind, reference), settled rows stay settled, and an OPEN row
-- that a later run no longer finds becomes RESOLVED. docs/shop.md#reconciliation.
local orders = require "shop.orders"
local payments = require "shop.payments"
local refunds = require "shop.refunds"
local timefmt = require "timefmt"
local wechatpay = require "wechatpay"
local bills = require "wechatpay.bills"
local bill = require "wechatpay.bill"

local M = {}

M.MAX_ATTEMPTS = 16          -- the job's budget: 1 s, 2 s ... about 9 hours of retries in all

-- What the operator does about each kind that paygate does not settle itself.
M.KINDS = {
  paid_only_at_wechat = "WeChat has a payment for an order that is not paid here; paygate asked WeChat and "
    .. "applied the answer. If it is still OPEN, WeChat's own query disagrees with its bill: ask WeChat Pay support.",
  unknown_order = "WeChat has a payment for an out_trade_no this shop never made: check the mchid's other "
    .. "systems, then refund it at WeChat Pay's merchant platform if it is not yours.",
  amount_mismatch = "WeChat's amount is not the order's: the order was not paid as priced; check it with WeChat "
    .. "Pay support before delivering or refunding.",
  transaction_mismatch = "WeChat's transaction_id is not the one recorded: two payments for one order? "
    .. "Refund the extra one.",
  missing_at_wechat = "Paid here, but not in WeChat's bill of that day: look the order up at WeChat Pay "
    .. "(query, merchant platform) before delivering more; it may sit in the next day's bill.",
  fee_mismatch = "The fee is not the line's rate applied to its amount: raise it with WeChat Pay.",
  refund_unknown = "WeChat has a refund this shop never asked for (made at the merchant platform?): record it.",
  refund_amount_mismatch = "WeChat refunded another amount than was asked: check the refund at WeChat Pay.",
  refund_state = "WeChat's bill has the refund further on (SUCCESS, CLOSED, ABNORMAL) than it is here; paygate asked "
    .. "WeChat and applied the answer. If it is still OPEN, follow it at WeChat Pay's merchant platform.",
  refund_abnormal = "The refund is ABNORMAL: the payer's card or account cannot take it. Do not start it again: "
    .. "at WeChat Pay's merchant platform send it to another account, or refund the payer offline.",
  refund_missing_at_wechat = "WeChat took this refund (it has a refund_id) but it is not in the bill of that "
    .. "day: look it up at WeChat Pay.",
  summary_mismatch = "The bill's summary line does not add up to its lines: download it again, then ask WeChat "
    .. "Pay support.",
}

local function date_ok(d)
  if type(d) ~= "string" then return false end
  return timefmt.parse(d .. "T00:00:00+08:00") ~= nil
end
M.date_ok = date_ok

--- [start, end) of a Beijing day in ms since the epoch.
function M.bounds(date)
  local start = timefmt.parse(date .. "T00:00:00+08:00")
  return start, start + 86400 * 1000
end

--- The Beijing date of a time in ms.
function M.date_of(ms) return timefmt.rfc3339(ms):sub(1, 10) end

local function day_row(date) return db.one("SELECT * FROM reconciliation_days WHERE bill_date = ?", date) end

-- Record (or refresh) a difference. Returns its row.
local function found(ctx, kind, ref, o)
  o = o or {}
  db.exec([[INSERT INTO reconciliation_items(bill_date, kind, ref, order_no, bill_amount, local_amount, detail, status,
                                             run, created_at, updated_at)
            VALUES (?, ?, ?, ?, ?, ?, ?, 'OPEN', ?, ?, ?)
            ON CONFLICT(bill_date, kind, ref) DO UPDATE SET
              bill_amount = excluded.bill_amount, local_amount = excluded.local_amount, detail = excluded.detail,
              run = excluded.run, updated_at = excluded.updated_at,
              status = CASE WHEN reconciliation_items.status = 'RESOLVED' THEN 'OPEN'
                       ELSE reconciliation_items.status END]],
          ctx.date, kind, ref, o.order_no, o.bill_amount, o.local_amount, o.detail or M.KINDS[kind], ctx.run,
          clock.now(), clock.now())
  return db.one("SELECT * FROM reconciliation_items WHERE bill_date = ? AND kind = ? AND ref = ?", ctx.date, kind, ref)
end

local function mark(item, status, outcome)
  db.exec("UPDATE reconciliation_items SET status = ?, outcome = ?, updated_at = ? WHERE id = ?",
          status, outcome, clock.now(), item.id)
end

-- A SUCCESS at WeChat for an order still open (or closed) here: ask and apply, as the reconciler.
local function settle_payment(item)
  if item.status ~= "OPEN" then return end
  local outcome, why = payments.query_and_apply(item.order_no)
  if outcome == "paid" or outcome == "paid_after_close" or outcome == "refunding_after_close" or outcome == "duplicate" then
    mark(item, "SETTLED", "query_and_apply: " .. outcome)
  else
    mark(item, "OPEN", "asked WeChat: " .. tostring(outcome or why))
  end
end

-- A refund the bill has succeeded that is not SUCCESS here: ask WeChat and apply, as its notification.
local function settle_refund(item)
  if item.status ~= "OPEN" then return end
  local res, why = wechatpay.query_refund(item.ref)
  if not res or res.status ~= 200 or type(res.body) ~= "table" then
    mark(item, "OPEN", "refund query failed: " .. tostring(why or res.status))
    return
  end
  local r = res.body
  local ok, reason = refunds.check(r)
  if not ok then mark(item, "OPEN", "refund query refused: " .. tostring(reason)) return end
  local status = db.tx(function() return refunds.apply(r) end)
  if refunds.FINAL[status] or status == "ABNORMAL" then
    mark(item, "SETTLED", "query_refund: " .. status)     -- an ABNORMAL one is then refund_abnormal, for the operator
  else
    mark(item, "OPEN", "WeChat says " .. tostring(status))
  end
end

-- The fee a line's rate ("0.60%") gives its amount, in 1/1000 fen (WeChat rounds to the fen).
local function expected_fee(amount, rate)
  local pct = type(rate) == "string" and rate:match("^([%d%.]+)%%$")
  local r = pct and bill.amount(pct, 4)            -- 0.60% -> 6000 (1/10000 of a percent)
  if not r then return nil end
  local sign = amount < 0 and -1 or 1
  return sign * ((math.abs(amount) * r + 500000) // 1000000) * 1000
end

-- Ask for the bill and download it. Returns the bill, or nil for "no bill: nothing traded";
-- raises (the job retries with backoff) when WeChat is busy, limits us, or the file is wrong.
local function fetch(date)
  local res, why, msg = wechatpay.tradebill{ bill_date = date, bill_type = "ALL", tar_type = "GZIP" }
  if not res then error("tradebill: " .. why .. ": " .. tostring(msg), 0) end
  if res.status == 400 and res.code == "NO_STATEMENT_EXIST" then return nil end
  if res.status ~= 200 or type(res.body) ~= "table" then
    local e = string.format("tradebill answered %d %s: %s", res.status, tostring(res.code), tostring(res.message))
    if res.status == 429 or res.status >= 500 or res.code == "STATEMENT_CREATING" then error(e, 0) end
    return false, e                                 -- a refusal that asking again will not change
  end
  local b, reason, message = wechatpay.download_bill(res.body.download_url, res.body)
  if reason == "too_large" or reason == "bad_format" then return false, "download: " .. reason .. ": " .. message end
  if not b then error("download: " .. reason .. ": " .. tostring(message), 0) end
  return b
end

local function summary_checks(ctx, s, sums)
  if not s then
    found(ctx, "summary_mismatch", "missing", { detail = "the bill has no summary line" })
    return
  end
  for _, c in ipairs({ { "count", sums.count }, { "settlement_total", sums.settlement_total },
                       { "refund_total", sums.refund_total }, { "fee_total", sums.fee_total },
                       { "total", sums.total } }) do
    if s[c[1]] ~= nil and s[c[1]] ~= c[2] then
      found(ctx, "summary_mismatch", c[1], { bill_amount = s[c[1]], local_amount = c[2],
            detail = string.format("the summary says %s = %d, its lines add up to %d. %s", c[1], s[c[1]], c[2],
                                   M.KINDS.summary_mismatch) })
    end
  end
end

--- Reconcile one Beijing day (YYYY-MM-DD). Returns the day's row. Raises when the bill cannot
--- be had yet (the job runs again later, with backoff, within its budget).
function M.run(date)
  assert(date_ok(date), "reconcile_bills.run: date must be YYYY-MM-DD")
  local run = db.tx(function()
    db.exec([[INSERT INTO reconciliation_days(bill_date, status, runs, started_at, updated_at) VALUES (?, 'PENDING', 1, ?, ?)
              ON CONFLICT(bill_date) DO UPDATE SET status = 'PENDING', runs = reconciliation_days.runs + 1,
              started_at = excluded.started_at,
              updated_at = excluded.updated_at]], date, clock.now(), clock.now())
    return day_row(date).runs
  end)
  local ok, b, refusal = pcall(fetch, date)
  if not ok or b == false then
    local e = ok and refusal or tostring(b)
    db.exec("UPDATE reconciliation_days SET status = 'FAILED', error = ?, updated_at = ? WHERE bill_date = ?",
            e, clock.now(), date)
    log.warn("reconciliation: no bill yet", { date = date, error = e })
    if not ok then error(b, 0) end
    return day_row(date)
  end
  local ctx = { date = date, run = run }
  local from, to = M.bounds(date)
  local sums = { count = 0, settlement_total = 0, refund_total = 0, fee_total = 0, total = 0 }
  local day = { bill_payments = 0, bill_payments_amount = 0, bill_refunds = 0, bill_refunds_amount = 0, bill_fees = 0 }
  local seen_pay, seen_refund, to_settle = {}, {}, {}
  local sha1

  if b then
    sha1 = b:info().sha1
    local ok_read, err = pcall(function()
      for rec in bills.records(b, "trade") do
        sums.count = sums.count + 1
        sums.settlement_total = sums.settlement_total + (rec.settlement_total or 0)
        sums.refund_total = sums.refund_total + (rec.refund or 0)
        sums.fee_total = sums.fee_total + (rec.fee or 0)
        sums.total = sums.total + (rec.total or 0)
        day.bill_fees = day.bill_fees + (rec.fee or 0)
        if rec.trade_state == "REFUND" then
          day.bill_refunds, day.bill_refunds_amount = day.bill_refunds + 1, day.bill_refunds_amount + rec.refund
          M.refund_line(ctx, rec, seen_refund, to_settle)
        else
          day.bill_payments, day.bill_payments_amount = day.bill_payments + 1, day.bill_payments_amount + rec.total
          M.payment_line(ctx, rec, seen_pay, to_settle)
        end
      end
      summary_checks(ctx, bills.summary(b, "trade"), sums)
    end)
    b:close()
    if not ok_read then
      db.exec("UPDATE reconciliation_days SET status = 'FAILED', error = ?, updated_at = ? WHERE bill_date = ?",
              tostring(err), clock.now(), date)
      log.error("reconciliation: the bill does not read", { date = date, error = tostring(err) })
      return day_row(date)
    end
  end

  -- Ours that the bill lacks.
  local lp = db.query([[SELECT order_no, amount FROM orders WHERE transaction_id IS NOT NULL
                        AND paid_at >= ? AND paid_at < ?]], from, to)
  day.local_payments, day.local_payments_amount = #lp, 0
  for _, o in ipairs(lp) do
    day.local_payments_amount = day.local_payments_amount + o.amount
    if not seen_pay[o.order_no] then
      found(ctx, "missing_at_wechat", o.order_no, { order_no = o.order_no, local_amount = o.amount })
    end
  end
  local lr = db.query([[SELECT out_refund_no, order_no, amount FROM refunds WHERE refund_id IS NOT NULL
                        AND created_at >= ? AND created_at < ?]], from, to)
  day.local_refunds, day.local_refunds_amount = #lr, 0
  for _, r in ipairs(lr) do
    day.local_refunds_amount = day.local_refunds_amount + r.amount
    if not seen_refund[r.out_refund_no] then
      found(ctx, "refund_missing_at_wechat", r.out_refund_no, { order_no = r.order_no, local_amount = r.amount })
    end
  end

  -- The safe ones, through the state machine (outside any transaction: these ask WeChat).
  for _, s in ipairs(to_settle) do s.fn(s.item) end

  -- What this run no longer finds was put right meanwhile.
  db.exec([[UPDATE reconciliation_items SET status = 'RESOLVED', outcome = 'no longer differs', updated_at = ?
            WHERE bill_date = ? AND status = 'OPEN' AND run < ?]], clock.now(), date, run)
  local c = db.one([[SELECT count(*) AS n, coalesce(sum(CASE WHEN status = 'SETTLED' THEN 1 ELSE 0 END), 0) AS settled,
                            coalesce(sum(CASE WHEN status = 'OPEN' THEN 1 ELSE 0 END), 0) AS open
                     FROM reconciliation_items WHERE bill_date = ?]], date)
  db.exec([[UPDATE reconciliation_days SET status = 'DONE', error = NULL, bill_sha1 = ?,
              bill_payments = ?, bill_payments_amount = ?, bill_refunds = ?, bill_refunds_amount = ?, bill_fees = ?,
              local_payments = ?, local_payments_amount = ?, local_refunds = ?, local_refunds_amount = ?,
              differences = ?, settled = ?, open = ?, finished_at = ?, updated_at = ? WHERE bill_date = ?]],
          sha1, day.bill_payments, day.bill_payments_amount, day.bill_refunds, day.bill_refunds_amount, day.bill_fees,
          day.local_payments, day.local_payments_amount, day.local_refunds, day.local_refunds_amount,
          c.n, c.settled, c.open, clock.now(), clock.now(), date)
  metrics.inc("paygate_reconciliation_runs_total", { result = c.open > 0 and "open_differences" or "clean" })
  if c.open > 0 then
    log.warn("reconciliation: differences for the operator", { date = date, open = c.open, settled = c.settled })
  else
    log.info("reconciliation: the day adds up", { date = date, settled = c.settled })
  end
  return day_row(date)
end

--- One payment line of the bill against our order.
function M.payment_line(ctx, rec, seen, to_settle)
  local no = rec.out_trade_no
  seen[no] = true
  local order = orders.load(no)
  if not order then
    found(ctx, "unknown_order", no, { bill_amount = rec.total })
    return
  end
  if rec.total ~= order.amount then
    found(ctx, "amount_mismatch", no, { order_no = no, bill_amount = rec.total, local_amount = order.amount })
    return
  end
  if not order.transaction_id then           -- CREATED, PAYING or CLOSED here, paid at WeChat
    local item = found(ctx, "paid_only_at_wechat", no, { order_no = no, bill_amount = rec.total,
      detail = "WeChat's bill has it paid, here it is " .. order.status .. ". " .. M.KINDS.paid_only_at_wechat })
    to_settle[#to_settle + 1] = { fn = settle_payment, item = item }
  elseif rec.transaction_id and rec.transaction_id ~= "" and rec.transaction_id ~= order.transaction_id then
    found(ctx, "transaction_mismatch", no, { order_no = no, bill_amount = rec.total, local_amount = order.amount,
      detail = "bill: " .. rec.transaction_id .. ", here: " .. order.transaction_id .. ". " .. M.KINDS.transaction_mismatch })
  end
  local want = expected_fee(rec.settlement_total or rec.total, rec.rate)
  if want and rec.fee and math.abs(rec.fee - want) >= 1000 then
    found(ctx, "fee_mismatch", no, { order_no = no, bill_amount = rec.fee, local_amount = want })
  end
end

-- Refund statuses in a bill that say the refund got further than PENDING / PROCESSING.
local LATER = { SUCCESS = true, CLOSED = true, ABNORMAL = true }

--- One refund line of the bill against our refund.
function M.refund_line(ctx, rec, seen, to_settle)
  local no = rec.out_refund_no
  seen[no] = true
  local r = db.one("SELECT * FROM refunds WHERE out_refund_no = ?", no)
  if not r then
    found(ctx, "refund_unknown", no, { order_no = rec.out_trade_no, bill_amount = rec.refund })
    return
  end
  if rec.refund ~= r.amount then
    found(ctx, "refund_amount_mismatch", no, { order_no = r.order_no, bill_amount = rec.refund, local_amount = r.amount })
    return
  end
  -- Ours is the fresher status (the bill keeps the one a refund had when the bill was made).
  if r.status == "ABNORMAL" then
    found(ctx, "refund_abnormal", no, { order_no = r.order_no, bill_amount = rec.refund, local_amount = r.amount })
  elseif LATER[rec.refund_status] and not refunds.FINAL[r.status] then
    local item = found(ctx, "refund_state", no, { order_no = r.order_no, bill_amount = rec.refund, local_amount = r.amount,
      detail = "WeChat's bill has it " .. rec.refund_status .. ", here it is " .. r.status .. ". " .. M.KINDS.refund_state })
    to_settle[#to_settle + 1] = { fn = settle_refund, item = item }
  end
end

--- A day as the admin API shows it: the day's row (or nil) and its items.
function M.day(date)
  local d = day_row(date)
  local items = db.query([[SELECT id, kind, ref, order_no, bill_amount, local_amount, detail, status, outcome, run,
                                  created_at, updated_at FROM reconciliation_items WHERE bill_date = ? ORDER BY id]], date)
  return d, items
end

--- The days reconciled, newest first.
function M.days(limit)
  return db.query("SELECT * FROM reconciliation_days ORDER BY bill_date DESC LIMIT ?", limit or 31)
end

--- Queue a run of date now (an operator's re-run). Returns true, or false when one is queued already.
function M.queue(date)
  local key = "reconcile_bills:" .. date
  if jobs.schedule("reconcile_bills", { date = date }, { key = key, max_attempts = M.MAX_ATTEMPTS }) then return true end
  -- A run that used up its budget keeps its key (dead); an operator's new run gets its own.
  local j = db.one("SELECT state FROM _paygate_jobs WHERE key = ?", key)
  if j and j.state == "dead" then
    return jobs.schedule("reconcile_bills", { date = date },
                         { key = key .. ":" .. clock.now(), max_attempts = M.MAX_ATTEMPTS }) ~= nil
  end
  return false
end

-- The next 10:30 Beijing time after now (WeChat publishes the day before from 10:00).
local function next_daily(now)
  local today = M.date_of(now)
  local at = timefmt.parse(today .. "T10:30:00+08:00")
  if at <= now then at = at + 86400 * 1000 end
  return at
end

--- The daily job's work: queue yesterday's reconciliation and the next daily run.
function M.daily()
  local now = clock.now()
  M.queue(M.date_of(now - 86400 * 1000))
  local at = next_daily(now)
  jobs.schedule("reconcile_daily", {}, { run_at = at, key = "reconcile_daily:" .. M.date_of(at) })
end

--- Start the daily schedule (from shop.jobs.install; off with config.reconcile_bills = false).
function M.start()
  if config.reconcile_bills == false or not wechatpay.configured() then return end
  local at = next_daily(clock.now())
  jobs.schedule("reconcile_daily", {}, { run_at = at, key = "reconcile_daily:" .. M.date_of(at) })
end

return M

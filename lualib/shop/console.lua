-- console: what the operator's web console (and curl) reads — order search, an order with its
-- timeline, the overview's figures, notifications with refusals, jobs — and retrying a dead job.
-- Read-only except retry; the money steps stay in the other modules.
local app = require "paygate"
local events = require "shop.events"
local orders = require "shop.orders"
local refunds = require "shop.refunds"
local timefmt = require "timefmt"

local M = {}

local STATUSES = { CREATED = true, PAYING = true, PAID = true, CLOSED = true, REFUNDING = true, REFUNDED = true }

--- The value of name in a query string like "status=PAID&limit=10" (app.query on a request).
function M.param(query, name)
  return app.query({ query = query }, name)
end

-- A time bound: milliseconds, or RFC 3339.
local function time_param(query, name)
  local v = M.param(query, name)
  if not v then return nil end
  local ms = math.tointeger(tonumber(v)) or timefmt.parse(v)
  if not ms then app.fail(400, "invalid_request", name .. " must be milliseconds or an RFC 3339 time") end
  return ms
end

local function limit_param(query, default)
  local limit = math.tointeger(tonumber(M.param(query, "limit") or tostring(default)))
  if not limit or limit < 1 then app.fail(400, "invalid_request", "limit must be a whole number from 1 to 500") end
  return math.min(limit, 500)
end

--- Orders matching the query string: q (an order number, openid or transaction id, or the start
--- of one), status, from / to (created, ms or RFC 3339), limit (default 50, at most 500).
--- Newest first: the rows of the orders table.
function M.search(query)
  local where, args = {}, {}
  local status = M.param(query, "status")
  status = status and status:upper()
  if status and not STATUSES[status] then app.fail(400, "invalid_request", "unknown status " .. status) end
  if status then where[#where + 1] = "status = ?"; args[#args + 1] = status end
  local q = M.param(query, "q")
  if q then
    if #q > 64 then app.fail(400, "invalid_request", "q is at most 64 bytes") end
    -- Any case (SQLite's LIKE ignores ASCII case, PostgreSQL's does not): both sides lowered.
    local like = q:lower():gsub("[%%_\\]", "\\%0") .. "%"
    where[#where + 1] = [[(lower(order_no) LIKE ? ESCAPE '\' OR lower(openid) LIKE ? ESCAPE '\'
                           OR lower(transaction_id) LIKE ? ESCAPE '\')]]
    args[#args + 1], args[#args + 2], args[#args + 3] = like, like, like
  end
  local from, to = time_param(query, "from"), time_param(query, "to")
  if from then where[#where + 1] = "created_at >= ?"; args[#args + 1] = from end
  if to then where[#where + 1] = "created_at < ?"; args[#args + 1] = to end
  args[#args + 1] = limit_param(query, 50)
  local sql = "SELECT * FROM orders" .. (#where > 0 and (" WHERE " .. table.concat(where, " AND ")) or "")
      .. " ORDER BY created_at DESC, order_no DESC LIMIT ?"
  return db.query(sql, table.unpack(args))
end

--- One order as operators see it: the API's view plus openid, what may still be refunded, the
--- payment, every refund, the delivery, every notification about it and its timeline (the audit
--- trail, oldest first). nil when there is no such order.
function M.order(order_no)
  local o = orders.load(order_no)
  if not o then return nil end
  local v = orders.view(o)
  v.openid = o.openid
  v.refundable = (o.transaction_id and (o.status == "PAID" or o.status == "REFUNDING" or o.status == "REFUNDED"))
      and orders.refundable(o) or 0
  v.payment = o.transaction_id and { transaction_id = o.transaction_id, paid_at = timefmt.rfc3339(o.paid_at),
                                     amount = o.amount } or json.null
  v.refunds = json.array()
  for _, r in ipairs(db.query("SELECT out_refund_no FROM refunds WHERE order_no = ? ORDER BY created_at", order_no)) do
    v.refunds[#v.refunds + 1] = refunds.describe(r.out_refund_no)
  end
  v.fulfillment = db.one("SELECT status, attempts, last_error, done_at FROM fulfillments WHERE order_no = ?", order_no)
      or json.null
  v.notifications = json.array(db.query([[SELECT kind, notify_id, outcome, reason, received_at FROM notification_log
                                          WHERE order_no = ? ORDER BY id]], order_no))
  v.events = json.array(events.of(order_no))
  v.timeline = events.timeline(order_no)
  return v
end

--- The overview's figures since `since` (ms; default the last 24 hours), and per 5 minutes over
--- the last hour: orders created and paid, notifications refused.
function M.overview(query)
  local now = clock.now()
  local since = time_param(query, "since") or (now - 24 * 3600 * 1000)
  local by_status = {}
  for s in pairs(STATUSES) do by_status[s] = 0 end
  for _, r in ipairs(db.query("SELECT status, count(*) AS n FROM orders WHERE created_at >= ? GROUP BY status", since)) do
    by_status[r.status] = r.n
  end
  local paid = db.one([[SELECT count(*) AS n, coalesce(sum(amount), 0) AS amount FROM orders
                        WHERE paid_at >= ? AND transaction_id IS NOT NULL]], since)
  local refunded = db.one([[SELECT coalesce(sum(amount), 0) AS amount FROM refunds WHERE status = 'SUCCESS'
                            AND updated_at >= ?]], since).amount
  local notes = { accepted = 0, refused = 0 }
  for _, r in ipairs(db.query([[SELECT CASE WHEN outcome = 'refused' THEN 1 ELSE 0 END AS refused, count(*) AS n
                                FROM notification_log WHERE received_at >= ? AND kind <> 'query' GROUP BY 1]], since)) do
    if r.refused == 1 then notes.refused = r.n else notes.accepted = r.n end
  end
  local jobs_by = { queued = 0, running = 0, dead = 0 }
  for _, r in ipairs(db.query("SELECT state, count(*) AS n FROM _paygate_jobs GROUP BY state")) do
    jobs_by[r.state] = r.n
  end
  local BUCKET, N = 5 * 60 * 1000, 12
  local start = now - now % BUCKET - (N - 1) * BUCKET
  local series = { created = {}, paid = {}, refused = {}, start = start, bucket_ms = BUCKET }
  for i = 1, N do series.created[i], series.paid[i], series.refused[i] = 0, 0, 0 end
  local function fill(list, sql)
    for _, r in ipairs(db.query(sql, start, BUCKET, start)) do
      local i = r.b + 1
      if i >= 1 and i <= N then list[i] = r.n end
    end
  end
  -- Parameters: the start twice and the bucket's length (plain ?, numbered ones are SQLite's).
  fill(series.created, "SELECT (created_at - ?) / ? AS b, count(*) AS n FROM orders WHERE created_at >= ? GROUP BY b")
  fill(series.paid, [[SELECT (paid_at - ?) / ? AS b, count(*) AS n FROM orders WHERE paid_at >= ?
                      AND transaction_id IS NOT NULL GROUP BY b]])
  fill(series.refused, [[SELECT (received_at - ?) / ? AS b, count(*) AS n FROM notification_log
                         WHERE received_at >= ? AND outcome = 'refused' GROUP BY b]])
  return { since = since, now = now, orders = by_status, paid = { count = paid.n, amount = paid.amount },
           refunded = refunded, revenue = paid.amount - refunded, notifications = notes, jobs = jobs_by,
           series = series }
end

--- WeChat's notifications and status queries as received, newest first: outcome ("refused" for
--- the refusals only), limit.
function M.notifications(query)
  local outcome = M.param(query, "outcome")
  local limit = limit_param(query, 100)
  local rows = outcome
      and db.query("SELECT * FROM notification_log WHERE outcome = ? ORDER BY id DESC LIMIT ?", outcome, limit)
      or db.query("SELECT * FROM notification_log ORDER BY id DESC LIMIT ?", limit)
  return json.array(rows)
end

--- Durable jobs, dead ones first: state (queued, running, dead), limit.
function M.jobs(query)
  local state = M.param(query, "state")
  local limit = limit_param(query, 100)
  local cols = "id, name, key, state, attempts, max_attempts, run_at, last_error, created_at, updated_at"
  local rows = state
      and db.query("SELECT " .. cols .. " FROM _paygate_jobs WHERE state = ? ORDER BY id DESC LIMIT ?", state, limit)
      or db.query("SELECT " .. cols .. " FROM _paygate_jobs ORDER BY state = 'dead' DESC, id DESC LIMIT ?", limit)
  return json.array(rows)
end

--- Give a dead job another round of attempts (the same name, payload and key, now). by: who
--- asked. Returns the new job's id; 404 when there is no such dead job.
function M.retry_job(id, by)
  return db.tx(function()
    local j = db.one("SELECT * FROM _paygate_jobs WHERE id = ? AND state = 'dead'", id)
    if not j then app.fail(404, "not_found", "no dead job " .. tostring(id)) end
    db.exec("DELETE FROM _paygate_jobs WHERE id = ?", id)
    local new_id = jobs.schedule(j.name, json.decode(j.payload), { key = j.key, max_attempts = 25 })
    log.info("dead job retried", { job = j.name, key = j.key, old_id = id, new_id = new_id, by = by,
                                    last_error = j.last_error })
    return new_id
  end)
end

return M

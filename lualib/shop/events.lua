-- events: an order's lifecycle events — paid, closed, refunded, refund_failed — each handled
-- once by the merchant's on_<event> hooks (shop.hooks), whatever path made the change: a
-- notification, a status query, the reconciler, a payment after close, an operator. The event
-- is written to an outbox (order_events) and its job scheduled in the transaction of the change
-- itself, so it exists exactly when the change does; the job calls the hooks outside any
-- transaction (they may wait) until they all return once.
--
-- The same table is the order's audit trail: every money event — created, prepay_requested,
-- paid, close_requested, closed, refund_requested, refunded, refund_failed, delivered,
-- notification_refused — is a row written in the transaction of the change, with who asked
-- (actor), and a logfmt line at info. Rows are never deleted and what they say never changes
-- (triggers refuse it); only the four lifecycle events (LIFECYCLE) call hooks.
local hooks = require "shop.hooks"
local pricing = require "shop.pricing"

local M = {}

M.UNTIL_DONE = 1000              -- like the other money jobs: about 40 days of retries

-- The events the merchant's on_<event> hooks handle; the others are the audit trail only.
M.LIFECYCLE = { paid = true, closed = true, refunded = true, refund_failed = true }

-- The log line of an event: its data's plain fields (amounts, reasons, ids), flat.
local function log_event(order_no, event, data, actor)
  local fields = { order = order_no, event = event, actor = actor }
  for k, v in pairs(data or {}) do
    if type(v) ~= "table" and fields[k] == nil then fields[k] = v end
  end
  if type(data) == "table" and type(data.refund) == "table" then
    fields.refund, fields.amount = data.refund.out_refund_no, data.refund.amount
  end
  log.info("order event", fields)
end

local function insert(order_no, event, data, key, actor, handle)
  key = key or (event .. ":" .. order_no)
  actor = actor or "system"
  local handled = handle and M.LIFECYCLE[event] and hooks.has("on_" .. event)
  -- RETURNING gives the new row's id on both engines (no row: the key was there already).
  local row = db.one([[INSERT INTO order_events(order_no, event, key, data, status, attempts, created_at, done_at, actor)
                       VALUES (?, ?, ?, ?, ?, 0, ?, ?, ?) ON CONFLICT(key) DO NOTHING RETURNING id]],
                     order_no, event, key, json.encode(data or {}), handled and "PENDING" or "DONE", clock.now(),
                     not handled and clock.now() or nil, actor)
  if row and handled then
    jobs.schedule("order_event", { id = row.id }, { key = "event:" .. row.id, max_attempts = M.UNTIL_DONE })
  end
  if row then log_event(order_no, event, data, actor) end
  return row ~= nil
end

--- Record `event` of order_no inside the caller's transaction and schedule its handling.
--- data: what the handlers are told besides the order (a table). key: the event's identity,
--- default "<event>:<order_no>"; the same key again records nothing (an event happens once).
--- An event no piece handles (no on_<event> hook in the rules now) is recorded as DONE and
--- costs no job: there is nobody to tell, now or later.
--- actor: who asked (an admin token's name, "loopback", "user", "system"; default "system").
--- Returns true when this call recorded it.
function M.queue(order_no, event, data, key, actor)
  return insert(order_no, event, data, key, actor, true)
end

--- Record an event for the audit trail only (no hook is called for it, whatever its name: a
--- payment refused after close is "paid" in the trail but no on_paid) inside the caller's
--- transaction: the same row and log line as queue. key: its identity (default
--- "<event>:<order_no>"); the same key again records nothing.
function M.record(order_no, event, data, key, actor)
  return insert(order_no, event, data, key, actor, false)
end

--- What a handler is given: { id, key, event, order = the order as the API shows it (with
--- openid), ... the event's data (reason, transaction_id, refund ...) }.
function M.payload(ev)
  local orders = require "shop.orders"        -- here: shop.orders requires this module
  local order = orders.load(ev.order_no)
  local view = orders.view(order)
  view.openid = order.openid
  local p = { id = ev.id, key = ev.key, event = ev.event, order = view }
  local ok, data = pcall(json.decode, ev.data)
  if ok and type(data) == "table" then
    for k, v in pairs(data) do if p[k] == nil then p[k] = v end end
  end
  return p
end

local function describe(err)
  if type(err) == "table" then return tostring(err.error) .. ": " .. tostring(err.message) end
  return tostring(err)
end

--- The order_event job's work: call every on_<event> hook with the payload, then record the
--- event DONE; a DONE event is never handled again. A hook that raises is recorded
--- (order_events.last_error, paygate_order_event_errors_total) and the job runs again later,
--- calling the hooks again: make them idempotent by ev.key. An event without hooks is DONE
--- at once.
function M.run(id)
  local ev = db.one("SELECT * FROM order_events WHERE id = ?", id)
  if not ev or ev.status == "DONE" then return end
  local handlers = hooks.list("on_" .. ev.event)
  if #handlers > 0 then
    db.exec("UPDATE order_events SET attempts = attempts + 1 WHERE id = ?", id)
    local payload = M.payload(ev)
    for _, h in ipairs(handlers) do
      local ok, err = pcall(h.fn, pricing.copy(payload))
      if not ok then
        db.exec("UPDATE order_events SET last_error = ? WHERE id = ?", h.name .. ": " .. describe(err), id)
        metrics.inc("paygate_order_event_errors_total", { event = ev.event })
        log.warn("an order event's hook failed; it runs again later",
                 { order = ev.order_no, event = ev.event, piece = h.name, error = describe(err) })
        error(err, 0)
      end
    end
  end
  db.exec("UPDATE order_events SET status = 'DONE', done_at = ?, last_error = NULL WHERE id = ? AND status = 'PENDING'",
          clock.now(), id)
  metrics.inc("paygate_order_events_total", { event = ev.event })
end

--- The lifecycle events of an order, for operators: { id, event, key, status, attempts, last_error }.
function M.of(order_no)
  return db.query([[SELECT id, event, key, status, attempts, last_error FROM order_events
                    WHERE order_no = ? AND event IN ('paid', 'closed', 'refunded', 'refund_failed') ORDER BY id]],
                  order_no)
end

--- An order's audit trail, oldest first: { id, event, at (ms), actor, data (a table), status,
--- last_error } for every event, lifecycle or not.
function M.timeline(order_no)
  local out = json.array()
  for _, r in ipairs(db.query([[SELECT id, event, created_at, actor, data, status, last_error FROM order_events
                                WHERE order_no = ? ORDER BY id]], order_no)) do
    local ok, data = pcall(json.decode, r.data)
    out[#out + 1] = { id = r.id, event = r.event, at = r.created_at, actor = r.actor or "system",
                      data = ok and type(data) == "table" and data or {}, status = r.status,
                      last_error = r.last_error }
  end
  return out
end

return M

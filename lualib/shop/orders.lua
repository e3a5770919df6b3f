-- orders: the order state machine and the stock moves that go with each transition.
--
--   CREATED ──pay──► PAYING ──paid──► PAID ──refund──► REFUNDING ──► REFUNDED
--      │                │                                   │
--      └──expire/cancel─┴──► CLOSED ◄─ (WeChat confirmed the order is closed)
--
-- Units of a product are always in exactly one place: products.stock (available),
-- products.reserved (held by CREATED/PAYING orders) or products.sold (paid orders),
-- so stock + reserved + sold only changes when an operator restocks.
-- Every function here runs inside db.tx (create has its own, a savepoint in the caller's),
-- and every transition is one conditional UPDATE: it happens at most once, whatever
-- arrives twice.

local app = require "paygate"
local stock = require "shop.stock"
local timefmt = require "timefmt"

local M = {}

M.OPEN = { CREATED = true, PAYING = true }
M.MAX_LINES = 20                 -- lines in one order
M.MIN_TTL_S = 300                -- WeChat's close needs an order to be 5 minutes old
-- Jobs that money depends on (expiry, fulfillment, refunds) retry this often: with the
-- backoff capped at an hour, about 40 days, i.e. until WeChat (or the merchant) answers.
M.UNTIL_DONE = 1000

--- How long an unpaid order holds its stock: config.order_ttl_s (default 900 s), at least
--- MIN_TTL_S outside tests. Raises on a bad setting, so a reload with one is refused.
function M.ttl_s(ttl_s)
  ttl_s = ttl_s or config.order_ttl_s or 900
  if math.type(ttl_s) ~= "integer" or ttl_s < 1 or (ttl_s < M.MIN_TTL_S and not config.test_mode) then
    error("order_ttl_s must be a whole number of seconds, at least " .. M.MIN_TTL_S
          .. " (WeChat's close needs 5 minutes)", 0)
  end
  return ttl_s
end

local BASE36 = "0123456789abcdefghijklmnopqrstuvwxyz"

--- A new order number: prefix, the time in ms as 9 base-36 digits, 72 random bits in hex —
--- at most 31 characters (WeChat takes 32). The random part makes it unguessable; the time
--- part makes numbers grow, so a batch of new orders lands on the same index pages instead of
--- one random page each (a third of the disk writes of an order).
function M.new_order_no(prefix, now_ms)
  local digits, t = {}, now_ms
  for i = 9, 1, -1 do
    local d = t % 36
    digits[i] = BASE36:sub(d + 1, d + 1)
    t = t // 36
  end
  return prefix .. table.concat(digits) .. secure.random_id(9)
end

function M.load(order_no)
  return db.one("SELECT * FROM orders WHERE order_no = ?", order_no)
end

--- The order of `openid`, or nil: another user's order does not exist for them.
function M.load_owned(order_no, openid)
  if type(order_no) ~= "string" or #order_no > 64 then return nil end
  return db.one("SELECT * FROM orders WHERE order_no = ? AND openid = ?", order_no, openid)
end

function M.items(order_no)
  return db.query("SELECT product_id, name, qty, price FROM order_items WHERE order_no = ? ORDER BY product_id", order_no)
end

--- The order as the API shows it.
function M.view(o)
  local v = {
    order_no = o.order_no, status = o.status, amount = o.amount,
    items = M.items(o.order_no),
    created_at = timefmt.rfc3339(o.created_at), expires_at = timefmt.rfc3339(o.expires_at),
  }
  if o.paid_at then v.paid_at = timefmt.rfc3339(o.paid_at) end
  if o.transaction_id then v.transaction_id = o.transaction_id end
  if o.refunded and o.refunded > 0 then v.refunded = o.refunded end
  if o.closed_reason then v.closed_reason = o.closed_reason end
  return v
end

-- Move qty units of each item between two product columns; returns the first item
-- that did not fit (nil when all moved). from/to: "stock", "reserved", "sold".
local MOVES = {}
for _, from in ipairs({ "stock", "reserved", "sold" }) do
  for _, to in ipairs({ "stock", "reserved", "sold" }) do
    if from ~= to then
      MOVES[from .. ">" .. to] = string.format(
        "UPDATE products SET %s = %s - ?, %s = %s + ? WHERE id = ? AND %s >= ?", from, from, to, to, from)
    end
  end
end

function M.move(items, from, to)
  local sql = assert(MOVES[from .. ">" .. to], "no such stock move")
  for _, it in ipairs(items) do
    local changed = db.exec(sql, it.qty, it.qty, it.product_id, it.qty)
    if changed ~= 1 then return it end
  end
  return nil
end

-- Check the items of a new order and price them from our own table (the client never
-- sends prices). Lines come sorted by product_id: every order locks products in one order.
local function priced_lines(items)
  if type(items) ~= "table" or #items == 0 or #items > M.MAX_LINES then
    app.fail(400, "invalid_request", "items must be a list of 1 to " .. M.MAX_LINES .. " {product_id, qty}")
  end
  local lines, seen = {}, {}
  for i, it in ipairs(items) do
    if type(it) ~= "table" then app.fail(400, "invalid_request", "item " .. i .. " is not an object") end
    local id = app.integer(it.product_id, 1, 2 ^ 31, "items[" .. i .. "].product_id")
    if seen[id] then app.fail(400, "invalid_request", "product " .. id .. " appears twice; put the quantity in one line") end
    seen[id] = true
    local product = db.one("SELECT * FROM products WHERE id = ?", id)
    if not product then app.fail(400, "invalid_request", "there is no product " .. id) end
    local qty = app.integer(it.qty, 1, product.max_per_order, "items[" .. i .. "].qty")
    lines[#lines + 1] = { product_id = id, qty = qty, product = product }
  end
  table.sort(lines, function(a, b) return a.product_id < b.product_id end)
  return lines
end

-- What the stock rule sees: copies, so a rule cannot change what is charged or reserved.
local function copies(lines)
  local out = {}
  for i, l in ipairs(lines) do
    local product = {}
    for k, v in pairs(l.product) do product[k] = v end
    out[i] = { product_id = l.product_id, qty = l.qty, product = product }
  end
  return out
end

local function describe(lines)
  local text = lines[1].product.name .. (#lines > 1 and (" and " .. (#lines - 1) .. " more") or "")
  return #text <= 120 and text or text:sub(1, 120)
end

--- Create an order (CREATED) and reserve its units, in one transaction (a savepoint when
--- the caller has one open; nothing in it waits). o:
---   openid  who orders (the payer)
---   items   the client's list of {product_id, qty}; checked here (400 invalid_request)
---   rule    the stock rule, function(openid, lines) → decision (see shop.stock); default: allow
---   ttl_s   how long it may stay unpaid (default config.order_ttl_s or 900)
---   prefix  of the order number (default "PG")
--- Returns the order row. Refusals raise app.fail: 409 out_of_stock, limit_reached or the
--- rule's own code; nothing is reserved then.
function M.create(o)
  local ttl_s = M.ttl_s(o.ttl_s)
  local rule = o.rule or stock.allow_all
  assert(type(rule) == "function", "orders.create: rule must be a function(openid, lines)")
  assert(type(o.openid) == "string" and o.openid ~= "", "orders.create: openid is required")
  assert(o.prefix == nil or (type(o.prefix) == "string" and o.prefix:match("^%w?%w?%w?%w?$")),
         "orders.create: prefix must be at most 4 letters or digits")
  return db.tx(function()
    local lines = priced_lines(o.items)
    local amount = 0
    for _, l in ipairs(lines) do amount = amount + l.qty * l.product.price end   -- integer fen
    stock.enforce(rule(o.openid, copies(lines)), lines)
    local short = M.move(lines, "stock", "reserved")
    if short then
      app.fail(409, "out_of_stock",
        string.format("%s (product %d) has fewer than %d left", short.product.name, short.product_id, short.qty))
    end
    local now = clock.now()
    local no = M.new_order_no(o.prefix or "PG", now)
    db.exec([[INSERT INTO orders(order_no, openid, status, amount, description, created_at, expires_at, updated_at)
              VALUES (?, ?, 'CREATED', ?, ?, ?, ?, ?)]], no, o.openid, amount, describe(lines), now, now + ttl_s * 1000, now)
    for _, l in ipairs(lines) do
      db.exec("INSERT INTO order_items(order_no, product_id, name, qty, price) VALUES (?, ?, ?, ?, ?)",
              no, l.product_id, l.product.name, l.qty, l.product.price)
    end
    jobs.schedule("expire_order", { order_no = no }, { run_at = now + ttl_s * 1000, key = "expire:" .. no,
                                                       max_attempts = M.UNTIL_DONE })   -- until WeChat answers
    metrics.inc("paygate_orders_total", { status = "CREATED" })
    return M.load(no)
  end)
end

--- CREATED|PAYING → PAID: stock reserved → sold, fulfillment queued, expiry no longer needed.
--- Returns true when this call made the transition.
function M.mark_paid(order, transaction_id, paid_at)
  local changed = db.exec([[UPDATE orders SET status = 'PAID', transaction_id = ?, paid_at = ?, updated_at = ?
                            WHERE order_no = ? AND status IN ('CREATED', 'PAYING')]],
                          transaction_id, paid_at, clock.now(), order.order_no)
  if changed ~= 1 then return false end
  local short = M.move(M.items(order.order_no), "reserved", "sold")
  assert(not short, "reserved stock missing for a paid order")   -- an invariant, never expected
  M.queue_fulfillment(order.order_no)
  jobs.cancel("expire:" .. order.order_no)
  metrics.inc("paygate_orders_total", { status = "PAID" })
  return true
end

--- CREATED|PAYING → CLOSED: reserved stock back on sale. Only once WeChat confirmed.
function M.close(order, reason)
  local changed = db.exec([[UPDATE orders SET status = 'CLOSED', closed_reason = ?, updated_at = ?
                            WHERE order_no = ? AND status IN ('CREATED', 'PAYING')]],
                          reason, clock.now(), order.order_no)
  if changed ~= 1 then return false end
  local short = M.move(M.items(order.order_no), "reserved", "stock")
  assert(not short, "reserved stock missing for a closed order")
  jobs.cancel("expire:" .. order.order_no)
  metrics.inc("paygate_orders_total", { status = "CLOSED" })
  return true
end

--- A payment for a CLOSED order: sell the goods again if stock allows (→ PAID), else
--- refund the whole amount (→ REFUNDING). Never lost either way.
function M.paid_after_close(order, transaction_id, paid_at)
  local items = M.items(order.order_no)
  local ok = pcall(db.tx, function()
    local short = M.move(items, "stock", "sold")
    if short then error("out of stock", 0) end
  end)
  local status = ok and "PAID" or "REFUNDING"
  db.exec([[UPDATE orders SET status = ?, transaction_id = ?, paid_at = ?, closed_reason = NULL, updated_at = ?
            WHERE order_no = ? AND status = 'CLOSED']], status, transaction_id, paid_at, clock.now(), order.order_no)
  if ok then
    M.queue_fulfillment(order.order_no)
    log.warn("payment arrived after close; goods re-reserved", { order = order.order_no })
  else
    M.start_refund(order.order_no, order.amount, "paid after the order closed; out of stock")
    log.warn("payment arrived after close; out of stock, refunding", { order = order.order_no })
  end
  return status
end

--- Record a refund to send (the submit_refund job sends it) and mark the order REFUNDING.
function M.start_refund(order_no, amount, reason)
  local out_refund_no = "RF" .. secure.random_id(12)
  db.exec([[INSERT INTO refunds(out_refund_no, order_no, amount, reason, status, created_at, updated_at)
            VALUES (?, ?, ?, ?, 'PENDING', ?, ?)]], out_refund_no, order_no, amount, reason, clock.now(), clock.now())
  db.exec("UPDATE orders SET status = 'REFUNDING', updated_at = ? WHERE order_no = ?", clock.now(), order_no)
  jobs.schedule("submit_refund", { out_refund_no = out_refund_no }, { key = "refund:" .. out_refund_no,
                                                                    max_attempts = M.UNTIL_DONE })
  return out_refund_no
end

--- After a refund settles: REFUNDED if money went back, PAID if every refund failed.
function M.settle_refunds(order_no)
  local pending = db.one([[SELECT count(*) AS n FROM refunds WHERE order_no = ?
                           AND status IN ('PENDING', 'PROCESSING', 'ABNORMAL')]], order_no).n
  local done = db.one("SELECT coalesce(sum(amount), 0) AS s FROM refunds WHERE order_no = ? AND status = 'SUCCESS'",
                      order_no).s
  local status = pending > 0 and "REFUNDING" or (done > 0 and "REFUNDED" or "PAID")
  db.exec("UPDATE orders SET status = ?, refunded = ?, updated_at = ? WHERE order_no = ?",
          status, done, clock.now(), order_no)
  return status
end

--- What may still be refunded: paid amount minus refunds that succeeded or are under way.
function M.refundable(order)
  local used = db.one([[SELECT coalesce(sum(amount), 0) AS s FROM refunds WHERE order_no = ?
                        AND status IN ('PENDING', 'PROCESSING', 'ABNORMAL', 'SUCCESS')]], order.order_no).s
  return order.amount - used
end

function M.queue_fulfillment(order_no)
  db.exec([[INSERT INTO fulfillments(order_no, status, attempts, created_at) VALUES (?, 'PENDING', 0, ?)
            ON CONFLICT(order_no) DO NOTHING]], order_no, clock.now())
  jobs.schedule("fulfill", { order_no = order_no }, { key = "fulfill:" .. order_no, max_attempts = M.UNTIL_DONE })
end

return M

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
-- arrives twice. Each transition records its lifecycle event (shop.events) in the same
-- transaction; the merchant's rules (shop.hooks) are asked at the points docs/shop.md names.

local app = require "paygate"
local events = require "shop.events"
local hooks = require "shop.hooks"
local pricing = require "shop.pricing"
local rules = require "shop.rules"
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

--- The order's lines: {product_id, name, qty, price (the unit list price), amount (what the
--- line costs after the adjustments, spread: shop.pricing)}, by product.
function M.items(order_no)
  return db.query([[SELECT product_id, name, qty, price, coalesce(net, qty * price) AS amount FROM order_items
                    WHERE order_no = ? ORDER BY product_id]], order_no)
end

--- The order's adjustments, in the order they were applied: {code, label, amount, product_id?}.
function M.adjustments(order_no)
  return db.query("SELECT code, label, amount, product_id FROM order_adjustments WHERE order_no = ? ORDER BY seq",
                  order_no)
end

--- The order as the API shows it. A partly refunded order stays PAID with `refunded` beside
--- its amount; REFUNDED means all of it went back.
function M.view(o)
  local items = M.items(o.order_no)
  local subtotal = 0
  for _, it in ipairs(items) do subtotal = subtotal + it.qty * it.price end
  local v = {
    order_no = o.order_no, status = o.status, amount = o.amount, subtotal = subtotal, channel = o.channel,
    items = items, adjustments = json.array(M.adjustments(o.order_no)),
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

--- Move every line of an order that a transition moves (paid: reserved → sold, closed:
--- reserved → stock, refunded: sold → stock). A line that does not fit means the stock columns
--- disagree with the orders (an operator's edit, a merchant's SQL): the transition still happens
--- — the money is what counts — and the line is logged and counted
--- (paygate_stock_mismatch_total) for an operator to recompute (shop.stock.recompute).
--- Returns how many lines did not fit.
function M.move_all(items, from, to, order_no, transition)
  local sql = assert(MOVES[from .. ">" .. to], "no such stock move")
  local missing = 0
  for _, it in ipairs(items) do
    if db.exec(sql, it.qty, it.qty, it.product_id, it.qty) ~= 1 then
      missing = missing + 1
      log.error("stock columns disagree with an order; recompute them (shop.stock.recompute)",
                { order = order_no, product = it.product_id, qty = it.qty, move = from .. ">" .. to })
      metrics.inc("paygate_stock_mismatch_total", { transition = transition })
    end
  end
  return missing
end

--- Check a client's list of {product_id, qty} (an order's, a refund's): 1 to MAX_LINES
--- objects, each product once. Returns their product ids, in order; 400 invalid_request else.
function M.item_ids(items)
  if type(items) ~= "table" or #items == 0 or #items > M.MAX_LINES then
    app.fail(400, "invalid_request", "items must be a list of 1 to " .. M.MAX_LINES .. " {product_id, qty}")
  end
  local ids, seen = {}, {}
  for i, it in ipairs(items) do
    if type(it) ~= "table" then app.fail(400, "invalid_request", "item " .. i .. " is not an object") end
    local id = app.integer(it.product_id, 1, 2 ^ 31, "items[" .. i .. "].product_id")
    if seen[id] then app.fail(400, "invalid_request", "product " .. id .. " appears twice; put the quantity in one line") end
    seen[id] = true
    ids[i] = id
  end
  return ids
end

-- Check the items of a new order and price them from our own table (the client never
-- sends prices). Lines come sorted by product_id: every order locks products in one order.
local function priced_lines(items)
  local ids, lines = M.item_ids(items), {}
  for i, it in ipairs(items) do
    local id = ids[i]
    local product = db.one("SELECT * FROM products WHERE id = ?", id)
    if not product then app.fail(400, "invalid_request", "there is no product " .. id) end
    local qty = app.integer(it.qty, 1, product.max_per_order, "items[" .. i .. "].qty")
    lines[#lines + 1] = { product_id = id, qty = qty, price = product.price, name = product.name, product = product }
  end
  table.sort(lines, function(a, b) return a.product_id < b.product_id end)
  return lines
end

-- The order request's other fields (a coupon code, a note ...), kept for the checks that run
-- again when a payment arrives after close. nil when there are none.
local function request_context(body)
  if type(body) ~= "table" then return nil end
  local rest = {}
  for k, v in pairs(body) do if k ~= "items" then rest[k] = v end end
  return next(rest) ~= nil and json.encode(rest) or nil
end

-- Price lines for ctx and put the price into ctx (subtotal, total, adjustments), then ask the
-- checks: what orders.create and orders.quote share.
local function price_and_check(ctx, lines)
  local priced = pricing.price(ctx, lines)
  ctx.subtotal, ctx.total, ctx.adjustments = priced.subtotal, priced.amount, priced.adjustments
  rules.check(ctx, lines)
  return priced
end

local function quote_view(lines, priced)
  local items = json.array()
  for _, l in ipairs(lines) do
    items[#items + 1] = { product_id = l.product_id, name = l.name, qty = l.qty, price = l.price, amount = l.net }
  end
  return { items = items, subtotal = priced.subtotal, adjustments = pricing.public(priced.adjustments),
           amount = priced.amount }
end

local function describe(lines)
  local text = lines[1].product.name .. (#lines > 1 and (" and " .. (#lines - 1) .. " more") or "")
  return #text <= 120 and text or text:sub(1, 120)
end

--- The channels an order is paid through: "miniprogram" (JSAPI, wx.requestPayment, the
--- mini program's appid) and "app" (APP pay, the OpenSDK's PayReq, the mobile app's appid).
M.CHANNELS = { miniprogram = true, app = true }

--- Create an order (CREATED) and reserve its units, in one transaction (a savepoint when
--- the caller has one open; nothing in it waits). o:
---   openid  who orders (the payer)
---   items   the client's list of {product_id, qty}; checked here (400 invalid_request)
---   body    the order request (a table): the hooks see it as ctx.body (a coupon code ...)
---   rule    a stock rule, function(openid, lines, ctx) → decision (see shop.stock), asked at
---           creation only; a rule registered with shop.hooks (decide) is also asked when a
---           payment after close re-sells the order
---   ttl_s   how long it may stay unpaid (default config.order_ttl_s or 900)
---   prefix  of the order number (default "PG")
---   channel "miniprogram" (default) or "app": how it will be paid, hence under which appid
--- In order: price (list prices, then the quote hooks), check hooks, stock decisions, reserve,
--- insert the order, its items and adjustments, claim hooks, schedule the expiry.
--- Returns the order row. Refusals raise app.fail: 409 out_of_stock, limit_reached, a check's
--- or the rule's own code; nothing is reserved or recorded then.
function M.create(o)
  local ttl_s = M.ttl_s(o.ttl_s)
  assert(o.rule == nil or type(o.rule) == "function", "orders.create: rule must be a function(openid, lines)")
  assert(type(o.openid) == "string" and o.openid ~= "", "orders.create: openid is required")
  assert(o.body == nil or type(o.body) == "table", "orders.create: body must be the request's table")
  assert(o.prefix == nil or (type(o.prefix) == "string" and o.prefix:match("^%w?%w?%w?%w?$")),
         "orders.create: prefix must be at most 4 letters or digits")
  local channel = o.channel or "miniprogram"
  if not M.CHANNELS[channel] then
    app.fail(400, "invalid_request", "channel must be \"miniprogram\" or \"app\"")
  end
  return db.tx(function()
    local lines = priced_lines(o.items)
    local ctx = pricing.context{ purpose = "order", openid = o.openid, body = o.body }
    local priced = price_and_check(ctx, lines)
    rules.decide(o.openid, lines, ctx, o.rule)
    local short = M.move(lines, "stock", "reserved")
    if short then
      app.fail(409, "out_of_stock",
        string.format("%s (product %d) has fewer than %d left", short.product.name, short.product_id, short.qty))
    end
    local now = clock.now()
    local no = M.new_order_no(o.prefix or "PG", now)
    db.exec([[INSERT INTO orders(order_no, openid, status, amount, description, created_at, expires_at, updated_at,
                                 units, context, channel)
              VALUES (?, ?, 'CREATED', ?, ?, ?, ?, ?, 'reserved', ?, ?)]],
            no, o.openid, priced.amount, describe(lines), now, now + ttl_s * 1000, now, request_context(o.body),
            channel)
    for _, l in ipairs(lines) do
      db.exec("INSERT INTO order_items(order_no, product_id, name, qty, price, net) VALUES (?, ?, ?, ?, ?, ?)",
              no, l.product_id, l.name, l.qty, l.price, l.net)
    end
    for _, a in ipairs(priced.adjustments) do
      db.exec("INSERT INTO order_adjustments(order_no, seq, code, label, amount, product_id) VALUES (?, ?, ?, ?, ?, ?)",
              no, a.seq, a.code, a.label, a.amount, a.product_id)
    end
    ctx.order_no = no
    rules.claim(ctx, M.load(no), lines)
    local units = 0
    for _, l in ipairs(lines) do units = units + l.qty end
    events.record(no, "created", { amount = priced.amount, units = units }, nil, o.actor or "user")
    jobs.schedule("expire_order", { order_no = no }, { run_at = now + ttl_s * 1000, key = "expire:" .. no,
                                                       max_attempts = M.UNTIL_DONE })   -- until WeChat answers
    metrics.inc("paygate_orders_total", { status = "CREATED" })
    return M.load(no)
  end)
end

local ROLLBACK = {}               -- raised to end a quote's transaction without keeping anything

--- What orders.create would charge, without creating the order: the same lines, the same
--- pricing step and the same checks, in a transaction that is always rolled back (whatever a
--- hook wrote is gone). o: {openid, items, body}. Returns { items = {product_id, name, qty,
--- price, amount}, subtotal, adjustments, amount }. Refusals: as orders.create's (400, or a
--- check's own); stock is not asked.
function M.quote(o)
  assert(type(o.openid) == "string" and o.openid ~= "", "orders.quote: openid is required")
  local result
  local ok, err = pcall(db.tx, function()
    local lines = priced_lines(o.items)
    local ctx = pricing.context{ purpose = "quote", openid = o.openid, body = o.body }
    result = quote_view(lines, price_and_check(ctx, lines))
    error(ROLLBACK, 0)
  end)
  if not ok and err ~= ROLLBACK then error(err, 0) end
  return result
end

--- The product list with the price each product shows when the pricing step changes it:
--- display_price (one unit, its line's adjustments: a member price, a sale price) and
--- price_labels, for openid (nil: not logged in). Products whose price no hook changes are
--- returned as they are. A hook that fails here is logged and the list price shown.
function M.display(products, openid)
  if not hooks.quotes_for_display() then return products end
  pcall(db.tx, function()
    for _, p in ipairs(products) do
      local ok, err = pcall(function()
        local row = db.one("SELECT * FROM products WHERE id = ?", p.id)
        local lines = { { product_id = row.id, qty = 1, price = row.price, name = row.name, product = row } }
        local priced = pricing.price(pricing.context{ purpose = "display", openid = openid }, lines)
        local off, labels = 0, json.array()
        for _, a in ipairs(priced.adjustments) do
          if a.product_id == row.id then off = off + a.amount; labels[#labels + 1] = a.label end
        end
        if off ~= 0 then p.display_price, p.price_labels = row.price + off, labels end
      end)
      if not ok then log.warn("display price failed; showing the list price", { product = p.id, error = tostring(err) }) end
    end
    error(ROLLBACK, 0)
  end)
  return products
end

-- The lines of a stored order as the hooks see them, with today's product rows.
local function stored_lines(order_no)
  local lines = {}
  for _, it in ipairs(db.query("SELECT product_id, name, qty, price, coalesce(net, qty * price) AS net FROM order_items "
                               .. "WHERE order_no = ? ORDER BY product_id", order_no)) do
    local own = db.one("SELECT coalesce(sum(amount), 0) AS s FROM order_adjustments WHERE order_no = ? AND product_id = ?",
                       order_no, it.product_id).s
    lines[#lines + 1] = { product_id = it.product_id, qty = it.qty, price = it.price, name = it.name,
                          amount = it.qty * it.price + own, net = it.net,
                          product = db.one("SELECT * FROM products WHERE id = ?", it.product_id) }
  end
  return lines
end

--- CREATED|PAYING → PAID: stock reserved → sold, fulfillment queued, the paid event,
--- expiry no longer needed. Returns true when this call made the transition.
--- via: how the payment was learned ("notification", "query", ...), for the audit trail.
function M.mark_paid(order, transaction_id, paid_at, via)
  local changed = db.exec([[UPDATE orders SET status = 'PAID', transaction_id = ?, paid_at = ?, units = 'sold',
                            updated_at = ? WHERE order_no = ? AND status IN ('CREATED', 'PAYING')]],
                          transaction_id, paid_at, clock.now(), order.order_no)
  if changed ~= 1 then return false end
  M.move_all(M.items(order.order_no), "reserved", "sold", order.order_no, "paid")
  M.queue_fulfillment(order.order_no)
  jobs.cancel("expire:" .. order.order_no)
  events.queue(order.order_no, "paid", { transaction_id = transaction_id, amount = order.amount, via = via })
  metrics.inc("paygate_orders_total", { status = "PAID" })
  return true
end

--- CREATED|PAYING → CLOSED: reserved stock back on sale, the release hooks, the closed event.
--- Only once WeChat confirmed.
function M.close(order, reason)
  local changed = db.exec([[UPDATE orders SET status = 'CLOSED', closed_reason = ?, units = 'released', updated_at = ?
                            WHERE order_no = ? AND status IN ('CREATED', 'PAYING')]],
                          reason, clock.now(), order.order_no)
  if changed ~= 1 then return false end
  M.move_all(M.items(order.order_no), "reserved", "stock", order.order_no, "closed")
  rules.release(M.load(order.order_no), reason)
  jobs.cancel("expire:" .. order.order_no)
  events.queue(order.order_no, "closed", { reason = reason })
  metrics.inc("paygate_orders_total", { status = "CLOSED" })
  return true
end

-- A refund's reason is shown to the payer: at most 80 bytes.
local function short_reason(text) return #text <= 80 and text or text:sub(1, 80) end

--- A payment for a CLOSED order: the merchant's checks and stock decisions are asked again
--- (ctx.purpose "resell"), the units sold again from stock and the claims made again; if all
--- of that works → PAID (delivery queued, the paid event); if anything refuses → the whole
--- amount is refunded (→ REFUNDING). The payment is never lost either way.
function M.paid_after_close(order, transaction_id, paid_at, via)
  local ok, why = pcall(db.tx, function()
    local lines = stored_lines(order.order_no)
    local ctx = pricing.context{ purpose = "resell", openid = order.openid, order_no = order.order_no,
                                 body = order.context and json.decode(order.context) or {} }
    local subtotal = 0
    for _, l in ipairs(lines) do subtotal = subtotal + l.qty * l.price end
    ctx.subtotal, ctx.total, ctx.adjustments = subtotal, order.amount, M.adjustments(order.order_no)
    rules.check(ctx, lines)
    rules.decide(order.openid, lines, ctx)
    local short = M.move(lines, "stock", "sold")
    if short then app.fail(409, "out_of_stock", "out of stock") end
    rules.claim(ctx, order, lines)
  end)
  local status = ok and "PAID" or "REFUNDING"
  db.exec([[UPDATE orders SET status = ?, transaction_id = ?, paid_at = ?, closed_reason = NULL, units = ?, updated_at = ?
            WHERE order_no = ? AND status = 'CLOSED']],
          status, transaction_id, paid_at, ok and "sold" or "released", clock.now(), order.order_no)
  if ok then
    M.queue_fulfillment(order.order_no)
    events.queue(order.order_no, "paid", { transaction_id = transaction_id, after_close = true, amount = order.amount,
                                           via = via })
    metrics.inc("paygate_orders_total", { status = "PAID" })   -- as every order that becomes PAID
    log.warn("payment arrived after close; goods re-reserved", { order = order.order_no })
  else
    local code = type(why) == "table" and tostring(why.error) or "error"
    if type(why) ~= "table" then
      log.error("a hook failed while re-selling a closed order; refunding",
                { order = order.order_no, error = tostring(why) })
    end
    local reason = code == "out_of_stock" and "paid after the order closed; out of stock"
        or short_reason("paid after the order closed; refused: " .. code)
    events.record(order.order_no, "paid", { transaction_id = transaction_id, after_close = true, refused = code,
                                            amount = order.amount, via = via }, "paid_refused:" .. order.order_no)
    M.start_refund(order.order_no, order.amount, reason)
    log.warn("payment arrived after close; refused (" .. code .. "), refunding", { order = order.order_no })
  end
  return status
end

--- Record a refund to send (the submit_refund job sends it) and mark the order REFUNDING.
--- items: for a refund by line, its {product_id, qty, amount, restock} (shop.refunds).
--- by: who asked (an admin token's name, "loopback"; default "system"), for the audit trail.
function M.start_refund(order_no, amount, reason, items, by)
  local out_refund_no = "RF" .. secure.random_id(12)
  db.exec([[INSERT INTO refunds(out_refund_no, order_no, amount, reason, status, created_at, updated_at)
            VALUES (?, ?, ?, ?, 'PENDING', ?, ?)]], out_refund_no, order_no, amount, reason, clock.now(), clock.now())
  for _, it in ipairs(items or {}) do
    db.exec("INSERT INTO refund_items(out_refund_no, product_id, qty, amount, restock) VALUES (?, ?, ?, ?, ?)",
            out_refund_no, it.product_id, it.qty, it.amount, it.restock and 1 or 0)
  end
  db.exec("UPDATE orders SET status = 'REFUNDING', updated_at = ? WHERE order_no = ?", clock.now(), order_no)
  events.record(order_no, "refund_requested", { out_refund_no = out_refund_no, amount = amount, reason = reason,
                                               units = items and #items > 0 and items or nil },
                "refund_requested:" .. out_refund_no, by or "system")
  jobs.schedule("submit_refund", { out_refund_no = out_refund_no }, { key = "refund:" .. out_refund_no,
                                                                    max_attempts = M.UNTIL_DONE })
  return out_refund_no
end

--- After a refund settles: REFUNDING while one is under way; REFUNDED once all of the amount
--- went back; otherwise PAID, with `refunded` saying how much went back (0 if all failed).
function M.settle_refunds(order_no)
  local pending = db.one([[SELECT count(*) AS n FROM refunds WHERE order_no = ?
                           AND status IN ('PENDING', 'PROCESSING', 'ABNORMAL')]], order_no).n
  local done = db.one("SELECT coalesce(sum(amount), 0) AS s FROM refunds WHERE order_no = ? AND status = 'SUCCESS'",
                      order_no).s
  local amount = db.one("SELECT amount FROM orders WHERE order_no = ?", order_no).amount
  local status = pending > 0 and "REFUNDING" or (done >= amount and "REFUNDED" or "PAID")
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


M.LIST_DEFAULT = 20               -- orders per page of a user's list
M.LIST_MAX = 100

--- One page of openid's own orders, newest first (created_at, then the order of insertion,
--- both descending: two orders of one millisecond keep the order they were made in; on
--- PostgreSQL, which has no rowid, orders of one millisecond come by order_no, descending).
--- o: {limit (1..LIST_MAX, default LIST_DEFAULT), before (an order_no of this user: the page
--- starts after it)}. Returns the rows and, when more remain, the order_no to pass as
--- `before` for the next page. The index orders_by_owner (openid, created_at), whose entries
--- end with the rowid (on PostgreSQL: with order_no, in its DDL), serves it in index order with
--- no sort, and the read stops after limit + 1 rows, however many orders the user has.
M.LIST_SQL = "SELECT * FROM orders WHERE openid = ? ORDER BY created_at DESC, rowid DESC LIMIT ?"
M.LIST_AFTER_SQL = [[SELECT * FROM orders WHERE openid = ? AND created_at <= ? AND (created_at < ? OR rowid < ?)
                     ORDER BY created_at DESC, rowid DESC LIMIT ?]]
M.LIST_SQL_POSTGRESQL = "SELECT * FROM orders WHERE openid = ? ORDER BY created_at DESC, order_no DESC LIMIT ?"
M.LIST_AFTER_SQL_POSTGRESQL = [[SELECT * FROM orders WHERE openid = ? AND (created_at, order_no) < (?, ?)
                                ORDER BY created_at DESC, order_no DESC LIMIT ?]]

function M.list_owned(openid, o)
  local limit = o.limit or M.LIST_DEFAULT
  assert(math.type(limit) == "integer" and limit >= 1 and limit <= M.LIST_MAX, "orders.list_owned: bad limit")
  local pg = db.dialect == "postgresql"
  local rows
  if o.before then
    local cursor = db.one(pg and "SELECT created_at, order_no FROM orders WHERE order_no = ? AND openid = ?"
                          or "SELECT created_at, rowid AS rid FROM orders WHERE order_no = ? AND openid = ?",
                          o.before, openid)
    if not cursor then app.fail(400, "invalid_request", "before must be the order_no of one of your orders") end
    if pg then
      rows = db.query(M.LIST_AFTER_SQL_POSTGRESQL, openid, cursor.created_at, cursor.order_no, limit + 1)
    else
      rows = db.query(M.LIST_AFTER_SQL, openid, cursor.created_at, cursor.created_at, cursor.rid, limit + 1)
    end
  else
    rows = db.query(pg and M.LIST_SQL_POSTGRESQL or M.LIST_SQL, openid, limit + 1)
  end
  local next_no
  if #rows > limit then
    rows[#rows] = nil
    next_no = rows[#rows].order_no
  end
  return rows, next_no
end

return M

-- Operators: orders with their payment, adjustments, refunds, delivery and events; coupons;
-- putting the stock columns right when they disagree with the orders; the daily reconciliation.
local app = require "paygate"
local coupons = require "shop.coupons"
local events = require "shop.events"
local orders = require "shop.orders"
local reconcile_bills = require "shop.reconcile_bills"
local refunds = require "shop.refunds"
local stock = require "shop.stock"

local STATUSES = { CREATED = true, PAYING = true, PAID = true, CLOSED = true, REFUNDING = true, REFUNDED = true }

-- The value of name in a query string like "status=PAID&limit=10", or nil.
local function param(query, name)
  for k, v in query:gmatch("([^&=]+)=([^&]*)") do
    if k == name then return v end
  end
end

app.get("/admin/orders", function(req)
  local status = param(req.query, "status")
  status = status and status:upper()
  if status and not STATUSES[status] then app.fail(400, "invalid_request", "unknown status " .. status) end
  local limit = param(req.query, "limit") or "50"
  limit = math.tointeger(tonumber(limit))
  if not limit or limit < 1 then app.fail(400, "invalid_request", "limit must be a whole number from 1 to 500") end
  limit = math.min(limit, 500)
  local rows = status
    and db.query("SELECT * FROM orders WHERE status = ? ORDER BY created_at DESC LIMIT ?", status, limit)
    or db.query("SELECT * FROM orders ORDER BY created_at DESC LIMIT ?", limit)
  local list = json.array()
  for _, o in ipairs(rows) do
    local v = orders.view(o)
    v.openid = o.openid
    local f = db.one("SELECT status, attempts, last_error FROM fulfillments WHERE order_no = ?", o.order_no)
    v.fulfillment = f or json.null
    v.refunds = json.array()
    for _, r in ipairs(db.query("SELECT out_refund_no FROM refunds WHERE order_no = ? ORDER BY created_at", o.order_no)) do
      v.refunds[#v.refunds + 1] = refunds.describe(r.out_refund_no)
    end
    v.events = json.array(events.of(o.order_no))
    list[#list + 1] = v
  end
  return 200, { orders = list }
end)

-- POST /admin/coupons {code, kind: "amount"|"percent", value, label?, min_amount?, starts_at?,
-- ends_at?, per_user?, total_limit?}; GET /admin/coupons. Codes apply while rules.lua uses
-- shop.coupons.
app.post("/admin/coupons", function(req)
  return 201, coupons.create(app.read_json(req))
end)

app.get("/admin/coupons", function(req)
  return 200, { coupons = coupons.list() }
end)

-- POST /admin/stock/recompute: reserved and sold of every product from the orders (after
-- paygate_stock_mismatch_total counted a disagreement); answers the products it changed.
app.post("/admin/stock/recompute", function(req)
  return 200, { changed = stock.recompute() }
end)

-- GET /admin/reconciliation?date=YYYY-MM-DD: that day against WeChat's trade bill — its figures
-- and every difference (kind, status OPEN / SETTLED / RESOLVED, what to do); without date, the
-- days reconciled, newest first. POST /admin/reconciliation {date}: run that day (again) now.
app.get("/admin/reconciliation", function(req)
  local date = param(req.query, "date")
  if not date then return 200, { days = json.array(reconcile_bills.days(31)) } end
  if not reconcile_bills.date_ok(date) then app.fail(400, "invalid_request", "date must be YYYY-MM-DD (Beijing)") end
  local day, items = reconcile_bills.day(date)
  if not day then app.fail(404, "not_found", "no reconciliation of " .. date .. " yet (POST /admin/reconciliation)") end
  return 200, { day = day, items = json.array(items) }
end)

app.post("/admin/reconciliation", function(req)
  local b = app.read_json(req)
  if not reconcile_bills.date_ok(b.date) then app.fail(400, "invalid_request", "date must be YYYY-MM-DD (Beijing)") end
  if b.date > reconcile_bills.date_of(clock.now()) then
    app.fail(400, "invalid_request", "WeChat has no bill of " .. b.date .. " yet")
  end
  local queued = reconcile_bills.queue(b.date)
  return 202, { date = b.date, queued = queued }
end)

-- Operators (and the web console at /admin/): orders with search, one order with its timeline,
-- the overview, notifications, jobs, products; coupons; putting the stock columns right when
-- they disagree with the orders; the daily reconciliation.
local app = require "paygate"
local console = require "shop.console"
local coupons = require "shop.coupons"
local events = require "shop.events"
local orders = require "shop.orders"
local reconcile_bills = require "shop.reconcile_bills"
local refunds = require "shop.refunds"
local stock = require "shop.stock"

-- GET /admin/orders?q=&status=&from=&to=&limit=: newest first; q is an order number, openid or
-- transaction id (or the start of one), from/to bound the creation time (ms or RFC 3339).
app.get("/admin/orders", function(req)
  local list = json.array()
  for _, o in ipairs(console.search(req.query)) do
    local v = orders.view(o)
    v.openid = o.openid
    v.created_ms = o.created_at                       -- for the next page: ?to=<created_ms of the last>
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

-- GET /admin/orders/{no}: the order with its items, payment, refunds, delivery, notifications and
-- timeline (every money event, oldest first, with who asked).
app.get("/admin/orders/{order_no}", function(req)
  local v = console.order(req.params.order_no)
  if not v then app.fail(404, "not_found", "no such order") end
  return 200, v
end)

-- GET /admin/overview?since=<ms>: the console's first page.
app.get("/admin/overview", function(req)
  return 200, console.overview(req.query)
end)

-- GET /admin/notifications?outcome=refused&limit=: WeChat's notifications, newest first.
app.get("/admin/notifications", function(req)
  return 200, { notifications = console.notifications(req.query) }
end)

-- GET /admin/jobs?state=dead: durable jobs; POST /admin/jobs/{id}/retry: a dead one runs again.
app.get("/admin/jobs", function(req)
  return 200, { jobs = console.jobs(req.query) }
end)

app.post("/admin/jobs/{id}/retry", function(req)
  local id = app.integer(math.tointeger(tonumber(req.params.id)), 1, 2 ^ 53, "job id")
  return 200, { id = console.retry_job(id, req.admin) }
end)

-- GET /admin/products: every product with its stock columns.
app.get("/admin/products", function(req)
  return 200, { products = json.array(db.query(
    "SELECT id, name, price, stock, reserved, sold, max_per_order, updated_at FROM products ORDER BY id")) }
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
  local date = app.query(req, "date")
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

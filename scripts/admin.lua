-- Operators: list orders with their payment, refund and delivery state.
local app = require "paygate"
local orders = require "shop.orders"

local STATUSES = { CREATED = true, PAYING = true, PAID = true, CLOSED = true, REFUNDING = true, REFUNDED = true }

app.get("/admin/orders", function(req)
  local status = req.query:match("status=(%u+)")
  local limit = math.tointeger(tonumber(req.query:match("limit=(%d+)") or "50")) or 50
  if status and not STATUSES[status] then app.fail(400, "invalid_request", "unknown status " .. status) end
  limit = math.max(1, math.min(limit, 500))
  local rows = status
    and db.query("SELECT * FROM orders WHERE status = ? ORDER BY created_at DESC LIMIT ?", status, limit)
    or db.query("SELECT * FROM orders ORDER BY created_at DESC LIMIT ?", limit)
  local list = json.array()
  for _, o in ipairs(rows) do
    local v = orders.view(o)
    v.openid = o.openid
    local f = db.one("SELECT status, attempts, last_error FROM fulfillments WHERE order_no = ?", o.order_no)
    v.fulfillment = f or json.null
    v.refunds = db.query("SELECT out_refund_no, amount, status, reason FROM refunds WHERE order_no = ?", o.order_no)
    list[#list + 1] = v
  end
  return 200, { orders = list }
end)

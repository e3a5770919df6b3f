-- The shop's tables. Migrations only grow: add a new one, never edit an applied one.
local app = require "paygate"
local shop = require "shop.schema"

-- products, orders and items, notifications, refunds, fulfillment, idempotency keys
app.migration(1, "products, orders, payments, refunds, fulfillment", shop.TABLES)
app.migration(2, "demo products", require("demo").add_products)
-- lualib/shop's later changes to its tables (adjustments, order events, refunds by line,
-- coupons; the payment channel; reconciliation; the audit trail), at our next free version
-- numbers: one per change, and one more when it grows.
shop.declare{ 3, 4, 5, 6 }

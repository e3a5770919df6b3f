-- The shop's tables. Migrations only grow: add a new one, never edit an applied one.
local app = require "paygate"
local shop = require "shop.schema"

-- products, orders and items, notifications, refunds, fulfillment, idempotency keys
app.migration(1, "products, orders, payments, refunds, fulfillment", shop.TABLES)

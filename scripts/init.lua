-- The shop: our products, our stock rule, what delivering means, and the routes of our API.
-- The money steps (orders, payment, notifications, expiry, refunds, the delivery outbox)
-- are lualib/shop (docs/shop.md). Edit any file here and the gateway reloads it live.
require "schema"        -- tables (migrations)
require "products"      -- GET /api/products, PUT /admin/products/{id}
require "login"         -- POST /api/login
require "orders"        -- create, read, pay, cancel orders
require "notify"        -- WeChat's payment and refund notifications
require "refunds"       -- POST /admin/orders/{no}/refund
require "admin"         -- GET /admin/orders
require "demo"          -- demo products when config.demo_products is set

-- The shop's background jobs: expiry, reconciliation, refunds, and delivery with ours.
require("shop.jobs").install{ deliver = require("fulfillment").deliver }

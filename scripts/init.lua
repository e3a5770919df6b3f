-- The shop: our products, our stock rule, our order rules, what delivering means, and the
-- routes of our API. The money steps (orders, payment, notifications, expiry, refunds, the
-- delivery outbox, order events) are lualib/shop (docs/shop.md). Edit any file here and the
-- gateway reloads it live.
require "schema"        -- tables (migrations), demo products when config.demo_products is set
require "products"      -- GET /api/products, PUT /admin/products/{id}
require "login"         -- POST /api/login
require "orders"        -- quote, create, read, pay, cancel orders
require "notify"        -- WeChat's payment and refund notifications
require "refunds"       -- POST /admin/orders/{no}/refund
require "admin"         -- GET /admin/orders, coupons, stock recompute, reconciliation

-- Our rules, asked in this order: the stock rule (stock.lua), then the order rules (rules.lua).
local stock = require "stock"
assert(type(stock.decide) == "function", "scripts/stock.lua must define rule.decide(openid, lines); see docs/shop.md")
require("shop.hooks").use({ name = "stock.lua", decide = stock.decide }, require "rules")

-- The shop's background jobs: expiry, reconciliation, refunds, order events, and delivery with ours.
require("shop.jobs").install{ deliver = require("fulfillment").deliver }

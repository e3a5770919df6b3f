-- The shop's business flow. Each file declares its routes, jobs and migrations;
-- edit any of them and the gateway reloads it without a restart.
require "schema"        -- tables (migrations)
require "products"      -- GET /api/products, PUT /admin/products/{id}
require "login"         -- POST /api/login
require "orders"        -- create, read, cancel orders
require "pay"           -- POST /api/orders/{no}/pay
require "notify"        -- WeChat's payment and refund notifications
require "expiry"        -- closing unpaid orders, asking WeChat about silent ones
require "refunds"       -- POST /admin/orders/{no}/refund and refund follow-up
require "fulfillment"   -- delivering paid orders, exactly once
require "admin"         -- GET /admin/orders
require "demo"          -- demo products when config.demo_products is set

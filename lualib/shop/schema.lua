-- shop.schema: the tables lualib/shop works on (products, orders, payments, refunds,
-- fulfillment, idempotency keys). A shop declares them as its first migration:
--   app.migration(1, "products, orders, payments, refunds, fulfillment", require("shop.schema").TABLES)
local M = {}

-- This text is migration 1 of every shop: it never changes (an applied migration's text is
-- checked), so later changes are new migrations. idempotency.state is always 'done': the
-- key is claimed and answered in one transaction (shop.idempotency), so 'running' is never
-- written; the column stays because dropping it would need every shop to add a migration.
M.TABLES = [[
  CREATE TABLE products (
    id            INTEGER PRIMARY KEY,
    name          TEXT NOT NULL,
    price         INTEGER NOT NULL CHECK (price > 0),          -- fen
    stock         INTEGER NOT NULL CHECK (stock >= 0),         -- available to sell
    reserved      INTEGER NOT NULL DEFAULT 0 CHECK (reserved >= 0),  -- held by unpaid orders
    sold          INTEGER NOT NULL DEFAULT 0 CHECK (sold >= 0),
    max_per_order INTEGER NOT NULL DEFAULT 99 CHECK (max_per_order > 0),
    updated_at    INTEGER NOT NULL
  );
  CREATE TABLE orders (
    order_no       TEXT PRIMARY KEY,                 -- also the out_trade_no at WeChat
    openid         TEXT NOT NULL,
    status         TEXT NOT NULL CHECK (status IN ('CREATED','PAYING','PAID','CLOSED','REFUNDING','REFUNDED')),
    amount         INTEGER NOT NULL CHECK (amount > 0),
    description    TEXT NOT NULL,
    created_at     INTEGER NOT NULL,
    expires_at     INTEGER NOT NULL,
    prepay_id      TEXT,
    prepay_at      INTEGER,
    paid_at        INTEGER,
    transaction_id TEXT UNIQUE,
    refunded       INTEGER NOT NULL DEFAULT 0 CHECK (refunded >= 0 AND refunded <= amount),
    closed_reason  TEXT,
    checked_at     INTEGER,                          -- last time WeChat was asked about it
    updated_at     INTEGER NOT NULL
  );
  CREATE INDEX orders_by_owner ON orders(openid, created_at);
  CREATE INDEX orders_by_status ON orders(status, created_at);
  CREATE TABLE order_items (
    order_no   TEXT NOT NULL REFERENCES orders(order_no),
    product_id INTEGER NOT NULL REFERENCES products(id),
    name       TEXT NOT NULL,
    qty        INTEGER NOT NULL CHECK (qty > 0),
    price      INTEGER NOT NULL CHECK (price > 0),
    PRIMARY KEY (order_no, product_id)
  );
  CREATE TABLE processed_notifications (           -- WeChat's notification ids, applied once
    id         TEXT PRIMARY KEY,
    kind       TEXT NOT NULL,
    order_no   TEXT,
    outcome    TEXT NOT NULL,
    received_at INTEGER NOT NULL
  );
  CREATE TABLE notification_log (                  -- every notification and query answer, refused ones too
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    kind        TEXT NOT NULL,
    notify_id   TEXT,
    order_no    TEXT,
    outcome     TEXT NOT NULL,
    reason      TEXT,
    received_at INTEGER NOT NULL
  );
  CREATE TABLE refunds (
    out_refund_no TEXT PRIMARY KEY,
    order_no      TEXT NOT NULL REFERENCES orders(order_no),
    amount        INTEGER NOT NULL CHECK (amount > 0),
    reason        TEXT,
    status        TEXT NOT NULL CHECK (status IN ('PENDING','PROCESSING','SUCCESS','CLOSED','ABNORMAL','FAILED')),
    refund_id     TEXT,
    error         TEXT,
    created_at    INTEGER NOT NULL,
    updated_at    INTEGER NOT NULL
  );
  CREATE INDEX refunds_by_order ON refunds(order_no);
  CREATE TABLE fulfillments (
    order_no   TEXT PRIMARY KEY REFERENCES orders(order_no),
    status     TEXT NOT NULL CHECK (status IN ('PENDING','DONE')),
    attempts   INTEGER NOT NULL DEFAULT 0,
    last_error TEXT,
    created_at INTEGER NOT NULL,
    done_at    INTEGER
  );
  CREATE TABLE idempotency (
    owner       TEXT NOT NULL,
    key         TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    state       TEXT NOT NULL CHECK (state IN ('running','done')),
    status      INTEGER,
    body        TEXT,
    created_at  INTEGER NOT NULL,
    PRIMARY KEY (owner, key)
  );
]]

return M

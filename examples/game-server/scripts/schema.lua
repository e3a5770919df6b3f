-- The game shop's tables: the shop's order tables (lualib/shop works on them) plus players
-- and what each order buys for whom. Migrations only grow: add one, never edit one.
local app = require "paygate"

app.migration(1, "players, items, orders, notifications, fulfillment", [[
  CREATE TABLE players (
    player     INTEGER PRIMARY KEY,                  -- the game's player id
    openid     TEXT NOT NULL,                        -- who pays, from WeChat login
    updated_at INTEGER NOT NULL
  );
  CREATE TABLE products (                            -- the items on sale ("products" for lualib/shop)
    id            INTEGER PRIMARY KEY,
    name          TEXT NOT NULL,
    price         INTEGER NOT NULL CHECK (price > 0),  -- fen
    stock         INTEGER NOT NULL CHECK (stock >= 0),
    reserved      INTEGER NOT NULL DEFAULT 0 CHECK (reserved >= 0),
    sold          INTEGER NOT NULL DEFAULT 0 CHECK (sold >= 0),
    max_per_order INTEGER NOT NULL DEFAULT 1,
    updated_at    INTEGER NOT NULL
  );
  CREATE TABLE orders (
    order_no       TEXT PRIMARY KEY,
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
    refunded       INTEGER NOT NULL DEFAULT 0,
    closed_reason  TEXT,
    checked_at     INTEGER,
    updated_at     INTEGER NOT NULL
  );
  CREATE TABLE order_items (
    order_no   TEXT NOT NULL REFERENCES orders(order_no),
    product_id INTEGER NOT NULL REFERENCES products(id),
    name       TEXT NOT NULL,
    qty        INTEGER NOT NULL CHECK (qty > 0),
    price      INTEGER NOT NULL CHECK (price > 0),
    PRIMARY KEY (order_no, product_id)
  );
  CREATE TABLE purchases (                           -- the game's side of an order
    order_no TEXT PRIMARY KEY REFERENCES orders(order_no),
    player   INTEGER NOT NULL,
    item     INTEGER NOT NULL
  );
  CREATE TABLE processed_notifications (
    id TEXT PRIMARY KEY, kind TEXT NOT NULL, order_no TEXT, outcome TEXT NOT NULL, received_at INTEGER NOT NULL
  );
  CREATE TABLE notification_log (
    id INTEGER PRIMARY KEY AUTOINCREMENT, kind TEXT NOT NULL, notify_id TEXT, order_no TEXT,
    outcome TEXT NOT NULL, reason TEXT, received_at INTEGER NOT NULL
  );
  CREATE TABLE refunds (
    out_refund_no TEXT PRIMARY KEY, order_no TEXT NOT NULL, amount INTEGER NOT NULL, reason TEXT,
    status TEXT NOT NULL, refund_id TEXT, error TEXT, created_at INTEGER NOT NULL, updated_at INTEGER NOT NULL
  );
  CREATE TABLE fulfillments (
    order_no TEXT PRIMARY KEY, status TEXT NOT NULL CHECK (status IN ('PENDING','DONE')),
    attempts INTEGER NOT NULL DEFAULT 0, last_error TEXT, created_at INTEGER NOT NULL, done_at INTEGER
  );
]])

-- What the game sells. Items are virtual: the stock is just large.
app.migration(2, "items on sale", function()
  for _, it in ipairs({ { 1, "Iron sword", 600 }, { 7, "Dragon egg", 1800 }, { 9, "Bag of 100 gems", 3000 } }) do
    db.exec("INSERT INTO products(id, name, price, stock, updated_at) VALUES (?, ?, ?, 1000000, ?)",
            it[1], it[2], it[3], clock.now())
  end
end)

-- The game shop's tables: the shop's order tables (lualib/shop works on them) plus players
-- and what each order buys for whom. Migrations only grow: add one, never edit one. A
-- migration whose DDL differs gives { sqlite = ..., postgresql = ... }: the game runs on either.
local app = require "paygate"
local shop = require "shop.schema"

app.migration(1, "the shop's tables", shop.TABLES)

app.migration(2, "players and purchases", { sqlite = [[
  CREATE TABLE players (
    player     INTEGER PRIMARY KEY,                  -- the game's player id
    openid     TEXT NOT NULL,                        -- who pays, from WeChat login
    updated_at INTEGER NOT NULL
  );
  CREATE TABLE purchases (                           -- the game's side of an order
    order_no TEXT PRIMARY KEY REFERENCES orders(order_no),
    player   INTEGER NOT NULL,
    item     INTEGER NOT NULL
  );
]], postgresql = [[
  CREATE TABLE players (
    player     BIGINT PRIMARY KEY,
    openid     TEXT NOT NULL,
    updated_at BIGINT NOT NULL
  );
  CREATE TABLE purchases (
    order_no TEXT PRIMARY KEY REFERENCES orders(order_no),
    player   BIGINT NOT NULL,
    item     BIGINT NOT NULL
  );
]] })

-- What the game sells. Items are virtual: the stock is just large.
app.migration(3, "items on sale", function()
  for _, it in ipairs({ { 1, "Iron sword", 600 }, { 7, "Dragon egg", 1800 }, { 9, "Bag of 100 gems", 3000 } }) do
    db.exec("INSERT INTO products(id, name, price, stock, max_per_order, updated_at) VALUES (?, ?, ?, 1000000, 1, ?)",
            it[1], it[2], it[3], clock.now())
  end
end)

-- lualib/shop's later changes to its tables (adjustments, order events, refunds by line,
-- coupons; the payment channel; reconciliation; the audit trail), at our next free version
-- numbers: one per change, and one more when it grows.
shop.declare{ 4, 5, 6, 7 }

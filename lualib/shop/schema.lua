-- shop.schema: the tables lualib/shop works on (products, orders, payments, refunds,
-- fulfillment, idempotency keys, adjustments, order events, coupons). A shop declares them
-- as its first migration, and the library's later changes at version numbers of its own:
--   app.migration(1, "products, orders, payments, refunds, fulfillment", shop.TABLES)
--   ... the host's own migrations ...
--   shop.declare{ 3, 4, 5, 6 }   -- one free version number of the host per entry of shop.UPGRADES
local app = require "paygate"

local M = {}

-- Migration 1 of every shop, M.TABLES = { sqlite = <this text>, postgresql = <the same tables
-- in PostgreSQL's words> }: each engine runs its own text. The SQLite text never changes (an
-- applied migration's text is checked; tests/lua/test_schema.lua pins it), so later changes
-- are new migrations. idempotency.state is always 'done': the
-- key is claimed and answered in one transaction (shop.idempotency), so 'running' is never
-- written; the column stays because dropping it would need every shop to add a migration.
local TABLES_SQLITE = [[
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

-- The same tables on PostgreSQL: INTEGER there is 32-bit, so every integer column (ms
-- timestamps, ids, fen and their sums) is BIGINT; AUTOINCREMENT ids are identity columns.
-- Same columns in the same order, same constraints and indexes, except orders_by_owner, which
-- ends with order_no: the tie-break of a user's order list there (shop.orders.list_owned).
local TABLES_POSTGRESQL = [[
  CREATE TABLE products (
    id            BIGINT PRIMARY KEY,
    name          TEXT NOT NULL,
    price         BIGINT NOT NULL CHECK (price > 0),
    stock         BIGINT NOT NULL CHECK (stock >= 0),
    reserved      BIGINT NOT NULL DEFAULT 0 CHECK (reserved >= 0),
    sold          BIGINT NOT NULL DEFAULT 0 CHECK (sold >= 0),
    max_per_order BIGINT NOT NULL DEFAULT 99 CHECK (max_per_order > 0),
    updated_at    BIGINT NOT NULL
  );
  CREATE TABLE orders (
    order_no       TEXT PRIMARY KEY,
    openid         TEXT NOT NULL,
    status         TEXT NOT NULL CHECK (status IN ('CREATED','PAYING','PAID','CLOSED','REFUNDING','REFUNDED')),
    amount         BIGINT NOT NULL CHECK (amount > 0),
    description    TEXT NOT NULL,
    created_at     BIGINT NOT NULL,
    expires_at     BIGINT NOT NULL,
    prepay_id      TEXT,
    prepay_at      BIGINT,
    paid_at        BIGINT,
    transaction_id TEXT UNIQUE,
    refunded       BIGINT NOT NULL DEFAULT 0 CHECK (refunded >= 0 AND refunded <= amount),
    closed_reason  TEXT,
    checked_at     BIGINT,
    updated_at     BIGINT NOT NULL
  );
  CREATE INDEX orders_by_owner ON orders(openid, created_at, order_no);
  CREATE INDEX orders_by_status ON orders(status, created_at);
  CREATE TABLE order_items (
    order_no   TEXT NOT NULL REFERENCES orders(order_no),
    product_id BIGINT NOT NULL REFERENCES products(id),
    name       TEXT NOT NULL,
    qty        BIGINT NOT NULL CHECK (qty > 0),
    price      BIGINT NOT NULL CHECK (price > 0),
    PRIMARY KEY (order_no, product_id)
  );
  CREATE TABLE processed_notifications (
    id         TEXT PRIMARY KEY,
    kind       TEXT NOT NULL,
    order_no   TEXT,
    outcome    TEXT NOT NULL,
    received_at BIGINT NOT NULL
  );
  CREATE TABLE notification_log (
    id          BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    kind        TEXT NOT NULL,
    notify_id   TEXT,
    order_no    TEXT,
    outcome     TEXT NOT NULL,
    reason      TEXT,
    received_at BIGINT NOT NULL
  );
  CREATE TABLE refunds (
    out_refund_no TEXT PRIMARY KEY,
    order_no      TEXT NOT NULL REFERENCES orders(order_no),
    amount        BIGINT NOT NULL CHECK (amount > 0),
    reason        TEXT,
    status        TEXT NOT NULL CHECK (status IN ('PENDING','PROCESSING','SUCCESS','CLOSED','ABNORMAL','FAILED')),
    refund_id     TEXT,
    error         TEXT,
    created_at    BIGINT NOT NULL,
    updated_at    BIGINT NOT NULL
  );
  CREATE INDEX refunds_by_order ON refunds(order_no);
  CREATE TABLE fulfillments (
    order_no   TEXT PRIMARY KEY REFERENCES orders(order_no),
    status     TEXT NOT NULL CHECK (status IN ('PENDING','DONE')),
    attempts   BIGINT NOT NULL DEFAULT 0,
    last_error TEXT,
    created_at BIGINT NOT NULL,
    done_at    BIGINT
  );
  CREATE TABLE idempotency (
    owner       TEXT NOT NULL,
    key         TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    state       TEXT NOT NULL CHECK (state IN ('running','done')),
    status      BIGINT,
    body        TEXT,
    created_at  BIGINT NOT NULL,
    PRIMARY KEY (owner, key)
  );
]]

M.TABLES = { sqlite = TABLES_SQLITE, postgresql = TABLES_POSTGRESQL }

-- The library's changes after TABLES, oldest first. Like TABLES, an entry's text never changes
-- once released; a new change is a new entry, and every host gives it a version number of its
-- own (declare). Tables only grow: columns are added, never dropped or renamed. Each entry is
-- {name, sql (SQLite's text), postgresql (the same change on PostgreSQL)}.
M.UPGRADES = {
  { name = "lualib/shop 2: adjustments, order events, refunds by line, coupons", sql = [[
  CREATE TABLE order_adjustments (                 -- what the pricing step changed, per order or line
    order_no   TEXT NOT NULL REFERENCES orders(order_no),
    seq        INTEGER NOT NULL,                    -- in the order they were applied
    code       TEXT NOT NULL,
    label      TEXT NOT NULL,
    amount     INTEGER NOT NULL,                    -- fen: < 0 a discount, > 0 only a declared surcharge
    product_id INTEGER,                             -- a line's adjustment; NULL: the order's
    PRIMARY KEY (order_no, seq)
  );
  ALTER TABLE order_items ADD COLUMN net INTEGER;  -- the line's share of the amount, adjustments spread
  UPDATE order_items SET net = qty * price;
  ALTER TABLE orders ADD COLUMN units TEXT;        -- where its units are: reserved, sold or released
  UPDATE orders SET units = CASE
    WHEN status IN ('CREATED', 'PAYING') THEN 'reserved'
    WHEN status = 'CLOSED' THEN 'released'
    WHEN EXISTS (SELECT 1 FROM refunds r WHERE r.order_no = orders.order_no
                 AND r.reason = 'paid after the order closed; out of stock') THEN 'released'
    ELSE 'sold' END;
  ALTER TABLE orders ADD COLUMN context TEXT;      -- the order request's other fields (JSON), for checks run again
  CREATE TABLE order_events (                      -- the lifecycle events' outbox: each handled once
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    order_no   TEXT NOT NULL REFERENCES orders(order_no),
    event      TEXT NOT NULL CHECK (event IN ('paid', 'closed', 'refunded', 'refund_failed')),
    key        TEXT NOT NULL UNIQUE,                -- "paid:<order_no>", "refunded:<out_refund_no>" ...
    data       TEXT NOT NULL,                       -- JSON: what the event says besides the order
    status     TEXT NOT NULL CHECK (status IN ('PENDING', 'DONE')),
    attempts   INTEGER NOT NULL DEFAULT 0,
    last_error TEXT,
    created_at INTEGER NOT NULL,
    done_at    INTEGER
  );
  CREATE INDEX order_events_by_order ON order_events(order_no, id);
  CREATE TABLE refund_items (                      -- a refund by line: which units, for how much
    out_refund_no TEXT NOT NULL REFERENCES refunds(out_refund_no),
    product_id    INTEGER NOT NULL,
    qty           INTEGER NOT NULL CHECK (qty > 0),
    amount        INTEGER NOT NULL CHECK (amount >= 0),
    restock       INTEGER NOT NULL DEFAULT 0,      -- put the units back on sale once refunded
    restocked     INTEGER NOT NULL DEFAULT 0,      -- units put back (after the refund succeeded)
    PRIMARY KEY (out_refund_no, product_id)
  );
  CREATE TABLE coupons (
    code        TEXT PRIMARY KEY,
    label       TEXT NOT NULL,
    kind        TEXT NOT NULL CHECK (kind IN ('amount', 'percent')),
    value       INTEGER NOT NULL CHECK (value > 0),  -- fen off, or percent off (1 to 100)
    min_amount  INTEGER NOT NULL DEFAULT 0,          -- applies to orders of at least this (fen)
    starts_at   INTEGER,                             -- validity (ms); NULL: no bound
    ends_at     INTEGER,
    per_user    INTEGER,                             -- redemptions per user; NULL: no limit
    total_limit INTEGER,                             -- redemptions in all; NULL: no limit
    used        INTEGER NOT NULL DEFAULT 0 CHECK (used >= 0),   -- redemptions held now
    created_at  INTEGER NOT NULL,
    CHECK (total_limit IS NULL OR used <= total_limit)
  );
  CREATE TABLE coupon_redemptions (                -- one coupon per order, held until the order closes
    order_no   TEXT PRIMARY KEY REFERENCES orders(order_no),
    code       TEXT NOT NULL REFERENCES coupons(code),
    openid     TEXT NOT NULL,
    amount     INTEGER NOT NULL,                    -- fen the coupon took off
    status     TEXT NOT NULL CHECK (status IN ('held', 'released')),
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
  );
  CREATE INDEX coupon_redemptions_by_user ON coupon_redemptions(code, openid, status);
]], postgresql = [[
  CREATE TABLE order_adjustments (
    order_no   TEXT NOT NULL REFERENCES orders(order_no),
    seq        BIGINT NOT NULL,
    code       TEXT NOT NULL,
    label      TEXT NOT NULL,
    amount     BIGINT NOT NULL,
    product_id BIGINT,
    PRIMARY KEY (order_no, seq)
  );
  ALTER TABLE order_items ADD COLUMN net BIGINT;
  UPDATE order_items SET net = qty * price;
  ALTER TABLE orders ADD COLUMN units TEXT;
  UPDATE orders SET units = CASE
    WHEN status IN ('CREATED', 'PAYING') THEN 'reserved'
    WHEN status = 'CLOSED' THEN 'released'
    WHEN EXISTS (SELECT 1 FROM refunds r WHERE r.order_no = orders.order_no
                 AND r.reason = 'paid after the order closed; out of stock') THEN 'released'
    ELSE 'sold' END;
  ALTER TABLE orders ADD COLUMN context TEXT;
  CREATE TABLE order_events (
    id         BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    order_no   TEXT NOT NULL REFERENCES orders(order_no),
    event      TEXT NOT NULL CONSTRAINT order_events_event_check
                 CHECK (event IN ('paid', 'closed', 'refunded', 'refund_failed')),
    key        TEXT NOT NULL UNIQUE,
    data       TEXT NOT NULL,
    status     TEXT NOT NULL CHECK (status IN ('PENDING', 'DONE')),
    attempts   BIGINT NOT NULL DEFAULT 0,
    last_error TEXT,
    created_at BIGINT NOT NULL,
    done_at    BIGINT
  );
  CREATE INDEX order_events_by_order ON order_events(order_no, id);
  CREATE TABLE refund_items (
    out_refund_no TEXT NOT NULL REFERENCES refunds(out_refund_no),
    product_id    BIGINT NOT NULL,
    qty           BIGINT NOT NULL CHECK (qty > 0),
    amount        BIGINT NOT NULL CHECK (amount >= 0),
    restock       BIGINT NOT NULL DEFAULT 0,
    restocked     BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (out_refund_no, product_id)
  );
  CREATE TABLE coupons (
    code        TEXT PRIMARY KEY,
    label       TEXT NOT NULL,
    kind        TEXT NOT NULL CHECK (kind IN ('amount', 'percent')),
    value       BIGINT NOT NULL CHECK (value > 0),
    min_amount  BIGINT NOT NULL DEFAULT 0,
    starts_at   BIGINT,
    ends_at     BIGINT,
    per_user    BIGINT,
    total_limit BIGINT,
    used        BIGINT NOT NULL DEFAULT 0 CHECK (used >= 0),
    created_at  BIGINT NOT NULL,
    CHECK (total_limit IS NULL OR used <= total_limit)
  );
  CREATE TABLE coupon_redemptions (
    order_no   TEXT PRIMARY KEY REFERENCES orders(order_no),
    code       TEXT NOT NULL REFERENCES coupons(code),
    openid     TEXT NOT NULL,
    amount     BIGINT NOT NULL,
    status     TEXT NOT NULL CHECK (status IN ('held', 'released')),
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
  );
  CREATE INDEX coupon_redemptions_by_user ON coupon_redemptions(code, openid, status);
]] },
  { name = "lualib/shop 3: an order's payment channel (mini program or APP pay)", sql = [[
  ALTER TABLE orders ADD COLUMN channel TEXT NOT NULL DEFAULT 'miniprogram';  -- 'miniprogram' | 'app' (orders.CHANNELS):
                                                   -- which appid it is paid under (wechatpay.appid_of)
]], postgresql = [[
  ALTER TABLE orders ADD COLUMN channel TEXT NOT NULL DEFAULT 'miniprogram';
]] },
  { name = "lualib/shop 4: reconciliation against WeChat Pay's daily bills", sql = [[
  CREATE TABLE reconciliation_days (               -- one day's reconciliation (shop.reconcile_bills)
    bill_date      TEXT PRIMARY KEY,                -- YYYY-MM-DD, Beijing time, as WeChat's bills
    status         TEXT NOT NULL CHECK (status IN ('PENDING', 'DONE', 'FAILED')),
    runs           INTEGER NOT NULL DEFAULT 0,      -- runs started (a re-run adds one)
    error          TEXT,                            -- why the last run did not finish
    bill_sha1      TEXT,
    bill_payments  INTEGER, bill_payments_amount INTEGER,   -- the bill's payment lines; fen
    bill_refunds   INTEGER, bill_refunds_amount INTEGER,    -- the bill's refund lines; fen
    bill_fees      INTEGER,                         -- the fees of the bill's lines: 1/1000 fen
    local_payments INTEGER, local_payments_amount INTEGER,  -- ours: orders paid that day
    local_refunds  INTEGER, local_refunds_amount INTEGER,   -- ours: refunds WeChat took that day
    differences    INTEGER, settled INTEGER, open INTEGER,  -- reconciliation_items of the day
    started_at     INTEGER, finished_at INTEGER, updated_at INTEGER NOT NULL
  );
  CREATE TABLE reconciliation_items (              -- each difference found, with its kind
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    bill_date    TEXT NOT NULL,
    kind         TEXT NOT NULL,                     -- paid_only_at_wechat, missing_at_wechat, amount_mismatch, ...
    ref          TEXT NOT NULL,                     -- out_trade_no, out_refund_no, or the summary column
    order_no     TEXT,
    bill_amount  INTEGER,                           -- fen (fees: 1/1000 fen)
    local_amount INTEGER,
    detail       TEXT NOT NULL,                     -- what differs, and for OPEN what the operator does
    status       TEXT NOT NULL CHECK (status IN ('OPEN', 'SETTLED', 'RESOLVED')),
    outcome      TEXT,                              -- what settling did (SETTLED), or why it is left OPEN
    run          INTEGER NOT NULL,                  -- the day's run that last found it
    created_at   INTEGER NOT NULL,
    updated_at   INTEGER NOT NULL,
    UNIQUE (bill_date, kind, ref)
  );
]], postgresql = [[
  CREATE TABLE reconciliation_days (
    bill_date      TEXT PRIMARY KEY,
    status         TEXT NOT NULL CHECK (status IN ('PENDING', 'DONE', 'FAILED')),
    runs           BIGINT NOT NULL DEFAULT 0,
    error          TEXT,
    bill_sha1      TEXT,
    bill_payments  BIGINT, bill_payments_amount BIGINT,
    bill_refunds   BIGINT, bill_refunds_amount BIGINT,
    bill_fees      BIGINT,
    local_payments BIGINT, local_payments_amount BIGINT,
    local_refunds  BIGINT, local_refunds_amount BIGINT,
    differences    BIGINT, settled BIGINT, open BIGINT,
    started_at     BIGINT, finished_at BIGINT, updated_at BIGINT NOT NULL
  );
  CREATE TABLE reconciliation_items (
    id           BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    bill_date    TEXT NOT NULL,
    kind         TEXT NOT NULL,
    ref          TEXT NOT NULL,
    order_no     TEXT,
    bill_amount  BIGINT,
    local_amount BIGINT,
    detail       TEXT NOT NULL,
    status       TEXT NOT NULL CHECK (status IN ('OPEN', 'SETTLED', 'RESOLVED')),
    outcome      TEXT,
    run          BIGINT NOT NULL,
    created_at   BIGINT NOT NULL,
    updated_at   BIGINT NOT NULL,
    UNIQUE (bill_date, kind, ref)
  );
]] },
  -- order_events becomes the audit trail too: every money event of an order, append-only (the
  -- triggers refuse a delete and any change to what a row says; status, attempts, last_error
  -- and done_at are the lifecycle hooks' progress). SQLite cannot widen a CHECK in place, so
  -- the table is built again with the same rows and ids.
  { name = "lualib/shop 5: the audit trail (every money event in order_events, append-only)", sql = [[
  CREATE TABLE order_events_v3 (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    order_no   TEXT NOT NULL REFERENCES orders(order_no),
    event      TEXT NOT NULL CHECK (event IN ('created', 'prepay_requested', 'paid', 'close_requested', 'closed',
                                              'refund_requested', 'refunded', 'refund_failed', 'delivered',
                                              'notification_refused')),
    key        TEXT NOT NULL UNIQUE,
    data       TEXT NOT NULL,
    status     TEXT NOT NULL CHECK (status IN ('PENDING', 'DONE')),
    attempts   INTEGER NOT NULL DEFAULT 0,
    last_error TEXT,
    created_at INTEGER NOT NULL,
    done_at    INTEGER,
    actor      TEXT                                 -- who asked: an admin token's name, "loopback", "user", "system"
  );
  INSERT INTO order_events_v3(id, order_no, event, key, data, status, attempts, last_error, created_at, done_at)
    SELECT id, order_no, event, key, data, status, attempts, last_error, created_at, done_at FROM order_events;
  DROP TABLE order_events;
  ALTER TABLE order_events_v3 RENAME TO order_events;
  CREATE INDEX order_events_by_order ON order_events(order_no, id);
  CREATE TRIGGER order_events_no_delete BEFORE DELETE ON order_events
    BEGIN SELECT RAISE(ABORT, 'order_events is append-only: its rows are never deleted'); END;
  CREATE TRIGGER order_events_no_rewrite BEFORE UPDATE OF id, order_no, event, key, data, created_at, actor ON order_events
    BEGIN SELECT RAISE(ABORT, 'order_events is append-only: what a row records never changes'); END;
]], postgresql = [[
  ALTER TABLE order_events DROP CONSTRAINT order_events_event_check;
  ALTER TABLE order_events ADD CONSTRAINT order_events_event_check
    CHECK (event IN ('created', 'prepay_requested', 'paid', 'close_requested', 'closed',
                     'refund_requested', 'refunded', 'refund_failed', 'delivered',
                     'notification_refused'));
  ALTER TABLE order_events ADD COLUMN actor TEXT;
  CREATE FUNCTION order_events_append_only() RETURNS trigger LANGUAGE plpgsql AS $body$
  BEGIN
    IF TG_OP = 'UPDATE' THEN
      RAISE EXCEPTION 'order_events is append-only: what a row records never changes';
    END IF;
    RAISE EXCEPTION 'order_events is append-only: its rows are never deleted';
  END
  $body$;
  CREATE TRIGGER order_events_no_delete BEFORE DELETE ON order_events
    FOR EACH ROW EXECUTE FUNCTION order_events_append_only();
  CREATE TRIGGER order_events_no_rewrite BEFORE UPDATE OF id, order_no, event, key, data, created_at, actor ON order_events
    FOR EACH ROW EXECUTE FUNCTION order_events_append_only();
  CREATE TRIGGER order_events_no_truncate BEFORE TRUNCATE ON order_events
    FOR EACH STATEMENT EXECUTE FUNCTION order_events_append_only();
]] },
}

local declared = {}

--- Declare the library's change number n (an index of M.UPGRADES) as the host's migration
--- `version`. A host whose own migrations come between two of the library's declares them one
--- by one; otherwise declare() does it in one call.
function M.upgrade(n, version)
  local u = M.UPGRADES[n]
  if not u then error("shop.schema.upgrade: lualib/shop has no change " .. tostring(n), 2) end
  app.migration(version, u.name, { sqlite = u.sql, postgresql = u.postgresql }, app._caller(1))
  declared[n] = version
end

--- Declare all of the library's later changes at the host's version numbers: `versions` is
--- a list with one free version number per entry of M.UPGRADES, in order (declare{ 3, 4, 5, 6 }).
--- When the library grows, the list must grow too: the load says so until it does.
function M.declare(versions)
  if type(versions) ~= "table" or #versions ~= #M.UPGRADES then
    error(string.format("shop.schema.declare: lualib/shop has %d later change(s) to its tables (newest: %q); "
      .. "give one free version number of yours for each, in order", #M.UPGRADES, M.UPGRADES[#M.UPGRADES].name), 2)
  end
  for n, version in ipairs(versions) do
    local u = M.UPGRADES[n]
    app.migration(version, u.name, { sqlite = u.sql, postgresql = u.postgresql }, app._caller(1))
    declared[n] = version
  end
end

--- Raise unless the host declared every later change (shop.jobs.install calls it at load, so
--- a host that forgot is told at once, naming what to add, and keeps its running scripts).
function M.check_declared()
  for n, u in ipairs(M.UPGRADES) do
    if not declared[n] then
      error(string.format("lualib/shop needs its table change %d (%q): declare it in your schema script with "
        .. "require(\"shop.schema\").declare{ <free version numbers> } (docs/shop.md, \"Tables\")", n, u.name), 0)
    end
  end
end

return M

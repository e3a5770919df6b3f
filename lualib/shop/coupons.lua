-- coupons: codes a shop hands out — so many fen off, or a percentage — valid in a window,
-- limited per user and in all. coupons.piece is a piece for shop.hooks: the order request names
-- its code ({"items": [...], "coupon": "WELCOME10"}); quote prices it, check refuses a code that
-- does not apply (with why), claim records the redemption in the order's transaction (the
-- limits are counted there, so two orders cannot both take the last use), and release gives
-- it back when the order closes. A shop with its own coupon logic leaves this piece out and
-- uses the same hooks (examples/rules/one_time_coupon.lua).
local app = require "paygate"
local timefmt = require "timefmt"

local M = {}

M.FIELD = "coupon"               -- the field of the order request that carries the code

local function load(code)
  return db.one("SELECT * FROM coupons WHERE code = ?", code)
end

local function yuan(fen) return string.format("%d.%02d yuan", fen // 100, fen % 100) end

-- Why openid cannot use coupon c (of `code`) now on an order of `total` fen: a code and a
-- message, or nil when it can. A redemption that was released (its order closed) does not count.
local function unusable(c, code, openid, total, now)
  if not c then return "coupon_invalid", "there is no coupon " .. code end
  if c.starts_at and now < c.starts_at then
    return "coupon_not_started", "coupon " .. code .. " is valid from " .. timefmt.rfc3339(c.starts_at)
  end
  if c.ends_at and now >= c.ends_at then return "coupon_expired", "coupon " .. code .. " has expired" end
  if c.total_limit and c.used >= c.total_limit then return "coupon_used_up", "coupon " .. code .. " is used up" end
  if c.per_user then
    local had = db.one("SELECT count(*) AS n FROM coupon_redemptions WHERE code = ? AND openid = ? AND status = 'held'",
                       code, openid).n
    if had >= c.per_user then
      return "coupon_already_used", string.format("coupon %s can be used %d time(s) per person", code, c.per_user)
    end
  end
  if total < c.min_amount then
    return "coupon_min_amount", "coupon " .. code .. " applies to orders from " .. yuan(c.min_amount)
  end
  return nil
end

-- What the coupon takes off an order of `total` fen: never all of it (WeChat needs 1 fen).
local function discount(c, total)
  local off = c.kind == "amount" and c.value or total * c.value // 100
  return math.max(0, math.min(off, total - 1))
end

local function code_of(ctx)
  local code = type(ctx.body) == "table" and ctx.body[M.FIELD] or nil
  if code == json.null then return nil end
  return code
end

local function adjustment_of(ctx, code)
  for _, a in ipairs(ctx.adjustments or {}) do
    if a.code == "coupon:" .. code then return a end
  end
end

M.piece = { name = "shop.coupons", display = false }   -- a coupon needs its code: no list price changes

--- quote: the coupon's discount on the order so far, as an order adjustment "coupon:<code>".
--- Nothing when the code does not apply (check says why).
function M.piece.quote(ctx, lines)
  local code = code_of(ctx)
  if type(code) ~= "string" then return nil end
  local c = load(code)
  if unusable(c, code, ctx.openid, ctx.total, ctx.now) then return nil end
  local off = discount(c, ctx.total)
  if off == 0 then return nil end
  return { { code = "coupon:" .. code, label = c.label, amount = -off } }
end

--- check: a code that is not a string is 400; one that does not apply now, for this user, on
--- this order is 409 with its reason (coupon_invalid, coupon_not_started, coupon_expired,
--- coupon_used_up, coupon_already_used, coupon_min_amount).
function M.piece.check(ctx, lines)
  local code = code_of(ctx)
  if code == nil then return nil end
  if type(code) ~= "string" or #code == 0 or #code > 64 then
    return { refuse = "invalid_request", status = 400, message = M.FIELD .. " must be a coupon code" }
  end
  local a = adjustment_of(ctx, code)
  local why, message = unusable(load(code), code, ctx.openid, ctx.total - (a and a.amount or 0), ctx.now)
  if why then return { refuse = why, message = message } end
  return nil
end

--- claim: hold one use of the coupon for this order (again, when a payment after close
--- re-sells it), counted with a conditional UPDATE in the order's transaction.
function M.piece.claim(ctx, order, lines)
  local code = code_of(ctx)
  local a = type(code) == "string" and adjustment_of(ctx, code)
  if not a then return end
  local took = db.exec("UPDATE coupons SET used = used + 1 WHERE code = ? AND (total_limit IS NULL OR used < total_limit)",
                       code)
  if took ~= 1 then app.fail(409, "coupon_used_up", "coupon " .. code .. " is used up") end
  db.exec([[INSERT INTO coupon_redemptions(order_no, code, openid, amount, status, created_at, updated_at)
            VALUES (?, ?, ?, ?, 'held', ?, ?)
            ON CONFLICT(order_no) DO UPDATE SET status = 'held', updated_at = excluded.updated_at]],
          order.order_no, code, order.openid, -a.amount, clock.now(), clock.now())
end

--- release: the order closed; its use of the coupon can be taken again.
function M.piece.release(order, reason)
  local r = db.one("SELECT code FROM coupon_redemptions WHERE order_no = ? AND status = 'held'", order.order_no)
  if not r then return end
  db.exec("UPDATE coupon_redemptions SET status = 'released', updated_at = ? WHERE order_no = ?",
          clock.now(), order.order_no)
  db.exec("UPDATE coupons SET used = used - 1 WHERE code = ? AND used > 0", r.code)
end

--- A coupon as the admin API shows it.
function M.view(c)
  local v = { code = c.code, label = c.label, kind = c.kind, value = c.value, min_amount = c.min_amount,
              used = c.used, per_user = c.per_user, total_limit = c.total_limit }
  if c.starts_at then v.starts_at = timefmt.rfc3339(c.starts_at) end
  if c.ends_at then v.ends_at = timefmt.rfc3339(c.ends_at) end
  return v
end

local function time_field(s, name)
  if s == nil then return nil end
  local ms = type(s) == "string" and timefmt.parse(s)
  if not ms then app.fail(400, "invalid_request", name .. " must be an RFC 3339 time like 2026-11-28T20:00:00+08:00") end
  return ms
end

--- Create a coupon. spec: code (letters, digits, _ -; at most 32), label?, kind ("amount":
--- value fen off; "percent": value % off, 1 to 100), min_amount? (fen), starts_at?, ends_at?
--- (RFC 3339), per_user?, total_limit?. Returns its view. Raises 400 invalid_request,
--- 409 coupon_exists.
function M.create(spec)
  if type(spec.code) ~= "string" or not spec.code:match("^[%w_%-]+$") or #spec.code > 32 then
    app.fail(400, "invalid_request", "code must be 1 to 32 letters, digits, _ or -")
  end
  if spec.label ~= nil and (type(spec.label) ~= "string" or #spec.label == 0 or #spec.label > 80) then
    app.fail(400, "invalid_request", "label must be a string of 1 to 80 bytes")
  end
  if spec.kind ~= "amount" and spec.kind ~= "percent" then
    app.fail(400, "invalid_request", "kind must be \"amount\" (fen off) or \"percent\"")
  end
  local value = app.integer(spec.value, 1, spec.kind == "percent" and 100 or 100000000, "value")
  local min_amount = spec.min_amount ~= nil and app.integer(spec.min_amount, 0, 2147483647, "min_amount") or 0
  local per_user = spec.per_user ~= nil and app.integer(spec.per_user, 1, 1000000, "per_user") or nil
  local total_limit = spec.total_limit ~= nil and app.integer(spec.total_limit, 1, 1000000000, "total_limit") or nil
  local starts_at, ends_at = time_field(spec.starts_at, "starts_at"), time_field(spec.ends_at, "ends_at")
  if starts_at and ends_at and ends_at <= starts_at then
    app.fail(400, "invalid_request", "ends_at must be after starts_at")
  end
  local label = spec.label or (spec.kind == "amount" and yuan(value) .. " off" or value .. "% off")
  return db.tx(function()
    if load(spec.code) then app.fail(409, "coupon_exists", "coupon " .. spec.code .. " exists") end
    db.exec([[INSERT INTO coupons(code, label, kind, value, min_amount, starts_at, ends_at, per_user, total_limit, used,
                                  created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 0, ?)]],
            spec.code, label, spec.kind, value, min_amount, starts_at, ends_at, per_user, total_limit, clock.now())
    return M.view(load(spec.code))
  end)
end

--- All coupons, newest first, as M.view shows them (used: the uses held by orders that did
--- not close).
function M.list()
  local out = json.array()
  for _, c in ipairs(db.query("SELECT * FROM coupons ORDER BY created_at DESC, code")) do out[#out + 1] = M.view(c) end
  return out
end

return M

-- pricing: what an order costs. The list prices come from our products table; the merchant's
-- pricing step (quote hooks, shop.hooks) returns adjustments — a discount per order or per
-- line, a surcharge only when marked as one — which are checked here, applied in turn, and
-- spread over the lines, so a refund of some units knows what they were paid (units_value).
-- Everything is integer fen.
local app = require "paygate"
local hooks = require "shop.hooks"

local M = {}

M.MAX_AMOUNT = 2147483647        -- WeChat Pay's amount.total is a 32-bit integer (fen)
M.MAX_ADJUSTMENTS = 50           -- per order

--- A deep copy (hooks get copies: what they change never reaches the order). A JSON array
--- stays one.
function M.copy(v, depth)
  if type(v) ~= "table" then return v end
  depth = depth or 0
  if depth > 16 then error("pricing.copy: nested too deeply", 0) end
  local out = {}
  for k, x in pairs(v) do out[k] = M.copy(x, depth + 1) end
  return setmetatable(out, getmetatable(v))
end

--- The context of one order for the hooks: why they are asked (purpose: "order", "quote",
--- "display" or "resell"), who orders, the order request's body, the time.
function M.context(o)
  return { purpose = o.purpose, openid = o.openid, body = o.body or {}, now = clock.now(), order_no = o.order_no }
end

--- Adjustments as the API and the hooks see them: {code, label, amount, product_id?}.
function M.public(adjustments)
  local out = json.array()
  for i, a in ipairs(adjustments or {}) do
    out[i] = { code = a.code, label = a.label, amount = a.amount, product_id = a.product_id }
  end
  return out
end

--- What one hook is given as ctx: a copy, with the price so far.
function M.hook_ctx(ctx, subtotal, total, adjustments)
  return {
    purpose = ctx.purpose, openid = ctx.openid, body = M.copy(ctx.body), now = ctx.now, order_no = ctx.order_no,
    subtotal = subtotal, total = total, adjustments = M.public(adjustments),
  }
end

--- What a hook sees of the lines: copies of { product_id, qty, price (the unit list price),
--- name, amount (the line after its adjustments so far), net (once spread), product (the row) }.
function M.view_lines(lines)
  local out = {}
  for i, l in ipairs(lines) do
    out[i] = { product_id = l.product_id, qty = l.qty, price = l.price, name = l.name, amount = l.amount,
               net = l.net, product = M.copy(l.product) }
  end
  return out
end

local FIELDS = { code = true, label = true, amount = true, product_id = true, surcharge = true }

local function invalid(why)
  error("the pricing step's " .. why .. " (see docs/shop.md, \"Pricing\")", 0)
end

--- Check one adjustment a hook returned; returns the clean copy {code, label, amount, product_id}.
function M.adjustment(a, who, i, by_id)
  local function bad(why) invalid(string.format("adjustment %d from %s %s", i, who, why)) end
  if type(a) ~= "table" then bad("is " .. type(a) .. ", not a table {code, label, amount}") end
  for k in pairs(a) do
    if not FIELDS[k] then bad("has an unknown field '" .. tostring(k) .. "'") end
  end
  if type(a.code) ~= "string" or #a.code > 64 or not a.code:match("^[%w_%.:%-]+$") then
    bad("has a code that is not a word like \"member_price\" (letters, digits, _ . : -, at most 64)")
  end
  if a.label ~= nil and (type(a.label) ~= "string" or #a.label == 0 or #a.label > 80) then
    bad("has a label that is not a string of 1 to 80 bytes")
  end
  if math.type(a.amount) ~= "integer" then bad("has an amount that is not a whole number of fen") end
  if a.surcharge ~= nil and type(a.surcharge) ~= "boolean" then bad("has a surcharge that is not true or false") end
  if a.amount > 0 and a.surcharge ~= true then
    bad(string.format("raises the price by %d fen without surcharge = true", a.amount))
  end
  if a.product_id ~= nil and (math.type(a.product_id) ~= "integer" or not by_id[a.product_id]) then
    bad("names product " .. tostring(a.product_id) .. ", which is not a line of this order")
  end
  return { code = a.code, label = a.label or a.code, amount = a.amount, product_id = a.product_id }
end

-- Split `amount` (>= 0) in proportion to weights (>= 0, sum > 0), in whole fen: the floor of
-- each share, then one more fen to the largest remainders (earlier lines first on a tie).
function M.split(amount, weights)
  local sum = 0
  for _, w in ipairs(weights) do sum = sum + w end
  local out, rem, given = {}, {}, 0
  for i, w in ipairs(weights) do
    out[i] = amount * w // sum
    rem[i] = amount * w % sum
    given = given + out[i]
  end
  local order = {}
  for i = 1, #weights do order[i] = i end
  table.sort(order, function(a, b) return rem[a] > rem[b] or (rem[a] == rem[b] and a < b) end)
  for k = 1, amount - given do out[order[k]] = out[order[k]] + 1 end
  return out
end

--- Each line's net: its amount after its own adjustments plus its share of the order's
--- adjustments (in proportion to the lines' amounts). The nets add up to the order's amount.
function M.spread(lines, adjustments)
  local whole = 0
  for _, a in ipairs(adjustments) do
    if not a.product_id then whole = whole + a.amount end
  end
  local weights, sum = {}, 0
  for i, l in ipairs(lines) do weights[i] = l.amount; sum = sum + l.amount end
  if sum == 0 then for i, l in ipairs(lines) do weights[i] = l.qty end end   -- only a surcharge to spread
  local parts = whole ~= 0 and M.split(math.abs(whole), weights) or {}
  for i, l in ipairs(lines) do
    l.net = l.amount + (whole < 0 and -parts[i] or (parts[i] or 0))
  end
end

--- What k units of a line are worth when `done` of its units were refunded before: the line's
--- net spread over its units, the first (net % qty) of them one fen more. Refunding every unit,
--- in any number of steps, gives back exactly the line's net.
function M.units_value(net, qty, done, k)
  local base, extra = net // qty, net % qty
  return k * base + math.max(0, math.min(done + k, extra) - done)
end

--- Price lines ({product_id, qty, price, name, product}; price is the unit list price) for ctx:
--- the quote hooks in turn, each seeing the price so far. Sets each line's amount and net;
--- returns { subtotal, amount, adjustments }. A malformed answer, a line below 0, a total below
--- 1 fen or above the list price without a surcharge are the merchant's mistakes: raised as
--- errors (500), never charged.
function M.price(ctx, lines)
  local subtotal, by_id = 0, {}
  for _, l in ipairs(lines) do
    l.amount = l.qty * l.price
    subtotal = subtotal + l.amount
    by_id[l.product_id] = l
  end
  if subtotal > M.MAX_AMOUNT then
    app.fail(400, "invalid_request", "the order is too large: WeChat Pay takes at most 21474836.47 yuan at once")
  end
  local adjustments, total = {}, subtotal
  for _, h in ipairs(hooks.list("quote")) do
    local got = h.fn(M.hook_ctx(ctx, subtotal, total, adjustments), M.view_lines(lines))
    if got ~= nil then
      if type(got) ~= "table" or (next(got) ~= nil and got[1] == nil) then
        invalid("answer from " .. h.name .. " is not a list of adjustments {code, label, amount}")
      end
      for i, a in ipairs(got) do
        local adj = M.adjustment(a, h.name, i, by_id)
        if adj.product_id then
          local l = by_id[adj.product_id]
          l.amount = l.amount + adj.amount
          if l.amount < 0 then
            invalid(string.format("adjustment %d from %s takes %s (product %d) below 0", i, h.name, l.name, l.product_id))
          end
        end
        total = total + adj.amount
        adjustments[#adjustments + 1] = adj
        adj.seq, adj.by = #adjustments, h.name
        if #adjustments > M.MAX_ADJUSTMENTS then invalid("adjustments are more than " .. M.MAX_ADJUSTMENTS) end
      end
    end
  end
  if total < 1 then
    local by = {}
    for _, a in ipairs(adjustments) do by[#by + 1] = a.code .. " from " .. a.by end
    invalid(string.format("adjustments (%s) leave the order at %d fen; WeChat Pay needs at least 1 fen",
                          table.concat(by, ", "), total))
  end
  local lines_sum = 0
  for _, l in ipairs(lines) do lines_sum = lines_sum + l.amount end
  if total > M.MAX_AMOUNT or lines_sum > M.MAX_AMOUNT then
    invalid("surcharges take the order above what WeChat Pay takes at once")
  end
  M.spread(lines, adjustments)
  return { subtotal = subtotal, amount = total, adjustments = adjustments }
end

return M

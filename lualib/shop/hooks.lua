-- hooks: the merchant's order rules, as pieces the library calls at fixed points of an
-- order's life. A piece is a table of some of these functions (docs/shop.md, "Hooks"):
--
--   quote(ctx, lines)        → adjustments      pricing: per order or line, amount <= 0
--   check(ctx, lines)        → nil | refusal    may the order be placed (and re-sold after close)?
--   decide(openid, lines, ctx) → decision       the stock decision (shop.stock)
--   claim(ctx, order, lines)                    in the order's transaction: record what it holds
--   release(order, reason)                      in the close's transaction: give it back
--   on_paid(ev), on_closed(ev), on_refunded(ev), on_refund_failed(ev)
--                                               once per event, from the durable queue (shop.events)
--
-- Pieces are registered at load (hooks.use) and run in the order registered. Each generation
-- of scripts starts with none, so a reload replaces them all at once. A piece may also say
-- `display = false`: its quote never changes the price a product shows in the list (it
-- needs the order's own request, a coupon code say), so the list does not ask it.
local M = {}

M.FUNCTIONS = {
  quote = true, check = true, decide = true, claim = true, release = true,
  on_paid = true, on_closed = true, on_refunded = true, on_refund_failed = true,
}

local pieces = {}

local function add(piece, where)
  if type(piece) ~= "table" then
    error("shop.hooks.use: a piece is a table of hook functions, not " .. type(piece), where)
  end
  local name = piece.name or ("piece " .. (#pieces + 1))
  if type(name) ~= "string" then error("shop.hooks.use: a piece's name must be a string", where) end
  if piece.display ~= nil and type(piece.display) ~= "boolean" then
    error("shop.hooks.use: a piece's display must be true or false", where)
  end
  for k, v in pairs(piece) do
    if k ~= "name" and k ~= "display" then
      if not M.FUNCTIONS[k] then
        error(string.format("shop.hooks.use: %s has an unknown hook '%s' (known: quote, check, decide, claim, "
          .. "release, on_paid, on_closed, on_refunded, on_refund_failed)", name, tostring(k)), where)
      end
      if type(v) ~= "function" then
        error(string.format("shop.hooks.use: %s.%s must be a function", name, k), where)
      end
    end
  end
  pieces[#pieces + 1] = { name = name, piece = piece }
end

--- Register pieces, in the order given: each argument is a piece, or a list of pieces (what a
--- rules file returns). Call it at load. A misspelt hook (on_payed) is a load error.
function M.use(...)
  for i = 1, select("#", ...) do
    local p = select(i, ...)
    if type(p) == "table" and p[1] ~= nil then
      for _, q in ipairs(p) do add(q, 3) end
    elseif type(p) == "table" and next(p) == nil then
      -- an empty rules file: nothing to add
    else
      add(p, 3)
    end
  end
end

--- The registered functions of one hook, in order: a list of { fn, name }.
function M.list(hook)
  local out = {}
  for _, p in ipairs(pieces) do
    if p.piece[hook] then out[#out + 1] = { fn = p.piece[hook], name = p.name } end
  end
  return out
end

--- Whether any piece's quote may change the price a product shows in the list.
function M.quotes_for_display()
  for _, p in ipairs(pieces) do
    if p.piece.quote and p.piece.display ~= false then return true end
  end
  return false
end

--- Whether any piece has this hook.
function M.has(hook)
  for _, p in ipairs(pieces) do
    if p.piece[hook] then return true end
  end
  return false
end

return M

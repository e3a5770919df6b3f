-- rules: asking the merchant's pieces (shop.hooks) about one order — may it be placed
-- (check), may it take its units (decide), what does it hold (claim), what goes back when it
-- closes (release). shop.orders calls these inside the order's transaction; shop.pricing does
-- the quote step.
local app = require "paygate"
local hooks = require "shop.hooks"
local pricing = require "shop.pricing"
local stock = require "shop.stock"

local M = {}

--- What a hook is given as ctx: a copy, with the order's price (subtotal, total, adjustments).
function M.ctx_copy(ctx)
  return pricing.hook_ctx(ctx, ctx.subtotal, ctx.total, ctx.adjustments)
end

local REFUSAL = { refuse = true, message = true, status = true }

local function invalid(who, why)
  error(string.format("the check step's answer from %s %s (see docs/shop.md, \"Checks\")", who, why), 0)
end

--- The check hooks, in turn: nil (or true) lets the order through; { refuse = "code",
--- message = "why", status = 4xx (default 409) } refuses it with that answer. Anything else is
--- a mistake in the hook (500). ctx carries the price (subtotal, total, adjustments).
function M.check(ctx, lines)
  for _, h in ipairs(hooks.list("check")) do
    local answer = h.fn(M.ctx_copy(ctx), pricing.view_lines(lines))
    if answer ~= nil and answer ~= true then
      if type(answer) ~= "table" then invalid(h.name, "is " .. type(answer) .. ", not nil or { refuse = \"code\" }") end
      for k in pairs(answer) do
        if not REFUSAL[k] then invalid(h.name, "has an unknown field '" .. tostring(k) .. "'") end
      end
      if type(answer.refuse) ~= "string" or not answer.refuse:match("^[%w_]+$") then
        invalid(h.name, "refuses with a code that is not a word like \"members_only\"")
      end
      if answer.message ~= nil and type(answer.message) ~= "string" then
        invalid(h.name, "has a message that is not a string")
      end
      local status = answer.status or 409
      if math.type(status) ~= "integer" or status < 400 or status > 499 then
        invalid(h.name, "has a status that is not from 400 to 499")
      end
      app.fail(status, answer.refuse, answer.message or answer.refuse)
    end
  end
end

--- The stock decisions: `rule` (given to orders.create, at creation only) and every piece's
--- decide(openid, lines, ctx), each enforced in turn (shop.stock).
function M.decide(openid, lines, ctx, rule)
  if rule then stock.enforce(rule(openid, pricing.view_lines(lines), M.ctx_copy(ctx)), lines) end
  for _, h in ipairs(hooks.list("decide")) do
    stock.enforce(h.fn(openid, pricing.view_lines(lines), M.ctx_copy(ctx)), lines)
  end
end

--- The claim hooks, in the order's transaction once it is inserted (and again when a payment
--- after close re-sells it): they may write their own tables, and refuse with app.fail, which
--- rolls the whole order back.
function M.claim(ctx, order, lines)
  for _, h in ipairs(hooks.list("claim")) do
    h.fn(M.ctx_copy(ctx), pricing.copy(order), pricing.view_lines(lines))
  end
end

--- The release hooks, in the transaction that closes the order. WeChat has confirmed the close
--- by then, so a failing hook must not undo it: its writes are rolled back to a savepoint, the
--- error is logged and counted (paygate_hook_errors_total), and the close goes on.
function M.release(order, reason)
  for _, h in ipairs(hooks.list("release")) do
    local ok, err = pcall(db.tx, h.fn, pricing.copy(order), reason)
    if not ok then
      local text = type(err) == "table" and tostring(err.error) .. ": " .. tostring(err.message) or tostring(err)
      log.error("a release hook failed; the order is closed, what it held needs an operator",
                { order = order.order_no, piece = h.name, error = text })
      metrics.inc("paygate_hook_errors_total", { hook = "release" })
    end
  end
end

return M

-- The pricing step's arithmetic and checks in lualib/shop/pricing.lua, and the registry of
-- pieces in lualib/shop/hooks.lua: pure functions, no database.

-- Fresh modules: pieces are registered per load, as they are per generation in the engine.
local function fresh()
  package.loaded["shop.hooks"], package.loaded["shop.pricing"] = nil, nil
  return require "shop.pricing", require "shop.hooks"
end

local function line(id, qty, price)
  return { product_id = id, qty = qty, price = price, name = "P" .. id, product = { id = id, price = price } }
end

local function sum(t) local s = 0 for _, v in ipairs(t) do s = s + v end return s end

local function raises(pattern, fn, ...)
  local ok, e = pcall(fn, ...)
  assert(not ok, "expected an error matching " .. pattern)
  local text = type(e) == "table" and tostring(e.message) or tostring(e)
  assert(text:find(pattern), "error '" .. text .. "' does not match " .. pattern)
end

return {
  { "split shares whole fen in proportion, the remainder to the largest fractions, and adds up", function()
    local pricing = fresh()
    local parts = pricing.split(1000, { 7600, 1200 })
    assert(parts[1] == 864 and parts[2] == 136, parts[1] .. " " .. parts[2])
    for _, case in ipairs({ { 1, { 1, 1, 1 } }, { 100, { 3, 3, 3 } }, { 7, { 0, 5, 0 } }, { 2147483646, { 2147483647, 1 } } }) do
      local p = pricing.split(case[1], case[2])
      assert(sum(p) == case[1], "adds up for " .. case[1])
      for i, w in ipairs(case[2]) do assert(p[i] <= w or case[1] > sum(case[2]), "a share never exceeds its weight") end
    end
    local equal = pricing.split(100, { 3, 3, 3 })
    assert(equal[1] == 34 and equal[2] == 33 and equal[3] == 33, "ties go to the earlier line")
  end },

  { "units_value: refunding every unit, in any steps, gives back exactly the line's net", function()
    local pricing = fresh()
    for _, case in ipairs({ { 6736, 2 }, { 1000, 3 }, { 7, 5 }, { 0, 4 }, { 99999, 7 } }) do
      local net, qty = case[1], case[2]
      for _, steps in ipairs({ { qty }, { 1, qty - 1 }, { qty - 1, 1 } }) do
        local done, total = 0, 0
        for _, k in ipairs(steps) do
          if k > 0 then total = total + pricing.units_value(net, qty, done, k); done = done + k end
        end
        assert(total == net, string.format("%d over %d units in steps: %d", net, qty, total))
      end
    end
    assert(pricing.units_value(1000, 3, 0, 1) == 334 and pricing.units_value(1000, 3, 1, 1) == 333)
  end },

  { "price applies pieces in turn (each sees the total so far) and spreads order adjustments over lines", function()
    local pricing, hooks = fresh()
    hooks.use({ name = "member", quote = function(ctx, lines)
      return { { code = "member", amount = -300 * lines[1].qty, product_id = lines[1].product_id } }
    end }, { { name = "ten", quote = function(ctx) return { { code = "ten", label = "10% off", amount = -(ctx.total // 10) } } end } })
    local lines = { line(1, 2, 3800), line(2, 1, 1200) }
    local p = pricing.price({ purpose = "order", body = {} }, lines)
    assert(p.subtotal == 8800 and p.amount == 7380, p.amount)
    assert(#p.adjustments == 2 and p.adjustments[2].amount == -820 and p.adjustments[2].label == "10% off")
    assert(p.adjustments[1].label == "member", "the label defaults to the code")
    assert(lines[1].net == 6300 and lines[2].net == 1080)
    assert(lines[1].net + lines[2].net == p.amount)
  end },

  { "hooks see copies: what a quote hook changes in its lines or ctx is not charged", function()
    local pricing, hooks = fresh()
    hooks.use({ quote = function(ctx, lines)
      lines[1].price, lines[1].qty, lines[1].product.price, ctx.total = 1, 50, 1, 1
      return nil
    end })
    local lines = { line(1, 2, 700) }
    assert(pricing.price({ body = {} }, lines).amount == 1400 and lines[1].qty == 2 and lines[1].product.price == 700)
  end },

  { "malformed adjustments are the merchant's mistakes, named with the piece", function()
    local cases = {
      { "raises the price by 5 fen without surcharge", { { code = "x", amount = 5 } } },
      { "not a whole number of fen", { { code = "x", amount = -0.5 } } },
      { "not a word", { { code = "a b", amount = -1 } } },
      { "unknown field 'amout'", { { code = "x", amout = -1 } } },
      { "not a line of this order", { { code = "x", amount = -1, product_id = 9 } } },
      { "not a list of adjustments", { code = "x", amount = -1 } },
      { "leave the order at 0 fen", { { code = "x", amount = -1400 } } },
      { "takes P1 %(product 1%) below 0", { { code = "x", amount = -1401, product_id = 1 }, { code = "y", amount = 2000, surcharge = true } } },
    }
    for _, case in ipairs(cases) do
      local pricing, hooks = fresh()
      hooks.use({ name = "mine", quote = function() return case[2] end })
      raises(case[1], pricing.price, { body = {} }, { line(1, 2, 700) })
      raises("from mine", pricing.price, { body = {} }, { line(1, 2, 700) })
    end
    local pricing, hooks = fresh()
    hooks.use({ quote = function() return { { code = "wrap", amount = 500, surcharge = true } } end })
    assert(pricing.price({ body = {} }, { line(1, 2, 700) }).amount == 1900, "a marked surcharge is charged")
  end },

  { "an order above what WeChat Pay takes at once is a 400", function()
    local pricing = fresh()
    local ok, e = pcall(pricing.price, { body = {} }, { line(1, 9999, 100000000) })
    assert(not ok and e.status == 400 and e.error == "invalid_request")
  end },

  { "hooks.use refuses misspelt hooks and non-functions at load, and keeps the order given", function()
    local _, hooks = fresh()
    raises("unknown hook 'on_payed'", hooks.use, { name = "erp", on_payed = function() end })
    raises("erp.quote must be a function", hooks.use, { name = "erp", quote = 3 })
    hooks.use({ name = "a", check = function() end }, { { name = "b", check = function() end }, { name = "c", quote = function() end } }, {})
    local checks = hooks.list("check")
    assert(#checks == 2 and checks[1].name == "a" and checks[2].name == "b")
    assert(hooks.has("quote") and not hooks.has("on_paid"))
  end },
}

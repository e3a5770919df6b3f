-- Demo products for `make run` (config.demo_products = true), added once by migration 2
-- (schema.lua).
local M = {}

function M.add_products()
  if not config.demo_products then return end
  local products = {
    { 1, "Oolong tea, 250 g", 3800, 100 },
    { 2, "Dragon Well green tea, 100 g", 6800, 50 },
    { 3, "Tea cup", 1200, 200 },
  }
  for _, p in ipairs(products) do
    db.exec("INSERT INTO products(id, name, price, stock, updated_at) VALUES (?, ?, ?, ?, ?) ON CONFLICT(id) DO NOTHING",
            p[1], p[2], p[3], p[4], clock.now())
  end
end

return M

-- Products: what the shop sells, at what price (fen), and how many are left.
local app = require "paygate"
local auth = require "shop.auth"
local orders = require "shop.orders"

-- GET /api/products: a product whose price our rules change (a member price, a sale) also
-- shows display_price and price_labels, for the logged-in user when a token comes along.
app.get("/api/products", function(req)
  local rows = db.query("SELECT id, name, price, stock FROM products ORDER BY id")
  return 200, { products = orders.display(rows, auth.optional(req)) }
end)

-- PUT /admin/products/{id} {"name"?, "price"?, "stock"?, "max_per_order"?}: create or update.
-- `stock` sets how many are available to sell now; units held by unpaid orders are not touched.
app.put("/admin/products/{id}", function(req)
  local id = app.integer(math.tointeger(tonumber(req.params.id)), 1, 2 ^ 31, "product id")
  local body = app.read_json(req)
  local name = body.name
  if name ~= nil and (type(name) ~= "string" or #name == 0 or #name > 100) then
    app.fail(400, "invalid_request", "name must be a string of 1 to 100 bytes")
  end
  local price = body.price ~= nil and app.integer(body.price, 1, 100000000, "price") or nil
  local stock = body.stock ~= nil and app.integer(body.stock, 0, 1000000000, "stock") or nil
  local max = body.max_per_order ~= nil and app.integer(body.max_per_order, 1, 9999, "max_per_order") or nil
  local product = db.tx(function()
    local old = db.one("SELECT * FROM products WHERE id = ?", id)
    if not old then
      if not (name and price and stock) then
        app.fail(400, "invalid_request", "a new product needs name, price and stock")
      end
      db.exec("INSERT INTO products(id, name, price, stock, max_per_order, updated_at) VALUES (?, ?, ?, ?, ?, ?)",
              id, name, price, stock, max or 99, clock.now())
    else
      db.exec([[UPDATE products SET name = coalesce(?, name), price = coalesce(?, price),
                stock = coalesce(?, stock), max_per_order = coalesce(?, max_per_order), updated_at = ?
                WHERE id = ?]], name, price, stock, max, clock.now(), id)
    end
    return db.one("SELECT id, name, price, stock, reserved, sold, max_per_order FROM products WHERE id = ?", id)
  end)
  return 200, product
end)

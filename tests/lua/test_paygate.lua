-- Input checks, errors, jobs and migrations in lualib/paygate.lua.
local fake = require "fake"

return {
  { "app.integer accepts integers in range and names the field otherwise", function()
    local app = require "paygate"
    assert(app.integer(5, 1, 10, "qty") == 5)
    for _, bad in ipairs({ 0, 11, 1.5, "5", true, 2 ^ 53 }) do
      local ok, e = pcall(app.integer, bad, 1, 10, "qty")
      assert(not ok and e.status == 400 and e.error == "invalid_request", tostring(bad))
      assert(e.message:find("qty must be an integer from 1 to 10", 1, true))
    end
  end },

  { "app.read_json refuses empty, malformed and non-object bodies", function()
    local app = require "paygate"
    for _, body in ipairs({ "", "{", "3", "\"x\"" }) do
      local ok, e = pcall(app.read_json, fake.request("POST", "/", body))
      assert(not ok and e.status == 400, body)
    end
    local t = app.read_json(fake.request("POST", "/", '{"a":[1]}'))
    assert(t.a[1] == 1)
  end },

  { "app.fail raises the API error shape", function()
    local app = require "paygate"
    local ok, e = pcall(app.fail, 409, "out_of_stock", "product 3 is out of stock")
    assert(not ok and e.status == 409 and e.error == "out_of_stock" and e.message:find("product 3"))
  end },

  { "a table body is encoded as JSON, a string passes through", function()
    local app = require "paygate"
    app.get("/t", function() return 201, { a = 1 }, { X = "y" } end)
    app.get("/s", function() return 200, "raw" end)
    local st, body, headers = app._dispatch(fake.request("GET", "/t"), "GET", "/t")
    assert(st == 201 and body == '{"a":1}' and headers.X == "y")
    st, body = app._dispatch(fake.request("GET", "/s"), "GET", "/s")
    assert(st == 200 and body == "raw")
  end },

  { "migrations must be declared with increasing versions", function()
    local app = require "paygate"
    app.migration(1, "one", "CREATE TABLE a(x)")
    app.migration(3, "three", function() end)
    assert(#app._migrations == 2 and app._migrations[2].fn)
    assert(not pcall(app.migration, 2, "two", "CREATE TABLE b(x)"))
    assert(not pcall(app.migration, 1.5, "bad", ""))
  end },

  { "a job runs its handler with the decoded payload; unknown jobs raise", function()
    local app = require "paygate"
    local seen
    app.job("ship", function(payload, info) seen = payload.order .. ":" .. info.attempt end)
    app._run_job("ship", '{"order":"A1"}', { id = 1, attempt = 2 })
    assert(seen == "A1:2")
    assert(not pcall(app._run_job, "nope", "{}", { id = 2, attempt = 1 }))
  end },
}

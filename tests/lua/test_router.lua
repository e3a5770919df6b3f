-- The router in lualib/paygate.lua: exact paths, captures, methods, 404/405.
local fake = require "fake"

return {
  { "an exact route wins and gets the request", function()
    local app = require "paygate"
    app.get("/a", function(req) return 200, { path = req.path } end)
    local st, body = fake.call(app, fake.request("GET", "/a"))
    assert(st == 200 and body.path == "/a")
  end },

  { "captures are named and never span a slash", function()
    local app = require "paygate"
    app.get("/orders/{no}/items/{i}", function(req) return 200, req.params end)
    local st, body = fake.call(app, fake.request("GET", "/orders/X1/items/3"))
    assert(st == 200 and body.no == "X1" and body.i == "3")
    st = fake.call(app, fake.request("GET", "/orders/X1/Y/items/3"))
    assert(st == 404)
  end },

  { "magic characters in a path are literal", function()
    local app = require "paygate"
    app.get("/v1.0/a-b/{x}", function(req) return 200, req.params end)
    assert(fake.call(app, fake.request("GET", "/v1.0/a-b/z")) == 200)
    assert(fake.call(app, fake.request("GET", "/v1x0/a-b/z")) == 404)
  end },

  { "a known path with another method is 405, an unknown path 404", function()
    local app = require "paygate"
    app.post("/p", function() return 204 end)
    app.put("/q/{id}", function() return 204 end)
    local st, body = fake.call(app, fake.request("GET", "/p"))
    assert(st == 405 and body.error == "method_not_allowed")
    assert(fake.call(app, fake.request("GET", "/q/1")) == 405)
    st, body = fake.call(app, fake.request("GET", "/nowhere"))
    assert(st == 404 and body.error == "not_found")
  end },

  { "HEAD is served by the GET handler", function()
    local app = require "paygate"
    app.get("/h", function() return 200, { ok = true } end)
    assert(fake.call(app, fake.request("HEAD", "/h")) == 200)
  end },

  { "declaring the same route twice is an error at load", function()
    local app = require "paygate"
    app.get("/dup", function() end)
    assert(not pcall(app.get, "/dup", function() end))
  end },
}

-- A first route, to see that everything is wired: GET /hello -> {"hello":"world"}.
local app = require "paygate"

app.get("/hello", function(req)
  return 200, { hello = "world" }
end)

app.get("/hello/{name}", function(req)
  return 200, { hello = req.params.name }
end)

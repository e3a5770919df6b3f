-- Benchmark routes: a trivial JSON answer, and one durable SQLite write.
local app = require "paygate"

app.migration(1, "bench table", "CREATE TABLE bench_writes (id INTEGER PRIMARY KEY, at INTEGER NOT NULL)")

app.get("/hello", function(req)
  return 200, { hello = "world" }
end)

app.post("/write", function(req)
  local id = db.tx(function()
    local _, rowid = db.exec("INSERT INTO bench_writes(at) VALUES (?)", clock.now())
    return rowid
  end)
  return 201, { id = id }
end)

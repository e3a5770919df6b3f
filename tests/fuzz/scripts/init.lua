-- The fuzz targets' scripts (tests/fuzz/fuzz_http.c, fuzz_lua_args.c): routes that read every
-- part of a request, and exports that hand arbitrary values to db and wechatpay.request.
local app = require "paygate"
local wechatpay = require "wechatpay"

app.migration(1, "things", "CREATE TABLE things(id INTEGER PRIMARY KEY, a, b, c)")

app.post("/echo", function(req)
  local body = req:body()
  local ok, v = pcall(json.decode, body)
  return 200, { ok = ok, value = ok and v or nil, len = #body, query = req.query, headers = req:headers(),
                ua = req:header("User-Agent") }
end)
app.get("/things/{id}", function(req)
  local id = app.integer(tonumber(req.params.id), 1, 1e9, "id")
  return 200, db.one("SELECT * FROM things WHERE id = ?", id) or json.null
end)
app.put("/things/{id}", function(req)
  local t = app.read_json(req)
  local id = app.integer(tonumber(req.params.id), 1, 1e9, "id")
  db.exec("INSERT OR REPLACE INTO things(id, a, b, c) VALUES (?, ?, ?, ?)", id,
          type(t.a) ~= "table" and t.a or nil, type(t.b) ~= "table" and t.b or nil, tostring(t.c))
  return 204
end)

-- db with arbitrary values: each statement's error is an ordinary error, never a crash.
local SQL = {
  "SELECT ? AS v",
  "SELECT ?, ?, ?",
  "INSERT INTO things(a, b, c) VALUES (?, ?, ?)",
  "UPDATE things SET a = ? WHERE id = ?",
  "SELECT * FROM things WHERE a = ? OR b = ? LIMIT 5",
  "SELECT length(?) AS n, typeof(?) AS t",
  "DELETE FROM things WHERE id > ?",
}
app.export("db", function(args)
  local out = {}
  if type(args) ~= "table" then args = { args } end
  for i, sql in ipairs(SQL) do
    for _, f in ipairs({ db.exec, db.query, db.one }) do
      local ok, err = pcall(f, sql, table.unpack(args, 1, math.min(#args, 8)))
      out[#out + 1] = ok
    end
  end
  local ok = pcall(db.tx, function() db.exec(SQL[3], args[1], args[2], args[3]) error("undo") end)
  out[#out + 1] = ok
  return out
end)

-- wechatpay.request with arbitrary method, path and body: refused or sent, never a crash.
app.export("wx", function(args)
  if type(args) ~= "table" then args = { args } end
  local ok, res, why = pcall(wechatpay.request, args[1], args[2], args[3])
  return { ok = ok, why = tostring(ok and why or res) }
end)

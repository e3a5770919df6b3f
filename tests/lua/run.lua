-- run.lua — Lua unit tests for lualib/, with the stock lua5.4 interpreter.
-- Each tests/lua/test_*.lua returns a list of { name, fn }; fn raises on failure.
-- Prints "ok - name" / "not ok - name" and ends with "N passed, N failed".

local root = arg[1] or "."
package.path = root .. "/lualib/?.lua;" .. root .. "/tests/lua/?.lua;" .. package.path

-- Scripts run with a `json` global in the engine; lua-cjson stands in for it here.
local cjson = require "cjson"
json = { encode = cjson.encode, decode = cjson.decode, null = cjson.null,
         array = function(t) return t or {} end }

local passed, failed = 0, 0
for _, file in ipairs({ "test_paygate", "test_router", "test_pricing", "test_schema", "test_dialect" }) do
  package.loaded.paygate = nil
  local tests = require(file)
  for _, t in ipairs(tests) do
    package.loaded.paygate = nil
    local ok, err = pcall(t[2])
    if ok then
      passed = passed + 1
      print("ok - " .. t[1])
    else
      failed = failed + 1
      print("not ok - " .. t[1] .. "\n#   " .. tostring(err))
    end
  end
end
-- The shop's SQL on both engines: on SQLite always, on PostgreSQL when PAYGATE_TEST_PG names a
-- server (tests/pg/sql_check.lua; it says when it skips that part).
local check = dofile(root .. "/tests/pg/sql_check.lua")
local ok, p, f = pcall(check.main, root)
if ok then
  passed, failed = passed + p, failed + f
else
  failed = failed + 1
  print("not ok - tests/pg/sql_check.lua ran to its end\n#   " .. tostring(p))
end
print(string.format("%d passed, %d failed", passed, failed))
os.exit(failed == 0 and 0 or 1)

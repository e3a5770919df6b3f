-- sql_check.lua — every SQL statement the shop and its scripts run, checked on both engines.
--
--   lua5.4 tests/pg/sql_check.lua [root]        (PAYGATE_TEST_PG=postgresql://... for PostgreSQL)
--
-- It reads the Lua sources (lualib/, scripts/, the game server's scripts, examples/rules,
-- examples/stock-rules), finds every SQL text in them — string literals and the constants they
-- are joined with, plus the few statements built at run time, which it gets by calling the
-- functions that build them with a recording db — and then:
--   * refuses what is outside the subset both engines run (docs/scripts.md, "SQL both engines
--     run"): INSERT OR, ifnull, scalar max/min, strftime, rowid, numbered parameters ...;
--   * applies the SQLite text of every migration to a new SQLite file and prepares (EXPLAIN)
--     every statement there;
--   * with PAYGATE_TEST_PG set (a server the test runner started): applies the PostgreSQL text
--     of every migration in a schema of its own, PREPAREs every statement there with ? turned
--     into $n (a parse error or a parameter whose type PostgreSQL cannot infer fails), compares
--     the two schemas (tables, columns in order, NOT NULL, keys, unique constraints, foreign
--     keys, indexes, triggers; every integer column BIGINT) and checks that order_events
--     refuses UPDATE, DELETE and TRUNCATE there as it does on SQLite. The schema is dropped at
--     the end. Without PAYGATE_TEST_PG that part is skipped, and says so.
-- Prints "ok - ..." / "not ok - ..." lines and ends with "N passed, N failed".
local M = {}

-- ---------------------------------------------------------------- Lua sources → tokens

-- Tokens of a Lua source: { t = "str"|"name"|"op"|"num", v = text/value, line = n }; comments dropped.
function M.tokens(src)
  local out, i, line, n = {}, 1, 1, #src
  local function long_close(level, from)
    local close = "]" .. string.rep("=", level) .. "]"
    local e = src:find(close, from, true)
    assert(e, "unfinished long bracket at line " .. line)
    return e, e + #close - 1
  end
  while i <= n do
    local c = src:sub(i, i)
    if c == "\n" then
      line, i = line + 1, i + 1
    elseif c:match("%s") then
      i = i + 1
    elseif src:sub(i, i + 1) == "--" then
      local eq = src:match("^%[(=*)%[", i + 2)
      if eq then
        local s, e = long_close(#eq, i + 4 + #eq)
        local _, nl = src:sub(i, e):gsub("\n", "")
        line, i = line + nl, e + 1
        local _ = s
      else
        local e = src:find("\n", i, true) or n + 1
        i = e
      end
    elseif src:match("^%[=*%[", i) then
      local eq = src:match("^%[(=*)%[", i)
      local body_start = i + 2 + #eq
      local s, e = long_close(#eq, body_start)
      local body = src:sub(body_start, s - 1)
      if body:sub(1, 1) == "\n" then body = body:sub(2) end       -- Lua drops a first newline
      out[#out + 1] = { t = "str", v = body, line = line }
      local _, nl = src:sub(i, e):gsub("\n", "")
      line, i = line + nl, e + 1
    elseif c == '"' or c == "'" then
      local j, buf = i + 1, {}
      while true do
        local d = src:sub(j, j)
        assert(d ~= "" and d ~= "\n", "unfinished string at line " .. line)
        if d == c then break end
        if d == "\\" then
          local e = src:sub(j + 1, j + 1)
          local map = { n = "\n", t = "\t", r = "\r", a = "\a", b = "\b", f = "\f", v = "\v",
                        ["\\"] = "\\", ['"'] = '"', ["'"] = "'", ["\n"] = "\n" }
          if map[e] then
            buf[#buf + 1], j = map[e], j + 2
            if e == "\n" then line = line + 1 end
          elseif e == "z" then
            j = j + 2
            while src:sub(j, j):match("%s") do
              if src:sub(j, j) == "\n" then line = line + 1 end
              j = j + 1
            end
          elseif e == "x" then
            buf[#buf + 1], j = string.char(tonumber(src:sub(j + 2, j + 3), 16)), j + 4
          elseif e:match("%d") then
            local digits = src:match("^%d%d?%d?", j + 1)
            buf[#buf + 1], j = string.char(tonumber(digits)), j + 1 + #digits
          else
            error("escape \\" .. e .. " at line " .. line .. " is not handled here")
          end
        else
          buf[#buf + 1], j = d, j + 1
        end
      end
      out[#out + 1] = { t = "str", v = table.concat(buf), line = line }
      i = j + 1
    elseif c:match("[%a_]") then
      local w = src:match("^[%w_]+", i)
      out[#out + 1] = { t = "name", v = w, line = line }
      i = i + #w
    elseif c:match("%d") then
      local w = src:match("^0[xX][%x%.pP%-]+", i) or src:match("^[%d%.]+[eE][%+%-]?%d+", i) or src:match("^[%d%.]+", i)
      out[#out + 1] = { t = "num", v = w, line = line }
      i = i + #w
    else
      local op = src:match("^%.%.%.", i) or src:match("^%.%.", i) or src:match("^[=~<>]=", i)
          or src:match("^::", i) or src:match("^//", i) or src:match("^<<", i) or src:match("^>>", i) or c
      out[#out + 1] = { t = "op", v = op, line = line }
      i = i + #op
    end
  end
  return out
end

-- ---------------------------------------------------------------- SQL texts in a source

local SQL_START = { "^%s*SELECT%s", "^%s*INSERT%s+INTO%s", "^%s*UPDATE%s+[%w_]+%s+SET%s", "^%s*UPDATE%s+[%w_]+%s*$",
                    "^%s*DELETE%s+FROM%s", "^%s*WITH%s" }

local function looks_like_sql(text)
  for _, p in ipairs(SQL_START) do
    if text:match(p) then return true end
  end
  return false
end

-- A chain of string literals and constants joined by "..", from token k: its text, whether
-- every part was known, and the index after it.
local function chain(toks, k, consts)
  local parts, known, j = {}, true, k
  while true do
    local t = toks[j]
    if t and t.t == "str" then
      parts[#parts + 1] = t.v
    elseif t and t.t == "name" then
      -- a constant: NAME or M.NAME (resolved when the file defines it from literals)
      local name = t.v
      if toks[j + 1] and toks[j + 1].v == "." and toks[j + 2] and toks[j + 2].t == "name" then
        name, j = t.v .. "." .. toks[j + 2].v, j + 2
      end
      if consts[name] then parts[#parts + 1] = consts[name] else known = false; parts[#parts + 1] = "<" .. name .. ">" end
    else
      known = false
      parts[#parts + 1] = "<expr>"
      break
    end
    j = j + 1
    if not (toks[j] and toks[j].v == "..") then break end
    j = j + 1
  end
  return table.concat(parts), known, j
end

-- The file's constants made of literals: local NAME = "..." .. "...", M.NAME = [[...]].
local function constants(toks)
  local consts = {}
  for pass = 1, 2 do                       -- twice: a constant may be built from a later one's name
    for k = 1, #toks - 2 do
      local name, at
      if toks[k].t == "name" and toks[k + 1] and toks[k + 1].v == "=" and toks[k + 2] then
        if toks[k - 1] and toks[k - 1].v == "." and toks[k - 2] and toks[k - 2].t == "name" then
          name, at = toks[k - 2].v .. "." .. toks[k].v, k + 2
        elseif toks[k - 1] and toks[k - 1].v == "local" then
          name, at = toks[k].v, k + 2
        end
      end
      if name and (toks[at].t == "str" or toks[at].t == "name") then
        local text, known = chain(toks, at, consts)
        if known then consts[name] = text end
      end
    end
    local _ = pass
  end
  return consts
end

-- Every SQL text of a source: { sql = text, line = n, known = bool, template = bool }, and the
-- db calls whose first argument is not a literal or constant: { line, arg = "name" }.
function M.extract(src)
  local toks = M.tokens(src)
  local consts = constants(toks)
  local found, calls = {}, {}
  local k = 1
  while k <= #toks do
    local t = toks[k]
    local prev = toks[k - 1]
    local inside_chain = prev and prev.v == ".."
    if (t.t == "str" or t.t == "name") and not inside_chain then
      local text, known, j = chain(toks, k, consts)
      if t.t == "str" and looks_like_sql(text) then
        -- "...%s..." given to string.format: a template, built at run time
        local template = toks[k - 2] and toks[k - 2].v == "format" or text:find("%%[sd]") ~= nil
        found[#found + 1] = { sql = text, line = t.line, known = known, template = template }
      end
      k = (j > k) and j or k + 1
    else
      k = k + 1
    end
    if t.t == "name" and t.v == "db" and toks[k] and toks[k].v == "." then
      local fn = toks[k + 1] and toks[k + 1].v
      if (fn == "exec" or fn == "query" or fn == "one") and toks[k + 2] and toks[k + 2].v == "(" then
        local a = toks[k + 3]
        local literal = a and (a.t == "str" or (a.t == "name" and (consts[a.v]
            or (toks[k + 4] and toks[k + 4].v == "." and toks[k + 5] and consts[a.v .. "." .. toks[k + 5].v]))))
        if not literal then
          calls[#calls + 1] = { line = t.line, arg = a and a.v or "?" }
        elseif a.t == "str" and not looks_like_sql(chain(toks, k + 3, consts)) then
          calls[#calls + 1] = { line = t.line, arg = "a text the checker does not take for SQL: " .. a.v:sub(1, 40) }
        end
      end
    end
  end
  return found, calls
end

-- ---------------------------------------------------------------- the subset both engines run

-- A scalar max(a, b) / min(a, b): a comma at the top level of its parentheses.
local function scalar_minmax(sql)
  for s in sql:gmatch("%f[%w_][mM][aAiI][xXnN]%s*(%b())") do
    local depth, q = 0, false
    for i = 1, #s do
      local c = s:sub(i, i)
      if c == "'" then q = not q
      elseif not q and c == "(" then depth = depth + 1
      elseif not q and c == ")" then depth = depth - 1
      elseif not q and c == "," and depth == 1 then return true end
    end
  end
  return false
end

M.NOT_IN_SUBSET = {
  { "%f[%w_][iI][nN][sS][eE][rR][tT]%s+[oO][rR]%s", "INSERT OR IGNORE/REPLACE (use INSERT ... ON CONFLICT)" },
  { "%f[%w_][rR][eE][pP][lL][aA][cC][eE]%s+[iI][nN][tT][oO]", "REPLACE INTO (use INSERT ... ON CONFLICT DO UPDATE)" },
  { "%f[%w_][iI][fF][nN][uU][lL][lL]%s*%(", "ifnull (use coalesce)" },
  { "%f[%w_][sS][tT][rR][fF][tT][iI][mM][eE]%s*%(", "strftime (times are ms integers; format in Lua)" },
  { "%f[%w_][dD][aA][tT][eE][tT][iI][mM][eE]%s*%(", "datetime()" },
  { "%f[%w_][jJ][uU][lL][iI][aA][nN][dD][aA][yY]%s*%(", "julianday()" },
  { "%f[%w_][jJ][sS][oO][nN]_[%w_]+%s*%(", "json_* functions (decode in Lua)" },
  { "%f[%w_][rR][oO][wW][iI][dD]%f[^%w_]", "rowid (use a column both have; branch on db.dialect)" },
  { "%f[%w_][lL][aA][sS][tT]_[iI][nN][sS][eE][rR][tT]_[rR][oO][wW][iI][dD]", "last_insert_rowid() (use RETURNING)" },
  { "%f[%w_][cC][hH][aA][nN][gG][eE][sS]%s*%(%s*%)", "changes() (db.exec returns it)" },
  { "%f[%w_][gG][lL][oO][bB]%f[^%w_]", "GLOB" },
  { "%f[%w_][pP][rR][aA][gG][mM][aA]%f[^%w_]", "PRAGMA" },
  { "%f[%w_][aA][uU][tT][oO][iI][nN][cC][rR][eE][mM][eE][nN][tT]", "AUTOINCREMENT (a migration's postgresql text)" },
  { "%?%d", "numbered parameters ?1 (write ? once per argument)" },
  { '"', "a double-quoted string (use 'single quotes')" },
}

--- What in sql is outside the subset: a list of reasons (empty when none).
function M.subset_problems(sql)
  local out = {}
  local plain = sql:gsub("'[^']*'", "''")          -- patterns apply outside string literals
  for _, r in ipairs(M.NOT_IN_SUBSET) do
    if plain:find(r[1]) then out[#out + 1] = r[2] end
  end
  if scalar_minmax(plain) then out[#out + 1] = "scalar max(a, b) / min(a, b) (use CASE)" end
  return out
end

--- sql with each ? outside quotes and comments numbered $1, $2 ... (as the engine sends it).
function M.numbered(sql)
  local out, n, i = {}, 0, 1
  while i <= #sql do
    local c = sql:sub(i, i)
    if c == "'" or c == '"' then
      local e = sql:find(c, i + 1, true) or #sql
      out[#out + 1] = sql:sub(i, e)
      i = e + 1
    elseif sql:sub(i, i + 1) == "--" then
      local e = sql:find("\n", i, true) or #sql
      out[#out + 1] = sql:sub(i, e)
      i = e + 1
    elseif c == "?" then
      n = n + 1
      out[#out + 1] = "$" .. n
      i = i + 1
    else
      out[#out + 1] = c
      i = i + 1
    end
  end
  return table.concat(out), n
end

-- ---------------------------------------------------------------- what runs, from where

-- The Lua files whose SQL runs on the shop's database, and those of the game server (the shop's
-- tables plus its own).
M.SHOP_DIRS = { "lualib", "lualib/shop", "lualib/wechatpay", "scripts", "examples/rules", "examples/stock-rules" }
M.GAME_DIRS = { "examples/game-server/scripts" }

-- SQL that is SQLite's own by design: used only when db.dialect is "sqlite" (the PostgreSQL
-- branch beside it is checked like the rest). file → pattern its statements match.
M.SQLITE_ONLY = { ["lualib/shop/orders.lua"] = "rowid" }

-- db calls whose SQL is a variable: where its statements come from (they are built at run time
-- and recorded below, or are literals found elsewhere in the file). file → { name = why }.
M.DYNAMIC = {
  ["lualib/shop/orders.lua"] = { sql = "MOVES: recorded from orders.move", pg = "list_owned: both branches are literals" },
  ["lualib/shop/console.lua"] = { sql = "search: recorded from console.search; overview: fill()'s literals" },
}

local function list_dir(root, dir)
  local p = io.popen("ls " .. root .. "/" .. dir .. "/*.lua 2>/dev/null")
  local out = {}
  for f in p:lines() do out[#out + 1] = f:sub(#root + 2) end
  p:close()
  return out
end

local function read(path)
  local f = assert(io.open(path, "rb"))
  local s = f:read("a")
  f:close()
  return s
end

-- A stand-in for the engine's globals, with db recording every statement it is given.
local function recording_env(root)
  local rec = {}
  local stub = setmetatable({}, { __index = function() return function() end end })
  json = json or { encode = function() return "{}" end, decode = function() return {} end, null = {},
                   array = function(t) return t or {} end }
  config, log, metrics, jobs = {}, stub, stub, stub
  clock = { now = function() return 1700000000000 end, sleep = function() end }
  secure = { random_id = function() return "x" end }
  db = { exec = function(sql) rec[#rec + 1] = sql return 1 end,
         query = function(sql) rec[#rec + 1] = sql return {} end,
         one = function(sql) rec[#rec + 1] = sql return nil end,
         tx = function(f, ...) return f(...) end }
  package.path = root .. "/lualib/?.lua;" .. package.path
  table.insert(package.searchers, function() return function() return stub end end)   -- engine modules
  return rec
end

-- The statements built at run time, by calling what builds them.
local function recorded(root)
  local saved = { json = json, db = db, config = config, log = log, metrics = metrics, jobs = jobs, clock = clock,
                  secure = secure, path = package.path, loaded = {} }
  for k, v in pairs(package.loaded) do saved.loaded[k] = v end
  local searchers = #package.searchers
  local rec = recording_env(root)
  local ok, err = pcall(function()
    for k in pairs(package.loaded) do if k:match("^shop%.") or k == "paygate" then package.loaded[k] = nil end end
    local orders = require "shop.orders"
    local console = require "shop.console"
    for _, from in ipairs({ "stock", "reserved", "sold" }) do
      for _, to in ipairs({ "stock", "reserved", "sold" }) do
        if from ~= to then orders.move({ { qty = 1, product_id = 1 } }, from, to) end
      end
    end
    console.search("")
    console.search("status=PAID&q=ab&from=1&to=2&limit=5")
  end)
  for k, v in pairs(saved) do if k ~= "loaded" and k ~= "path" then _G[k] = v end end
  package.path = saved.path
  while #package.searchers > searchers do table.remove(package.searchers) end
  for k in pairs(package.loaded) do package.loaded[k] = saved.loaded[k] end
  assert(ok, err)
  local out = {}
  for _, s in ipairs(rec) do out[#out + 1] = { sql = s, line = 0, known = true, file = "(built at run time)" } end
  return out
end

--- Every statement to check: { db = "shop"|"game", file, line, sql, sqlite_only }, and the
--- problems found while collecting them (dynamic SQL nobody accounts for).
function M.statements(root)
  local list, problems, seen = {}, {}, {}
  local function add(dbname, file, s)
    local key = dbname .. "\0" .. s.sql
    if seen[key] then return end
    seen[key] = true
    local only = M.SQLITE_ONLY[file]
    list[#list + 1] = { db = dbname, file = file, line = s.line, sql = s.sql,
                        sqlite_only = only ~= nil and s.sql:find(only) ~= nil }
  end
  for _, set in ipairs({ { "shop", M.SHOP_DIRS }, { "game", M.GAME_DIRS } }) do
    for _, dir in ipairs(set[2]) do
      for _, file in ipairs(list_dir(root, dir)) do
        local found, calls = M.extract(read(root .. "/" .. file))
        for _, s in ipairs(found) do
          if s.known and not s.template then
            add(set[1], file, s)
          elseif not (M.DYNAMIC[file] and (s.template or s.sql:find("^SELECT %* FROM orders<expr>"))) then
            problems[#problems + 1] = string.format("%s:%d: SQL built at run time that the checker cannot see: %s",
                                                    file, s.line, s.sql:sub(1, 80))
          end
        end
        for _, c in ipairs(calls) do
          if not (M.DYNAMIC[file] and M.DYNAMIC[file][c.arg]) then
            problems[#problems + 1] = string.format("%s:%d: db call with SQL from '%s' the checker cannot see",
                                                    file, c.line, c.arg)
          end
        end
      end
    end
  end
  for _, s in ipairs(recorded(root)) do add("shop", s.file, s) end
  return list, problems
end

-- ---------------------------------------------------------------- migrations

--- The migrations a schema script declares: app._migrations of a fresh paygate.
function M.migrations(root, script)
  local saved_path = package.path
  package.path = root .. "/lualib/?.lua;" .. package.path
  local keep = {}
  for _, k in ipairs({ "paygate", "shop.schema", "demo" }) do keep[k] = package.loaded[k]; package.loaded[k] = nil end
  package.loaded.demo = { add_products = function() end }
  local ok, res = pcall(function()
    local app = require "paygate"
    dofile(root .. "/" .. script)
    return app._migrations
  end)
  for k, v in pairs(keep) do package.loaded[k] = v end
  package.path = saved_path
  assert(ok, res)
  return res
end

-- The engine's own tables the scripts read (console: jobs). SQLite's is engine/jobs.c's DDL;
-- PostgreSQL's stands in for the engine's until it is on main (same columns, BIGINT).
M.ENGINE_SQLITE = [[
CREATE TABLE _paygate_jobs (id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT NOT NULL, key TEXT UNIQUE,
  payload TEXT NOT NULL, run_at INTEGER NOT NULL, attempts INTEGER NOT NULL DEFAULT 0,
  max_attempts INTEGER NOT NULL DEFAULT 25, state TEXT NOT NULL DEFAULT 'queued', last_error TEXT,
  created_at INTEGER NOT NULL, updated_at INTEGER NOT NULL, owner TEXT, lease_until INTEGER);
]]
M.ENGINE_POSTGRESQL = [[
CREATE TABLE _paygate_jobs (id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY, name TEXT NOT NULL,
  key TEXT UNIQUE, payload TEXT NOT NULL, run_at BIGINT NOT NULL, attempts BIGINT NOT NULL DEFAULT 0,
  max_attempts BIGINT NOT NULL DEFAULT 25, state TEXT NOT NULL DEFAULT 'queued', last_error TEXT,
  created_at BIGINT NOT NULL, updated_at BIGINT NOT NULL, owner TEXT, lease_until BIGINT);
]]

-- ---------------------------------------------------------------- running the engines' clients

local function q(s) return "'" .. s:gsub("'", "'\\''") .. "'" end

local function tmpname(suffix)
  local p = io.popen("mktemp -d /tmp/paygate-sqlcheck.XXXXXX")
  local d = p:read("l")
  p:close()
  return d, d .. "/" .. suffix
end

local function write(path, text)
  local f = assert(io.open(path, "wb"))
  f:write(text)
  f:close()
end

-- Run a shell command; its output (stdout and stderr) and whether it exited 0.
local function run(cmd)
  local p = io.popen(cmd .. " 2>&1")
  local out = p:read("a")
  local ok = p:close()
  return out, ok == true
end

-- Errors per statement of a batch in which "@@<i>" markers precede the statements.
local function by_marker(out)
  local errs, cur = {}, nil
  for l in out:gmatch("[^\n]*") do
    local id = l:match("^@@(%d+)$")
    if id then
      cur = tonumber(id)
    elseif cur and l ~= "" then
      errs[cur] = (errs[cur] and errs[cur] .. "\n" or "") .. l
    end
  end
  return errs
end

local function sqlite_batch(dbfile, body)
  return run("sqlite3 -batch " .. q(dbfile) .. " < " .. q(body))
end

local function sqlite_rows(dbfile, sql)
  local out, ok = run("sqlite3 -batch -noheader -separator '|' " .. q(dbfile) .. " " .. q(sql))
  assert(ok, out)
  local rows = {}
  for l in out:gmatch("[^\n]+") do rows[#rows + 1] = l end
  return rows
end

local function psql_cmd(url, schema, extra)
  return "PGOPTIONS=" .. q("-c search_path=" .. schema .. " -c client_min_messages=warning") .. " psql -X -q "
      .. (extra or "") .. " " .. q(url)
end

local function psql_rows(url, schema, sql)
  local out, ok = run(psql_cmd(url, schema, "-A -t -F '|' -v ON_ERROR_STOP=1") .. " -c " .. q(sql))
  assert(ok, out)
  local rows = {}
  for l in out:gmatch("[^\n]+") do rows[#rows + 1] = l end
  return rows
end

-- ---------------------------------------------------------------- the checks

local results = { passed = 0, failed = 0 }

local function report(ok, name, detail)
  if ok then
    results.passed = results.passed + 1
    print("ok - " .. name)
  else
    results.failed = results.failed + 1
    print("not ok - " .. name)
    for l in tostring(detail):gmatch("[^\n]+") do print("#   " .. l) end
  end
end

local function where(s) return s.file .. (s.line > 0 and (":" .. s.line) or "") end

-- Apply a list of DDL texts to a new SQLite file; returns the file or nil, error.
local function sqlite_db(dir, name, texts)
  local dbfile = dir .. "/" .. name .. ".db"
  local body = dir .. "/" .. name .. ".sql"
  write(body, "PRAGMA foreign_keys=ON;\n.bail on\n" .. table.concat(texts, "\n;\n") .. ";\n")
  local out, ok = sqlite_batch(dbfile, body)
  if not ok or out:find("Error") then return nil, out end
  return dbfile
end

local function sqlite_prepare_all(dir, dbfile, stmts)
  local body = dir .. "/explain.sql"
  local b = {}
  for i, s in ipairs(stmts) do
    b[#b + 1] = ".output stderr\n.print @@" .. i .. "\n.output /dev/null\nEXPLAIN " .. s.sql .. ";\n"
  end
  write(body, table.concat(b))
  local out = sqlite_batch(dbfile, body)
  return by_marker(out)
end

local function pg_prepare_all(dir, url, schema, stmts)
  local body = dir .. "/prepare.sql"
  local b = {}
  for i, s in ipairs(stmts) do
    b[#b + 1] = "\\warn @@" .. i .. "\nPREPARE s" .. i .. " AS " .. M.numbered(s.sql) .. ";\n"
  end
  b[#b + 1] = "DEALLOCATE ALL;\n"
  write(body, table.concat(b))
  local out = run(psql_cmd(url, schema) .. " -f " .. q(body))
  return by_marker(out)
end

-- The structure of a SQLite database, as comparable lines.
local function sqlite_shape(dbfile)
  local shape = {}
  local function add(l) shape[#shape + 1] = l end
  for _, r in ipairs(sqlite_rows(dbfile, [[SELECT m.name, p.cid, p.name, upper(p.type), p."notnull", p.pk
      FROM sqlite_master m, pragma_table_info(m.name) p
      WHERE m.type = 'table' AND m.name NOT LIKE 'sqlite_%' ORDER BY m.name, p.cid]])) do
    local t, cid, col, typ, nn, pk = r:match("^(.-)|(%d+)|(.-)|(.-)|(%d)|(%d+)$")
    typ = typ == "INTEGER" and "bigint" or typ:lower()
    add(string.format("column %s.%02d %s %s%s", t, tonumber(cid), col, typ,
                      (nn == "1" or pk ~= "0") and " not null" or ""))
    if pk ~= "0" then add(string.format("primary key %s #%s %s", t, pk, col)) end
  end
  for _, r in ipairs(sqlite_rows(dbfile, [[SELECT m.name, i.name, i.origin, group_concat(c.name, ',')
      FROM sqlite_master m, pragma_index_list(m.name) i, pragma_index_info(i.name) c
      WHERE m.type = 'table' AND i.origin IN ('u', 'c') GROUP BY m.name, i.name ORDER BY 1, 2]])) do
    local t, name, origin, cols = r:match("^(.-)|(.-)|(.-)|(.-)$")
    if origin == "u" then add("unique " .. t .. "(" .. cols .. ")") else add("index " .. name .. " on " .. t .. "(" .. cols .. ")") end
  end
  for _, r in ipairs(sqlite_rows(dbfile, [[SELECT m.name, f."table", group_concat(f."from", ','), group_concat(f."to", ',')
      FROM sqlite_master m, pragma_foreign_key_list(m.name) f WHERE m.type = 'table'
      GROUP BY m.name, f.id ORDER BY 1, 2]])) do
    local t, ref, from, to = r:match("^(.-)|(.-)|(.-)|(.-)$")
    add("foreign key " .. t .. "(" .. from .. ") -> " .. ref .. "(" .. to .. ")")
  end
  for _, r in ipairs(sqlite_rows(dbfile, "SELECT tbl_name, name FROM sqlite_master WHERE type = 'trigger' ORDER BY 2")) do
    local t, name = r:match("^(.-)|(.-)$")
    add("trigger " .. name .. " on " .. t)
  end
  return shape
end

local function pg_shape(url, schema)
  local shape = {}
  local function add(l) shape[#shape + 1] = l end
  for _, r in ipairs(psql_rows(url, schema, [[SELECT c.relname, a.attnum, a.attname, format_type(a.atttypid, NULL),
      a.attnotnull FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
      WHERE c.relnamespace = current_schema()::regnamespace AND c.relkind = 'r' AND a.attnum > 0
      AND NOT a.attisdropped ORDER BY 1, 2]])) do
    local t, num, col, typ, nn = r:match("^(.-)|(%d+)|(.-)|(.-)|(.)$")
    add(string.format("column %s.%02d %s %s%s", t, tonumber(num) - 1, col, typ, nn == "t" and " not null" or ""))
  end
  for _, r in ipairs(psql_rows(url, schema, [[SELECT c.conrelid::regclass::text, c.contype, k.n,
      (SELECT attname FROM pg_attribute WHERE attrelid = c.conrelid AND attnum = k.attnum)
      FROM pg_constraint c, unnest(c.conkey) WITH ORDINALITY k(attnum, n)
      WHERE c.connamespace = current_schema()::regnamespace AND c.contype IN ('p', 'u') ORDER BY 1, c.conname, 3]])) do
    local t, kind, n, col = r:match("^(.-)|(.)|(%d+)|(.-)$")
    if kind == "p" then add(string.format("primary key %s #%s %s", t, n, col)) end
  end
  for _, r in ipairs(psql_rows(url, schema, [[SELECT c.conrelid::regclass::text, c.contype, c.confrelid::regclass::text,
      (SELECT string_agg(attname, ',' ORDER BY k.n) FROM unnest(c.conkey) WITH ORDINALITY k(attnum, n)
         JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = k.attnum),
      (SELECT string_agg(attname, ',' ORDER BY k.n) FROM unnest(c.confkey) WITH ORDINALITY k(attnum, n)
         JOIN pg_attribute a ON a.attrelid = c.confrelid AND a.attnum = k.attnum)
      FROM pg_constraint c WHERE c.connamespace = current_schema()::regnamespace AND c.contype IN ('u', 'f')
      ORDER BY 1, 4]])) do
    local t, kind, ref, cols, refcols = r:match("^(.-)|(.)|(.-)|(.-)|(.-)$")
    if kind == "u" then add("unique " .. t .. "(" .. cols .. ")")
    else add("foreign key " .. t .. "(" .. cols .. ") -> " .. ref .. "(" .. refcols .. ")") end
  end
  for _, r in ipairs(psql_rows(url, schema, [[SELECT i.indrelid::regclass::text, c.relname,
      (SELECT string_agg(attname, ',' ORDER BY k.n) FROM unnest(i.indkey::int2[]) WITH ORDINALITY k(attnum, n)
         JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum)
      FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
      WHERE c.relnamespace = current_schema()::regnamespace
      AND NOT EXISTS (SELECT 1 FROM pg_constraint k WHERE k.conindid = i.indexrelid) ORDER BY 2]])) do
    local t, name, cols = r:match("^(.-)|(.-)|(.-)$")
    add("index " .. name .. " on " .. t .. "(" .. cols .. ")")
  end
  for _, r in ipairs(psql_rows(url, schema, [[SELECT tgrelid::regclass::text, tgname FROM pg_trigger
      WHERE NOT tgisinternal AND tgrelid IN (SELECT oid FROM pg_class WHERE relnamespace = current_schema()::regnamespace)
      ORDER BY 2]])) do
    local t, name = r:match("^(.-)|(.-)$")
    add("trigger " .. name .. " on " .. t)
  end
  return shape
end

-- Where PostgreSQL's schema differs from SQLite's on purpose: line in SQLite's → line in PG's.
M.SHAPE_DIFFERENCES = {
  -- the list's tie-break: SQLite's index entries end with the rowid, PostgreSQL's with order_no
  ["index orders_by_owner on orders(openid,created_at)"] = "index orders_by_owner on orders(openid,created_at,order_no)",
}
-- What only PostgreSQL has: SQLite has no TRUNCATE, which on PostgreSQL would pass by the
-- DELETE trigger, so it is refused too.
M.PG_ONLY = { ["trigger order_events_no_truncate on order_events"] = true }

local function compare_shapes(lite, pg)
  local want, have, diffs = {}, {}, {}
  if #lite < 50 or #pg < 50 then return { "too few lines to compare: " .. #lite .. " and " .. #pg } end
  for _, l in ipairs(lite) do want[M.SHAPE_DIFFERENCES[l] or l] = true end
  for l in pairs(M.PG_ONLY) do want[l] = true end
  for _, l in ipairs(pg) do have[l] = true end
  for l in pairs(want) do
    if not have[l] then diffs[#diffs + 1] = "SQLite has, PostgreSQL lacks: " .. l end
  end
  for l in pairs(have) do if not want[l] then diffs[#diffs + 1] = "PostgreSQL has, SQLite lacks: " .. l end end
  table.sort(diffs)
  return diffs
end

-- order_events on PostgreSQL refuses what its SQLite triggers refuse, and lets the hooks' progress change.
local function pg_append_only(url, schema)
  local script = [[
INSERT INTO orders(order_no, openid, status, amount, description, created_at, expires_at, updated_at)
  VALUES ('T1', 'o', 'CREATED', 100, 'd', 1700000000000, 1700000900000, 1700000000000);
INSERT INTO order_events(order_no, event, key, data, status, created_at) VALUES ('T1', 'created', 'created:T1', '{}', 'DONE', 1700000000000);
UPDATE order_events SET status = 'PENDING', attempts = attempts + 1, last_error = 'x', done_at = NULL WHERE key = 'created:T1';
\set ON_ERROR_STOP 0
\warn @@1
UPDATE order_events SET data = '{"amount":1}' WHERE key = 'created:T1';
\warn @@2
UPDATE order_events SET actor = 'someone' WHERE key = 'created:T1';
\warn @@3
DELETE FROM order_events WHERE key = 'created:T1';
\warn @@4
TRUNCATE order_events;
\warn @@5
SELECT 'left:' || count(*) FROM order_events;
]]
  local dir, body = tmpname("append.sql")
  write(body, script)
  local out = run(psql_cmd(url, schema, "-A -t -v ON_ERROR_STOP=1") .. " -f " .. q(body))
  run("rm -rf " .. q(dir))
  local errs = by_marker(out)
  local problems = {}
  local expect = { "what a row records never changes", "what a row records never changes",
                   "its rows are never deleted", "its rows are never deleted" }
  for i, text in ipairs(expect) do
    if not (errs[i] and errs[i]:find("order_events is append-only: " .. text, 1, true)) then
      problems[#problems + 1] = "statement " .. i .. " was not refused with '" .. text .. "': " .. tostring(errs[i])
    end
  end
  if not (errs[5] and errs[5]:find("left:1", 1, true)) then problems[#problems + 1] = "the row is gone: " .. tostring(errs[5]) end
  if out:find("@@1") == nil then problems[#problems + 1] = "the allowed UPDATE failed: " .. out end
  return problems
end

-- The order list on PostgreSQL is read in orders_by_owner's order, with no sort (as SQLite reads
-- it in its index's): both pages' plans, with sequential scans off (the table is empty).
local function pg_list_plans(root, url, schema)
  local consts = constants(M.tokens(read(root .. "/lualib/shop/orders.lua")))
  local problems = {}
  for _, c in ipairs({ { "LIST_SQL_POSTGRESQL", "'o', 21" }, { "LIST_AFTER_SQL_POSTGRESQL", "'o', 1, 'PG1', 21" } }) do
    local sql = consts["M." .. c[1]]
    if not sql then
      problems[#problems + 1] = "shop.orders has no " .. c[1]
    else
      local out, ok = run(psql_cmd(url, schema, "-A -t -v ON_ERROR_STOP=1") .. " -c " .. q("SET enable_seqscan = off")
                          .. " -c " .. q("PREPARE l AS " .. M.numbered(sql)) .. " -c " .. q("EXPLAIN EXECUTE l(" .. c[2] .. ")"))
      if not ok or not out:find("Index Scan Backward using orders_by_owner", 1, true) or out:find("Sort") then
        problems[#problems + 1] = c[1] .. " is not read in index order:\n" .. out
      end
    end
  end
  return problems
end

--- Run every check; returns passed, failed.
function M.main(root)
  root = root or "."
  results.passed, results.failed = 0, 0
  local stmts, problems = M.statements(root)
  report(#stmts >= 100 and #problems == 0,
         string.format("every SQL statement of the shop and its scripts is found (%d)", #stmts),
         table.concat(problems, "\n") .. (#stmts < 100 and ("\nonly " .. #stmts .. " found") or ""))

  local bad = {}
  for _, s in ipairs(stmts) do
    if not s.sqlite_only then
      for _, why in ipairs(M.subset_problems(s.sql)) do bad[#bad + 1] = where(s) .. ": " .. why end
    end
  end
  report(#bad == 0, "every statement is in the subset both engines run (docs/scripts.md)", table.concat(bad, "\n"))

  local shop_m = M.migrations(root, "scripts/schema.lua")
  local game_m = M.migrations(root, "examples/game-server/scripts/schema.lua")
  local function texts(list, field, engine)
    local out = { engine }
    for _, m in ipairs(list) do
      if m.sql then out[#out + 1] = m[field] or m.sql end
    end
    return out
  end

  -- SQLite: the migrations, then every statement prepared.
  local dir = tmpname("x")
  local lite = {}
  for _, d in ipairs({ { "shop", shop_m }, { "game", game_m } }) do
    local dbfile, err = sqlite_db(dir, d[1], texts(d[2], "sql", M.ENGINE_SQLITE))
    report(dbfile ~= nil, "SQLite: the " .. d[1] .. "'s migrations apply to a new database", err)
    lite[d[1]] = dbfile
  end
  if lite.shop and lite.game then
    local errs, failures = {}, {}
    for _, name in ipairs({ "shop", "game" }) do
      local mine = {}
      for _, s in ipairs(stmts) do if s.db == name then mine[#mine + 1] = s end end
      local e = sqlite_prepare_all(dir, lite[name], mine)
      for i, s in ipairs(mine) do
        if e[i] then failures[#failures + 1] = where(s) .. ": " .. e[i] .. "\n  in: " .. s.sql:gsub("%s+", " ") end
      end
      errs[name] = e
    end
    report(#failures == 0, "SQLite: every statement prepares against the migrated schema", table.concat(failures, "\n"))
  end

  local url = os.getenv("PAYGATE_TEST_PG")
  if not url or url == "" then
    print("ok - PostgreSQL: every statement prepares, same schema, append-only triggers # SKIP PAYGATE_TEST_PG is not set"
          .. " (not counted)")
  else
    local _, psql_ok = run("command -v psql")
    report(psql_ok, "PostgreSQL: psql is installed (postgresql-client)", "psql not found")
    local schemas = {}
    for _, d in ipairs({ { "shop", shop_m }, { "game", game_m } }) do
      local schema = string.format("sqlcheck_%s_%d_%d", d[1], os.time(), math.random(1, 1e9))
      local out, ok = run(psql_cmd(url, "public", "-v ON_ERROR_STOP=1") .. " -c " .. q("CREATE SCHEMA " .. schema))
      if ok then
        schemas[d[1]] = schema
        local body = dir .. "/" .. d[1] .. "-pg.sql"
        write(body, table.concat(texts(d[2], "postgresql", M.ENGINE_POSTGRESQL), "\n;\n") .. ";\n")
        out, ok = run(psql_cmd(url, schema, "-1 -v ON_ERROR_STOP=1") .. " -f " .. q(body))
      end
      report(ok, "PostgreSQL: the " .. d[1] .. "'s migrations (their postgresql texts) apply to a new schema", out)
      if not ok then schemas[d[1]] = nil end
    end
    -- whatever fails on the way, the schemas are dropped after
    local done, err = pcall(function()
      if schemas.shop and schemas.game then
        local failures = {}
        for _, name in ipairs({ "shop", "game" }) do
          local mine = {}
          for _, s in ipairs(stmts) do if s.db == name and not s.sqlite_only then mine[#mine + 1] = s end end
          local e = pg_prepare_all(dir, url, schemas[name], mine)
          for i, s in ipairs(mine) do
            if e[i] then failures[#failures + 1] = where(s) .. ": " .. e[i] .. "\n  in: " .. M.numbered(s.sql):gsub("%s+", " ") end
          end
        end
        report(#failures == 0, "PostgreSQL: every statement PREPAREs (parses, every parameter's type inferred)",
               table.concat(failures, "\n"))
        for _, name in ipairs({ "shop", "game" }) do
          if lite[name] then
            local diffs = compare_shapes(sqlite_shape(lite[name]), pg_shape(url, schemas[name]))
            report(#diffs == 0, "PostgreSQL: the " .. name .. "'s schema has SQLite's tables, columns, keys, indexes "
                   .. "and triggers, every integer BIGINT", table.concat(diffs, "\n"))
          end
        end
        local lp = pg_list_plans(root, url, schemas.shop)
        report(#lp == 0, "PostgreSQL: a user's order list is read in orders_by_owner's order, with no sort",
               table.concat(lp, "\n"))
        local p = pg_append_only(url, schemas.shop)
        report(#p == 0, "PostgreSQL: order_events refuses UPDATE of what a row records, DELETE and TRUNCATE; "
               .. "the hooks' progress still changes", table.concat(p, "\n"))
      end
    end)
    report(done, "PostgreSQL: the checks ran to their end", err)
    for _, schema in pairs(schemas) do
      run(psql_cmd(url, "public") .. " -c " .. q("DROP SCHEMA " .. schema .. " CASCADE"))
    end
  end
  run("rm -rf " .. q(dir))
  return results.passed, results.failed
end

if arg and arg[0] and arg[0]:match("sql_check%.lua$") then
  local passed, failed = M.main(arg[1] or ".")
  print(string.format("%d passed, %d failed", passed, failed))
  os.exit(failed == 0 and 0 or 1)
end

return M

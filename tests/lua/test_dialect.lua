-- The shop's statements per engine: what shop.orders and shop.events send to db on SQLite and
-- on PostgreSQL (db.dialect), with a db that records and answers like the engine would.

-- Run fn with the engine's globals stood in for and db answering with `answer(sql, ...)`;
-- returns the statements sent, in order.
local function with_db(dialect, answer, fn)
  local names = { "db", "config", "log", "metrics", "jobs", "clock", "secure" }
  local saved = {}
  for _, k in ipairs(names) do saved[k] = _G[k] end
  local sent, scheduled = {}, {}
  local quiet = setmetatable({}, { __index = function() return function() end end })
  config, log, metrics = {}, quiet, quiet
  jobs = { schedule = function(name, payload, o) scheduled[#scheduled + 1] = { name, payload, o } return 1, true end,
           cancel = function() end }
  clock = { now = function() return 1700000000000 end }
  secure = { random_id = function() return "r" end }
  local function record(kind)
    return function(sql, ...) sent[#sent + 1] = sql return answer(kind, sql, ...) end
  end
  db = { dialect = dialect, exec = record("exec"), query = record("query"), one = record("one"),
         tx = function(f, ...) return f(...) end }
  for k in pairs(package.loaded) do if k:match("^shop%.") then package.loaded[k] = nil end end
  local ok, err = pcall(fn)
  for _, k in ipairs(names) do _G[k] = saved[k] end
  for k in pairs(package.loaded) do if k:match("^shop%.") then package.loaded[k] = nil end end
  assert(ok, err)
  return sent, scheduled
end

local ORDER = { order_no = "PGx2", created_at = 1700000000000, rid = 7 }

local function list_answer(kind, sql)
  if kind == "one" then return ORDER end
  return {}
end

return {
  { "a user's order list uses SQLite's rowid on SQLite and order_no on PostgreSQL", function()
    for _, dialect in ipairs({ "sqlite", "postgresql" }) do
      local sent = with_db(dialect, list_answer, function()
        local orders = require "shop.orders"
        orders.list_owned("o", { limit = 5 })
        orders.list_owned("o", { limit = 5, before = "PGx2" })
      end)
      local orders_sql = table.concat(sent, "\n")
      if dialect == "sqlite" then
        assert(#sent == 3 and sent[1]:find("rowid DESC", 1, true) and sent[2]:find("rowid AS rid", 1, true)
               and sent[3]:find("rowid < ?", 1, true), orders_sql)
      else
        assert(#sent == 3 and not orders_sql:find("rowid", 1, true), orders_sql)
        assert(sent[1]:find("order_no DESC", 1, true) and sent[3]:find("(created_at, order_no) < (?, ?)", 1, true),
               orders_sql)
      end
    end
  end },

  { "without db.dialect (an engine before PostgreSQL) the list is SQLite's", function()
    local sent = with_db(nil, list_answer, function() require("shop.orders").list_owned("o", { limit = 5 }) end)
    assert(sent[1]:find("rowid", 1, true))
  end },

  { "an event is recorded with RETURNING: its job is keyed by the id that came back, a repeat records nothing",
    function()
    local hooks_has = true
    local answer = function(kind, sql)
      if kind == "one" and sql:find("RETURNING id", 1, true) then return hooks_has and { id = 41 } or nil end
    end
    local sent, scheduled = with_db("postgresql", answer, function()
      local hooks = require "shop.hooks"
      hooks.has = function() return true end
      local events = require "shop.events"
      assert(events.queue("PGx2", "paid", { amount = 1 }) == true)
      hooks_has = false                                   -- ON CONFLICT DO NOTHING: no row back
      assert(events.queue("PGx2", "paid", { amount = 1 }) == false)
    end)
    assert(#sent == 2 and sent[1]:find("ON CONFLICT(key) DO NOTHING RETURNING id", 1, true))
    assert(#scheduled == 1 and scheduled[1][1] == "order_event" and scheduled[1][2].id == 41
           and scheduled[1][3].key == "event:41")
  end },
}

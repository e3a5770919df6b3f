-- Migrations with one text per engine (app.migration's { sqlite =, postgresql = }) and the
-- shop's schema: the SQLite texts that databases have applied never change by one byte.

-- The engine's checksum of a migration's text (engine/store.c, checksum()): what an applied
-- migration is compared with at every start.
local function checksum(text)
  local h = 1469598103934665603
  for i = 1, #text do h = (h ~ text:byte(i)) * 1099511628211 end
  return string.format("%016x", h)
end

-- Load a schema script with app.migration recording what it declares.
local function declared_by(path)
  local app = require "paygate"
  package.loaded["shop.schema"] = nil
  package.loaded.demo = { add_products = function() end }
  dofile(path)
  package.loaded.demo = nil
  return app._migrations
end

-- What databases have applied: changing one of these breaks every shop that applied it.
local PINNED = {
  TABLES = "7a4deb9b922592dc",
  UPGRADES = { "c3789774e7d39a8c", "a9c58b1bc6fa4c81", "8fd2277324eb50fe", "225a6057496648d7" },
  game_players = "be6ffabf39f0ddc7",
}

return {
  { "the SQLite texts of the shop's migrations are the ones databases applied, byte for byte", function()
    local shop = require "shop.schema"
    assert(checksum(shop.TABLES.sqlite) == PINNED.TABLES, "shop.TABLES.sqlite changed: " .. checksum(shop.TABLES.sqlite))
    assert(#shop.UPGRADES == #PINNED.UPGRADES, "a new entry of shop.UPGRADES: pin its SQLite text here")
    for n, u in ipairs(shop.UPGRADES) do
      assert(checksum(u.sql) == PINNED.UPGRADES[n], "shop.UPGRADES[" .. n .. "].sql changed: " .. checksum(u.sql))
    end
    local game = declared_by("examples/game-server/scripts/schema.lua")
    assert(game[2].version == 2 and checksum(game[2].sql) == PINNED.game_players,
           "the game server's migration 2 changed: " .. checksum(game[2].sql))
  end },

  { "the checksum here is the engine's: a known text gives what engine/store.c records", function()
    assert(checksum("") == "14650fb0739d0383")
    assert(checksum("a") ~= checksum("b") and checksum("ab") ~= checksum("ba"))
  end },

  { "every migration of the shop, the demo and the game server has a PostgreSQL text", function()
    for _, path in ipairs({ "scripts/schema.lua", "examples/game-server/scripts/schema.lua" }) do
      package.loaded.paygate = nil
      for _, m in ipairs(declared_by(path)) do
        if m.sql then
          assert(type(m.postgresql) == "string" and #m.postgresql > 0,
                 path .. ": migration " .. m.version .. " has no PostgreSQL text")
          -- INTEGER is 32-bit there: ms timestamps, ids and fen sums need BIGINT; ids are identities.
          assert(not m.postgresql:find("INTEGER", 1, true), path .. ": migration " .. m.version .. " uses INTEGER")
          assert(not m.postgresql:find("AUTOINCREMENT", 1, true), path .. ": AUTOINCREMENT in " .. m.version)
        else
          assert(type(m.fn) == "function")
        end
      end
    end
  end },

  { "app.migration takes one text per engine and hands the engine both", function()
    local app = require "paygate"
    app.migration(1, "both", { sqlite = "CREATE TABLE a(x INTEGER)", postgresql = "CREATE TABLE a(x BIGINT)" })
    app.migration(2, "one text", "CREATE TABLE b(x TEXT)")
    local m = app._migrations
    assert(m[1].sql == "CREATE TABLE a(x INTEGER)" and m[1].postgresql == "CREATE TABLE a(x BIGINT)" and not m[1].fn)
    assert(m[2].sql == "CREATE TABLE b(x TEXT)" and m[2].postgresql == nil)
  end },

  { "app.migration refuses a table of texts that lacks an engine or names an unknown one", function()
    local app = require "paygate"
    for _, bad in ipairs({ { sqlite = "x" }, { postgresql = "x" }, { sqlite = "x", postgresql = "y", mysql = "z" },
                           { sqlite = "x", postgresql = 3 } }) do
      local ok, e = pcall(app.migration, 1, "bad", bad)
      assert(not ok and tostring(e):find("migration"), tostring(e))
    end
    assert(not pcall(app.migration, 1, "bad", 42))
    assert(#app._migrations == 0)
  end },

  { "shop.declare hands each of the library's changes to the engine with both texts", function()
    local app = require "paygate"
    package.loaded["shop.schema"] = nil
    local shop = require "shop.schema"
    app.migration(1, "tables", shop.TABLES)
    local versions = {}
    for n in ipairs(shop.UPGRADES) do versions[n] = n + 1 end
    shop.declare(versions)
    local m = app._migrations
    assert(m[1].sql == shop.TABLES.sqlite and m[1].postgresql == shop.TABLES.postgresql)
    for n, u in ipairs(shop.UPGRADES) do
      assert(m[n + 1].sql == u.sql and m[n + 1].postgresql == u.postgresql and u.postgresql)
    end
  end },
}

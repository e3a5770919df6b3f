-- wrk -s create_order.lua BASE_URL, with TOKENS=file (one session token a line, from setup.mjs):
-- POST /api/orders as a random user among them, 1-3 distinct products of ids 1..5, qty 1-3 each:
-- the peer's create_order.lua (../shared/peers/wrk/), with paygate's real signed session tokens.
package.path = (debug.getinfo(1, "S").source:match("^@(.*/)") or "./") .. "?.lua;" .. package.path
require "report"
local tokens = {}
for line in io.lines(os.getenv("TOKENS")) do tokens[#tokens + 1] = line end

local ids = { 1, 2, 3, 4, 5 }
local headers = { ["Content-Type"] = "application/json" }
local parts = {}

function init(args)
  math.randomseed(os.time() * 1000 + math.floor(os.clock() * 1e6))
end

function request()
  local n = math.random(1, 3)
  for i = 1, n do                          -- partial Fisher-Yates: n distinct ids
    local j = math.random(i, #ids)
    ids[i], ids[j] = ids[j], ids[i]
    parts[i] = '{"product_id":' .. ids[i] .. ',"qty":' .. math.random(1, 3) .. '}'
  end
  headers["Authorization"] = "Bearer " .. tokens[math.random(1, #tokens)]
  local body = '{"items":[' .. table.concat(parts, ",", 1, n) .. ']}'
  return wrk.format("POST", "/api/orders", headers, body)
end

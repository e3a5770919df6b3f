-- paygate: what every script starts from: routes, jobs, migrations, errors, input checks.
--
--   local app = require "paygate"
--   app.get("/hello/{name}", function(req) return 200, { hello = req.params.name } end)
--
-- A handler returns status, body (a table is sent as JSON, a string as is), headers.
-- app.fail(status, code, message) stops the handler with the API's error shape.

local app = {}

local exact = {}      -- path -> method -> handler
local patterns = {}   -- { method=, pattern=, names=, handler=, source= }
local job_handlers = {}
local exports = {}    -- name -> fn, called by the host program (paygate_call)
local listeners = {}  -- event -> { fn, ... }, events of the host program (paygate_emit)
app._migrations = {}

-- Where the function `level` calls up was called from ("scripts/schema.lua:12"): error()
-- at that level prefixes exactly that. (No debug library in the jail.)
function app._caller(level)
  local _, where = pcall(error, "", level + 3)
  return type(where) == "string" and where:match("^(.-):%s*$") or nil
end

local METHODS = { GET = true, POST = true, PUT = true, DELETE = true, PATCH = true, OPTIONS = true }

--- Stop the handler and answer {"error": code, "message": message} with status.
function app.fail(status, code, message)
  error({ status = status, error = code, message = message or code }, 0)
end

-- "/api/orders/{no}/pay" -> "^/api/orders/([^/]+)/pay$", { "no" }
local function compile(path)
  local names = {}
  local pattern = path:gsub("[%^%$%(%)%%%.%[%]%*%+%-%?]", "%%%0"):gsub("{([%w_]+)}", function(name)
    names[#names + 1] = name
    return "([^/]+)"
  end)
  return "^" .. pattern .. "$", names
end

--- Declare a route. path segments written {name} are captured into req.params.name.
function app.route(method, path, handler)
  assert(METHODS[method], "route: unknown method " .. tostring(method))
  assert(type(path) == "string" and path:sub(1, 1) == "/", "route: path must start with /")
  assert(type(handler) == "function", "route: handler must be a function")
  if path:find("{", 1, true) then
    local pattern, names = compile(path)
    patterns[#patterns + 1] = { method = method, pattern = pattern, names = names, handler = handler }
  else
    exact[path] = exact[path] or {}
    assert(not exact[path][method], "route: " .. method .. " " .. path .. " is declared twice")
    exact[path][method] = handler
  end
end

for method in pairs(METHODS) do
  app[method:lower()] = function(path, handler) app.route(method, path, handler) end
end

--- Declare the handler of a durable job: fn(payload, info) where info = {id=, attempt=}.
--- Raising an error makes the job run again later (with backoff).
function app.job(name, fn)
  assert(type(fn) == "function", "job: handler must be a function")
  job_handlers[name] = fn
end

local DIALECTS = { sqlite = true, postgresql = true }

--- Declare a schema migration: versions only grow; never edit one once applied.
--- `change` is SQL text (may hold several statements) that both engines run, a table
--- { sqlite = "...", postgresql = "..." } when the DDL differs (each engine runs and checksums
--- its own text; see docs/scripts.md), or a function using db. A failing migration is reported
--- with the file and line that declared it (`where`, when a library declares it for its host:
--- see shop.schema).
function app.migration(version, name, change, where)
  assert(math.type(version) == "integer" and version > 0, "migration: version must be a positive integer")
  local m = { version = version, name = name, where = where or app._caller(1) }
  if type(change) == "string" then
    m.sql = change
  elseif type(change) == "table" then
    for k, v in pairs(change) do
      assert(DIALECTS[k], "migration: " .. tostring(k) .. " is not a dialect (sqlite, postgresql)")
      assert(type(v) == "string", "migration: the " .. k .. " text must be a string")
    end
    assert(change.sqlite and change.postgresql,
           "migration: a table of texts needs both sqlite = \"...\" and postgresql = \"...\"")
    m.sql, m.postgresql = change.sqlite, change.postgresql
  else
    assert(type(change) == "function", "migration: change must be SQL text, { sqlite =, postgresql = } or a function")
    m.fn = change
  end
  local list = app._migrations
  assert(#list == 0 or list[#list].version < version, "migration: versions must be declared in increasing order")
  list[#list + 1] = m
end

--- Offer fn to the program paygate is embedded in (paygate_call in C): fn(args) gets the
--- host's JSON arguments decoded and returns what the host gets back as JSON. It may wait
--- (http.request, wechatpay ...); app.fail(status, code, message) answers the host with
--- that status and {"error": code, "message": message}.
function app.export(name, fn)
  assert(type(name) == "string" and name ~= "", "export: name must be a non-empty string")
  assert(type(fn) == "function", "export: fn must be a function")
  assert(not exports[name], "export: " .. name .. " is exported twice")
  exports[name] = fn
end

--- Handle an event of the program paygate is embedded in (paygate_emit in C): fn(payload)
--- with the event's JSON decoded. Handlers of one event run in turn, in their own
--- coroutine; one that fails is logged and the next still runs.
function app.on(event, fn)
  assert(type(event) == "string" and event ~= "", "on: event must be a non-empty string")
  assert(type(fn) == "function", "on: handler must be a function")
  local list = listeners[event] or {}
  list[#list + 1] = fn
  listeners[event] = list
end

--- The request body as a JSON object (a table); 400 when it is not one.
function app.read_json(req)
  local body = req:body()
  if body == "" then app.fail(400, "invalid_request", "a JSON body is required") end
  local ok, value = pcall(json.decode, body)
  if not ok or type(value) ~= "table" then
    app.fail(400, "invalid_request", "the body is not a JSON object")
  end
  return value
end

--- The value of name in the request's query string ("status=PAID&limit=10"), percent-decoded
--- ("+" is a space); nil when it is absent or empty.
function app.query(req, name)
  for k, v in (req.query or ""):gmatch("([^&=]+)=([^&]*)") do
    if k == name then
      v = v:gsub("+", " "):gsub("%%(%x%x)", function(h) return string.char(tonumber(h, 16)) end)
      return v ~= "" and v or nil
    end
  end
end

--- An integer field within [min, max], or a 400 naming the field.
--- (JSON has one number type; 1 and 1.0 are the same integer, 1.5 and "1" are not.)
function app.integer(value, min, max, field)
  if math.type(value) ~= "integer" or value < min or value > max then
    app.fail(400, "invalid_request",
      string.format("%s must be an integer from %d to %d", field or "value", min, max))
  end
  return value
end

local function answer(status, body, headers)
  if type(body) == "table" then
    body = json.encode(body)
  elseif body ~= nil and type(body) ~= "string" then
    error("handler returned a body that is neither a table nor a string", 0)
  end
  return status, body, headers
end

local function not_found(req)
  return answer(404, { error = "not_found", message = "no route for " .. req.method .. " " .. req.path })
end

-- Called by the engine for every request (method and path are passed along: cheaper than asking req).
function app._dispatch(req, method, path)
  local by_method = exact[path]
  local handler = by_method and (by_method[method] or (method == "HEAD" and by_method.GET))
  local allowed = by_method ~= nil
  if not handler then
    for i = 1, #patterns do
      local r = patterns[i]
      local caps = { path:match(r.pattern) }
      if caps[1] then
        allowed = true
        if r.method == method or (method == "HEAD" and r.method == "GET") then
          local params = {}
          for k, name in ipairs(r.names) do params[name] = caps[k] end
          req.params = params
          handler = r.handler
          break
        end
      end
    end
  end
  if not handler then
    if allowed then
      -- Allow: every method some route of this path answers (HEAD with GET).
      local set, list = {}, {}
      for m in pairs(by_method or {}) do set[m] = true end
      for i = 1, #patterns do
        if path:match(patterns[i].pattern) then set[patterns[i].method] = true end
      end
      if set.GET then set.HEAD = true end
      for m in pairs(set) do list[#list + 1] = m end
      table.sort(list)
      return answer(405, { error = "method_not_allowed", message = method .. " is not allowed on " .. path },
                    { Allow = table.concat(list, ", ") })
    end
    return not_found(req)
  end
  return answer(handler(req))
end

function app._run_job(name, payload, info)
  local fn = job_handlers[name]
  if not fn then
    error("no handler for job '" .. name .. "' in the current scripts", 0)
  end
  fn(json.decode(payload), info)
end

-- Called by the engine for paygate_call: the function's result as JSON text.
function app._call(name, args)
  local fn = exports[name]
  if not fn then app.fail(404, "no_such_function", "the scripts export no function '" .. name .. "'") end
  local ok, value = pcall(json.decode, args)
  if not ok then app.fail(400, "invalid_arguments", "the arguments are not valid JSON") end
  local result = fn(value)
  if result == nil then return "null" end
  return json.encode(result)
end

local function describe(err)
  if type(err) == "table" then return tostring(err.error) .. ": " .. tostring(err.message) end
  return tostring(err)
end

-- Called by the engine for paygate_emit.
function app._emit(event, payload)
  local list = listeners[event]
  if not list then return end
  local value = json.decode(payload)
  for i = 1, #list do
    local ok, err = pcall(list[i], value)
    if not ok then log.error("event handler failed", { event = event, error = describe(err) }) end
  end
end

return app

-- fake.lua — a stand-in for the engine's request object.
local fake = {}

function fake.request(method, path, body, headers)
  local req = { method = method, path = path, query = "", id = "test" }
  function req:body() return body or "" end
  function req:header(name) return headers and headers[name] end
  return req
end

-- Run app._dispatch and catch app.fail's error table like the engine does.
function fake.call(app, req)
  local ok, status, resbody, headers = pcall(app._dispatch, req, req.method, req.path)
  if not ok then
    local e = status
    assert(type(e) == "table", "handler raised a non-HTTP error: " .. tostring(e))
    return e.status, { error = e.error, message = e.message }
  end
  return status, resbody and json.decode(resbody), headers
end

return fake

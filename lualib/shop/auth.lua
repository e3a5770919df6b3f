-- auth: who is calling. Mini-program users carry a session token from POST /api/login.
local app = require "paygate"

local M = {}

M.SESSION_TTL = 7 * 24 * 3600

--- The caller's openid, or a 401 answer.
function M.user(req)
  local h = req:header("Authorization")
  local token = h and h:match("^Bearer%s+(%S+)$")
  if not token then app.fail(401, "unauthorized", "send Authorization: Bearer <token from POST /api/login>") end
  local openid, why = secure.verify_token(token)
  if not openid then
    app.fail(401, "unauthorized", why == "expired" and "the session expired; log in again" or "the token is not valid")
  end
  return openid
end

--- The caller's openid when a valid session token comes with the request, else nil (for
--- routes anyone may call that answer a logged-in user differently, e.g. a member price).
function M.optional(req)
  local h = req:header("Authorization")
  local token = h and h:match("^Bearer%s+(%S+)$")
  return token and secure.verify_token(token) or nil
end

return M

-- Login: the mini program's wx.login code becomes a session token for our API.
local app = require "paygate"
local auth = require "shop.auth"
local wechatpay = require "wechatpay"

local ANSWERS = {
  invalid_code = { 400, "invalid_code", "the login code is invalid or was already used; call wx.login again" },
  rate_limited = { 429, "rate_limited", "too many logins; try again in a minute" },
  blocked      = { 403, "blocked", "WeChat refused this user (high risk)" },
}

app.post("/api/login", function(req)
  local body = app.read_json(req)
  if type(body.code) ~= "string" then app.fail(400, "invalid_request", "code (from wx.login) is required") end
  local user, why, msg = wechatpay.login(body.code)
  if not user then
    local a = ANSWERS[why]
    if a then app.fail(a[1], a[2], a[3]) end
    log.warn("login failed upstream", { reason = why, detail = msg })
    app.fail(502, "upstream_error", "WeChat login is unavailable; try again")
  end
  local token = secure.issue_token(user.openid, auth.SESSION_TTL)
  return 200, { token = token, expires_in = auth.SESSION_TTL }
end)

-- wrk -s notify.lua BASE_URL, with NOTIFICATIONS=file (from setup.mjs): each request replays the
-- next signed, encrypted payment notification, each for its own PAYING order, to
-- POST /wechat/notify/pay. Lines: timestamp \t nonce \t signature \t serial \t body.
package.path = (debug.getinfo(1, "S").source:match("^@(.*/)") or "./") .. "?.lua;" .. package.path
require "report"
local list = {}
for line in io.lines(os.getenv("NOTIFICATIONS")) do list[#list + 1] = line end
local i = 0
local headers = { ["Content-Type"] = "application/json",
                  ["Wechatpay-Signature-Type"] = "WECHATPAY2-SHA256-RSA2048" }

function request()
  i = i + 1
  if i > #list then i = 1 end              -- past the end: duplicates (setup makes enough for a run)
  local ts, nonce, sig, serial, body = list[i]:match("^([^\t]*)\t([^\t]*)\t([^\t]*)\t([^\t]*)\t(.*)$")
  headers["Wechatpay-Timestamp"], headers["Wechatpay-Nonce"] = ts, nonce
  headers["Wechatpay-Signature"], headers["Wechatpay-Serial"] = sig, serial
  return wrk.format("POST", "/wechat/notify/pay", headers, body)
end

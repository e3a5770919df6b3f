-- timefmt: the times the API and WeChat Pay speak (RFC 3339 with an offset, China time by default).
local M = {}

local CHINA = 8 * 3600

--- RFC 3339 for a time in ms since the epoch, at a fixed offset (seconds; default +08:00).
function M.rfc3339(ms, offset)
  offset = offset or CHINA
  local s = ms // 1000 + offset
  local sign = offset >= 0 and "+" or "-"
  local o = math.abs(offset)
  return os.date("!%Y-%m-%dT%H:%M:%S", s) .. string.format("%s%02d:%02d", sign, o // 3600, (o % 3600) // 60)
end

--- Parse "2026-11-28T16:00:00+08:00" (or "Z") into ms since the epoch; nil when malformed.
function M.parse(text)
  if type(text) ~= "string" then return nil end
  local y, mo, d, h, mi, s, rest = text:match("^(%d%d%d%d)%-(%d%d)%-(%d%d)T(%d%d):(%d%d):(%d%d)(.*)$")
  if not y then return nil end
  rest = rest:gsub("^%.%d+", "")
  local offset
  if rest == "Z" then
    offset = 0
  else
    local sign, oh, om = rest:match("^([+-])(%d%d):(%d%d)$")
    if not sign then return nil end
    offset = (tonumber(oh) * 3600 + tonumber(om) * 60) * (sign == "-" and -1 or 1)
  end
  y, mo, d, h, mi, s = tonumber(y), tonumber(mo), tonumber(d), tonumber(h), tonumber(mi), tonumber(s)
  if mo < 1 or mo > 12 or d < 1 or d > 31 or h > 23 or mi > 59 or s > 60 then return nil end
  -- days since the epoch for a civil date (proleptic Gregorian)
  if mo <= 2 then y = y - 1 end
  local era = y // 400
  local yoe = y - era * 400
  local doy = (153 * (mo + (mo > 2 and -3 or 9)) + 2) // 5 + d - 1
  local doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
  local days = era * 146097 + doe - 719468
  local secs = days * 86400 + h * 3600 + mi * 60 + s - offset
  return secs * 1000
end

return M

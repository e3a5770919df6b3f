-- wx/protocol.lua — how WeChat Pay answers: error bodies, signed 2xx, and the request checks in its order.
--
-- A handler either returns a 2xx through protocol.ok (signed), or stops with
-- protocol.fail(status, code, message, detail), which the API wrapper turns into an
-- unsigned {"code","message","detail"} answer — WeChat Pay's shape, not paygate's.

local sandbox = require "wechatpay.sandbox"
local state = require "wx.state"

local protocol = {}

local function key_file(name, default)
  return (config.keys or {})[name] or default
end

-- Key files are named here and read in C (relative to the config file); no key reaches Lua.
protocol.keys = sandbox.load_keys{
  platform_key_file = key_file("platform_key_file", "../../var/sandbox/platform_key.pem"),
  platform_cert_file = key_file("platform_cert_file", "../../var/sandbox/platform_cert.pem"),
  merchant_cert_file = key_file("merchant_cert_file", "../../var/sandbox/merchant_cert.pem"),
  apiv3_key_file = key_file("apiv3_key_file", "../../var/sandbox/apiv3_key"),
  public_key_file = key_file("public_key_file", "../../var/sandbox/pubkey_key.pem"),
  public_key_id_file = key_file("public_key_id_file", "../../var/sandbox/pubkey_id"),
  app_secret_file = key_file("app_secret_file", "../../var/sandbox/app_secret"),
}
protocol.info = protocol.keys:info()

--- Stop the handler with WeChat Pay's error answer (never signed).
function protocol.fail(status, code, message, detail)
  error({ wx = true, status = status, code = code, message = message, detail = detail }, 0)
end

--- The unsigned error answer for a protocol.fail value.
function protocol.error_answer(e)
  local body = { code = e.code, message = e.message, detail = e.detail }
  return e.status, json.encode(body), { ["Request-ID"] = sandbox.uuid() }
end

--- Does this call get a public-key-mode signature? (request = the merchant's Wechatpay-Serial)
function protocol.use_public_key(request_serial)
  if state.mode == "public_key" then return true end
  if state.mode == "certificate" or not protocol.info.public_key_id then return false end
  return type(request_serial) == "string" and request_serial:sub(1, 11) == "PUB_KEY_ID_"
end

--- A signed 2xx: body (table or string), with Wechatpay-* and Request-ID headers.
--- sig: {public_key=, probe=, bad=} from the fault switches.
function protocol.ok(status, body, sig)
  if type(body) == "table" then body = json.encode(body) end
  body = body or ""
  local headers = protocol.keys:sign_response(body, sig)
  headers["Request-ID"] = sandbox.uuid()
  if body == "" then return status, nil, headers end
  return status, body, headers
end

-- ---- request checks, in WeChat Pay's order ----

local SIGN_FORMAT = "Http头Authorization值格式错误，请参考《微信支付商户REST API签名规则》"
local SIGN_MESSAGES = {
  format = SIGN_FORMAT,
  scheme = "HTTP头Authorization认证类型不正确",
  stale = "Http头Authorization中的timestamp与发起请求的时间不得超过5分钟",
  serial = "商户证书序列号有误。请使用签名私钥匹配的证书序列号",
}

-- The signed message as the server saw it, cut to at most n bytes on a UTF-8 boundary.
local function truncate(s, n)
  if #s <= n then return s end
  local cut = n
  while cut > 0 and (s:byte(cut + 1) or 0) & 0xC0 == 0x80 do cut = cut - 1 end
  return s:sub(1, cut)
end

--- The URL as the merchant signed it: path plus raw query.
function protocol.url_of(req)
  local q = req.query
  if q ~= nil and q ~= "" then return req.path .. "?" .. q end
  return req.path
end

--- Run the header and signature checks; returns the parsed Authorization.
function protocol.authenticate(req, body)
  local accept, ua = req:header("Accept"), req:header("User-Agent")
  if not accept or accept == "" or not ua or ua == "" then
    protocol.fail(400, "INVALID_REQUEST", "Http头缺少Accept或User-Agent")
  end
  local auth, kind = protocol.keys:parse_authorization(req:header("Authorization"))
  if not auth then protocol.fail(401, "SIGN_ERROR", SIGN_MESSAGES[kind] or SIGN_FORMAT) end
  local url = protocol.url_of(req)
  local ok, why, signed = protocol.keys:verify_request(req.method, url, body, auth)
  if not ok and why ~= "signature" then
    protocol.fail(401, "SIGN_ERROR", SIGN_MESSAGES[why] or SIGN_FORMAT)
  end
  if auth.mchid ~= state.mchid then
    protocol.fail(400, "MCH_NOT_EXISTS", "商户号不存在")
  end
  if not ok then
    protocol.fail(401, "SIGN_ERROR", "错误的签名，验签失败", {
      field = "signature", location = "authorization", detail = { issue = "sign not match" },
      sign_information = {
        method = req.method, url = url, sign_message_length = #signed,
        truncated_sign_message = truncate(signed, 128),
      },
    })
  end
  return auth
end

--- The header mchid must equal the one in the body or query.
function protocol.check_mchid(auth, mchid, where)
  if mchid ~= nil and mchid ~= auth.mchid then
    protocol.fail(400, "PARAM_ERROR", "http header中的mchid与" .. where .. "中的mchid不匹配")
  end
end

--- The JSON body as a table, or PARAM_ERROR.
function protocol.read_body(body)
  if body == "" then protocol.fail(400, "PARAM_ERROR", "请求body为空") end
  local ok, value = pcall(json.decode, body)
  if not ok or type(value) ~= "table" then
    protocol.fail(400, "PARAM_ERROR", "解析请求body失败，请检查body是否为合法的JSON")
  end
  return value
end

-- ---- field validation with the "输入源…" messages ----

local function source(location, path) return "输入源“/" .. location .. "/" .. path .. "”" end

local function field_fail(location, path, label, rule, value)
  protocol.fail(400, "PARAM_ERROR", source(location, path) .. "映射到值字段“" .. label .. "”" .. rule,
    { location = location, value = value })
end

--- A string field: required?, byte limits, pattern (Lua) + the regex WeChat Pay prints.
--- spec = {location=, path=, label=, required=, min=, max=, pattern=, regex=}
function protocol.check_string(value, spec)
  local loc = spec.location or "body"
  if value == nil or value == json.null then
    if spec.required then field_fail(loc, spec.path, spec.label, "必填性规则校验失败，此字段为必填项", json.null) end
    return nil
  end
  if type(value) ~= "string" then
    field_fail(loc, spec.path, spec.label, "类型规则校验失败，值必须是字符串", json.null)
  end
  if spec.max and #value > spec.max then
    field_fail(loc, spec.path, spec.label,
      string.format("字符串规则校验失败，字节数 %d，大于最大值 %d", #value, spec.max), #value)
  end
  if spec.min and #value < spec.min then
    field_fail(loc, spec.path, spec.label,
      string.format("字符串规则校验失败，字节数 %d，小于最小值 %d", #value, spec.min), #value)
  end
  if spec.check and not spec.check(value) then
    field_fail(loc, spec.path, spec.label, "字符串规则校验失败，字符串必须匹配正则表达式“" .. spec.regex .. "”", value)
  end
  return value
end

--- An integer field >= min.
function protocol.check_integer(value, spec)
  local loc = spec.location or "body"
  if value == nil or value == json.null then
    if spec.required then field_fail(loc, spec.path, spec.label, "必填性规则校验失败，此字段为必填项", json.null) end
    return nil
  end
  if math.type(value) ~= "integer" then
    field_fail(loc, spec.path, spec.label, "类型规则校验失败，值必须是整数", json.null)
  end
  if spec.min and value < spec.min then
    field_fail(loc, spec.path, spec.label, string.format("数值规则校验失败，值 %d，小于最小值 %d", value, spec.min), value)
  end
  return value
end

--- An object field (required or not); returns the table or nil.
function protocol.check_object(value, spec)
  if value == nil or value == json.null then
    if spec.required then
      field_fail(spec.location or "body", spec.path, spec.label, "必填性规则校验失败，此字段为必填项", json.null)
    end
    return nil
  end
  if type(value) ~= "table" then
    field_fail(spec.location or "body", spec.path, spec.label, "类型规则校验失败，值必须是对象", json.null)
  end
  return value
end

-- out_trade_no and out_refund_no characters
function protocol.is_trade_no(s) return s:find("^[0-9a-zA-Z_%-|%*]+$") ~= nil end
function protocol.is_refund_no(s) return s:find("^[0-9a-zA-Z_%-|%*@]+$") ~= nil end

-- notify_url: http(s), a host, no query or fragment, no whitespace.
function protocol.is_notify_url(s)
  local host, rest = s:match("^https?://([^/?#%s]+)(.*)$")
  if not host or rest:find("[%s?#%[%]]") then return false end
  host = host:gsub("^[^@]*@", "")
  local name, port = host:match("^([^:]+):(%d+)$")
  if port then return #port >= 2 and #port <= 5 and name ~= "" end
  return not host:find(":") and host ~= ""
end

--- Path segments arrive percent-encoded ("|" as %7C): decode for lookups.
function protocol.unescape(s)
  return (s:gsub("%%(%x%x)", function(h) return string.char(tonumber(h, 16)) end))
end

--- The value of name in a raw query string, decoded.
function protocol.query_param(query, name)
  for k, v in (query or ""):gmatch("([^&=]+)=([^&]*)") do
    if k == name then return protocol.unescape(v) end
  end
  return nil
end

return protocol

-- wx/api.lua — the WeChat Pay APIv3 endpoints a mini-program shop uses.
--
-- Every call goes through the same steps as at WeChat Pay: the latency and fault
-- switches, then headers → Authorization → timestamp → merchant serial → signature
-- (protocol.authenticate), then the mchid match, field checks and business rules of
-- the endpoint. 2xx answers are signed; 4xx/5xx are not.

local app = require "paygate"
local state = require "wx.state"
local protocol = require "wx.protocol"
local faults = require "wx.faults"
local orders = require "wx.orders"

local api = {}

local function system_error(spec)
  local status = math.type(spec.status) == "integer" and spec.status or 500
  protocol.fail(status, status == 500 and "SYSTEM_ERROR" or "SERVICE_UNAVAILABLE", "系统错误")
end

-- Run the handler body: faults that act before handling, authentication, the endpoint.
local function handle(req, handler, ctx)
  local slow = faults.fire("slow", req.path)
  if slow then clock.sleep(slow.ms or 3000) end
  local err = faults.fire("system_error", req.path)
  if err then system_error(err) end
  if faults.fire("rate_limited", req.path) then protocol.fail(429, "FREQUENCY_LIMITED", "频率超限，请降低请求频率") end
  ctx.raw = req:body()
  ctx.auth = protocol.authenticate(req, ctx.raw)
  return handler(req, ctx)
end

--- Declare an APIv3 endpoint: handler(req, ctx) returns status, body table (or nil for 204).
local function endpoint(method, path, handler)
  app.route(method, path, function(req)
    local latency = faults.latency_ms()
    if latency > 0 then clock.sleep(latency) end
    local ctx = { serial = req:header("Wechatpay-Serial") }
    local ok, status, body = pcall(handle, req, handler, ctx)
    if not ok then
      if type(status) == "table" and status.wx then return protocol.error_answer(status) end
      log.error("sandbox endpoint failed", { path = req.path, error = tostring(status) })
      return protocol.error_answer({ status = 500, code = "SYSTEM_ERROR", message = "系统错误" })
    end
    local timeout = faults.fire("timeout", req.path)
    local sig = {
      public_key = protocol.use_public_key(ctx.serial),
      probe = faults.fire("probe", req.path) ~= nil,
      bad = faults.fire("bad_signature", req.path) ~= nil,
    }
    local s, b, h = protocol.ok(status, body, sig)
    if timeout then clock.sleep(timeout.ms or 30000) end   -- handled, but the answer comes too late
    return s, b, h
  end)
end

-- The {out_trade_no} path segment: decoded, 1..32 bytes.
local function trade_no_param(req)
  local no = protocol.unescape(req.params.no)
  protocol.check_string(no, { location = "uri_template", path = "out_trade_no", label = "商户订单号", max = 32 })
  return no
end

-- GET endpoints name the merchant in ?mchid=: it must match the Authorization.
local function query_mchid(req, ctx)
  local mchid = protocol.query_param(req.query, "mchid")
  protocol.check_mchid(ctx.auth, mchid, "query")
  protocol.check_string(mchid, { location = "query", path = "mchid", label = "直连商户号", required = true, max = 32 })
end

api.endpoint = endpoint     -- for the endpoints of other files (wx/bills.lua)

local function order_or_404(o)
  if not o then protocol.fail(404, "ORDER_NOT_EXIST", "订单不存在") end
  return o
end

endpoint("POST", "/v3/pay/transactions/jsapi", function(req, ctx)
  local b = protocol.read_body(ctx.raw)
  protocol.check_mchid(ctx.auth, b.mchid, "post payload")
  orders.check_prepay(b)
  return 200, { prepay_id = orders.place(b) }
end)

endpoint("POST", "/v3/pay/transactions/app", function(req, ctx)
  local b = protocol.read_body(ctx.raw)
  protocol.check_mchid(ctx.auth, b.mchid, "post payload")
  orders.check_app_prepay(b)
  return 200, { prepay_id = orders.place_app(b) }
end)

endpoint("GET", "/v3/pay/transactions/out-trade-no/{no}", function(req, ctx)
  query_mchid(req, ctx)
  local no = trade_no_param(req)
  return 200, orders.transaction(order_or_404(orders.get(no)))
end)

endpoint("GET", "/v3/pay/transactions/id/{id}", function(req, ctx)
  query_mchid(req, ctx)
  local id = protocol.unescape(req.params.id)
  protocol.check_string(id, { location = "uri_template", path = "transaction_id", label = "微信支付订单号", max = 32 })
  return 200, orders.transaction(order_or_404(orders.get_by_transaction_id(id)))
end)

endpoint("POST", "/v3/pay/transactions/out-trade-no/{no}/close", function(req, ctx)
  local b = protocol.read_body(ctx.raw)
  protocol.check_mchid(ctx.auth, b.mchid, "post payload")
  protocol.check_string(b.mchid, { path = "mchid", label = "直连商户号", required = true, max = 32 })
  orders.close(trade_no_param(req))
  return 204, nil
end)

endpoint("POST", "/v3/refund/domestic/refunds", function(req, ctx)
  local b = protocol.read_body(ctx.raw)
  orders.check_refund(b)
  return 200, orders.refund_object(orders.refund(b))
end)

endpoint("GET", "/v3/refund/domestic/refunds/{no}", function(req, ctx)
  local no = protocol.unescape(req.params.no)
  protocol.check_string(no, { location = "uri_template", path = "out_refund_no", label = "商户退款单号", max = 64 })
  local r = orders.get_refund(no)
  if not r then protocol.fail(404, "RESOURCE_NOT_EXISTS", "退款单不存在") end
  return 200, orders.refund_object(r)
end)

endpoint("GET", "/v3/certificates", function(req, ctx)
  if state.mode == "public_key" then
    protocol.fail(404, "RESOURCE_NOT_EXISTS", "无可用的平台证书，请在商户平台-API安全申请使用微信支付公钥。可参考：https://pay.weixin.qq.com/docs/merchant/products/platform-certificate/wxp-pub-key-guide.html")
  end
  return 200, protocol.keys:certificates_response()
end)

return api

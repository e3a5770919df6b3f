-- wechatpay.bills: WeChat Pay's daily bills — asking for them, downloading them, reading them.
--
--   local wechatpay = require "wechatpay"
--   local res = wechatpay.tradebill{ bill_date = "2026-12-01", tar_type = "GZIP" }   -- signed, verified
--   local b, why, msg = wechatpay.download_bill(res.body.download_url, res.body)      -- SHA1 checked
--   for rec in require("wechatpay.bills").records(b, "trade") do ... rec.out_trade_no, rec.total (fen) ... end
--
-- The file is kept in C memory (wechatpay.bill), not in the Lua heap, and read one line at a
-- time; amounts become exact integers (fen; fees in 1/1000 fen, WeChat prints them with five
-- decimals). The columns and where they come from: docs/wechatpay.md#bills.
local bill = require "wechatpay.bill"

local M = {}

local function date_ok(d) return type(d) == "string" and d:find("^%d%d%d%d%-%d%d%-%d%d$") ~= nil end

--- Add tradebill, fundflowbill and download_bill to the wechatpay module W (core: wechatpay.core).
function M.install(W, core)
  --- GET /v3/bill/tradebill. o: bill_date (YYYY-MM-DD), bill_type? (ALL, SUCCESS, REFUND), tar_type? ("GZIP").
  --- A result table whose body is {hash_type, hash_value, download_url}, or nil, reason, message.
  function W.tradebill(o)
    if type(o) ~= "table" or not date_ok(o.bill_date) then return nil, "invalid", "bill_date must be YYYY-MM-DD" end
    local bt = o.bill_type or "ALL"
    if bt ~= "ALL" and bt ~= "SUCCESS" and bt ~= "REFUND" then return nil, "invalid", "bill_type is ALL, SUCCESS or REFUND" end
    if o.tar_type ~= nil and o.tar_type ~= "GZIP" then return nil, "invalid", "tar_type is GZIP or absent" end
    return core.request("GET", "/v3/bill/tradebill?bill_date=" .. o.bill_date .. "&bill_type=" .. bt
                        .. (o.tar_type and "&tar_type=GZIP" or ""))
  end

  --- GET /v3/bill/fundflowbill. o: bill_date, account_type? (BASIC, OPERATION, FEES), tar_type?.
  function W.fundflowbill(o)
    if type(o) ~= "table" or not date_ok(o.bill_date) then return nil, "invalid", "bill_date must be YYYY-MM-DD" end
    local at = o.account_type or "BASIC"
    if at ~= "BASIC" and at ~= "OPERATION" and at ~= "FEES" then
      return nil, "invalid", "account_type is BASIC, OPERATION or FEES"
    end
    if o.tar_type ~= nil and o.tar_type ~= "GZIP" then return nil, "invalid", "tar_type is GZIP or absent" end
    return core.request("GET", "/v3/bill/fundflowbill?bill_date=" .. o.bill_date .. "&account_type=" .. at
                        .. (o.tar_type and "&tar_type=GZIP" or ""))
  end

  --- Download a bill file (signed request; WeChat does not sign the answer) and check it:
  --- un-gzipped when it is gzip, then its SHA1 against hash (the tradebill answer's body, or the
  --- hex string). Returns a bill (wechatpay.bill: header(), rows(), summary(), info(), close())
  --- or nil, reason, message: timeout, connect, tls, network, invalid, http_error (message has the status and code;
  --- 4th value: the status), bad_gzip, hash_mismatch, unsupported_hash, bad_format, too_large.
  function W.download_bill(url, hash)
    local hex = hash
    if type(hash) == "table" then
      if hash.hash_type ~= nil and hash.hash_type ~= "SHA1" then
        return nil, "unsupported_hash", "hash_type " .. tostring(hash.hash_type) .. " (only SHA1 is known)"
      end
      hex = hash.hash_value
    end
    if type(hex) ~= "string" or not hex:find("^%x+$") or #hex ~= 40 then
      return nil, "invalid", "the bill's SHA1 (40 hex digits) is required: a download is checked by it alone"
    end
    if type(url) ~= "string" then return nil, "invalid", "url is required" end
    local res, why, msg = core.download(url)
    if not res and tostring(msg):find("^too_large") then
      return nil, "too_large", tostring(msg) .. " (the file as downloaded: raise fetch.max_response_bytes, up to 64 MiB)"
    end
    if not res then return nil, why, msg end
    if res.status ~= 200 then
      return nil, "http_error", string.format("download answered %d %s %s", res.status, tostring(res.code),
                                              tostring(res.message)), res.status
    end
    local data = res.raw
    res = nil
    return bill.open(data, { gzip = data:sub(1, 2) == "\31\139", sha1 = hex })
  end
end

-- ---- reading a bill ----

-- Column name → { key, kind }: kind "fen" (scale 2), "fee" (scale 5: 1/1000 fen), "count", or text.
M.TRADE_COLUMNS = {
  ["交易时间"] = { "time" }, ["公众账号ID"] = { "appid" }, ["商户号"] = { "mchid" }, ["特约商户号"] = { "sub_mchid" },
  ["子商户号"] = { "sub_mchid" }, ["设备号"] = { "device_info" }, ["微信订单号"] = { "transaction_id" },
  ["商户订单号"] = { "out_trade_no" }, ["用户标识"] = { "openid" }, ["交易类型"] = { "trade_type" },
  ["交易状态"] = { "trade_state" }, ["付款银行"] = { "bank_type" }, ["货币种类"] = { "currency" },
  ["应结订单金额"] = { "settlement_total", "fen" }, ["代金券金额"] = { "coupon", "fen" },
  ["微信退款单号"] = { "refund_id" }, ["商户退款单号"] = { "out_refund_no" }, ["退款金额"] = { "refund", "fen" },
  ["充值券退款金额"] = { "coupon_refund", "fen" }, ["退款类型"] = { "refund_channel" },
  ["退款状态"] = { "refund_status" }, ["商品名称"] = { "description" }, ["商户数据包"] = { "attach" },
  ["手续费"] = { "fee", "fee" }, ["费率"] = { "rate" }, ["订单金额"] = { "total", "fen" },
  ["申请退款金额"] = { "refund_requested", "fen" }, ["费率备注"] = { "rate_note" },
  ["退款申请时间"] = { "refund_requested_at" }, ["退款成功时间"] = { "refund_success_at" },
  -- the summary
  ["总交易单数"] = { "count", "count" }, ["应结订单总金额"] = { "settlement_total", "fen" },
  ["退款总金额"] = { "refund_total", "fen" }, ["充值券退款总金额"] = { "coupon_refund_total", "fen" },
  ["手续费总金额"] = { "fee_total", "fee" }, ["订单总金额"] = { "total", "fen" },
  ["申请退款总金额"] = { "refund_requested_total", "fen" },
}
M.FUNDFLOW_COLUMNS = {
  ["记账时间"] = { "time" }, ["微信支付业务单号"] = { "business_no" }, ["资金流水单号"] = { "flow_no" },
  ["业务名称"] = { "business_name" }, ["业务类型"] = { "business_type" }, ["收支类型"] = { "direction" },
  ["收支金额"] = { "amount", "fen" }, ["账户结余"] = { "balance", "fen" }, ["资金变更提交申请人"] = { "applicant" },
  ["备注"] = { "remark" }, ["业务凭证号"] = { "voucher_no" },
  ["资金流水总笔数"] = { "count", "count" }, ["收入笔数"] = { "income_count", "count" },
  ["收入金额"] = { "income", "fen" }, ["支出笔数"] = { "expense_count", "count" }, ["支出金额"] = { "expense", "fen" },
}
local REQUIRED = { trade = { "out_trade_no", "trade_state", "total" }, fundflow = { "amount", "direction" } }
-- Refund statuses as older bills spell them.
local REFUND_STATUS = { CHANGE = "ABNORMAL", REFUNDCLOSE = "CLOSED", FAIL = "CLOSED" }

-- "收支金额(元)" and "收支金额（元）" are the same column.
local function clean(name) return (name:gsub("%(元%)", ""):gsub("（元）", "")) end

local function columns(names, kind, what)
  local map = kind == "trade" and M.TRADE_COLUMNS or M.FUNDFLOW_COLUMNS
  local out, have = {}, {}
  for i, name in ipairs(names) do
    local c = map[clean(name)]
    if c then out[i] = c; have[c[1]] = true end
  end
  if what == "header" then
    for _, k in ipairs(REQUIRED[kind]) do
      if not have[k] then error("bad_format: the bill's header has no column for " .. k, 0) end
    end
  end
  return out
end

local function convert(c, v, where)
  if c[2] == nil then return v end
  if v == "" and c[2] ~= "count" then return 0 end
  local n = bill.amount(v, c[2] == "fee" and 5 or c[2] == "count" and 0 or 2)
  if not n then error(string.format("bad_format: %s: %s is not an exact amount: '%s'", where, c[1], v), 0) end
  return n                                    -- fen; fees in 1/100000 yuan = 1/1000 fen
end

--- Iterate over the detail lines of bill b as records (kind "trade" or "fundflow"): column
--- names become keys (docs/wechatpay.md#bills), amounts exact integers. Raises "bad_format: ..."
--- on a line that does not read.
function M.records(b, kind)
  local cols = columns(b:header(), kind, "header")
  local next_row, n = b:rows(), 1
  return function()
    local row = next_row()
    if not row then return nil end
    n = n + 1
    local rec = { line = n }
    for i, v in ipairs(row) do
      local c = cols[i]
      if c then rec[c[1]] = convert(c, v, "line " .. n) end
    end
    if rec.refund_status then rec.refund_status = REFUND_STATUS[rec.refund_status] or rec.refund_status end
    if kind == "fundflow" then rec.direction = rec.direction == "收入" and "in" or rec.direction == "支出" and "out"
                                               or rec.direction end
    return rec
  end
end

--- The summary line of bill b as a record, or nil when the bill has none.
function M.summary(b, kind)
  local names, values = b:summary()
  if not names or not values then return nil end
  local cols, rec = columns(names, kind), {}
  for i, v in ipairs(values) do
    local c = cols[i]
    if c then rec[c[1]] = convert(c, v, "summary") end
  end
  return rec
end

return M

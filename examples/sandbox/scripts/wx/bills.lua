-- wx/bills.lua — WeChat Pay's daily bills of the sandbox's own state, and controls that make a
-- bill disagree with it.
--
--   GET /v3/bill/tradebill?bill_date=&bill_type=&tar_type=     → {hash_type, hash_value, download_url}
--   GET /v3/bill/fundflowbill?bill_date=&account_type=&tar_type= → the same, for the fund flow
--   GET /v3/billdownload/file?token=                            the file: signed request, unsigned answer
--   POST /sandbox/bills/tamper {bill_date, drop?, amount?, fee?, transaction_id?, extra?, extra_refunds?,
--                               summary?}                      a bill that disagrees
--   DELETE /sandbox/bills/tamper                                every tamper cleared
--
-- A bill is made when it is asked for, from the orders and refunds of that Beijing day, in
-- WeChat Pay's format (docs/wechatpay.md#bills): a header line, detail lines whose every field
-- starts with a backtick, a summary header and a summary line. The hash is the SHA1 of the text
-- before gzip. The download URL works for 5 minutes of business time (POST /sandbox/clock).
-- Unlike WeChat Pay, today's bill can be asked for at once (WeChat: from 10:00 the next day).

local app = require "paygate"
local bill = require "wechatpay.bill"
local sandbox = require "wechatpay.sandbox"
local state = require "wx.state"
local protocol = require "wx.protocol"
local faults = require "wx.faults"
local api = require "wx.api"

local bills = {}

local URL_TTL_MS = 5 * 60 * 1000
local FEE_PERMILLE = 6                      -- 0.60%, rounded to the fen (half up)

app.migration(2, "sandbox bills", [[
  CREATE TABLE bill_files(
    token TEXT PRIMARY KEY, kind TEXT NOT NULL, bill_date TEXT NOT NULL, gzip INTEGER NOT NULL,
    text TEXT NOT NULL, sha1 TEXT NOT NULL, expires_at INTEGER NOT NULL, created_at INTEGER NOT NULL);
]])

bills.TRADE_HEADER = "交易时间,公众账号ID,商户号,特约商户号,设备号,微信订单号,商户订单号,用户标识,交易类型,交易状态,"
  .. "付款银行,货币种类,应结订单金额,代金券金额,微信退款单号,商户退款单号,退款金额,充值券退款金额,退款类型,退款状态,"
  .. "商品名称,商户数据包,手续费,费率,订单金额,申请退款金额,费率备注"
bills.TRADE_SUMMARY = "总交易单数,应结订单总金额,退款总金额,充值券退款总金额,手续费总金额,订单总金额,申请退款总金额"
bills.FUND_HEADER = "记账时间,微信支付业务单号,资金流水单号,业务名称,业务类型,收支类型,收支金额(元),账户结余(元),"
  .. "资金变更提交申请人,备注,业务凭证号"
bills.FUND_SUMMARY = "资金流水总笔数,收入笔数,收入金额,支出笔数,支出金额"

-- fen → "12.34"; with extra zero decimals ("0.07000") for fees, as WeChat prints them.
local function yuan(fen, extra)
  local sign = fen < 0 and "-" or ""
  fen = math.abs(fen)
  return string.format("%s%d.%02d%s", sign, fen // 100, fen % 100, extra or "")
end

local function fee_of(fen) return (fen * FEE_PERMILLE + 500) // 1000 end

-- "2026-12-01T10:00:00+08:00" → "2026-12-01 10:00:00"
local function bill_time(rfc) return (rfc or ""):sub(1, 19):gsub("T", " ") end

-- A line: every field with its backtick; commas inside a field would split it, so they go.
local function line(fields)
  local out = {}
  for i, f in ipairs(fields) do out[i] = "`" .. tostring(f):gsub("[,\r\n]", " ") end
  return table.concat(out, ",")
end

local function tamper_of(date)
  local row = db.one("SELECT value FROM kv WHERE key = ?", "bill_tamper:" .. date)
  return row and json.decode(row.value) or {}
end

local function contains(list, v)
  for _, x in ipairs(type(list) == "table" and list or {}) do if x == v then return true end end
  return false
end

-- The day's payments and refunds as detail records, the tamper applied.
local function records(date)
  local t = tamper_of(date)
  local out = {}
  for _, o in ipairs(db.query([[SELECT * FROM orders WHERE transaction_id IS NOT NULL AND substr(success_time, 1, 10) = ?
                                ORDER BY success_time, out_trade_no]], date)) do
    if not contains(t.drop, o.out_trade_no) then
      local total = (type(t.amount) == "table" and math.tointeger(t.amount[o.out_trade_no])) or o.total
      local tid = type(t.transaction_id) == "table" and t.transaction_id[o.out_trade_no] or o.transaction_id
      out[#out + 1] = { kind = "pay", time = bill_time(o.success_time), transaction_id = tid,
                        out_trade_no = o.out_trade_no, openid = o.openid, total = total,
                        fee = type(t.fee) == "table" and math.tointeger(t.fee[o.out_trade_no]) or nil,
                        description = o.description, attach = o.attach or "" }
    end
  end
  for _, x in ipairs(type(t.extra) == "table" and t.extra or {}) do
    out[#out + 1] = { kind = "pay", time = date .. " 12:00:00", transaction_id = x.transaction_id or
                      ("420000" .. date:gsub("-", "") .. sandbox.random_digits(14)), out_trade_no = x.out_trade_no,
                      openid = x.openid or "oSandboxBillOnly", total = math.tointeger(x.total) or 1,
                      description = x.description or "bill only", attach = "" }
  end
  for _, x in ipairs(type(t.extra_refunds) == "table" and t.extra_refunds or {}) do
    out[#out + 1] = { kind = "refund", time = date .. " 12:00:00", transaction_id = x.transaction_id or "0",
                      out_trade_no = x.out_trade_no or "", openid = "oSandboxBillOnly", refund_id = x.refund_id or
                      ("503000" .. date:gsub("-", "") .. sandbox.random_digits(15)), out_refund_no = x.out_refund_no,
                      refund = math.tointeger(x.refund) or 1, status = x.status or "SUCCESS",
                      description = "bill only", attach = "" }
  end
  for _, r in ipairs(db.query([[SELECT r.*, o.openid, o.description, o.attach FROM refunds r
                                JOIN orders o ON o.out_trade_no = r.out_trade_no
                                WHERE substr(r.create_time, 1, 10) = ? ORDER BY r.create_time, r.out_refund_no]], date)) do
    if not contains(t.drop, r.out_refund_no) then
      local refund = (type(t.amount) == "table" and math.tointeger(t.amount[r.out_refund_no])) or r.refund
      out[#out + 1] = { kind = "refund", time = bill_time(r.create_time), transaction_id = r.transaction_id,
                        out_trade_no = r.out_trade_no, openid = r.openid, refund_id = r.refund_id,
                        out_refund_no = r.out_refund_no, refund = refund, status = r.status,
                        description = r.description, attach = r.attach or "" }
    end
  end
  return out, t
end

--- The trade bill (ALL) of a Beijing date, as text.
function bills.trade(date)
  local recs, t = records(date)
  local lines = { bills.TRADE_HEADER }
  local n, settle, refunds, fees, totals, asked = 0, 0, 0, 0, 0, 0
  for _, r in ipairs(recs) do
    n = n + 1
    if r.kind == "pay" then
      local fee = r.fee or fee_of(r.total)
      settle, totals, fees = settle + r.total, totals + r.total, fees + fee
      lines[#lines + 1] = line { r.time, state.appid, state.mchid, "0", "", r.transaction_id, r.out_trade_no, r.openid,
        "JSAPI", "SUCCESS", "OTHERS", "CNY", yuan(r.total), "0.00", "0", "0", "0.00", "0.00", "", "",
        r.description, r.attach, yuan(fee, "000"), "0.60%", yuan(r.total), "0.00", "" }
    else
      local fee = -fee_of(r.refund)
      refunds, asked, fees = refunds + r.refund, asked + r.refund, fees + fee
      lines[#lines + 1] = line { r.time, state.appid, state.mchid, "0", "", r.transaction_id, r.out_trade_no, r.openid,
        "JSAPI", "REFUND", "OTHERS", "CNY", "0.00", "0.00", r.refund_id, r.out_refund_no, yuan(r.refund), "0.00",
        "ORIGINAL", r.status, r.description, r.attach, yuan(fee, "000"), "0.60%", "0.00", yuan(r.refund), "" }
    end
  end
  local s = type(t.summary) == "table" and t.summary or {}
  lines[#lines + 1] = bills.TRADE_SUMMARY
  lines[#lines + 1] = line { math.tointeger(s.count) or n, yuan(math.tointeger(s.settlement_total) or settle),
    yuan(refunds), "0.00", yuan(fees, "000"), yuan(totals), yuan(asked) }
  return table.concat(lines, "\r\n") .. "\r\n"
end

--- The fund flow bill (BASIC) of a Beijing date: payments in, fees and refunds out.
function bills.fundflow(date)
  local recs = records(date)
  local lines = { bills.FUND_HEADER }
  local balance, n, nin, amount_in, nout, amount_out = 0, 0, 0, 0, 0, 0
  local function add(r, name, kind, dir, fen, voucher)
    balance = balance + (dir == "收入" and fen or -fen)
    n = n + 1
    if dir == "收入" then nin, amount_in = nin + 1, amount_in + fen else nout, amount_out = nout + 1, amount_out + fen end
    lines[#lines + 1] = line { r.time, r.refund_id or r.transaction_id, state.mchid .. r.time:gsub("[^%d]", "") .. n,
      name, kind, dir, yuan(fen), yuan(balance), "system", "", voucher }
  end
  for _, r in ipairs(recs) do
    if r.kind == "pay" then
      add(r, "交易", "交易", "收入", r.total, r.out_trade_no)
      add(r, "交易", "扣除交易手续费", "支出", fee_of(r.total), r.out_trade_no)
    elseif r.status == "SUCCESS" then
      add(r, "退款", "退款", "支出", r.refund, "REF" .. r.transaction_id)
      add(r, "退款", "退还交易手续费", "收入", fee_of(r.refund), "REF" .. r.transaction_id)
    end
  end
  lines[#lines + 1] = bills.FUND_SUMMARY
  lines[#lines + 1] = line { n, nin, yuan(amount_in), nout, yuan(amount_out) }
  return table.concat(lines, "\r\n") .. "\r\n"
end

local function bill_date_param(req)
  local date = protocol.query_param(req.query, "bill_date")
  protocol.check_string(date, { location = "query", path = "bill_date", label = "账单日期", required = true, max = 10 })
  local y, m, d = date:match("^(%d%d%d%d)%-(%d%d)%-(%d%d)$")
  if not y or tonumber(m) < 1 or tonumber(m) > 12 or tonumber(d) < 1 or tonumber(d) > 31 then
    protocol.fail(400, "PARAM_ERROR", "输入源“/query/bill_date”映射到值字段“账单日期”字符串规则校验失败，字符串必须匹配正则表达式“^[0-9]{4}-[0-9]{2}-[0-9]{2}$”")
  end
  if date > sandbox.beijing_time(state.now_s()):sub(1, 10) then
    protocol.fail(400, "NO_STATEMENT_EXIST", "要下载的账单不存在")
  end
  return date
end

local function tar_type(req)
  local t = protocol.query_param(req.query, "tar_type")
  if t ~= nil and t ~= "GZIP" then protocol.fail(400, "PARAM_ERROR", "压缩类型仅支持GZIP") end
  return t == "GZIP"
end

local function publish(req, kind, date, text, gz)
  local token = sandbox.random_alnum(64)
  local sha1 = bill.sha1(text)
  db.exec([[INSERT INTO bill_files(token, kind, bill_date, gzip, text, sha1, expires_at, created_at)
            VALUES (?, ?, ?, ?, ?, ?, ?, ?)]], token, kind, date, gz and 1 or 0, text, sha1,
          state.now_ms() + URL_TTL_MS, state.now_ms())
  db.exec("DELETE FROM bill_files WHERE expires_at < ?", state.now_ms() - 24 * 3600 * 1000)
  local host = req:header("Host") or "127.0.0.1:8090"
  return 200, { hash_type = "SHA1", hash_value = sha1,
                download_url = "http://" .. host .. "/v3/billdownload/file?token=" .. token }
end

api.endpoint("GET", "/v3/bill/tradebill", function(req)
  local date = bill_date_param(req)
  local bt = protocol.query_param(req.query, "bill_type") or "ALL"
  if bt ~= "ALL" then protocol.fail(400, "PARAM_ERROR", "沙箱仅提供ALL类型的交易账单") end
  return publish(req, "trade", date, bills.trade(date), tar_type(req))
end)

api.endpoint("GET", "/v3/bill/fundflowbill", function(req)
  local date = bill_date_param(req)
  local at = protocol.query_param(req.query, "account_type") or "BASIC"
  if at ~= "BASIC" then protocol.fail(400, "PARAM_ERROR", "沙箱仅提供BASIC账户的资金账单") end
  return publish(req, "fundflow", date, bills.fundflow(date), tar_type(req))
end)

-- The download: the request is signed like every call, the answer is not (WeChat Pay does not
-- sign bill files; the hash of the signed tradebill answer is the merchant's check).
app.get("/v3/billdownload/file", function(req)
  local ok, status, body = pcall(function()
    if faults.fire("system_error", req.path) then protocol.fail(500, "SYSTEM_ERROR", "系统错误") end
    if faults.fire("rate_limited", req.path) then protocol.fail(429, "FREQUENCY_LIMITED", "频率超限，请降低请求频率") end
    protocol.authenticate(req, req:body())
    local token = protocol.query_param(req.query, "token")
    local f = token and db.one("SELECT * FROM bill_files WHERE token = ?", token)
    if not f then protocol.fail(400, "INVALID_REQUEST", "下载账单的token无效") end
    if state.now_ms() >= f.expires_at then protocol.fail(400, "INVALID_REQUEST", "账单下载链接已过期，请重新申请") end
    return 200, f.gzip == 1 and bill.gzip(f.text) or f.text
  end)
  if not ok then
    if type(status) == "table" and status.wx then return protocol.error_answer(status) end
    error(status, 0)
  end
  return status, body, { ["Content-Type"] = "application/octet-stream", ["Request-ID"] = sandbox.uuid() }
end)

-- ---- controls ----

app.post("/sandbox/bills/tamper", function(req)
  local b = app.read_json(req)
  local date = b.bill_date
  if type(date) ~= "string" or not date:find("^%d%d%d%d%-%d%d%-%d%d$") then
    app.fail(400, "invalid_request", "bill_date (YYYY-MM-DD, Beijing) is required")
  end
  local t = { drop = b.drop, amount = b.amount, fee = b.fee, transaction_id = b.transaction_id, extra = b.extra,
              extra_refunds = b.extra_refunds, summary = b.summary }
  for k, v in pairs(t) do
    if type(v) ~= "table" then app.fail(400, "invalid_request", k .. " must be an array or an object") end
  end
  db.exec("INSERT INTO kv(key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
          "bill_tamper:" .. date, json.encode(t))
  return 200, { bill_date = date, tamper = t }
end)

app.delete("/sandbox/bills/tamper", function()
  db.exec("DELETE FROM kv WHERE key LIKE 'bill_tamper:%'")
  return 200, { cleared = true }
end)

-- The bills as text, for people and specs: GET /sandbox/bills/{date}?kind=trade|fundflow
app.get("/sandbox/bills/{date}", function(req)
  local kind = protocol.query_param(req.query, "kind") or "trade"
  if kind ~= "trade" and kind ~= "fundflow" then app.fail(400, "invalid_request", "kind is trade or fundflow") end
  return 200, kind == "trade" and bills.trade(req.params.date) or bills.fundflow(req.params.date),
         { ["Content-Type"] = "text/csv; charset=utf-8" }
end)

-- An ABNORMAL refund dealt with at WeChat Pay: {status: "SUCCESS" | "CLOSED"}.
app.post("/sandbox/refunds/{no}/resolve", function(req)
  local b = app.read_json(req)
  if b.status ~= "SUCCESS" and b.status ~= "CLOSED" then app.fail(400, "invalid_request", "status is SUCCESS or CLOSED") end
  local r = require("wx.orders").resolve_refund(protocol.unescape(req.params.no), b.status)
  if not r then app.fail(409, "not_abnormal", "no ABNORMAL refund " .. req.params.no) end
  return 200, r
end)

return bills

-- bills.lua — a large trade bill (N lines, default 200,000) gzipped, then opened, hashed and read as
-- records: time, and the Lua heap while reading (the bill itself stays in C memory). make bench-bills.
package.path = LUALIB .. "/?.lua;" .. package.path
package.loaded["wechatpay.bill"] = bill
local bills = require "wechatpay.bills"
local N = tonumber(os.getenv("N") or "200000")
local parts = { "交易时间,公众账号ID,商户号,特约商户号,设备号,微信订单号,商户订单号,用户标识,交易类型,交易状态,付款银行,货币种类,应结订单金额,代金券金额,微信退款单号,商户退款单号,退款金额,充值券退款金额,退款类型,退款状态,商品名称,商户数据包,手续费,费率,订单金额,申请退款金额,费率备注" }
local total = 0
for i = 1, N do
  local fen = 100 + i % 9900
  total = total + fen
  parts[#parts + 1] = string.format("`2026-12-01 10:%02d:%02d,`wxd678efh567hg6787,`1900007291,`0,`,`4200000000202612010000%06d,`PG%012d,`oUser%024d,`JSAPI,`SUCCESS,`OTHERS,`CNY,`%d.%02d,`0.00,`0,`0,`0.00,`0.00,`,`,`一杯茶,`,`0.00000,`0.60%%,`%d.%02d,`0.00,`",
    i % 60, i % 60, i, i, i, fen // 100, fen % 100, fen // 100, fen % 100)
end
parts[#parts + 1] = "总交易单数,应结订单总金额,退款总金额,充值券退款总金额,手续费总金额,订单总金额,申请退款总金额"
parts[#parts + 1] = string.format("`%d,`%d.%02d,`0.00,`0.00,`0.00000,`%d.%02d,`0.00", N, total // 100, total % 100, total // 100, total % 100)
local text = table.concat(parts, "\r\n")
parts = nil
local sha = bill.sha1(text)
local gz = bill.gzip(text)
local textlen = #text
text = nil
collectgarbage() collectgarbage()
local base = collectgarbage("count")
local t0 = os.clock()
local b = assert(bill.open(gz, { gzip = true, sha1 = sha }))
local t1 = os.clock()
local n, sum, peak = 0, 0, 0
for rec in bills.records(b, "trade") do
  n = n + 1; sum = sum + rec.total
  if n % 1000 == 0 then local c = collectgarbage("count"); if c > peak then peak = c end end
end
local s = bills.summary(b, "trade")
local t2 = os.clock()
assert(n == N and sum == total and s.total == total and s.count == N)
print(string.format("lines %d, bill %.1f MB (gzip %.1f MB): gunzip+sha1 %.2f s, records %.2f s (%.0f lines/s); Lua heap %.1f MB before, at most %.1f MB while reading",
  N, textlen / 1e6, #gz / 1e6, t1 - t0, t2 - t1, N / (t2 - t1), base / 1024, peak / 1024))

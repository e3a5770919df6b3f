-- Rules: tell the ERP (warehouse) about every paid order and every refund, exactly once per
-- event, whichever way the payment was learned (notification, status query, reconciliation,
-- a payment after close). config.erp = { url = "https://erp.example/api", timeout_ms = 3000 }.
-- The hooks run from the durable queue, outside any transaction, so they may wait for the
-- ERP; an error (unreachable, not 2xx) runs them again later (1 s, 2 s, 4 s ... for weeks).
-- ev.key ("paid:<order_no>", "refunded:<out_refund_no>") is sent as Idempotency-Key: a retry
-- after the ERP took the call but before we heard back is recognised there. Copy over
-- scripts/rules.lua.
local erp = config.erp or {}

local function send(path, key, body)
  local res, err = http.request{ url = erp.url .. path, method = "POST", body = json.encode(body),
                                 headers = { ["Content-Type"] = "application/json", ["Idempotency-Key"] = key },
                                 timeout_ms = erp.timeout_ms or 3000 }
  if not res then error("ERP unreachable: " .. tostring(err), 0) end
  if res.status < 200 or res.status > 299 then error("ERP answered " .. res.status, 0) end
end

local hook = { name = "erp" }

function hook.on_paid(ev)
  local lines = json.array()
  for _, it in ipairs(ev.order.items) do lines[#lines + 1] = { sku = it.product_id, qty = it.qty, amount = it.amount } end
  send("/shipments", ev.key, { order_no = ev.order.order_no, buyer = ev.order.openid, amount = ev.order.amount,
                               lines = lines })
end

function hook.on_refunded(ev)
  send("/returns", ev.key, { order_no = ev.order.order_no, refund = ev.refund.out_refund_no,
                             amount = ev.refund.amount, lines = ev.refund.items })
end

return { hook }

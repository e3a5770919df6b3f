-- idempotency: the Idempotency-Key semantics of the API (IETF draft, as Stripe does it).
--   same key, same body      → the first answer again (header Idempotent-Replayed: true)
--   same key, another body   → 422 idempotency_mismatch
-- Keys are scoped to the caller and kept 24 hours; a 5xx or a crash is not remembered, so
-- a retry is safe.
--
-- run() claims the key, runs fn and records its answer in ONE transaction, so no crash can
-- leave an order without its key or a key without its order. fn must not wait (no
-- http.request inside): then a request with the same key can never find the first one still
-- running (the draft's 409 case) — it runs after the first has committed, and is answered
-- from the record.
local app = require "paygate"

local M = {}

M.RETENTION_MS = 24 * 3600 * 1000

local function replay(row, fingerprint)
  if row.fingerprint ~= fingerprint then
    app.fail(422, "idempotency_mismatch", "this Idempotency-Key was used with a different request")
  end
  return row.status, row.body, { ["Idempotent-Replayed"] = "true" }
end

--- Run fn() (which returns status, body and must not wait) at most once per (owner, key).
--- Without an Idempotency-Key header it just runs fn().
function M.run(req, owner, fn)
  local key = req:header("Idempotency-Key")
  if not key then return fn() end
  if #key < 1 or #key > 255 then app.fail(400, "invalid_request", "Idempotency-Key must be 1 to 255 characters") end
  local fingerprint = secure.sha256_hex(req.method .. " " .. req.path .. "\n" .. req:body())
  local now = clock.now()
  local status, body, headers = db.tx(function()
    db.exec("DELETE FROM idempotency WHERE owner = ? AND key = ? AND created_at < ?", owner, key, now - M.RETENTION_MS)
    local row = db.one("SELECT * FROM idempotency WHERE owner = ? AND key = ?", owner, key)
    if row then return replay(row, fingerprint) end
    local ok, st, b = pcall(fn)          -- fn's own db.tx is a savepoint inside this transaction
    if not ok then
      local e = st                       -- app.fail's answer (4xx) is remembered; anything else is not
      if type(e) ~= "table" or math.type(e.status) ~= "integer" or e.status >= 500 then error(e, 0) end
      st, b = e.status, { error = e.error, message = e.message }
    end
    if st >= 500 then return st, b end
    local text = type(b) == "table" and json.encode(b) or b
    db.exec([[INSERT INTO idempotency(owner, key, fingerprint, state, status, body, created_at)
              VALUES (?, ?, ?, 'done', ?, ?, ?)]], owner, key, fingerprint, st, text, now)
    return st, text
  end)
  return status, body, headers
end

return M

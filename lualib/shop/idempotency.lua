-- idempotency: the Idempotency-Key semantics of the API (IETF draft, as Stripe does it).
--   same key, same body      → the first answer again
--   same key, another body   → 422 idempotency_mismatch
--   same key, first running  → 409 idempotency_in_progress
-- Keys are scoped to the caller, kept 24 hours, and a 5xx is not remembered (retry is safe).
local app = require "paygate"

local M = {}

M.RETENTION_MS = 24 * 3600 * 1000

--- Run fn() (which returns status, body) at most once per (owner, key). Without a key, just fn().
function M.run(req, owner, fn)
  local key = req:header("Idempotency-Key")
  if not key then return fn() end
  if #key < 1 or #key > 255 then app.fail(400, "invalid_request", "Idempotency-Key must be 1 to 255 characters") end
  local fingerprint = secure.sha256_hex(req.method .. " " .. req.path .. "\n" .. req:body())
  local now = clock.now()
  local claimed = db.tx(function()
    db.exec("DELETE FROM idempotency WHERE owner = ? AND key = ? AND created_at < ?", owner, key, now - M.RETENTION_MS)
    return db.exec([[INSERT INTO idempotency(owner, key, fingerprint, state, created_at) VALUES (?, ?, ?, 'running', ?)
                     ON CONFLICT(owner, key) DO NOTHING]], owner, key, fingerprint, now) == 1
  end)
  if not claimed then
    local row = db.one("SELECT * FROM idempotency WHERE owner = ? AND key = ?", owner, key)
    if row.fingerprint ~= fingerprint then
      app.fail(422, "idempotency_mismatch", "this Idempotency-Key was used with a different request")
    end
    if row.state == "running" then
      app.fail(409, "idempotency_in_progress", "the first request with this Idempotency-Key is still running")
    end
    return row.status, row.body, { ["Idempotent-Replayed"] = "true" }
  end
  local function remember(st, text)
    db.exec("UPDATE idempotency SET state = 'done', status = ?, body = ? WHERE owner = ? AND key = ?",
            st, text, owner, key)
  end
  local ok, status, body = pcall(fn)
  if not ok then
    local e = status                     -- app.fail's answer (4xx) is remembered; a crash is not
    if type(e) == "table" and math.type(e.status) == "integer" and e.status < 500 then
      remember(e.status, json.encode({ error = e.error, message = e.message }))
    else
      db.exec("DELETE FROM idempotency WHERE owner = ? AND key = ?", owner, key)
    end
    error(e, 0)
  end
  if status >= 500 then
    db.exec("DELETE FROM idempotency WHERE owner = ? AND key = ?", owner, key)
    return status, body
  end
  local text = type(body) == "table" and json.encode(body) or body
  remember(status, text)
  return status, text
end

return M

-- sandbox.conf.lua — the local WeChat Pay sandbox (TEST ONLY), run by build/paygate-sandbox. Paths are relative to this file.
-- Keys: run examples/sandbox/keys.sh first (examples/run-demo.sh does); they land in var/sandbox/.
listen   = "127.0.0.1:8090"
scripts  = "scripts"
lualib   = "../../lualib"
database = "../../var/sandbox/sandbox.db"
watch    = false
log_level = "info"
-- Every merchant gateway and test client reaches the sandbox from loopback: no per-address cap.
limits   = { max_connections_per_client = 0 }

app = {                            -- visible to the scripts as `config`
  mchid = "1900007291",
  appid = "wxd678efh567hg6787",
  app_appid = "wx1a2b3c4d5e6f7a8b",   -- APP pay: the mobile app\'s appid
  mode = "certificate",            -- "certificate" | "public_key" | "mixed" (public key when asked)
  clock_speed = 1,                 -- divides every notification retry delay (1000: 15 s → 15 ms)
  notify_timeout_ms = 5000,        -- a notification not answered 200/204 within this failed
  refund_settle_s = 5,             -- PROCESSING → SUCCESS after this (divided by clock_speed)
  -- refund_notify_url = "http://127.0.0.1:8080/wechat/notify/refund",  -- the "console setting":
  --                                  used when a refund request names no notify_url
  latency_ms = 0,                  -- added to every /v3 call
  notify_public_key_rate = 0.5,    -- mixed mode: share of notifications signed with the public key
  keys = {                         -- relative to this file
    platform_key_file = "../../var/sandbox/platform_key.pem",
    platform_cert_file = "../../var/sandbox/platform_cert.pem",
    merchant_cert_file = "../../var/sandbox/merchant_cert.pem",
    apiv3_key_file = "../../var/sandbox/apiv3_key",
    public_key_file = "../../var/sandbox/pubkey_key.pem",
    public_key_id_file = "../../var/sandbox/pubkey_id",
    app_secret_file = "../../var/sandbox/app_secret",
  },
  faults = {                       -- rate-based defaults, e.g. probe = { rate = 0.01 }
  },
}

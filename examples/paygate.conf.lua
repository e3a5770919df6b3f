-- paygate configuration for `make run`: the demo shop against the local WeChat Pay sandbox.
-- Lua table syntax; relative paths are relative to this file. Keys are the sandbox's TEST keys
-- (examples/sandbox/keys.sh puts them in var/sandbox/); for the real WeChat Pay see docs/configuration.md.
listen   = "127.0.0.1:8080"
scripts  = "../scripts"
lualib   = "../lualib"
database = "../var/paygate.db"

limits = { max_header_bytes = 16384, max_body_bytes = 65536, timeout_s = 10 }
script = { memory_mb = 64, max_instructions = 50000000 }
fetch  = { timeout_ms = 10000, connect_timeout_ms = 3000 }
watch  = true                      -- reload when a .lua file under scripts/ or lualib/ changes
log_level = "info"
-- The demo trusts loopback callers with the admin endpoints (refunds, products, reload) and the
-- console at http://127.0.0.1:8080/admin/; a real shop names tokens instead (docs/going-live.md):
-- admin = { tokens = { alice = "/etc/paygate/alice.token" } }
admin = { trust_loopback = true }

wechatpay = {
  mchid = "1900007291",
  appid = "wxd678efh567hg6787",
  app_appid = "wx1a2b3c4d5e6f7a8b",   -- APP pay: the mobile app\'s appid
  merchant_cert_file = "../var/sandbox/merchant_cert.pem",   -- its serial is sent as serial_no
  private_key_file = "../var/sandbox/merchant_key.pem",
  apiv3_key_file = "../var/sandbox/apiv3_key",
  app_secret_file = "../var/sandbox/app_secret",
  platform_cert_files = { "../var/sandbox/platform_cert.pem" },
  download_certificates = false,
  base_url = "http://127.0.0.1:8090",                         -- the sandbox, not api.mch.weixin.qq.com
  login_base_url = "http://127.0.0.1:8090",
  sandbox = true,                  -- a local sandbox: plain http:// to 127.0.0.1 allowed (never for WeChat Pay)
  notify_url = "http://127.0.0.1:8080/wechat/notify/pay",
  refund_notify_url = "http://127.0.0.1:8080/wechat/notify/refund",
}

app = {                            -- visible to scripts as `config`
  demo_products = true,
  order_ttl_s = 900,
}

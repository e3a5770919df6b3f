-- The epoll game server's shop against the local WeChat Pay sandbox (examples/run-demo.sh or
-- `build/paygate-sandbox --config examples/sandbox/sandbox.conf.lua`, keys from examples/sandbox/keys.sh).
-- Relative paths are relative to this file. `lualib` comes from the installed paygate
-- (pkg-config --variable=lualibdir paygate), compiled into the game.
scripts  = "../game-server/scripts"   -- the same shop as the libevent game server
database = "../../var/epoll-game-shop.db"
watch    = true                    -- edit scripts/ while the game runs
log_level = "info"

wechatpay = {
  mchid = "1900007291",
  appid = "wxd678efh567hg6787",
  app_appid = "wx1a2b3c4d5e6f7a8b",   -- APP pay: the mobile app\'s appid
  merchant_cert_file = "../../var/sandbox/merchant_cert.pem",
  private_key_file = "../../var/sandbox/merchant_key.pem",
  apiv3_key_file = "../../var/sandbox/apiv3_key",
  app_secret_file = "../../var/sandbox/app_secret",
  platform_cert_files = { "../../var/sandbox/platform_cert.pem" },
  download_certificates = false,
  base_url = "http://127.0.0.1:8090",          -- the sandbox
  login_base_url = "http://127.0.0.1:8090",
  sandbox = true,                               -- a local sandbox: plain http:// to 127.0.0.1 allowed
  notify_url = "http://127.0.0.1:8081/wechat/notify/pay",   -- paygate's own HTTP port (--http)
}

app = { order_ttl_s = 900 }

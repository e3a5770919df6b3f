-- paygate configuration (Lua table syntax). Paths are relative to this file.
listen   = "127.0.0.1:8080"
scripts  = "../scripts"
lualib   = "../lualib"
database = "../var/paygate.db"

limits = { max_header_bytes = 16384, max_body_bytes = 65536, timeout_s = 10 }
script = { memory_mb = 64, max_instructions = 50000000 }
fetch  = { timeout_ms = 10000, connect_timeout_ms = 3000 }
watch  = true                      -- reload when a .lua file under scripts/ or lualib/ changes
log_level = "info"
-- admin = { token_file = "/etc/paygate/admin.token" }  -- required if admin endpoints face a network

app = {                            -- visible to scripts as `config`
  shop_name = "paygate demo shop",
}

/* config.c — the gateway's configuration file (a Lua table file, secrets by file path). */
#include "config.h"

#include <assert.h>
#include <errno.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <lua.h>
#include <lauxlib.h>
#include <lualib.h>
#include <lua-cjson.h>

#include "crypto.h"
#include "jail.h"

static char *dupstr(const char *s)
{
	return s ? strdup(s) : NULL;
}

int config_defaults(struct config *cfg)
{
	memset(cfg, 0, sizeof *cfg);
	cfg->listen_host = dupstr("127.0.0.1");
	cfg->listen_port = 8080;
	cfg->scripts_dir = dupstr("scripts");
	cfg->lualib_dir = dupstr("lualib");
	cfg->db_path = dupstr("paygate.db");
	cfg->max_header_bytes = 16 * 1024;
	cfg->max_body_bytes = 64 * 1024;
	cfg->timeout_s = 10;
	cfg->header_timeout_ms = 10000;
	cfg->body_timeout_ms = 30000;
	cfg->max_connections = 4096;
	cfg->max_connections_per_client = 256;
	cfg->script_memory_bytes = 64u << 20;
	cfg->script_max_instructions = 50 * 1000 * 1000;
	cfg->max_draining = 8;
	cfg->watch = 1;
	cfg->watch_debounce_ms = 200;
	cfg->fetch_timeout_ms = 10000;
	cfg->fetch_connect_timeout_ms = 3000;
	cfg->fetch_max_inflight = 4096;
	cfg->fetch_max_response_bytes = 1u << 20;
	cfg->fetch_tls_min = 12;
	cfg->fetch_max_host_connections = 16;
	cfg->fetch_keepalive_s = 15; /* WeChat's servers drop connections idle for 20 s */
	cfg->jobs_max_running = 64;
	cfg->jobs_lease_ms = 10 * 60 * 1000;
	cfg->db_busy_timeout_ms = 5000;
	cfg->db_checkpoint_pages = 1000;
	cfg->pg_pool_size = 4;
	cfg->pg_statement_timeout_ms = 30000;
	cfg->workers = 1;
	cfg->watchdog_ms = 2000;
	cfg->log_level = LOG_INFO;
	cfg->app_json = dupstr("{}");
	if (!cfg->listen_host || !cfg->scripts_dir || !cfg->lualib_dir || !cfg->db_path || !cfg->app_json)
		return -1;
	return 0;
}

void config_free(struct config *cfg)
{
	free(cfg->path);
	free(cfg->listen_host);
	free(cfg->scripts_dir);
	free(cfg->lualib_dir);
	free(cfg->db_path);
	for (int i = 0; i < cfg->n_admin_tokens; i++) {
		memset(cfg->admin_tokens[i].token, 0, strlen(cfg->admin_tokens[i].token));
		free(cfg->admin_tokens[i].token);
		free(cfg->admin_tokens[i].name);
	}
	free(cfg->console_dir);
	free(cfg->fetch_ca_file);
	free(cfg->session_secret_file);
	free(cfg->pg_password_file);
	free(cfg->app_json);
	struct wxpay_config *w = &cfg->wxpay;
	char **strs[] = { &w->mchid,
		          &w->appid,
		          &w->app_appid,
		          &w->merchant_serial,
		          &w->merchant_cert_file,
		          &w->private_key_file,
		          &w->apiv3_key_file,
		          &w->app_secret_file,
		          &w->public_key_file,
		          &w->public_key_id,
		          &w->base_url,
		          &w->login_base_url,
		          &w->notify_url,
		          &w->refund_notify_url };
	for (size_t i = 0; i < sizeof strs / sizeof strs[0]; i++)
		free(*strs[i]);
	for (int i = 0; i < w->n_platform_certs; i++)
		free(w->platform_cert_files[i]);
	memset(cfg, 0, sizeof *cfg);
}

char *config_read_file(const char *path, size_t max, size_t *len, char *err, size_t errlen)
{
	FILE *f = fopen(path, "rb");
	char *buf = NULL;
	size_t n = 0, cap = 0;

	if (!f) {
		snprintf(err, errlen, "cannot open %s: %s", path, strerror(errno));
		return NULL;
	}
	for (;;) {
		if (n + 4096 + 1 > cap) {
			size_t ncap = cap ? cap * 2 : 8192;
			char *nb = realloc(buf, ncap);
			if (!nb)
				goto fail;
			buf = nb;
			cap = ncap;
		}
		size_t r = fread(buf + n, 1, cap - n - 1, f);
		n += r;
		if (n > max) {
			snprintf(err, errlen, "%s is larger than %zu bytes", path, max);
			goto fail_quiet;
		}
		if (r == 0)
			break;
	}
	if (ferror(f))
		goto fail;
	fclose(f);
	buf[n] = '\0';
	if (len)
		*len = n;
	return buf;
fail:
	snprintf(err, errlen, "cannot read %s: %s", path, strerror(errno));
fail_quiet:
	free(buf);
	fclose(f);
	return NULL;
}

/* A path from the config file, made relative to the file's directory. */
static char *resolve_path(const char *base_dir, const char *p)
{
	if (p[0] == '/' || !base_dir || !*base_dir)
		return strdup(p);
	size_t n = strlen(base_dir) + 1 + strlen(p) + 1;
	char *out = malloc(n);
	if (out)
		snprintf(out, n, "%s/%s", base_dir, p);
	return out;
}

int config_set_listen(struct config *cfg, const char *addr, char *err, size_t errlen)
{
	const char *colon = strrchr(addr, ':');
	char *end;
	long port;

	if (!colon || colon == addr) {
		snprintf(err, errlen, "listen address '%s' must look like 127.0.0.1:8080", addr);
		return -1;
	}
	errno = 0;
	port = strtol(colon + 1, &end, 10);
	if (errno || *end || end == colon + 1 || port < 0 || port > 65535) {
		snprintf(err, errlen, "listen address '%s' has a bad port", addr);
		return -1;
	}
	char *host = strndup(addr, (size_t)(colon - addr));
	if (!host)
		return -1;
	free(cfg->listen_host);
	cfg->listen_host = host;
	cfg->listen_port = (int)port;
	return 0;
}

/* ---- reading typed fields from the evaluated file (table at stack top) ---- */

#define CONFIG_MAX_KEYS 128

struct reader {
	lua_State *L;
	const char *dir;
	const char *file; /* the config file, resolved, for messages */
	char *err;
	size_t errlen;
	int failed;
	/* The table of known keys: every key a reader below asks for ("listen", "fetch.timeout_ms"),
	   so a key added to the readers is known without being listed twice. */
	char known[CONFIG_MAX_KEYS][48];
	int nknown;
};

static void know(struct reader *r, const char *a, const char *b)
{
	char key[48];
	snprintf(key, sizeof key, "%s%s%s", a, b ? "." : "", b ? b : "");
	for (int i = 0; i < r->nknown; i++)
		if (strcmp(r->known[i], key) == 0)
			return;
	assert(r->nknown < CONFIG_MAX_KEYS);
	snprintf(r->known[r->nknown++], sizeof r->known[0], "%s", key);
}

/* Push t[a][b] (b may be NULL); returns its Lua type. */
static int push_field(struct reader *r, const char *a, const char *b)
{
	know(r, a, NULL);
	if (b)
		know(r, a, b);
	lua_getfield(r->L, -1, a);
	if (!b)
		return lua_type(r->L, -1);
	if (!lua_istable(r->L, -1)) {
		lua_pop(r->L, 1);
		lua_pushnil(r->L);
		return LUA_TNIL;
	}
	lua_getfield(r->L, -1, b);
	lua_remove(r->L, -2);
	return lua_type(r->L, -1);
}

static void bad(struct reader *r, const char *a, const char *b, const char *want)
{
	if (!r->failed)
		snprintf(r->err, r->errlen, "config: %s: %s%s%s must be %s", r->file, a, b ? "." : "", b ? b : "",
		         want);
	r->failed = 1;
}

static void read_int(struct reader *r, const char *a, const char *b, int64_t min, int64_t max, int64_t *out)
{
	int t = push_field(r, a, b), isint = 0;
	if (t != LUA_TNIL) {
		lua_Integer v = lua_tointegerx(r->L, -1, &isint);
		if (t != LUA_TNUMBER || !isint || v < min || v > max) {
			char want[96];
			snprintf(want, sizeof want, "an integer from %lld to %lld", (long long)min, (long long)max);
			bad(r, a, b, want);
		} else {
			*out = v;
		}
	}
	lua_pop(r->L, 1);
}

int config_database_is_postgresql_url(const char *database)
{
	return database && (strncmp(database, "postgresql://", 13) == 0 || strncmp(database, "postgres://", 11) == 0);
}

static void read_str(struct reader *r, const char *a, const char *b, int is_path, char **out)
{
	int t = push_field(r, a, b);
	if (t == LUA_TSTRING) {
		char *v = is_path ? resolve_path(r->dir, lua_tostring(r->L, -1)) : strdup(lua_tostring(r->L, -1));
		if (v) {
			free(*out);
			*out = v;
		}
	} else if (t != LUA_TNIL) {
		bad(r, a, b, "a string");
	}
	lua_pop(r->L, 1);
}

static void read_bool(struct reader *r, const char *a, const char *b, int *out)
{
	int t = push_field(r, a, b);
	if (t == LUA_TBOOLEAN)
		*out = lua_toboolean(r->L, -1);
	else if (t != LUA_TNIL)
		bad(r, a, b, "true or false");
	lua_pop(r->L, 1);
}

/* Secrets live in files so that the config itself can be shared; warn-free read, trimmed. */
static void read_secret_path(struct reader *r, const char *a, const char *b, char *path, char **out)
{
	char ferr[4200];
	char *v = config_read_file(path, 4096, NULL, ferr, sizeof ferr);
	if (!v) {
		if (!r->failed)
			snprintf(r->err, r->errlen, "config: %s: %s.%s: %s", r->file, a, b, ferr);
		r->failed = 1;
	} else {
		size_t n = strlen(v);
		while (n && (v[n - 1] == '\n' || v[n - 1] == '\r' || v[n - 1] == ' '))
			v[--n] = '\0';
		if (n < 16) {
			bad(r, a, b, "a file holding a token of at least 16 characters");
			free(v);
		} else {
			free(*out);
			*out = v;
		}
	}
	free(path);
}

static void read_secret_file(struct reader *r, const char *a, const char *b, char **out)
{
	char *path = NULL;
	read_str(r, a, b, 1, &path);
	if (path)
		read_secret_path(r, a, b, path, out);
}

static void add_admin_token(struct reader *r, struct config *cfg, const char *name, char *token)
{
	if (!token)
		return;
	if (cfg->n_admin_tokens >= CONFIG_MAX_ADMIN_TOKENS) {
		bad(r, "admin", "tokens", "at most 16 named tokens");
	} else {
		for (int i = 0; i < cfg->n_admin_tokens; i++)
			if (strcmp(cfg->admin_tokens[i].token, token) == 0)
				bad(r, "admin", "tokens", "a table of distinct tokens (two names share one token)");
		cfg->admin_tokens[cfg->n_admin_tokens].name = strdup(name);
		cfg->admin_tokens[cfg->n_admin_tokens++].token = token;
		return;
	}
	memset(token, 0, strlen(token));
	free(token);
}

/* admin = { token_file = path, tokens = { name = path, ... }, trust_loopback = false, console_dir = path }:
   each token in a file of its own; its name is who the audit trail says asked (token_file's is "admin"). */
static void read_admin(struct reader *r, struct config *cfg)
{
	char *tok = NULL;
	read_secret_file(r, "admin", "token_file", &tok);
	add_admin_token(r, cfg, "admin", tok);
	if (push_field(r, "admin", "tokens") == LUA_TTABLE) {
		lua_pushnil(r->L);
		while (lua_next(r->L, -2)) {
			const char *name = lua_type(r->L, -2) == LUA_TSTRING ? lua_tostring(r->L, -2) : NULL;
			int ok = name && *name && strlen(name) <= 32;
			for (const char *p = name; ok && *p; p++)
				ok = (*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') ||
				     *p == '_' || *p == '-' || *p == '.';
			if (!ok || lua_type(r->L, -1) != LUA_TSTRING) {
				bad(r, "admin", "tokens",
				    "a table of name = \"file holding the token\" (names of letters, digits, _ - .)");
			} else {
				char *path = resolve_path(r->dir, lua_tostring(r->L, -1));
				tok = NULL;
				if (path)
					read_secret_path(r, "admin.tokens", name, path, &tok);
				add_admin_token(r, cfg, name, tok);
			}
			lua_pop(r->L, 1);
		}
	} else if (lua_type(r->L, -1) != LUA_TNIL) {
		bad(r, "admin", "tokens", "a table of name = \"file holding the token\"");
	}
	lua_pop(r->L, 1);
	read_bool(r, "admin", "trust_loopback", &cfg->admin_trust_loopback);
	read_str(r, "admin", "console_dir", 1, &cfg->console_dir);
}

/* The outbound TLS policy and connection keys of `fetch` (checked by check_tls_policy). */
static void read_fetch_tls(struct reader *r, struct config *cfg)
{
	int64_t v;
	char *tls_min = NULL;

	read_str(r, "fetch", "tls_min_version", 0, &tls_min);
	if (tls_min && strcmp(tls_min, "1.2") == 0)
		cfg->fetch_tls_min = 12;
	else if (tls_min && strcmp(tls_min, "1.3") == 0)
		cfg->fetch_tls_min = 13;
	else if (tls_min)
		bad(r, "fetch", "tls_min_version", "\"1.2\" or \"1.3\" (older versions are never spoken)");
	free(tls_min);
	v = cfg->fetch_max_host_connections;
	read_int(r, "fetch", "max_host_connections", 1, 1000, &v);
	cfg->fetch_max_host_connections = (int)v;
	v = cfg->fetch_keepalive_s;
	read_int(r, "fetch", "keepalive_s", 1, 3600, &v);
	cfg->fetch_keepalive_s = (int)v;
}

/* The `postgresql` table: read whatever the database is (a SQLite file ignores it). */
static void read_postgresql(struct reader *r, struct config *cfg)
{
	int64_t v = cfg->pg_pool_size;
	char *tx = NULL;

	read_int(r, "postgresql", "pool_size", 1, 1000, &v);
	cfg->pg_pool_size = (int)v;
	read_str(r, "postgresql", "password_file", 1, &cfg->pg_password_file);
	v = cfg->pg_statement_timeout_ms;
	read_int(r, "postgresql", "statement_timeout_ms", 0, 3600000, &v);
	cfg->pg_statement_timeout_ms = (int)v;
	read_str(r, "postgresql", "transactions", 0, &tx);
	if (tx && strcmp(tx, "serial") == 0)
		cfg->pg_concurrent_tx = 0;
	else if (tx && strcmp(tx, "concurrent") == 0)
		cfg->pg_concurrent_tx = 1;
	else if (tx)
		bad(r, "postgresql", "transactions", "\"serial\" or \"concurrent\"");
	free(tx);
}

static void read_fields(struct reader *r, struct config *cfg)
{
	int64_t v;
	char *listen = NULL, *level = NULL;

	read_str(r, "listen", NULL, 0, &listen);
	if (listen && !r->failed && config_set_listen(cfg, listen, r->err, r->errlen) < 0)
		r->failed = 1;
	free(listen);
	read_str(r, "scripts", NULL, 1, &cfg->scripts_dir);
	read_str(r, "lualib", NULL, 1, &cfg->lualib_dir);
	lua_getfield(r->L, -1, "database"); /* a file's path is relative to the config; a URL is not a path */
	int url = lua_type(r->L, -1) == LUA_TSTRING && config_database_is_postgresql_url(lua_tostring(r->L, -1));
	lua_pop(r->L, 1);
	read_str(r, "database", NULL, !url, &cfg->db_path);
	read_postgresql(r, cfg);

	v = (int64_t)cfg->max_header_bytes;
	read_int(r, "limits", "max_header_bytes", 1024, 1 << 20, &v);
	cfg->max_header_bytes = (size_t)v;
	v = (int64_t)cfg->max_body_bytes;
	read_int(r, "limits", "max_body_bytes", 1024, 16 << 20, &v);
	cfg->max_body_bytes = (size_t)v;
	v = cfg->timeout_s;
	read_int(r, "limits", "timeout_s", 1, 3600, &v);
	cfg->timeout_s = (int)v;
	v = cfg->header_timeout_ms;
	read_int(r, "limits", "header_timeout_ms", 100, 600000, &v);
	cfg->header_timeout_ms = (int)v;
	v = cfg->body_timeout_ms;
	read_int(r, "limits", "body_timeout_ms", 100, 3600000, &v);
	cfg->body_timeout_ms = (int)v;
	v = cfg->max_connections;
	read_int(r, "limits", "max_connections", 1, 1000000, &v);
	cfg->max_connections = (int)v;
	v = cfg->max_connections_per_client;
	read_int(r, "limits", "max_connections_per_client", 0, 1000000, &v);
	cfg->max_connections_per_client = (int)v;
	v = cfg->open_files;
	read_int(r, "limits", "open_files", 0, 16777216, &v);
	cfg->open_files = (int)v;

	v = (int64_t)(cfg->script_memory_bytes >> 20);
	read_int(r, "script", "memory_mb", 4, 4096, &v);
	cfg->script_memory_bytes = (size_t)v << 20;
	read_int(r, "script", "max_instructions", 100000, INT64_C(1) << 40, &cfg->script_max_instructions);
	v = cfg->max_draining;
	read_int(r, "script", "max_draining", 1, 1000, &v);
	cfg->max_draining = (int)v;

	read_admin(r, cfg);
	read_bool(r, "watch", NULL, &cfg->watch);
	read_str(r, "session_secret_file", NULL, 1, &cfg->session_secret_file);
	v = cfg->watch_debounce_ms;
	read_int(r, "watch_debounce_ms", NULL, 10, 10000, &v);
	cfg->watch_debounce_ms = (int)v;
	read_bool(r, "watch_marker", NULL, &cfg->watch_marker);

	v = cfg->fetch_timeout_ms;
	read_int(r, "fetch", "timeout_ms", 100, 600000, &v);
	cfg->fetch_timeout_ms = (int)v;
	v = cfg->fetch_connect_timeout_ms;
	read_int(r, "fetch", "connect_timeout_ms", 100, 600000, &v);
	cfg->fetch_connect_timeout_ms = (int)v;
	v = cfg->fetch_max_inflight;
	read_int(r, "fetch", "max_inflight", 1, 100000, &v);
	cfg->fetch_max_inflight = (int)v;
	v = (int64_t)cfg->fetch_max_response_bytes;
	read_int(r, "fetch", "max_response_bytes", 1024, 64 << 20, &v);
	cfg->fetch_max_response_bytes = (size_t)v;
	read_str(r, "fetch", "ca_file", 1, &cfg->fetch_ca_file);
	read_fetch_tls(r, cfg);

	v = cfg->jobs_max_running;
	read_int(r, "jobs", "max_running", 1, 10000, &v);
	cfg->jobs_max_running = (int)v;
	read_int(r, "jobs", "lease_ms", 1000, INT64_C(7) * 24 * 3600 * 1000, &cfg->jobs_lease_ms);
	v = cfg->db_busy_timeout_ms;
	read_int(r, "db_busy_timeout_ms", NULL, 0, 60000, &v);
	cfg->db_busy_timeout_ms = (int)v;
	v = cfg->db_checkpoint_pages;
	read_int(r, "db_checkpoint_pages", NULL, 10, 1000000, &v);
	cfg->db_checkpoint_pages = (int)v;
	v = cfg->workers;
	read_int(r, "workers", NULL, 1, 64, &v);
	cfg->workers = (int)v;
	v = cfg->watchdog_ms;
	read_int(r, "watchdog_ms", NULL, 0, 600000, &v);
	if (v > 0 && v < 100)
		bad(r, "watchdog_ms", NULL, "0 (off) or at least 100");
	cfg->watchdog_ms = (int)v;
	/* Benchmarks only: how fast paygate would be if it did not keep its word on a power cut. */
	read_bool(r, "unsafe_no_sync", NULL, &cfg->unsafe_no_sync);
	if (cfg->unsafe_no_sync && !getenv("PAYGATE_BENCH"))
		bad(r, "unsafe_no_sync", NULL,
		    "false outside a benchmark: it answers before writes are on disk, so a power cut loses "
		    "acknowledged orders and payments (make bench sets PAYGATE_BENCH=1 to measure it)");

	read_str(r, "log_level", NULL, 0, &level);
	if (level && !r->failed && log_parse_level(level, &cfg->log_level) < 0)
		bad(r, "log_level", NULL, "one of debug, info, warn, error");
	free(level);
}

/* wechatpay = { ... }: merchant identity, key files and endpoints. */
static void read_wxpay(struct reader *r, struct config *cfg)
{
	struct wxpay_config *w = &cfg->wxpay;
	int64_t v = 43200;

	if (push_field(r, "wechatpay", NULL) != LUA_TTABLE) {
		lua_pop(r->L, 1);
		return;
	}
	lua_pop(r->L, 1);
	w->enabled = 1;
	read_str(r, "wechatpay", "mchid", 0, &w->mchid);
	read_str(r, "wechatpay", "appid", 0, &w->appid);
	read_str(r, "wechatpay", "app_appid", 0, &w->app_appid);
	read_str(r, "wechatpay", "merchant_serial", 0, &w->merchant_serial);
	read_str(r, "wechatpay", "merchant_cert_file", 1, &w->merchant_cert_file);
	read_str(r, "wechatpay", "private_key_file", 1, &w->private_key_file);
	read_str(r, "wechatpay", "apiv3_key_file", 1, &w->apiv3_key_file);
	read_str(r, "wechatpay", "app_secret_file", 1, &w->app_secret_file);
	read_str(r, "wechatpay", "public_key_file", 1, &w->public_key_file);
	read_str(r, "wechatpay", "public_key_id", 0, &w->public_key_id);
	w->base_url = strdup("https://api.mch.weixin.qq.com");
	w->login_base_url = strdup("https://api.weixin.qq.com");
	read_str(r, "wechatpay", "base_url", 0, &w->base_url);
	read_str(r, "wechatpay", "login_base_url", 0, &w->login_base_url);
	read_bool(r, "wechatpay", "sandbox", &w->sandbox);
	read_str(r, "wechatpay", "notify_url", 0, &w->notify_url);
	read_str(r, "wechatpay", "refund_notify_url", 0, &w->refund_notify_url);
	w->download_certificates = 1;
	read_bool(r, "wechatpay", "download_certificates", &w->download_certificates);
	read_int(r, "wechatpay", "cert_refresh_s", 60, 86400, &v);
	w->cert_refresh_s = (int)v;

	if (push_field(r, "wechatpay", "platform_cert_files") == LUA_TTABLE) {
		lua_Integer n = (lua_Integer)lua_rawlen(r->L, -1);
		for (lua_Integer i = 1; i <= n && w->n_platform_certs < 8; i++) {
			lua_rawgeti(r->L, -1, i);
			if (lua_type(r->L, -1) == LUA_TSTRING)
				w->platform_cert_files[w->n_platform_certs++] =
				    resolve_path(r->dir, lua_tostring(r->L, -1));
			else
				bad(r, "wechatpay", "platform_cert_files", "a list of file names");
			lua_pop(r->L, 1);
		}
	}
	lua_pop(r->L, 1);
	const char *missing = !w->mchid   ? "mchid"
	                      : !w->appid ? "appid"
	                      : !w->merchant_serial && !w->merchant_cert_file
	                          ? "merchant_serial (or merchant_cert_file)"
	                      : !w->private_key_file ? "private_key_file"
	                      : !w->apiv3_key_file   ? "apiv3_key_file"
	                                             : NULL;
	if (missing && !r->failed) {
		snprintf(r->err, r->errlen, "config: wechatpay.%s is required", missing);
		r->failed = 1;
	}
	if (!r->failed && (w->public_key_file != NULL) != (w->public_key_id != NULL)) {
		snprintf(r->err, r->errlen, "config: wechatpay.public_key_file and public_key_id go together");
		r->failed = 1;
	}
}

/* Is the host of url (after "http://") a loopback address? */
static int loopback_host(const char *url)
{
	const char *h = url + strlen("http://");
	size_t n = h[0] == '[' ? strcspn(h, "]") + 1 : strcspn(h, ":/?#");
	if (h[n] != '\0' && !strchr(":/?#", h[n]))
		return 0; /* "[::1]x" */
	return (n > 4 && strncmp(h, "127.", 4) == 0 && strspn(h, "0123456789.") >= n) ||
	       (n == 9 && strncmp(h, "localhost", 9) == 0) || (n == 5 && strncmp(h, "[::1]", 5) == 0);
}

/*
** The outbound TLS policy: WeChat Pay is reached over https:// only, except a local sandbox the
** config marks (wechatpay.sandbox = true, loopback hosts only); fetch.ca_file must be a bundle
** holding at least one CA, since it replaces the system's trust store.
*/
static void check_tls_policy(struct reader *r, struct config *cfg)
{
	struct wxpay_config *w = &cfg->wxpay;
	const char *names[2] = { "base_url", "login_base_url" };
	const char *urls[2] = { w->base_url, w->login_base_url };
	char ferr[512];

	for (int i = 0; i < 2 && w->enabled && !r->failed; i++) {
		const char *u = urls[i];
		if (!u || strncmp(u, "https://", 8) == 0)
			continue;
		if (strncmp(u, "http://", 7) != 0)
			snprintf(r->err, r->errlen, "config: %s: wechatpay.%s must start with https:// (it is '%s')",
			         r->file, names[i], u);
		else if (!w->sandbox)
			snprintf(r->err, r->errlen,
			         "config: %s: wechatpay.%s is '%s': signed calls and the AppSecret would travel in "
			         "clear text; use https://, or mark a local sandbox with wechatpay.sandbox = true",
			         r->file, names[i], u);
		else if (!loopback_host(u))
			snprintf(r->err, r->errlen,
			         "config: %s: wechatpay.%s is '%s': plain http:// is allowed only to a local sandbox "
			         "on a loopback address (127.0.0.1, localhost, [::1])",
			         r->file, names[i], u);
		else
			continue;
		r->failed = 1;
	}
	if (cfg->fetch_ca_file && !r->failed && crypto_ca_bundle_check(cfg->fetch_ca_file, ferr, sizeof ferr) < 0) {
		snprintf(r->err, r->errlen, "config: %s: fetch.ca_file: %s", r->file, ferr);
		r->failed = 1;
	}
}

/* Serialise cfg.app with cjson so every script generation can decode its own copy. */
static void read_app(struct reader *r, struct config *cfg)
{
	lua_State *L = r->L;
	int t = push_field(r, "app", NULL);
	if (t == LUA_TNIL) {
		lua_pop(L, 1);
		return;
	}
	if (t != LUA_TTABLE) {
		lua_pop(L, 1);
		bad(r, "app", NULL, "a table");
		return;
	}
	lua_getglobal(L, "cjson");
	lua_getfield(L, -1, "encode");
	lua_pushvalue(L, -3);
	if (lua_pcall(L, 1, 1, 0) != LUA_OK) {
		if (!r->failed)
			snprintf(r->err, r->errlen, "config: app: %s", lua_tostring(L, -1));
		r->failed = 1;
	} else {
		char *json = strdup(lua_tostring(L, -1));
		if (json) {
			free(cfg->app_json);
			cfg->app_json = json;
		}
	}
	lua_pop(L, 3);
}

/* Edit distance of two short keys (for "did you mean"). */
static size_t distance(const char *a, const char *b)
{
	size_t la = strlen(a), lb = strlen(b), row[64];
	if (la >= 63 || lb >= 63)
		return 99;
	for (size_t j = 0; j <= lb; j++)
		row[j] = j;
	for (size_t i = 1; i <= la; i++) {
		size_t diag = row[0];
		row[0] = i;
		for (size_t j = 1; j <= lb; j++) {
			size_t up = row[j], best = diag + (a[i - 1] != b[j - 1]);
			if (up + 1 < best)
				best = up + 1;
			if (row[j - 1] + 1 < best)
				best = row[j - 1] + 1;
			row[j] = best;
			diag = up;
		}
	}
	return row[lb];
}

/* Is key ("a" or "a.b") in the table of known keys? */
static int known(const struct reader *r, const char *key)
{
	for (int i = 0; i < r->nknown; i++)
		if (strcmp(r->known[i], key) == 0)
			return 1;
	return 0;
}

/* A key nobody reads: an error naming the nearest known key of the same table. */
static void unknown(struct reader *r, const char *table, const char *key)
{
	const char *best = NULL;
	size_t best_d = 99, tl = table ? strlen(table) : 0;
	for (int i = 0; i < r->nknown; i++) {
		const char *k = r->known[i];
		const char *dot = strchr(k, '.');
		if (table ? (strncmp(k, table, tl) != 0 || k[tl] != '.') : dot != NULL)
			continue;
		size_t d = distance(key, table ? k + tl + 1 : k);
		if (d < best_d) {
			best_d = d;
			best = k;
		}
	}
	if (r->failed)
		return;
	r->failed = 1;
	if (best && (best_d <= 2 + strlen(key) / 4 || strncmp(best + (table ? tl + 1 : 0), key, strlen(key)) == 0))
		snprintf(r->err, r->errlen, "config: %s: unknown key '%s%s%s' (did you mean '%s'?)", r->file,
		         table ? table : "", table ? "." : "", key, best);
	else
		snprintf(r->err, r->errlen, "config: %s: unknown key '%s%s%s' (the keys are in docs/configuration.md)",
		         r->file, table ? table : "", table ? "." : "", key);
}

/* Every key of the file must be one a reader asked for; `app` is the scripts' own table. The
   values of a known key that is itself a table of names (admin.tokens) or a list are not keys. */
static void check_keys(struct reader *r)
{
	lua_State *L = r->L;
	lua_pushnil(L);
	while (!r->failed && lua_next(L, -2)) {
		if (lua_type(L, -2) != LUA_TSTRING) {
			r->failed = 1;
			snprintf(r->err, r->errlen, "config: %s: a value without a name (write key = value)", r->file);
			lua_pop(L, 2);
			break;
		}
		const char *k = lua_tostring(L, -2);
		if (!known(r, k)) {
			unknown(r, NULL, k);
		} else if (strcmp(k, "app") != 0 && lua_istable(L, -1)) {
			lua_pushnil(L);
			while (!r->failed && lua_next(L, -2)) {
				char full[112];
				if (lua_type(L, -2) != LUA_TSTRING) {
					r->failed = 1;
					snprintf(r->err, r->errlen, "config: %s: %s holds a value without a name",
					         r->file, k);
				} else {
					snprintf(full, sizeof full, "%s.%s", k, lua_tostring(L, -2));
					if (!known(r, full))
						unknown(r, k, lua_tostring(L, -2));
				}
				lua_pop(L, 1);
			}
			if (r->failed)
				lua_pop(L, 1); /* the key of the inner lua_next */
		}
		lua_pop(L, 1);
	}
	if (r->failed)
		lua_settop(L, 1);
}
/*
** A config file only assigns values: it runs in a jail (capped memory, an
** instruction budget), so one that loops or grows without end is a start-up
** error instead of a hang.
*/
#define CONFIG_MAX_BYTES        ((size_t)64 << 20)
#define CONFIG_MAX_INSTRUCTIONS 10000000

int config_load(struct config *cfg, const char *path, char *err, size_t errlen)
{
	struct reader r = { 0 };
	struct jail jail;
	struct jail_budget budget = { 0 };
	lua_State *L = jail_newstate(&jail, CONFIG_MAX_BYTES, NULL);
	char *dir = strdup(path), *slash;
	const char *base;
	int rc = -1;

	if (!L || !dir) {
		snprintf(err, errlen, "config: out of memory");
		goto done;
	}
	base = strrchr(path, '/') ? strrchr(path, '/') + 1 : path;
	slash = strrchr(dir, '/');
	if (slash)
		*slash = '\0';
	else
		snprintf(dir, strlen(path) + 1, ".");
	/* Paths in the file, and in every message, are absolute: relative to the file's directory. */
	char *real = realpath(dir, NULL);
	if (real) {
		free(dir);
		dir = real;
	}
	free(cfg->path);
	cfg->path = malloc(strlen(dir) + strlen(path) + 2);
	if (cfg->path)
		snprintf(cfg->path, strlen(dir) + strlen(path) + 2, "%s/%s", dir, base);
	r.file = cfg->path ? cfg->path : path;

	/* The file sees no library: it can only build tables of values. */
	luaL_requiref(L, "cjson", luaopen_cjson, 1);
	lua_pop(L, 1);
	lua_newtable(L); /* env the file writes into */
	if (luaL_loadfilex(L, path, "t") != LUA_OK) {
		snprintf(err, errlen, "config: %s", lua_tostring(L, -1));
		goto done;
	}
	lua_pushvalue(L, -2);
	lua_setupvalue(L, -2, 1); /* _ENV of the chunk = the fresh table */
	jail_budget(L, &budget, CONFIG_MAX_INSTRUCTIONS);
	int status = lua_pcall(L, 0, 0, 0);
	jail_unbudget(L);
	if (status != LUA_OK) {
		if (budget.killed)
			snprintf(err, errlen, "config: %s runs too long (a config file only assigns values)", path);
		else
			snprintf(err, errlen, "config: %s",
			         lua_tostring(L, -1) ? lua_tostring(L, -1) : "out of memory");
		goto done;
	}
	r.L = L;
	lua_settop(L, 1);
	r.dir = dir;
	r.err = err;
	r.errlen = errlen;
	read_fields(&r, cfg);
	read_wxpay(&r, cfg);
	read_app(&r, cfg);
	know(&r, "app", NULL);
	if (!r.failed)
		check_keys(&r);
	check_tls_policy(&r, cfg); /* after the keys: a misspelt `sandbox` is named as such */
	rc = r.failed ? -1 : 0;
done:
	if (L)
		lua_close(L);
	free(dir);
	return rc;
}

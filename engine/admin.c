/* admin.c — who may call the admin routes: named tokens, loopback trust, the console's session cookie and files. */
#include "admin.h"

#include <assert.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>

#include <event2/buffer.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <sqlite3.h>

#include "config.h"
#include "crypto.h"
#include "engine.h"
#include "json.h"
#include "log.h"
#include "store.h"

#define COOKIE         "paygate_admin"
#define SESSION_S      (12 * 3600)
#define MAX_FILE_BYTES (1 << 20)

static const char *header(struct http_req *h, const char *name)
{
	return evhttp_find_header(evhttp_request_get_input_headers(http_evreq(h)), name);
}

static int is_loopback_peer(struct http_req *h)
{
	char *addr = NULL;
	ev_uint16_t port = 0;
	evhttp_connection_get_peer(evhttp_request_get_connection(http_evreq(h)), &addr, &port);
	return addr &&
	       (strncmp(addr, "127.", 4) == 0 || strcmp(addr, "::1") == 0 || strncmp(addr, "::ffff:127.", 11) == 0);
}

int admin_open_without_token(const struct engine *e)
{
	return e->cfg.admin_trust_loopback;
}

/* The name of the configured token equal to tok, or NULL. Every token is compared, in constant time. */
static const char *token_name(struct engine *e, const char *tok)
{
	const char *who = NULL;
	size_t tl = strlen(tok);
	for (int i = 0; i < e->cfg.n_admin_tokens; i++) {
		const struct admin_token *t = &e->cfg.admin_tokens[i];
		if (strlen(t->token) == tl && crypto_ct_equal(tok, t->token, tl))
			who = t->name;
	}
	return who;
}

static int configured_name(struct engine *e, const char *name)
{
	for (int i = 0; i < e->cfg.n_admin_tokens; i++)
		if (strcmp(e->cfg.admin_tokens[i].name, name) == 0)
			return 1;
	return 0;
}

/* hex(HMAC(secret, what|text)) into out (65 bytes). */
static void mac_hex(struct engine *e, const char *what, const char *text, char out[65])
{
	unsigned char mac[CRYPTO_SHA256_LEN];
	char msg[256];
	int n = snprintf(msg, sizeof msg, "paygate-admin-v1|%s|%s", what, text);
	assert(n > 0 && (size_t)n < sizeof msg);
	memset(out, 0, 65);
	if (crypto_hmac_sha256(e->secret, e->secret_len, msg, (size_t)n, mac) == 0)
		crypto_hex_encode(mac, sizeof mac, 0, out, 65); /* else "": matches no 64-character token */
}

/* A session cookie's value: NAME.EXPIRY.MAC */
static void make_session(struct engine *e, const char *name, char *out, size_t outsz)
{
	char body[80], mac[65];
	snprintf(body, sizeof body, "%s.%lld", name, (long long)time(NULL) + SESSION_S);
	mac_hex(e, "session", body, mac);
	snprintf(out, outsz, "%s.%s", body, mac);
}

/* The session cookie of the request, when valid: its value into out and the name into who. */
static int session_of(struct http_req *h, char *value, size_t vsz, char *who, size_t wsz)
{
	struct engine *e = http_engine(h);
	const char *c = header(h, "Cookie");
	while (c && *c) {
		while (*c == ' ' || *c == ';')
			c++;
		size_t len = strcspn(c, ";");
		if (len > sizeof COOKIE && strncmp(c, COOKIE "=", sizeof COOKIE) == 0 && len - sizeof COOKIE < vsz) {
			snprintf(value, vsz, "%.*s", (int)(len - sizeof COOKIE), c + sizeof COOKIE);
			char *mac = strrchr(value, '.');
			if (!mac || strlen(mac + 1) != 64)
				return 0;
			char body[100], want[65];
			snprintf(body, sizeof body, "%.*s", (int)(mac - value), value);
			mac_hex(e, "session", body, want);
			if (!crypto_ct_equal(mac + 1, want, 64))
				return 0;
			char *dot = strrchr(body, '.');
			if (!dot || strtoll(dot + 1, NULL, 10) < (long long)time(NULL))
				return 0;
			*dot = '\0';
			if (!configured_name(e, body)) /* the token was removed from the config: its sessions end */
				return 0;
			snprintf(who, wsz, "%.40s", body);
			return 1;
		}
		c += len;
	}
	return 0;
}

static int is_write(enum evhttp_cmd_type cmd)
{
	return cmd != EVHTTP_REQ_GET && cmd != EVHTTP_REQ_HEAD && cmd != EVHTTP_REQ_OPTIONS;
}

/* A browser's request from another site (a page the operator has open elsewhere). */
static int cross_site(struct http_req *h)
{
	const char *site = header(h, "Sec-Fetch-Site");
	if (site && strcmp(site, "same-origin") != 0 && strcmp(site, "none") != 0)
		return 1;
	const char *origin = header(h, "Origin"), *host = header(h, "Host");
	if (!origin)
		return 0;
	const char *o = strstr(origin, "://");
	return !host || !o || strcmp(o + 3, host) != 0;
}

/* A Host naming this machine's loopback (localhost, 127.x.x.x, [::1], with or without a port). A
   page of another site whose name was made to resolve to 127.0.0.1 (DNS rebinding) sends its own
   name, so loopback trust never extends to it. */
static int loopback_host(struct http_req *h)
{
	const char *host = header(h, "Host");
	if (!host)
		return 1; /* HTTP/1.0 tools without Host: not a browser */
	size_t n = strlen(host);
	const char *colon = strrchr(host, ':');
	if (host[0] != '[' && colon)
		n = (size_t)(colon - host);
	else if (host[0] == '[')
		return strncmp(host, "[::1]", 5) == 0 && (host[5] == '\0' || host[5] == ':');
	if (n == 9 && strncmp(host, "localhost", 9) == 0)
		return 1;
	if (n < 7 || strncmp(host, "127.", 4) != 0)
		return 0;
	for (size_t i = 4; i < n; i++)
		if (!((host[i] >= '0' && host[i] <= '9') || host[i] == '.'))
			return 0;
	return 1;
}

static void refuse(struct http_req *h, int status, const char *code, const char *message)
{
	http_answer_error(h, status, code, message);
}

static void answer_json(struct http_req *h, int status, struct evbuffer *b)
{
	evhttp_add_header(evhttp_request_get_output_headers(http_evreq(h)), "Cache-Control", "no-store");
	http_answer(h, status, "application/json; charset=utf-8", b);
}

/* {"name": who, "csrf": token for writes with this session ("" when none is needed)} */
static void answer_session(struct http_req *h, const char *who, const char *session)
{
	char csrf[65] = "";
	struct evbuffer *b = evbuffer_new();
	if (session)
		mac_hex(http_engine(h), "csrf", session, csrf);
	evbuffer_add_printf(b, "{\"name\":");
	json_add_string(b, who);
	evbuffer_add_printf(b, ",\"csrf\":\"%s\"}", csrf);
	answer_json(h, 200, b);
}

static void login(struct http_req *h)
{
	struct engine *e = http_engine(h);
	struct evbuffer *in = evhttp_request_get_input_buffer(http_evreq(h));
	size_t n = evbuffer_get_length(in);
	char body[1024], tok[512];
	if (n >= sizeof body) {
		refuse(h, 400, "invalid_request", "send {\"token\": \"...\"}");
		return;
	}
	evbuffer_copyout(in, body, n);
	body[n] = '\0';
	if (json_get_field(body, "token", tok, sizeof tok) < 0) {
		refuse(h, 400, "invalid_request", "send {\"token\": \"...\"}");
		return;
	}
	const char *who = token_name(e, tok);
	memset(tok, 0, sizeof tok);
	if (!who) {
		log_warn(&e->log, NULL, "admin login refused: no configured token matches");
		refuse(h, 401, "unauthorized", "that is not a configured admin token");
		return;
	}
	char session[200], cookie[320];
	make_session(e, who, session, sizeof session);
	const char *proto = header(h, "X-Forwarded-Proto");
	snprintf(cookie, sizeof cookie, COOKIE "=%s; Path=/; Max-Age=%d; HttpOnly; SameSite=Strict%s", session,
	         SESSION_S, proto && strcmp(proto, "https") == 0 ? "; Secure" : "");
	evhttp_add_header(evhttp_request_get_output_headers(http_evreq(h)), "Set-Cookie", cookie);
	log_info(&e->log, NULL, "admin login: %s", who);
	answer_session(h, who, session);
}

static void logout(struct http_req *h)
{
	evhttp_add_header(evhttp_request_get_output_headers(http_evreq(h)), "Set-Cookie",
	                  COOKIE "=; Path=/; Max-Age=0; HttpOnly; SameSite=Strict");
	struct evbuffer *b = evbuffer_new();
	evbuffer_add_printf(b, "{\"ok\":true}");
	answer_json(h, 200, b);
}

/* ---- the console's files ---- */

static const char *content_type(const char *name)
{
	static const char *const types[][2] = { { ".html", "text/html; charset=utf-8" },
		                                { ".css", "text/css; charset=utf-8" },
		                                { ".js", "text/javascript; charset=utf-8" },
		                                { ".svg", "image/svg+xml" },
		                                { ".png", "image/png" } };
	const char *dot = strrchr(name, '.');
	for (size_t i = 0; dot && i < sizeof types / sizeof types[0]; i++)
		if (strcmp(dot, types[i][0]) == 0)
			return types[i][1];
	return NULL;
}

/* Names of one path segment only: letters, digits, - _ and one dot before a known extension. */
static int safe_name(const char *name)
{
	if (!*name || strlen(name) > 64 || name[0] == '.')
		return 0;
	for (const char *p = name; *p; p++)
		if (!((*p >= 'a' && *p <= 'z') || (*p >= '0' && *p <= '9') || *p == '-' || *p == '_' || *p == '.'))
			return 0;
	return strchr(name, '.') == strrchr(name, '.') && content_type(name) != NULL;
}

static void console_dir(struct engine *e, char *out, size_t outsz)
{
	if (e->cfg.console_dir) {
		snprintf(out, outsz, "%s", e->cfg.console_dir);
		return;
	}
	/* Beside the Lua library: <repo>/lualib and <repo>/console, or share/paygate/{lualib,console}. */
	const char *l = e->cfg.lualib_dir;
	const char *slash = strrchr(l, '/');
	if (slash && slash[1] == '\0') { /* "lualib/" */
		const char *p = slash;
		while (p > l && p[-1] != '/')
			p--;
		slash = p > l ? p - 1 : NULL;
	}
	if (slash)
		snprintf(out, outsz, "%.*s/console", (int)(slash - l), l);
	else
		snprintf(out, outsz, "console");
}

static void serve_file(struct http_req *h, const char *name, enum evhttp_cmd_type cmd)
{
	struct engine *e = http_engine(h);
	char dir[2048], path[2200], err[2400];
	if (cmd != EVHTTP_REQ_GET && cmd != EVHTTP_REQ_HEAD) {
		evhttp_add_header(evhttp_request_get_output_headers(http_evreq(h)), "Allow", "GET, HEAD");
		refuse(h, 405, "method_not_allowed", "the console's files answer GET");
		return;
	}
	if (!safe_name(name)) {
		refuse(h, 404, "not_found", "no such console file");
		return;
	}
	console_dir(e, dir, sizeof dir);
	snprintf(path, sizeof path, "%s/%s", dir, name);
	size_t len = 0;
	char *data = config_read_file(path, MAX_FILE_BYTES, &len, err, sizeof err);
	if (!data) {
		log_warn(&e->log, NULL, "the console's file is missing: %s (set admin.console_dir)", err);
		refuse(h, 404, "not_found", "no such console file (see admin.console_dir)");
		return;
	}
	struct evkeyvalq *out = evhttp_request_get_output_headers(http_evreq(h));
	evhttp_add_header(out, "Cache-Control", "no-cache");
	evhttp_add_header(out, "X-Content-Type-Options", "nosniff");
	evhttp_add_header(out, "Referrer-Policy", "no-referrer");
	evhttp_add_header(out, "X-Frame-Options", "DENY");
	evhttp_add_header(out, "Content-Security-Policy",
	                  "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
	                  "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'");
	struct evbuffer *b = evbuffer_new();
	if (cmd == EVHTTP_REQ_GET)
		evbuffer_add(b, data, len);
	free(data);
	http_answer(h, 200, content_type(name), b);
}

/* ---- online backup ---- */

/* POST /admin/backup: VACUUM INTO a new file beside the database, through a read-only connection
   of its own, so the copy is one consistent snapshot of what was committed and the gateway's
   own connection (and its open batch) is not involved. The loop waits while it copies. */
static void backup(struct http_req *h, const char *who)
{
	struct engine *e = http_engine(h);
	char path[4200], stamp[32];
	struct timeval t0, t1;
	time_t now = time(NULL);
	struct tm tm;
	gmtime_r(&now, &tm);
	strftime(stamp, sizeof stamp, "%Y%m%dT%H%M%SZ", &tm);
	snprintf(path, sizeof path, "%s-backup-%s.db", e->cfg.db_path, stamp);
	if (strcmp(e->cfg.db_path, ":memory:") == 0) {
		refuse(h, 409, "no_database_file", "the database is in memory");
		return;
	}
	if (store_pg(e->store)) {
		refuse(h, 409, "use_pg_dump",
		       "the database is PostgreSQL: back it up with its own tools (pg_dump, or base backups with WAL "
		       "archiving); docs/scaling.md");
		return;
	}
	gettimeofday(&t0, NULL);
	sqlite3 *db = NULL;
	sqlite3_stmt *st = NULL;
	int rc = sqlite3_open_v2(e->cfg.db_path, &db, SQLITE_OPEN_READONLY, NULL);
	if (rc == SQLITE_OK)
		rc = sqlite3_prepare_v2(db, "VACUUM INTO ?", -1, &st, NULL);
	if (rc == SQLITE_OK) {
		sqlite3_bind_text(st, 1, path, -1, SQLITE_STATIC);
		rc = sqlite3_step(st);
	}
	char msg[600];
	snprintf(msg, sizeof msg, "%s", db ? sqlite3_errmsg(db) : "out of memory");
	sqlite3_finalize(st);
	sqlite3_close(db);
	gettimeofday(&t1, NULL);
	if (rc != SQLITE_DONE) {
		log_error(&e->log, NULL, "backup to %s failed: %s", path, msg);
		refuse(h, 500, "backup_failed", msg);
		return;
	}
	long ms = (long)((t1.tv_sec - t0.tv_sec) * 1000 + (t1.tv_usec - t0.tv_usec) / 1000);
	log_info(&e->log, NULL, "backup written to %s in %ld ms (asked by %s)", path, ms, who);
	struct evbuffer *b = evbuffer_new();
	evbuffer_add_printf(b, "{\"path\":");
	json_add_string(b, path);
	evbuffer_add_printf(b, ",\"ms\":%ld}", ms);
	answer_json(h, 201, b);
}

/* ---- the gate ---- */

int admin_front(struct http_req *h, const char *path, enum evhttp_cmd_type cmd)
{
	struct engine *e = http_engine(h);
	int metrics = strcmp(path, "/metrics") == 0;
	if (!metrics && strncmp(path, "/admin", 6) != 0)
		return 0;
	if (strcmp(path, "/admin") == 0) {
		evhttp_add_header(evhttp_request_get_output_headers(http_evreq(h)), "Location", "/admin/");
		http_answer(h, 301, NULL, NULL);
		return 1;
	}
	if (!metrics && path[6] != '/')
		return 0; /* /adminx: not ours */
	if (strcmp(path, "/admin/") == 0) {
		serve_file(h, "index.html", cmd);
		return 1;
	}
	if (strncmp(path, "/admin/console/", 15) == 0) {
		serve_file(h, path + 15, cmd);
		return 1;
	}
	if (strcmp(path, "/admin/login") == 0 || strcmp(path, "/admin/logout") == 0) {
		if (cmd != EVHTTP_REQ_POST) {
			evhttp_add_header(evhttp_request_get_output_headers(http_evreq(h)), "Allow", "POST");
			refuse(h, 405, "method_not_allowed", "use POST");
		} else if (cross_site(h)) {
			refuse(h, 403, "cross_site", "admin requests from another site are refused");
		} else if (strcmp(path, "/admin/login") == 0) {
			login(h);
		} else {
			logout(h);
		}
		return 1;
	}

	char session[200] = "", who[48] = "";
	int by_cookie = 0, loopback_trust = 0;
	const char *auth = header(h, "Authorization");
	if (auth && strncmp(auth, "Bearer ", 7) == 0) {
		const char *name = token_name(e, auth + 7);
		if (!name) {
			refuse(h, 401, "unauthorized", "that is not a configured admin token");
			return 1;
		}
		snprintf(who, sizeof who, "%s", name);
	} else if (session_of(h, session, sizeof session, who, sizeof who)) {
		by_cookie = 1;
	} else if (is_loopback_peer(h) && loopback_host(h) &&
	           (e->cfg.admin_trust_loopback || (metrics && e->cfg.n_admin_tokens == 0))) {
		snprintf(who, sizeof who, "loopback");
		loopback_trust = 1;
	} else {
		int st = e->cfg.n_admin_tokens ? 401 : 403;
		refuse(h, st, st == 401 ? "unauthorized" : "forbidden",
		       e->cfg.n_admin_tokens
		           ? "admin endpoints need Authorization: Bearer <admin token> (or the console's login)"
		           : "admin endpoints are closed: configure admin.tokens (or admin.trust_loopback = "
		             "true on a machine of your own)");
		return 1;
	}
	/* Browsers send cookies and reach loopback by themselves: a write they carry must come from
	   our own pages (same origin, and with a cookie the session's CSRF token). */
	if ((by_cookie || loopback_trust) && is_write(cmd)) {
		if (cross_site(h)) {
			refuse(h, 403, "cross_site", "admin requests from another site are refused");
			return 1;
		}
		if (by_cookie) {
			char want[65];
			const char *got = header(h, "X-CSRF-Token");
			mac_hex(e, "csrf", session, want);
			if (!got || strlen(got) != 64 || !crypto_ct_equal(got, want, 64)) {
				refuse(h, 403, "csrf",
				       "a write with the console's session needs its X-CSRF-Token header");
				return 1;
			}
		}
	}
	if (strcmp(path, "/admin/session") == 0) {
		answer_session(h, who, by_cookie ? session : NULL);
		return 1;
	}
	if (strcmp(path, "/admin/backup") == 0) {
		if (cmd != EVHTTP_REQ_POST) {
			evhttp_add_header(evhttp_request_get_output_headers(http_evreq(h)), "Allow", "POST");
			refuse(h, 405, "method_not_allowed", "use POST /admin/backup");
		} else {
			backup(h, who);
		}
		return 1;
	}
	http_set_admin(h, who);
	return 0;
}

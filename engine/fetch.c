/* fetch.c — outbound HTTP(S): libcurl multi_socket on the engine's event loop; `http.request` yields. */
#include "fetch.h"

#include <stdlib.h>
#include <string.h>

#include <curl/curl.h>
#include <event2/event.h>
#include <lauxlib.h>

#include "coro.h"
#include "engine.h"
#include "log.h"
#include "store.h"

/*
** The hiperfifo pattern (curl docs/examples), with the pitfalls the issue
** trackers record handled:
**  - the timer callback only arms an event; curl is never called from it;
**  - CURL_POLL_REMOVE may name a socket we never saw: tolerated;
**  - no coroutine is resumed from a curl callback: a finished transfer is
**    removed from the multi handle and its coroutine queued with coro_wake;
**    the results are built when it is resumed.
*/

struct fetch {
	struct engine *eng;
	CURLM *multi;
	CURLSH *share; /* TLS sessions and DNS answers, kept across transfers */
	struct event *timer;
	int inflight;
};

struct fetch_sock {
	struct event *ev;
	curl_socket_t fd;
};

struct fetch_req {
	struct fetch *f;
	CURL *easy;
	struct coro *c;
	struct curl_slist *headers;
	char *body; /* our copy of the bytes sent */
	char *resp; /* response body */
	size_t resp_len, resp_cap;
	char *hdrs; /* response header lines of the final response */
	size_t hdrs_len, hdrs_cap;
	size_t max_bytes;
	int in_multi, too_large, lost; /* lost: the batch it waited for failed; never sent */
	int https;
	struct store_waiter commit; /* queued while the store's batch is open */
	CURLcode result;
	char errbuf[CURL_ERROR_SIZE];
};

static void check_done(struct fetch *f);

/* ---- libevent ⇄ curl glue ---- */

static void on_socket(evutil_socket_t fd, short what, void *arg)
{
	struct fetch *f = arg;
	int running, action = (what & EV_READ ? CURL_CSELECT_IN : 0) | (what & EV_WRITE ? CURL_CSELECT_OUT : 0);
	curl_multi_socket_action(f->multi, fd, action, &running);
	check_done(f);
}

static void on_timer(evutil_socket_t fd, short what, void *arg)
{
	struct fetch *f = arg;
	int running;
	(void)fd;
	(void)what;
	curl_multi_socket_action(f->multi, CURL_SOCKET_TIMEOUT, 0, &running);
	check_done(f);
}

static int sock_cb(CURL *easy, curl_socket_t s, int what, void *userp, void *socketp)
{
	struct fetch *f = userp;
	struct fetch_sock *fs = socketp;
	(void)easy;

	if (what == CURL_POLL_REMOVE) {
		if (fs) { /* unknown sockets are tolerated */
			event_free(fs->ev);
			free(fs);
			curl_multi_assign(f->multi, s, NULL);
		}
		return 0;
	}
	short kind = (short)((what & CURL_POLL_IN ? EV_READ : 0) | (what & CURL_POLL_OUT ? EV_WRITE : 0) | EV_PERSIST);
	if (!fs) {
		fs = calloc(1, sizeof *fs);
		if (!fs)
			return -1;
		fs->fd = s;
		curl_multi_assign(f->multi, s, fs);
	} else {
		event_free(fs->ev);
	}
	fs->ev = event_new(f->eng->base, s, kind, on_socket, f);
	if (!fs->ev || event_add(fs->ev, NULL) < 0)
		return -1;
	return 0;
}

static int timer_cb(CURLM *multi, long timeout_ms, void *userp)
{
	struct fetch *f = userp;
	(void)multi;
	if (timeout_ms < 0) {
		evtimer_del(f->timer);
	} else {
		struct timeval tv = { timeout_ms / 1000, (timeout_ms % 1000) * 1000 };
		evtimer_add(f->timer, &tv); /* 0 ms: fires on the next loop turn */
	}
	return 0;
}

/*
** Connections a transfer had to open (0 when it reused one): each is a TCP connection and, for
** https://, a TLS handshake, which the shared session cache may have made a resumed one.
*/
static void count_connections(struct fetch *f, struct fetch_req *r, CURLcode result)
{
	long opened = 0;
	curl_easy_getinfo(r->easy, CURLINFO_NUM_CONNECTS, &opened);
	if (opened <= 0)
		return;
	metrics_update(&f->eng->metrics, "paygate_upstream_connections_total", NULL, (double)opened, 0);
	if (r->https && result == CURLE_OK)
		metrics_update(&f->eng->metrics, "paygate_upstream_tls_handshakes_total", NULL, (double)opened, 0);
}

/* Hand every finished transfer back to its coroutine. */
static void check_done(struct fetch *f)
{
	CURLMsg *msg;
	int left;
	while ((msg = curl_multi_info_read(f->multi, &left))) {
		if (msg->msg != CURLMSG_DONE)
			continue;
		struct fetch_req *r = NULL;
		CURL *easy = msg->easy_handle;
		CURLcode result = msg->data.result; /* msg is invalid after remove_handle */
		curl_easy_getinfo(easy, CURLINFO_PRIVATE, (char **)&r);
		count_connections(f, r, result);
		curl_multi_remove_handle(f->multi, easy);
		r->in_multi = 0;
		r->result = result;
		f->inflight--;
		coro_wake(r->c);
	}
}

struct fetch *fetch_new(struct engine *e)
{
	struct fetch *f = calloc(1, sizeof *f);
	if (!f)
		return NULL;
	f->eng = e;
	f->multi = curl_multi_init();
	f->share = curl_share_init();
	f->timer = evtimer_new(e->base, on_timer, f);
	if (!f->multi || !f->share || !f->timer) {
		fetch_free(f);
		return NULL;
	}
	/* One engine is one thread: the share needs no lock functions. */
	curl_share_setopt(f->share, CURLSHOPT_SHARE, CURL_LOCK_DATA_SSL_SESSION);
	curl_share_setopt(f->share, CURLSHOPT_SHARE, CURL_LOCK_DATA_DNS);
	/* HTTP/2 where the upstream offers it: transfers share a connection as streams. */
	curl_multi_setopt(f->multi, CURLMOPT_PIPELINING, (long)CURLPIPE_MULTIPLEX);
	curl_multi_setopt(f->multi, CURLMOPT_MAX_HOST_CONNECTIONS, (long)e->cfg.fetch_max_host_connections);
	curl_multi_setopt(f->multi, CURLMOPT_MAXCONNECTS, (long)(e->cfg.fetch_max_host_connections * 4));
	curl_multi_setopt(f->multi, CURLMOPT_SOCKETFUNCTION, sock_cb);
	curl_multi_setopt(f->multi, CURLMOPT_SOCKETDATA, f);
	curl_multi_setopt(f->multi, CURLMOPT_TIMERFUNCTION, timer_cb);
	curl_multi_setopt(f->multi, CURLMOPT_TIMERDATA, f);
	return f;
}

void fetch_free(struct fetch *f)
{
	if (!f)
		return;
	if (f->multi)
		curl_multi_cleanup(f->multi);
	if (f->share)
		curl_share_cleanup(f->share); /* after the multi: its cached connections hold sessions */
	if (f->timer)
		event_free(f->timer);
	free(f);
}

int fetch_inflight(const struct fetch *f)
{
	return f->inflight;
}

/* ---- one transfer ---- */

static int grow(char **buf, size_t *cap, size_t need)
{
	if (need <= *cap)
		return 0;
	size_t ncap = *cap ? *cap : 1024;
	while (ncap < need)
		ncap *= 2;
	char *nb = realloc(*buf, ncap);
	if (!nb)
		return -1;
	*buf = nb;
	*cap = ncap;
	return 0;
}

static size_t on_body(char *p, size_t size, size_t n, void *arg)
{
	struct fetch_req *r = arg;
	size_t len = size * n;
	if (r->resp_len + len > r->max_bytes) {
		r->too_large = 1;
		return 0; /* aborts the transfer */
	}
	if (grow(&r->resp, &r->resp_cap, r->resp_len + len) < 0)
		return 0;
	memcpy(r->resp + r->resp_len, p, len);
	r->resp_len += len;
	return len;
}

static size_t on_header(char *p, size_t size, size_t n, void *arg)
{
	struct fetch_req *r = arg;
	size_t len = size * n;
	if (len >= 5 && memcmp(p, "HTTP/", 5) == 0)
		r->hdrs_len = 0; /* a new response (after 100 Continue): start over */
	if (r->hdrs_len + len > 64 * 1024 || grow(&r->hdrs, &r->hdrs_cap, r->hdrs_len + len) < 0)
		return 0;
	memcpy(r->hdrs + r->hdrs_len, p, len);
	r->hdrs_len += len;
	return len;
}

static void req_free(struct fetch_req *r)
{
	store_cancel_wait(&r->commit);
	if (r->in_multi) {
		curl_multi_remove_handle(r->f->multi, r->easy);
		r->f->inflight--;
	}
	if (r->easy)
		curl_easy_cleanup(r->easy);
	curl_slist_free_all(r->headers);
	free(r->body);
	free(r->resp);
	free(r->hdrs);
	free(r);
}

static void req_cleanup(struct coro *c)
{
	req_free(c->wait);
}

/* Push the response headers as {lowercase-name = value} (repeated names joined by ", "). */
static void push_headers(lua_State *L, struct fetch_req *r)
{
	lua_newtable(L);
	size_t i = 0;
	while (i < r->hdrs_len) {
		char *line = r->hdrs + i, *end = memchr(line, '\n', r->hdrs_len - i);
		size_t len = end ? (size_t)(end - line) : r->hdrs_len - i;
		i += len + 1;
		while (len && (line[len - 1] == '\r' || line[len - 1] == '\n'))
			len--;
		char *colon = memchr(line, ':', len);
		if (!colon || colon == line)
			continue;
		luaL_Buffer b;
		luaL_buffinit(L, &b);
		for (char *k = line; k < colon; k++)
			luaL_addchar(&b, (char)(*k >= 'A' && *k <= 'Z' ? *k + 32 : *k));
		luaL_pushresult(&b);
		char *v = colon + 1;
		size_t vlen = len - (size_t)(v - line);
		while (vlen && (*v == ' ' || *v == '\t')) {
			v++;
			vlen--;
		}
		lua_pushvalue(L, -1);
		if (lua_rawget(L, -3) == LUA_TSTRING) {
			lua_pushliteral(L, ", ");
			lua_pushlstring(L, v, vlen);
			lua_concat(L, 3);
		} else {
			lua_pop(L, 1);
			lua_pushlstring(L, v, vlen);
		}
		lua_rawset(L, -3);
	}
}

/*
** Why a transfer got no answer: timeout, connect (no connection: refused, unreachable, no such
** host), tls (the handshake failed or the certificate was refused), network (the connection broke
** or the answer was not HTTP), error (anything else).
*/
static const char *error_kind(CURLcode rc)
{
	switch (rc) {
	case CURLE_OPERATION_TIMEDOUT:
		return "timeout";
	case CURLE_COULDNT_CONNECT:
	case CURLE_COULDNT_RESOLVE_HOST:
	case CURLE_COULDNT_RESOLVE_PROXY:
		return "connect";
	case CURLE_SSL_CONNECT_ERROR:
	case CURLE_PEER_FAILED_VERIFICATION:
	case CURLE_SSL_CACERT_BADFILE:
	case CURLE_SSL_CERTPROBLEM:
	case CURLE_SSL_CIPHER:
	case CURLE_SSL_ENGINE_NOTFOUND:
	case CURLE_SSL_ENGINE_SETFAILED:
	case CURLE_SSL_ENGINE_INITFAILED:
	case CURLE_SSL_CRL_BADFILE:
	case CURLE_SSL_ISSUER_ERROR:
	case CURLE_SSL_PINNEDPUBKEYNOTMATCH:
	case CURLE_SSL_INVALIDCERTSTATUS:
	case CURLE_SSL_SHUTDOWN_FAILED:
	case CURLE_SSL_CLIENTCERT:
	case CURLE_USE_SSL_FAILED:
		return "tls";
	case CURLE_SEND_ERROR:
	case CURLE_RECV_ERROR:
	case CURLE_GOT_NOTHING:
	case CURLE_PARTIAL_FILE:
	case CURLE_WEIRD_SERVER_REPLY:
	case CURLE_HTTP2:
	case CURLE_HTTP2_STREAM:
	case CURLE_UNSUPPORTED_PROTOCOL:
		return "network";
	default:
		return "error";
	}
}

/* Log a failed transfer (without the query string, which may carry a secret) and count it by kind. */
static void report_failure(lua_State *L, struct fetch_req *r, const char *kind, const char *detail)
{
	struct engine *e = r->f->eng;
	char *url = NULL, labels[64];
	curl_easy_getinfo(r->easy, CURLINFO_EFFECTIVE_URL, &url);
	int len = url ? (int)strcspn(url, "?#") : 0;
	/* A refused certificate may be someone in the middle: worth an operator's attention. */
	enum log_level lvl = r->result == CURLE_PEER_FAILED_VERIFICATION ? LOG_ERROR : LOG_WARN;
	log_msg(&e->log, lvl, coro_reqid(L), "outbound %.*s failed: %s%s: %s", len, url ? url : "",
	        lvl == LOG_ERROR ? "certificate refused, " : "", kind, detail);
	snprintf(labels, sizeof labels, "reason=\"%s\"", kind);
	metrics_update(&e->metrics, "paygate_upstream_failures_total", labels, 1, 0);
}

static int req_retvals(struct coro *c, lua_State *L)
{
	struct fetch_req *r = c->wait;
	struct metrics *m = &r->f->eng->metrics;
	if (r->result != CURLE_OK || r->too_large || r->lost) {
		m->fetch_failed++;
		lua_pushnil(L);
		if (r->lost)
			lua_pushfstring(L, "storage: not sent, the database could not save what it depends on: %s",
			                store_last_error(r->f->eng->store));
		else if (r->too_large)
			lua_pushfstring(L, "too_large: response body over %d bytes", (int)r->max_bytes);
		else
			lua_pushfstring(L, "%s: %s", error_kind(r->result),
			                r->errbuf[0] ? r->errbuf : curl_easy_strerror(r->result));
		const char *msg = lua_tostring(L, -1), *colon = strchr(msg, ':');
		char kind[16];
		snprintf(kind, sizeof kind, "%.*s", (int)(colon - msg), msg);
		report_failure(L, r, kind, colon + 2);
		return 2;
	}
	long status = 0;
	curl_easy_getinfo(r->easy, CURLINFO_RESPONSE_CODE, &status);
	m->fetch_ok++;
	lua_createtable(L, 0, 3);
	lua_pushinteger(L, status);
	lua_setfield(L, -2, "status");
	push_headers(L, r);
	lua_setfield(L, -2, "headers");
	lua_pushlstring(L, r->resp ? r->resp : "", r->resp_len);
	lua_setfield(L, -2, "body");
	return 1;
}

/* ---- Lua: http.request{...} ---- */

static const char *opt_string(lua_State *L, const char *key, const char *def, size_t *len)
{
	lua_getfield(L, 1, key);
	const char *v = lua_isnil(L, -1) ? def : luaL_checklstring(L, -1, len);
	lua_pop(L, 1); /* the string stays referenced by the options table */
	return v;
}

static lua_Integer opt_int(lua_State *L, const char *key, lua_Integer def, lua_Integer min, lua_Integer max)
{
	lua_getfield(L, 1, key);
	lua_Integer v = def;
	if (!lua_isnil(L, -1)) {
		int ok;
		v = lua_tointegerx(L, -1, &ok);
		if (!ok || v < min || v > max)
			luaL_error(L, "http.request: %s must be an integer from %d to %d", key, (int)min, (int)max);
	}
	lua_pop(L, 1);
	return v;
}

/* Add request headers from opts.headers; CR/LF in names or values are refused. */
static void add_headers(lua_State *L, struct fetch_req *r)
{
	r->headers = curl_slist_append(NULL, "Expect:");
	lua_getfield(L, 1, "headers");
	if (lua_istable(L, -1)) {
		lua_pushnil(L);
		while (lua_next(L, -2)) {
			const char *k = luaL_checkstring(L, -2), *v = luaL_checkstring(L, -1);
			if (strpbrk(k, "\r\n:") || strpbrk(v, "\r\n"))
				luaL_error(L, "http.request: header '%s' contains CR, LF or ':'", k);
			lua_pushfstring(L, "%s: %s", k, v);
			struct curl_slist *nl = curl_slist_append(r->headers, lua_tostring(L, -1));
			if (!nl)
				luaL_error(L, "http.request: out of memory");
			r->headers = nl;
			lua_pop(L, 2);
		}
	}
	lua_pop(L, 1);
}

/* Configure the easy handle from the options table at index 1; raises on bad options. */
static void setup_easy(lua_State *L, struct engine *e, struct fetch_req *r)
{
	size_t body_len = 0;
	const char *url = opt_string(L, "url", NULL, NULL);
	const char *method = opt_string(L, "method", "GET", NULL);
	const char *body = opt_string(L, "body", NULL, &body_len);
	lua_Integer timeout = opt_int(L, "timeout_ms", e->cfg.fetch_timeout_ms, 1, 600000);
	lua_Integer ctimeout = opt_int(L, "connect_timeout_ms", e->cfg.fetch_connect_timeout_ms, 1, 600000);

	if (!url || (strncmp(url, "http://", 7) != 0 && strncmp(url, "https://", 8) != 0))
		luaL_error(L, "http.request: url must start with http:// or https://");
	for (const char *m = method; *m; m++)
		if (*m < 'A' || *m > 'Z')
			luaL_error(L, "http.request: method must be upper-case letters");
	add_headers(L, r);
	CURL *h = r->easy;
	curl_easy_setopt(h, CURLOPT_URL, url);
	curl_easy_setopt(h, CURLOPT_PROTOCOLS_STR, "http,https");
	curl_easy_setopt(h, CURLOPT_FOLLOWLOCATION, 0L);
	curl_easy_setopt(h, CURLOPT_PATH_AS_IS, 1L); /* send the path exactly as given (and signed) */
	curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
	/* The TLS policy is paygate's, whatever the system's OpenSSL configuration allows. */
	r->https = strncmp(url, "https://", 8) == 0;
	curl_easy_setopt(h, CURLOPT_SSL_VERIFYPEER, 1L);
	curl_easy_setopt(h, CURLOPT_SSL_VERIFYHOST, 2L);
	curl_easy_setopt(h, CURLOPT_SSLVERSION,
	                 e->cfg.fetch_tls_min >= 13 ? (long)CURL_SSLVERSION_TLSv1_3 : (long)CURL_SSLVERSION_TLSv1_2);
	curl_easy_setopt(h, CURLOPT_SSL_CIPHER_LIST, "DEFAULT:@SECLEVEL=2");
	if (e->cfg.fetch_ca_file) { /* the only CAs trusted: not added to the system's directory */
		curl_easy_setopt(h, CURLOPT_CAINFO, e->cfg.fetch_ca_file);
		curl_easy_setopt(h, CURLOPT_CAPATH, NULL);
	}
	/* Connections worth keeping: shared sessions, HTTP/2 streams, TCP keep-alive, no stale reuse. */
	curl_easy_setopt(h, CURLOPT_SHARE, r->f->share);
	curl_easy_setopt(h, CURLOPT_HTTP_VERSION, (long)CURL_HTTP_VERSION_2TLS);
	curl_easy_setopt(h, CURLOPT_PIPEWAIT, 1L);
	curl_easy_setopt(h, CURLOPT_TCP_KEEPALIVE, 1L);
	curl_easy_setopt(h, CURLOPT_TCP_KEEPIDLE, 10L);
	curl_easy_setopt(h, CURLOPT_TCP_KEEPINTVL, 5L);
	curl_easy_setopt(h, CURLOPT_MAXAGE_CONN, (long)e->cfg.fetch_keepalive_s);
	curl_easy_setopt(h, CURLOPT_TIMEOUT_MS, (long)timeout);
	curl_easy_setopt(h, CURLOPT_CONNECTTIMEOUT_MS, (long)ctimeout);
	curl_easy_setopt(h, CURLOPT_HTTPHEADER, r->headers);
	curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, on_body);
	curl_easy_setopt(h, CURLOPT_WRITEDATA, r);
	curl_easy_setopt(h, CURLOPT_HEADERFUNCTION, on_header);
	curl_easy_setopt(h, CURLOPT_HEADERDATA, r);
	curl_easy_setopt(h, CURLOPT_ERRORBUFFER, r->errbuf);
	curl_easy_setopt(h, CURLOPT_PRIVATE, r);
	if (body) {
		/* The exact bytes go out once, from our own copy: what a signature covers is what is sent. */
		r->body = malloc(body_len + 1);
		if (!r->body)
			luaL_error(L, "http.request: out of memory");
		memcpy(r->body, body, body_len);
		curl_easy_setopt(h, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)body_len);
		curl_easy_setopt(h, CURLOPT_POSTFIELDS, r->body);
	}
	if (strcmp(method, "HEAD") == 0)
		curl_easy_setopt(h, CURLOPT_NOBODY, 1L);
	else if (strcmp(method, "GET") != 0 || body)
		curl_easy_setopt(h, CURLOPT_CUSTOMREQUEST, method);
}

/* Hand the transfer to curl: 0, or -1 when it cannot start. */
static int start(struct fetch_req *r)
{
	if (curl_multi_add_handle(r->f->multi, r->easy) != CURLM_OK)
		return -1;
	r->in_multi = 1;
	r->f->inflight++;
	return 0;
}

/*
** A request made while the store's batch is open may carry what that batch
** wrote (an order number, an amount): it goes out once the batch is durable,
** and not at all when the batch is lost.
*/
static void start_after_commit(struct store_waiter *w, int ok)
{
	struct fetch_req *r = STORE_WAITER_OWNER(w, struct fetch_req, commit);
	if (!ok)
		r->lost = 1;
	else if (start(r) < 0)
		r->result = CURLE_FAILED_INIT;
	if (!r->in_multi)
		coro_wake(r->c);
}

/* [-1 (options), +0..2] in protected mode: the request struct is freed if anything raises. */
static int l_request(lua_State *L)
{
	struct engine *e = lua_touserdata(L, lua_upvalueindex(1));
	struct fetch *f = e->fetch;

	luaL_checktype(L, 1, LUA_TTABLE);
	lua_settop(L, 1);
	coro_check_suspend(L, "http.request");
	if (f->inflight >= e->cfg.fetch_max_inflight) {
		lua_pushnil(L);
		lua_pushfstring(L, "error: too many outbound requests in flight (%d)", f->inflight);
		return 2;
	}
	/* The request is owned by a userdata until it is handed to curl, so errors cannot leak it. */
	struct fetch_req **box = lua_newuserdatauv(L, sizeof *box, 0);
	*box = NULL;
	luaL_setmetatable(L, "paygate.fetch.pending");
	struct fetch_req *r = calloc(1, sizeof *r);
	if (!r || !(r->easy = curl_easy_init())) {
		free(r);
		return luaL_error(L, "http.request: out of memory");
	}
	*box = r;
	r->f = f;
	r->c = coro_of(L);
	r->max_bytes = e->cfg.fetch_max_response_bytes;
	setup_easy(L, e, r);
	r->commit.fn = start_after_commit;
	if (!store_wait_commit(e->store, &r->commit) && start(r) < 0)
		return luaL_error(L, "http.request: cannot start the transfer");
	*box = NULL; /* from here the coroutine's cleanup owns it */
	lua_settop(L, 0);
	return coro_suspend(L, "http.request", r, req_cleanup, req_retvals);
}

static int pending_gc(lua_State *L)
{
	struct fetch_req **box = lua_touserdata(L, 1);
	if (*box)
		req_free(*box);
	*box = NULL;
	return 0;
}

void fetch_push_lua(lua_State *L, struct engine *e)
{
	luaL_newmetatable(L, "paygate.fetch.pending");
	lua_pushcfunction(L, pending_gc);
	lua_setfield(L, -2, "__gc");
	lua_pop(L, 1);
	lua_newtable(L);
	lua_pushlightuserdata(L, e);
	lua_pushcclosure(L, l_request, 1);
	lua_setfield(L, -2, "request");
}

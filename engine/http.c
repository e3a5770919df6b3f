/* http.c — the inbound HTTP server: evhttp with explicit limits, each request a Lua coroutine. */
#include "http.h"

#include <assert.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/queue.h>
#include <sys/random.h>
#include <sys/resource.h>
#include <sys/socket.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <lauxlib.h>

#include "coro.h"
#include "engine.h"
#include "gen.h"
#include "jail.h"
#include "json.h"
#include "store.h"

#define REQ_MT "paygate.request"

/*
** A request's life: evhttp calls on_request → built-in route or a coroutine
** running app._dispatch(req) → req_done builds the answer. If the client
** goes away first, on_close cancels the coroutine (its pending transfer or
** timer is released by the coroutine's cleanup) and frees the request.
*/
struct http_req {
	struct engine *eng;
	struct evhttp_request *req;
	struct evhttp_connection *evcon;
	struct http_conn *conn; /* NULL for a request from a host's evhttp */
	struct coro *co;
	struct http_req **box;     /* the Lua userdata's pointer to us, cleared at the end */
	struct event *peer_closed; /* EV_CLOSED on the socket while the handler runs */
	int counted;               /* counted in http_inflight (script requests) */
	int *finished;             /* set to 1 when h is released or its answer waits (see on_request) */
	/* An answer made while the store's batch is open waits for the batch: */
	struct store_waiter commit; /* queued while it waits */
	int pending_status;
	const char *pending_ctype;
	struct evbuffer *pending_body;
	struct timeval start;
	char id[72];
	char admin[40]; /* who the admin routes let in (a token's name, "loopback"), else "" */
};

enum conn_phase { CONN_NEW, CONN_HEAD, CONN_BODY, CONN_BUSY };

struct client_count {
	unsigned char addr[16];
	int len;
	int n; /* open connections from this address */
	struct client_count *next;
};

/* One accepted connection of our server (see "connections" below). */
struct http_conn {
	struct http_conns *all;
	struct bufferevent *bev;
	evutil_socket_t fd;             /* -1 until admitted */
	struct event *timer;            /* admission (at once), then the deadline of the phase */
	TAILQ_ENTRY(http_conn) waiting; /* in all->pending before admission, all->waiting in HEAD */
	struct client_count *client;
	struct evbuffer_cb_entry *incb;
	struct http_req *req; /* the handler running for it, cancelled if the connection goes */
	int phase;
	int line_start; /* head scan: at the start of a line (a blank line ends the head) */
};

#define CLIENT_BUCKETS 1024

struct http_conns {
	struct engine *eng;
	int open; /* admitted connections */
	struct http_conn **by_fd;
	int nfd;
	TAILQ_HEAD(, http_conn) pending; /* accepted, not yet admitted */
	TAILQ_HEAD(, http_conn) waiting; /* waiting for a head, oldest first */
	struct client_count *clients[CLIENT_BUCKETS];
	uint64_t refused_warned; /* metrics.conns_refused when the last warning was logged */
	time_t last_warn;
};

/* Request ids need to be unique, not secret: xorshift64 per engine, seeded once from the kernel. */
static void new_request_id(struct engine *e, char *out, size_t n)
{
	uint64_t v = e->reqid_state;
	if (v == 0 && (getrandom(&v, sizeof v, 0) != sizeof v || v == 0))
		v = 0x9e3779b97f4a7c15ULL ^ (uint64_t)time(NULL);
	v ^= v << 13;
	v ^= v >> 7;
	v ^= v << 17;
	e->reqid_state = v;
	static const char hex[] = "0123456789abcdef";
	for (int i = 15; i >= 0; i--, v >>= 4)
		out[i] = hex[v & 15];
	out[16] = '\0';
	(void)n;
}

/* Accept a caller's X-Request-Id only if it is short and plain. */
static int good_request_id(const char *s)
{
	size_t n = 0;
	for (; s[n]; n++) {
		char c = s[n];
		if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '-' ||
		      c == '_' || c == '.') ||
		    n >= 64)
			return 0;
	}
	return n > 0;
}

static const char *reason_phrase(int status)
{
	switch (status) {
	case 200:
		return "OK";
	case 201:
		return "Created";
	case 202:
		return "Accepted";
	case 204:
		return "No Content";
	case 400:
		return "Bad Request";
	case 401:
		return "Unauthorized";
	case 403:
		return "Forbidden";
	case 404:
		return "Not Found";
	case 405:
		return "Method Not Allowed";
	case 409:
		return "Conflict";
	case 413:
		return "Payload Too Large";
	case 422:
		return "Unprocessable Entity";
	case 429:
		return "Too Many Requests";
	case 500:
		return "Internal Server Error";
	case 502:
		return "Bad Gateway";
	case 503:
		return "Service Unavailable";
	case 504:
		return "Gateway Timeout";
	default:
		return status < 400 ? "OK" : "Error";
	}
}

static const char *method_name(struct evhttp_request *r);

/* The request's path as sent (not decoded); "/" when it has none. */
static const char *request_path(struct evhttp_request *r)
{
	const char *p = evhttp_uri_get_path(evhttp_request_get_evhttp_uri(r));
	return p && *p ? p : "/";
}

/* ---- finishing ---- */

static void stop_watching(struct http_req *h)
{
	if (h->peer_closed)
		event_free(h->peer_closed);
	h->peer_closed = NULL;
}

static void req_release(struct http_req *h)
{
	stop_watching(h);
	if (h->finished)
		*h->finished = 1;
	if (h->box)
		*h->box = NULL;
	if (h->counted)
		h->eng->http_inflight--;
	free(h);
}

/* Send the answer (takes ownership of body) and free h. The one place a reply leaves. */
static void send_now(struct http_req *h, int status, const char *ctype, struct evbuffer *body)
{
	struct engine *e = h->eng;
	struct evkeyvalq *out = evhttp_request_get_output_headers(h->req);
	struct timeval now;

	if (h->conn)
		h->conn->req = NULL;
	else
		evhttp_connection_set_closecb(h->evcon, NULL, NULL);
	stop_watching(h); /* evhttp reads the next request from here on */
	evhttp_add_header(out, "X-Request-Id", h->id);
	if (ctype && !evhttp_find_header(out, "Content-Type"))
		evhttp_add_header(out, "Content-Type", ctype);
	gettimeofday(&now, NULL);
	double seconds = (double)(now.tv_sec - h->start.tv_sec) + (double)(now.tv_usec - h->start.tv_usec) / 1e6;
	metrics_observe_request(&e->metrics, status, seconds);
	if (e->log.level <= LOG_DEBUG) /* the access log: one line per answer, at debug level */
		log_debug(&e->log, h->id, "%s %s -> %d in %.1f ms", method_name(h->req), evhttp_request_get_uri(h->req),
		          status, seconds * 1e3);
	evhttp_send_reply(h->req, status, reason_phrase(status), body); /* may free h->req */
	if (body)
		evbuffer_free(body);
	req_release(h);
}

/* The batch the answer waited for ended: send it, or, when the batch was lost, a 503 instead. */
static void on_committed(struct store_waiter *w, int ok)
{
	struct http_req *h = STORE_WAITER_OWNER(w, struct http_req, commit);
	struct evbuffer *body = h->pending_body;
	h->pending_body = NULL;
	if (ok) {
		send_now(h, h->pending_status, h->pending_ctype, body);
		return;
	}
	if (body)
		evbuffer_free(body);
	evbuffer_drain(evhttp_request_get_output_buffer(h->req), (size_t)-1);
	evhttp_clear_headers(evhttp_request_get_output_headers(h->req));
	http_answer_error(h, 503, "storage_failed", "the database could not save this request's work; try again");
}

/*
** No answer outruns the disk: one made while the turn's batch is open may
** show what that batch wrote, so it leaves when the batch is durable.
*/
void http_answer(struct http_req *h, int status, const char *ctype, struct evbuffer *body)
{
	if (!store_dirty(h->eng->store)) {
		send_now(h, status, ctype, body);
		return;
	}
	h->pending_status = status;
	h->pending_ctype = ctype;
	h->pending_body = body;
	h->commit.fn = on_committed;
	store_wait_commit(h->eng->store, &h->commit);
	if (h->finished) { /* the handler is done: no need to watch for hang-ups for these few moments */
		*h->finished = 1;
		h->finished = NULL;
	}
}

void http_answer_error(struct http_req *h, int status, const char *code, const char *message)
{
	struct evbuffer *b = evbuffer_new();
	evbuffer_add_printf(b, "{\"error\":");
	json_add_string(b, code);
	evbuffer_add_printf(b, ",\"message\":");
	json_add_string(b, message);
	evbuffer_add_printf(b, "}");
	http_answer(h, status, "application/json; charset=utf-8", b);
}

/* Copy the handler's headers table (index idx of co) into the reply; bad ones are logged and skipped. */
static void copy_headers(struct http_req *h, lua_State *co, int idx)
{
	struct evkeyvalq *out = evhttp_request_get_output_headers(h->req);
	lua_pushnil(co);
	while (lua_next(co, idx)) {
		const char *k = lua_type(co, -2) == LUA_TSTRING ? lua_tostring(co, -2) : NULL;
		const char *v =
		    lua_type(co, -1) == LUA_TSTRING || lua_type(co, -1) == LUA_TNUMBER ? lua_tostring(co, -1) : NULL;
		if (!k || !v || strpbrk(k, "\r\n: ") || strpbrk(v, "\r\n"))
			log_warn(&h->eng->log, h->id,
			         "handler returned a header that is not a plain string pair; dropped");
		else
			evhttp_add_header(out, k, v);
		lua_pop(co, 1);
	}
}

/* The handler finished normally: (status, body, headers) on co. */
static void answer_results(struct http_req *h, lua_State *co)
{
	int isint = 0;
	lua_Integer status = lua_tointegerx(co, 1, &isint);
	if (!isint || status < 100 || status > 599) {
		log_error(&h->eng->log, h->id, "handler returned no valid HTTP status");
		http_answer_error(h, 500, "internal_error", "the handler returned no valid HTTP status");
		return;
	}
	size_t len = 0;
	const char *body = lua_type(co, 2) == LUA_TSTRING ? lua_tolstring(co, 2, &len) : NULL;
	if (body)
		evbuffer_add(evhttp_request_get_output_buffer(h->req), body, len);
	if (lua_istable(co, 3))
		copy_headers(h, co, 3);
	http_answer(h, (int)status, body ? "application/json; charset=utf-8" : NULL, NULL);
}

/* The handler raised: a {status=, error=, message=} table is an answer, anything else a 500. */
static void answer_error(struct http_req *h, struct coro *c, int status)
{
	struct engine *e = h->eng;
	char buf[4096];
	const char *code, *msg;
	int st;

	if (coro_fail_answer(c, status, &st, &code, &msg)) {
		http_answer_error(h, st, code, msg);
		return;
	}
	e->metrics.script_errors++;
	if (c->budget.killed) {
		e->metrics.script_kills++;
		log_error(&e->log, h->id, "handler stopped: it exceeded its instruction budget");
		http_answer_error(h, 500, "script_timeout", "the handler ran too long and was stopped");
		return;
	}
	log_error(&e->log, h->id, "handler failed: %s", coro_error_text(c, status, buf, sizeof buf));
	http_answer_error(h, 500, "internal_error",
	                  status == LUA_ERRMEM ? "the handler ran out of memory"
	                                       : "the handler failed; the log has the details under this request id");
}

/*
** The engine is freed while the handler waits and the connection is not
** ours (a request handed over by the host's evhttp, which outlives the
** engine): answer 503 so the host's connection is left clean.
*/
static void req_abandon(struct coro *c)
{
	struct http_req *h = c->owner;
	h->co = NULL;
	http_answer_error(h, 503, "shutting_down", "the gateway stopped before the handler finished; try again");
}

static void req_done(struct coro *c, int status)
{
	struct http_req *h = c->owner;
	h->co = NULL;
	if (status == LUA_OK)
		answer_results(h, c->co);
	else
		answer_error(h, c, status);
	coro_free(c);
}

/*
** The connection is going away (evhttp saw EOF or a timeout, or we free it
** below): cancel the handler and free everything it held.
*/
static void on_close(struct evhttp_connection *evcon, void *arg)
{
	struct http_req *h = arg;
	(void)evcon;
	h->eng->metrics.client_aborts++;
	log_info(&h->eng->log, h->id, "client disconnected; handler cancelled");
	if (h->co)
		coro_cancel(h->co);
	h->co = NULL;
	if (h->conn)
		h->conn->req = NULL;
	store_cancel_wait(&h->commit); /* an answer that waited for the batch is dropped */
	if (h->pending_body)
		evbuffer_free(h->pending_body);
	/* On a client's EOF evhttp detaches the request and leaves it to us; when the
	   whole server is being freed it is still attached and evhttp frees it. */
	if (!evhttp_request_get_connection(h->req))
		evhttp_request_free(h->req);
	req_release(h);
}

/*
** evhttp (2.1) stops reading a connection while its request is handled, so
** it would only notice a client that hung up when the answer is written.
** An EV_CLOSED event (EPOLLRDHUP) on the socket sees the hang-up without
** reading anything, so pipelined requests stay in the socket for evhttp.
** Freeing the connection runs on_close, which cancels the handler.
*/
static void on_peer_closed(evutil_socket_t fd, short what, void *arg)
{
	struct http_req *h = arg;
	(void)fd;
	(void)what;
	stop_watching(h);
	evhttp_connection_free(h->evcon);
}

static void watch_peer(struct http_req *h)
{
	struct bufferevent *bev = evhttp_connection_get_bufferevent(h->evcon);
	evutil_socket_t fd = bev ? bufferevent_getfd(bev) : -1;
	if (fd < 0 || !(event_base_get_features(h->eng->base) & EV_FEATURE_EARLY_CLOSE))
		return; /* no early-close support: noticed when answering */
	h->peer_closed = event_new(h->eng->base, fd, EV_CLOSED, on_peer_closed, h);
	if (h->peer_closed && event_add(h->peer_closed, NULL) < 0)
		stop_watching(h);
}

/* ---- the request object scripts see ---- */

static struct http_req *check_req(lua_State *L)
{
	struct http_req **box = luaL_checkudata(L, 1, REQ_MT);
	if (!*box)
		luaL_error(L, "this request has finished; do not keep request objects after the handler returns");
	return *box;
}

struct evhttp_request *http_request_of(lua_State *L, int idx)
{
	struct http_req **box = luaL_testudata(L, idx, REQ_MT);
	return box && *box ? (*box)->req : NULL;
}

static int l_req_header(lua_State *L)
{
	struct http_req *h = check_req(L);
	const char *v = evhttp_find_header(evhttp_request_get_input_headers(h->req), luaL_checkstring(L, 2));
	if (v)
		lua_pushstring(L, v);
	else
		lua_pushnil(L);
	return 1;
}

static int l_req_headers(lua_State *L)
{
	struct http_req *h = check_req(L);
	struct evkeyval *kv;
	lua_newtable(L);
	TAILQ_FOREACH(kv, evhttp_request_get_input_headers(h->req), next)
	{
		luaL_Buffer b;
		luaL_buffinit(L, &b);
		for (const char *k = kv->key; *k; k++)
			luaL_addchar(&b, (char)(*k >= 'A' && *k <= 'Z' ? *k + 32 : *k));
		luaL_pushresult(&b);
		lua_pushstring(L, kv->value);
		lua_rawset(L, -3);
	}
	return 1;
}

static int l_req_body(lua_State *L)
{
	struct http_req *h = check_req(L);
	struct evbuffer *in = evhttp_request_get_input_buffer(h->req);
	size_t n = evbuffer_get_length(in);
	lua_pushlstring(L, n ? (const char *)evbuffer_pullup(in, -1) : "", n);
	return 1;
}

static const char *method_name(struct evhttp_request *r)
{
	switch (evhttp_request_get_command(r)) {
	case EVHTTP_REQ_GET:
		return "GET";
	case EVHTTP_REQ_POST:
		return "POST";
	case EVHTTP_REQ_PUT:
		return "PUT";
	case EVHTTP_REQ_DELETE:
		return "DELETE";
	case EVHTTP_REQ_HEAD:
		return "HEAD";
	case EVHTTP_REQ_PATCH:
		return "PATCH";
	case EVHTTP_REQ_OPTIONS:
		return "OPTIONS";
	default:
		return "OTHER";
	}
}

/* req.method, req.path, req.query, req.id, req.remote, req.admin; other fields live in the uservalue table. */
static int l_req_index(lua_State *L)
{
	struct http_req *h = check_req(L);
	const char *k = luaL_checkstring(L, 2);
	const struct evhttp_uri *u = evhttp_request_get_evhttp_uri(h->req);

	if (strcmp(k, "method") == 0) {
		lua_pushstring(L, method_name(h->req));
	} else if (strcmp(k, "path") == 0) {
		lua_pushstring(L, request_path(h->req));
	} else if (strcmp(k, "query") == 0) {
		const char *q = evhttp_uri_get_query(u);
		lua_pushstring(L, q ? q : "");
	} else if (strcmp(k, "id") == 0) {
		lua_pushstring(L, h->id);
	} else if (strcmp(k, "admin") == 0) {
		if (h->admin[0])
			lua_pushstring(L, h->admin);
		else
			lua_pushnil(L);
	} else if (strcmp(k, "remote") == 0) {
		const char *addr = NULL;
		ev_uint16_t port = 0;
		evhttp_connection_get_peer(h->evcon, (char **)&addr, &port);
		lua_pushstring(L, addr ? addr : "");
	} else if (luaL_getmetafield(L, 1, "methods") == LUA_TTABLE && lua_getfield(L, -1, k) != LUA_TNIL) {
		return 1;
	} else if (lua_getiuservalue(L, 1, 1) == LUA_TTABLE) {
		lua_getfield(L, -1, k);
	} else {
		lua_pushnil(L);
	}
	return 1;
}

/* Fields scripts set (req.params, req.user ...) go to a table made on first use. */
static int l_req_newindex(lua_State *L)
{
	check_req(L);
	if (lua_getiuservalue(L, 1, 1) != LUA_TTABLE) {
		lua_pop(L, 1);
		lua_newtable(L);
		lua_pushvalue(L, -1);
		lua_setiuservalue(L, 1, 1);
	}
	lua_replace(L, 1);
	lua_rawset(L, 1);
	return 0;
}

/* The request object was collected (it can be, once the handler no longer holds it): forget it. */
static int l_req_gc(lua_State *L)
{
	struct http_req **box = lua_touserdata(L, 1);
	if (*box)
		(*box)->box = NULL;
	*box = NULL;
	return 0;
}

void http_register_lua(lua_State *L)
{
	static const luaL_Reg methods[] = { { "header", l_req_header },
		                            { "headers", l_req_headers },
		                            { "body", l_req_body },
		                            { NULL, NULL } };
	luaL_newmetatable(L, REQ_MT);
	lua_pushcfunction(L, l_req_index);
	lua_setfield(L, -2, "__index");
	lua_pushcfunction(L, l_req_newindex);
	lua_setfield(L, -2, "__newindex");
	lua_pushcfunction(L, l_req_gc);
	lua_setfield(L, -2, "__gc");
	lua_pushboolean(L, 0);
	lua_setfield(L, -2, "__metatable");
	luaL_newlib(L, methods);
	lua_setfield(L, -2, "methods");
	lua_pop(L, 1);
}

/* Push app._dispatch, the request userdata, its method and path (the router needs both at once). */
static int push_dispatch(lua_State *L, void *arg)
{
	struct http_req *h = arg;
	struct gen *g = jail_of(L)->owner;
	lua_rawgeti(L, LUA_REGISTRYINDEX, g->dispatch_ref);
	struct http_req **box = lua_newuserdatauv(L, sizeof *box, 1);
	*box = h;
	h->box = box;
	luaL_setmetatable(L, REQ_MT);
	lua_pushstring(L, method_name(h->req));
	lua_pushstring(L, request_path(h->req));
	return 3;
}

/* ---- connections: caps per worker and per client address, deadlines for the head and the body ----
**
** evhttp 2.1 has no hook when a request starts and no deadline but an idle
** timeout that every byte restarts. So each accepted connection gets a
** bufferevent of ours (evhttp_set_bevcb) and, once evhttp has given it its
** socket (an event made active at accept, run before anything is read), it
** is admitted: counted and given a close callback, or refused at once with
** a fixed 503. A callback on its input buffer sees the head's bytes arrive,
** so we know when the head ended. Then:
**   HEAD  until the blank line that ends the head: header_timeout_ms
**   BODY  until evhttp hands us the whole request: body_timeout_ms
**   BUSY  while the request is handled and answered: no deadline
** and after the answer went out, HEAD again (a kept-alive connection waits
** for its next request under the same deadline). At the deadline the
** connection is closed, whatever bytes still trickle in.
*/
static const char over_cap_answer[] =
    "HTTP/1.1 503 Service Unavailable\r\n"
    "Content-Type: application/json; charset=utf-8\r\n"
    "Content-Length: 77\r\n"
    "Retry-After: 1\r\n"
    "Connection: close\r\n\r\n"
    "{\"error\":\"too_many_connections\",\"message\":\"too many open connections; retry\"}";

static struct evhttp_connection *conn_evcon(struct http_conn *c)
{
	void *arg = NULL;
	bufferevent_getcb(c->bev, NULL, NULL, NULL, &arg); /* evhttp's callbacks, cleared when it lets go */
	return arg;
}

static void conn_phase(struct http_conn *c, int phase)
{
	struct http_conns *all = c->all;
	if (c->phase == CONN_HEAD)
		TAILQ_REMOVE(&all->waiting, c, waiting);
	c->phase = phase;
	c->line_start = 0;
	if (phase == CONN_BUSY) {
		evtimer_del(c->timer);
		return;
	}
	int ms = phase == CONN_HEAD ? all->eng->cfg.header_timeout_ms : all->eng->cfg.body_timeout_ms;
	struct timeval tv = { ms / 1000, (ms % 1000) * 1000 };
	if (phase == CONN_HEAD)
		TAILQ_INSERT_TAIL(&all->waiting, c, waiting);
	evtimer_add(c->timer, &tv);
}

/* evhttp lets go of the connection (it closes the socket next): forget it, cancel its handler. */
static void on_conn_closed(struct evhttp_connection *evcon, void *arg)
{
	struct http_conn *c = arg;
	struct http_conns *all = c->all;
	if (c->req)
		on_close(evcon, c->req); /* clears c->req */
	conn_phase(c, CONN_BUSY);
	if (c->incb)
		evbuffer_remove_cb_entry(bufferevent_get_input(c->bev), c->incb);
	all->open--;
	if (c->client && --c->client->n == 0) {
		struct client_count **p = &all->clients[c->client->addr[c->client->len - 1] % CLIENT_BUCKETS];
		while (*p != c->client)
			p = &(*p)->next;
		*p = c->client->next;
		free(c->client);
	}
	if (c->fd < all->nfd && all->by_fd[c->fd] == c)
		all->by_fd[c->fd] = NULL;
	event_free(c->timer);
	free(c);
}

static void conn_close(struct http_conn *c)
{
	struct evhttp_connection *evcon = conn_evcon(c);
	assert(evcon);                 /* evhttp clears its callbacks only after calling on_conn_closed */
	evhttp_connection_free(evcon); /* on_conn_closed frees c */
}

static void conn_refuse(struct http_conn *c, const char *why)
{
	struct http_conns *all = c->all;
	uint64_t *refused = &all->eng->metrics.conns_refused;
	++*refused;
	/* One try to say why, without waiting or reading: whatever does not fit the socket is not sent. */
	ssize_t sent = send(c->fd, over_cap_answer, sizeof over_cap_answer - 1, MSG_DONTWAIT | MSG_NOSIGNAL);
	(void)sent;
	time_t now = time(NULL);
	if (now != all->last_warn) {
		log_warn(&all->eng->log, NULL, "refused %llu connection(s) at accept: %s",
		         (unsigned long long)(*refused - all->refused_warned), why);
		all->last_warn = now;
		all->refused_warned = *refused;
	}
	conn_close(c);
}

static struct client_count *client_of(struct http_conns *all, evutil_socket_t fd)
{
	struct sockaddr_storage ss;
	socklen_t len = sizeof ss;
	unsigned char key[16];
	int klen;
	if (getpeername(fd, (struct sockaddr *)&ss, &len) < 0)
		return NULL;
	if (ss.ss_family == AF_INET) {
		memcpy(key, &((struct sockaddr_in *)&ss)->sin_addr, 4);
		klen = 4;
	} else if (ss.ss_family == AF_INET6) {
		memcpy(key, &((struct sockaddr_in6 *)&ss)->sin6_addr, 16);
		klen = 16;
	} else {
		return NULL;
	}
	struct client_count **head = &all->clients[key[klen - 1] % CLIENT_BUCKETS], *k;
	for (k = *head; k; k = k->next)
		if (k->len == klen && memcmp(k->addr, key, (size_t)klen) == 0)
			return k;
	if (!(k = calloc(1, sizeof *k)))
		return NULL;
	memcpy(k->addr, key, (size_t)klen);
	k->len = klen;
	k->next = *head;
	*head = k;
	return k;
}

/* While the head comes in, look for the blank line that ends it (in the bytes just added). */
static void on_conn_input(struct evbuffer *buf, const struct evbuffer_cb_info *info, void *arg)
{
	struct http_conn *c = arg;
	if (c->phase != CONN_HEAD || info->n_added == 0)
		return;
	struct evbuffer_ptr at;
	struct evbuffer_iovec v[4];
	if (evbuffer_ptr_set(buf, &at, evbuffer_get_length(buf) - info->n_added, EVBUFFER_PTR_SET) < 0)
		return;
	int n = evbuffer_peek(buf, (ev_ssize_t)info->n_added, &at, v, 4);
	size_t left = info->n_added;
	for (int i = 0; i < n && i < 4 && left > 0; i++) {
		const unsigned char *p = v[i].iov_base;
		size_t len = v[i].iov_len < left ? v[i].iov_len : left;
		left -= len;
		for (size_t j = 0; j < len; j++) {
			if (p[j] == '\n') {
				if (c->line_start) {
					conn_phase(c, CONN_BODY);
					return;
				}
				c->line_start = 1;
			} else if (p[j] != '\r') {
				c->line_start = 0;
			}
		}
	}
}

/* evhttp has given the connection its socket: count it, or refuse it. */
static void conn_admit(struct http_conn *c)
{
	struct http_conns *all = c->all;
	struct engine *e = all->eng;
	struct evhttp_connection *evcon = conn_evcon(c);
	TAILQ_REMOVE(&all->pending, c, waiting);
	c->fd = bufferevent_getfd(c->bev);
	if (!evcon || c->fd < 0) { /* evhttp could not take it after all (and has freed it) */
		event_free(c->timer);
		free(c);
		return;
	}
	evhttp_connection_set_closecb(evcon, on_conn_closed, c);
	c->phase = CONN_BUSY;
	all->open++;
	if (c->fd >= all->nfd) {
		int n = all->nfd ? all->nfd : 1024;
		while (n <= c->fd)
			n *= 2;
		struct http_conn **t = realloc(all->by_fd, (size_t)n * sizeof *t);
		if (!t) {
			conn_refuse(c, "out of memory");
			return;
		}
		memset(t + all->nfd, 0, (size_t)(n - all->nfd) * sizeof *t);
		all->by_fd = t;
		all->nfd = n;
	}
	all->by_fd[c->fd] = c;
	if ((c->client = client_of(all, c->fd)))
		c->client->n++;
	int per = e->cfg.max_connections_per_client;
	if (per > 0 && c->client && c->client->n > per) {
		conn_refuse(c, "limits.max_connections_per_client reached for a client address");
		return;
	}
	if (all->open > e->cfg.max_connections) {
		/* Full: the connection that has waited longest for a head makes room (it has not sent a
		   whole request head: idle between requests, or slow); with none, the newcomer is refused. */
		struct http_conn *old = TAILQ_FIRST(&all->waiting);
		if (!old) {
			conn_refuse(c, "limits.max_connections reached, every connection busy with a request");
			return;
		}
		e->metrics.conns_evicted++;
		conn_close(old);
	}
	c->incb = evbuffer_add_cb(bufferevent_get_input(c->bev), on_conn_input, c);
	conn_phase(c, CONN_HEAD);
}

static void on_conn_timer(evutil_socket_t fd, short what, void *arg)
{
	struct http_conn *c = arg;
	struct engine *e = c->all->eng;
	(void)fd;
	(void)what;
	if (c->phase == CONN_NEW) {
		conn_admit(c);
		return;
	}
	e->metrics.conns_expired++;
	log_info(&e->log, NULL, "closed a connection that took over %d ms to send its request %s",
	         c->phase == CONN_HEAD ? e->cfg.header_timeout_ms : e->cfg.body_timeout_ms,
	         c->phase == CONN_HEAD ? "head" : "body");
	conn_close(c);
}

static struct bufferevent *on_new_connection(struct event_base *base, void *arg)
{
	struct engine *e = arg;
	struct http_conn *c = calloc(1, sizeof *c);
	if (!c)
		return NULL; /* evhttp makes its own: served, but neither counted nor timed */
	c->all = e->conns;
	c->fd = -1;
	c->phase = CONN_NEW;
	if (!(c->timer = evtimer_new(base, on_conn_timer, c)) || !(c->bev = bufferevent_socket_new(base, -1, 0))) {
		if (c->timer)
			event_free(c->timer);
		free(c);
		return NULL;
	}
	TAILQ_INSERT_TAIL(&c->all->pending, c, waiting);
	event_active(c->timer, EV_TIMEOUT, 1); /* admitted once evhttp has set the socket, before it reads */
	return c->bev;
}

/* Our record of the connection a request came on; NULL for a request handed over by a host's evhttp. */
static struct http_conn *conn_of(struct engine *e, struct evhttp_request *req)
{
	struct evhttp_connection *evcon = evhttp_request_get_connection(req);
	struct bufferevent *bev = evcon ? evhttp_connection_get_bufferevent(evcon) : NULL;
	evutil_socket_t fd = bev ? bufferevent_getfd(bev) : -1;
	struct http_conns *all = e->conns;
	if (!all || fd < 0 || fd >= all->nfd || !all->by_fd[fd] || all->by_fd[fd]->bev != bev)
		return NULL;
	return all->by_fd[fd];
}

/* The answer is written: a kept-alive connection waits for its next head. */
static void on_answer_sent(struct evhttp_request *req, void *arg)
{
	struct http_conn *c = arg;
	(void)req;
	if (c->phase == CONN_BUSY)
		conn_phase(c, CONN_HEAD);
}

static void conns_free(struct http_conns *all)
{
	while (!TAILQ_EMPTY(&all->pending)) { /* accepted this turn, not yet admitted */
		struct http_conn *c = TAILQ_FIRST(&all->pending);
		TAILQ_REMOVE(&all->pending, c, waiting);
		event_free(c->timer);
		free(c);
	}
	for (int i = 0; i < CLIENT_BUCKETS; i++)
		while (all->clients[i]) {
			struct client_count *k = all->clients[i];
			all->clients[i] = k->next;
			free(k);
		}
	free(all->by_fd);
	free(all);
}

/*
** Ambiguous framing is how requests are smuggled past a proxy that reads
** them differently: refuse it outright. Two equal Content-Length headers are
** refused too; nothing legitimate sends them, and a proxy may not agree.
*/
static const char *ambiguous_framing(struct evhttp_request *req)
{
	int cl = 0, te = 0;
	const char *te_value = NULL;
	struct evkeyval *kv;
	TAILQ_FOREACH(kv, evhttp_request_get_input_headers(req), next)
	{
		if (evutil_ascii_strcasecmp(kv->key, "Content-Length") == 0)
			cl++;
		else if (evutil_ascii_strcasecmp(kv->key, "Transfer-Encoding") == 0)
			te++, te_value = kv->value;
	}
	if (cl > 1)
		return "the request has more than one Content-Length header";
	if (cl && te)
		return "the request has both Content-Length and Transfer-Encoding";
	if (te > 1 || (te && evutil_ascii_strcasecmp(te_value, "chunked") != 0))
		return "the only Transfer-Encoding accepted is one 'chunked'";
	return NULL;
}

static void on_request(struct evhttp_request *req, void *arg)
{
	struct engine *e = arg;
	struct http_conn *conn = conn_of(e, req);
	if (conn) { /* the request is in: no deadline while it is handled; the next one's starts when this is sent */
		conn_phase(conn, CONN_BUSY);
		evhttp_request_set_on_complete_cb(req, on_answer_sent, conn);
	}
	struct http_req *h = calloc(1, sizeof *h);
	if (!h) {
		evhttp_send_error(req, 503, "Service Unavailable");
		return;
	}
	h->eng = e;
	h->req = req;
	h->conn = conn;
	h->evcon = evhttp_request_get_connection(req);
	gettimeofday(&h->start, NULL);
	const char *rid = evhttp_find_header(evhttp_request_get_input_headers(req), "X-Request-Id");
	if (rid && good_request_id(rid))
		snprintf(h->id, sizeof h->id, "%s", rid);
	else
		new_request_id(e, h->id, sizeof h->id);

	enum evhttp_cmd_type cmd = evhttp_request_get_command(req);
	const char *path = request_path(req);
	const char *bad_framing = ambiguous_framing(req);
	if (bad_framing) { /* whatever follows on this connection is not read */
		evhttp_add_header(evhttp_request_get_output_headers(req), "Connection", "close");
		http_answer_error(h, 400, "bad_framing", bad_framing);
		return;
	}
	if (cmd == EVHTTP_REQ_TRACE || cmd == EVHTTP_REQ_CONNECT) {
		http_answer_error(h, 405, "method_not_allowed", "this method is not allowed");
		return;
	}
	if (e->http_front && e->http_front(h, path, cmd))
		return;
	if (!e->gen) {
		http_answer_error(h, 503, "no_scripts", "no script generation is loaded; see /healthz");
		return;
	}
	struct coro *c = coro_start(e, e->gen, push_dispatch, h, req_done, h, h->id);
	if (!c) {
		http_answer_error(h, 503, "out_of_memory", "the script memory limit is reached; try again");
		return;
	}
	h->co = c;
	c->abandon = req_abandon;
	c->what = path;
	h->counted = 1;
	e->http_inflight++;
	if (conn)
		conn->req = h; /* on_conn_closed runs on_close */
	else
		evhttp_connection_set_closecb(h->evcon, on_close, h);
	int finished = 0;
	h->finished = &finished;
	coro_go(c);
	if (!finished) {
		/* The handler is waiting: from now on a hang-up must cancel it. Handlers
		   that answer at once never pay for the watch. */
		h->finished = NULL;
		watch_peer(h);
	}
}

void http_handle_request(struct engine *e, struct evhttp_request *req)
{
	on_request(req, e);
}

struct engine *http_engine(const struct http_req *h)
{
	return h->eng;
}

struct evhttp_request *http_evreq(const struct http_req *h)
{
	return h->req;
}

void http_set_admin(struct http_req *h, const char *who)
{
	snprintf(h->admin, sizeof h->admin, "%s", who);
}

/* ---- server set-up ---- */

int http_init(struct engine *e, http_front_fn front, char *err, size_t errlen)
{
	e->http_front = front;
	e->http = evhttp_new(e->base);
	e->conns = calloc(1, sizeof *e->conns);
	if (!e->http || !e->conns) {
		snprintf(err, errlen, "cannot create the HTTP server");
		return -1;
	}
	evhttp_set_max_headers_size(e->http, (ev_ssize_t)e->cfg.max_header_bytes);
	evhttp_set_max_body_size(e->http, (ev_ssize_t)e->cfg.max_body_bytes);
	evhttp_set_timeout(e->http, e->cfg.timeout_s);
	evhttp_set_allowed_methods(e->http, EVHTTP_REQ_GET | EVHTTP_REQ_POST | EVHTTP_REQ_PUT | EVHTTP_REQ_DELETE |
	                                        EVHTTP_REQ_HEAD | EVHTTP_REQ_PATCH | EVHTTP_REQ_OPTIONS |
	                                        EVHTTP_REQ_TRACE | EVHTTP_REQ_CONNECT); /* refused by us, in JSON */
	evhttp_set_default_content_type(e->http, "application/json; charset=utf-8");
	evhttp_set_gencb(e->http, on_request, e);
	e->conns->eng = e;
	TAILQ_INIT(&e->conns->pending);
	TAILQ_INIT(&e->conns->waiting);
	evhttp_set_bevcb(e->http, on_new_connection, e);
	return 0;
}

/* Connections beyond what the database, the log, the listener and a few outbound calls need. */
#define FD_RESERVE 64

/* Set the open-files limit the config asks for, and check that max_connections fits under it. */
static int fd_limit(struct engine *e, char *err, size_t errlen)
{
	struct rlimit rl;
	if (getrlimit(RLIMIT_NOFILE, &rl) < 0) {
		snprintf(err, errlen, "cannot read the open-files limit: %s", strerror(errno));
		return -1;
	}
	rlim_t want = (rlim_t)e->cfg.open_files;
	if (want > 0 && rl.rlim_cur != want) {
		struct rlimit nl = { want, want > rl.rlim_max ? want : rl.rlim_max };
		if (setrlimit(RLIMIT_NOFILE, &nl) < 0) {
			snprintf(
			    err, errlen,
			    "config: limits.open_files = %d, but the open-files limit cannot be raised above its hard "
			    "limit %llu (%s); raise the hard limit (ulimit -Hn, systemd LimitNOFILE=) or ask for less",
			    e->cfg.open_files, (unsigned long long)rl.rlim_max, strerror(errno));
			return -1;
		}
		rl = nl;
	}
	long long need = (long long)e->cfg.max_connections + FD_RESERVE;
	if (rl.rlim_cur != RLIM_INFINITY && (long long)rl.rlim_cur < need) {
		snprintf(
		    err, errlen,
		    "config: limits.max_connections = %d needs an open-files limit of at least %lld (%d more for the "
		    "database, the log and outbound calls), but it is %llu: raise limits.open_files (hard limit "
		    "%llu) or lower limits.max_connections",
		    e->cfg.max_connections, need, FD_RESERVE, (unsigned long long)rl.rlim_cur,
		    (unsigned long long)rl.rlim_max);
		return -1;
	}
	return 0;
}

/* Serve on the bound socket s: remember it and the port it has. */
static void listening(struct engine *e, struct evhttp_bound_socket *s)
{
	e->listener = s;
	struct sockaddr_storage ss;
	socklen_t len = sizeof ss;
	evutil_socket_t fd = evhttp_bound_socket_get_fd(s);
	if (getsockname(fd, (struct sockaddr *)&ss, &len) == 0)
		e->port = ntohs(ss.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&ss)->sin6_port
		                                         : ((struct sockaddr_in *)&ss)->sin_port);
}

int http_listen(struct engine *e, const char *host, int port, char *err, size_t errlen)
{
	if (fd_limit(e, err, errlen) < 0)
		return -1;
	struct evhttp_bound_socket *s = evhttp_bind_socket_with_handle(e->http, host, (ev_uint16_t)port);
	if (!s) {
		snprintf(err, errlen, "cannot listen on %s:%d (in use, or not a local address?)", host, port);
		return -1;
	}
	listening(e, s);
	return 0;
}

int http_accept_on(struct engine *e, int fd, char *err, size_t errlen)
{
	if (fd_limit(e, err, errlen) < 0)
		return -1;
	struct evhttp_bound_socket *s = evhttp_accept_socket_with_handle(e->http, fd);
	if (!s) {
		snprintf(err, errlen, "cannot accept on the shared listening socket (fd %d)", fd);
		return -1;
	}
	listening(e, s);
	return 0;
}

void http_stop_accepting(struct engine *e)
{
	if (e->http && e->listener)
		evhttp_del_accept_socket(e->http, e->listener);
	e->listener = NULL;
}

void http_free(struct engine *e)
{
	if (e->http)
		evhttp_free(e->http); /* each connection's record goes with it (on_conn_closed) */
	e->http = NULL;
	if (e->conns)
		conns_free(e->conns);
	e->conns = NULL;
}

/* host.c — the embedding host and the scripts calling each other: host functions, host calls, host events. */
#include "host.h"

#include <assert.h>
#include <stdlib.h>
#include <string.h>

#include <event2/buffer.h>
#include <event2/event.h>
#include <lauxlib.h>

#include "coro.h"
#include "engine.h"
#include "gen.h"
#include "jail.h"
#include "json.h"
#include "store.h"

/*
** Two directions, both per engine (nothing here is process-wide):
**
**   host → scripts   paygate_call / paygate_emit queue a host_call; its own
**                    event starts a coroutine running app._call(name, json)
**                    or app._emit(event, json) on the current generation;
**                    when it ends the same event delivers the result to the
**                    host's callback on a later loop turn. So a callback never
**                    runs inside paygate_call, and Lua never runs inside a
**                    host function (which may itself call paygate_call).
**
**   scripts → host   `host.<name>(value)` encodes value as JSON, calls the C
**                    function registered under name now, and decodes what it
**                    appended to the reply buffer. The name is looked up at
**                    each call, so registering after a reload, or after the
**                    scripts loaded, needs nothing more.
*/

#define HOST_NAME_MAX_LEN 63
#define REPLY_MT          "paygate.host.reply"

struct host_fn {
	char name[HOST_NAME_MAX_LEN + 1];
	host_fn fn;
	void *arg;
	struct host_fn *next;
};

enum call_state { CALL_QUEUED, CALL_RUNNING, CALL_DONE };

struct host_call {
	struct host *h;
	char *name; /* exported function, or the event for an emit */
	char *json; /* its argument */
	int is_event;
	host_call_cb cb; /* NULL for an event */
	void *arg;
	struct event *ev; /* starts the call, later delivers its result */
	struct coro *co;  /* while running */
	enum call_state state;
	int status;
	char *result; /* JSON, set once DONE */
	char reqid[32];
	struct store_waiter commit; /* the result waits for the store's open batch */
	struct host_call *prev, *next;
};

/* A host function forwarded to the host's thread (own-thread mode), its script waiting. */
struct host_wait {
	struct host *h;
	unsigned long long id;
	struct coro *co;
	int rc;
	char *reply; /* NULL until the host answered */
	size_t len;
	struct host_wait *prev, *next;
};

struct host {
	struct engine *eng;
	struct host_fn *fns;
	host_forward_fn forward; /* own-thread mode: host functions run on the host's thread */
	void *forward_arg;
	struct host_wait *waits;
	unsigned long long wait_seq;
	struct host_call *calls; /* every call not yet delivered */
	int ncalls;
	unsigned long long seq; /* for request ids: call-1, event-2 ... */
	int freeing;
};

/* ---- the registry of host functions ---- */

static int good_name(const char *s)
{
	size_t n = 0;
	if (!s || !((*s >= 'A' && *s <= 'Z') || (*s >= 'a' && *s <= 'z') || *s == '_'))
		return 0;
	for (; s[n]; n++) {
		char c = s[n];
		if (!((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_'))
			return 0;
	}
	return n <= HOST_NAME_MAX_LEN;
}

static struct host_fn **find_fn(struct host *h, const char *name)
{
	struct host_fn **pp = &h->fns;
	while (*pp && strcmp((*pp)->name, name) != 0)
		pp = &(*pp)->next;
	return pp;
}

int host_init(struct engine *e)
{
	e->host = calloc(1, sizeof *e->host);
	if (!e->host)
		return -1;
	e->host->eng = e;
	return 0;
}

int host_register(struct engine *e, const char *name, host_fn fn, void *arg)
{
	struct host *h = e->host;
	if (!good_name(name))
		return -1;
	struct host_fn **pp = find_fn(h, name), *f = *pp;
	if (!fn) {
		if (f) {
			*pp = f->next;
			free(f);
		}
		return 0;
	}
	if (!f) {
		if (!(f = calloc(1, sizeof *f)))
			return -1;
		snprintf(f->name, sizeof f->name, "%s", name);
		*pp = f;
	}
	f->fn = fn;
	f->arg = arg;
	return 0;
}

int host_inflight(const struct engine *e)
{
	return e->host ? e->host->ncalls : 0;
}

/* ---- host → scripts: calls and events ---- */

static void call_tick(evutil_socket_t fd, short what, void *arg);

static void unlink_call(struct host_call *k)
{
	struct host *h = k->h;
	if (k->prev)
		k->prev->next = k->next;
	else
		h->calls = k->next;
	if (k->next)
		k->next->prev = k->prev;
	h->ncalls--;
}

static void free_call(struct host_call *k)
{
	store_cancel_wait(&k->commit);
	if (k->ev)
		event_free(k->ev);
	free(k->name);
	free(k->json);
	free(k->result);
	free(k);
}

/*
** Hand the result to the host and forget the call. The call is unlinked and
** freed before the callback runs, so the callback may call anything,
** paygate_free included.
*/
static void deliver(struct host_call *k)
{
	host_call_cb cb = k->cb;
	void *arg = k->arg;
	int status = k->status;
	char *result = k->result;

	k->result = NULL;
	unlink_call(k);
	free_call(k);
	if (cb)
		cb(arg, status,
		   result ? result : "{\"error\":\"out_of_memory\",\"message\":\"no memory for the result\"}");
	free(result);
}

/* Record an error result {"error": code, "message": message}. */
static void set_error(struct host_call *k, int status, const char *code, const char *message)
{
	struct evbuffer *b = evbuffer_new();
	k->status = status;
	free(k->result);
	k->result = NULL;
	if (!b)
		return;
	evbuffer_add_printf(b, "{\"error\":");
	json_add_string(b, code);
	evbuffer_add_printf(b, ",\"message\":");
	json_add_string(b, message);
	evbuffer_add(b, "}", 2); /* with the NUL */
	k->result = strdup((const char *)evbuffer_pullup(b, -1));
	evbuffer_free(b);
}

/* The call has its result: deliver it on the next loop turn (an event is simply forgotten). */
static void finish(struct host_call *k)
{
	k->state = CALL_DONE;
	k->co = NULL;
	if (k->is_event) {
		if (k->status != 200)
			log_error(&k->h->eng->log, k->reqid, "event %s not handled: %s", k->name,
			          k->result ? k->result : "out of memory");
		unlink_call(k);
		free_call(k);
		return;
	}
	event_active(k->ev, EV_TIMEOUT, 0);
}

/* The coroutine raised: app.fail's {status, error, message} passes through, anything else is a 500. */
static void error_result(struct host_call *k, struct coro *c, int status)
{
	struct engine *e = k->h->eng;
	char buf[4096];
	const char *code, *msg;
	int st;

	if (coro_fail_answer(c, status, &st, &code, &msg)) {
		set_error(k, st, code, msg);
		return;
	}
	e->metrics.script_errors++;
	if (c->budget.killed) {
		e->metrics.script_kills++;
		log_error(&e->log, k->reqid, "%s stopped: it exceeded its instruction budget", k->name);
		set_error(k, 500, "script_timeout", "the function ran too long and was stopped");
		return;
	}
	log_error(&e->log, k->reqid, "%s failed: %s", k->name, coro_error_text(c, status, buf, sizeof buf));
	set_error(k, 500, "internal_error",
	          status == LUA_ERRMEM ? "the function ran out of memory"
	                               : "the function failed; the log has the details under this request id");
}

static void call_done(struct coro *c, int status)
{
	struct host_call *k = c->owner;

	if (status == LUA_OK) {
		const char *s = lua_gettop(c->co) > 0 ? lua_tostring(c->co, -1) : NULL;
		k->status = 200;
		k->result = strdup(s ? s : "null");
	} else {
		error_result(k, c, status);
	}
	coro_free(c);
	finish(k);
}

/* The engine is freed while the call waits: it ends as cancelled (host_free delivers it). */
static void call_abandon(struct coro *c)
{
	struct host_call *k = c->owner;
	set_error(k, 503, "cancelled", "the engine was freed before the function finished");
	k->state = CALL_DONE;
	k->co = NULL;
}

/* Push app._call (or app._emit), the name and the JSON argument. */
static int push_call(lua_State *L, void *arg)
{
	struct host_call *k = arg;
	gen_push_app_field(jail_of(L)->owner, k->is_event ? "_emit" : "_call");
	lua_pushstring(L, k->name);
	lua_pushstring(L, k->json);
	return 2;
}

static void call_start(struct host_call *k)
{
	struct engine *e = k->h->eng;
	struct gen *g = e->gen;

	if (!g) {
		set_error(k, 503, "no_scripts", "no script generation is loaded");
		finish(k);
		return;
	}
	gen_push_app_field(g, k->is_event ? "_emit" : "_call");
	int ok = lua_isfunction(g->L, -1);
	lua_pop(g->L, 1);
	if (!ok) {
		set_error(k, 500, "internal_error",
		          "lualib 'paygate' has no _call/_emit: install the lualib of this engine");
		finish(k);
		return;
	}
	struct coro *c = coro_start(e, g, push_call, k, call_done, k, k->reqid);
	if (!c) {
		set_error(k, 503, "out_of_memory", "the script memory limit is reached; try again");
		finish(k);
		return;
	}
	k->co = c;
	k->state = CALL_RUNNING;
	c->abandon = call_abandon;
	coro_go(c); /* may finish (and, for an event, free k) at once */
}

/* The batch a result waited for ended: the result goes to the host, or a 503 when the batch was lost. */
static void deliver_after_commit(struct store_waiter *w, int ok)
{
	struct host_call *k = STORE_WAITER_OWNER(w, struct host_call, commit);
	if (!ok)
		set_error(k, 503, "storage_failed", "the database could not save this call's work; try again");
	deliver(k);
}

static void call_tick(evutil_socket_t fd, short what, void *arg)
{
	struct host_call *k = arg;
	(void)fd;
	(void)what;
	if (k->state == CALL_QUEUED) {
		call_start(k);
	} else if (k->state == CALL_DONE) {
		k->commit.fn = deliver_after_commit; /* no result outruns the disk (store.h) */
		if (!store_wait_commit(k->h->eng->store, &k->commit))
			deliver(k);
	}
}

/* Make a queued call; NULL when memory ran out (nothing is left behind). */
static struct host_call *new_call(struct host *h, const char *name, const char *json, int is_event)
{
	struct host_call *k = calloc(1, sizeof *k);
	if (!k)
		return NULL;
	k->h = h;
	k->is_event = is_event;
	k->name = strdup(name);
	k->json = strdup(json && *json ? json : "{}");
	k->ev = event_new(h->eng->base, -1, 0, call_tick, k);
	if (!k->name || !k->json || !k->ev) {
		free_call(k);
		return NULL;
	}
	snprintf(k->reqid, sizeof k->reqid, "%s-%llu", is_event ? "event" : "call", ++h->seq);
	k->next = h->calls;
	if (k->next)
		k->next->prev = k;
	h->calls = k;
	h->ncalls++;
	return k;
}

int host_call(struct engine *e, const char *name, const char *json, host_call_cb cb, void *arg)
{
	struct host *h = e->host;
	if (h->freeing || !cb)
		return -1;
	struct host_call *k = new_call(h, name ? name : "", json, 0);
	if (!k)
		return -1;
	k->cb = cb;
	k->arg = arg;
	if (e->stopping) {
		set_error(k, 503, "shutting_down", "the engine is shutting down");
		k->state = CALL_DONE;
	}
	event_active(k->ev, EV_TIMEOUT, 0);
	return 0;
}

int host_emit(struct engine *e, const char *event, const char *json)
{
	struct host *h = e->host;
	if (h->freeing || e->stopping || !event || !*event)
		return -1;
	struct host_call *k = new_call(h, event, json, 1);
	if (!k)
		return -1;
	event_active(k->ev, EV_TIMEOUT, 0);
	return 0;
}

void host_free(struct engine *e)
{
	struct host *h = e->host;
	if (!h)
		return;
	h->freeing = 1;
	while (h->calls) {
		struct host_call *k = h->calls;
		if (k->state != CALL_DONE)
			set_error(k, 503, "cancelled", "the engine was freed before the function ran");
		deliver(k);
	}
	assert(!h->waits); /* their coroutines were cancelled (sched_cancel_all) */
	while (h->fns) {
		struct host_fn *f = h->fns;
		h->fns = f->next;
		free(f);
	}
	free(h);
	e->host = NULL;
}

/* ---- scripts → host: the `host` table ---- */

static int reply_gc(lua_State *L)
{
	struct evbuffer **box = lua_touserdata(L, 1);
	if (*box)
		evbuffer_free(*box);
	*box = NULL;
	return 0;
}

/* ---- own-thread mode: the host function runs on the host's thread while the script waits ---- */

void host_set_forward(struct engine *e, host_forward_fn fwd, void *arg)
{
	e->host->forward = fwd;
	e->host->forward_arg = arg;
}

static void wait_cleanup(struct coro *c)
{
	struct host_wait *w = c->wait;
	struct host *h = w->h;
	if (w->prev)
		w->prev->next = w->next;
	else
		h->waits = w->next;
	if (w->next)
		w->next->prev = w->prev;
	free(w->reply);
	free(w);
}

/* The host's answer: its return code and reply text. */
static int wait_retvals(struct coro *c, lua_State *L)
{
	struct host_wait *w = c->wait;
	lua_pushinteger(L, w->rc);
	lua_pushlstring(L, w->reply ? w->reply : "", w->reply ? w->len : 0);
	return 2;
}

void host_forward_done(struct engine *e, unsigned long long id, int rc, const char *reply, size_t len)
{
	struct host_wait *w = e->host ? e->host->waits : NULL;
	while (w && w->id != id)
		w = w->next;
	if (!w || w->reply) /* the script was cancelled meanwhile */
		return;
	w->rc = rc;
	w->len = len;
	if (!(w->reply = malloc(len + 1))) {
		w->rc = -1;
		w->reply = NULL;
		w->len = 0;
	} else {
		memcpy(w->reply, reply, len);
		w->reply[len] = '\0';
	}
	coro_wake(w->co);
}

/* Resumed with [1 value, 2 json, 3 rc, 4 reply]: the same ending as a direct call. */
/* What host.<name>(...) returns: the host function's reply (text at index 4) decoded, or its failure raised. */
static int host_result(lua_State *L, const char *name, int rc)
{
	size_t n = 0;
	lua_tolstring(L, 4, &n);
	if (rc != 0)
		return luaL_error(L, "host.%s failed: %s", name, n ? lua_tostring(L, 4) : "(no message)");
	if (n == 0)
		return 0;
	lua_pushvalue(L, lua_upvalueindex(3));
	lua_pushvalue(L, 4);
	if (lua_pcall(L, 1, 1, 0) != LUA_OK)
		return luaL_error(L, "host.%s returned invalid JSON: %s", name, lua_tostring(L, -1));
	return 1;
}

static int forward_after(lua_State *L, int status, lua_KContext ctx)
{
	(void)status;
	(void)ctx;
	return host_result(L, lua_tostring(L, lua_upvalueindex(2)), (int)lua_tointeger(L, 3));
}

/* Stack [1 value, 2 json]: hand the call to the host's thread and wait for its answer. */
static int forward_invoke(lua_State *L, struct host *h, struct host_fn *f, const char *name)
{
	struct host_wait *w;

	if (!coro_can_wait(L))
		return luaL_error(L,
		                  "host.%s: in own-thread mode a host function runs on the host's thread, so the "
		                  "script must be able to wait (not inside db.tx, not while the scripts load)",
		                  name);
	if (!(w = calloc(1, sizeof *w)))
		return luaL_error(L, "host.%s: out of memory", name);
	w->h = h;
	w->id = ++h->wait_seq;
	w->co = coro_of(L);
	if (h->forward(h->forward_arg, f->fn, f->arg, lua_tostring(L, 2), w->id) < 0) {
		free(w);
		return luaL_error(L, "host.%s: out of memory", name);
	}
	w->next = h->waits;
	if (w->next)
		w->next->prev = w;
	h->waits = w;
	return coro_suspendk(L, "a host function", w, wait_cleanup, wait_retvals, 0, forward_after);
}

/*
** host.<name>(value) → the decoded reply, or nil for an empty one.
** Upvalues: 1 = engine, 2 = name, 3 = json.decode. The reply buffer lives in
** a userdata with __gc, so no Lua error (out of memory included) leaks it.
*/
static int l_host_invoke(lua_State *L)
{
	struct engine *e = lua_touserdata(L, lua_upvalueindex(1));
	const char *name = lua_tostring(L, lua_upvalueindex(2));
	struct host_fn *f = *find_fn(e->host, name);

	if (!f)
		return luaL_error(L, "host.%s: the host program no longer offers this function", name);
	lua_settop(L, 1);
	if (lua_isnil(L, 1))
		lua_pushliteral(L, "null");
	else
		json_encode_value(L, 1); /* 2: the argument as JSON */
	if (e->host->forward)
		return forward_invoke(L, e->host, f, name);
	struct evbuffer **box = lua_newuserdatauv(L, sizeof *box, 0); /* 3 */
	*box = NULL;
	luaL_setmetatable(L, REPLY_MT);
	if (!(*box = evbuffer_new()))
		return luaL_error(L, "host.%s: out of memory", name);
	int rc = f->fn(f->arg, lua_tostring(L, 2), *box); /* f may be gone after this */
	size_t n = evbuffer_get_length(*box);
	lua_pushlstring(L, n ? (const char *)evbuffer_pullup(*box, -1) : "", n); /* 4 */
	evbuffer_free(*box);
	*box = NULL;
	return host_result(L, name, rc);
}

/* __index(t, name): a caller for a registered name, nil for others. Upvalues: 1 = engine, 2 = json.decode. */
static int l_host_index(lua_State *L)
{
	struct engine *e = lua_touserdata(L, lua_upvalueindex(1));
	const char *name = lua_tostring(L, 2);

	if (lua_type(L, 2) != LUA_TSTRING || !*find_fn(e->host, name))
		return 0;
	lua_pushvalue(L, lua_upvalueindex(1));
	lua_pushvalue(L, 2);
	lua_pushvalue(L, lua_upvalueindex(2));
	lua_pushcclosure(L, l_host_invoke, 3);
	return 1;
}

void host_push_lua(lua_State *L, struct engine *e)
{
	int json = lua_gettop(L);

	luaL_newmetatable(L, REPLY_MT);
	lua_pushcfunction(L, reply_gc);
	lua_setfield(L, -2, "__gc");
	lua_pop(L, 1);

	lua_newtable(L);
	lua_createtable(L, 0, 2);
	lua_pushlightuserdata(L, e);
	lua_getfield(L, json, "decode");
	lua_pushcclosure(L, l_host_index, 2);
	lua_setfield(L, -2, "__index");
	lua_pushboolean(L, 0);
	lua_setfield(L, -2, "__metatable");
	lua_setmetatable(L, -2);
	lua_remove(L, json);
}

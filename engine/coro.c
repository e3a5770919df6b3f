/* coro.c — the coroutine scheduler: every request and job is a Lua coroutine; one function resumes them. */
#include "coro.h"

#include <assert.h>
#include <stdlib.h>
#include <string.h>

#include <event2/event.h>
#include <lauxlib.h>

#include "clock.h"
#include "engine.h"
#include "gen.h"

/*
** The life of a coroutine:
**
**   coro_start ──► coro_run ──► (suspends) ──► coro_wake ──► ready queue ──► coro_run ...
**                       └──► (ends) ──► done(c, status) ──► owner calls coro_free
**
** coro_run is the only caller of lua_resume. Event callbacks (a timer, a
** finished transfer) only call coro_wake, which queues the coroutine; the
** queue is drained from its own event, so Lua never runs inside a libcurl or
** evhttp callback that might be re-entered.
*/

static void coro_run(struct coro *c, int nargs);

/* ---- creation (protected: any allocation may fail under the memory cap) ---- */

struct start_args {
	struct coro *c;
	coro_push_fn push;
	void *arg;
};

/* A thread that ended cleanly goes back to its generation's pool; any other is released. */
static void give_back(struct coro *c)
{
	struct gen *g = c->gen;
	if (lua_status(c->co) == LUA_OK && !c->budget.killed && gen_park_thread(g, c->co, c->ref))
		return;
	luaL_unref(g->L, LUA_REGISTRYINDEX, c->ref);
}

/* [-1 (lightuserdata), +0]: create (or reuse), anchor and fill the thread. */
static int start_protected(lua_State *L)
{
	struct start_args *a = lua_touserdata(L, 1);
	if (!gen_take_thread(a->c->gen, &a->c->co, &a->c->ref)) {
		lua_State *co = lua_newthread(L);
		a->c->co = co;
		a->c->ref = luaL_ref(L, LUA_REGISTRYINDEX);
	}
	*(struct coro **)lua_getextraspace(a->c->co) = a->c;
	lua_State *co = a->c->co;
	int base = lua_gettop(L);
	int nargs = a->push(L, a->arg);
	if (!lua_checkstack(co, nargs + 1))
		return luaL_error(L, "out of memory (coroutine stack)");
	lua_xmove(L, co, lua_gettop(L) - base);
	return 0;
}

struct coro *coro_start(struct engine *e, struct gen *g, coro_push_fn push, void *arg, coro_done_fn done, void *owner,
                        const char *reqid)
{
	struct coro *c = calloc(1, sizeof *c);
	struct start_args a = { c, push, arg };
	lua_State *L = g->L;

	if (!c)
		return NULL;
	c->eng = e;
	c->gen = g;
	c->ref = LUA_NOREF;
	c->done = done;
	c->owner = owner;
	c->reqid = reqid;
	lua_pushcfunction(L, start_protected);
	lua_pushlightuserdata(L, &a);
	if (lua_pcall(L, 1, 0, 0) != LUA_OK) {
		lua_pop(L, 1);
		if (c->co)
			lua_settop(c->co, 0);
		luaL_unref(L, LUA_REGISTRYINDEX, c->ref);
		free(c);
		return NULL;
	}
	gen_ref(g);
	e->sched->live++;
	c->next_live = e->sched->live_head;
	if (c->next_live)
		c->next_live->prev_live = c;
	e->sched->live_head = c;
	c->budget.left = e->cfg.script_max_instructions;
	c->budget.thread = c->co;
	return c;
}

void coro_go(struct coro *c)
{
	coro_run(c, lua_gettop(c->co) - 1);
}

/* ---- the one place that resumes ---- */

/* The coroutine ended: its owner hears of it exactly once (and may free it). */
static void finish(struct coro *c, int status)
{
	assert(!c->finished);
	c->finished = 1;
	c->done(c, status);
}

static void coro_run(struct coro *c, int nargs)
{
	struct sched *s = c->eng->sched;
	lua_State *L = c->gen->L;
	int nres, status;

	s->current = c;
	if (c->eng->worker.running) /* for the watchdog: who holds the loop if it stops */
		snprintf(c->eng->worker.running, c->eng->worker.running_len, "%s %s", c->reqid ? c->reqid : "-",
		         c->what ? c->what : "");
	jail_budget(L, &c->budget, 0);
	status = lua_resume(c->co, NULL, nargs, &nres);
	jail_unbudget(L);
	if (c->eng->worker.running)
		c->eng->worker.running[0] = '\0';
	if (c->eng->worker.where)
		c->eng->worker.where[0] = '\0';
	s->current = NULL;

	if (status == LUA_YIELD && c->suspended)
		return; /* waiting in an engine primitive */
	if (status == LUA_OK && c->budget.killed) {
		/* Stopped, but the script caught it and finished anyway: it still failed. */
		lua_settop(c->co, 0);
		lua_pushliteral(c->co, "script exceeded its instruction budget (a runaway loop?)");
		status = LUA_ERRRUN;
	}
	if (status == LUA_YIELD) {
		/* A bare coroutine.yield() at the top of a handler: nobody would ever resume it. */
		lua_settop(c->co, 0);
		lua_pushliteral(c->co, "coroutine.yield() outside a coroutine created by the script");
		status = LUA_ERRRUN;
	}
	finish(c, status);
}

/* [-1 (lightuserdata), +n]: build the results of the finished operation on the main state. */
static int retvals_protected(lua_State *L)
{
	struct coro *c = lua_touserdata(L, 1);
	lua_pop(L, 1);
	return c->retvals ? c->retvals(c, L) : 0;
}

/* Resume a woken coroutine with the results of what it waited for. */
static void coro_resume_ready(struct coro *c)
{
	lua_State *L = c->gen->L;
	int top = lua_gettop(L), n = 0, status;

	lua_pushcfunction(L, retvals_protected);
	lua_pushlightuserdata(L, c);
	status = lua_pcall(L, 1, LUA_MULTRET, 0);
	if (c->cleanup)
		c->cleanup(c);
	c->suspended = 0;
	c->cleanup = NULL;
	c->wait = NULL;
	if (status != LUA_OK || !lua_checkstack(c->co, lua_gettop(L) - top + 1)) {
		/* No memory to hand over the results: end the coroutine with that error. */
		lua_settop(L, top);
		finish(c, LUA_ERRMEM);
		return;
	}
	n = lua_gettop(L) - top;
	lua_xmove(L, c->co, n);
	coro_run(c, n);
}

static void sched_drain(evutil_socket_t fd, short what, void *arg)
{
	struct engine *e = arg;
	struct sched *s = e->sched;
	struct coro *last = s->tail;

	(void)fd;
	(void)what;
	/* Only those queued before this round: new wakes wait for the next loop turn. */
	while (s->head) {
		struct coro *c = s->head;
		s->head = c->next_ready;
		if (!s->head)
			s->tail = NULL;
		c->next_ready = NULL;
		c->queued = 0;
		coro_resume_ready(c);
		if (c == last)
			break;
	}
	if (s->head)
		event_active(s->ready_ev, EV_TIMEOUT, 0);
}

int sched_init(struct engine *e)
{
	if (!(e->sched = calloc(1, sizeof *e->sched)))
		return -1;
	e->sched->ready_ev = event_new(e->base, -1, 0, sched_drain, e);
	return e->sched->ready_ev ? 0 : -1;
}

void sched_cancel_all(struct engine *e)
{
	while (e->sched && e->sched->live_head) {
		struct coro *c = e->sched->live_head;
		if (c->abandon)
			c->abandon(c);
		coro_cancel(c);
	}
}

void sched_free(struct engine *e)
{
	struct sched *s = e->sched;
	if (!s)
		return;
	assert(s->live == 0 && !s->head);
	if (s->ready_ev)
		event_free(s->ready_ev);
	free(s);
	e->sched = NULL;
}

void sched_forbid_waits(struct engine *e, const char *why)
{
	if (e->sched->forbid_waits++ == 0)
		e->sched->forbid_why = why;
}

void sched_allow_waits(struct engine *e)
{
	assert(e->sched->forbid_waits > 0);
	e->sched->forbid_waits--;
}

/* ---- suspension ---- */

const char *coro_reqid(lua_State *L)
{
	struct coro *c = coro_of(L);
	if (!c) { /* a coroutine the script made: ask who runs */
		struct gen *g = jail_of(L)->owner;
		c = g->eng->sched->current;
	}
	return c ? c->reqid : NULL;
}

struct coro *coro_of(lua_State *L)
{
	return gen_is_parked(L) ? NULL : *(struct coro **)lua_getextraspace(L);
}

void coro_check_suspend(lua_State *L, const char *what)
{
	struct coro *c = coro_of(L);

	if (!c || c->co != L)
		luaL_error(L,
		           "%s can only wait in a request handler or a job, "
		           "not in a coroutine the script created",
		           what);
	else if (c->eng->sched->forbid_waits)
		luaL_error(L, "%s cannot wait %s", what, c->eng->sched->forbid_why);
	else if (c->db_tx && strcmp(what, CORO_DB_WAIT) != 0)
		luaL_error(L,
		           "%s cannot wait inside db.tx(): finish the transaction first "
		           "(a transaction never stays open across a wait for anything but the database)",
		           what);
	else if (!lua_isyieldable(L))
		luaL_error(L, "%s cannot wait here (inside a metamethod, iterator or C call)", what);
}

int coro_can_wait_db(lua_State *L)
{
	struct coro *c = coro_of(L);
	return c && c->co == L && !c->eng->sched->forbid_waits && lua_isyieldable(L);
}

int coro_can_wait(lua_State *L)
{
	struct coro *c = coro_of(L);
	return coro_can_wait_db(L) && !c->db_tx;
}

int coro_suspendk(lua_State *L, const char *what, void *wait, coro_cleanup_fn cleanup, coro_retvals_fn retvals,
                  lua_KContext ctx, lua_KFunction k)
{
	struct coro *c = coro_of(L);

	coro_check_suspend(L, what);
	assert(!c->suspended && !c->cleanup); /* one wait at a time */
	c->waiting_for = what;
	c->wait = wait;
	c->cleanup = cleanup;
	c->retvals = retvals;
	c->suspended = 1;
	return lua_yieldk(L, 0, ctx, k); /* k NULL: the values of the resume are the function's results */
}

/* A coroutine's timer wait. libevent's timers run on the coarse monotonic clock, which lags
   the real one by up to a tick (4 ms here), and one may fire when the coarse clock reaches the
   deadline a little before the real clock has: so the deadline is kept on the precise clock, and
   a timer that fires early is armed again for what remains. A sleep never ends early. */
struct sleep {
	struct event *ev;
	struct coro *c;
	int64_t until_us; /* clock_mono_us() */
};

/* Arm s->ev for what remains: 0, or -1 when libevent refuses. */
static int sleep_arm(struct sleep *s, int64_t left_us)
{
	struct timeval tv = { (time_t)(left_us / 1000000), (suseconds_t)(left_us % 1000000) };
	/* libevent counts a timeout from the time it read when this loop turn began; after a long
	   turn that is in the past, and the wait would end early. Count from now. */
	event_base_update_cache_time(s->c->eng->base);
	return evtimer_add(s->ev, &tv);
}

static void sleep_over(evutil_socket_t fd, short what, void *arg)
{
	struct sleep *s = arg;
	int64_t left = s->until_us - clock_mono_us();

	(void)fd;
	(void)what;
	if (left > 0 && sleep_arm(s, left) == 0)
		return;
	coro_wake(s->c);
}

static void sleep_cleanup(struct coro *c)
{
	struct sleep *s = c->wait;
	event_free(s->ev);
	free(s);
}

int coro_sleepk(lua_State *L, const char *what, int64_t us, lua_KContext ctx, lua_KFunction k)
{
	coro_check_suspend(L, what);
	struct coro *c = coro_of(L);
	struct sleep *s = malloc(sizeof *s);
	if (s) {
		*s = (struct sleep){ .c = c, .until_us = clock_mono_us() + us };
		s->ev = evtimer_new(c->eng->base, sleep_over, s);
	}
	if (!s || !s->ev || sleep_arm(s, us) < 0) {
		if (s && s->ev)
			event_free(s->ev);
		free(s);
		return luaL_error(L, "%s: cannot arm a timer", what);
	}
	return coro_suspendk(L, what, s, sleep_cleanup, NULL, ctx, k);
}

int coro_suspend(lua_State *L, const char *what, void *wait, coro_cleanup_fn cleanup, coro_retvals_fn retvals)
{
	return coro_suspendk(L, what, wait, cleanup, retvals, 0, NULL);
}

void coro_wake(struct coro *c)
{
	struct sched *s = c->eng->sched;

	if (c->queued)
		return;
	c->queued = 1;
	if (s->tail)
		s->tail->next_ready = c;
	else
		s->head = c;
	s->tail = c;
	event_active(s->ready_ev, EV_TIMEOUT, 0);
}

static void unqueue(struct coro *c)
{
	struct sched *s = c->eng->sched;
	struct coro **pp = &s->head, *prev = NULL;

	while (*pp && *pp != c) {
		prev = *pp;
		pp = &(*pp)->next_ready;
	}
	if (!*pp)
		return;
	*pp = c->next_ready;
	if (s->tail == c)
		s->tail = prev;
	c->queued = 0;
}

void coro_cancel(struct coro *c)
{
	if (c->queued)
		unqueue(c);
	if (c->cleanup)
		c->cleanup(c);
	c->cleanup = NULL;
	c->wait = NULL;
	coro_free(c);
}

void coro_free(struct coro *c)
{
	struct engine *e = c->eng;

	assert(!c->queued && !c->cleanup); /* never freed while queued or holding a wait */
	assert(e->sched->current != c);
	if (c->db_tx && c->db_tx_abandon)
		c->db_tx_abandon(c); /* ended with a transaction open: it is rolled back */
	assert(e->sched->live > 0);
	give_back(c);
	gen_unref(c->gen);
	e->sched->live--;
	if (c->prev_live)
		c->prev_live->next_live = c->next_live;
	else
		e->sched->live_head = c->next_live;
	if (c->next_live)
		c->next_live->prev_live = c->prev_live;
	free(c);
}

int coro_fail_answer(struct coro *c, int status, int *http_status, const char **code, const char **message)
{
	lua_State *co = c->co;
	if (status != LUA_ERRRUN || !lua_istable(co, -1) || !lua_checkstack(co, 3))
		return 0;
	int t = lua_gettop(co), isint = 0;
	lua_getfield(co, t, "status");
	lua_getfield(co, t, "error");
	lua_getfield(co, t, "message");
	lua_Integer st = lua_tointegerx(co, t + 1, &isint);
	*code = lua_type(co, t + 2) == LUA_TSTRING ? lua_tostring(co, t + 2) : NULL;
	*message = lua_type(co, t + 3) == LUA_TSTRING ? lua_tostring(co, t + 3) : *code;
	if (!isint || st < 400 || st > 599 || !*code) {
		lua_settop(co, t);
		return 0;
	}
	*http_status = (int)st;
	return 1; /* the strings stay on co's stack until coro_free */
}

/* [-2, +1]: traceback of the coroutine (arg 1) with message (arg 2). */
static int traceback_protected(lua_State *L)
{
	luaL_traceback(L, lua_touserdata(L, 1), lua_tostring(L, 2), 0);
	return 1;
}

const char *coro_error_text(struct coro *c, int status, char *buf, size_t len)
{
	const char *msg = NULL;

	if (status == LUA_ERRMEM) {
		snprintf(buf, len, "out of memory (script memory limit reached)");
		return buf;
	}
	if (lua_gettop(c->co) > 0 && lua_istable(c->co, -1)) {
		/* app.fail(status, code, message) outside a request: say code and message. */
		lua_getfield(c->co, -1, "error");
		lua_getfield(c->co, -2, "message");
		const char *code = lua_tostring(c->co, -2), *m = lua_tostring(c->co, -1);
		snprintf(buf, len, "%s: %s", code ? code : "error", m ? m : "(no message)");
		lua_pop(c->co, 2);
		return buf;
	}
	if (lua_gettop(c->co) > 0)
		msg = lua_tostring(c->co, -1);
	if (!msg)
		msg = "(error object is not a string)";
	/* The dead coroutine keeps its stack, so the traceback shows where it failed. */
	lua_State *L = c->gen->L;
	int top = lua_gettop(L);
	lua_pushcfunction(L, traceback_protected);
	lua_pushlightuserdata(L, c->co);
	lua_pushstring(L, msg);
	if (lua_pcall(L, 2, 1, 0) == LUA_OK)
		msg = lua_tostring(L, -1);
	snprintf(buf, len, "%s", msg);
	lua_settop(L, top);
	return buf;
}

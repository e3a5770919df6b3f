/* coro.h — the coroutine scheduler: every request and job is a Lua coroutine; one function resumes them. */
#ifndef PAYGATE_CORO_H
#define PAYGATE_CORO_H

#include <stdint.h>

#include <lua.h>

#include "jail.h"

struct engine;
struct gen;
struct coro;

/*
** Release the pending operation (free the timer, cancel and free the
** transfer). Called exactly once per suspension: after retvals when the
** coroutine is resumed, or alone when it is cancelled.
*/
typedef void (*coro_cleanup_fn)(struct coro *c);
/* Push the results of the finished operation onto L (the generation's main state); return how many. */
typedef int (*coro_retvals_fn)(struct coro *c, lua_State *L);
/* The coroutine ended: status is LUA_OK (results on c->co) or an error (error object on c->co). */
typedef void (*coro_done_fn)(struct coro *c, int status);
/* Push the function to run and its arguments onto L; return the number of arguments. */
typedef int (*coro_push_fn)(lua_State *L, void *arg);

struct coro {
	struct engine *eng;
	struct gen *gen; /* pinned (referenced) until the coroutine is freed */
	lua_State *co;
	int ref; /* anchors co in gen's registry */
	struct jail_budget budget;

	/* Set by coro_suspend while the coroutine waits for something. */
	coro_cleanup_fn cleanup;
	coro_retvals_fn retvals;
	void *wait;              /* the pending operation, owned by its module */
	const char *waiting_for; /* "http.request", "sleep": for errors and logs */
	const char *what;        /* what it runs ("POST /api/orders", "job expire_order"), for the watchdog */
	int64_t lock_wait_since; /* waiting for another worker's write lock since (ms; store.c), 0: not */
	/* A PostgreSQL transaction this coroutine holds open (pgdb.c): while it is set, only db calls
	   may wait (CORO_DB_WAIT), and db_tx_abandon closes it if the coroutine goes away first. */
	void *db_tx;
	void (*db_tx_abandon)(struct coro *c);

	coro_done_fn done;
	void (*abandon)(struct coro *c); /* owner's clean-up when cancelled by sched_cancel_all */
	void *owner;                     /* the request or job this coroutine serves */
	const char *reqid;

	struct coro *next_ready;
	struct coro *prev_live, *next_live; /* every coroutine not yet freed */
	unsigned queued : 1, suspended : 1, finished : 1;
};

/* The per-engine scheduler state. */
struct sched {
	struct coro *head, *tail; /* coroutines ready to resume */
	struct event *ready_ev;
	struct coro *current; /* the coroutine running now, if any */
	struct coro *live_head;
	int live;         /* coroutines created and not yet freed */
	int forbid_waits; /* > 0: no coroutine may suspend now (sched_forbid_waits) */
	const char *forbid_why;
};

/* Allocate e->sched: 0, or -1 out of memory. sched_free takes NULL too. */
int sched_init(struct engine *e);
void sched_free(struct engine *e);

/*
** While a synchronous section runs that must not be left half-way (a
** db.tx transaction), no coroutine may suspend: a primitive that tries
** raises "<what> cannot wait <why>". Calls nest; the first why is kept.
*/
void sched_forbid_waits(struct engine *e, const char *why);
void sched_allow_waits(struct engine *e);

/* Cancel every coroutine still alive (engine shutdown), letting each owner free its state. */
void sched_cancel_all(struct engine *e);

/*
** Create a coroutine on generation g (taking a reference on g); push()
** supplies the function and its arguments. Nothing runs until coro_go.
** Returns NULL when the generation is out of memory (nothing is left behind).
*/
struct coro *coro_start(struct engine *e, struct gen *g, coro_push_fn push, void *arg, coro_done_fn done, void *owner,
                        const char *reqid);

/*
** Run a new coroutine until it first suspends or ends. done() is called
** exactly once when it ends (possibly before coro_go returns), unless it is
** cancelled first; c must not be used after done() has freed it.
*/
void coro_go(struct coro *c);

/*
** Called by a yielding C function as `return coro_suspend(L, ...)`. Raises a
** Lua error instead of yielding when L is not an engine coroutine (a
** coroutine the script made itself), when it cannot yield, or while a
** db.tx transaction is open.
*/
int coro_suspend(lua_State *L, const char *what, void *wait, coro_cleanup_fn cleanup, coro_retvals_fn retvals);

/*
** coro_suspend whose C function goes on after the wait: when the coroutine
** is resumed, k(L, LUA_YIELD, ctx) runs on the stack the function had when
** it suspended, with retvals' values pushed on top.
*/
int coro_suspendk(lua_State *L, const char *what, void *wait, coro_cleanup_fn cleanup, coro_retvals_fn retvals,
                  lua_KContext ctx, lua_KFunction k);

/*
** `return coro_sleepk(L, what, us, ctx, k)`: suspend the coroutine for us
** microseconds (counted from now, not from the start of the loop turn), then
** go on in k(L, LUA_YIELD, ctx) (k NULL: the C function returns nothing).
** Raises as coro_suspend does.
*/
int coro_sleepk(lua_State *L, const char *what, int64_t us, lua_KContext ctx, lua_KFunction k);

/* Could a C function running on L suspend now (an engine coroutine, yieldable, no db.tx running)? */
int coro_can_wait(lua_State *L);

/* The `what` of a wait for the database: the one wait allowed inside a PostgreSQL transaction. */
#define CORO_DB_WAIT "db"

/* Could a db call on L suspend now (as coro_can_wait, but inside a PostgreSQL db.tx too)? */
int coro_can_wait_db(lua_State *L);

/* Raise the error coro_suspend would raise, before the caller allocates anything to wait on. */
void coro_check_suspend(lua_State *L, const char *what);

/* The request id of the engine coroutine running on L (or running now, for a script-made one), or NULL. */
const char *coro_reqid(lua_State *L);

/* The engine coroutine behind L, or NULL (main state, script-made coroutine). */
struct coro *coro_of(lua_State *L);

/* The pending operation finished: queue c to be resumed from the event loop. */
void coro_wake(struct coro *c);

/* Drop a suspended coroutine without resuming it: runs its cleanup, frees it. done() is not called. */
void coro_cancel(struct coro *c);

/* Release a finished coroutine (called by done() owners once they have read the results). */
void coro_free(struct coro *c);

/*
** Did the coroutine end with app.fail(status, code, message)? Then fill the three (the strings
** live until coro_free) and return 1; anything else (a crash, a budget stop) returns 0.
*/
int coro_fail_answer(struct coro *c, int status, int *http_status, const char **code, const char **message);

/* Message for an error status: the error object as text, with a traceback when it was a runtime error. */
const char *coro_error_text(struct coro *c, int status, char *buf, size_t len);

#endif

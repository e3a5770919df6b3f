/* host.h — the embedding host and the scripts calling each other: host functions, host calls, host events. */
#ifndef PAYGATE_HOST_H
#define PAYGATE_HOST_H

#include <stddef.h>

#include <lua.h>

struct engine;
struct evbuffer;

/*
** The same types as paygate_host_fn and paygate_call_cb in paygate.h (the
** public header stays above the engine; paygate.c passes them through).
*/
typedef int (*host_fn)(void *arg, const char *json_args, struct evbuffer *reply);
typedef void (*host_call_cb)(void *arg, int status, const char *json_result);

/* Create the engine's (empty) registry of host functions and calls: 0, or -1 out of memory. */
int host_init(struct engine *e);

/*
** Finish every call still pending: a finished one gets its result, an
** unfinished one 503 (their coroutines must have been cancelled already,
** see sched_cancel_all); then free the registry. Callbacks run from here.
*/
void host_free(struct engine *e);

/* Register, replace (same name) or remove (fn NULL) a host function: 0, or -1 bad name / no memory. */
int host_register(struct engine *e, const char *name, host_fn fn, void *arg);

/* Queue app._call(name, json) for the next loop turn; cb gets the result exactly once. 0, or -1. */
int host_call(struct engine *e, const char *name, const char *json, host_call_cb cb, void *arg);

/* Queue app._emit(event, json) for the next loop turn. 0, or -1. */
int host_emit(struct engine *e, const char *event, const char *json);

/*
** Own-thread mode (thread.c): host functions run on the host's thread, not
** the engine's. Then `host.<name>(value)` hands fn, its arg and the JSON
** argument to `fwd` and suspends the script's coroutine until
** host_forward_done(e, id, ...) brings the reply back (on the engine's
** thread). fwd returns 0, or -1 when memory ran out. A script that cannot
** wait there (inside db.tx, at load) gets an error instead.
*/
typedef int (*host_forward_fn)(void *arg, host_fn fn, void *fn_arg, const char *json, unsigned long long id);
void host_set_forward(struct engine *e, host_forward_fn fwd, void *arg);

/* The host function of forwarded call id returned rc with reply[0..len) (ignored when the script is gone). */
void host_forward_done(struct engine *e, unsigned long long id, int rc, const char *reply, size_t len);

/* Calls and events not yet finished (for a graceful shutdown). */
int host_inflight(const struct engine *e);

/*
** Push the `host` table scripts see: host.<name>(value) calls the host
** function registered under name now. Expects the `json` table at the top
** of the stack and consumes it. [-1, +1, e]
*/
void host_push_lua(lua_State *L, struct engine *e);

#endif

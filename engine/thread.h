/* thread.h — own-thread mode: the engine's loop on a thread of its own, and the two queues to the host's thread. */
#ifndef PAYGATE_THREAD_H
#define PAYGATE_THREAD_H

#include "host.h"

struct engine;
struct thread;

/*
** Start the engine's event loop on a new thread. The engine was built on
** the caller's thread (paygate_new); from now on only the new thread touches
** it, until thread_stop. Host functions are forwarded to the host's thread
** (host_set_forward). NULL with err filled when the thread, the descriptors
** or memory could not be had (nothing is left behind).
*/
struct thread *thread_start(struct engine *e, char *err, size_t errlen);

/*
** End the loop and join the thread (from the host's thread): the engine
** belongs to the caller again. Calls queued and not yet handed to the
** engine are answered 503 by thread_free. Idempotent.
*/
void thread_stop(struct thread *t);

/* Deliver every result still queued (503 for calls that never reached the engine), close the descriptors. */
void thread_free(struct thread *t);

/* The descriptor the host polls for readability: results and host-function calls are waiting. */
int thread_fd(const struct thread *t);

/* Run what is waiting for the host (results, host functions, shutdown notices) on the caller's thread. */
int thread_dispatch(struct thread *t);

/* Queue a call / an event for the engine's thread; any thread may call them. 0, or -1 (memory, stopping). */
int thread_call(struct thread *t, const char *name, const char *json, host_call_cb cb, void *arg);
int thread_emit(struct thread *t, const char *event, const char *json);

/* From now on thread_emit refuses events (the engine is shutting down), as host_emit does. */
void thread_refuse_events(struct thread *t);

/*
** Run fn(arg) on the engine's thread and wait for it to return (the host's
** synchronous calls: listen, reload, register, shutdown). Runs it at once
** when called on the engine's thread or after thread_stop.
*/
void thread_run(struct thread *t, void (*fn)(void *arg), void *arg);

/* From the engine's thread: have done(arg) called on the host's thread at its next dispatch. 0, or -1. */
int thread_notify(struct thread *t, void (*done)(void *arg), void *arg);

#endif

/* engine.h — one worker: event loop, current script generation, storage, outbound HTTP, jobs. */
#ifndef PAYGATE_ENGINE_H
#define PAYGATE_ENGINE_H

#include <stdint.h>
#include <sys/time.h>

#include <event2/event.h>
#include <event2/http.h>

#include "config.h"
#include "coro.h"
#include "log.h"
#include "metrics.h"

struct store;
struct fetch;
struct jobs;
struct watch;
struct wxclient;
struct script_gen;
struct host;

/*
** All per-worker state lives here so that N workers sharing one listener is
** a matter of creating N engines on N event bases.
*/
struct engine {
	struct event_base *base;
	struct config cfg;
	struct log log;
	struct metrics metrics;
	struct sched sched;

	struct evhttp *http;              /* the inbound server */
	struct evhttp_bound_socket *listener;
	int port;                         /* the port actually bound */

	struct store *store;
	struct fetch *fetch;
	struct jobs *jobs;
	struct watch *watch;
	struct wxclient *wxc;             /* NULL when wechatpay is not configured */
	struct host *host;                /* host functions and host calls (embedding, host.c) */
	unsigned char *secret;            /* session-token key (see secure.c) */
	size_t secret_len;

	struct script_gen *gen;           /* current generation (holds one reference) */
	uint64_t next_gen_id;
	int draining;                     /* retired generations still in use */

	/* The outcome of the latest reload, for /healthz and the admin answer. */
	int last_reload_ok;
	char last_reload_error[1024];
	struct timeval last_reload_at;

	struct timeval started;
	uint64_t reqid_state;             /* request-id generator (http.c); per engine, like all state */
	int http_inflight;                /* requests received and not yet finished */
	int stopping;
};

/* Milliseconds since the epoch (wall clock), the time scripts and jobs see. */
int64_t engine_now_ms(void);

#endif

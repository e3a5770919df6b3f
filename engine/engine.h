/* engine.h — one worker: event loop, current script generation, storage, outbound HTTP, jobs. */
#ifndef PAYGATE_ENGINE_H
#define PAYGATE_ENGINE_H

#include <stdint.h>
#include <sys/time.h>

#include <event2/event.h>
#include <event2/http.h>

#include "config.h"
#include "log.h"
#include "metrics.h"

struct store;
struct fetch;
struct jobs;
struct watch;
struct wxclient;
struct gen;
struct host;
struct http_req;
struct http_conns;
struct sched;
struct lua_State;

/* A Lua module in C added by the host (paygate_options.lua_modules), opened in every generation. */
struct lua_module {
	char *name;
	int (*open)(struct lua_State *L, void *arg);
	void *arg;
};

/*
** All per-worker state lives here so that N workers sharing one listener is
** a matter of creating N engines on N event bases.
*/
struct evbuffer;

/* The engine as one of a gateway's worker processes (paygate_options.worker; index -1: alone). */
struct engine_worker {
	int index, count;
	int listen_fd;
	char job_owner[80];    /* "<run>.<index>.<incarnation>": who runs a claimed job */
	char run_owners[80];   /* "<run>.": every owner of this run (LIKE prefix) */
	char predecessors[80]; /* "<run>.<index>.": this index's earlier incarnations */
	char *running;         /* shared note of the script running now, for the watchdog */
	size_t running_len;
	char *where; /* ... and of its script line, kept by the jail's hook */
	size_t where_len;
	volatile long long *lock_wanted; /* shared: when this worker last found the write lock taken */
	int (*peers_want_lock)(void *arg, long long since_ms);
	void (*peers_metrics)(void *arg, struct evbuffer *text);
	void (*peers_health)(void *arg, struct evbuffer *json);
	void (*reload_peers)(void *arg);
	void *arg;
};

struct engine {
	struct event_base *base;
	struct config cfg;
	struct log log;
	struct metrics metrics;
	struct sched *sched; /* coroutines (coro.c) */

	struct evhttp *http; /* the inbound server */
	/* The engine's own routes, tried before the scripts' (see http.h: http_front_fn). */
	int (*http_front)(struct http_req *h, const char *path, enum evhttp_cmd_type cmd);
	struct evhttp_bound_socket *listener;
	struct http_conns *conns; /* open client connections: caps and deadlines (http.c) */
	int port;                 /* the port actually bound */

	struct store *store;
	struct fetch *fetch;
	struct jobs *jobs;
	struct watch *watch;
	struct wxclient *wxc;       /* NULL when wechatpay is not configured */
	struct host *host;          /* host functions and host calls (embedding, host.c) */
	struct lua_module *modules; /* the host's Lua modules in C */
	int nmodules;
	unsigned char *secret; /* session-token key (see secure.c) */
	size_t secret_len;

	struct gen *gen; /* current generation (holds one reference) */
	uint64_t next_gen_id;
	int draining;               /* retired generations still in use */
	struct event *reload_retry; /* a reload refused for draining, tried again (reload.c) */

	/* The outcome of the latest reload, for /healthz and the admin answer. */
	int last_reload_ok;
	char last_reload_error[1024];
	struct timeval last_reload_at;

	struct timeval started;
	uint64_t reqid_state; /* request-id generator (http.c); per engine, like all state */
	int http_inflight;    /* requests received and not yet finished */
	int stopping;
	int check_only; /* --check (and the daemon's check before it binds): nothing is kept (PostgreSQL: rolled back) */
	struct engine_worker worker;
};

#endif

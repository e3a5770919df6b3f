/* paygate.c — the public API: create, listen, reload, shut down, free; calls both ways; JSON helpers. */
#include "paygate.h"

#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <curl/curl.h>
#include <event2/buffer.h>
#include <event2/http.h>

#include "clock.h"
#include "coro.h"
#include "drive.h"
#include "engine.h"
#include "fetch.h"
#include "gen.h"
#include "host.h"
#include "http.h"
#include "jobs.h"
#include "json.h"
#include "reload.h"
#include "routes.h"
#include "secure.h"
#include "store.h"
#include "thread.h"
#include "wxclient.h"

/*
** The engine behind the public handle, plus what only an embedding needs:
** the pending graceful shutdown (so paygate_free can cancel it) and the log
** stream made from the host's log callback.
*/
struct paygate {
	struct engine e; /* first: (struct engine *)pg is the engine */
	struct shutdown_state *shutdown;
	FILE *log_stream; /* fopencookie over log_sink, when opts->log_fn */
	struct log_sink *sink;
	struct thread *thread; /* own-thread mode (paygate_start_thread): the loop runs there */
	struct drive *drive;   /* host-driven mode (paygate_new_driven): the host runs the loop */
	int own_base;          /* the event_base is paygate's (own-thread mode) */
};

/* ---- the host's log callback, behind a FILE* so the logger stays one fprintf ---- */

struct log_sink {
	void (*fn)(void *arg, const char *line);
	void *arg;
	size_t len;
	char line[8200]; /* log lines are at most 8 KiB */
};

static ssize_t sink_write(void *cookie, const char *buf, size_t n)
{
	struct log_sink *s = cookie;
	for (size_t i = 0; i < n; i++) {
		if (buf[i] == '\n') {
			s->line[s->len] = '\0';
			s->fn(s->arg, s->line);
			s->len = 0;
		} else if (s->len < sizeof s->line - 1) {
			s->line[s->len++] = buf[i];
		}
	}
	return (ssize_t)n;
}

static FILE *open_log(struct paygate *pg, const struct paygate_options *o)
{
	cookie_io_functions_t io = { .write = sink_write };
	if (!o->log_fn)
		return o->log_file ? o->log_file : stderr;
	if (!(pg->sink = calloc(1, sizeof *pg->sink)))
		return NULL;
	pg->sink->fn = o->log_fn;
	pg->sink->arg = o->log_arg;
	if (!(pg->log_stream = fopencookie(pg->sink, "w", io)))
		return NULL;
	setvbuf(pg->log_stream, NULL, _IOLBF, 0);
	return pg->log_stream;
}

/* ---- creation ---- */

/* Replace an owned config string with a copy of value (when given): 0, or -1 out of memory. */
static int override(char **field, const char *value)
{
	char *copy;
	if (!value)
		return 0;
	if (!(copy = strdup(value)))
		return -1;
	free(*field);
	*field = copy;
	return 0;
}

static int load_config(struct engine *e, const struct paygate_options *o, char *err, size_t errlen)
{
	if (config_defaults(&e->cfg) < 0)
		goto nomem;
	if (o->config_path && config_load(&e->cfg, o->config_path, err, errlen) < 0)
		return -1;
	if (o->listen && config_set_listen(&e->cfg, o->listen, err, errlen) < 0)
		return -1;
	/* A check migrates a SQLite database in memory; a PostgreSQL one in a transaction it rolls back
	   (its DDL may be PostgreSQL's own, and a node behind the database's schema is refused at once). */
	const char *db = o->database ? o->database : e->cfg.db_path;
	if (override(&e->cfg.db_path,
	             o->check_only && !config_database_is_postgresql_url(db) ? ":memory:" : o->database) < 0 ||
	    override(&e->cfg.scripts_dir, o->scripts_dir) < 0 || override(&e->cfg.lualib_dir, o->lualib_dir) < 0)
		goto nomem;
	if (o->no_watch || o->check_only)
		e->cfg.watch = 0;
	return 0;
nomem:
	snprintf(err, errlen, "out of memory");
	return -1;
}

static int register_functions(struct engine *e, const struct paygate_function *f, char *err, size_t errlen)
{
	for (; f && f->name; f++) {
		if (host_register(e, f->name, f->fn, f->arg) < 0) {
			snprintf(err, errlen,
			         "cannot register host function '%s' (names are [A-Za-z_][A-Za-z0-9_]*, "
			         "at most 63 bytes)",
			         f->name);
			return -1;
		}
	}
	return 0;
}

/* Copy the host's Lua modules (the array need not outlive paygate_new). */
static int copy_modules(struct engine *e, const struct paygate_lua_module *m, char *err, size_t errlen)
{
	int n = 0;
	while (m && m[n].name)
		n++;
	if (n == 0)
		return 0;
	if (!(e->modules = calloc((size_t)n, sizeof *e->modules)))
		goto nomem;
	for (int i = 0; i < n; i++, e->nmodules++) {
		if (!m[i].open) {
			snprintf(err, errlen, "Lua module '%s' has no open function", m[i].name);
			return -1;
		}
		if (!(e->modules[i].name = strdup(m[i].name)))
			goto nomem;
		e->modules[i].open = m[i].open;
		e->modules[i].arg = m[i].arg;
	}
	return 0;
nomem:
	snprintf(err, errlen, "out of memory");
	return -1;
}

static void free_modules(struct engine *e)
{
	for (int i = 0; i < e->nmodules; i++)
		free(e->modules[i].name);
	free(e->modules);
}

/* Who this engine is among the gateway's workers (or alone): the names its jobs are claimed under. */
static void set_worker(struct engine *e, const struct paygate_worker *w)
{
	struct engine_worker *ew = &e->worker;
	if (!w) {
		ew->index = -1;
		ew->listen_fd = -1;
		snprintf(ew->job_owner, sizeof ew->job_owner, "solo.%ld.%lld", (long)getpid(),
		         (long long)clock_now_ms());
		snprintf(ew->run_owners, sizeof ew->run_owners, "%s", ew->job_owner);
		ew->predecessors[0] = '\0'; /* alone: every job left running belongs to a dead engine */
		return;
	}
	ew->index = w->index;
	ew->count = w->count;
	ew->listen_fd = w->listen_fd;
	snprintf(ew->job_owner, sizeof ew->job_owner, "%.40s.%d.%d", w->run_id, w->index, w->incarnation);
	snprintf(ew->run_owners, sizeof ew->run_owners, "%.40s.", w->run_id);
	snprintf(ew->predecessors, sizeof ew->predecessors, "%.40s.%d.", w->run_id, w->index);
	ew->running = w->running_len ? w->running : NULL;
	ew->running_len = w->running_len;
	ew->where = w->where_len ? w->where : NULL;
	ew->where_len = w->where_len;
	ew->lock_wanted = w->lock_wanted;
	ew->peers_want_lock = w->peers_want_lock;
	ew->peers_metrics = w->peers_metrics;
	ew->peers_health = w->peers_health;
	ew->reload_peers = w->reload_peers;
	ew->arg = w->arg;
}

struct paygate *paygate_new(struct event_base *base, const struct paygate_options *opts, char *err, size_t errlen)
{
	static const struct paygate_options defaults;
	const struct paygate_options *o = opts ? opts : &defaults;
	struct paygate *pg = calloc(1, sizeof *pg);
	struct engine *e = &pg->e;
	FILE *log_out;

	if (!pg) {
		snprintf(err, errlen, "out of memory");
		return NULL;
	}
	if (errlen)
		err[0] = '\0';
	e->base = base;
	gettimeofday(&e->started, NULL);
	metrics_init(&e->metrics);
	curl_global_init(CURL_GLOBAL_DEFAULT); /* reference counted by libcurl; undone in paygate_free */
	set_worker(e, o->worker);
	e->check_only = o->check_only;
	if (load_config(e, o, err, errlen) < 0)
		goto fail;
	if (!(log_out = open_log(pg, o)) || host_init(e) < 0 || sched_init(e) < 0 || !(e->fetch = fetch_new(e))) {
		snprintf(err, errlen, "out of memory");
		goto fail;
	}
	log_init(&e->log, e->cfg.log_level, log_out);
	if (register_functions(e, o->functions, err, errlen) < 0 || copy_modules(e, o->lua_modules, err, errlen) < 0)
		goto fail;
	if (!(e->store = store_open(e, e->cfg.db_path, err, errlen)))
		goto fail;
	if (!(e->jobs = jobs_new(e, err, errlen)))
		goto fail;
	if (!(e->wxc = wxc_new(e, err, errlen)) && err[0])
		goto fail;
	if (secure_init(e, err, errlen) < 0)
		goto fail;
	if (http_init(e, routes_front, err, errlen) < 0)
		goto fail;
	if (reload_run(e, "start", err, errlen) < 0)
		goto fail;
	if (o->check_only && e->gen && e->gen->uses_wechatpay && !e->cfg.wxpay.enabled) {
		snprintf(err, errlen,
		         "the scripts in %s use wechatpay, but %s has no wechatpay table (docs/configuration.md, "
		         "\"Setting up WeChat Pay\")",
		         e->cfg.scripts_dir, e->cfg.path ? e->cfg.path : "the configuration (no --config)");
		goto fail;
	}
	if (e->cfg.watch && reload_watch_start(e, err, errlen) < 0)
		log_warn(&e->log, NULL, "not watching scripts for changes: %s", err);
	store_sleep_ok(e->store, 0); /* from now on, waiting for another worker's lock never sleeps the loop */
	if (!o->check_only)
		jobs_kick(e->jobs);
	return pg;
fail:
	paygate_free(pg);
	return NULL;
}

struct paygate *paygate_new_ex(struct event_base *base, const char *config_path, const char *listen, int check_only,
                               char *err, size_t errlen)
{
	struct paygate_options o = { .config_path = config_path, .listen = listen, .check_only = check_only };
	return paygate_new(base, &o, err, errlen);
}

/* ---- own-thread mode: the host's synchronous calls run on the engine's thread (thread_run) ---- */

struct sync_call {
	struct paygate *pg;
	char *err;
	size_t errlen;
	const char *name;
	paygate_host_fn fn;
	void *arg;
	void (*done)(void *arg);
	int grace_ms;
	long long result;
};

static int listen_here(struct paygate *pg, char *err, size_t errlen);

static void sync_listen(void *arg)
{
	struct sync_call *s = arg;
	s->result = listen_here(s->pg, s->err, s->errlen);
}

static void sync_reload(void *arg)
{
	struct sync_call *s = arg;
	s->result = reload_run(&s->pg->e, "api", s->err, s->errlen) < 0 ? -1 : (long long)s->pg->e.gen->id;
}

static void sync_generation(void *arg)
{
	struct sync_call *s = arg;
	s->result = s->pg->e.gen ? (long long)s->pg->e.gen->id : 0;
}

static void sync_register(void *arg)
{
	struct sync_call *s = arg;
	s->result = host_register(&s->pg->e, s->name, s->fn, s->arg);
}

/* An engine on an event loop of its own (the own-thread and host-driven modes), or NULL with err. */
static struct paygate *new_on_own_base(const struct paygate_options *opts, char *err, size_t errlen)
{
	struct event_base *base = event_base_new();
	struct paygate *pg;

	if (!base) {
		snprintf(err, errlen, "cannot create the engine's event loop");
		return NULL;
	}
	if (!(pg = paygate_new(base, opts, err, errlen))) {
		event_base_free(base);
		return NULL;
	}
	pg->own_base = 1;
	return pg;
}

struct paygate *paygate_start_thread(const struct paygate_options *opts, char *err, size_t errlen)
{
	struct paygate *pg = new_on_own_base(opts, err, errlen);
	if (!pg)
		return NULL;
	if (!(pg->thread = thread_start(&pg->e, err, errlen))) {
		paygate_free(pg);
		return NULL;
	}
	return pg;
}

int paygate_fd(const struct paygate *pg)
{
	return pg->thread ? thread_fd(pg->thread) : pg->drive ? drive_fd(pg->drive) : -1;
}

/* ---- host-driven mode: the host's loop runs the engine's, one non-blocking round at a time ---- */

struct paygate *paygate_new_driven(const struct paygate_options *opts, char *err, size_t errlen)
{
	struct paygate *pg = new_on_own_base(opts, err, errlen);
	if (!pg)
		return NULL;
	if (!(pg->drive = drive_new(pg->e.base, err, errlen))) {
		paygate_free(pg);
		return NULL;
	}
	return pg;
}

int paygate_timeout(struct paygate *pg)
{
	return pg->drive ? drive_prepare(pg->drive) : -1;
}

int paygate_run_once(struct paygate *pg)
{
	if (!pg->drive)
		return -1;
	drive_run(pg->drive);
	return 0;
}

int paygate_dispatch_completions(struct paygate *pg)
{
	return pg->thread ? thread_dispatch(pg->thread) : 0;
}

int paygate_listen(struct paygate *pg, char *err, size_t errlen)
{
	if (pg->drive) /* host-driven mode: the next paygate_timeout answers 0 */
		drive_kick(pg->drive);
	if (pg->thread) {
		struct sync_call s = { .pg = pg, .err = err, .errlen = errlen };
		thread_run(pg->thread, sync_listen, &s);
		return (int)s.result;
	}
	return listen_here(pg, err, errlen);
}

static int listen_here(struct paygate *pg, char *err, size_t errlen)
{
	struct engine *e = &pg->e;
	if (e->worker.listen_fd >= 0 ? http_accept_on(e, e->worker.listen_fd, err, errlen) < 0
	                             : http_listen(e, e->cfg.listen_host, e->cfg.listen_port, err, errlen) < 0)
		return -1;
	if (e->cfg.admin_trust_loopback)
		log_warn(&e->log, NULL,
		         "admin is reachable without a token: admin.trust_loopback = true lets any loopback peer "
		         "refund, change products and reload (behind a reverse proxy on this host, every client is "
		         "loopback); configure admin.tokens and remove trust_loopback before going live");
	else if (e->cfg.n_admin_tokens == 0)
		log_info(&e->log, NULL,
		         "admin endpoints are closed: no admin.tokens configured (and admin.trust_loopback is off)");
	return 0;
}

struct sync_metrics {
	struct paygate *pg;
	struct evbuffer *out;
};

static void sync_metrics(void *arg)
{
	struct sync_metrics *m = arg;
	routes_metrics(&m->pg->e, m->out);
}

void paygate_metrics(struct paygate *pg, struct evbuffer *out)
{
	struct sync_metrics m = { pg, out };
	if (pg->thread) /* own-thread mode: the counters are the engine thread's */
		thread_run(pg->thread, sync_metrics, &m);
	else
		sync_metrics(&m);
}

void paygate_supervision(const struct paygate *pg, struct paygate_supervision *out)
{
	out->workers = pg->e.cfg.workers;
	out->watchdog_ms = pg->e.cfg.watchdog_ms;
	snprintf(out->listen_host, sizeof out->listen_host, "%s", pg->e.cfg.listen_host);
	out->listen_port = pg->e.cfg.listen_port;
}

const char *paygate_host(const struct paygate *pg)
{
	return pg->e.cfg.listen_host;
}

int paygate_port(const struct paygate *pg)
{
	return pg->e.port;
}

void paygate_handle_request(struct paygate *pg, struct evhttp_request *req)
{
	struct engine *e = &pg->e;
	if (pg->thread) { /* the request is on the host's loop, the engine on its own thread */
		evhttp_send_error(req, 500, "paygate_handle_request is not available in own-thread mode");
		return;
	}
	if (e->stopping) {
		struct evbuffer *b = evbuffer_new();
		if (b)
			evbuffer_add_printf(
			    b, "{\"error\":\"shutting_down\",\"message\":\"the gateway is shutting down\"}");
		evhttp_add_header(evhttp_request_get_output_headers(req), "Content-Type",
		                  "application/json; charset=utf-8");
		evhttp_send_reply(req, 503, "Service Unavailable", b);
		if (b)
			evbuffer_free(b);
		return;
	}
	http_handle_request(e, req);
}

long long paygate_reload(struct paygate *pg, char *err, size_t errlen)
{
	if (pg->drive) /* host-driven mode: the next paygate_timeout answers 0 */
		drive_kick(pg->drive);
	struct engine *e = &pg->e;
	if (pg->thread) {
		struct sync_call s = { .pg = pg, .err = err, .errlen = errlen };
		thread_run(pg->thread, sync_reload, &s);
		return s.result;
	}
	if (reload_run(e, "api", err, errlen) < 0)
		return -1;
	return (long long)e->gen->id;
}

long long paygate_generation(const struct paygate *pg)
{
	if (pg->thread) {
		struct sync_call s = { .pg = (struct paygate *)pg };
		thread_run(pg->thread, sync_generation, &s);
		return s.result;
	}
	return pg->e.gen ? (long long)pg->e.gen->id : 0;
}

/* ---- calls both ways (host.c) ---- */

int paygate_register(struct paygate *pg, const char *name, paygate_host_fn fn, void *arg)
{
	if (pg->drive) /* host-driven mode: the next paygate_timeout answers 0 */
		drive_kick(pg->drive);
	if (pg->thread) {
		struct sync_call s = { .pg = pg, .name = name, .fn = fn, .arg = arg };
		thread_run(pg->thread, sync_register, &s);
		return (int)s.result;
	}
	return host_register(&pg->e, name, fn, arg);
}

int paygate_call(struct paygate *pg, const char *name, const char *json_args, paygate_call_cb cb, void *arg)
{
	if (pg->drive) /* host-driven mode: the next paygate_timeout answers 0 */
		drive_kick(pg->drive);
	if (pg->thread)
		return thread_call(pg->thread, name, json_args, cb, arg);
	return host_call(&pg->e, name, json_args, cb, arg);
}

int paygate_emit(struct paygate *pg, const char *event, const char *json)
{
	if (pg->drive) /* host-driven mode: the next paygate_timeout answers 0 */
		drive_kick(pg->drive);
	if (pg->thread)
		return thread_emit(pg->thread, event, json);
	return host_emit(&pg->e, event, json);
}

/* ---- graceful shutdown ---- */

struct shutdown_state {
	struct paygate *pg;
	struct event *tick;
	int64_t deadline;
	void (*done)(void *);
	void *arg;
};

/* Requests, host calls and events, and jobs still running. */
static int busy(struct engine *e)
{
	return e->http_inflight + host_inflight(e) + (e->jobs ? jobs_running(e->jobs) : 0);
}

static void shutdown_tick(evutil_socket_t fd, short what, void *arg)
{
	struct shutdown_state *s = arg;
	struct engine *e = &s->pg->e;
	(void)fd;
	(void)what;
	if (busy(e) > 0 && clock_now_ms() < s->deadline)
		return; /* EV_PERSIST: look again in 50 ms */
	if (busy(e) > 0)
		log_warn(&e->log, NULL,
		         "shutdown: %d requests, %d host calls and %d jobs still in flight at the deadline",
		         e->http_inflight, host_inflight(e), e->jobs ? jobs_running(e->jobs) : 0);
	event_free(s->tick);
	s->pg->shutdown = NULL;
	void (*done)(void *) = s->done;
	void *darg = s->arg;
	free(s);
	done(darg);
}

static void shutdown_here(struct paygate *pg, int grace_ms, void (*done)(void *arg), void *arg);

/* On the engine's thread: the shutdown finished; the host hears it at its next dispatch. */
static void shutdown_relay(void *arg)
{
	struct sync_call *s = arg;
	struct paygate *pg = s->pg;
	void (*done)(void *) = s->done;
	void *darg = s->arg;
	free(s);
	if (thread_notify(pg->thread, done, darg) < 0)
		log_error(&pg->e.log, NULL, "out of memory: the host is not told that the shutdown finished");
}

static void ignore_done(void *arg)
{
	(void)arg;
}

static void sync_shutdown(void *arg)
{
	struct sync_call *s = arg;
	if (s->pg->shutdown) { /* asked twice: the first one's done wins */
		shutdown_here(s->pg, s->grace_ms, ignore_done, NULL);
		free(s);
		return;
	}
	shutdown_here(s->pg, s->grace_ms, shutdown_relay, s);
}

void paygate_shutdown(struct paygate *pg, int grace_ms, void (*done)(void *arg), void *arg)
{
	if (pg->drive) /* host-driven mode: the next paygate_timeout answers 0 */
		drive_kick(pg->drive);
	if (pg->thread) {
		struct sync_call *s = calloc(1, sizeof *s);
		thread_refuse_events(pg->thread);
		if (!s) {
			done(arg);
			return;
		}
		s->pg = pg;
		s->grace_ms = grace_ms;
		s->done = done;
		s->arg = arg;
		thread_run(pg->thread, sync_shutdown, s);
		return;
	}
	shutdown_here(pg, grace_ms, done, arg);
}

static void shutdown_here(struct paygate *pg, int grace_ms, void (*done)(void *arg), void *arg)
{
	struct engine *e = &pg->e;
	struct shutdown_state *s;
	struct timeval tv = { 0, 50 * 1000 };

	e->stopping = 1;
	http_stop_accepting(e);
	reload_watch_stop(e);
	if (pg->shutdown) /* asked twice: the first one's done wins */
		return;
	s = calloc(1, sizeof *s);
	if (!s || !(s->tick = event_new(e->base, -1, EV_PERSIST, shutdown_tick, s))) {
		free(s);
		done(arg);
		return;
	}
	s->pg = pg;
	s->deadline = clock_now_ms() + grace_ms;
	s->done = done;
	s->arg = arg;
	pg->shutdown = s;
	event_add(s->tick, &tv);
	event_active(s->tick, EV_TIMEOUT, 0);
}

void paygate_free(struct paygate *pg)
{
	struct engine *e;
	if (!pg)
		return;
	e = &pg->e;
	thread_stop(pg->thread); /* own-thread mode: the loop ends, the engine is ours again */
	e->stopping = 1;
	if (pg->shutdown) {
		if (pg->thread) /* the pending shutdown's sync_call */
			free(pg->shutdown->arg);
		event_free(pg->shutdown->tick);
		free(pg->shutdown);
		pg->shutdown = NULL;
	}
	reload_watch_stop(e);
	http_free(e);        /* frees connections; their requests are cancelled via on_close */
	sched_cancel_all(e); /* host-evhttp requests answered 503, host calls cancelled,
	                                      jobs still waiting re-queued at the next start */
	host_free(e);        /* pending host calls get their result or 503 */
	if (e->gen) {
		struct gen *g = e->gen;
		e->gen = NULL;
		gen_unref(g);
	}
	fetch_free(e->fetch);
	jobs_free(e->jobs);
	wxc_free(e->wxc);
	secure_free(e);
	store_close(e->store);
	sched_free(e);
	metrics_free(&e->metrics);
	config_free(&e->cfg);
	free_modules(e);
	thread_free(pg->thread); /* results the free produced reach the host's callbacks here */
	drive_free(pg->drive);
	if (pg->own_base)
		event_base_free(e->base);
	curl_global_cleanup();
	if (pg->log_stream)
		fclose(pg->log_stream);
	free(pg->sink);
	free(pg);
}

/* ---- JSON helpers for host functions (json.c) ---- */

int paygate_json_add_string(struct evbuffer *out, const char *s)
{
	return json_add_string(out, s);
}

int paygate_json_get(const char *json, const char *key, char *out, size_t outlen)
{
	return json_get_field(json, key, out, outlen);
}

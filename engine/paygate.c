/* paygate.c — engine lifecycle behind the public API: create, listen, reload, shut down, free. */
#include "paygate.h"

#include <stdlib.h>
#include <string.h>

#include <curl/curl.h>

#include "engine.h"
#include "fetch.h"
#include "http.h"
#include "jobs.h"
#include "reload.h"
#include "script.h"
#include "secure.h"
#include "store.h"
#include "wxclient.h"

int64_t engine_now_ms(void)
{
	struct timeval tv;
	gettimeofday(&tv, NULL);
	return (int64_t)tv.tv_sec * 1000 + tv.tv_usec / 1000;
}

struct paygate *paygate_new(struct event_base *base, const char *config_path, char *err, size_t errlen)
{
	return paygate_new_ex(base, config_path, NULL, 0, err, errlen);
}

static int load_config(struct engine *e, const char *path, const char *listen, char *err, size_t errlen)
{
	if (config_defaults(&e->cfg) < 0) {
		snprintf(err, errlen, "out of memory");
		return -1;
	}
	if (path && config_load(&e->cfg, path, err, errlen) < 0)
		return -1;
	if (listen && config_set_listen(&e->cfg, listen, err, errlen) < 0)
		return -1;
	return 0;
}

struct paygate *paygate_new_ex(struct event_base *base, const char *config_path, const char *listen,
                               int check_only, char *err, size_t errlen)
{
	struct engine *e = calloc(1, sizeof *e);
	if (!e) {
		snprintf(err, errlen, "out of memory");
		return NULL;
	}
	e->base = base;
	gettimeofday(&e->started, NULL);
	metrics_init(&e->metrics);
	curl_global_init(CURL_GLOBAL_DEFAULT);
	if (load_config(e, config_path, listen, err, errlen) < 0)
		goto fail;
	log_init(&e->log, e->cfg.log_level, stderr);
	if (sched_init(e) < 0 || !(e->fetch = fetch_new(e))) {
		snprintf(err, errlen, "out of memory");
		goto fail;
	}
	if (!(e->store = store_open(e, check_only ? ":memory:" : e->cfg.db_path, err, errlen)))
		goto fail;
	if (!(e->jobs = jobs_new(e, err, errlen)))
		goto fail;
	if (!(e->wxc = wxc_new(e, err, errlen)) && err[0])
		goto fail;
	if (secure_init(e, err, errlen) < 0)
		goto fail;
	if (http_init(e, err, errlen) < 0)
		goto fail;
	if (reload_run(e, "start", err, errlen) < 0)
		goto fail;
	if (!check_only && e->cfg.watch && reload_watch_start(e, err, errlen) < 0)
		log_warn(&e->log, NULL, "not watching scripts for changes: %s", err);
	if (!check_only)
		jobs_kick(e->jobs);
	return (struct paygate *)e;
fail:
	paygate_free((struct paygate *)e);
	return NULL;
}

int paygate_listen(struct paygate *pg, char *err, size_t errlen)
{
	struct engine *e = (struct engine *)pg;
	if (http_listen(e, e->cfg.listen_host, e->cfg.listen_port, err, errlen) < 0)
		return -1;
	if (!e->cfg.admin_token && strncmp(e->cfg.listen_host, "127.", 4) != 0 &&
	    strcmp(e->cfg.listen_host, "::1") != 0 && strcmp(e->cfg.listen_host, "localhost") != 0)
		log_warn(&e->log, NULL, "listening on %s without admin.token_file: admin endpoints answer loopback "
		                        "peers only; behind a local reverse proxy configure a token", e->cfg.listen_host);
	return 0;
}

const char *paygate_host(const struct paygate *pg)
{
	return ((const struct engine *)pg)->cfg.listen_host;
}

int paygate_port(const struct paygate *pg)
{
	return ((const struct engine *)pg)->port;
}

long long paygate_reload(struct paygate *pg, char *err, size_t errlen)
{
	struct engine *e = (struct engine *)pg;
	if (reload_run(e, "api", err, errlen) < 0)
		return -1;
	return (long long)e->gen->id;
}

/* ---- graceful shutdown ---- */

struct shutdown_state {
	struct engine *e;
	struct event *tick;
	int64_t deadline;
	void (*done)(void *);
	void *arg;
};

static void shutdown_tick(evutil_socket_t fd, short what, void *arg)
{
	struct shutdown_state *s = arg;
	(void)fd;
	(void)what;
	if (s->e->http_inflight > 0 && engine_now_ms() < s->deadline)
		return;                        /* EV_PERSIST: look again in 50 ms */
	if (s->e->http_inflight > 0)
		log_warn(&s->e->log, NULL, "shutdown: %d requests still in flight at the deadline", s->e->http_inflight);
	event_free(s->tick);
	void (*done)(void *) = s->done;
	void *darg = s->arg;
	free(s);
	done(darg);
}

void paygate_shutdown(struct paygate *pg, int grace_ms, void (*done)(void *arg), void *arg)
{
	struct engine *e = (struct engine *)pg;
	struct shutdown_state *s = calloc(1, sizeof *s);
	struct timeval tv = { 0, 50 * 1000 };

	e->stopping = 1;
	http_stop_accepting(e);
	reload_watch_stop(e);
	if (!s || !(s->tick = event_new(e->base, -1, EV_PERSIST, shutdown_tick, s))) {
		free(s);
		done(arg);
		return;
	}
	s->e = e;
	s->deadline = engine_now_ms() + grace_ms;
	s->done = done;
	s->arg = arg;
	event_add(s->tick, &tv);
	event_active(s->tick, EV_TIMEOUT, 0);
}

void paygate_free(struct paygate *pg)
{
	struct engine *e = (struct engine *)pg;
	if (!e)
		return;
	e->stopping = 1;
	reload_watch_stop(e);
	http_free(e);                      /* frees connections; their requests are cancelled via on_close */
	sched_cancel_all(e);               /* jobs still waiting: re-queued at the next start */
	if (e->gen) {
		struct script_gen *g = e->gen;
		e->gen = NULL;
		script_gen_unref(g);
	}
	fetch_free(e->fetch);
	jobs_free(e->jobs);
	wxc_free(e->wxc);
	secure_free(e);
	store_close(e->store);
	sched_free(e);
	metrics_free(&e->metrics);
	config_free(&e->cfg);
	curl_global_cleanup();
	free(e);
}

/* routes.c — the engine's own routes, in front of the scripts': /healthz, /readyz, /metrics, /admin/reload. */
#include "routes.h"

#include <string.h>
#include <sys/time.h>

#include <event2/buffer.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>

#include "admin.h"
#include "engine.h"
#include "gen.h"
#include "json.h"
#include "metrics.h"
#include "reload.h"
#include "store.h"

/* They answer even when no script generation is loaded. */

static void send_health(struct http_req *h)
{
	struct engine *e = http_engine(h);
	struct evbuffer *b = evbuffer_new();
	struct timeval now;
	gettimeofday(&now, NULL);
	evbuffer_add_printf(b,
	                    "{\"status\":\"%s\",\"generation\":%llu,\"uptime_s\":%lld,\"draining\":%d,"
	                    "\"inflight\":%d,\"last_reload\":{\"ok\":%s,\"at\":%lld",
	                    e->gen ? (e->last_reload_ok ? "ok" : "degraded") : "no_scripts",
	                    e->gen ? (unsigned long long)e->gen->id : 0ULL, (long long)(now.tv_sec - e->started.tv_sec),
	                    e->draining, e->http_inflight, e->last_reload_ok ? "true" : "false",
	                    (long long)e->last_reload_at.tv_sec);
	if (!e->last_reload_ok) {
		evbuffer_add_printf(b, ",\"error\":");
		json_add_string(b, e->last_reload_error);
	}
	evbuffer_add_printf(b, "}");
	if (e->worker.peers_health) /* ,"worker":i,"workers":{...}: the whole gateway */
		e->worker.peers_health(e->worker.arg, b);
	evbuffer_add_printf(b, "}");
	http_answer(h, 200, "application/json; charset=utf-8", b); /* alive: the process answers */
}

/* Ready: a generation is loaded and the gateway is not stopping (a balancer sends traffic then). */
static void send_ready(struct http_req *h)
{
	struct engine *e = http_engine(h);
	int ready = e->gen && !e->stopping;
	struct evbuffer *b = evbuffer_new();
	evbuffer_add_printf(b, "{\"ready\":%s,\"generation\":%llu}", ready ? "true" : "false",
	                    e->gen ? (unsigned long long)e->gen->id : 0ULL);
	http_answer(h, ready ? 200 : 503, "application/json; charset=utf-8", b);
}

static void send_reload(struct http_req *h)
{
	char err[1024];
	struct engine *e = http_engine(h);
	if (reload_run(e, "admin", err, sizeof err) < 0) {
		http_answer_error(h, 422, "reload_failed", err);
		return;
	}
	struct evbuffer *b = evbuffer_new();
	if (e->worker.reload_peers)
		e->worker.reload_peers(e->worker.arg);
	evbuffer_add_printf(b, "{\"ok\":true,\"generation\":%llu}", (unsigned long long)e->gen->id);
	http_answer(h, 200, "application/json; charset=utf-8", b);
}

void routes_metrics(struct engine *e, struct evbuffer *b)
{
	struct timeval now;
	gettimeofday(&now, NULL);
	store_checkpoints(e->store, &e->metrics.db_checkpoints, &e->metrics.db_checkpoints_failed);
	struct metrics_gauges g = {
		.http_inflight = e->http_inflight,
		.generation = e->gen ? e->gen->id : 0,
		.script_memory = e->gen ? e->gen->jail.used : 0,
		.draining = e->draining,
		.uptime_s = now.tv_sec - e->started.tv_sec,
	};
	metrics_render(&e->metrics, &g, b);
}

int routes_front(struct http_req *h, const char *path, enum evhttp_cmd_type cmd)
{
	if (strcmp(path, "/healthz") == 0) {
		send_health(h);
		return 1;
	}
	if (strcmp(path, "/readyz") == 0) {
		send_ready(h);
		return 1;
	}
	if (admin_front(h, path, cmd))
		return 1;
	if (strcmp(path, "/metrics") == 0 && cmd == EVHTTP_REQ_GET) {
		struct evbuffer *b = evbuffer_new();
		struct engine *e = http_engine(h);
		routes_metrics(e, b);
		if (e->worker.peers_metrics) /* one of several workers: the gateway's figures are all of theirs */
			e->worker.peers_metrics(e->worker.arg, b);
		http_answer(h, 200, "text/plain; version=0.0.4", b);
		return 1;
	}
	if (strcmp(path, "/admin/reload") == 0) {
		if (cmd != EVHTTP_REQ_POST) {
			evhttp_add_header(evhttp_request_get_output_headers(http_evreq(h)), "Allow", "POST");
			http_answer_error(h, 405, "method_not_allowed", "use POST /admin/reload");
		} else
			send_reload(h);
		return 1;
	}
	return 0;
}

/* metrics.c — counters and a latency histogram, rendered as Prometheus text. */
#include "metrics.h"

#include <stdlib.h>
#include <string.h>

#include <event2/buffer.h>
#include <lauxlib.h>

static const double bucket_le[METRICS_BUCKETS] = {
	0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 5
};

void metrics_init(struct metrics *m)
{
	memset(m, 0, sizeof *m);
}

void metrics_free(struct metrics *m)
{
	for (int i = 0; i < 256; i++) {
		struct metric_series *s = m->series[i], *next;
		for (; s; s = next) {
			next = s->next;
			free(s->key);
			free(s);
		}
	}
	memset(m, 0, sizeof *m);
}

void metrics_observe_request(struct metrics *m, int status, double seconds)
{
	int cls = status / 100;
	m->http_by_class[cls >= 1 && cls <= 5 ? cls : 0]++;
	int i = 0;
	while (i < METRICS_BUCKETS && seconds > bucket_le[i])
		i++;
	m->latency_bucket[i]++;
	m->latency_sum += seconds;
}

static unsigned hash_str(const char *s)
{
	unsigned h = 2166136261u;
	for (; *s; s++)
		h = (h ^ (unsigned char)*s) * 16777619u;
	return h;
}

static int valid_name(const char *n)
{
	if (!*n || strlen(n) > 128)
		return 0;
	for (const char *p = n; *p; p++) {
		char c = *p;
		int ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' || c == ':' ||
		         (p != n && c >= '0' && c <= '9');
		if (!ok)
			return 0;
	}
	return 1;
}

int metrics_update(struct metrics *m, const char *name, const char *labels, double v, int gauge)
{
	char key[1024];
	int n;

	if (!valid_name(name))
		return -1;
	if (labels && *labels)
		n = snprintf(key, sizeof key, "%s{%s}", name, labels);
	else
		n = snprintf(key, sizeof key, "%s", name);
	if (n < 0 || (size_t)n >= sizeof key)
		return -1;
	unsigned h = hash_str(key) & 255;
	struct metric_series *s = m->series[h];
	while (s && strcmp(s->key, key) != 0)
		s = s->next;
	if (!s) {
		if (m->nseries >= METRICS_MAX_SERIES || !(s = calloc(1, sizeof *s)) || !(s->key = strdup(key))) {
			free(s);
			return -1;
		}
		s->name_len = strlen(name);
		s->gauge = gauge;
		s->next = m->series[h];
		m->series[h] = s;
		m->nseries++;
	}
	s->value = gauge ? v : s->value + v;
	return 0;
}

static void counter(struct evbuffer *b, const char *name, const char *help, uint64_t v)
{
	evbuffer_add_printf(b, "# HELP %s %s\n# TYPE %s counter\n%s %llu\n", name, help, name, name,
	                    (unsigned long long)v);
}

static void gauge(struct evbuffer *b, const char *name, const char *help, double v)
{
	evbuffer_add_printf(b, "# HELP %s %s\n# TYPE %s gauge\n%s %.17g\n", name, help, name, name, v);
}

static void render_http(struct metrics *m, struct evbuffer *b)
{
	static const char *const cls[6] = { "other", "1xx", "2xx", "3xx", "4xx", "5xx" };
	uint64_t total = 0;

	evbuffer_add_printf(b, "# HELP paygate_http_requests_total HTTP requests answered, by status class.\n"
	                       "# TYPE paygate_http_requests_total counter\n");
	for (int i = 0; i < 6; i++)
		evbuffer_add_printf(b, "paygate_http_requests_total{code=\"%s\"} %llu\n", cls[i],
		                    (unsigned long long)m->http_by_class[i]);
	evbuffer_add_printf(b, "# HELP paygate_http_request_seconds Time from request to answer.\n"
	                       "# TYPE paygate_http_request_seconds histogram\n");
	for (int i = 0; i < METRICS_BUCKETS; i++) {
		total += m->latency_bucket[i];
		evbuffer_add_printf(b, "paygate_http_request_seconds_bucket{le=\"%g\"} %llu\n", bucket_le[i],
		                    (unsigned long long)total);
	}
	total += m->latency_bucket[METRICS_BUCKETS];
	evbuffer_add_printf(b,
	                    "paygate_http_request_seconds_bucket{le=\"+Inf\"} %llu\n"
	                    "paygate_http_request_seconds_sum %.9g\npaygate_http_request_seconds_count %llu\n",
	                    (unsigned long long)total, m->latency_sum, (unsigned long long)total);
}

/* Script series, grouped by name so each name gets exactly one TYPE line. */
static void render_series(struct metrics *m, struct evbuffer *b)
{
	m->render_mark++;
	for (int i = 0; i < 256; i++) {
		for (struct metric_series *s = m->series[i]; s; s = s->next) {
			if (s->mark == m->render_mark)
				continue;
			evbuffer_add_printf(b, "# HELP %.*s A series of the scripts (metrics.%s).\n# TYPE %.*s %s\n",
			                    (int)s->name_len, s->key, s->gauge ? "set" : "inc", (int)s->name_len,
			                    s->key, s->gauge ? "gauge" : "counter");
			for (int j = i; j < 256; j++) {
				for (struct metric_series *t = (j == i ? s : m->series[j]); t; t = t->next) {
					if (t->mark != m->render_mark && t->name_len == s->name_len &&
					    memcmp(t->key, s->key, s->name_len) == 0) {
						t->mark = m->render_mark;
						evbuffer_add_printf(b, "%s %.17g\n", t->key, t->value);
					}
				}
			}
		}
	}
}

void metrics_render(struct metrics *m, const struct metrics_gauges *g, struct evbuffer *b)
{
	render_http(m, b);
	gauge(b, "paygate_http_inflight", "Requests being handled now.", g->http_inflight);
	counter(b, "paygate_http_client_aborts_total", "Clients gone before their answer.", m->client_aborts);
	counter(b, "paygate_http_connections_refused_total", "Connections refused at accept: a connection cap.",
	        m->conns_refused);
	counter(b, "paygate_http_connections_evicted_total",
	        "Connections waiting for a request head closed to make room at the worker's cap.", m->conns_evicted);
	counter(b, "paygate_http_connections_expired_total", "Connections closed at the request head or body deadline.",
	        m->conns_expired);
	counter(b, "paygate_script_errors_total", "Handlers and jobs that raised an error.", m->script_errors);
	counter(b, "paygate_script_kills_total", "Handlers stopped for exceeding the instruction budget.",
	        m->script_kills);
	gauge(b, "paygate_script_generation", "Id of the script generation serving now.", (double)g->generation);
	gauge(b, "paygate_script_memory_bytes", "Lua memory of the current generation.", (double)g->script_memory);
	gauge(b, "paygate_script_generations_draining", "Retired generations still finishing work.", g->draining);
	counter(b, "paygate_reloads_ok_total", "Script reloads that went live.", m->reloads_ok);
	counter(b, "paygate_reloads_failed_total", "Script reloads refused (old code kept serving).",
	        m->reloads_failed);
	counter(b, "paygate_upstream_requests_total", "Outbound HTTP requests that got an answer.", m->fetch_ok);
	counter(b, "paygate_upstream_errors_total",
	        "Outbound HTTP requests that failed (timeout, connect, "
	        "TLS).",
	        m->fetch_failed);
	counter(b, "paygate_jobs_ok_total", "Jobs that ran to completion.", m->jobs_ok);
	counter(b, "paygate_jobs_failed_total", "Job runs that failed and will be retried.", m->jobs_failed);
	counter(b, "paygate_jobs_dead_total", "Jobs given up after their last attempt.", m->jobs_dead);
	counter(b, "paygate_db_commits_total", "Transactions committed.", m->db_commits);
	counter(b, "paygate_db_rollbacks_total", "Transactions rolled back.", m->db_rollbacks);
	counter(b, "paygate_db_conflicts_total",
	        "Transactions run again after a serialization failure or deadlock (PostgreSQL).", m->db_conflicts);
	counter(b, "paygate_db_batches_total", "Batches committed: each is one sync for a loop turn's writes.",
	        m->db_batches);
	counter(b, "paygate_db_batches_lost_total", "Batches whose commit failed (their writes were refused).",
	        m->db_batches_lost);
	counter(b, "paygate_db_lock_waits_total", "Times a writer waited for another worker's write lock.",
	        m->db_lock_waits);
	counter(b, "paygate_db_checkpoints_total", "WAL checkpoints run off the loop (a failed one is run again).",
	        m->db_checkpoints);
	counter(b, "paygate_db_checkpoints_failed_total", "WAL checkpoints that failed (an I/O error).",
	        m->db_checkpoints_failed);
	gauge(b, "paygate_uptime_seconds", "Seconds since start.", (double)g->uptime_s);
	render_series(m, b);
}

/* ---- Lua: metrics.inc(name [, labels [, n]]), metrics.set(name, value [, labels]) ---- */

static int cmp_str(const void *a, const void *b)
{
	return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* Render a {k = v} table as k="v",... with Prometheus escaping, names sorted: the same labels
   give the same series whatever order the table was built in (a reload builds it afresh). [-0, +0, e] */
static void render_labels(lua_State *L, int idx, char *out, size_t cap)
{
	const char *names[32];
	int n = 0;
	size_t len = 0;
	out[0] = '\0';
	if (lua_isnoneornil(L, idx))
		return;
	luaL_checktype(L, idx, LUA_TTABLE);
	lua_pushnil(L);
	while (lua_next(L, idx)) {
		const char *k = lua_type(L, -2) == LUA_TSTRING ? lua_tostring(L, -2) : NULL;
		if (!k || !valid_name(k))
			luaL_error(L, "metrics: label names must be identifiers");
		if (n == 32)
			luaL_error(L, "metrics: at most 32 labels");
		names[n++] = k; /* a key of the table at idx: stays alive while the table does */
		lua_pop(L, 1);
	}
	qsort(names, (size_t)n, sizeof names[0], cmp_str);
	for (int i = 0; i < n; i++) {
		lua_getfield(L, idx, names[i]);
		const char *v = luaL_tolstring(L, -1, NULL);
		len += (size_t)snprintf(out + len, len < cap ? cap - len : 0, "%s%s=\"", len ? "," : "", names[i]);
		for (; *v && len + 3 < cap; v++) {
			if (*v == '"' || *v == '\\' || *v == '\n')
				out[len++] = '\\';
			out[len++] = *v == '\n' ? 'n' : *v;
		}
		len += (size_t)snprintf(out + len, len < cap ? cap - len : 0, "\"");
		lua_pop(L, 2);
		if (len >= cap)
			luaL_error(L, "metrics: labels too long");
	}
}

static int l_metrics_inc(lua_State *L)
{
	struct metrics *m = lua_touserdata(L, lua_upvalueindex(1));
	char labels[512];
	const char *name = luaL_checkstring(L, 1);
	render_labels(L, 2, labels, sizeof labels);
	if (metrics_update(m, name, labels, luaL_optnumber(L, 3, 1), 0) < 0)
		return luaL_error(L, "metrics.inc: bad metric name '%s' or too many series", name);
	return 0;
}

static int l_metrics_set(lua_State *L)
{
	struct metrics *m = lua_touserdata(L, lua_upvalueindex(1));
	char labels[512];
	const char *name = luaL_checkstring(L, 1);
	lua_Number v = luaL_checknumber(L, 2);
	render_labels(L, 3, labels, sizeof labels);
	if (metrics_update(m, name, labels, v, 1) < 0)
		return luaL_error(L, "metrics.set: bad metric name '%s' or too many series", name);
	return 0;
}

void metrics_push_lua(lua_State *L, struct metrics *m)
{
	static const luaL_Reg fns[] = { { "inc", l_metrics_inc }, { "set", l_metrics_set }, { NULL, NULL } };
	lua_newtable(L);
	lua_pushlightuserdata(L, m);
	luaL_setfuncs(L, fns, 1);
}

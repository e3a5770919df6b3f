/* metrics.h — counters and a latency histogram, rendered as Prometheus text. */
#ifndef PAYGATE_METRICS_H
#define PAYGATE_METRICS_H

#include <stddef.h>
#include <stdint.h>

#include <lua.h>

struct evbuffer;

#define METRICS_BUCKETS    12
#define METRICS_MAX_SERIES 10000

struct metric_series {
	char *key;       /* name{label="v",...} exactly as rendered */
	size_t name_len; /* the metric name is key[0..name_len) */
	double value;
	int gauge;
	unsigned mark; /* last render that printed it */
	struct metric_series *next;
};

struct metrics {
	uint64_t http_by_class[6]; /* [1..5] = 1xx..5xx, [0] other */
	uint64_t latency_bucket[METRICS_BUCKETS + 1];
	double latency_sum;
	uint64_t script_errors, script_kills;
	uint64_t client_aborts;
	uint64_t conns_refused, conns_evicted, conns_expired; /* http.c: caps and deadlines */
	uint64_t reloads_ok, reloads_failed;
	uint64_t fetch_ok, fetch_failed;
	uint64_t jobs_ok, jobs_failed, jobs_dead;
	uint64_t db_commits, db_rollbacks;
	uint64_t db_conflicts; /* PostgreSQL: transactions run again after a serialization failure or deadlock */
	uint64_t db_batches, db_batches_lost;
	uint64_t db_lock_waits;                         /* a writer waited for another worker's lock */
	uint64_t db_checkpoints, db_checkpoints_failed; /* WAL checkpoints on the checkpointer's thread */

	struct metric_series *series[256]; /* script-defined series, by hash */
	int nseries;
	unsigned render_mark;
};

void metrics_init(struct metrics *m);
void metrics_free(struct metrics *m);
void metrics_observe_request(struct metrics *m, int status, double seconds);

/*
** Add delta to (or, for a gauge, set) the series `name{labels}`; labels is
** already rendered ("a=\"x\",b=\"y\"") or NULL. Returns -1 when the name is
** invalid or the series limit is reached.
*/
int metrics_update(struct metrics *m, const char *name, const char *labels, double v, int gauge);

/* The engine's state at the moment of a render, read by its owner (routes.c). */
struct metrics_gauges {
	int http_inflight;    /* requests being handled now */
	uint64_t generation;  /* id of the generation serving now, 0 when none */
	size_t script_memory; /* Lua bytes of that generation */
	int draining;         /* retired generations still finishing work */
	int64_t uptime_s;
};

/* Render the counters, the gauges and the scripts' series into buf. */
void metrics_render(struct metrics *m, const struct metrics_gauges *g, struct evbuffer *buf);

/* Lua: the `metrics` table (inc, set), updating m. [-0, +1, e] */
void metrics_push_lua(lua_State *L, struct metrics *m);

#endif

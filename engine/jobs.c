/* jobs.c — durable jobs: a SQLite table and a scheduler that runs due jobs as coroutines. */
#include "jobs.h"

#include <assert.h>
#include <stdlib.h>
#include <string.h>

#include <event2/event.h>
#include <lauxlib.h>

#include "clock.h"
#include "coro.h"
#include "engine.h"
#include "gen.h"
#include "pgdb.h"
#include "store.h"

/*
** A job is a row: name, JSON payload, run_at (ms), attempts, state. The
** scheduler claims due rows (queued → running), runs `app._run_job` on the
** current generation in a coroutine, then deletes the row (success) or puts
** it back with a later run_at (failure, exponential backoff) until
** max_attempts, when it becomes "dead" and stays for an operator to see.
** Because jobs.schedule() writes through the same connection, a job
** scheduled inside db.tx() exists exactly when the transaction commits.
**
** Several workers may share the table. A claim names its owner (the
** engine's job_owner) and a lease; the owner renews the leases of the jobs
** it runs. At start an engine re-queues only the jobs of owners it knows to
** be dead (an earlier run of the gateway, its own earlier incarnations);
** any job whose lease ran out is re-queued by whoever notices. So a worker
** that starts never takes a job another live worker is running.
*/

#define BACKOFF_BASE_MS 1000
#define BACKOFF_MAX_MS  (3600 * 1000)
#define POLL_IDLE_MS    60000 /* safety net: look again at least this often */
#define POLL_PEERS_MS   1000  /* ... or this often when other workers may have scheduled jobs */
#define LOCKED_RETRY_MS 5     /* another worker holds the write lock: try the bookkeeping again soon */
#define POLL_PG_MS      5000  /* PostgreSQL: NOTIFY tells of new jobs; this is the slow poll behind it */

struct jobs {
	struct engine *eng;
	struct event *timer;
	int running;
	struct pgdb *pg;              /* PostgreSQL: the bookkeeping is asynchronous (see "on PostgreSQL" below) */
	struct pg_listener *listener; /* hears NOTIFY paygate_jobs: a job was queued, on any node */
	int claiming, kick_again;     /* a claim is in flight; kick once more when it is answered */
	struct store_waiter commit;   /* a kick waiting for the store's open batch */
	int64_t next_lease_check;     /* when to renew our leases and look for expired ones (ms) */
};

struct job_run {
	struct jobs *j;
	int64_t id;
	int attempts, max_attempts;
	char name[64];
	char *payload;
	char reqid[32];
	char *error;         /* the failed run's error, until its outcome is recorded */
	struct event *retry; /* recording the outcome again (the write lock was held) */
};

static int jobs_open_pg(struct jobs *j, char *err, size_t errlen);
static void kick_pg(struct jobs *j);
static void record_outcome_pg(struct job_run *r);

static const char *const JOBS_DDL =
    "CREATE TABLE IF NOT EXISTS _paygate_jobs ("
    " id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT NOT NULL, key TEXT UNIQUE, payload TEXT NOT NULL,"
    " run_at INTEGER NOT NULL, attempts INTEGER NOT NULL DEFAULT 0,"
    " max_attempts INTEGER NOT NULL DEFAULT 25, state TEXT NOT NULL DEFAULT 'queued',"
    " last_error TEXT, created_at INTEGER NOT NULL, updated_at INTEGER NOT NULL,"
    " owner TEXT, lease_until INTEGER);"
    "CREATE INDEX IF NOT EXISTS _paygate_jobs_due ON _paygate_jobs(state, run_at);";

/* Tables made before workers had no owner or lease: add them (once; "duplicate column" means done). */
static const char *const JOBS_UPGRADE[] = { "ALTER TABLE _paygate_jobs ADD COLUMN owner TEXT",
	                                    "ALTER TABLE _paygate_jobs ADD COLUMN lease_until INTEGER" };

/* The jobs left running by engines that are gone: earlier runs of the gateway, our own earlier incarnations. */
static const char *const REQUEUE_DEAD =
    "UPDATE _paygate_jobs SET state = 'queued', owner = NULL WHERE state = 'running' AND (owner IS NULL"
    " OR substr(owner, 1, length(?1)) <> ?1 OR (substr(owner, 1, length(?2)) = ?2 AND owner <> ?3))";

static int requeue_dead(struct engine *e, char *err, size_t errlen)
{
	sqlite3 *db = store_db(e->store);
	sqlite3_stmt *s = NULL;
	for (size_t i = 0; i < sizeof JOBS_UPGRADE / sizeof JOBS_UPGRADE[0]; i++) {
		char *msg = NULL;
		if (sqlite3_exec(db, JOBS_UPGRADE[i], NULL, NULL, &msg) != SQLITE_OK &&
		    !(msg && strstr(msg, "duplicate column"))) {
			snprintf(err, errlen, "jobs: %s", msg ? msg : "out of memory");
			sqlite3_free(msg);
			return -1;
		}
		sqlite3_free(msg);
	}
	if (sqlite3_prepare_v2(db, REQUEUE_DEAD, -1, &s, NULL) != SQLITE_OK) {
		snprintf(err, errlen, "jobs: %s", sqlite3_errmsg(db));
		return -1;
	}
	sqlite3_bind_text(s, 1, e->worker.run_owners, -1, SQLITE_STATIC);
	sqlite3_bind_text(s, 2, e->worker.predecessors, -1, SQLITE_STATIC);
	sqlite3_bind_text(s, 3, e->worker.job_owner, -1, SQLITE_STATIC);
	int rc = sqlite3_step(s);
	sqlite3_finalize(s);
	if (rc != SQLITE_DONE) {
		snprintf(err, errlen, "jobs: %s", sqlite3_errmsg(db));
		return -1;
	}
	if (sqlite3_changes(db) > 0)
		log_info(&e->log, NULL, "re-queued %d job(s) left running by a stopped engine", sqlite3_changes(db));
	return 0;
}

static void on_timer(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	jobs_kick(arg);
}

struct jobs *jobs_new(struct engine *e, char *err, size_t errlen)
{
	struct jobs *j = calloc(1, sizeof *j);
	char *msg = NULL;

	if (!j) {
		snprintf(err, errlen, "out of memory");
		return NULL;
	}
	j->eng = e;
	j->timer = evtimer_new(e->base, on_timer, j);
	if (j->timer && store_pg(e->store)) {
		if (jobs_open_pg(j, err, errlen) < 0) {
			jobs_free(j);
			return NULL;
		}
		return j;
	}
	if (!j->timer || sqlite3_exec(store_db(e->store), JOBS_DDL, NULL, NULL, &msg) != SQLITE_OK) {
		snprintf(err, errlen, "jobs: %s", msg ? msg : "out of memory");
		sqlite3_free(msg);
		jobs_free(j);
		return NULL;
	}
	if (requeue_dead(e, err, errlen) < 0) {
		jobs_free(j);
		return NULL;
	}
	return j;
}

void jobs_free(struct jobs *j)
{
	if (!j)
		return;
	store_cancel_wait(&j->commit);
	pg_listener_free(j->listener);
	if (j->timer)
		event_free(j->timer);
	free(j);
}

int jobs_running(const struct jobs *j)
{
	return j->running;
}

/* ---- finishing a run ---- */

static int64_t backoff_ms(int attempts)
{
	int64_t ms = BACKOFF_BASE_MS;
	for (int i = 1; i < attempts && ms < BACKOFF_MAX_MS; i++)
		ms *= 2;
	if (ms > BACKOFF_MAX_MS)
		ms = BACKOFF_MAX_MS;
	return ms + (int64_t)(rand() % (int)(ms / 4 + 1)); /* jitter spreads retries */
}

/* Count and log how the run ended (its row says so now). */
static void note_outcome(struct job_run *r, const char *error)
{
	struct engine *e = r->j->eng;
	if (!error) {
		e->metrics.jobs_ok++;
	} else if (r->attempts >= r->max_attempts) {
		e->metrics.jobs_dead++;
		log_error(&e->log, r->reqid, "job %s #%lld gave up after %d attempts: %s", r->name, (long long)r->id,
		          r->attempts, error);
	} else {
		e->metrics.jobs_failed++;
		log_warn(&e->log, r->reqid, "job %s #%lld attempt %d failed, will retry: %s", r->name, (long long)r->id,
		         r->attempts, error);
	}
}

/* Record how the run ended: 0, or -1 when another worker holds the write lock (try again later). */
static int record_outcome(struct job_run *r, const char *error)
{
	struct engine *e = r->j->eng;
	char err[256];
	sqlite3_stmt *s;
	int dead = error && r->attempts >= r->max_attempts;

	if (!error) {
		s = store_prepare(e->store, "DELETE FROM _paygate_jobs WHERE id = ? AND owner = ?", err, sizeof err);
		if (s) {
			sqlite3_bind_int64(s, 1, r->id);
			sqlite3_bind_text(s, 2, e->worker.job_owner, -1, SQLITE_STATIC);
		}
	} else {
		s = store_prepare(e->store,
		                  "UPDATE _paygate_jobs SET state = ?, run_at = ?, last_error = ?,"
		                  " updated_at = ?, owner = NULL WHERE id = ? AND owner = ?",
		                  err, sizeof err);
		if (s) {
			int64_t now = clock_now_ms();
			sqlite3_bind_text(s, 1, dead ? "dead" : "queued", -1, SQLITE_STATIC);
			sqlite3_bind_int64(s, 2, now + backoff_ms(r->attempts));
			sqlite3_bind_text(s, 3, error, -1, SQLITE_TRANSIENT);
			sqlite3_bind_int64(s, 4, now);
			sqlite3_bind_int64(s, 5, r->id);
			sqlite3_bind_text(s, 6, e->worker.job_owner, -1, SQLITE_STATIC);
		}
	}
	if (!s && store_locked_out(e->store))
		return -1;
	int rc = s ? sqlite3_step(s) : SQLITE_ERROR;
	if (s)
		sqlite3_reset(s);
	if (rc != SQLITE_DONE) {
		log_error(&e->log, r->reqid, "job %s #%lld: cannot record the outcome: %s", r->name, (long long)r->id,
		          s ? sqlite3_errmsg(store_db(e->store)) : err);
		return 0;
	}
	if (sqlite3_changes(store_db(e->store)) == 0)
		log_warn(&e->log, r->reqid,
		         "job %s #%lld ran past its lease and was taken over by another worker; "
		         "this run's outcome is not recorded",
		         r->name, (long long)r->id);
	note_outcome(r, error);
	return 0;
}

static void jobs_soon(struct jobs *j)
{
	static const struct timeval now = { 0, 0 };
	evtimer_add(j->timer, &now);
}

static void run_free(struct job_run *r)
{
	struct jobs *j = r->j;
	assert(j->running > 0);
	j->running--;
	if (r->retry)
		event_free(r->retry);
	free(r->error);
	free(r->payload);
	free(r);
}

static void run_finish(struct job_run *r)
{
	struct jobs *j = r->j;
	run_free(r);
	jobs_soon(j); /* look again on the next loop turn */
}

static void later(struct event *ev, int64_t ms)
{
	struct timeval tv = { (time_t)(ms / 1000), (suseconds_t)((ms % 1000) * 1000) };
	evtimer_add(ev, &tv);
}

/* Record the run's outcome, or try again shortly while another worker holds the write lock. */
static void settle(evutil_socket_t fd, short what, void *arg)
{
	struct job_run *r = arg;
	(void)fd;
	(void)what;
	if (r->j->pg) {
		record_outcome_pg(r);
		return;
	}
	if (record_outcome(r, r->error) == 0) {
		run_finish(r);
		return;
	}
	if (!r->retry && !(r->retry = evtimer_new(r->j->eng->base, settle, r))) {
		log_error(&r->j->eng->log, r->reqid, "job %s #%lld: out of memory; its lease will re-queue it", r->name,
		          (long long)r->id);
		run_finish(r);
		return;
	}
	later(r->retry, LOCKED_RETRY_MS);
}

static void job_done(struct coro *c, int status)
{
	struct job_run *r = c->owner;
	char buf[4096];

	if (status != LUA_OK) {
		if (c->budget.killed)
			r->j->eng->metrics.script_kills++;
		r->error = strdup(coro_error_text(c, status, buf, sizeof buf));
		if (!r->error)
			r->error = strdup("out of memory");
	}
	coro_free(c);
	settle(-1, 0, r);
}

/* Engine shutdown while the job waits: its row stays 'running' and is re-queued at the next start. */
static void job_abandon(struct coro *c)
{
	run_free(c->owner);
}

/* Push app._run_job, name, payload, {id=, attempt=}. */
static int push_job(lua_State *L, void *arg)
{
	struct job_run *r = arg;
	struct gen *g = jail_of(L)->owner;
	lua_rawgeti(L, LUA_REGISTRYINDEX, g->run_job_ref);
	lua_pushstring(L, r->name);
	lua_pushstring(L, r->payload);
	lua_createtable(L, 0, 2);
	lua_pushinteger(L, r->id);
	lua_setfield(L, -2, "id");
	lua_pushinteger(L, r->attempts);
	lua_setfield(L, -2, "attempt");
	return 3;
}

/* Copy the current row of `due` into a new run (the statement is reset right after). */
static struct job_run *read_due(struct jobs *j, sqlite3_stmt *due)
{
	struct job_run *r = calloc(1, sizeof *r);
	if (!r)
		return NULL;
	r->j = j;
	r->id = sqlite3_column_int64(due, 0);
	snprintf(r->name, sizeof r->name, "%s", (const char *)sqlite3_column_text(due, 1));
	r->payload = strdup((const char *)sqlite3_column_text(due, 2));
	r->attempts = sqlite3_column_int(due, 3) + 1;
	r->max_attempts = sqlite3_column_int(due, 4);
	snprintf(r->reqid, sizeof r->reqid, "job-%lld-%d", (long long)r->id, r->attempts);
	j->running++;
	return r;
}

/* The run's row is ours: run the job in a coroutine of its own. */
static void run_start(struct jobs *j, struct job_run *r)
{
	struct engine *e = j->eng;
	struct coro *c = coro_start(e, e->gen, push_job, r, job_done, r, r->reqid);
	if (!c) {
		r->error = strdup("out of memory starting the job");
		settle(-1, 0, r);
		return;
	}
	c->abandon = job_abandon;
	c->what = r->name;
	coro_go(c);
}

/* Claim the run's row (queued → running, ours, leased) and start its coroutine; -1: the write lock is held. */
static int start_job(struct jobs *j, struct job_run *r)
{
	struct engine *e = j->eng;
	char err[256];
	int64_t now = clock_now_ms();
	sqlite3_stmt *claim = store_prepare(e->store,
	                                    "UPDATE _paygate_jobs SET state = 'running', attempts = ?, updated_at = ?,"
	                                    " owner = ?, lease_until = ? WHERE id = ? AND state = 'queued'",
	                                    err, sizeof err);
	if (!claim && store_locked_out(e->store)) {
		run_free(r);
		return -1;
	}
	if (!r->payload || !claim) {
		run_finish(r);
		return 0;
	}
	sqlite3_bind_int(claim, 1, r->attempts);
	sqlite3_bind_int64(claim, 2, now);
	sqlite3_bind_text(claim, 3, e->worker.job_owner, -1, SQLITE_STATIC);
	sqlite3_bind_int64(claim, 4, now + e->cfg.jobs_lease_ms);
	sqlite3_bind_int64(claim, 5, r->id);
	int rc = sqlite3_step(claim);
	sqlite3_reset(claim);
	if (rc != SQLITE_DONE || sqlite3_changes(store_db(e->store)) != 1) {
		run_finish(r);
		return 0;
	}
	run_start(j, r);
	return 0;
}

/*
** Every third of a lease: renew the leases of the jobs we run, and re-queue
** the jobs whose owner let its lease run out (a worker that died or hangs).
** Another worker holding the write lock only postpones this by a second.
*/
static void check_leases(struct jobs *j)
{
	struct engine *e = j->eng;
	char err[256];
	int64_t now = clock_now_ms();
	if (now < j->next_lease_check)
		return;
	j->next_lease_check = now + 1000;
	sqlite3_stmt *s =
	    store_prepare(e->store, "UPDATE _paygate_jobs SET lease_until = ? WHERE state = 'running' AND owner = ?",
	                  err, sizeof err);
	if (!s)
		return;
	sqlite3_bind_int64(s, 1, now + e->cfg.jobs_lease_ms);
	sqlite3_bind_text(s, 2, e->worker.job_owner, -1, SQLITE_STATIC);
	sqlite3_step(s);
	sqlite3_reset(s);
	s = store_prepare(e->store,
	                  "UPDATE _paygate_jobs SET state = 'queued', owner = NULL"
	                  " WHERE state = 'running' AND lease_until < ? AND owner <> ?",
	                  err, sizeof err);
	if (!s)
		return;
	sqlite3_bind_int64(s, 1, now);
	sqlite3_bind_text(s, 2, e->worker.job_owner, -1, SQLITE_STATIC);
	if (sqlite3_step(s) == SQLITE_DONE && sqlite3_changes(store_db(e->store)) > 0)
		log_warn(&e->log, NULL, "re-queued %d job(s) whose owner's lease ran out",
		         sqlite3_changes(store_db(e->store)));
	sqlite3_reset(s);
	j->next_lease_check = now + e->cfg.jobs_lease_ms / 3;
}

/* Arm the timer for the earliest queued job (or the idle poll). */
static void arm(struct jobs *j)
{
	char err[256];
	int64_t idle = j->eng->worker.count > 1 ? POLL_PEERS_MS : POLL_IDLE_MS, delay = idle;
	sqlite3_stmt *s = store_prepare(j->eng->store, "SELECT min(run_at) FROM _paygate_jobs WHERE state = 'queued'",
	                                err, sizeof err);
	if (s && sqlite3_step(s) == SQLITE_ROW && sqlite3_column_type(s, 0) != SQLITE_NULL) {
		int64_t d = sqlite3_column_int64(s, 0) - clock_now_ms();
		delay = d < 0 ? 0 : (d < delay ? d : delay);
	}
	if (s)
		sqlite3_reset(s);
	if (j->running >= j->eng->cfg.jobs_max_running)
		delay = idle; /* a finishing job kicks us again */
	later(j->timer, delay);
}

static void kick_after_commit(struct store_waiter *w, int ok)
{
	(void)ok;
	jobs_kick(STORE_WAITER_OWNER(w, struct jobs, commit));
}

void jobs_kick(struct jobs *j)
{
	struct engine *e = j->eng;
	char err[256];

	if (j->pg) {
		if (!e->stopping && e->gen)
			kick_pg(j);
		return;
	}
	if (e->stopping || !e->gen || store_in_tx(e->store))
		return;
	/* A job never runs on writes that are not durable yet (the transaction that scheduled it, the
	   payment it delivers): while the batch is open, the kick waits for it. */
	if (j->commit.next)
		return;
	j->commit.fn = kick_after_commit;
	if (store_wait_commit(e->store, &j->commit))
		return;
	check_leases(j);
	int room = e->cfg.jobs_max_running - j->running, locked = 0;
	while (room > 0 && !locked) {
		sqlite3_stmt *due = store_prepare(e->store,
		                                  "SELECT id, name, payload, attempts, max_attempts FROM _paygate_jobs"
		                                  " WHERE state = 'queued' AND run_at <= ? ORDER BY run_at, id LIMIT 1",
		                                  err, sizeof err);
		if (!due)
			break;
		sqlite3_bind_int64(due, 1, clock_now_ms());
		if (sqlite3_step(due) != SQLITE_ROW) {
			sqlite3_reset(due);
			break;
		}
		struct job_run *r = read_due(j, due);
		sqlite3_reset(due); /* before start_job prepares other statements */
		if (!r)
			break;
		locked = start_job(j, r) < 0;
		room = e->cfg.jobs_max_running - j->running;
	}
	if (locked)
		later(j->timer, LOCKED_RETRY_MS);
	else
		arm(j);
}

/*
** ---- on PostgreSQL ----
**
** The same table and the same life of a row, for N nodes. The bookkeeping is
** asynchronous (pg_pool_query: a connection of the pool's per statement, at
** READ COMMITTED, see pg.c), so the loop never waits for it. One statement
** claims up to `room` due jobs: FOR UPDATE SKIP LOCKED lets nodes claim at
** once without waiting for, or taking, each other's rows. An insert (or a re-queue) of a job notifies
** `paygate_jobs`; every node listens, so a job queued on one node is seen at
** once on all; a slow poll (POLL_PG_MS) stands behind the notifications.
** At start a node re-queues only its own worker's earlier incarnations'
** jobs: any other node's job comes back when its lease runs out.
*/

static const char *const JOBS_DDL_PG =
    "CREATE TABLE IF NOT EXISTS _paygate_jobs ("
    " id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY, name TEXT NOT NULL, key TEXT UNIQUE,"
    " payload TEXT NOT NULL, run_at BIGINT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0,"
    " max_attempts INTEGER NOT NULL DEFAULT 25, state TEXT NOT NULL DEFAULT 'queued',"
    " last_error TEXT, created_at BIGINT NOT NULL, updated_at BIGINT NOT NULL,"
    " owner TEXT, lease_until BIGINT);"
    "CREATE INDEX IF NOT EXISTS _paygate_jobs_due ON _paygate_jobs(state, run_at);"
    "CREATE OR REPLACE FUNCTION _paygate_jobs_notify() RETURNS trigger LANGUAGE plpgsql AS"
    " $$BEGIN PERFORM pg_notify('paygate_jobs', ''); RETURN NULL; END$$;"
    "DROP TRIGGER IF EXISTS _paygate_jobs_queued ON _paygate_jobs;"
    "CREATE TRIGGER _paygate_jobs_queued AFTER INSERT OR UPDATE OF state ON _paygate_jobs"
    " FOR EACH ROW WHEN (NEW.state = 'queued') EXECUTE FUNCTION _paygate_jobs_notify();";

static const char *const CLAIM_PG =
    "UPDATE _paygate_jobs SET state = 'running', attempts = attempts + 1, updated_at = ?, owner = ?,"
    " lease_until = ? WHERE id IN (SELECT id FROM _paygate_jobs WHERE state = 'queued' AND run_at <= ?"
    " ORDER BY run_at, id LIMIT ? FOR UPDATE SKIP LOCKED)"
    " RETURNING id, name, payload, attempts, max_attempts";

/* s as an SQL string literal ('...', quotes doubled) in buf (owners are ours: short, printable). */
static const char *sql_literal(const char *s, char *buf, size_t len)
{
	size_t o = 0;
	assert(len >= 3);
	buf[o++] = '\'';
	for (; *s && o + 3 < len; s++) {
		if (*s == '\'')
			buf[o++] = '\'';
		buf[o++] = *s;
	}
	buf[o++] = '\'';
	buf[o] = '\0';
	return buf;
}

static void on_notify(void *arg)
{
	jobs_kick(arg);
}

static int jobs_open_pg(struct jobs *j, char *err, size_t errlen)
{
	struct engine *e = j->eng;
	j->pg = store_pg(e->store);
	if (pgdb_setup(j->pg, JOBS_DDL_PG, err, errlen) < 0) /* also for a check: a migration may schedule jobs */
		return -1;
	if (e->check_only) /* a check runs no jobs: it does not listen */
		return 0;
	if (e->worker.predecessors[0]) { /* a restarted worker: its predecessors' jobs are not running anywhere */
		char sql[512], pre[170], self[170];
		snprintf(sql, sizeof sql,
		         "UPDATE _paygate_jobs SET state = 'queued', owner = NULL WHERE state = 'running'"
		         " AND substr(owner, 1, length(%s)) = %s AND owner <> %s",
		         sql_literal(e->worker.predecessors, pre, sizeof pre),
		         sql_literal(e->worker.predecessors, pre, sizeof pre),
		         sql_literal(e->worker.job_owner, self, sizeof self));
		if (pgdb_setup(j->pg, sql, err, errlen) < 0)
			return -1;
	}
	if (!(j->listener = pg_listen(pgdb_pool(j->pg), "paygate_jobs", on_notify, j, err, errlen)))
		return -1;
	return 0;
}

static void pg_args(char (*buf)[32], const char **vals, int n, const int64_t *ints)
{
	for (int i = 0; i < n; i++) {
		snprintf(buf[i], sizeof buf[i], "%lld", (long long)ints[i]);
		vals[i] = buf[i];
	}
}

static int query_ok(PGresult *res)
{
	return res && (PQresultStatus(res) == PGRES_TUPLES_OK || PQresultStatus(res) == PGRES_COMMAND_OK);
}

static void outcome_recorded(void *arg, PGresult *res, const char *err)
{
	struct job_run *r = arg;
	struct engine *e = r->j->eng;
	char buf[300];
	if (!query_ok(res)) {
		/* Its lease runs out and the job runs again: jobs are written to be retried. */
		log_error(&e->log, r->reqid, "job %s #%lld: cannot record the outcome: %s; it will run again", r->name,
		          (long long)r->id, res ? pg_result_error(res, buf, sizeof buf) : err);
	} else if (strcmp(PQcmdTuples(res), "0") == 0) {
		log_warn(&e->log, r->reqid,
		         "job %s #%lld ran past its lease and was taken over by another node or worker; "
		         "this run's outcome is not recorded",
		         r->name, (long long)r->id);
	} else {
		note_outcome(r, r->error);
	}
	PQclear(res);
	run_finish(r);
}

static void record_outcome_pg(struct job_run *r)
{
	struct engine *e = r->j->eng;
	char ints[4][32], id[32];
	const char *vals[6];
	int dead = r->error && r->attempts >= r->max_attempts, rc;
	snprintf(id, sizeof id, "%lld", (long long)r->id);
	if (!r->error) {
		const char *v[] = { id, e->worker.job_owner };
		rc = pg_pool_query(pgdb_pool(r->j->pg), "DELETE FROM _paygate_jobs WHERE id = ? AND owner = ?", 2, v,
		                   outcome_recorded, r);
	} else {
		int64_t now = clock_now_ms(), n[] = { now + backoff_ms(r->attempts), now };
		pg_args(ints, vals + 1, 2, n);
		vals[0] = dead ? "dead" : "queued";
		vals[3] = r->error;
		vals[4] = id;
		vals[5] = e->worker.job_owner;
		/* run_at, updated_at are vals[1], vals[2] */
		rc = pg_pool_query(pgdb_pool(r->j->pg),
		                   "UPDATE _paygate_jobs SET state = ?, run_at = ?, updated_at = ?, last_error = ?,"
		                   " owner = NULL WHERE id = ? AND owner = ?",
		                   6, vals, outcome_recorded, r);
	}
	if (rc < 0) {
		log_error(&e->log, r->reqid, "job %s #%lld: out of memory; its lease will re-queue it", r->name,
		          (long long)r->id);
		run_finish(r);
	}
}

static void leases_done(void *arg, PGresult *res, const char *err)
{
	struct jobs *j = arg;
	char buf[300];
	if (!query_ok(res))
		log_warn(&j->eng->log, NULL, "jobs: cannot renew or check leases: %s",
		         res ? pg_result_error(res, buf, sizeof buf) : err);
	else if (PQntuples(res) > 0)
		log_warn(&j->eng->log, NULL, "re-queued %d job(s) whose owner's lease ran out", PQntuples(res));
	PQclear(res);
}

/* Every third of a lease: renew ours, re-queue whoever let theirs run out (as check_leases). */
static void check_leases_pg(struct jobs *j)
{
	struct engine *e = j->eng;
	char ints[2][32];
	const char *vals[3];
	int64_t now = clock_now_ms();
	if (now < j->next_lease_check)
		return;
	j->next_lease_check = now + e->cfg.jobs_lease_ms / 3;
	int64_t renew[] = { now + e->cfg.jobs_lease_ms, now };
	pg_args(ints, vals, 1, renew);
	vals[1] = e->worker.job_owner;
	if (j->running > 0)
		pg_pool_query(pgdb_pool(j->pg),
		              "UPDATE _paygate_jobs SET lease_until = ? WHERE state = 'running' AND owner = ?", 2, vals,
		              leases_done, j);
	pg_args(ints, vals, 1, renew + 1);
	pg_pool_query(pgdb_pool(j->pg),
	              "UPDATE _paygate_jobs SET state = 'queued', owner = NULL"
	              " WHERE state = 'running' AND lease_until < ? AND owner <> ? RETURNING id",
	              2, vals, leases_done, j);
}

/*
** Look again in ms, or sooner when the leases are due for their check: one
** that is overdue (the timer fired a little early, the queries took a while)
** is checked at once, so that a job that runs past a lease is never left
** unrenewed for a whole slow poll and taken over by another node.
*/
static void later_pg(struct jobs *j, int64_t ms)
{
	int64_t lease = j->next_lease_check - clock_now_ms();
	if (lease < ms)
		ms = lease > 0 ? lease : 1;
	later(j->timer, ms);
}

static void armed_pg(void *arg, PGresult *res, const char *err)
{
	struct jobs *j = arg;
	int64_t delay = POLL_PG_MS;
	(void)err;
	if (query_ok(res) && PQntuples(res) == 1 && !PQgetisnull(res, 0, 0)) {
		int64_t d = strtoll(PQgetvalue(res, 0, 0), NULL, 10) - clock_now_ms();
		delay = d < 0 ? 0 : (d < delay ? d : delay);
	}
	PQclear(res);
	if (j->running >= j->eng->cfg.jobs_max_running || delay == 0)
		delay = delay == 0 && j->running < j->eng->cfg.jobs_max_running ? 1 : POLL_PG_MS;
	later_pg(j, delay);
}

static void claimed_pg(void *arg, PGresult *res, const char *err)
{
	struct jobs *j = arg;
	struct engine *e = j->eng;
	char buf[300];
	j->claiming = 0;
	int rows = 0;
	if (!query_ok(res)) {
		if (!pg_retryable(res)) /* a conflict with another node's claim: just look again */
			log_warn(&e->log, NULL, "jobs: cannot claim due jobs: %s",
			         res ? pg_result_error(res, buf, sizeof buf) : err);
	} else {
		rows = PQntuples(res);
		for (int i = 0; i < rows; i++) {
			struct job_run *r = calloc(1, sizeof *r);
			if (!r) /* its lease will bring it back */
				continue;
			r->j = j;
			r->id = strtoll(PQgetvalue(res, i, 0), NULL, 10);
			snprintf(r->name, sizeof r->name, "%s", PQgetvalue(res, i, 1));
			r->payload = strdup(PQgetvalue(res, i, 2));
			r->attempts = (int)strtol(PQgetvalue(res, i, 3), NULL, 10);
			r->max_attempts = (int)strtol(PQgetvalue(res, i, 4), NULL, 10);
			snprintf(r->reqid, sizeof r->reqid, "job-%lld-%d", (long long)r->id, r->attempts);
			j->running++;
			if (!r->payload || e->stopping || !e->gen) {
				r->error = strdup("out of memory reading the job");
				settle(-1, 0, r);
				continue;
			}
			run_start(j, r);
		}
	}
	PQclear(res);
	if (j->kick_again || (rows > 0 && j->running < e->cfg.jobs_max_running)) {
		j->kick_again = 0;
		jobs_soon(j); /* there may be more due */
		return;
	}
	if (pg_pool_query(pgdb_pool(j->pg), "SELECT min(run_at) FROM _paygate_jobs WHERE state = 'queued'", 0, NULL,
	                  armed_pg, j) < 0)
		later_pg(j, POLL_PG_MS);
}

static void kick_pg(struct jobs *j)
{
	struct engine *e = j->eng;
	char ints[4][32], room[32];
	const char *vals[5];
	if (j->claiming) {
		j->kick_again = 1;
		return;
	}
	check_leases_pg(j);
	int free_slots = e->cfg.jobs_max_running - j->running;
	if (free_slots <= 0) {
		later_pg(j, POLL_PG_MS); /* a finishing job kicks us again; the leases are renewed meanwhile */
		return;
	}
	int64_t now = clock_now_ms(), n[] = { now, now + e->cfg.jobs_lease_ms, now };
	pg_args(ints, vals, 1, n);
	vals[1] = e->worker.job_owner;
	pg_args(ints + 1, vals + 2, 2, n + 1);
	snprintf(room, sizeof room, "%d", free_slots);
	vals[4] = room;
	j->claiming = 1;
	if (pg_pool_query(pgdb_pool(j->pg), CLAIM_PG, 5, vals, claimed_pg, j) < 0) {
		j->claiming = 0;
		later_pg(j, POLL_PG_MS);
	}
}

/* jobs.schedule on PostgreSQL: the row (inside the caller's db.tx, if any) through the db API. */
static int scheduled_pg(lua_State *L, int status, lua_KContext ctx)
{
	struct engine *e = lua_touserdata(L, lua_upvalueindex(1));
	(void)status;
	if (!lua_toboolean(L, -2))
		return lua_error(L);
	int created = lua_istable(L, -1);
	if (created)
		lua_getfield(L, -1, "id");
	else
		lua_pushnil(L);
	lua_pushboolean(L, created);
	if (created && ctx && e->jobs)
		jobs_soon(e->jobs);
	return 2;
}

static int cancelled_pg(lua_State *L, int status, lua_KContext ctx)
{
	(void)status;
	(void)ctx;
	if (!lua_toboolean(L, -2))
		return lua_error(L);
	lua_pushboolean(L, lua_istable(L, -1));
	return 1;
}

/* ---- Lua: jobs.schedule(name, payload, {delay_ms=, run_at=, key=, max_attempts=}) → id, created ---- */

static int l_schedule(lua_State *L)
{
	struct engine *e = lua_touserdata(L, lua_upvalueindex(1));
	const char *name = luaL_checkstring(L, 1);
	char err[256];
	int64_t now = clock_now_ms(), run_at = now;
	lua_Integer max_attempts = 25;
	const char *key = NULL;

	luaL_argcheck(L, strlen(name) > 0 && strlen(name) < 64, 1, "job names are 1 to 63 bytes");
	if (!lua_isnoneornil(L, 3)) {
		luaL_checktype(L, 3, LUA_TTABLE);
		lua_getfield(L, 3, "delay_ms");
		if (!lua_isnil(L, -1))
			run_at = now + luaL_checkinteger(L, -1);
		lua_getfield(L, 3, "run_at");
		if (!lua_isnil(L, -1))
			run_at = luaL_checkinteger(L, -1);
		lua_getfield(L, 3, "key");
		key = luaL_optstring(L, -1, NULL);
		lua_getfield(L, 3, "max_attempts");
		max_attempts = luaL_optinteger(L, -1, 25);
		luaL_argcheck(L, max_attempts >= 1, 3, "max_attempts must be at least 1");
	}
	/* payload → JSON with the json module (upvalue 2) */
	lua_pushvalue(L, lua_upvalueindex(2));
	lua_getfield(L, -1, "encode");
	if (lua_isnoneornil(L, 2))
		lua_newtable(L);
	else
		lua_pushvalue(L, 2);
	lua_call(L, 1, 1);
	const char *payload = lua_tostring(L, -1);

	if (store_pg(e->store)) {
		int first = lua_gettop(L) + 1;
		lua_pushliteral(L,
		                "INSERT INTO _paygate_jobs(name, key, payload, run_at, max_attempts, created_at,"
		                " updated_at) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (key) DO NOTHING RETURNING id");
		lua_pushstring(L, name);
		if (key)
			lua_pushstring(L, key);
		else
			lua_pushnil(L);
		lua_pushstring(L, payload);
		lua_pushinteger(L, run_at);
		lua_pushinteger(L, max_attempts);
		lua_pushinteger(L, now);
		lua_pushinteger(L, now);
		return pgdb_one_k(L, store_pg(e->store), first, run_at <= now + POLL_IDLE_MS, scheduled_pg);
	}
	sqlite3_stmt *s =
	    store_prepare(e->store,
	                  "INSERT INTO _paygate_jobs(name, key, payload, run_at, max_attempts, created_at, updated_at)"
	                  " VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT(key) DO NOTHING",
	                  err, sizeof err);
	if (!s && store_locked_out(e->store) && coro_can_wait(L)) {
		lua_settop(L, 3);
		return store_wait_lock(L, e->store, l_schedule);
	}
	if (!s)
		return luaL_error(L, "jobs.schedule: %s", err);
	sqlite3_bind_text(s, 1, name, -1, SQLITE_TRANSIENT);
	if (key)
		sqlite3_bind_text(s, 2, key, -1, SQLITE_TRANSIENT);
	sqlite3_bind_text(s, 3, payload, -1, SQLITE_TRANSIENT);
	sqlite3_bind_int64(s, 4, run_at);
	sqlite3_bind_int64(s, 5, max_attempts);
	sqlite3_bind_int64(s, 6, now);
	sqlite3_bind_int64(s, 7, now);
	int rc = sqlite3_step(s);
	sqlite3_reset(s);
	if (rc != SQLITE_DONE)
		return luaL_error(L, "jobs.schedule: %s", sqlite3_errmsg(store_db(e->store)));
	int created = sqlite3_changes(store_db(e->store)) == 1;
	if (created)
		lua_pushinteger(L, sqlite3_last_insert_rowid(store_db(e->store)));
	else
		lua_pushnil(L); /* a job with this key exists already */
	lua_pushboolean(L, created);
	if (created && run_at <= now + POLL_IDLE_MS)
		jobs_soon(e->jobs); /* re-plan on the next turn */
	return 2;
}

/* jobs.cancel(key) → true when a queued job with that key was removed */
static int l_cancel(lua_State *L)
{
	struct engine *e = lua_touserdata(L, lua_upvalueindex(1));
	const char *key = luaL_checkstring(L, 1);
	char err[256];
	if (store_pg(e->store)) {
		int first = lua_gettop(L) + 1;
		lua_pushliteral(L, "DELETE FROM _paygate_jobs WHERE key = ? AND state = 'queued' RETURNING id");
		lua_pushstring(L, key);
		return pgdb_one_k(L, store_pg(e->store), first, 0, cancelled_pg);
	}
	sqlite3_stmt *s =
	    store_prepare(e->store, "DELETE FROM _paygate_jobs WHERE key = ? AND state = 'queued'", err, sizeof err);
	if (!s && store_locked_out(e->store) && coro_can_wait(L))
		return store_wait_lock(L, e->store, l_cancel);
	if (!s)
		return luaL_error(L, "jobs.cancel: %s", err);
	sqlite3_bind_text(s, 1, key, -1, SQLITE_TRANSIENT);
	int rc = sqlite3_step(s);
	sqlite3_reset(s);
	if (rc != SQLITE_DONE)
		return luaL_error(L, "jobs.cancel: %s", sqlite3_errmsg(store_db(e->store)));
	lua_pushboolean(L, sqlite3_changes(store_db(e->store)) > 0);
	return 1;
}

void jobs_push_lua(lua_State *L, struct engine *e)
{
	int json = lua_gettop(L);
	lua_newtable(L);
	lua_pushlightuserdata(L, e);
	lua_pushvalue(L, json);
	lua_pushcclosure(L, l_schedule, 2);
	lua_setfield(L, -2, "schedule");
	lua_pushlightuserdata(L, e);
	lua_pushcclosure(L, l_cancel, 1);
	lua_setfield(L, -2, "cancel");
	lua_remove(L, json);
}

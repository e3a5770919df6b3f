/* store.c — SQLite storage: WAL, a prepared-statement cache, transactions, migrations, the `db` Lua API. */
#include "store.h"

#include <assert.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <event2/event.h>
#include <lauxlib.h>

#include "checkpoint.h"
#include "clock.h"
#include "coro.h"
#include "engine.h"
#include "jail.h"
#include "pgdb.h"

#define STMT_CACHE 256 /* direct-mapped: slot = hash(sql) */

struct cached_stmt {
	char *sql;
	sqlite3_stmt *stmt;
};

/*
** Durability: the writes of one loop turn share one transaction and one sync.
**
** The turn's first write (a db.tx, a script's db.exec that writes, the
** engine's own statements) opens the batch: BEGIN IMMEDIATE, and commit_ev is
** made active. Each db.tx inside it is a SAVEPOINT, so a refused one rolls
** back alone. commit_ev runs after every callback already due in this turn:
** one COMMIT (synchronous=FULL in WAL: the WAL is synced once, for all of
** them), then every waiter hears whether its writes are on disk. Nothing
** that shows a write (an answer, an outbound request, a host callback, a job
** run) leaves before that: those wait for the batch as waiters. A shared page
** is written once per batch instead of once per request.
*/
struct store {
	struct engine *eng;
	struct pgdb *pg; /* PostgreSQL (pgdb.c) instead of the SQLite file below: db is NULL */
	sqlite3 *db;
	int tx_depth;              /* 0: no db.tx running; n: n nested db.tx() (savepoints) */
	int engine_sql;            /* the engine's own statement: no restrictions */
	int batch_open;            /* BEGIN issued, COMMIT not yet */
	int batch_wrote;           /* a statement that writes ran in it (a read-only db.tx holds nothing back) */
	int sleep_ok;              /* waiting for another worker's lock may sleep: start-up and migrations only */
	struct checkpointer *ckpt; /* WAL checkpoints off the loop (NULL: SQLite's own, in the COMMIT) */
	int locked_out;            /* the last batch could not begin: another worker holds the write lock */
	int64_t last_commit_ms;
	struct event *commit_ev;
	struct store_waiter waiters; /* list head: who waits for the open batch */
	char last_error[512];        /* why the last batch was lost */
	lua_State *charged;          /* the script whose statement is stepping: its budget pays (store_step) */
	struct cached_stmt cache[STMT_CACHE];
};

/*
** ---- bounds: what one script's SQL may cost ----
**
** Time: a statement a script runs is charged to that script's instruction
** budget, one instruction per SQLite VM step (the progress handler), so a
** runaway recursive query ends like a runaway loop. Size: the limits below
** are far above what a shop's rows and statements need. Memory: SQLite's heap
** (process-wide) is capped; a query that needs more fails with "out of memory"
** as an ordinary error, and everything it held is freed.
*/
#define STORE_PROGRESS_OPS 1000                      /* VM steps between two charges */
#define STORE_HEAP_LIMIT   ((sqlite3_int64)64 << 20) /* SQLite's heap, all connections */
#define STORE_MAX_LENGTH   (16 << 20)                /* one string, blob or row */

static int progress(void *arg)
{
	struct store *st = arg;
	return st->charged ? jail_charge_nothrow(st->charged, STORE_PROGRESS_OPS) : 0;
}

static void store_bound(struct store *st)
{
	static const int limits[][2] = {
		{ SQLITE_LIMIT_LENGTH, STORE_MAX_LENGTH },
		{ SQLITE_LIMIT_SQL_LENGTH, 1 << 20 },
		{ SQLITE_LIMIT_EXPR_DEPTH, 500 },
		{ SQLITE_LIMIT_COMPOUND_SELECT, 100 },
		{ SQLITE_LIMIT_VDBE_OP, 1000000 },
		{ SQLITE_LIMIT_LIKE_PATTERN_LENGTH, 1000 },
		{ SQLITE_LIMIT_VARIABLE_NUMBER, 1000 },
		{ SQLITE_LIMIT_TRIGGER_DEPTH, 16 },
		{ SQLITE_LIMIT_ATTACHED, 0 },
	};
	for (size_t i = 0; i < sizeof limits / sizeof limits[0]; i++)
		sqlite3_limit(st->db, limits[i][0], limits[i][1]);
	sqlite3_progress_handler(st->db, STORE_PROGRESS_OPS, progress, st);
	sqlite3_int64 now = sqlite3_hard_heap_limit64(-1);
	if (now == 0 || now > STORE_HEAP_LIMIT) /* a host program's tighter limit stays */
		sqlite3_hard_heap_limit64(STORE_HEAP_LIMIT);
}

/* sqlite3_step for the script at L: its budget pays for the statement's steps. */
static int store_step(struct store *st, lua_State *L, sqlite3_stmt *stmt)
{
	st->charged = L;
	int rc = sqlite3_step(stmt);
	st->charged = NULL;
	return rc;
}

static unsigned hash_sql(const char *s)
{
	unsigned h = 2166136261u;
	for (; *s; s++)
		h = (h ^ (unsigned char)*s) * 16777619u;
	return h;
}

/* Run sql (one or more statements) as the engine's own (engine 1) or a script's (0). */
static int exec_as(struct store *st, int engine, const char *sql, char *err, size_t errlen)
{
	char *msg = NULL;
	st->engine_sql += engine;
	int rc = sqlite3_exec(st->db, sql, NULL, NULL, &msg);
	st->engine_sql -= engine;
	if (rc != SQLITE_OK) {
		snprintf(err, errlen, "%s", msg ? msg : sqlite3_errmsg(st->db));
		sqlite3_free(msg);
		return -1;
	}
	return 0;
}

static int exec_simple(struct store *st, const char *sql, char *err, size_t errlen)
{
	return exec_as(st, 1, sql, err, errlen);
}

/* Tables only the engine's own statements may touch: the session-token key (secure.c). */
static int engine_private(const char *table)
{
	return table && strcasecmp(table, "_paygate_secrets") == 0;
}

/*
** What scripts may not do in SQL: control transactions (db.tx does that, and
** a BEGIN left open would outlive the handler), attach other database files
** (a way around "no files"), change settings such as synchronous, or read or
** change the engine's private tables (a key kept in C must not reach Lua).
** The table an action concerns is argument a (reads, writes, DROP TABLE) or
** b (indexes, triggers, ALTER TABLE).
*/
static int authorize(void *arg, int action, const char *a, const char *b, const char *c, const char *d)
{
	struct store *st = arg;
	(void)c;
	(void)d;
	if (st->engine_sql)
		return SQLITE_OK;
	if (engine_private(a) || engine_private(b))
		return SQLITE_DENY;
	switch (action) {
	case SQLITE_TRANSACTION:
	case SQLITE_SAVEPOINT:
	case SQLITE_ATTACH:
	case SQLITE_DETACH:
		return SQLITE_DENY;
	case SQLITE_PRAGMA:
		return b ? SQLITE_DENY : SQLITE_OK; /* reading a pragma is fine, setting one is not */
	default:
		return SQLITE_OK;
	}
}

void store_engine_begin(struct store *st)
{
	st->engine_sql++;
}

void store_engine_end(struct store *st)
{
	assert(st->engine_sql > 0);
	st->engine_sql--;
}

/* ---- the batch ---- */

static void waiters_init(struct store_waiter *head)
{
	head->next = head->prev = head;
}

/* Tell every waiter of the batch that just ended (ok: durable; 0: lost). They may open the next batch. */
static void batch_ended(struct store *st, int ok)
{
	struct store_waiter list;
	if (st->waiters.next == &st->waiters)
		return;
	list.next = st->waiters.next; /* move the whole list to a local head */
	list.prev = st->waiters.prev;
	list.next->prev = &list;
	list.prev->next = &list;
	waiters_init(&st->waiters);
	while (list.next != &list) {
		struct store_waiter *w = list.next;
		store_cancel_wait(w);
		w->fn(w, ok);
	}
}

/* SQLite rolled the batch back by itself (an I/O error, SQLITE_FULL ...): its waiters lost their writes. */
static int batch_lost(struct store *st)
{
	if (!st->batch_open || !sqlite3_get_autocommit(st->db))
		return 0;
	snprintf(st->last_error, sizeof st->last_error, "the database rolled the batch back: %s",
	         sqlite3_errmsg(st->db));
	log_error(&st->eng->log, NULL, "%s", st->last_error);
	st->batch_open = st->batch_wrote = 0;
	st->eng->metrics.db_batches_lost++;
	batch_ended(st, 0);
	return 1;
}

/* Commit the open batch (one sync) and tell its waiters: 0, or -1 when it was lost (last_error says why). */
static int batch_commit(struct store *st)
{
	char err[256];
	assert(st->tx_depth == 0); /* a db.tx never spans a turn */
	if (batch_lost(st))
		return -1;
	if (!st->batch_open)
		return 0;
	int rc = exec_simple(st, "COMMIT", err, sizeof err);
	if (rc < 0) {
		snprintf(st->last_error, sizeof st->last_error, "the batch could not be committed: %s", err);
		log_error(&st->eng->log, NULL, "%s", st->last_error);
		if (!sqlite3_get_autocommit(st->db))
			exec_simple(st, "ROLLBACK", err, sizeof err);
		st->eng->metrics.db_batches_lost++;
	} else {
		st->eng->metrics.db_batches++;
	}
	st->batch_open = st->batch_wrote = 0;
	st->last_commit_ms = clock_now_ms();
	batch_ended(st, rc == 0);
	return rc;
}

static void on_commit(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	batch_commit(arg);
}

/* Make sure the turn's batch is open before a write: 0, or -1 with err (the database is busy or failing). */
/*
** The write lock is not fair: a worker that commits and begins again at once
** can keep it from another that only looks every millisecond. So for
** POLITE_MS after its commit, a worker whose peers found the lock taken
** lately lets them have it: its own writers wait as if it were taken.
*/
#define POLITE_MS       2
#define PEERS_RECENT_MS 20

static int let_peers_write(struct store *st)
{
	struct engine_worker *w = &st->eng->worker;
	if (!w->peers_want_lock || st->sleep_ok)
		return 0;
	int64_t now = clock_now_ms();
	return now - st->last_commit_ms < POLITE_MS && w->peers_want_lock(w->arg, now - PEERS_RECENT_MS);
}

static int batch_begin(struct store *st, char *err, size_t errlen)
{
	batch_lost(st);
	st->locked_out = 0;
	if (st->batch_open)
		return 0;
	if (let_peers_write(st)) {
		snprintf(err, errlen, "another worker waits for the write lock");
		st->locked_out = 1;
		return -1;
	}
	if (exec_simple(st, "BEGIN IMMEDIATE", err, errlen) < 0) {
		st->locked_out = (sqlite3_extended_errcode(st->db) & 0xff) == SQLITE_BUSY;
		if (st->locked_out && st->eng->worker.lock_wanted) /* tell the holder someone waits */
			*st->eng->worker.lock_wanted = clock_now_ms();
		return -1;
	}
	if (st->eng->sched->current)
		st->eng->sched->current->lock_wait_since = 0;
	st->batch_open = 1;
	event_active(st->commit_ev, EV_TIMEOUT, 0);
	return 0;
}

int store_dirty(const struct store *st)
{
	return st && st->batch_open && st->batch_wrote;
}

int store_wait_commit(struct store *st, struct store_waiter *w)
{
	assert(!w->next);
	if (!store_dirty(st))
		return 0;
	w->prev = st->waiters.prev;
	w->next = &st->waiters;
	st->waiters.prev->next = w;
	st->waiters.prev = w;
	return 1;
}

void store_cancel_wait(struct store_waiter *w)
{
	if (!w->next)
		return;
	w->prev->next = w->next;
	w->next->prev = w->prev;
	w->next = w->prev = NULL;
}

int store_flush(struct store *st, char *err, size_t errlen)
{
	if (batch_commit(st) < 0) {
		snprintf(err, errlen, "%s", st->last_error);
		return -1;
	}
	return 0;
}

const char *store_last_error(const struct store *st)
{
	return st->last_error[0] ? st->last_error : "the database failed";
}

int store_locked_out(const struct store *st)
{
	return st->locked_out;
}

void store_sleep_ok(struct store *st, int ok)
{
	st->sleep_ok = ok;
}

/*
** Another worker holds the write lock. In the loop nobody sleeps for it:
** SQLite hears "busy" at once and the writer's coroutine waits on a timer
** (store_wait_lock). Only start-up and migrations, which run before or
** between serving, wait here, up to db_busy_timeout_ms.
*/
static int on_busy(void *arg, int count)
{
	struct store *st = arg;
	if (!st->sleep_ok || count * 2 >= st->eng->cfg.db_busy_timeout_ms)
		return 0;
	sqlite3_sleep(2);
	return 1;
}

/* ---- a writer's coroutine waits for another worker's lock ---- */

static int after_lock_wait(lua_State *L, int status, lua_KContext again)
{
	(void)status;
	return ((lua_CFunction)again)(L); /* the call again, on the stack it had */
}

int store_wait_lock(lua_State *L, struct store *st, lua_CFunction again)
{
	struct coro *c = coro_of(L);
	int64_t now = clock_now_ms();
	if (!coro_can_wait(L) || !c)
		return luaL_error(L, "db: the database is locked by another worker (this code cannot wait for it)");
	if (!c->lock_wait_since)
		c->lock_wait_since = now;
	int64_t waited = now - c->lock_wait_since;
	if (waited >= st->eng->cfg.db_busy_timeout_ms) {
		c->lock_wait_since = 0;
		lua_createtable(L, 0, 3);
		lua_pushinteger(L, 503);
		lua_setfield(L, -2, "status");
		lua_pushliteral(L, "busy");
		lua_setfield(L, -2, "error");
		lua_pushfstring(
		    L, "the database stayed locked by another worker for %d ms; nothing was written, try again",
		    (int)waited);
		lua_setfield(L, -2, "message");
		return lua_error(L);
	}
	/* Look again every millisecond or so (a commit takes about a sync; the holder makes way for a
	   waiter for POLITE_MS after it); jitter keeps workers apart. */
	int64_t step = 1;
	int64_t us = step * 1000 + rand() % (int)(step * 1000);
	st->eng->metrics.db_lock_waits++;
	return coro_sleepk(L, "db lock", us, (lua_KContext)again, after_lock_wait);
}

/* VACUUM (INTO 'file') has no authorizer action; refuse it by its first word. */
static int is_vacuum(const char *sql)
{
	while (*sql == ' ' || *sql == '\t' || *sql == '\n' || *sql == '\r' || *sql == '(')
		sql++;
	return strncasecmp(sql, "vacuum", 6) == 0;
}

static int on_wal(void *arg, sqlite3 *db, const char *name, int pages)
{
	struct store *st = arg;
	(void)db;
	(void)name;
	if (pages >= st->eng->cfg.db_checkpoint_pages) /* time to copy the WAL back into the database */
		checkpointer_poke(st->ckpt);
	return SQLITE_OK;
}

void store_checkpoints(struct store *st, uint64_t *ran, uint64_t *failed)
{
	unsigned long r = 0, f = 0;
	if (st->ckpt)
		checkpointer_counts(st->ckpt, &r, &f);
	*ran = r;
	*failed = f;
}

/* Move checkpoints to their own thread; where that cannot be, SQLite keeps doing them in the COMMIT. */
static void checkpoint_off_loop(struct store *st)
{
	char err[256];
	const char *file = sqlite3_db_filename(st->db, "main");
	if (!file || !*file)
		return; /* in memory: no WAL */
	if (!(st->ckpt = checkpointer_start(file, err, sizeof err))) {
		log_warn(&st->eng->log, NULL, "%s; checkpoints run inside commits", err);
		return;
	}
	sqlite3_wal_hook(st->db, on_wal, st); /* replaces SQLite's automatic checkpoint */
}

/*
** WAL mode, the sync level and foreign keys. Another worker using the file can make SQLite answer
** "locked" here without calling the busy handler (while it recovers or resets the WAL); at
** start-up, before anything is served, we may wait for it, up to db_busy_timeout_ms.
*/
static int set_up(struct store *st, const char *sync, char *err, size_t errlen)
{
	for (int waited = 0;; waited += 10) {
		if (exec_simple(st, "PRAGMA journal_mode=WAL", err, errlen) == 0 &&
		    exec_simple(st, sync, err, errlen) == 0 &&
		    exec_simple(st, "PRAGMA foreign_keys=ON", err, errlen) == 0)
			return 0;
		if ((sqlite3_extended_errcode(st->db) & 0xff) != SQLITE_BUSY ||
		    waited >= st->eng->cfg.db_busy_timeout_ms)
			return -1;
		sqlite3_sleep(10);
	}
}

struct store *store_open(struct engine *e, const char *path, char *err, size_t errlen)
{
	struct store *st = calloc(1, sizeof *st);
	if (!st) {
		snprintf(err, errlen, "out of memory");
		return NULL;
	}
	st->eng = e;
	waiters_init(&st->waiters);
	if (!(st->commit_ev = event_new(e->base, -1, 0, on_commit, st))) {
		snprintf(err, errlen, "out of memory");
		free(st);
		return NULL;
	}
	if (config_database_is_postgresql_url(path)) {
		if (!(st->pg = pgdb_open(e, path, err, errlen))) {
			event_free(st->commit_ev);
			free(st);
			return NULL;
		}
		return st;
	}
	int flags = SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX;
	if (sqlite3_open_v2(path, &st->db, flags, NULL) != SQLITE_OK) {
		snprintf(err, errlen, "cannot open database %s: %s", path,
		         st->db ? sqlite3_errmsg(st->db) : "out of memory");
		goto fail;
	}
	sqlite3_extended_result_codes(st->db, 1);
	sqlite3_set_authorizer(st->db, authorize, st);
	st->sleep_ok = 1; /* until the engine serves */
	sqlite3_busy_handler(st->db, on_busy, st);
	store_bound(st);
	char e2[256];
	const char *sync = e->cfg.unsafe_no_sync ? "PRAGMA synchronous=NORMAL" : "PRAGMA synchronous=FULL";
	if (e->cfg.unsafe_no_sync)
		log_warn(&e->log, NULL,
		         "unsafe_no_sync: commits are NOT synced; a power cut loses acknowledged writes. "
		         "For benchmarks only.");
	if (set_up(st, sync, e2, sizeof e2) < 0) {
		snprintf(err, errlen, "cannot set up database %s: %s", path, e2);
		goto fail;
	}
	checkpoint_off_loop(st);
	return st;
fail:
	sqlite3_close(st->db);
	event_free(st->commit_ev);
	free(st);
	return NULL;
}

void store_close(struct store *st)
{
	char err[256];
	if (!st)
		return;
	if (st->pg) {
		pgdb_close(st->pg);
		event_free(st->commit_ev);
		free(st);
		return;
	}
	if (store_flush(st, err, sizeof err) < 0)
		log_error(&st->eng->log, NULL, "closing the database: %s", err);
	checkpointer_stop(st->ckpt); /* closing the last connection checkpoints what is left */
	event_free(st->commit_ev);
	for (int i = 0; i < STMT_CACHE; i++) {
		sqlite3_finalize(st->cache[i].stmt);
		free(st->cache[i].sql);
	}
	sqlite3_close(st->db);
	free(st);
}

sqlite3 *store_db(struct store *st)
{
	return st->db;
}

int store_in_tx(const struct store *st)
{
	return st && st->tx_depth > 0; /* PostgreSQL's transactions belong to coroutines, not to the loop */
}

struct pgdb *store_pg(struct store *st)
{
	return st->pg;
}

int store_load_begin(struct store *st, char *err, size_t errlen)
{
	return st->pg && !pgdb_sync_begin(st->pg, err, errlen) ? -1 : 0;
}

void store_load_end(struct store *st)
{
	if (st->pg)
		pgdb_sync_end(st->pg);
}

/* A statement that writes runs inside the turn's batch: the one seam every write goes through. */
static sqlite3_stmt *join_batch(struct store *st, sqlite3_stmt *stmt, char *err, size_t errlen)
{
	if (sqlite3_stmt_readonly(stmt))
		return stmt;
	if (batch_begin(st, err, errlen) < 0)
		return NULL;
	st->batch_wrote = 1;
	return stmt;
}

sqlite3_stmt *store_prepare(struct store *st, const char *sql, char *err, size_t errlen)
{
	struct cached_stmt *slot = &st->cache[hash_sql(sql) % STMT_CACHE];
	const char *tail = NULL;
	sqlite3_stmt *stmt = NULL;

	if (slot->sql && strcmp(slot->sql, sql) == 0) {
		sqlite3_reset(slot->stmt);
		sqlite3_clear_bindings(slot->stmt);
		return join_batch(st, slot->stmt, err, errlen);
	}
	if (is_vacuum(sql)) {
		snprintf(err, errlen, "VACUUM is not allowed from scripts");
		return NULL;
	}
	if (sqlite3_prepare_v3(st->db, sql, -1, SQLITE_PREPARE_PERSISTENT, &stmt, &tail) != SQLITE_OK) {
		snprintf(err, errlen, "%s", sqlite3_errmsg(st->db));
		return NULL;
	}
	while (tail && (*tail == ' ' || *tail == '\n' || *tail == '\t' || *tail == '\r' || *tail == ';'))
		tail++;
	if (!stmt || (tail && *tail)) {
		sqlite3_finalize(stmt);
		snprintf(err, errlen, "exactly one SQL statement per call");
		return NULL;
	}
	char *copy = strdup(sql);
	if (!copy) {
		sqlite3_finalize(stmt);
		snprintf(err, errlen, "out of memory");
		return NULL;
	}
	sqlite3_finalize(slot->stmt); /* evict whatever lived in this slot */
	free(slot->sql);
	slot->sql = copy;
	slot->stmt = stmt;
	return join_batch(st, stmt, err, errlen);
}

/* ---- transactions ---- */

int store_begin(struct store *st, char *err, size_t errlen)
{
	char sql[64];
	if (batch_begin(st, err, errlen) < 0)
		return -1;
	snprintf(sql, sizeof sql, "SAVEPOINT pg_tx_%d", st->tx_depth);
	if (exec_simple(st, sql, err, errlen) < 0)
		return -1;
	if (st->tx_depth++ == 0)
		sched_forbid_waits(st->eng, "inside db.tx(): finish the transaction first "
		                            "(a transaction never stays open across a wait)");
	return 0;
}

/* The outermost transaction ended (committed or rolled back): coroutines may wait again. */
static void tx_ended(struct store *st)
{
	sched_allow_waits(st->eng);
}

int store_commit(struct store *st, char *err, size_t errlen)
{
	char sql[64];
	assert(st->tx_depth > 0);
	snprintf(sql, sizeof sql, "RELEASE pg_tx_%d", st->tx_depth - 1);
	if (exec_simple(st, sql, err, errlen) < 0)
		return -1;
	st->tx_depth--;
	if (st->tx_depth == 0) {
		st->eng->metrics.db_commits++;
		tx_ended(st);
	}
	return 0;
}

void store_rollback(struct store *st)
{
	char sql[96], err[256];
	if (st->tx_depth == 0)
		return;
	snprintf(sql, sizeof sql, "ROLLBACK TO pg_tx_%d; RELEASE pg_tx_%d", st->tx_depth - 1, st->tx_depth - 1);
	if (exec_simple(st, sql, err, sizeof err) < 0 && !batch_lost(st))
		log_error(&st->eng->log, NULL, "rollback failed: %s", err);
	st->tx_depth--;
	if (st->tx_depth == 0) {
		st->eng->metrics.db_rollbacks++;
		tx_ended(st);
	}
}

/* ---- Lua: binding values and reading rows ---- */

static struct store *upstore(lua_State *L)
{
	struct engine *e = lua_touserdata(L, lua_upvalueindex(1));
	return e->store;
}

/* Bind Lua arguments first..top to the statement's parameters. */
static void bind_args(lua_State *L, sqlite3_stmt *stmt, int first)
{
	int n = lua_gettop(L) - first + 1;
	if (n != sqlite3_bind_parameter_count(stmt))
		luaL_error(L, "db: the statement has %d parameters but %d values were given",
		           sqlite3_bind_parameter_count(stmt), n);
	for (int i = 1; i <= n; i++) {
		int idx = first + i - 1, rc;
		switch (lua_type(L, idx)) {
		case LUA_TNIL:
			rc = sqlite3_bind_null(stmt, i);
			break;
		case LUA_TBOOLEAN:
			rc = sqlite3_bind_int(stmt, i, lua_toboolean(L, idx));
			break;
		case LUA_TNUMBER:
			rc = lua_isinteger(L, idx) ? sqlite3_bind_int64(stmt, i, lua_tointeger(L, idx))
			                           : sqlite3_bind_double(stmt, i, lua_tonumber(L, idx));
			break;
		case LUA_TSTRING: {
			size_t len;
			const char *s = lua_tolstring(L, idx, &len);
			rc = sqlite3_bind_text64(stmt, i, s, len, SQLITE_TRANSIENT, SQLITE_UTF8);
			break;
		}
		case LUA_TLIGHTUSERDATA:
			if (lua_touserdata(L, idx) == NULL) { /* json.null */
				rc = sqlite3_bind_null(stmt, i);
				break;
			}
			/* fall through */
		default:
			luaL_error(L, "db: parameter %d is a %s; only nil, booleans, numbers and strings bind", i,
			           luaL_typename(L, idx));
			return;
		}
		if (rc != SQLITE_OK)
			luaL_error(L, "db: cannot bind parameter %d: %s", i, sqlite3_errstr(rc));
	}
}

static void push_column(lua_State *L, sqlite3_stmt *stmt, int i)
{
	switch (sqlite3_column_type(stmt, i)) {
	case SQLITE_INTEGER:
		lua_pushinteger(L, sqlite3_column_int64(stmt, i));
		break;
	case SQLITE_FLOAT:
		lua_pushnumber(L, sqlite3_column_double(stmt, i));
		break;
	case SQLITE_NULL:
		lua_pushnil(L);
		break;
	default:
		lua_pushlstring(L, (const char *)sqlite3_column_blob(stmt, i), (size_t)sqlite3_column_bytes(stmt, i));
		break;
	}
}

/* Push the current row as {column = value}; NULL columns are absent. */
static void push_row(lua_State *L, sqlite3_stmt *stmt)
{
	int n = sqlite3_column_count(stmt);
	lua_createtable(L, 0, n);
	for (int i = 0; i < n; i++) {
		push_column(L, stmt, i);
		lua_setfield(L, -2, sqlite3_column_name(stmt, i));
	}
}

/* ---- a writer's coroutine waits for its batch ---- */

struct durable_wait {
	struct store_waiter w; /* first: the waiter is the wait */
	struct coro *c;
	int ok;
};

static void durable_done(struct store_waiter *w, int ok)
{
	struct durable_wait *d = (struct durable_wait *)w;
	d->ok = ok;
	coro_wake(d->c);
}

static void durable_cleanup(struct coro *c)
{
	struct durable_wait *d = c->wait;
	store_cancel_wait(&d->w);
	free(d);
}

static int durable_retvals(struct coro *c, lua_State *L)
{
	struct durable_wait *d = c->wait;
	lua_pushboolean(L, d->ok);
	return 1;
}

/* The continuation after the wait: the results the write had, or the lost batch's error (503 storage_failed). */
static int after_durable(lua_State *L, int status, lua_KContext nres)
{
	(void)status;
	int ok = lua_toboolean(L, -1);
	lua_pop(L, 1);
	if (!ok) { /* raised like app.fail(503, "storage_failed", ...): a handler that lets it pass answers 503 */
		lua_createtable(L, 0, 3);
		lua_pushinteger(L, 503);
		lua_setfield(L, -2, "status");
		lua_pushliteral(L, "storage_failed");
		lua_setfield(L, -2, "error");
		lua_pushfstring(L, "%s; nothing of this write was saved, try again", store_last_error(upstore(L)));
		lua_setfield(L, -2, "message");
		return lua_error(L);
	}
	return (int)nres;
}

/*
** Return the nres values on top of L once the turn's batch is durable: the
** coroutine waits when it can; otherwise they return now and the batch still
** commits before anything of it leaves the process.
*/
static int return_durable(lua_State *L, struct store *st, int nres)
{
	struct durable_wait *d;
	if (!store_dirty(st) || !coro_can_wait(L) || !(d = calloc(1, sizeof *d)))
		return nres;
	d->w.fn = durable_done;
	d->c = coro_of(L);
	store_wait_commit(st, &d->w);
	return coro_suspendk(L, "db commit", d, durable_cleanup, durable_retvals, nres, after_durable);
}

/* Prepare sql (arg 1) and bind the rest; raises on error. NULL: another worker holds the lock (wait for it). */
static sqlite3_stmt *prepare_args(lua_State *L, struct store *st)
{
	char err[512];
	const char *sql = luaL_checkstring(L, 1);
	sqlite3_stmt *stmt = store_prepare(st, sql, err, sizeof err);
	if (!stmt && st->locked_out && coro_can_wait(L))
		return NULL;
	if (!stmt)
		luaL_error(L, "db: %s in: %s", err, sql);
	bind_args(L, stmt, 2);
	return stmt;
}

static int step_error(lua_State *L, struct store *st, sqlite3_stmt *stmt)
{
	const char *msg = sqlite3_errmsg(st->db);
	if (jail_budget_spent(L))
		lua_pushliteral(L, "db: the statement was stopped: script exceeded its instruction budget");
	else
		lua_pushfstring(L, "db: %s", msg);
	sqlite3_reset(stmt);
	batch_lost(st); /* an I/O error may have rolled the whole batch back */
	return lua_error(L);
}

/* db.exec(sql, ...) → changes, last_insert_rowid */
static int l_exec(lua_State *L)
{
	struct store *st = upstore(L);
	if (st->pg)
		return pgdb_exec(L, st->pg);
	sqlite3_stmt *stmt = prepare_args(L, st);
	if (!stmt)
		return store_wait_lock(L, st, l_exec);
	int rc;
	while ((rc = store_step(st, L, stmt)) == SQLITE_ROW)
		;
	if (rc != SQLITE_DONE)
		return step_error(L, st, stmt);
	int wrote = !sqlite3_stmt_readonly(stmt);
	sqlite3_reset(stmt);
	lua_pushinteger(L, sqlite3_changes64(st->db));
	lua_pushinteger(L, sqlite3_last_insert_rowid(st->db));
	return wrote && st->tx_depth == 0 ? return_durable(L, st, 2) : 2; /* a write of its own: like a db.tx */
}

/* db.query(sql, ...) → array of rows (encodes as [] when empty) */
static int l_query(lua_State *L)
{
	struct store *st = upstore(L);
	if (st->pg)
		return pgdb_query(L, st->pg);
	sqlite3_stmt *stmt = prepare_args(L, st);
	if (!stmt)
		return store_wait_lock(L, st, l_query);
	int rc, n = 0;
	lua_newtable(L);
	luaL_setmetatable(L, "paygate.json.array");
	while ((rc = store_step(st, L, stmt)) == SQLITE_ROW) {
		push_row(L, stmt);
		lua_rawseti(L, -2, ++n);
	}
	if (rc != SQLITE_DONE)
		return step_error(L, st, stmt);
	int wrote = !sqlite3_stmt_readonly(stmt);
	sqlite3_reset(stmt);
	return wrote && st->tx_depth == 0 ? return_durable(L, st, 1) : 1; /* INSERT ... RETURNING: as db.exec */
}

/* db.one(sql, ...) → the first row, or nil */
static int l_one(lua_State *L)
{
	struct store *st = upstore(L);
	if (st->pg)
		return pgdb_one(L, st->pg);
	sqlite3_stmt *stmt = prepare_args(L, st);
	if (!stmt)
		return store_wait_lock(L, st, l_one);
	int rc = store_step(st, L, stmt);
	if (rc == SQLITE_ROW)
		push_row(L, stmt);
	else if (rc == SQLITE_DONE)
		lua_pushnil(L);
	else
		return step_error(L, st, stmt);
	int wrote = !sqlite3_stmt_readonly(stmt);
	sqlite3_reset(stmt);
	return wrote && st->tx_depth == 0 ? return_durable(L, st, 1) : 1; /* INSERT ... RETURNING: as db.exec */
}

/*
** db.tx(fn, ...) → what fn returns. fn runs inside BEGIN IMMEDIATE ... COMMIT;
** any error in fn rolls everything back and is raised again. fn cannot wait
** (http.request, sleep): that is refused with a clear error, so a
** transaction never stays open while other coroutines run.
*/
static int l_tx(lua_State *L)
{
	struct store *st = upstore(L);
	char err[512];

	if (st->pg)
		return pgdb_tx(L, st->pg);
	luaL_checktype(L, 1, LUA_TFUNCTION);
	if (store_begin(st, err, sizeof err) < 0) {
		if (st->locked_out)
			return store_wait_lock(L, st, l_tx);
		return luaL_error(L, "db.tx: cannot begin: %s", err);
	}
	if (lua_pcall(L, lua_gettop(L) - 1, LUA_MULTRET, 0) != LUA_OK) {
		store_rollback(st);
		return lua_error(L);
	}
	if (store_commit(st, err, sizeof err) < 0) {
		store_rollback(st);
		return luaL_error(L, "db.tx: commit failed, nothing was saved: %s", err);
	}
	return st->tx_depth == 0 ? return_durable(L, st, lua_gettop(L)) : lua_gettop(L);
}

void store_push_lua(lua_State *L, struct engine *e)
{
	static const luaL_Reg fns[] = { { "exec", l_exec },
		                        { "query", l_query },
		                        { "one", l_one },
		                        { "tx", l_tx },
		                        { NULL, NULL } };
	lua_newtable(L);
	lua_pushlightuserdata(L, e);
	luaL_setfuncs(L, fns, 1);
	lua_pushstring(L, e->store->pg ? "postgresql" : "sqlite");
	lua_setfield(L, -2, "dialect");
}

/* ---- migrations ---- */

static const char *const MIGRATIONS_DDL = "CREATE TABLE IF NOT EXISTS _paygate_migrations ("
                                          " version INTEGER PRIMARY KEY, name TEXT NOT NULL, checksum TEXT NOT NULL,"
                                          " applied_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ','now')))";

static void checksum(const char *sql, char out[17])
{
	unsigned long long h = 1469598103934665603ULL;
	for (; *sql; sql++)
		h = (h ^ (unsigned char)*sql) * 1099511628211ULL;
	snprintf(out, 17, "%016llx", h);
}

/* The checksum recorded for version v, or "" when it was never applied. */
static int applied_checksum(struct store *st, lua_Integer v, char out[17], char *err, size_t errlen)
{
	if (st->pg)
		return pgdb_migration_checksum(st->pg, v, out, err, errlen);
	sqlite3_stmt *s = store_prepare(st, "SELECT checksum FROM _paygate_migrations WHERE version = ?", err, errlen);
	if (!s)
		return -1;
	sqlite3_bind_int64(s, 1, v);
	out[0] = '\0';
	if (sqlite3_step(s) == SQLITE_ROW)
		snprintf(out, 17, "%s", (const char *)sqlite3_column_text(s, 0));
	sqlite3_reset(s);
	return 0;
}

/*
** The text this engine runs for the migration entry at the top of L (its
** `postgresql` text on PostgreSQL, when it has one), or NULL: a function.
*/
static const char *entry_sql(struct store *st, lua_State *L)
{
	if (!st->pg || lua_getfield(L, -1, "postgresql") != LUA_TSTRING) {
		if (st->pg)
			lua_pop(L, 1);
		lua_getfield(L, -1, "sql");
	}
	const char *sql = lua_isstring(L, -1) ? lua_tostring(L, -1) : NULL;
	lua_pop(L, 1); /* the string stays alive in the entry table */
	return sql;
}

static int record_migration(struct store *st, lua_Integer v, const char *name, const char *sum, char *err,
                            size_t errlen)
{
	char e2[400];
	if (st->pg) {
		if (pgdb_migration_record(st->pg, v, name, sum, e2, sizeof e2) == 0)
			return 0;
		snprintf(err, errlen, "cannot record migration %lld: %s", (long long)v, e2);
		return -1;
	}
	sqlite3_stmt *s =
	    store_prepare(st, "INSERT INTO _paygate_migrations(version, name, checksum) VALUES (?, ?, ?)", err, errlen);
	if (!s)
		return -1;
	sqlite3_bind_int64(s, 1, v);
	sqlite3_bind_text(s, 2, name, -1, SQLITE_TRANSIENT);
	sqlite3_bind_text(s, 3, sum, -1, SQLITE_TRANSIENT);
	int rc = sqlite3_step(s);
	sqlite3_reset(s);
	if (rc != SQLITE_DONE) {
		snprintf(err, errlen, "cannot record migration %lld: %s", (long long)v, sqlite3_errmsg(st->db));
		return -1;
	}
	return 0;
}

/* Run one migration (entry table at top of L; sql its text, or NULL: its function). */
static int apply_one(struct store *st, lua_State *L, lua_Integer v, const char *name, const char *sql, const char *sum,
                     char *err, size_t errlen)
{
	char e2[512];
	if (sql) {
		int rc = st->pg ? pgdb_migration_sql(st->pg, sql, e2, sizeof e2)
		                : exec_as(st, 0, sql, e2, sizeof e2); /* the scripts' SQL: their limits */
		if (rc < 0) {
			snprintf(err, errlen, "migration %lld (%s) failed: %s", (long long)v, name, e2);
			return -1;
		}
	} else {
		lua_getfield(L, -1, "fn");
		if (lua_pcall(L, 0, 0, 0) != LUA_OK) {
			snprintf(err, errlen, "migration %lld (%s) failed: %s", (long long)v, name,
			         lua_tostring(L, -1));
			lua_pop(L, 1);
			return -1;
		}
	}
	return record_migration(st, v, name, sum, err, errlen);
}

/* Check and apply the entry at the top of L. */
static int migrate_entry(struct store *st, lua_State *L, lua_Integer *last, char *err, size_t errlen)
{
	char sum[17], have[17];
	int isint;

	lua_getfield(L, -1, "version");
	lua_Integer v = lua_tointegerx(L, -1, &isint);
	lua_pop(L, 1);
	lua_getfield(L, -1, "name");
	const char *name = lua_tostring(L, -1);
	lua_pop(L, 1); /* the string stays alive in the entry table */
	if (!isint || v <= *last || !name) {
		snprintf(err, errlen, "migrations must have increasing integer versions and names (at version %lld)",
		         (long long)v);
		return -1;
	}
	*last = v;
	const char *sql = entry_sql(st, L); /* each engine checksums the text it runs */
	checksum(sql ? sql : name, sum);
	if (applied_checksum(st, v, have, err, errlen) < 0)
		return -1;
	if (have[0] && strcmp(have, sum) != 0) {
		snprintf(err, errlen,
		         "migration %lld (%s) was changed after it was applied; "
		         "add a new migration instead of editing an old one",
		         (long long)v, name);
		return -1;
	}
	if (have[0])
		return 0;
	log_info(&st->eng->log, NULL, "applying migration %lld (%s)", (long long)v, name);
	return apply_one(st, L, v, name, sql, sum, err, errlen);
}

/* Check and apply every entry of the list at idx; 0, or -1 with err. The newest version goes to *last. */
static int migrate_list(struct store *st, lua_State *L, int idx, lua_Integer *last, char *err, size_t errlen)
{
	lua_Integer n = (lua_Integer)lua_rawlen(L, idx);
	for (lua_Integer i = 1; i <= n; i++) {
		lua_rawgeti(L, idx, i);
		int rc = lua_istable(L, -1) ? migrate_entry(st, L, last, err, errlen) : -1;
		if (rc < 0 && !lua_istable(L, -1))
			snprintf(err, errlen, "migration #%lld is not a table", (long long)i);
		lua_pop(L, 1);
		if (rc < 0)
			return -1;
	}
	return 0;
}

/* Apply the migrations not yet applied, in one transaction of their own, durable before it returns. */
static int migrate_all(struct store *st, lua_State *L, int idx, char *err, size_t errlen)
{
	lua_Integer last = 0;
	/* Migrations are a batch of their own, durable before the generation that needs them serves. */
	if (store_flush(st, err, errlen) < 0 || exec_simple(st, MIGRATIONS_DDL, err, errlen) < 0 ||
	    store_begin(st, err, errlen) < 0)
		return -1;
	if (migrate_list(st, L, idx, &last, err, errlen) < 0 || store_commit(st, err, errlen) < 0) {
		store_rollback(st);
		return -1;
	}
	return store_flush(st, err, errlen);
}

int store_migrate(struct store *st, lua_State *L, int idx, char *err, size_t errlen)
{
	idx = lua_absindex(L, idx);
	if (st->pg) {
		lua_Integer last = 0;
		if (pgdb_migrate_begin(st->pg, err, errlen) < 0)
			return -1;
		int ok = migrate_list(st, L, idx, &last, err, errlen) == 0;
		return pgdb_migrate_end(st->pg, ok, last, err, errlen);
	}
	int sleep_ok = st->sleep_ok;
	st->sleep_ok = 1; /* migrations run before their generation serves: they may wait for the lock */
	int rc = migrate_all(st, L, idx, err, errlen);
	st->sleep_ok = sleep_ok;
	return rc;
}

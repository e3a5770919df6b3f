/* store.h — SQLite storage: WAL, a prepared-statement cache, transactions, migrations, the `db` Lua API. */
#ifndef PAYGATE_STORE_H
#define PAYGATE_STORE_H

#include <stddef.h>
#include <stdint.h>

#include <lua.h>
#include <sqlite3.h>

struct engine;
struct store;
struct pgdb;

/*
** What "durable" means here. Every write joins the loop turn's batch: one
** SQLite transaction that the turn's first write opens and that is committed
** once, after every callback already due in that turn (WAL, synchronous=FULL:
** the commit syncs the WAL, once for the whole batch). A write is durable when
** its batch has committed:
**
**   - db.tx(fn) and a db.exec that writes outside db.tx return to the script
**     only once their batch is durable, when they run in a request handler, a
**     job or a host call (their coroutine waits; the loop does not). Where a
**     coroutine cannot wait (a coroutine the script made, a metamethod) they
**     return at once and the batch commits at the end of the turn anyway.
**   - Nothing leaves the process while a batch is open: HTTP answers
**     (http.c), outbound requests (fetch.c), host callbacks (host.c) and job
**     runs (jobs.c) wait for it as waiters, so nobody outside ever sees a write
**     that a power cut could still take back. If the batch is lost (the COMMIT
**     fails), its waiters hear so: writers get an error, answers become 503.
**   - A db.tx inside the batch is a SAVEPOINT: a failed one rolls back alone.
*/

/* Someone waiting for the open batch: fn(w, ok) runs once, ok 1 when it is durable, 0 when it was lost. */
struct store_waiter {
	struct store_waiter *next, *prev; /* NULL when not waiting */
	void (*fn)(struct store_waiter *w, int ok);
};

/* The struct of `type` whose `member` is the waiter w (fn gets the waiter; its owner holds it). */
#define STORE_WAITER_OWNER(w, type, member) ((type *)(void *)((char *)(w)-offsetof(type, member)))

/*
** Open (creating if needed) the database at path in WAL mode with
** synchronous=FULL: a commit is on disk before anyone is told about it.
** Returns NULL with a message in err on failure.
*/
struct store *store_open(struct engine *e, const char *path, char *err, size_t errlen);
void store_close(struct store *st);

/* The SQLite connection; NULL on PostgreSQL (then store_pg). */
sqlite3 *store_db(struct store *st);

/* The PostgreSQL back end (pgdb.h), or NULL on SQLite. */
struct pgdb *store_pg(struct store *st);

/*
** Statements prepared between store_engine_begin and store_engine_end are
** the engine's own: the authorizer lets them do what scripts may not (reach
** the engine's private tables, such as the session-token key). Calls nest.
*/
void store_engine_begin(struct store *st);
void store_engine_end(struct store *st);

/* Is a batch open: writes made that are not durable yet? */
int store_dirty(const struct store *st);

/*
** Queue w (fn set, not queued already) to hear when the open batch ends and
** return 1; return 0 without queueing when nothing is pending (go ahead now).
*/
int store_wait_commit(struct store *st, struct store_waiter *w);

/* Take w off the queue, if it is on it (its fn will not run). */
void store_cancel_wait(struct store_waiter *w);

/* Commit the open batch now (set-up, reload, shutdown): 0, or -1 with err when it was lost. */
int store_flush(struct store *st, char *err, size_t errlen);

/* Why the last batch was lost, for the error that its waiters report. */
const char *store_last_error(const struct store *st);

/*
** Several worker processes may share the database; only one holds the write
** lock at a time (from its turn's first write to that turn's commit). A
** writer that finds it held never sleeps in the loop:
**
**   - db.exec/query/one/tx (and jobs.schedule) in a coroutine that can wait
**     suspend it on a short timer and run again (store_wait_lock), for up
**     to db_busy_timeout_ms in all; then they raise {status=503,
**     error="busy"} with nothing written. Elsewhere they raise at once.
**   - The engine's own writes hear "busy" at once (store_locked_out) and
**     try again later (the jobs bookkeeping does so on a timer).
**   - Only start-up and migrations wait inside SQLite (store_sleep_ok),
**     up to db_busy_timeout_ms: they run before their generation serves.
*/

/* Did the last store_prepare/store_begin fail because another worker holds the write lock? */
int store_locked_out(const struct store *st);

/* Allow (1) or forbid (0) waiting for the lock inside SQLite: 1 from store_open until the engine serves. */
void store_sleep_ok(struct store *st, int ok);

/*
** `return store_wait_lock(L, st, again)` from the C function `again` whose
** write found the lock held: its coroutine waits a little and `again` runs
** once more on the same arguments (or raises when it may not wait or has
** waited long enough).
*/
int store_wait_lock(lua_State *L, struct store *st, lua_CFunction again);

/* How many WAL checkpoints the checkpointer's thread ran, and how many failed (for /metrics). */
void store_checkpoints(struct store *st, uint64_t *ran, uint64_t *failed);

/* Is a db.tx() running now? (Then no coroutine may yield.) */
int store_in_tx(const struct store *st);

/*
** A cached prepared statement for sql (reset, bindings cleared). The cache
** owns it: do not finalize. A statement that writes opens the turn's batch
** first. NULL with err filled on a prepare error (or a batch that cannot
** begin).
*/
sqlite3_stmt *store_prepare(struct store *st, const char *sql, char *err, size_t errlen);

/*
** The transaction primitives behind db.tx(): savepoints inside the turn's
** batch. store_commit releases the savepoint; the work becomes durable when
** the batch commits (see above).
*/
int store_begin(struct store *st, char *err, size_t errlen);
int store_commit(struct store *st, char *err, size_t errlen);
void store_rollback(struct store *st);

/*
** Apply the migrations in the table at idx of L (a list of {version, name,
** sql | fn}) that the database has not seen, all in one transaction. A
** migration already applied whose text changed is an error. On error nothing
** is applied and -1 is returned with the reason in err.
*/
int store_migrate(struct store *st, lua_State *L, int idx, char *err, size_t errlen);

/*
** A generation loads (its top-level code runs, then its migrations): on
** PostgreSQL, db calls made outside engine coroutines meanwhile run on a
** blocking connection of their own (they cannot suspend). No-op on SQLite.
** 0, or -1 with err (the database cannot be reached).
*/
int store_load_begin(struct store *st, char *err, size_t errlen);
void store_load_end(struct store *st);

/* The `db` table: exec, query, one, tx, dialect. [-0, +1, e] */
void store_push_lua(lua_State *L, struct engine *e);

#endif

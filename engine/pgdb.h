/* pgdb.h — the `db` API on PostgreSQL: calls that suspend their coroutine, transactions retried on conflicts. */
#ifndef PAYGATE_PGDB_H
#define PAYGATE_PGDB_H

#include <stddef.h>

#include <lua.h>

#include "pg.h"

struct engine;
struct pgdb;

/*
** What "durable" means on PostgreSQL: a db call returns once the server has
** committed its work (a db.exec/query/one outside db.tx is a transaction of
** its own; db.tx commits at its end). There is no batch to wait for: an
** answer that leaves after a db call shows only committed work.
**
** A db call suspends its coroutine, not the loop: other requests run while
** it waits. So the rule inside db.tx(fn) is "no http.request or sleep" (they
** are refused), and fn may be run again: on a serialization failure or a
** deadlock (every session is SERIALIZABLE) the transaction is rolled back and
** fn runs from the start, up to PGDB_TX_ATTEMPTS times in all.
**
** Before the loop serves (migrations, start-up work) db calls run on a
** blocking connection of their own (pgdb_sync_begin/end).
*/
#define PGDB_TX_ATTEMPTS 10

/* Connect (one connection now, blocking: a wrong address fails at start-up). NULL with err on failure. */
struct pgdb *pgdb_open(struct engine *e, const char *url, char *err, size_t errlen);
void pgdb_close(struct pgdb *db);

struct pg_pool *pgdb_pool(struct pgdb *db);

/* db.exec/query/one/tx on PostgreSQL: the Lua C functions' bodies (arguments as the `db` functions get them). */
int pgdb_exec(lua_State *L, struct pgdb *db);
int pgdb_query(lua_State *L, struct pgdb *db);
int pgdb_one(lua_State *L, struct pgdb *db);
int pgdb_tx(lua_State *L, struct pgdb *db);

/*
** Run the statement at index `first` of L with the values above it as
** db.one does, then continue in k(L, status, ctx) with the row (or nil) on
** top: for C functions that read or write the database (jobs.schedule).
*/
int pgdb_one_k(lua_State *L, struct pgdb *db, int first, lua_KContext ctx, lua_KFunction k);

/*
** Apply the migrations not yet applied (see store_migrate), once across every
** node: under an advisory lock, on a blocking connection. Refuses to go on
** when the database holds a migration newer than the newest in the list (these
** scripts are older than the schema another node put there).
*/
int pgdb_migrate(struct pgdb *db, lua_State *L, int idx, char *err, size_t errlen);

/*
** Blocking work outside request handlers (a generation's load: its top-level
** code and migrations): a connection of its own on which db calls from Lua
** code that is not an engine coroutine run synchronously, until
** pgdb_sync_end. Calls nest. NULL with err.
*/
PGconn *pgdb_sync_begin(struct pgdb *db, char *err, size_t errlen);
void pgdb_sync_end(struct pgdb *db);

/*
** Run sql (statements without parameters) on a blocking connection of its
** own, under the lock migrations take, so that nodes starting together do not
** race to create the engine's tables. Start-up only. 0, or -1 with err.
*/
int pgdb_setup(struct pgdb *db, const char *sql, char *err, size_t errlen);

/* Between pgdb_sync_begin and _end: take (1) or give back (0) the lock migrations take. 0, or -1 with err. */
int pgdb_sync_lock(struct pgdb *db, int take, char *err, size_t errlen);

/* Open transactions, for /metrics and the reload check. */
int pgdb_open_tx(const struct pgdb *db);

#endif

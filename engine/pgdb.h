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
** Migrations on PostgreSQL, for store_migrate (which walks the list, checks
** and applies each entry): once across every node, on a blocking
** connection, in one transaction, under an advisory lock. pgdb_migrate_end
** commits (ok, and not a check) or rolls back, and refuses to go on when the
** database holds a migration newer than `last`, the newest of these scripts
** (another node put it there). 0, or -1 with err.
*/
int pgdb_migrate_begin(struct pgdb *db, char *err, size_t errlen);
int pgdb_migrate_end(struct pgdb *db, int ok, lua_Integer last, char *err, size_t errlen);
/* The checksum recorded for version v, or "" when it was never applied. */
int pgdb_migration_checksum(struct pgdb *db, lua_Integer v, char out[17], char *err, size_t errlen);
/* Run a migration's SQL (refused when it names the engine's private table). */
int pgdb_migration_sql(struct pgdb *db, const char *sql, char *err, size_t errlen);
int pgdb_migration_record(struct pgdb *db, lua_Integer v, const char *name, const char *sum, char *err, size_t errlen);

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

/* store.h — SQLite storage: WAL, a prepared-statement cache, transactions, migrations, the `db` Lua API. */
#ifndef PAYGATE_STORE_H
#define PAYGATE_STORE_H

#include <stddef.h>

#include <lua.h>
#include <sqlite3.h>

struct engine;
struct store;

/*
** Open (creating if needed) the database at path in WAL mode with
** synchronous=FULL: a commit is on disk before anyone is told about it.
** Returns NULL with a message in err on failure.
*/
struct store *store_open(struct engine *e, const char *path, char *err, size_t errlen);
void store_close(struct store *st);

sqlite3 *store_db(struct store *st);

/*
** Statements prepared between store_engine_begin and store_engine_end are
** the engine's own: the authorizer lets them do what scripts may not (reach
** the engine's private tables, such as the session-token key). Calls nest.
*/
void store_engine_begin(struct store *st);
void store_engine_end(struct store *st);

/* Is a db.tx() transaction open now? (Then no coroutine may yield.) */
int store_in_tx(const struct store *st);

/*
** A cached prepared statement for sql (reset, bindings cleared). The cache
** owns it: do not finalize. NULL with err filled on a prepare error.
*/
sqlite3_stmt *store_prepare(struct store *st, const char *sql, char *err, size_t errlen);

/*
** The transaction primitives behind db.tx(); nested calls become savepoints.
** store_commit is the single place a transaction becomes durable: grouping
** the commits of concurrent requests into one fsync belongs here.
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

/* The `db` table: exec, query, one, tx. [-0, +1, e] */
void store_push_lua(lua_State *L, struct engine *e);

#endif

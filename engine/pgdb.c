/* pgdb.c — the `db` API on PostgreSQL: calls that suspend their coroutine, transactions retried on conflicts. */
#include "pgdb.h"

#include <assert.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include <event2/event.h>
#include <lauxlib.h>

#include "coro.h"
#include "engine.h"
#include "jail.h"

/* Type OIDs (pg_type.h is a server header). */
#define BOOLOID    16
#define INT8OID    20
#define INT2OID    21
#define INT4OID    23
#define OIDOID     26
#define FLOAT4OID  700
#define FLOAT8OID  701
#define NUMERICOID 1700

/* One key for the migrations' advisory lock, the same on every node: "paygate" in ASCII. */
#define MIGRATION_LOCK "7061796761746500"
/* Waiting for another node's migrations may take as long as they do; waits inside them may not. */
#define LOCK_SQL       "SET lock_timeout = 0; SELECT pg_advisory_lock(" MIGRATION_LOCK "); SET lock_timeout = '5s'"

struct pgdb {
	struct engine *eng;
	struct pg_pool *pool;
	PGconn *sync; /* before serving: db calls run here, blocking */
	int sync_depth;
	int sync_refs; /* pgdb_sync_begin calls not yet ended */
	int open_tx;
};

/* The transaction a coroutine holds open (coro->db_tx). */
struct pgdb_tx {
	struct pgdb *db;
	struct pg_conn *conn; /* from BEGIN to COMMIT/ROLLBACK */
	int depth;            /* nested db.tx: savepoints */
	int attempts;         /* of the outermost fn */
	int conflict;         /* a serialization failure or deadlock in this attempt: run it again */
};

enum call_kind { CALL_EXEC, CALL_QUERY, CALL_ONE, CALL_SIMPLE };

/* One command a coroutine waits for. */
struct pg_call {
	struct pgdb *db;
	struct coro *c;
	struct pgdb_tx *tx; /* the coroutine's transaction, or NULL (a command of its own) */
	struct pg_waiter w;
	struct pg_conn *conn;
	int own; /* conn is this call's (released when answered) */
	enum call_kind kind;
	char *sql;
	int n;
	char **vals;
	int attempts;
	int sent;            /* the command went to the server (once at least) */
	struct event *again; /* a statement of its own that conflicted waits on this before it runs again */
	int done, resumed;
	int no_conn;                 /* no connection came free in time */
	struct event *conn_deadline; /* while queued for a connection */
	PGresult *res;
	char err[320];
};

static const char *const NEED_WAIT =
    "db: on PostgreSQL a db call waits for the database, so it can only run in a request handler, a job or "
    "a host call (not at a script's top level, in a coroutine the script made, or in a metamethod)";

/* ---- Lua values in and out ---- */

/* The values first..top of L as text parameters (NULL: SQL NULL); raises on a value that does not bind. */
static char **collect_params(lua_State *L, int first, int *count)
{
	int n = lua_gettop(L) - first + 1;
	if (n < 0)
		n = 0;
	char **vals = n ? calloc((size_t)n, sizeof *vals) : NULL;
	if (n && !vals)
		luaL_error(L, "db: out of memory");
	for (int i = 0; i < n; i++) {
		int idx = first + i;
		char buf[64];
		const char *s = NULL;
		switch (lua_type(L, idx)) {
		case LUA_TNIL:
			break;
		case LUA_TBOOLEAN:
			s = lua_toboolean(L, idx) ? "1" : "0";
			break;
		case LUA_TNUMBER:
			if (lua_isinteger(L, idx))
				snprintf(buf, sizeof buf, "%lld", (long long)lua_tointeger(L, idx));
			else
				snprintf(buf, sizeof buf, "%.17g", (double)lua_tonumber(L, idx));
			s = buf;
			break;
		case LUA_TSTRING: {
			size_t len;
			s = lua_tolstring(L, idx, &len);
			if (strlen(s) != len) {
				s = NULL;
				goto bad;
			}
			break;
		}
		case LUA_TLIGHTUSERDATA:
			if (lua_touserdata(L, idx) == NULL) /* json.null */
				break;
			/* fall through */
		default:
		bad:
			for (int j = 0; j < i; j++)
				free(vals[j]);
			free(vals);
			luaL_error(
			    L, "db: parameter %d is a %s; only nil, booleans, numbers and strings (without NUL) bind",
			    i + 1, luaL_typename(L, idx));
		}
		if (s && !(vals[i] = strdup(s))) {
			for (int j = 0; j < i; j++)
				free(vals[j]);
			free(vals);
			luaL_error(L, "db: out of memory");
		}
	}
	*count = n;
	return vals;
}

static void free_params(char **vals, int n)
{
	for (int i = 0; i < n; i++)
		free(vals[i]);
	free(vals);
}

static void push_value(lua_State *L, const PGresult *res, int row, int col)
{
	const char *v = PQgetvalue(res, row, col);
	switch (PQftype(res, col)) {
	case INT2OID:
	case INT4OID:
	case INT8OID:
	case OIDOID:
	case FLOAT4OID:
	case FLOAT8OID:
	case NUMERICOID: /* sum() of a bigint: an integer when it is one, as SQLite gives */
		if (lua_stringtonumber(L, v) == 0)
			lua_pushstring(L, v); /* NaN, Infinity */
		break;
	case BOOLOID:
		lua_pushinteger(L, v[0] == 't');
		break;
	default:
		lua_pushlstring(L, v, (size_t)PQgetlength(res, row, col));
		break;
	}
}

/* Row r as {column = value}; NULL columns are absent. */
static void push_row(lua_State *L, const PGresult *res, int r)
{
	int cols = PQnfields(res);
	lua_createtable(L, 0, cols);
	for (int i = 0; i < cols; i++) {
		if (PQgetisnull(res, r, i))
			continue;
		push_value(L, res, r, i);
		lua_setfield(L, -2, PQfname(res, i));
	}
}

/* What a successful result gives the script: exec → changes, nil; query → rows; one → row or nil. */
static int push_result(lua_State *L, const PGresult *res, enum call_kind kind)
{
	switch (kind) {
	case CALL_EXEC: {
		const char *t = PQcmdTuples((PGresult *)res);
		lua_pushinteger(L, t && *t ? strtoll(t, NULL, 10) : 0);
		lua_pushnil(L); /* no rowid on PostgreSQL: INSERT ... RETURNING */
		return 2;
	}
	case CALL_QUERY: {
		int rows = PQntuples(res);
		lua_createtable(L, rows, 0);
		luaL_setmetatable(L, "paygate.json.array");
		for (int r = 0; r < rows; r++) {
			push_row(L, res, r);
			lua_rawseti(L, -2, r + 1);
		}
		return 1;
	}
	case CALL_ONE:
		if (PQntuples(res) > 0)
			push_row(L, res, 0);
		else
			lua_pushnil(L);
		return 1;
	case CALL_SIMPLE:
	default:
		lua_pushstring(L, PQcmdStatus((PGresult *)res));
		return 1;
	}
}

static int result_ok(const PGresult *res)
{
	ExecStatusType s = res ? PQresultStatus(res) : PGRES_FATAL_ERROR;
	return s == PGRES_COMMAND_OK || s == PGRES_TUPLES_OK;
}

/* Push {status=503, error=code, message=msg}: what app.fail raises, so a handler that lets it pass answers 503. */
static void push_fail(lua_State *L, const char *code, const char *msg)
{
	lua_createtable(L, 0, 3);
	lua_pushinteger(L, 503);
	lua_setfield(L, -2, "status");
	lua_pushstring(L, code);
	lua_setfield(L, -2, "error");
	lua_pushstring(L, msg);
	lua_setfield(L, -2, "message");
}

static void push_conflicts(lua_State *L, int attempts)
{
	char msg[200];
	snprintf(msg, sizeof msg,
	         "the database refused this transaction %d times for conflicts with concurrent ones; "
	         "nothing was written, try again",
	         attempts);
	push_fail(L, "busy", msg);
}

/* The error a failed command raises in the script (its value, on top of L). */
/* Does sql only read (it starts with SELECT)? */
static int reads_only(const char *sql)
{
	while (*sql == ' ' || *sql == '\t' || *sql == '\n' || *sql == '\r' || *sql == '(')
		sql++;
	return strncasecmp(sql, "select", 6) == 0 && !(sql[6] >= 'a' && sql[6] <= 'z') &&
	       !(sql[6] >= 'A' && sql[6] <= 'Z');
}

/*
** The connection was lost with no answer from the server after a write of its
** own or a COMMIT had gone out: the server may have committed it before it
** went. (A failure inside a transaction before its COMMIT is rolled back; an
** error the server sent says the command did not complete.)
*/
static int outcome_unknown(const struct pg_call *k)
{
	int answered = k->res && PQresultErrorField(k->res, PG_DIAG_SQLSTATE);
	if (!k->sent || answered)
		return 0;
	return k->tx ? strcmp(k->sql, "COMMIT") == 0 : !reads_only(k->sql);
}

static int lock_not_had(const PGresult *res)
{
	const char *state = res ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : NULL;
	return state && strcmp(state, "55P03") == 0;
}

static void push_error(lua_State *L, struct pg_call *k)
{
	char buf[300];
	if (k->no_conn) {
		char msg[400];
		snprintf(msg, sizeof msg, "the database is busy (%s); nothing of this call was saved, try again",
		         k->err);
		push_fail(L, "busy", msg);
	} else if (!k->res || pg_conn_failed(k->res)) {
		char msg[500];
		const char *why = k->res ? pg_result_error(k->res, buf, sizeof buf) : k->err;
		if (outcome_unknown(k))
			snprintf(
			    msg, sizeof msg,
			    "the connection to the database was lost before it answered (%s); this call may have been "
			    "saved or not: find out before doing it again",
			    why);
		else
			snprintf(msg, sizeof msg,
			         "the database is unavailable (%s); nothing of this call was saved, try again", why);
		push_fail(L, "storage_unavailable", msg);
	} else if (lock_not_had(k->res)) { /* the writers' lock (serial transactions) */
		snprintf(buf, sizeof buf,
		         "the database's transactions stayed busy for %d ms; nothing of this call was saved, try again",
		         k->db->eng->cfg.db_busy_timeout_ms);
		push_fail(L, "busy", buf);
	} else if (pg_retryable(k->res) && k->tx) {
		k->tx->conflict = 1; /* db.tx runs its function again */
		lua_pushfstring(L, "db: %s; the transaction will run again", pg_result_error(k->res, buf, sizeof buf));
	} else if (pg_retryable(k->res)) {
		push_conflicts(L, k->attempts);
	} else {
		lua_pushfstring(L, "db: %s", pg_result_error(k->res, buf, sizeof buf));
	}
}

/* ---- one command, its coroutine waiting ---- */

static void call_free(struct pg_call *k)
{
	pg_cancel_acquire(&k->w);
	if (k->again)
		event_free(k->again);
	if (k->conn_deadline)
		event_free(k->conn_deadline);
	if (k->res)
		PQclear(k->res);
	free_params(k->vals, k->n);
	free(k->sql);
	free(k);
}

static void call_send(struct pg_call *k);

static void call_answered(struct pg_call *k)
{
	k->done = 1;
	if (k->own && k->conn) {
		pg_release(k->conn);
		k->conn = NULL;
	}
	coro_wake(k->c);
}

static void on_conn(struct pg_waiter *w, struct pg_conn *c, const char *err);

/* The wait is over: a connection again (it was given back meanwhile), and the statement runs again. */
static void call_again(evutil_socket_t fd, short what, void *arg)
{
	struct pg_call *k = arg;
	(void)fd;
	(void)what;
	struct pg_conn *conn = pg_try_acquire(k->db->pool);
	if (conn)
		on_conn(&k->w, conn, NULL);
	else
		pg_acquire(k->db->pool, &k->w);
}

static void on_result(void *arg, PGresult *res, const char *err)
{
	struct pg_call *k = arg;
	/*
	** A statement of its own that conflicted is a transaction of its own: run
	** it again as db.tx runs its function again, after a random wait that
	** grows with each attempt (at once, it meets the same concurrent ones).
	*/
	if (res && k->own && k->kind != CALL_SIMPLE && pg_retryable(res) && ++k->attempts < PGDB_TX_ATTEMPTS) {
		PQclear(res);
		k->db->eng->metrics.db_conflicts++;
		pg_release(k->conn);
		k->conn = NULL;
		k->own = 0;
		int64_t cap_us = 1000LL << (k->attempts < 8 ? k->attempts : 8); /* 2 ms, 4 ms ... 256 ms */
		struct timeval tv = { 0, (suseconds_t)(rand() % cap_us) };
		if (!k->again && !(k->again = evtimer_new(k->db->eng->base, call_again, k))) {
			call_again(-1, 0, k); /* out of memory: at once, then */
			return;
		}
		evtimer_add(k->again, &tv);
		return;
	}
	k->res = res;
	if (!res)
		snprintf(k->err, sizeof k->err, "%s", err ? err : "the connection to the database was lost");
	call_answered(k);
}

static void call_send(struct pg_call *k)
{
	char err[300];
	int rc = k->kind == CALL_SIMPLE
	             ? pg_send_simple(k->conn, k->sql, on_result, k, err, sizeof err)
	             : pg_send(k->conn, k->sql, k->n, (const char *const *)k->vals, on_result, k, err, sizeof err);
	if (rc < 0) {
		snprintf(k->err, sizeof k->err, "%s", err);
		call_answered(k);
		return;
	}
	k->sent = 1;
}

static void on_conn(struct pg_waiter *w, struct pg_conn *c, const char *err)
{
	struct pg_call *k = (struct pg_call *)(void *)((char *)w - offsetof(struct pg_call, w));
	if (k->conn_deadline)
		event_del(k->conn_deadline);
	if (!c) {
		snprintf(k->err, sizeof k->err, "%s", err);
		call_answered(k);
		return;
	}
	k->conn = c;
	if (k->tx)
		k->tx->conn = c; /* the transaction's, from BEGIN on */
	else
		k->own = 1;
	call_send(k);
}

static void tx_drop(struct coro *c);

/* Every connection stayed busy for db_busy_timeout_ms: give up waiting (503 busy, nothing was sent). */
static void conn_too_late(evutil_socket_t fd, short what, void *arg)
{
	struct pg_call *k = arg;
	(void)fd;
	(void)what;
	pg_cancel_acquire(&k->w);
	k->no_conn = 1;
	snprintf(k->err, sizeof k->err, "no database connection came free in %d ms",
	         k->db->eng->cfg.db_busy_timeout_ms);
	call_answered(k);
}

/* The coroutine was cancelled (its client hung up, or shutdown) while it waited, or after its answer came
   but before it ran on: nothing will read the answer. */
static void call_cleanup(struct coro *c)
{
	struct pg_call *k = c->wait;
	if (!k->resumed) {
		if (k->own && k->conn)
			pg_drop(k->conn); /* released once its answer is read */
		if (c->db_tx)
			tx_drop(c);
	}
	call_free(k);
}

static int values_of(enum call_kind kind)
{
	return kind == CALL_EXEC ? 2 : 1;
}

/*
** Push ok (boolean) and the command's values; or false, the error value and
** nils up to as many values (so the flag is always at the same depth).
*/
static int call_retvals(struct coro *c, lua_State *L)
{
	struct pg_call *k = c->wait;
	k->resumed = 1;
	if (result_ok(k->res)) {
		lua_pushboolean(L, 1);
		return 1 + push_result(L, k->res, k->kind);
	}
	lua_pushboolean(L, 0);
	push_error(L, k);
	for (int i = 1; i < values_of(k->kind); i++)
		lua_pushnil(L);
	return 1 + values_of(k->kind);
}

/* After a call: ok flag and values on top. Raise the error, or return the values. */
static int after_call(lua_State *L, int status, lua_KContext ctx)
{
	(void)status;
	int nvals = (int)ctx;
	if (!lua_toboolean(L, -nvals - 1)) { /* false, error, padding */
		lua_pop(L, nvals - 1);
		return lua_error(L);
	}
	lua_remove(L, -nvals - 1);
	return nvals;
}

/*
** Start kind's command (sql, params first..top for statements) on the
** coroutine's transaction, or on a connection of its own, and suspend until
** it is answered; then k(L, ., ctx) runs with ok and the values on top.
*/
static int call_start(lua_State *L, struct pgdb *db, enum call_kind kind, const char *sql, int first, lua_KContext ctx,
                      lua_KFunction k)
{
	struct coro *c = coro_of(L);
	struct pg_call *call;
	int n = 0;

	if (!coro_can_wait_db(L))
		return luaL_error(L, "%s", NEED_WAIT);
	char **vals = kind == CALL_SIMPLE ? NULL : collect_params(L, first, &n);
	if (!(call = calloc(1, sizeof *call)) || !(call->sql = strdup(sql))) {
		free(call);
		free_params(vals, n);
		return luaL_error(L, "db: out of memory");
	}
	call->db = db;
	call->c = c;
	call->tx = c->db_tx;
	call->kind = kind;
	call->vals = vals;
	call->n = n;
	call->w.fn = on_conn;
	if (call->tx && call->tx->conn) {
		call->conn = call->tx->conn;
		call_send(call);
	} else {
		struct pg_conn *conn = pg_try_acquire(db->pool);
		if (conn) {
			on_conn(&call->w, conn, NULL);
		} else {
			int ms = db->eng->cfg.db_busy_timeout_ms;
			struct timeval tv = { ms / 1000, (ms % 1000) * 1000 };
			call->conn_deadline = evtimer_new(db->eng->base, conn_too_late, call);
			if (call->conn_deadline)
				evtimer_add(call->conn_deadline, &tv);
			pg_acquire(db->pool, &call->w);
		}
	}
	return coro_suspendk(L, CORO_DB_WAIT, call, call_cleanup, call_retvals, ctx, k);
}

/* ---- blocking, before serving ---- */

static PGresult *sync_run(struct pgdb *db, lua_State *L, const char *sql, int first)
{
	int n = 0;
	char **vals = collect_params(L, first, &n);
	size_t cap = strlen(sql) * 2 + 16;
	char *text = malloc(cap);
	PGresult *res = NULL;
	if (text && pg_translate(sql, text, cap) >= 0) {
		/* A statement of its own (not inside a migration's transaction) that conflicted with another
		   node's (nodes starting together) is run again, as in a request. */
		for (int attempt = 1;; attempt++) {
			res = PQexecParams(db->sync, text, n, NULL, (const char *const *)vals, NULL, NULL, 0);
			if (!pg_retryable(res) || db->sync_depth > 0 || attempt >= PGDB_TX_ATTEMPTS)
				break;
			PQclear(res);
			struct timespec pause = { 0, (long)(rand() % (1000 << attempt)) * 1000 };
			nanosleep(&pause, NULL); /* before serving (a generation's load): the loop may wait */
		}
	}
	free(text);
	free_params(vals, n);
	return res;
}

static int sync_call(lua_State *L, struct pgdb *db, enum call_kind kind)
{
	char buf[300];
	const char *sql = luaL_checkstring(L, 1);
	PGresult *res = sync_run(db, L, sql, 2);
	if (!result_ok(res)) {
		lua_pushfstring(L, "db: %s in: %s", res ? pg_result_error(res, buf, sizeof buf) : "out of memory", sql);
		PQclear(res);
		return lua_error(L);
	}
	int n = push_result(L, res, kind);
	PQclear(res);
	return n;
}

static int sync_simple(struct pgdb *db, const char *sql, char *err, size_t errlen)
{
	char buf[300];
	PGresult *res = PQexec(db->sync, sql);
	int ok = result_ok(res);
	if (!ok)
		snprintf(err, errlen, "%s", pg_result_error(res, buf, sizeof buf));
	PQclear(res);
	return ok ? 0 : -1;
}

static int sync_tx(lua_State *L, struct pgdb *db)
{
	char sql[64], err[320];
	int depth = db->sync_depth;
	if (depth == 0)
		snprintf(sql, sizeof sql, "BEGIN");
	else
		snprintf(sql, sizeof sql, "SAVEPOINT pg_tx_%d", depth);
	if (sync_simple(db, sql, err, sizeof err) < 0)
		return luaL_error(L, "db.tx: cannot begin: %s", err);
	db->sync_depth++;
	int status = lua_pcall(L, lua_gettop(L) - 1, LUA_MULTRET, 0);
	db->sync_depth--;
	if (status != LUA_OK) {
		if (depth == 0)
			snprintf(sql, sizeof sql, "ROLLBACK");
		else
			snprintf(sql, sizeof sql, "ROLLBACK TO SAVEPOINT pg_tx_%d; RELEASE SAVEPOINT pg_tx_%d", depth,
			         depth);
		sync_simple(db, sql, err, sizeof err);
		return lua_error(L);
	}
	if (depth == 0)
		snprintf(sql, sizeof sql, "COMMIT");
	else
		snprintf(sql, sizeof sql, "RELEASE SAVEPOINT pg_tx_%d", depth);
	if (sync_simple(db, sql, err, sizeof err) < 0)
		return luaL_error(L, "db.tx: commit failed, nothing was saved: %s", err);
	return lua_gettop(L);
}

/* ---- what scripts may not do in SQL ---- */

/*
** As the SQLite authorizer does (store.c), by the statement's text: scripts
** may not control transactions (db.tx does; a COMMIT of their own would end
** db.tx's early), change session settings (set_config() is a SET too), or
** touch the engine's private table (_paygate_secrets: the session-token
** key). A text check cannot
** see through functions a migration defines: docs/security.md says to run
** paygate as a role that owns only its own tables.
*/
static const char *refused_sql(const char *sql, int migration)
{
	static const char *const control[] = { "begin",      "start",   "commit", "end",        "rollback", "abort",
		                               "savepoint",  "release", "set",    "reset",      "prepare",  "execute",
		                               "deallocate", "discard", "listen", "unlisten",   "notify",   "copy",
		                               "do",         "load",    "vacuum", "checkpoint", "lock",     NULL };
	for (const char *p = sql; *p; p++)
		if (*p == '_' && strncasecmp(p, "_paygate_secrets", 16) == 0)
			return "the engine's private table _paygate_secrets is not for scripts";
	if (migration)
		return NULL;
	/* set_config(): a SET in a function call, which would outlive the statement on a pooled session */
	for (const char *p = sql; *p; p++)
		if ((*p == 's' || *p == 'S') && strncasecmp(p, "set_config", 10) == 0)
			return "transactions and session settings are the engine's (use db.tx)";
	const char *p = sql;
	for (;;) {
		while (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r' || *p == '(')
			p++;
		if (p[0] == '-' && p[1] == '-') {
			while (*p && *p != '\n')
				p++;
		} else if (p[0] == '/' && p[1] == '*') {
			const char *e = strstr(p + 2, "*/");
			p = e ? e + 2 : p + strlen(p);
		} else {
			break;
		}
	}
	size_t n = 0;
	while ((p[n] >= 'a' && p[n] <= 'z') || (p[n] >= 'A' && p[n] <= 'Z'))
		n++;
	for (int i = 0; control[i]; i++)
		if (n == strlen(control[i]) && strncasecmp(p, control[i], n) == 0)
			return "transactions and session settings are the engine's (use db.tx)";
	return NULL;
}

/* ---- db.exec / query / one ---- */

static int statement(lua_State *L, struct pgdb *db, enum call_kind kind)
{
	const char *sql = luaL_checkstring(L, 1), *why = refused_sql(sql, 0);
	if (why)
		return luaL_error(L, "db: %s in: %s", why, sql);
	if (db->sync && !coro_of(L))
		return sync_call(L, db, kind);
	return call_start(L, db, kind, sql, 2, values_of(kind), after_call);
}

int pgdb_exec(lua_State *L, struct pgdb *db)
{
	return statement(L, db, CALL_EXEC);
}

int pgdb_query(lua_State *L, struct pgdb *db)
{
	return statement(L, db, CALL_QUERY);
}

int pgdb_one(lua_State *L, struct pgdb *db)
{
	return statement(L, db, CALL_ONE);
}

int pgdb_one_k(lua_State *L, struct pgdb *db, int first, lua_KContext ctx, lua_KFunction k)
{
	if (db->sync && !coro_of(L)) {
		char buf[300];
		PGresult *res = sync_run(db, L, lua_tostring(L, first), first + 1);
		if (!result_ok(res)) {
			lua_pushfstring(L, "db: %s", res ? pg_result_error(res, buf, sizeof buf) : "out of memory");
			PQclear(res);
			return lua_error(L);
		}
		lua_pushboolean(L, 1);
		push_result(L, res, CALL_ONE);
		PQclear(res);
		return k(L, LUA_OK, ctx);
	}
	return call_start(L, db, CALL_ONE, luaL_checkstring(L, first), first + 1, ctx, k);
}

/* ---- db.tx ---- */

/*
** The stack of db.tx while it runs: 1 = fn, 2..nargs+1 = its arguments
** (kept, to run fn again), then fn's results. ctx is nargs.
*/
static int tx_begun(lua_State *L, int status, lua_KContext ctx);
static int tx_after_fn(lua_State *L, int status, lua_KContext ctx);
static int tx_committed(lua_State *L, int status, lua_KContext ctx);
static int tx_rolled_back(lua_State *L, int status, lua_KContext ctx);

/* The outermost transaction is over (committed or rolled back): its connection goes back to the pool. */
static void tx_end(struct coro *c)
{
	struct pgdb_tx *t = c->db_tx;
	if (!t)
		return;
	pg_release(t->conn); /* closed instead when it is not idle (a lost connection) */
	t->db->open_tx--;
	c->db_tx = NULL;
	free(t);
}

/* The coroutine goes away with its transaction open: the connection is closed, the server rolls back. */
static void tx_drop(struct coro *c)
{
	struct pgdb_tx *t = c->db_tx;
	if (t->conn)
		pg_drop(t->conn);
	t->conn = NULL; /* pg_drop gives it back, closed (it is inside a transaction), now or once answered */
	tx_end(c);
}

static void tx_abandon(struct coro *c)
{
	struct pgdb_tx *t = c->db_tx;
	if (t && t->conn)
		pg_release(t->conn); /* not idle: closed, and rolled back by the server */
	if (t)
		t->conn = NULL;
	tx_end(c);
}

static int tx_command(lua_State *L, struct pgdb *db, const char *sql, lua_KContext ctx, lua_KFunction k)
{
	return call_start(L, db, CALL_SIMPLE, sql, 0, ctx, k);
}

/*
** postgresql.transactions = "serial" (the default): every db.tx on every
** node first takes one lock, in the order they asked, as SQLite's writers
** take its write lock. LOCK TABLE takes no snapshot, so the transaction's
** snapshot is taken after the lock: two db.tx never see each other's rows
** change under them, and PostgreSQL has nothing to refuse. Orders that all
** touch the same products' stock queue instead of failing each other (on this
** machine, one node: 511 orders/s and no 503 serial, 226/s with 345 503s
** concurrent). "concurrent" lets transactions run side by side and re-runs
** the ones PostgreSQL refuses: for shops whose transactions seldom touch the
** same rows. A lock not had within db_busy_timeout_ms is 503 busy.
*/
#define WRITER_DDL "CREATE TABLE IF NOT EXISTS _paygate_writer ()"

static int tx_begin(lua_State *L, struct pgdb *db, lua_KContext ctx)
{
	struct pgdb_tx *t = coro_of(L)->db_tx;
	char sql[192];
	if (t->depth > 0)
		snprintf(sql, sizeof sql, "SAVEPOINT pg_tx_%d", t->depth);
	else if (db->eng->cfg.pg_concurrent_tx)
		snprintf(sql, sizeof sql, "BEGIN");
	else
		snprintf(sql, sizeof sql,
		         "BEGIN; SET LOCAL lock_timeout = %d; LOCK TABLE _paygate_writer IN EXCLUSIVE MODE;"
		         " SET LOCAL lock_timeout = DEFAULT",
		         db->eng->cfg.db_busy_timeout_ms > 0 ? db->eng->cfg.db_busy_timeout_ms : 1);
	return tx_command(L, db, sql, ctx, tx_begun);
}

int pgdb_tx(lua_State *L, struct pgdb *db)
{
	luaL_checktype(L, 1, LUA_TFUNCTION);
	if (db->sync && !coro_of(L))
		return sync_tx(L, db);
	if (!coro_can_wait_db(L))
		return luaL_error(L, "%s", NEED_WAIT);
	struct coro *c = coro_of(L);
	if (!c->db_tx) {
		struct pgdb_tx *t = calloc(1, sizeof *t);
		if (!t)
			return luaL_error(L, "db.tx: out of memory");
		t->db = db;
		t->attempts = 1;
		c->db_tx = t;
		c->db_tx_abandon = tx_abandon;
		db->open_tx++;
	}
	return tx_begin(L, db, lua_gettop(L) - 1);
}

/* BEGIN (or SAVEPOINT) answered: run fn on a copy of itself and its arguments. */
static int tx_begun(lua_State *L, int status, lua_KContext ctx)
{
	(void)status;
	struct coro *c = coro_of(L);
	struct pgdb_tx *t = c->db_tx;
	int nargs = (int)ctx;
	if (!lua_toboolean(L, -2)) {
		if (t->depth == 0)
			tx_end(c);
		lua_remove(L, -2);
		return lua_error(L);
	}
	lua_settop(L, nargs + 1);
	t->depth++;
	for (int i = 1; i <= nargs + 1; i++)
		lua_pushvalue(L, i);
	return tx_after_fn(L, lua_pcallk(L, nargs, LUA_MULTRET, 0, ctx, tx_after_fn), ctx);
}

/* fn returned (COMMIT or RELEASE) or raised (ROLLBACK, or back to its savepoint). */
static int tx_after_fn(lua_State *L, int status, lua_KContext ctx)
{
	struct pgdb_tx *t = coro_of(L)->db_tx;
	struct pgdb *db = t->db;
	char sql[128];
	int level = t->depth - 1;
	/* A conflict inside, even one the script caught (in a nested db.tx or a pcall), dooms the whole
	   transaction: it is rolled back and runs again, whatever fn made of the error. */
	if ((status == LUA_OK || status == LUA_YIELD) && !(level == 0 && t->conflict)) {
		if (level == 0)
			snprintf(sql, sizeof sql, "COMMIT");
		else
			snprintf(sql, sizeof sql, "RELEASE SAVEPOINT pg_tx_%d", level);
		return tx_command(L, db, sql, ctx, tx_committed);
	}
	if (level == 0)
		snprintf(sql, sizeof sql, "ROLLBACK");
	else
		snprintf(sql, sizeof sql, "ROLLBACK TO SAVEPOINT pg_tx_%d; RELEASE SAVEPOINT pg_tx_%d", level, level);
	return tx_command(L, db, sql, ctx, tx_rolled_back);
}

/* ---- a conflicted transaction waits a little before it runs again ---- */

static int tx_begin_again(lua_State *L, int status, lua_KContext ctx)
{
	(void)status;
	struct pgdb_tx *t = coro_of(L)->db_tx;
	return tx_begin(L, t->db, ctx);
}

/*
** The outermost attempt failed for a conflict: while attempts remain, give
** the connection back, wait a random while that grows with each attempt (so
** that the transactions that collided do not collide again), and run fn again.
** Returns 0 when no attempt remains.
*/
static int tx_again(lua_State *L, struct pgdb_tx *t, lua_KContext ctx)
{
	if (t->attempts >= PGDB_TX_ATTEMPTS)
		return 0;
	t->attempts++;
	t->conflict = 0;
	t->db->eng->metrics.db_rollbacks++;
	t->db->eng->metrics.db_conflicts++;
	lua_settop(L, (int)ctx + 1);
	pg_release(t->conn);
	t->conn = NULL;
	int64_t cap_us = 1000LL << (t->attempts < 8 ? t->attempts : 8); /* 4 ms, 8 ms ... 256 ms */
	return coro_sleepk(L, CORO_DB_WAIT, rand() % cap_us, ctx, tx_begin_again);
}

static int tx_committed(lua_State *L, int status, lua_KContext ctx)
{
	(void)status;
	struct coro *c = coro_of(L);
	struct pgdb_tx *t = c->db_tx;
	struct pgdb *db = t->db;
	int nargs = (int)ctx;
	int ok = lua_toboolean(L, -2);
	/* COMMIT of a transaction an error aborted answers ROLLBACK: nothing was saved */
	if (ok && t->depth == 1 && strcmp(lua_tostring(L, -1), "COMMIT") != 0) {
		ok = 0;
		lua_pop(L, 1);
		lua_pushliteral(L, "db.tx: the transaction was rolled back by an error inside it that was caught; "
		                   "nothing was saved");
	}
	t->depth--;
	if (ok) {
		lua_pop(L, 2);
		if (t->depth == 0) {
			db->eng->metrics.db_commits++;
			tx_end(c);
		}
		return lua_gettop(L) - (nargs + 1);
	}
	if (t->depth > 0) {
		lua_remove(L, -2);
		return lua_error(L);
	}
	if (t->conflict && t->attempts < PGDB_TX_ATTEMPTS)
		return tx_again(L, t, ctx);
	int conflicts = t->conflict;
	tx_end(c);
	if (conflicts) {
		lua_pop(L, 2);
		push_conflicts(L, PGDB_TX_ATTEMPTS);
	} else {
		lua_remove(L, -2);
	}
	return lua_error(L);
}

static int tx_rolled_back(lua_State *L, int status, lua_KContext ctx)
{
	(void)status;
	struct coro *c = coro_of(L);
	struct pgdb_tx *t = c->db_tx;
	struct pgdb *db = t->db;
	lua_pop(L, 2); /* the ROLLBACK's own answer: if it failed, the connection is closed at release */
	t->depth--;
	if (t->depth > 0)
		return lua_error(L); /* fn's error, to the enclosing db.tx */
	if (t->conflict && t->attempts < PGDB_TX_ATTEMPTS)
		return tx_again(L, t, ctx);
	int conflicts = t->conflict;
	db->eng->metrics.db_rollbacks++;
	tx_end(c);
	if (conflicts) {
		lua_pop(L, 1);
		push_conflicts(L, PGDB_TX_ATTEMPTS);
	}
	return lua_error(L);
}

/* ---- migrations ---- */

static const char *const MIGRATIONS_DDL = "CREATE TABLE IF NOT EXISTS _paygate_migrations ("
                                          " version BIGINT PRIMARY KEY, name TEXT NOT NULL, checksum TEXT NOT NULL,"
                                          " applied_at TIMESTAMPTZ NOT NULL DEFAULT now())";

static int sync_params(struct pgdb *db, const char *sql, int n, const char *const *vals, PGresult **out, char *err,
                       size_t errlen)
{
	char buf[300];
	PGresult *res = PQexecParams(db->sync, sql, n, NULL, vals, NULL, NULL, 0);
	if (!result_ok(res)) {
		snprintf(err, errlen, "%s", pg_result_error(res, buf, sizeof buf));
		PQclear(res);
		return -1;
	}
	if (out)
		*out = res;
	else
		PQclear(res);
	return 0;
}

int pgdb_migration_checksum(struct pgdb *db, lua_Integer v, char out[17], char *err, size_t errlen)
{
	char vbuf[32];
	PGresult *res;
	snprintf(vbuf, sizeof vbuf, "%lld", (long long)v);
	const char *p1[] = { vbuf };
	if (sync_params(db, "SELECT checksum FROM _paygate_migrations WHERE version = $1", 1, p1, &res, err, errlen) <
	    0)
		return -1;
	snprintf(out, 17, "%s", PQntuples(res) > 0 ? PQgetvalue(res, 0, 0) : "");
	PQclear(res);
	return 0;
}

int pgdb_migration_sql(struct pgdb *db, const char *sql, char *err, size_t errlen)
{
	const char *why = refused_sql(sql, 1);
	if (why) {
		snprintf(err, errlen, "%s", why);
		return -1;
	}
	return sync_simple(db, sql, err, errlen);
}

int pgdb_migration_record(struct pgdb *db, lua_Integer v, const char *name, const char *sum, char *err, size_t errlen)
{
	char vbuf[32];
	snprintf(vbuf, sizeof vbuf, "%lld", (long long)v);
	const char *p3[] = { vbuf, name, sum };
	return sync_params(db, "INSERT INTO _paygate_migrations(version, name, checksum) VALUES ($1, $2, $3)", 3, p3,
	                   NULL, err, errlen);
}

/* The database's newest migration is newer than these scripts' newest: another node runs newer scripts. */
static int check_not_behind(struct pgdb *db, lua_Integer last, char *err, size_t errlen)
{
	PGresult *res;
	if (sync_params(db, "SELECT max(version) FROM _paygate_migrations", 0, NULL, &res, err, errlen) < 0)
		return -1;
	long long have = PQgetisnull(res, 0, 0) ? 0 : strtoll(PQgetvalue(res, 0, 0), NULL, 10);
	PQclear(res);
	if (have > last) {
		snprintf(
		    err, errlen,
		    "the database's schema is at migration %lld, newer than these scripts' %lld: another node runs "
		    "newer scripts; deploy them here too",
		    have, (long long)last);
		return -1;
	}
	return 0;
}

int pgdb_migrate_begin(struct pgdb *db, char *err, size_t errlen)
{
	char e2[300];
	if (!pgdb_sync_begin(db, err, errlen))
		return -1;
	/* One node at a time; the others wait here, then find the migrations applied. */
	if (sync_simple(db, LOCK_SQL, err, errlen) < 0) {
		pgdb_sync_end(db);
		return -1;
	}
	if (sync_simple(db, MIGRATIONS_DDL, err, errlen) < 0 || sync_simple(db, "BEGIN", err, errlen) < 0) {
		sync_simple(db, "SELECT pg_advisory_unlock(" MIGRATION_LOCK ")", e2, sizeof e2);
		pgdb_sync_end(db);
		return -1;
	}
	db->sync_depth = 1; /* a db.tx inside a migration's function is a savepoint */
	return 0;
}

int pgdb_migrate_end(struct pgdb *db, int ok, lua_Integer last, char *err, size_t errlen)
{
	char e2[300];
	int rc = ok ? check_not_behind(db, last, err, errlen) : -1;
	db->sync_depth = 0;
	if (rc < 0 ||
	    db->eng->check_only) { /* a check: the migrations ran and the schema is not behind; keep nothing */
		sync_simple(db, "ROLLBACK", e2, sizeof e2);
	} else if (sync_simple(db, "COMMIT", e2, sizeof e2) < 0) {
		snprintf(err, errlen, "the migrations could not be committed: %s", e2);
		rc = -1;
	}
	sync_simple(db, "SELECT pg_advisory_unlock(" MIGRATION_LOCK ")", e2, sizeof e2);
	pgdb_sync_end(db);
	return rc;
}

int pgdb_sync_lock(struct pgdb *db, int take, char *err, size_t errlen)
{
	assert(db->sync);
	return sync_simple(db, take ? LOCK_SQL : "SELECT pg_advisory_unlock(" MIGRATION_LOCK ")", err, errlen);
}

int pgdb_setup(struct pgdb *db, const char *sql, char *err, size_t errlen)
{
	char e2[300];
	if (!pgdb_sync_begin(db, err, errlen))
		return -1;
	int rc = sync_simple(db, LOCK_SQL, err, errlen);
	if (rc == 0) {
		rc = sync_simple(db, sql, err, errlen);
		sync_simple(db, "SELECT pg_advisory_unlock(" MIGRATION_LOCK ")", e2, sizeof e2);
	}
	pgdb_sync_end(db);
	return rc;
}

/* ---- the connection ---- */

PGconn *pgdb_sync_begin(struct pgdb *db, char *err, size_t errlen)
{
	char e2[300];
	if (db->sync) { /* nested: a migration inside a generation's load */
		db->sync_refs++;
		return db->sync;
	}
	if (!(db->sync = pg_pool_connect_blocking(db->pool, err, errlen)))
		return NULL;
	db->sync_refs = 1;
	/* A migration that waits for a lock held by a transaction of this very process (suspended while the
	   loop is here) would wait forever: give up after a while instead. */
	if (sync_simple(
	        db, "SET lock_timeout = '5s'; SET statement_timeout = 0; SET idle_in_transaction_session_timeout = 0",
	        e2, sizeof e2) < 0) {
		snprintf(err, errlen, "%s", e2);
		pgdb_sync_end(db);
		return NULL;
	}
	return db->sync;
}

void pgdb_sync_end(struct pgdb *db)
{
	if (--db->sync_refs > 0)
		return;
	PQfinish(db->sync);
	db->sync = NULL;
	db->sync_depth = 0;
}

/*
** Settings under which the same scripts would mean something else than on
** SQLite, or an acknowledged write could be lost: said at start-up.
*/
static void check_settings(struct pgdb *db)
{
	char err[300];
	if (!pgdb_sync_begin(db, err, sizeof err))
		return;
	PGresult *res = PQexec(db->sync, "SELECT current_setting('synchronous_commit'),"
	                                 " (SELECT datcollate FROM pg_database WHERE datname = current_database())");
	if (PQresultStatus(res) == PGRES_TUPLES_OK && PQntuples(res) == 1) {
		const char *sync = PQgetvalue(res, 0, 0), *collate = PQgetvalue(res, 0, 1);
		if (strcmp(sync, "off") == 0)
			log_warn(&db->eng->log, NULL,
			         "the database runs with synchronous_commit = off: a crash of PostgreSQL loses "
			         "transactions paygate has already acknowledged; set it to on (or remote_apply)");
		if (strcmp(collate, "C") != 0 && strcmp(collate, "C.UTF-8") != 0 && strcmp(collate, "POSIX") != 0)
			log_warn(
			    &db->eng->log, NULL,
			    "the database sorts text by the locale %s, SQLite by bytes: ORDER BY on text may differ "
			    "between the two; create the database with LOCALE 'C' (docs/scaling.md)",
			    collate);
	}
	PQclear(res);
	pgdb_sync_end(db);
}

struct pgdb *pgdb_open(struct engine *e, const char *url, char *err, size_t errlen)
{
	struct pgdb *db = calloc(1, sizeof *db);
	char *password = NULL;
	if (!db) {
		snprintf(err, errlen, "out of memory");
		return NULL;
	}
	db->eng = e;
	if (e->cfg.pg_password_file) {
		char e2[300];
		if (!(password = config_read_file(e->cfg.pg_password_file, 4096, NULL, e2, sizeof e2))) {
			snprintf(err, errlen, "postgresql.password_file: %s", e2);
			free(db);
			return NULL;
		}
		password[strcspn(password, "\r\n")] = '\0'; /* its first line */
	}
	db->pool = pg_pool_new(e->base, &e->log, url, password, e->cfg.pg_pool_size, e->cfg.pg_statement_timeout_ms,
	                       err, errlen);
	if (password) {
		memset(password, 0, strlen(password));
		free(password);
	}
	if (!db->pool) {
		free(db);
		return NULL;
	}
	check_settings(db);
	if (!e->cfg.pg_concurrent_tx && pgdb_setup(db, WRITER_DDL, err, errlen) < 0) {
		pgdb_close(db);
		return NULL;
	}
	return db;
}

void pgdb_close(struct pgdb *db)
{
	if (!db)
		return;
	if (db->sync) {
		db->sync_refs = 1;
		pgdb_sync_end(db);
	}
	pg_pool_free(db->pool);
	free(db);
}

struct pg_pool *pgdb_pool(struct pgdb *db)
{
	return db->pool;
}

int pgdb_open_tx(const struct pgdb *db)
{
	return db->open_tx;
}

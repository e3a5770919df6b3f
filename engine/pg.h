/* pg.h — PostgreSQL through libpq on the event loop: a pool of non-blocking connections, one query at a time each. */
#ifndef PAYGATE_PG_H
#define PAYGATE_PG_H

#include <stddef.h>

#include <libpq-fe.h>

struct event_base;
struct log;
struct pg_pool;
struct pg_conn;

/*
** Nothing here blocks the loop once serving: connections are opened with
** PQconnectStart/PQconnectPoll and queries sent with PQsendQueryPrepared on a
** non-blocking socket, their results read when libevent says the socket is
** readable. Each connection runs one command at a time; whoever holds it (a
** db call, a transaction from BEGIN to COMMIT, the jobs bookkeeping) gives it
** back with pg_release. A statement is prepared once per connection (its
** `?` placeholders translated to $n) and executed by name after that.
**
** Every session runs SERIALIZABLE (the meaning SQLite gives every
** transaction); the caller retries on pg_retryable(). The engine's own
** bookkeeping (pg_pool_query) runs READ COMMITTED.
*/

/*
** A pool of up to size connections to conninfo (password, when not NULL,
** overrides the URL's); a statement that runs longer than
** statement_timeout_ms is cancelled by the server (0: never). Opens and checks one connection now, blocking (start-
** up), so a wrong address fails at once; the others open when needed.
*/
struct pg_pool *pg_pool_new(struct event_base *base, struct log *log, const char *conninfo, const char *password,
                            int size, int statement_timeout_ms, char *err, size_t errlen);
void pg_pool_free(struct pg_pool *p);

/* Someone waiting for a connection: fn(w, c, NULL) with one, or fn(w, NULL, why) when none could be opened. */
struct pg_waiter {
	struct pg_waiter *next, *prev; /* NULL when not waiting */
	void (*fn)(struct pg_waiter *w, struct pg_conn *c, const char *err);
};

/* A free connection now, or NULL (then pg_acquire queues). */
struct pg_conn *pg_try_acquire(struct pg_pool *p);

/* Queue w (fn set) for the next free connection; fn runs from the loop, never inside this call. */
void pg_acquire(struct pg_pool *p, struct pg_waiter *w);
void pg_cancel_acquire(struct pg_waiter *w);

/*
** Give c back. A connection that is not idle (a transaction left open, a
** result still coming, a broken socket) is closed instead: the server rolls
** its transaction back.
*/
void pg_release(struct pg_conn *c);

/*
** The result of a command: res (fn owns it: PQclear it; NULL when the
** connection failed, err says why). For a command whose result is an error,
** res is that result (PQresultStatus, PQresultErrorField).
*/
typedef void (*pg_result_fn)(void *arg, PGresult *res, const char *err);

/*
** Run sql (one statement; `?` placeholders, translated here) with n text
** parameters (NULL: SQL NULL), prepared once per connection. 0, or -1 with
** err (the connection is broken or the statement cannot be sent). fn runs
** from the loop; pg_drop(c) stops it from running (the holder went away).
*/
int pg_send(struct pg_conn *c, const char *sql, int n, const char *const *values, pg_result_fn fn, void *arg, char *err,
            size_t errlen);

/* Run sql that has no parameters with the simple protocol (BEGIN, COMMIT, SAVEPOINT ...): like pg_send. */
int pg_send_simple(struct pg_conn *c, const char *sql, pg_result_fn fn, void *arg, char *err, size_t errlen);

/*
** Its holder went away: give c back, closed unless idle (a transaction left
** open is rolled back by the server). A command still in flight is answered to
** nobody: its result is read and thrown away first.
*/
void pg_drop(struct pg_conn *c);

/* Is this failure worth running the whole transaction again (serialization failure, deadlock)? */
int pg_retryable(const PGresult *res);

/* Did the connection itself fail (not the statement): the server went away, a failover? */
int pg_conn_failed(const PGresult *res);

/* A readable message for a failed result ("ERROR: ... (SQLSTATE)"), into buf. */
const char *pg_result_error(const PGresult *res, char *buf, size_t len);

/* Translate `?` placeholders outside quotes and comments to $1..$n into out; the count, or -1 when out is short. */
int pg_translate(const char *sql, char *out, size_t outlen);

/*
** Blocking: a connection of its own for start-up work that runs before the
** loop serves (migrations under an advisory lock, the session secret).
*/
PGconn *pg_pool_connect_blocking(struct pg_pool *p, char *err, size_t errlen);

/* Connections open now (for /metrics). */
int pg_pool_open_count(const struct pg_pool *p);

/*
** One statement on a connection of the pool's, released once answered: for
** the engine's own bookkeeping (jobs), on a small pool of its own whose
** sessions run READ COMMITTED (see pg.c). fn runs from the loop with the
** result (its owner), or NULL and why. -1: out of memory (fn will not run).
*/
int pg_pool_query(struct pg_pool *p, const char *sql, int n, const char *const *values, pg_result_fn fn, void *arg);

/*
** LISTEN channel on a session of its own (connected now, blocking: start-up).
** fn(arg) runs from the loop whenever notifications arrived, and once after
** the session was lost and came back (what was sent meanwhile was missed).
*/
struct pg_listener;
struct pg_listener *pg_listen(struct pg_pool *p, const char *channel, void (*fn)(void *arg), void *arg, char *err,
                              size_t errlen);
void pg_listener_free(struct pg_listener *l);

#endif

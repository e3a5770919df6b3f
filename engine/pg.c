/* pg.c — PostgreSQL through libpq on the event loop: a pool of non-blocking connections, one query at a time each. */
#include "pg.h"

#include <assert.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <event2/event.h>

#include "log.h"

#define STMT_CACHE 128 /* per connection, direct-mapped: slot = hash(sql) */
#define MAX_PARAMS 1000

/*
** Every session: SERIALIZABLE (as SQLite), a bound on how long one statement
** may run, and the same bound on a transaction left idle: one its gateway lost
** track of (a bug, a stuck worker) is ended by the server, and its locks (the
** writers' lock of serial transactions among them) with it.
*/
#define SESSION_OPTIONS                                                         \
	"-c default_transaction_isolation=serializable -c statement_timeout=%d" \
	" -c idle_in_transaction_session_timeout=%d"

/*
** The engine's own statements (pg_pool_query: the jobs' claims, leases and
** outcomes) run on a small pool of their own at READ COMMITTED: a queue
** claimed with FOR UPDATE SKIP LOCKED and rows changed only under conditions
** on themselves need nothing more, and at SERIALIZABLE the claims' reads of
** the whole queue made scripts' transactions that schedule a job, and the
** jobs' own outcomes, fail with serialization failures (an outcome that
** fails leaves its job to run a second time when its lease runs out).
*/
#define OWN_OPTIONS                                                                 \
	"-c default_transaction_isolation=read\\ committed -c statement_timeout=%d" \
	" -c idle_in_transaction_session_timeout=%d"
#define OWN_POOL_SIZE 2

enum conn_state {
	CONN_CONNECTING, /* PQconnectPoll until OK */
	CONN_FREE,       /* in the pool, idle */
	CONN_HELD,       /* someone holds it, nothing in flight */
	CONN_BUSY,       /* a command in flight */
};

struct cached_stmt {
	char *sql;
	char name[16];
};

struct pg_conn {
	struct pg_pool *pool;
	PGconn *pq;
	struct event *ev;
	enum conn_state state;
	struct pg_conn *next_free;
	struct pg_conn *next, *prev; /* every connection of the pool */
	int write_wanted;

	/* the command in flight */
	pg_result_fn fn;
	void *arg;
	int dropped;
	PGresult *res; /* the last result of the command so far */
	int preparing; /* 1: the PREPARE's answer comes first, then EXECUTE with exec_* */
	const char *exec_name;
	int exec_n;
	char **exec_values;

	struct cached_stmt cache[STMT_CACHE];
	unsigned next_name;
};

struct pg_pool {
	struct event_base *base;
	struct log *log;
	char *conninfo, *password;
	char options[256]; /* the sessions' options: SESSION_OPTIONS, or OWN_OPTIONS */
	int size, open;
	struct pg_conn *free_list;
	struct pg_pool *own;      /* for pg_pool_query (NULL in that pool itself) */
	struct pg_conn all;       /* list head */
	struct pg_waiter waiters; /* list head */
	struct event *hand_ev;    /* hands free connections to waiters from the loop */
	char last_error[256];
};

/* ---- placeholders ---- */

static int ident_char(char c)
{
	return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' ||
	       (unsigned char)c >= 0x80;
}

/*
** If sql[i] starts text that is not SQL (a string, a quoted name, a comment, a
** dollar-quoted body), the index just past it (the end of sql when it is not
** closed); else i. PostgreSQL's rules: '' and "" inside their quotes, backslash
** escapes in E'...', nested block comments, $tag$ ... $tag$.
*/
static size_t skip_text(const char *sql, size_t i)
{
	const char *p = sql + i;
	size_t n;
	if (p[0] == '\'') {
		int escapes = i > 0 && (p[-1] == 'E' || p[-1] == 'e') && (i == 1 || !ident_char(p[-2]));
		for (n = 1; p[n]; n++) {
			if (escapes && p[n] == '\\' && p[n + 1])
				n++;
			else if (p[n] == '\'' && p[n + 1] == '\'')
				n++;
			else if (p[n] == '\'')
				return i + n + 1;
		}
		return i + n;
	}
	if (p[0] == '"') {
		const char *e = strchr(p + 1, '"');
		return e ? (size_t)(e + 1 - sql) : i + strlen(p);
	}
	if (p[0] == '-' && p[1] == '-') {
		const char *e = strchr(p, '\n');
		return e ? (size_t)(e - sql) : i + strlen(p);
	}
	if (p[0] == '/' && p[1] == '*') {
		int depth = 1;
		for (n = 2; p[n] && depth > 0; n++) {
			if (p[n] == '/' && p[n + 1] == '*') {
				depth++;
				n++;
			} else if (p[n] == '*' && p[n + 1] == '/') {
				depth--;
				n++;
			}
		}
		return i + n;
	}
	if (p[0] == '$' && (i == 0 || !ident_char(p[-1])) && !(p[1] >= '0' && p[1] <= '9')) {
		size_t t = 1; /* $tag$: the tag is a name without $, or empty */
		while (ident_char(p[t]))
			t++;
		if (p[t] != '$')
			return i;
		for (n = t + 1; p[n]; n++)
			if (p[n] == '$' && strncmp(p + n, p, t + 1) == 0)
				return i + n + t + 1;
		return i + n;
	}
	return i;
}

int pg_translate(const char *sql, char *out, size_t outlen)
{
	size_t o = 0, i = 0;
	int n = 0;
	while (sql[i]) {
		size_t end = skip_text(sql, i);
		if (end == i && sql[i] == '?') {
			int w = snprintf(out + o, outlen - o, "$%d", ++n);
			if (w < 0 || (size_t)w >= outlen - o)
				return -1;
			o += (size_t)w;
			i++;
			continue;
		}
		if (end == i)
			end = i + 1;
		if (o + (end - i) >= outlen)
			return -1;
		memcpy(out + o, sql + i, end - i);
		o += end - i;
		i = end;
	}
	if (o >= outlen)
		return -1;
	out[o] = '\0';
	return n;
}

/* ---- results ---- */

/* A statement prepared before a migration changed its table's columns: prepare it again. */
static int plan_changed(const PGresult *res)
{
	const char *state = res ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : NULL;
	const char *msg = res ? PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY) : NULL;
	return state && msg && strcmp(state, "0A000") == 0 && strstr(msg, "cached plan must not change result type");
}

int pg_retryable(const PGresult *res)
{
	const char *state = res ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : NULL;
	return state && (strcmp(state, "40001") == 0 || strcmp(state, "40P01") == 0 || plan_changed(res));
}

int pg_conn_failed(const PGresult *res)
{
	const char *state = res ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : NULL;
	/* class 08: connection exceptions; 57P0x: the server is shutting down or restarting */
	return !res || !state || strncmp(state, "08", 2) == 0 || strncmp(state, "57P", 3) == 0;
}

const char *pg_result_error(const PGresult *res, char *buf, size_t len)
{
	const char *msg = res ? PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY) : NULL;
	const char *state = res ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : NULL;
	if (!msg && res)
		msg = PQresultErrorMessage(res);
	snprintf(buf, len, "%s%s%s%s", msg && *msg ? msg : "the database failed", state ? " (SQLSTATE " : "",
	         state ? state : "", state ? ")" : "");
	return buf;
}

/* ---- connections ---- */

static void conn_event(evutil_socket_t fd, short what, void *arg);

static void free_exec(struct pg_conn *c)
{
	for (int i = 0; i < c->exec_n; i++)
		free(c->exec_values[i]);
	free(c->exec_values);
	c->exec_values = NULL;
	c->exec_n = 0;
	c->exec_name = NULL;
	c->preparing = 0;
}

static void conn_close(struct pg_conn *c)
{
	struct pg_pool *p = c->pool;
	if (c->ev)
		event_free(c->ev);
	if (c->res)
		PQclear(c->res);
	free_exec(c);
	for (int i = 0; i < STMT_CACHE; i++)
		free(c->cache[i].sql);
	PQfinish(c->pq);
	c->next->prev = c->prev;
	c->prev->next = c->next;
	p->open--;
	free(c);
}

#define CONNECT_TIMEOUT_S 5 /* an address that does not answer (a failover in progress) fails this fast */

/* (Re)arm the socket's event: read always, write while libpq has output queued; a deadline while connecting. */
static int conn_watch(struct pg_conn *c, short what)
{
	static const struct timeval connect_timeout = { CONNECT_TIMEOUT_S, 0 };
	if (c->ev)
		event_free(c->ev);
	c->ev = event_new(c->pool->base, PQsocket(c->pq), what | EV_PERSIST, conn_event, c);
	return c->ev && event_add(c->ev, c->state == CONN_CONNECTING ? &connect_timeout : NULL) == 0 ? 0 : -1;
}

static void hand_out(struct pg_pool *p);

/* A connection is free: to the first waiter (from the loop), else to the pool. */
static void conn_free(struct pg_conn *c)
{
	struct pg_pool *p = c->pool;
	c->state = CONN_FREE; /* its socket stays watched: a session the server ends while idle is closed at once */
	c->next_free = p->free_list;
	p->free_list = c;
	if (p->waiters.next != &p->waiters)
		event_active(p->hand_ev, EV_TIMEOUT, 0);
}

/* The command ended (result or failure): tell its holder, unless it went away. */
static void finish_command(struct pg_conn *c, PGresult *res, const char *err)
{
	pg_result_fn fn = c->fn;
	void *arg = c->arg;
	int dropped = c->dropped;
	c->fn = NULL;
	c->arg = NULL;
	c->dropped = 0;
	c->res = NULL;
	free_exec(c);
	if (c->state == CONN_BUSY)
		c->state = CONN_HELD;
	if (dropped) {
		if (res)
			PQclear(res);
		pg_release(c); /* whoever held it is gone: give it back (closed unless idle) */
		return;
	}
	fn(arg, res, err); /* res is fn's now */
}

/* libpq's message (it ends with a newline) as one line of a log or an error. */
static void copy_message(char *dst, size_t len, const char *msg)
{
	snprintf(dst, len, "%s", msg);
	size_t n = strlen(dst);
	while (n && (dst[n - 1] == '\n' || dst[n - 1] == ' '))
		dst[--n] = '\0';
}

static void conn_failed(struct pg_conn *c, const char *why)
{
	char msg[sizeof c->pool->last_error];
	copy_message(msg, sizeof msg, why && *why ? why : "the connection to the database was lost");
	snprintf(c->pool->last_error, sizeof c->pool->last_error, "%s", msg);
	if (c->state == CONN_BUSY) {
		if (c->res) {
			PQclear(c->res);
			c->res = NULL;
		}
		finish_command(c, NULL, msg); /* the holder releases it; a broken one is closed then */
	}
}

static int send_execute(struct pg_conn *c)
{
	if (!PQsendQueryPrepared(c->pq, c->exec_name, c->exec_n, (const char *const *)c->exec_values, NULL, NULL, 0))
		return -1;
	c->preparing = 0;
	return 0;
}

/* Flush what libpq holds; wait for write readiness while it cannot. */
static int conn_flush(struct pg_conn *c)
{
	int rc = PQflush(c->pq);
	if (rc < 0)
		return -1;
	if ((rc == 1) != c->write_wanted) {
		c->write_wanted = rc == 1;
		return conn_watch(c, EV_READ | (c->write_wanted ? EV_WRITE : 0));
	}
	return 0;
}

/* Read what arrived; when the command is complete, hand its result on. */
static void conn_input(struct pg_conn *c)
{
	if (!PQconsumeInput(c->pq)) {
		conn_failed(c, PQerrorMessage(c->pq));
		return;
	}
	while (c->state == CONN_BUSY && !PQisBusy(c->pq)) {
		PGresult *r = PQgetResult(c->pq);
		if (r) { /* keep the last (an error ends the command) */
			if (c->res)
				PQclear(c->res);
			c->res = r;
			continue;
		}
		/* the command is complete */
		PGresult *res = c->res;
		c->res = NULL;
		if (c->preparing && res && PQresultStatus(res) == PGRES_COMMAND_OK) {
			PQclear(res);
			if (send_execute(c) < 0 || conn_flush(c) < 0) {
				conn_failed(c, PQerrorMessage(c->pq));
				return;
			}
			continue;
		}
		if (c->exec_name && (c->preparing || plan_changed(res))) { /* forget the name: prepare afresh */
			for (int i = 0; i < STMT_CACHE; i++)
				if (c->cache[i].sql && c->exec_name == c->cache[i].name) {
					free(c->cache[i].sql);
					c->cache[i].sql = NULL;
				}
		}
		if (!res) {
			conn_failed(c, PQerrorMessage(c->pq));
			return;
		}
		finish_command(c, res, NULL);
		return;
	}
	if (PQstatus(c->pq) == CONNECTION_BAD)
		conn_failed(c, PQerrorMessage(c->pq));
}

static void connect_step(struct pg_conn *c);
static void connect_failed(struct pg_conn *c);

static void conn_event(evutil_socket_t fd, short what, void *arg)
{
	struct pg_conn *c = arg;
	(void)fd;
	if (c->state == CONN_CONNECTING) {
		if (what & EV_TIMEOUT) {
			snprintf(c->pool->last_error, sizeof c->pool->last_error,
			         "cannot connect to the database: no answer in %d s", CONNECT_TIMEOUT_S);
			connect_failed(c);
			return;
		}
		connect_step(c);
		return;
	}
	if (c->state != CONN_BUSY) { /* nothing in flight: a notice, or the server closing */
		if (PQconsumeInput(c->pq) && PQstatus(c->pq) != CONNECTION_BAD)
			return;
		if (c->state == CONN_FREE) { /* ended while idle (terminated, idle timeout, failover): not handed out */
			struct pg_conn **f = &c->pool->free_list;
			while (*f && *f != c)
				f = &(*f)->next_free;
			if (*f)
				*f = c->next_free;
			log_info(c->pool->log, NULL, "an idle database connection was closed by the server");
			conn_close(c);
			return;
		}
		event_del(c->ev);
		return;
	}
	if ((what & EV_WRITE) && conn_flush(c) < 0) {
		conn_failed(c, PQerrorMessage(c->pq));
		return;
	}
	if (what & EV_READ)
		conn_input(c);
}

/* ---- opening connections ---- */

/* The server's notices ("relation already exists, skipping") go to the log, not to stderr. */
static void on_notice(void *arg, const char *message)
{
	struct pg_pool *p = arg;
	size_t n = strlen(message);
	while (n && message[n - 1] == '\n')
		n--;
	log_debug(p->log, NULL, "database: %.*s", (int)n, message);
}

static PGconn *start_connect(struct pg_pool *p, int blocking)
{
	const char *keys[] = { "dbname", "options", "fallback_application_name", "password", NULL };
	const char *vals[] = { p->conninfo, p->options, "paygate", p->password, NULL };
	if (!p->password)
		keys[3] = NULL;
	PGconn *pq = blocking ? PQconnectdbParams(keys, vals, 1) : PQconnectStartParams(keys, vals, 1);
	if (pq)
		PQsetNoticeProcessor(pq, on_notice, p);
	return pq;
}

static void connect_failed(struct pg_conn *c)
{
	struct pg_pool *p = c->pool;
	char msg[200];
	copy_message(msg, sizeof msg, PQerrorMessage(c->pq));
	if (*msg)
		snprintf(p->last_error, sizeof p->last_error, "cannot connect to the database: %s", msg);
	log_warn(p->log, NULL, "%s", p->last_error);
	conn_close(c);
	/* Whoever waits for a connection hears it from the loop: requests fail fast (503) rather than hang. */
	if (p->waiters.next != &p->waiters)
		event_active(p->hand_ev, EV_TIMEOUT, 0);
}

static void connect_step(struct pg_conn *c)
{
	switch (PQconnectPoll(c->pq)) {
	case PGRES_POLLING_READING:
		if (conn_watch(c, EV_READ) < 0)
			connect_failed(c);
		return;
	case PGRES_POLLING_WRITING:
		if (conn_watch(c, EV_WRITE) < 0)
			connect_failed(c);
		return;
	case PGRES_POLLING_OK:
		if (PQsetnonblocking(c->pq, 1) != 0 || conn_watch(c, EV_READ) < 0) {
			connect_failed(c);
			return;
		}
		conn_free(c);
		return;
	default:
		connect_failed(c);
		return;
	}
}

static struct pg_conn *conn_new(struct pg_pool *p, PGconn *pq)
{
	struct pg_conn *c = calloc(1, sizeof *c);
	if (!c) {
		PQfinish(pq);
		return NULL;
	}
	c->pool = p;
	c->pq = pq;
	c->next = &p->all;
	c->prev = p->all.prev;
	p->all.prev->next = c;
	p->all.prev = c;
	p->open++;
	return c;
}

/* Open one more connection without blocking; it joins the pool when ready. */
static void open_one(struct pg_pool *p)
{
	PGconn *pq = start_connect(p, 0);
	struct pg_conn *c;
	if (!pq || PQstatus(pq) == CONNECTION_BAD) {
		snprintf(p->last_error, sizeof p->last_error, "cannot connect to the database: %s",
		         pq ? PQerrorMessage(pq) : "out of memory");
		PQfinish(pq);
		return;
	}
	if (!(c = conn_new(p, pq)))
		return;
	c->state = CONN_CONNECTING;
	connect_step(c);
}

/* Hand free connections to waiters, opening more while under size. */
static void hand_out(struct pg_pool *p)
{
	while (p->waiters.next != &p->waiters) {
		struct pg_conn *c = pg_try_acquire(p);
		if (!c)
			break;
		struct pg_waiter *w = p->waiters.next;
		pg_cancel_acquire(w);
		w->fn(w, c, NULL);
	}
}

/* Fail every waiter: no connection is open and none could be opened (the database is down). */
static void fail_waiters(struct pg_pool *p)
{
	while (p->waiters.next != &p->waiters) {
		struct pg_waiter *w = p->waiters.next;
		pg_cancel_acquire(w);
		w->fn(w, NULL, p->last_error[0] ? p->last_error : "cannot connect to the database");
	}
}

static void on_hand(evutil_socket_t fd, short what, void *arg)
{
	struct pg_pool *p = arg;
	(void)fd;
	(void)what;
	hand_out(p);
	if (p->open == 0)
		fail_waiters(p); /* nothing is open or opening: fail fast rather than hang */
}

/* A pool whose sessions start with options; its connections open when needed (none now). */
static struct pg_pool *pool_alloc(struct event_base *base, struct log *log, const char *conninfo, const char *password,
                                  int size, const char *options)
{
	struct pg_pool *p = calloc(1, sizeof *p);
	if (!p)
		return NULL;
	p->base = base;
	p->log = log;
	p->size = size > 0 ? size : 1;
	snprintf(p->options, sizeof p->options, "%s", options);
	p->all.next = p->all.prev = &p->all;
	p->waiters.next = p->waiters.prev = &p->waiters;
	if (!(p->conninfo = strdup(conninfo)) || (password && !(p->password = strdup(password))) ||
	    !(p->hand_ev = event_new(base, -1, 0, on_hand, p))) {
		pg_pool_free(p);
		return NULL;
	}
	return p;
}

struct pg_pool *pg_pool_new(struct event_base *base, struct log *log, const char *conninfo, const char *password,
                            int size, int statement_timeout_ms, char *err, size_t errlen)
{
	char options[256], own_options[256];
	snprintf(options, sizeof options, SESSION_OPTIONS, statement_timeout_ms, statement_timeout_ms);
	snprintf(own_options, sizeof own_options, OWN_OPTIONS, statement_timeout_ms, statement_timeout_ms);
	struct pg_pool *p = pool_alloc(base, log, conninfo, password, size, options);
	if (!p || !(p->own = pool_alloc(base, log, conninfo, password, OWN_POOL_SIZE, own_options))) {
		snprintf(err, errlen, "out of memory");
		pg_pool_free(p);
		return NULL;
	}
	PGconn *pq = pg_pool_connect_blocking(p, err, errlen);
	struct pg_conn *c = pq ? conn_new(p, pq) : NULL;
	if (!c || PQsetnonblocking(pq, 1) != 0) {
		if (pq && !c)
			snprintf(err, errlen, "out of memory");
		pg_pool_free(p);
		return NULL;
	}
	if (conn_watch(c, EV_READ) < 0) {
		snprintf(err, errlen, "cannot watch the database connection");
		pg_pool_free(p);
		return NULL;
	}
	conn_free(c);
	return p;
}

static void query_forget(struct pg_waiter *w, struct pg_conn *c);

void pg_pool_free(struct pg_pool *p)
{
	if (!p)
		return;
	pg_pool_free(p->own);
	/* The loop has stopped: commands of their own still waiting or in flight are forgotten, unanswered. */
	while (p->waiters.next && p->waiters.next != &p->waiters) {
		struct pg_waiter *w = p->waiters.next;
		pg_cancel_acquire(w);
		query_forget(w, NULL);
	}
	while (p->all.next && p->all.next != &p->all) {
		struct pg_conn *c = p->all.next;
		if (c->state == CONN_BUSY)
			query_forget(NULL, c);
		conn_close(c);
	}
	if (p->hand_ev)
		event_free(p->hand_ev);
	if (p->password)
		memset(p->password, 0, strlen(p->password));
	free(p->password);
	free(p->conninfo);
	free(p);
}

PGconn *pg_pool_connect_blocking(struct pg_pool *p, char *err, size_t errlen)
{
	PGconn *pq = start_connect(p, 1);
	if (!pq || PQstatus(pq) != CONNECTION_OK) {
		char msg[256];
		copy_message(msg, sizeof msg, pq ? PQerrorMessage(pq) : "out of memory");
		snprintf(err, errlen, "cannot connect to the database: %s", msg);
		PQfinish(pq);
		return NULL;
	}
	return pq;
}

int pg_pool_open_count(const struct pg_pool *p)
{
	return p->open + (p->own ? p->own->open : 0);
}

/* ---- holding connections ---- */

struct pg_conn *pg_try_acquire(struct pg_pool *p)
{
	while (p->free_list) {
		struct pg_conn *c = p->free_list;
		p->free_list = c->next_free;
		c->next_free = NULL;
		if (PQstatus(c->pq) != CONNECTION_OK) { /* it died while idle: drop it */
			conn_close(c);
			continue;
		}
		c->state = CONN_HELD;
		if (event_add(c->ev, NULL) < 0) {
			conn_close(c);
			continue;
		}
		return c;
	}
	int connecting = 0;
	for (struct pg_conn *c = p->all.next; c != &p->all; c = c->next)
		connecting += c->state == CONN_CONNECTING;
	if (p->open < p->size && connecting <= 0)
		open_one(p); /* it joins the pool, and the waiters, when it is ready */
	return NULL;
}

void pg_acquire(struct pg_pool *p, struct pg_waiter *w)
{
	assert(!w->next);
	w->next = &p->waiters;
	w->prev = p->waiters.prev;
	p->waiters.prev->next = w;
	p->waiters.prev = w;
	if (!p->free_list)
		pg_try_acquire(p);        /* open one more, if the pool may grow */
	if (p->free_list || p->open == 0) /* hand it out, or fail (nothing opens), from the loop */
		event_active(p->hand_ev, EV_TIMEOUT, 0);
}

void pg_cancel_acquire(struct pg_waiter *w)
{
	if (!w->next)
		return;
	w->prev->next = w->next;
	w->next->prev = w->prev;
	w->next = w->prev = NULL;
}

void pg_release(struct pg_conn *c)
{
	if (!c)
		return;
	if (c->state == CONN_BUSY) { /* the result is still coming: throw it away, then release */
		c->dropped = 1;
		return;
	}
	assert(c->state == CONN_HELD);
	if (PQstatus(c->pq) != CONNECTION_OK || PQtransactionStatus(c->pq) != PQTRANS_IDLE) {
		struct pg_pool *p = c->pool;
		conn_close(c); /* the server rolls back what it left open */
		if (p->waiters.next != &p->waiters)
			pg_try_acquire(p); /* a replacement for the waiters */
		return;
	}
	conn_free(c);
}

void pg_drop(struct pg_conn *c)
{
	if (c && c->state == CONN_BUSY)
		c->dropped = 1; /* given back by finish_command once answered */
	else
		pg_release(c); /* answered already (its holder had not read it yet): now */
}

/* ---- commands ---- */

static unsigned hash_sql(const char *s)
{
	unsigned h = 2166136261u;
	for (; *s; s++)
		h = (h ^ (unsigned char)*s) * 16777619u;
	return h;
}

static int begin_command(struct pg_conn *c, pg_result_fn fn, void *arg, char *err, size_t errlen)
{
	assert(c->state == CONN_HELD);
	if (PQstatus(c->pq) != CONNECTION_OK) {
		snprintf(err, errlen, "the connection to the database was lost");
		return -1;
	}
	c->fn = fn;
	c->arg = arg;
	c->dropped = 0;
	c->state = CONN_BUSY;
	return 0;
}

static int sent(struct pg_conn *c, int ok, char *err, size_t errlen)
{
	if (!ok || conn_flush(c) < 0) {
		snprintf(err, errlen, "cannot send to the database: %s", PQerrorMessage(c->pq));
		c->state = CONN_HELD;
		c->fn = NULL;
		free_exec(c);
		return -1;
	}
	return 0;
}

int pg_send_simple(struct pg_conn *c, const char *sql, pg_result_fn fn, void *arg, char *err, size_t errlen)
{
	if (begin_command(c, fn, arg, err, errlen) < 0)
		return -1;
	return sent(c, PQsendQuery(c->pq, sql), err, errlen);
}

int pg_send(struct pg_conn *c, const char *sql, int n, const char *const *values, pg_result_fn fn, void *arg, char *err,
            size_t errlen)
{
	if (n < 0 || n > MAX_PARAMS) {
		snprintf(err, errlen, "too many parameters");
		return -1;
	}
	struct cached_stmt *slot = &c->cache[hash_sql(sql) % STMT_CACHE];
	if (begin_command(c, fn, arg, err, errlen) < 0)
		return -1;
	if (slot->sql && strcmp(slot->sql, sql) == 0) {
		c->exec_name = slot->name;
		c->exec_n = 0;
		return sent(c, PQsendQueryPrepared(c->pq, slot->name, n, values, NULL, NULL, 0), err, errlen);
	}
	/* First use on this connection: PREPARE (translated), then EXECUTE once it is answered. */
	size_t cap = strlen(sql) * 2 + 16;
	char *text = malloc(cap), *copy = strdup(sql);
	char **vals = n ? calloc((size_t)n, sizeof *vals) : NULL;
	int ok = text && copy && (!n || vals);
	for (int i = 0; ok && i < n; i++)
		if (values[i] && !(vals[i] = strdup(values[i])))
			ok = 0;
	if (ok && pg_translate(sql, text, cap) < 0)
		ok = 0;
	if (!ok) {
		for (int i = 0; vals && i < n; i++)
			free(vals[i]);
		free(vals);
		free(text);
		free(copy);
		c->state = CONN_HELD;
		c->fn = NULL;
		snprintf(err, errlen, "out of memory");
		return -1;
	}
	/* A statement evicted from the slot stays prepared on the server; its name is not reused. */
	free(slot->sql);
	slot->sql = copy;
	snprintf(slot->name, sizeof slot->name, "pg%u", c->next_name++);
	c->preparing = 1;
	c->exec_name = slot->name;
	c->exec_n = n;
	c->exec_values = vals;
	int rc = sent(c, PQsendPrepare(c->pq, slot->name, text, 0, NULL), err, errlen);
	free(text);
	if (rc < 0) {
		free(slot->sql);
		slot->sql = NULL;
	}
	return rc;
}

/* ---- a command of its own: a connection from the pool for one statement ---- */

struct pg_query {
	struct pg_waiter w;
	struct pg_pool *pool;
	struct pg_conn *conn;
	char *sql;
	int n;
	char **vals;
	pg_result_fn fn;
	void *arg;
};

static void query_free(struct pg_query *q)
{
	for (int i = 0; i < q->n; i++)
		free(q->vals[i]);
	free(q->vals);
	free(q->sql);
	free(q);
}

static void query_answered(void *arg, PGresult *res, const char *err)
{
	struct pg_query *q = arg;
	pg_release(q->conn);
	q->fn(q->arg, res, err);
	query_free(q);
}

static void query_conn(struct pg_waiter *w, struct pg_conn *c, const char *err)
{
	struct pg_query *q = (struct pg_query *)(void *)w;
	char e2[300];
	if (!c) {
		q->fn(q->arg, NULL, err);
		query_free(q);
		return;
	}
	q->conn = c;
	if (pg_send(c, q->sql, q->n, (const char *const *)q->vals, query_answered, q, e2, sizeof e2) < 0) {
		pg_release(c);
		q->fn(q->arg, NULL, e2);
		query_free(q);
	}
}

/* At pool_free: free the command of its own that w waits, or c runs (others' waits and commands are theirs). */
static void query_forget(struct pg_waiter *w, struct pg_conn *c)
{
	if (w && w->fn == query_conn)
		query_free((struct pg_query *)(void *)w);
	if (c && c->fn == query_answered)
		query_free(c->arg);
}

int pg_pool_query(struct pg_pool *p, const char *sql, int n, const char *const *values, pg_result_fn fn, void *arg)
{
	struct pg_query *q = calloc(1, sizeof *q);
	if (!q || !(q->sql = strdup(sql)) || (n && !(q->vals = calloc((size_t)n, sizeof *q->vals)))) {
		if (q)
			free(q->sql);
		free(q);
		return -1;
	}
	q->n = n;
	for (int i = 0; i < n; i++)
		if (values[i] && !(q->vals[i] = strdup(values[i]))) {
			query_free(q);
			return -1;
		}
	q->pool = p->own ? p->own : p;
	q->fn = fn;
	q->arg = arg;
	q->w.fn = query_conn;
	pg_acquire(q->pool, &q->w); /* answered from the loop, even when a connection is free now */
	return 0;
}

/* ---- LISTEN: a session of its own that hears NOTIFY ---- */

#define LISTEN_RETRY_S 2

struct pg_listener {
	struct pg_pool *pool;
	PGconn *pq;
	struct event *ev, *retry;
	char *channel;
	void (*fn)(void *arg);
	void *arg;
};

static void listen_lost(struct pg_listener *l);

static void listen_event(evutil_socket_t fd, short what, void *arg)
{
	struct pg_listener *l = arg;
	int heard = 0;
	(void)fd;
	(void)what;
	if (!PQconsumeInput(l->pq)) {
		listen_lost(l);
		return;
	}
	PGnotify *n;
	while ((n = PQnotifies(l->pq))) {
		heard = 1;
		PQfreemem(n);
	}
	PGresult *r;
	while (!PQisBusy(l->pq) && (r = PQgetResult(l->pq))) /* the LISTEN's own answer */
		PQclear(r);
	if (heard)
		l->fn(l->arg);
}

static int listen_watch(struct pg_listener *l)
{
	if (l->ev)
		event_free(l->ev);
	l->ev = event_new(l->pool->base, PQsocket(l->pq), EV_READ | EV_PERSIST, listen_event, l);
	return l->ev && event_add(l->ev, NULL) == 0 ? 0 : -1;
}

/* Connect (PQconnectPoll on the retry timer's turns) and LISTEN again; whoever listens hears once, to catch up. */
static void listen_connect(evutil_socket_t fd, short what, void *arg)
{
	struct pg_listener *l = arg;
	static const struct timeval again = { LISTEN_RETRY_S, 0 }, soon = { 0, 20000 };
	(void)fd;
	(void)what;
	if (!l->pq) {
		l->pq = start_connect(l->pool, 0);
		if (!l->pq || PQstatus(l->pq) == CONNECTION_BAD) {
			PQfinish(l->pq);
			l->pq = NULL;
			evtimer_add(l->retry, &again);
			return;
		}
	}
	switch (PQconnectPoll(l->pq)) {
	case PGRES_POLLING_OK: {
		char sql[128];
		snprintf(sql, sizeof sql, "LISTEN %s", l->channel);
		if (PQsetnonblocking(l->pq, 1) == 0 && PQsendQuery(l->pq, sql) && PQflush(l->pq) == 0 &&
		    listen_watch(l) == 0) {
			log_info(l->pool->log, NULL, "listening for %s again", l->channel);
			l->fn(l->arg); /* what was notified while deaf */
			return;
		}
		listen_lost(l);
		return;
	}
	case PGRES_POLLING_FAILED:
		PQfinish(l->pq);
		l->pq = NULL;
		evtimer_add(l->retry, &again);
		return;
	default: /* reading or writing: look again shortly (a connect takes a few turns) */
		evtimer_add(l->retry, &soon);
		return;
	}
}

static void listen_lost(struct pg_listener *l)
{
	static const struct timeval again = { LISTEN_RETRY_S, 0 };
	log_warn(l->pool->log, NULL, "the database connection that listens for %s was lost: %s; reconnecting",
	         l->channel, PQerrorMessage(l->pq));
	if (l->ev)
		event_free(l->ev);
	l->ev = NULL;
	PQfinish(l->pq);
	l->pq = NULL;
	evtimer_add(l->retry, &again);
}

struct pg_listener *pg_listen(struct pg_pool *p, const char *channel, void (*fn)(void *arg), void *arg, char *err,
                              size_t errlen)
{
	struct pg_listener *l = calloc(1, sizeof *l);
	char sql[128], buf[300];
	if (!l || !(l->channel = strdup(channel)) || !(l->retry = evtimer_new(p->base, listen_connect, l))) {
		snprintf(err, errlen, "out of memory");
		pg_listener_free(l);
		return NULL;
	}
	l->pool = p;
	l->fn = fn;
	l->arg = arg;
	if (!(l->pq = pg_pool_connect_blocking(p, err, errlen))) {
		pg_listener_free(l);
		return NULL;
	}
	snprintf(sql, sizeof sql, "LISTEN %s", channel);
	PGresult *r = PQexec(l->pq, sql);
	int ok = PQresultStatus(r) == PGRES_COMMAND_OK;
	if (!ok)
		snprintf(err, errlen, "%s: %s", sql, pg_result_error(r, buf, sizeof buf));
	PQclear(r);
	if (!ok || PQsetnonblocking(l->pq, 1) != 0 || listen_watch(l) < 0) {
		if (ok)
			snprintf(err, errlen, "cannot watch the listening connection");
		pg_listener_free(l);
		return NULL;
	}
	return l;
}

void pg_listener_free(struct pg_listener *l)
{
	if (!l)
		return;
	if (l->ev)
		event_free(l->ev);
	if (l->retry)
		event_free(l->retry);
	PQfinish(l->pq);
	free(l->channel);
	free(l);
}

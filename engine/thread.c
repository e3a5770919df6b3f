/* thread.c — own-thread mode: the engine's loop on a thread of its own, and the two queues to the host's thread. */
#include "thread.h"

#include <assert.h>
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <sys/eventfd.h>

#include <event2/buffer.h>
#include <event2/event.h>

#include "engine.h"
#include "host.h"

/*
** Two threads, two queues, one mutex:
**
**   host's thread ──inbox──► engine's thread    calls, events, host-function replies, synchronous runs;
**                  wake_fd   (an eventfd the engine's loop watches)
**   engine's thread ──outbox──► host's thread   call results, host-function calls, shutdown notices;
**                  host_fd   (an eventfd the host polls; thread_dispatch empties the outbox)
**
** Nothing else is shared: the engine's state is touched only on its thread
** (and, before thread_start and after thread_stop, by the thread that owns
** it), the host's callbacks and host functions run only in thread_dispatch.
** A queue's eventfd is written only when its queue goes from empty to
** non-empty; the reader reads the eventfd before it takes the queue, so no
** message is ever left without a wake-up.
*/

enum msg_kind {
	MSG_CALL,   /* in: paygate_call */
	MSG_EMIT,   /* in: paygate_emit */
	MSG_REPLY,  /* in: a host function's answer */
	MSG_RUN,    /* in: run fn(arg) and signal done */
	MSG_RESULT, /* out: a call's result for cb */
	MSG_HOSTFN, /* out: run a host function */
	MSG_NOTIFY, /* out: done(arg) */
};

struct msg {
	enum msg_kind kind;
	struct thread *t;
	char *name;
	char *json; /* argument (CALL, EMIT, HOSTFN), result (RESULT) or reply (REPLY) */
	size_t len; /* REPLY */
	int status; /* RESULT status, REPLY rc */
	host_call_cb cb;
	void *arg;
	host_fn fn; /* HOSTFN */
	void *fn_arg;
	unsigned long long id;  /* HOSTFN, REPLY */
	void (*run)(void *arg); /* RUN, NOTIFY */
	int done;               /* RUN */
	struct msg *next;
};

struct queue {
	struct msg *head, *tail;
};

struct thread {
	struct engine *e;
	pthread_t tid;
	int started, stopped;
	pthread_mutex_t mu;
	pthread_cond_t cv;
	struct queue in, out; /* under mu */
	int stop;             /* under mu: the loop is to end */
	int closing;          /* under mu: no more calls taken */
	int no_events;        /* under mu: shutting down, events are refused */
	int wake_fd, host_fd;
	struct event *wake_ev;
	int *alive; /* set while thread_dispatch runs: cleared when a callback frees us */
};

static void msg_free(struct msg *m)
{
	if (!m)
		return;
	free(m->name);
	free(m->json);
	free(m);
}

/* Append m; returns 1 when the queue was empty (its reader needs a wake-up). Under t->mu. */
static int push(struct queue *q, struct msg *m)
{
	int was_empty = !q->head;
	m->next = NULL;
	if (q->tail)
		q->tail->next = m;
	else
		q->head = m;
	q->tail = m;
	return was_empty;
}

static struct msg *take_all(struct queue *q)
{
	struct msg *m = q->head;
	q->head = q->tail = NULL;
	return m;
}

static void poke(int fd)
{
	uint64_t one = 1;
	ssize_t n;
	do
		n = write(fd, &one, sizeof one);
	while (n < 0 && errno == EINTR);
	/* EAGAIN: the counter is full, so the reader is woken anyway */
}

static void drain_fd(int fd)
{
	uint64_t v;
	ssize_t n;
	do
		n = read(fd, &v, sizeof v);
	while (n < 0 && errno == EINTR);
}

/* Queue m for the engine's thread: 0, or -1 when the engine takes no more calls (m is then the caller's). */
static int post_in(struct thread *t, struct msg *m, int even_closing)
{
	int wake;
	pthread_mutex_lock(&t->mu);
	if (t->closing && !even_closing) {
		pthread_mutex_unlock(&t->mu);
		return -1;
	}
	wake = push(&t->in, m);
	pthread_mutex_unlock(&t->mu);
	if (wake)
		poke(t->wake_fd);
	return 0;
}

static void post_out(struct thread *t, struct msg *m)
{
	int wake;
	pthread_mutex_lock(&t->mu);
	wake = push(&t->out, m);
	pthread_mutex_unlock(&t->mu);
	if (wake)
		poke(t->host_fd);
}

/* ---- the engine's side ---- */

/* A call's result, on the engine's thread (or inside paygate_free): queued for the host. */
static void relay_result(void *arg, int status, const char *json)
{
	struct msg *m = arg;
	free(m->json);
	m->json = strdup(json);
	m->kind = MSG_RESULT;
	m->status = json && m->json ? status : 503;
	post_out(m->t, m);
}

static int forward(void *arg, host_fn fn, void *fn_arg, const char *json, unsigned long long id)
{
	struct thread *t = arg;
	struct msg *m = calloc(1, sizeof *m);
	if (!m || !(m->json = strdup(json ? json : "null"))) {
		free(m);
		return -1;
	}
	m->kind = MSG_HOSTFN;
	m->t = t;
	m->fn = fn;
	m->fn_arg = fn_arg;
	m->id = id;
	post_out(t, m);
	return 0;
}

int thread_notify(struct thread *t, void (*done)(void *arg), void *arg)
{
	struct msg *m = calloc(1, sizeof *m);
	if (!m)
		return -1;
	m->kind = MSG_NOTIFY;
	m->t = t;
	m->run = done;
	m->arg = arg;
	post_out(t, m);
	return 0;
}

static void handle_in(struct thread *t, struct msg *m)
{
	struct engine *e = t->e;
	switch (m->kind) {
	case MSG_CALL:
		if (host_call(e, m->name, m->json, relay_result, m) < 0)
			relay_result(m, 503,
			             "{\"error\":\"shutting_down\",\"message\":\"the engine takes no more calls\"}");
		break;
	case MSG_EMIT:
		if (host_emit(e, m->name, m->json) < 0)
			log_warn(&e->log, NULL, "event %s dropped: the engine is shutting down", m->name);
		msg_free(m);
		break;
	case MSG_REPLY:
		host_forward_done(e, m->id, m->status, m->json ? m->json : "", m->json ? m->len : 0);
		msg_free(m);
		break;
	case MSG_RUN:
		m->run(m->arg);
		pthread_mutex_lock(&t->mu);
		m->done = 1; /* m lives on the waiting thread's stack */
		pthread_cond_broadcast(&t->cv);
		pthread_mutex_unlock(&t->mu);
		break;
	default:
		assert(!"an outbound message in the inbox");
	}
}

static void on_wake(evutil_socket_t fd, short what, void *arg)
{
	struct thread *t = arg;
	struct msg *m;
	int stop;
	(void)fd;
	(void)what;
	drain_fd(t->wake_fd);
	pthread_mutex_lock(&t->mu);
	m = take_all(&t->in);
	stop = t->stop;
	pthread_mutex_unlock(&t->mu);
	while (m) {
		struct msg *next = m->next;
		handle_in(t, m);
		m = next;
	}
	if (stop)
		event_base_loopbreak(t->e->base);
}

static void *thread_main(void *arg)
{
	struct thread *t = arg;
	event_base_loop(t->e->base, EVLOOP_NO_EXIT_ON_EMPTY);
	return NULL;
}

struct thread *thread_start(struct engine *e, char *err, size_t errlen)
{
	struct thread *t = calloc(1, sizeof *t);
	sigset_t all, old;
	int rc;

	if (!t) {
		snprintf(err, errlen, "out of memory");
		return NULL;
	}
	t->e = e;
	t->wake_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
	t->host_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
	pthread_mutex_init(&t->mu, NULL);
	pthread_cond_init(&t->cv, NULL);
	if (t->wake_fd < 0 || t->host_fd < 0) {
		snprintf(err, errlen, "eventfd: %s", strerror(errno));
		goto fail;
	}
	if (!(t->wake_ev = event_new(e->base, t->wake_fd, EV_READ | EV_PERSIST, on_wake, t)) ||
	    event_add(t->wake_ev, NULL) < 0) {
		snprintf(err, errlen, "out of memory");
		goto fail;
	}
	host_set_forward(e, forward, t);
	/* The engine's thread takes no signals: they stay the host's. */
	sigfillset(&all);
	pthread_sigmask(SIG_SETMASK, &all, &old);
	rc = pthread_create(&t->tid, NULL, thread_main, t);
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	if (rc != 0) {
		host_set_forward(e, NULL, NULL);
		snprintf(err, errlen, "cannot start the engine's thread: %s", strerror(rc));
		goto fail;
	}
	t->started = 1;
	return t;
fail:
	thread_free(t);
	return NULL;
}

void thread_stop(struct thread *t)
{
	if (!t || !t->started || t->stopped)
		return;
	pthread_mutex_lock(&t->mu);
	t->stop = 1;
	t->closing = 1;
	pthread_mutex_unlock(&t->mu);
	poke(t->wake_fd);
	pthread_join(t->tid, NULL);
	t->stopped = 1;
	/* The engine is the caller's again: host functions can no longer wait for a dispatch. */
	host_set_forward(t->e, NULL, NULL);
	event_free(t->wake_ev);
	t->wake_ev = NULL;
}

int thread_fd(const struct thread *t)
{
	return t->host_fd;
}

/* On the host's thread: one outbound message. */
static void handle_out(struct thread *t, struct msg *m)
{
	switch (m->kind) {
	case MSG_RESULT:
		m->cb(m->arg, m->status,
		      m->json ? m->json : "{\"error\":\"out_of_memory\",\"message\":\"no memory for the result\"}");
		msg_free(m);
		break;
	case MSG_NOTIFY:
		m->run(m->arg);
		msg_free(m);
		break;
	case MSG_HOSTFN: {
		struct evbuffer *reply = evbuffer_new();
		int rc = -1;
		if (reply)
			rc = m->fn(m->fn_arg, m->json, reply);
		size_t n = reply ? evbuffer_get_length(reply) : 0;
		char *text = malloc(n + 1);
		if (text) {
			if (n)
				evbuffer_copyout(reply, text, n);
			text[n] = '\0';
		}
		if (reply)
			evbuffer_free(reply);
		free(m->json);
		m->json = text;
		m->len = text ? n : 0;
		m->status = text && reply ? rc : -1;
		m->kind = MSG_REPLY;
		if (post_in(t, m, 1) < 0)
			msg_free(m);
		break;
	}
	default:
		assert(!"an inbound message in the outbox");
	}
}

/* The first message waiting for the host, or NULL. */
static struct msg *take_one(struct thread *t)
{
	struct msg *m;
	pthread_mutex_lock(&t->mu);
	m = t->out.head;
	if (m) {
		t->out.head = m->next;
		if (!t->out.head)
			t->out.tail = NULL;
	}
	pthread_mutex_unlock(&t->mu);
	return m;
}

/*
** One message at a time, and only those queued when we started (a callback
** that calls paygate_call does not keep us here forever): a callback may
** free the engine (paygate_free), and then what is still queued is
** thread_free's to deliver, and t is gone (alive tells us).
*/
int thread_dispatch(struct thread *t)
{
	struct msg *m, *last;
	int n = 0, alive = 1, more;
	if (t->alive) /* called from inside a callback: the outer dispatch goes on */
		return 0;
	drain_fd(t->host_fd);
	pthread_mutex_lock(&t->mu);
	last = t->out.tail;
	pthread_mutex_unlock(&t->mu);
	t->alive = &alive;
	while (last && (m = take_one(t))) {
		int end = m == last;
		handle_out(t, m);
		n++;
		if (!alive)
			return n;
		if (end)
			break;
	}
	t->alive = NULL;
	pthread_mutex_lock(&t->mu);
	more = t->out.head != NULL;
	pthread_mutex_unlock(&t->mu);
	if (more) /* queued meanwhile, behind others: no one poked for them */
		poke(t->host_fd);
	return n;
}

/* ---- the host's side ---- */

static struct msg *new_msg(struct thread *t, enum msg_kind kind, const char *name, const char *json)
{
	struct msg *m = calloc(1, sizeof *m);
	if (!m)
		return NULL;
	m->kind = kind;
	m->t = t;
	m->name = strdup(name ? name : "");
	m->json = strdup(json && *json ? json : "{}");
	if (!m->name || !m->json) {
		msg_free(m);
		return NULL;
	}
	return m;
}

int thread_call(struct thread *t, const char *name, const char *json, host_call_cb cb, void *arg)
{
	struct msg *m;
	if (!cb || !(m = new_msg(t, MSG_CALL, name, json)))
		return -1;
	m->cb = cb;
	m->arg = arg;
	if (post_in(t, m, 0) < 0) {
		msg_free(m);
		return -1;
	}
	return 0;
}

void thread_refuse_events(struct thread *t)
{
	pthread_mutex_lock(&t->mu);
	t->no_events = 1;
	pthread_mutex_unlock(&t->mu);
}

int thread_emit(struct thread *t, const char *event, const char *json)
{
	struct msg *m;
	int refused;
	pthread_mutex_lock(&t->mu);
	refused = t->no_events;
	pthread_mutex_unlock(&t->mu);
	if (refused || !event || !*event || !(m = new_msg(t, MSG_EMIT, event, json)))
		return -1;
	if (post_in(t, m, 0) < 0) {
		msg_free(m);
		return -1;
	}
	return 0;
}

void thread_run(struct thread *t, void (*fn)(void *arg), void *arg)
{
	struct msg m = { .kind = MSG_RUN, .t = t, .run = fn, .arg = arg };
	if (!t->started || t->stopped || pthread_equal(pthread_self(), t->tid)) {
		fn(arg);
		return;
	}
	pthread_mutex_lock(&t->mu);
	int wake = push(&t->in, &m);
	pthread_mutex_unlock(&t->mu);
	if (wake)
		poke(t->wake_fd);
	pthread_mutex_lock(&t->mu);
	while (!m.done)
		pthread_cond_wait(&t->cv, &t->mu);
	pthread_mutex_unlock(&t->mu);
}

void thread_free(struct thread *t)
{
	struct msg *m;
	if (!t)
		return;
	thread_stop(t);
	/* Calls that never reached the engine: 503, like the ones it cancelled. */
	pthread_mutex_lock(&t->mu);
	t->closing = 1;
	m = take_all(&t->in);
	pthread_mutex_unlock(&t->mu);
	while (m) {
		struct msg *next = m->next;
		if (m->kind == MSG_CALL)
			m->cb(m->arg, 503,
			      "{\"error\":\"cancelled\",\"message\":\"the engine was freed before the function ran\"}");
		if (m->kind != MSG_RUN)
			msg_free(m);
		m = next;
	}
	/* Results the engine produced, those of paygate_free included; host functions and notices are dropped. */
	pthread_mutex_lock(&t->mu);
	m = take_all(&t->out);
	pthread_mutex_unlock(&t->mu);
	while (m) {
		struct msg *next = m->next;
		if (m->kind == MSG_RESULT)
			m->cb(m->arg, m->status, m->json ? m->json : "{\"error\":\"cancelled\"}");
		msg_free(m);
		m = next;
	}
	if (t->alive)
		*t->alive = 0;
	if (t->wake_ev)
		event_free(t->wake_ev);
	if (t->wake_fd >= 0)
		close(t->wake_fd);
	if (t->host_fd >= 0)
		close(t->host_fd);
	pthread_cond_destroy(&t->cv);
	pthread_mutex_destroy(&t->mu);
	free(t);
}

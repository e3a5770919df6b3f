/* checkpoint.c — WAL checkpoints on a thread of their own, so the loop never copies pages or syncs the database. */
#include "checkpoint.h"

#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <sqlite3.h>

struct checkpointer {
	sqlite3 *db; /* the thread's own connection; used only by the thread once it runs */
	pthread_t thread;
	pthread_mutex_t mu;
	pthread_cond_t cv;
	int due, stop;             /* under mu */
	unsigned long ran, failed; /* under mu */
};

static void *run(void *arg)
{
	struct checkpointer *c = arg;
	pthread_mutex_lock(&c->mu);
	for (;;) {
		while (!c->due && !c->stop)
			pthread_cond_wait(&c->cv, &c->mu);
		if (c->stop)
			break;
		c->due = 0;
		pthread_mutex_unlock(&c->mu);
		int rc = sqlite3_wal_checkpoint_v2(c->db, NULL, SQLITE_CHECKPOINT_PASSIVE, NULL, NULL);
		pthread_mutex_lock(&c->mu);
		c->ran++;
		c->failed += rc != SQLITE_OK && rc != SQLITE_BUSY; /* busy: another checkpoint runs; next poke */
	}
	pthread_mutex_unlock(&c->mu);
	return NULL;
}

struct checkpointer *checkpointer_start(const char *path, char *err, size_t errlen)
{
	struct checkpointer *c = calloc(1, sizeof *c);
	char *msg = NULL;
	if (!c) {
		snprintf(err, errlen, "out of memory");
		return NULL;
	}
	if (sqlite3_open_v2(path, &c->db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOMUTEX, NULL) != SQLITE_OK ||
	    sqlite3_exec(c->db, "PRAGMA synchronous=FULL", NULL, NULL, &msg) != SQLITE_OK) {
		snprintf(err, errlen, "checkpointer: cannot open %s: %s", path,
		         msg     ? msg
		         : c->db ? sqlite3_errmsg(c->db)
		                 : "out of memory");
		sqlite3_free(msg);
		sqlite3_close(c->db);
		free(c);
		return NULL;
	}
	pthread_mutex_init(&c->mu, NULL);
	pthread_cond_init(&c->cv, NULL);
	/* The thread takes no signals: they are the loop's (or the host's) to handle. */
	sigset_t all, old;
	sigfillset(&all);
	pthread_sigmask(SIG_SETMASK, &all, &old);
	int rc = pthread_create(&c->thread, NULL, run, c);
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	if (rc != 0) {
		snprintf(err, errlen, "checkpointer: cannot start a thread: %s", strerror(rc));
		pthread_cond_destroy(&c->cv);
		pthread_mutex_destroy(&c->mu);
		sqlite3_close(c->db);
		free(c);
		return NULL;
	}
	return c;
}

void checkpointer_poke(struct checkpointer *c)
{
	pthread_mutex_lock(&c->mu);
	if (!c->due) {
		c->due = 1;
		pthread_cond_signal(&c->cv);
	}
	pthread_mutex_unlock(&c->mu);
}

void checkpointer_counts(struct checkpointer *c, unsigned long *ran, unsigned long *failed)
{
	pthread_mutex_lock(&c->mu);
	*ran = c->ran;
	*failed = c->failed;
	pthread_mutex_unlock(&c->mu);
}

void checkpointer_stop(struct checkpointer *c)
{
	if (!c)
		return;
	pthread_mutex_lock(&c->mu);
	c->stop = 1;
	pthread_cond_signal(&c->cv);
	pthread_mutex_unlock(&c->mu);
	pthread_join(c->thread, NULL);
	pthread_cond_destroy(&c->cv);
	pthread_mutex_destroy(&c->mu);
	sqlite3_close(c->db);
	free(c);
}

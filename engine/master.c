/* master.c — the daemon's master process: forks the workers, restarts the dead, ends the stuck (a watchdog). */
#include "master.h"

#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/signalfd.h>
#include <sys/wait.h>
#include <unistd.h>

#include "clock.h"
#include "log.h"

#define TICK_MS          100   /* the master looks at its workers this often */
#define YOUNG_MS         1000  /* a worker that dies younger than this is restarted after a pause */
#define STOP_GRACE_MS    15000 /* after SIGTERM: workers still alive then are killed */
#define START_TIMEOUT_MS 60000

struct worker_state {
	int killed;         /* by the watchdog: its death is expected */
	int64_t restart_at; /* 0: none pending */
};

struct run {
	struct master *m;
	struct worker_state *w;
	sigset_t old_mask;
	int sfd;
	int stopping;
	int64_t stop_deadline;
};

static void spawn(struct run *r, int i)
{
	struct master *m = r->m;
	struct board_slot *s = &m->board->slots[i];
	pid_t master_pid = getpid();
	int incarnation = s->incarnation;

	s->ready = 0;
	s->beat_ms = 0;
	s->running[0] = '\0';
	pid_t pid = fork();
	if (pid < 0) {
		log_error(m->log, NULL, "cannot start worker %d: %s; trying again in a second", i, strerror(errno));
		r->w[i].restart_at = clock_now_ms() + YOUNG_MS;
		return;
	}
	if (pid == 0) {
		close(r->sfd);
		sigprocmask(SIG_SETMASK, &r->old_mask, NULL);
		prctl(PR_SET_PDEATHSIG, SIGKILL); /* a worker never outlives its master (kill -9 included) */
		if (getppid() != master_pid)
			_exit(1);
		_exit(m->worker_main(m, i, incarnation));
	}
	s->pid = pid;
	s->incarnation = incarnation + 1;
	s->started_ms = clock_now_ms();
	r->w[i].killed = 0;
	r->w[i].restart_at = 0;
}

static int live_workers(const struct run *r)
{
	int n = 0;
	for (int i = 0; i < r->m->workers; i++)
		n += r->m->board->slots[i].pid != 0;
	return n;
}

static void signal_all(struct run *r, int sig, pid_t except)
{
	for (int i = 0; i < r->m->workers; i++) {
		pid_t pid = r->m->board->slots[i].pid;
		if (pid && pid != except)
			kill(pid, sig);
	}
}

static int slot_of(const struct run *r, pid_t pid)
{
	for (int i = 0; i < r->m->workers; i++)
		if (r->m->board->slots[i].pid == pid)
			return i;
	return -1;
}

/* Reap the workers that ended; schedule their restart unless we stop. Returns how many ended before serving. */
static int reap(struct run *r)
{
	struct master *m = r->m;
	int status, early = 0;
	pid_t pid;
	while ((pid = waitpid(-1, &status, WNOHANG)) > 0) {
		int i = slot_of(r, pid);
		if (i < 0)
			continue;
		struct board_slot *s = &m->board->slots[i];
		int64_t age = clock_now_ms() - s->started_ms;
		early += !s->ready;
		s->pid = 0;
		s->ready = 0;
		if (r->stopping)
			continue;
		char how[64];
		if (WIFSIGNALED(status))
			snprintf(how, sizeof how, "was killed by signal %d", WTERMSIG(status));
		else
			snprintf(how, sizeof how, "exited with status %d", WEXITSTATUS(status));
		if (!r->w[i].killed)
			log_error(m->log, NULL, "worker %d (pid %d) %s after %lld ms; restarting it", i, (int)pid, how,
			          (long long)age);
		s->restarts++;
		r->w[i].restart_at = clock_now_ms() + (age < YOUNG_MS ? YOUNG_MS : 0);
	}
	return early;
}

/* The watchdog: a worker whose loop has not turned for watchdog_ms is stuck; end it (it is restarted). */
static void watch(struct run *r, int64_t now)
{
	struct master *m = r->m;
	if (!m->watchdog_ms || r->stopping)
		return;
	for (int i = 0; i < m->workers; i++) {
		struct board_slot *s = &m->board->slots[i];
		if (!s->pid || !s->ready || r->w[i].killed || !s->beat_ms || now - s->beat_ms <= m->watchdog_ms)
			continue;
		char running[BOARD_RUNNING_BYTES];
		memcpy(running, s->running, sizeof running);
		running[sizeof running - 1] = '\0';
		log_error(m->log, NULL,
		          "watchdog: worker %d (pid %d) made no progress for %lld ms, running: %s; killing it (what it "
		          "committed is safe; its requests in flight are lost to their clients)",
		          i, (int)s->pid, (long long)(now - s->beat_ms), running[0] ? running : "(no script)");
		r->w[i].killed = 1;
		kill(s->pid, SIGKILL);
	}
}

/* Read the signals that arrived: reloads are passed on, stops start the stop. */
static void on_signals(struct run *r)
{
	struct signalfd_siginfo si;
	while (read(r->sfd, &si, sizeof si) == (ssize_t)sizeof si) {
		int sig = (int)si.ssi_signo;
		if (sig == SIGCHLD)
			continue; /* reaped below */
		if (sig == SIGHUP) {
			/* From a worker: it reloaded already, the others follow. From outside: everyone reloads. */
			signal_all(r, SIGHUP, slot_of(r, (pid_t)si.ssi_pid) >= 0 ? (pid_t)si.ssi_pid : 0);
			continue;
		}
		if (!r->stopping++) {
			log_info(r->m->log, NULL, "stopping: asking %d worker(s) to finish what they serve",
			         live_workers(r));
			r->stop_deadline = clock_now_ms() + STOP_GRACE_MS;
		}
		signal_all(r, sig, 0); /* a second Ctrl-C reaches them as a second one: stop now */
	}
}

static int wait_tick(struct run *r, int ms)
{
	struct pollfd p = { .fd = r->sfd, .events = POLLIN };
	int n = poll(&p, 1, ms);
	if (n > 0)
		on_signals(r);
	return n;
}

static int all_ready(const struct run *r)
{
	for (int i = 0; i < r->m->workers; i++)
		if (!r->m->board->slots[i].pid || !r->m->board->slots[i].ready)
			return 0;
	return 1;
}

/*
** Start every worker and wait until each serves: 0, or -1 when one could not start (the others are
** stopped). Worker 0 starts alone: it creates the database and applies the migrations, which SQLite
** does not always let a second connection wait for (setting WAL mode on a new file answers "locked"
** at once); then the others start together.
*/
static int start_all(struct run *r)
{
	int64_t deadline = clock_now_ms() + START_TIMEOUT_MS;
	spawn(r, 0);
	while (!all_ready(r)) {
		if (r->m->board->slots[0].ready)
			for (int i = 1; i < r->m->workers; i++)
				if (!r->m->board->slots[i].pid)
					spawn(r, i);
		wait_tick(r, 10);
		if (reap(r) > 0 || r->stopping || clock_now_ms() > deadline) { /* one died before it served */
			if (clock_now_ms() > deadline)
				log_error(r->m->log, NULL, "the workers did not start within %d s",
				          START_TIMEOUT_MS / 1000);
			r->stopping = 1;
			signal_all(r, SIGKILL, 0);
			while (live_workers(r) > 0 && wait_tick(r, 50) >= 0)
				reap(r);
			return -1;
		}
	}
	return 0;
}

int master_run(struct master *m)
{
	struct run r = { .m = m, .sfd = -1 };
	sigset_t set;
	int rc = 1;

	sigemptyset(&set);
	sigaddset(&set, SIGCHLD);
	sigaddset(&set, SIGHUP);
	sigaddset(&set, SIGINT);
	sigaddset(&set, SIGTERM);
	if (!(r.w = calloc((size_t)m->workers, sizeof *r.w)) || sigprocmask(SIG_BLOCK, &set, &r.old_mask) < 0 ||
	    (r.sfd = signalfd(-1, &set, SFD_NONBLOCK | SFD_CLOEXEC)) < 0) {
		fprintf(stderr, "%s: cannot set up the master: %s\n", m->name, strerror(errno));
		free(r.w);
		return 1;
	}
	if (start_all(&r) < 0)
		goto out;
	if (m->on_ready)
		m->on_ready(m);
	rc = 0;
	while (!r.stopping || live_workers(&r) > 0) {
		wait_tick(&r, TICK_MS);
		reap(&r);
		int64_t now = clock_now_ms();
		watch(&r, now);
		if (r.stopping && now > r.stop_deadline) {
			log_warn(m->log, NULL, "workers still running %d s after the stop: killing them",
			         STOP_GRACE_MS / 1000);
			signal_all(&r, SIGKILL, 0);
			r.stop_deadline = now + STOP_GRACE_MS;
		}
		for (int i = 0; i < m->workers && !r.stopping; i++)
			if (r.w[i].restart_at && now >= r.w[i].restart_at && !m->board->slots[i].pid)
				spawn(&r, i);
	}
out:
	close(r.sfd);
	sigprocmask(SIG_SETMASK, &r.old_mask, NULL);
	free(r.w);
	return rc;
}

/* master.h — the daemon's master process: forks the workers, restarts the dead, ends the stuck (a watchdog). */
#ifndef PAYGATE_MASTER_H
#define PAYGATE_MASTER_H

#include "board.h"

struct log;

struct master {
	const char *name;    /* for messages */
	int workers;         /* how many worker processes */
	int watchdog_ms;     /* a worker whose heartbeat is older than this is killed; 0: never */
	struct board *board; /* one slot per worker, shared with them */
	struct log *log;
	/* Run worker `index` in the forked child (its incarnation-th start in this run); returns its exit status. */
	int (*worker_main)(struct master *m, int index, int incarnation);
	/* All workers serve: called once (the daemon prints where it listens). */
	void (*on_ready)(struct master *m);
	void *arg;
};

/*
** Fork the workers and wait until each serves; if one fails to start, stop
** the others and return 1. Then supervise until SIGINT/SIGTERM (forwarded
** to the workers, who finish what they serve) and return 0 when all have
** stopped. Meanwhile: SIGHUP is forwarded to every worker (a reload); a
** worker that asks the master to reload the others (SIGHUP from a worker)
** reaches every other worker; a worker that dies is restarted (after a
** second when it died young); a worker whose heartbeat stops for
** watchdog_ms is logged with what it ran and killed, then restarted.
** Workers die with the master (PR_SET_PDEATHSIG).
*/
int master_run(struct master *m);

#endif

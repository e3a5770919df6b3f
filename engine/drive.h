/* drive.h — host-driven mode: the engine loop's waits as one descriptor and a timeout for the host's loop. */
#ifndef PAYGATE_DRIVE_H
#define PAYGATE_DRIVE_H

#include <event2/event.h>

struct drive;

/* Mirror base's waits into a new epoll descriptor. NULL with err filled (nothing left behind). */
struct drive *drive_new(struct event_base *base, char *err, size_t errlen);
void drive_free(struct drive *d);

/* The epoll descriptor: readable when a descriptor the loop waits on is ready. */
int drive_fd(const struct drive *d);

/*
** Bring the descriptor up to date with what the loop waits on now, and
** return the milliseconds until its next timer (0: work is ready now), at
** most DRIVE_MAX_WAIT_MS (also when no timer is set).
*/
#define DRIVE_MAX_WAIT_MS 1000
int drive_prepare(struct drive *d);

/* The host queued work (a call, an event, a reload ...): the next drive_prepare answers 0. */
void drive_kick(struct drive *d);

/* Run everything that is ready now, without waiting (event_base_loop with EVLOOP_NONBLOCK). */
void drive_run(struct drive *d);

#endif

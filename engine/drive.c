/* drive.c — host-driven mode: the engine loop's waits as one descriptor and a timeout for the host's loop. */
#include "drive.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/time.h>
#include <unistd.h>

/*
** libevent 2.1 keeps its own epoll descriptor and its next timeout private
** (struct event_base is opaque; no call returns either). What it does
** offer is event_base_foreach_event (every event added or active, with
** event_get_fd, event_get_events and event_pending for its deadline). So
** before the host waits, drive_prepare copies that set into an epoll
** descriptor of our own (level-triggered, so a readiness libevent has not
** consumed yet keeps it readable) and computes the nearest deadline; when
** the descriptor is readable or the deadline passed, drive_run runs one
** non-blocking round of the loop. A non-blocking round runs until nothing
** is active, deferred callbacks included, so after it only descriptors and
** timers remain, and both are in what drive_prepare reports. Between two
** rounds only the host can make work (paygate_call, paygate_emit ...): each
** such call kicks us (drive_kick) and the next prepare answers 0. (Reading an
** active event's deadline is no option: event_pending then reads a timeout
** libevent never set.)
**
** Descriptors are re-registered at every prepare (EPOLL_CTL_MOD, or ADD when
** the kernel forgot it), because a descriptor number closed and reused
** between two rounds has silently left our epoll set. The timeout is capped
** at DRIVE_MAX_WAIT_MS as a safety net.
*/

struct watch {
	int fd;
	unsigned events; /* EPOLLIN | EPOLLOUT | EPOLLRDHUP */
};

struct drive {
	struct event_base *base;
	int ep;
	struct watch *now, *before; /* this prepare's and the previous one's, sorted by fd */
	size_t n, nbefore, cap, capbefore;
	struct timeval deadline; /* the nearest, during a prepare */
	int has_deadline, oom;
	int kicked; /* the host queued work since the last round (paygate_call ...): run at once */
};

struct drive *drive_new(struct event_base *base, char *err, size_t errlen)
{
	struct drive *d = calloc(1, sizeof *d);
	if (!d) {
		snprintf(err, errlen, "out of memory");
		return NULL;
	}
	d->base = base;
	d->kicked = 1; /* creating the engine queued its first work */
	if ((d->ep = epoll_create1(EPOLL_CLOEXEC)) < 0) {
		snprintf(err, errlen, "epoll_create1: %s", strerror(errno));
		free(d);
		return NULL;
	}
	return d;
}

void drive_free(struct drive *d)
{
	if (!d)
		return;
	close(d->ep);
	free(d->now);
	free(d->before);
	free(d);
}

int drive_fd(const struct drive *d)
{
	return d->ep;
}

static int collect(const struct event_base *base, const struct event *ev, void *arg)
{
	struct drive *d = arg;
	short what = event_get_events(ev);
	evutil_socket_t fd = event_get_fd(ev);
	struct timeval tv;
	(void)base;

	/* After a non-blocking round nothing is active (unless kicked since), so EV_TIMEOUT means a timer. */
	if (!d->kicked && event_pending(ev, EV_TIMEOUT, &tv)) {
		if (!d->has_deadline || timercmp(&tv, &d->deadline, <))
			d->deadline = tv;
		d->has_deadline = 1;
	}
	if (fd < 0 || (what & EV_SIGNAL) || !(what & (EV_READ | EV_WRITE | EV_CLOSED)))
		return 0;
	if (d->n == d->cap) {
		size_t cap = d->cap ? 2 * d->cap : 16;
		struct watch *w = realloc(d->now, cap * sizeof *w);
		if (!w) {
			d->oom = 1;
			return 0;
		}
		d->now = w;
		d->cap = cap;
	}
	d->now[d->n].fd = (int)fd;
	d->now[d->n].events = ((what & EV_READ) ? EPOLLIN : 0) | ((what & EV_WRITE) ? EPOLLOUT : 0) |
	                      ((what & EV_CLOSED) ? EPOLLRDHUP : 0);
	d->n++;
	return 0;
}

static int by_fd(const void *a, const void *b)
{
	const struct watch *x = a, *y = b;
	return (x->fd > y->fd) - (x->fd < y->fd);
}

/* Sort this round's watches and merge those of one descriptor (a read event and a write event). */
static void merge(struct drive *d)
{
	size_t out = 0;
	qsort(d->now, d->n, sizeof *d->now, by_fd);
	for (size_t i = 0; i < d->n; i++) {
		if (out > 0 && d->now[out - 1].fd == d->now[i].fd)
			d->now[out - 1].events |= d->now[i].events;
		else
			d->now[out++] = d->now[i];
	}
	d->n = out;
}

static void watch_fd(struct drive *d, const struct watch *w)
{
	struct epoll_event ev = { .events = w->events, .data.fd = w->fd };
	if (epoll_ctl(d->ep, EPOLL_CTL_MOD, w->fd, &ev) < 0 && errno == ENOENT)
		epoll_ctl(d->ep, EPOLL_CTL_ADD, w->fd, &ev);
}

int drive_prepare(struct drive *d)
{
	struct watch *swap;
	size_t i = 0, j = 0, capswap;
	struct timeval now, left;

	d->n = 0;
	d->has_deadline = 0;
	d->oom = 0;
	event_base_foreach_event(d->base, collect, d);
	merge(d);
	/* every descriptor of this round (again: a number may have been closed and reused), none of the last */
	while (i < d->n || j < d->nbefore) {
		if (j == d->nbefore || (i < d->n && d->now[i].fd < d->before[j].fd)) {
			watch_fd(d, &d->now[i++]);
		} else if (i == d->n || d->before[j].fd < d->now[i].fd) {
			epoll_ctl(d->ep, EPOLL_CTL_DEL, d->before[j++].fd, NULL);
		} else {
			watch_fd(d, &d->now[i++]);
			j++;
		}
	}
	swap = d->before;
	d->before = d->now;
	d->now = swap;
	d->nbefore = d->n;
	capswap = d->capbefore;
	d->capbefore = d->cap;
	d->cap = capswap;
	if (d->oom || d->kicked)
		return 0; /* work is queued, or not every descriptor is watched: come back at once */
	if (!d->has_deadline)
		return DRIVE_MAX_WAIT_MS;
	gettimeofday(&now, NULL);
	if (!timercmp(&d->deadline, &now, >))
		return 0;
	timersub(&d->deadline, &now, &left);
	if (left.tv_sec >= DRIVE_MAX_WAIT_MS / 1000)
		return DRIVE_MAX_WAIT_MS;
	return (int)(left.tv_sec * 1000 + (left.tv_usec + 999) / 1000);
}

void drive_kick(struct drive *d)
{
	d->kicked = 1;
}

void drive_run(struct drive *d)
{
	d->kicked = 0;
	event_base_loop(d->base, EVLOOP_NONBLOCK);
}

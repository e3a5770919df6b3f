/* daemon.c — the paygate daemon: options, signals, the event loop (main.c and the sandbox's main run it). */
#include <errno.h>
#include <netdb.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/event.h>

#include "board.h"
#include "clock.h"
#include "daemon.h"
#include "log.h"
#include "master.h"

static const char usage[] =
    "usage: %s [--config FILE] [--listen HOST:PORT] [--check] [--single]\n"
    "       %s --version | --help\n"
    "\n"
    "  --config FILE       configuration file (Lua table syntax; see README)\n"
    "  --listen HOST:PORT  override the listen address (port 0 picks a free port)\n"
    "  --check             load the config and scripts, apply migrations to an\n"
    "                      in-memory database, report errors and exit\n"
    "  --single            one process, no master: no workers, no watchdog, no\n"
    "                      restarts (debugging, tests that signal the engine itself)\n"
    "  --version           print the version\n"
    "\n"
    "Signals (to the master): SIGHUP reloads the scripts (and the config's app table) in every worker;\n"
    "SIGINT/SIGTERM stop gracefully.\n";

/* One engine on one loop: the whole daemon with --single, else one worker. */
struct daemon {
	const char *name;
	struct event_base *base;
	struct paygate *pg;
	int stopping;
	struct board *board; /* a worker: the shared board and its slot; NULL alone */
	int index;
	int beats;
};

static void on_stopped(void *arg)
{
	struct daemon *d = arg;
	event_base_loopexit(d->base, NULL);
}

static void on_signal(evutil_socket_t sig, short what, void *arg)
{
	struct daemon *d = arg;
	char err[1024];
	(void)what;
	if (sig == SIGHUP) {
		paygate_reload(d->pg, err, sizeof err); /* the engine logs the outcome */
		return;
	}
	if (d->stopping++) {
		event_base_loopbreak(d->base); /* a second Ctrl-C: now */
		return;
	}
	if (!d->board)
		fprintf(stderr, "%s: stopping (waiting up to 10 s for requests in flight)\n", d->name);
	paygate_shutdown(d->pg, 10000, on_stopped, d);
}

/* Many concurrent clients and upstream calls need many descriptors. */
static void raise_fd_limit(void)
{
	struct rlimit rl;
	if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
		rl.rlim_cur = rl.rlim_max;
		setrlimit(RLIMIT_NOFILE, &rl);
	}
}

/* Run the loop until a stop signal has let the engine finish; frees the engine and the loop. */
static int serve(struct daemon *d)
{
	struct event *sigs[3];
	const int signos[3] = { SIGHUP, SIGINT, SIGTERM };
	for (int i = 0; i < 3; i++) {
		sigs[i] = evsignal_new(d->base, signos[i], on_signal, d);
		evsignal_add(sigs[i], NULL);
	}
	event_base_dispatch(d->base);
	for (int i = 0; i < 3; i++)
		event_free(sigs[i]);
	paygate_free(d->pg);
	event_base_free(d->base);
	return 0;
}

/* --single and --check: one engine in this process, as before there were workers. */
static int run_alone(const char *name, struct paygate_options *o)
{
	char err[2048];
	struct daemon d = { .name = name };
	if (!(d.base = event_base_new())) {
		fprintf(stderr, "%s: cannot create the event loop\n", name);
		return 1;
	}
	if (!(d.pg = paygate_new(d.base, o, err, sizeof err))) {
		fprintf(stderr, "%s: %s\n", name, err);
		event_base_free(d.base);
		return 1;
	}
	if (o->check_only) {
		printf("%s: configuration and scripts OK\n", name);
		paygate_free(d.pg);
		event_base_free(d.base);
		return 0;
	}
	if (paygate_listen(d.pg, err, sizeof err) < 0) {
		fprintf(stderr, "%s: %s\n", name, err);
		paygate_free(d.pg);
		event_base_free(d.base);
		return 1;
	}
	printf("%s %s listening on http://%s:%d\n", name, PAYGATE_VERSION, paygate_host(d.pg), paygate_port(d.pg));
	fflush(stdout);
	return serve(&d);
}

/* ---- the gateway: a master and its workers on one listening socket ---- */

struct gateway {
	const char *name;
	struct paygate_options *o;
	struct paygate_supervision sup;
	int listen_fd, port;
	char run_id[48];
	struct board board;
	struct log log;
};

/* Bind host:port for every worker to accept on; the port actually bound goes to *port. */
static int open_listener(const char *host, int port, int *bound, char *err, size_t errlen)
{
	struct addrinfo hints = { .ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM, .ai_flags = AI_PASSIVE };
	struct addrinfo *ai = NULL;
	char service[16];
	snprintf(service, sizeof service, "%d", port);
	int rc = getaddrinfo(host, service, &hints, &ai), fd = -1, on = 1;
	if (rc != 0) {
		snprintf(err, errlen, "cannot listen on %s:%d: %s", host, port, gai_strerror(rc));
		return -1;
	}
	if ((fd = socket(ai->ai_family, SOCK_STREAM | SOCK_NONBLOCK, 0)) < 0 ||
	    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &on, sizeof on) < 0 || bind(fd, ai->ai_addr, ai->ai_addrlen) < 0 ||
	    listen(fd, SOMAXCONN) < 0) {
		snprintf(err, errlen, "cannot listen on %s:%d: %s", host, port, strerror(errno));
		if (fd >= 0)
			close(fd);
		freeaddrinfo(ai);
		return -1;
	}
	freeaddrinfo(ai);
	struct sockaddr_storage ss;
	socklen_t len = sizeof ss;
	*bound = port;
	if (getsockname(fd, (struct sockaddr *)&ss, &len) == 0)
		*bound = ntohs(ss.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&ss)->sin6_port
		                                        : ((struct sockaddr_in *)&ss)->sin_port);
	return fd;
}

static void merge_metrics(void *arg, struct evbuffer *text)
{
	struct daemon *d = arg;
	board_merge_metrics(d->board, d->index, text);
}

static void gateway_health(void *arg, struct evbuffer *json)
{
	struct daemon *d = arg;
	board_health(d->board, d->index, clock_now_ms(), json);
}

static int peers_want_lock(void *arg, long long since_ms)
{
	struct daemon *d = arg;
	for (int i = 0; i < d->board->count; i++)
		if (i != d->index && d->board->slots[i].pid && d->board->slots[i].lock_wanted_ms >= since_ms)
			return 1;
	return 0;
}

static void reload_others(void *arg)
{
	(void)arg;
	kill(getppid(), SIGHUP); /* the master passes it on to every other worker */
}

/* Every 100 ms: the heartbeat the watchdog reads; every second, the metrics the other workers show. */
static void on_beat(evutil_socket_t fd, short what, void *arg)
{
	struct daemon *d = arg;
	struct board_slot *s = &d->board->slots[d->index];
	(void)fd;
	(void)what;
	s->beat_ms = clock_now_ms();
	s->generation = paygate_generation(d->pg);
	if (d->board->count > 1 && d->beats++ % 10 == 0) { /* alone, its own /metrics is the gateway's */
		struct evbuffer *b = evbuffer_new();
		if (b) {
			paygate_metrics(d->pg, b);
			size_t n = evbuffer_get_length(b);
			board_publish_metrics(d->board, d->index, (const char *)evbuffer_pullup(b, -1), n);
			evbuffer_free(b);
		}
	}
}

static int worker_main(struct master *m, int index, int incarnation)
{
	struct gateway *g = m->arg;
	struct board_slot *s = &g->board.slots[index];
	struct daemon d = { .name = g->name, .board = &g->board, .index = index };
	struct paygate_worker w = {
		.index = index,
		.count = m->workers,
		.listen_fd = g->listen_fd,
		.run_id = g->run_id,
		.incarnation = incarnation,
		.running = s->running,
		.running_len = sizeof s->running,
		.where = s->where,
		.where_len = sizeof s->where,
		.lock_wanted = &s->lock_wanted_ms,
		.peers_want_lock = m->workers > 1 ? peers_want_lock : NULL,
		.peers_metrics = m->workers > 1 ? merge_metrics : NULL, /* one worker: its figures are the gateway's */
		.peers_health = gateway_health,
		.reload_peers = reload_others,
		.arg = &d,
	};
	struct paygate_options o = *g->o;
	char err[2048];
	o.worker = &w;
	if (!(d.base = event_base_new())) {
		fprintf(stderr, "%s: worker %d: cannot create the event loop\n", g->name, index);
		return 1;
	}
	if (!(d.pg = paygate_new(d.base, &o, err, sizeof err)) || paygate_listen(d.pg, err, sizeof err) < 0) {
		fprintf(stderr, "%s: worker %d: %s\n", g->name, index, err);
		paygate_free(d.pg);
		event_base_free(d.base);
		return 1;
	}
	struct event *beat = event_new(d.base, -1, EV_PERSIST, on_beat, &d);
	const struct timeval every = { 0, 100 * 1000 };
	if (!beat || event_add(beat, &every) < 0) {
		fprintf(stderr, "%s: worker %d: out of memory\n", g->name, index);
		return 1;
	}
	on_beat(-1, 0, &d);
	s->ready = 1;
	int rc = serve(&d); /* frees the engine and the loop */
	event_free(beat);
	return rc;
}

static void all_ready(struct master *m)
{
	struct gateway *g = m->arg;
	printf("%s %s listening on http://%s:%d (%d worker%s)\n", g->name, PAYGATE_VERSION, g->sup.listen_host, g->port,
	       m->workers, m->workers == 1 ? "" : "s");
	fflush(stdout);
}

/* Check the config and scripts once, bind, and let the master run the workers. */
static int run_gateway(const char *name, struct paygate_options *o)
{
	struct gateway g = { .name = name, .o = o, .listen_fd = -1 };
	struct paygate_options check = *o;
	char err[2048];
	struct event_base *base = event_base_new();
	struct paygate *pg;

	check.check_only = 1;
	if (!base || !(pg = paygate_new(base, &check, err, sizeof err))) {
		fprintf(stderr, "%s: %s\n", name, base ? err : "cannot create the event loop");
		if (base)
			event_base_free(base);
		return 1;
	}
	paygate_supervision(pg, &g.sup);
	paygate_free(pg);
	event_base_free(base);

	if ((g.listen_fd = open_listener(g.sup.listen_host, g.sup.listen_port, &g.port, err, sizeof err)) < 0) {
		fprintf(stderr, "%s: %s\n", name, err);
		return 1;
	}
	if (board_new(&g.board, g.sup.workers) < 0) {
		fprintf(stderr, "%s: cannot map the workers' board: %s\n", name, strerror(errno));
		close(g.listen_fd);
		return 1;
	}
	snprintf(g.run_id, sizeof g.run_id, "m%ld-%lld", (long)getpid(), (long long)clock_now_ms());
	log_init(&g.log, LOG_INFO, stderr);
	struct master m = {
		.name = name,
		.workers = g.sup.workers,
		.watchdog_ms = g.sup.watchdog_ms,
		.board = &g.board,
		.log = &g.log,
		.worker_main = worker_main,
		.on_ready = all_ready,
		.arg = &g,
	};
	int rc = master_run(&m);
	board_free(&g.board);
	close(g.listen_fd);
	return rc;
}

int daemon_main(const char *name, int argc, char **argv, void (*configure)(struct paygate_options *o))
{
	struct paygate_options o = { 0 };
	int single = 0;

	for (int i = 1; i < argc; i++) {
		if (strcmp(argv[i], "--config") == 0 && i + 1 < argc) {
			o.config_path = argv[++i];
		} else if (strcmp(argv[i], "--listen") == 0 && i + 1 < argc) {
			o.listen = argv[++i];
		} else if (strcmp(argv[i], "--check") == 0) {
			o.check_only = 1;
		} else if (strcmp(argv[i], "--single") == 0) {
			single = 1;
		} else if (strcmp(argv[i], "--version") == 0) {
			printf("%s %s\n", name, PAYGATE_VERSION);
			return 0;
		} else if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
			printf(usage, name, name);
			return 0;
		} else {
			fprintf(stderr, "%s: unknown option '%s'\n", name, argv[i]);
			fprintf(stderr, usage, name, name);
			return 2;
		}
	}
	signal(SIGPIPE, SIG_IGN);
	raise_fd_limit();
	if (configure)
		configure(&o);
	return single || o.check_only ? run_alone(name, &o) : run_gateway(name, &o);
}

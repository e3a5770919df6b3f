/* daemon.c — the paygate daemon: options, signals, the event loop (main.c and the sandbox's main run it). */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

#include <event2/event.h>

#include "daemon.h"

static const char usage[] =
    "usage: %s [--config FILE] [--listen HOST:PORT] [--check]\n"
    "       %s --version | --help\n"
    "\n"
    "  --config FILE       configuration file (Lua table syntax; see README)\n"
    "  --listen HOST:PORT  override the listen address (port 0 picks a free port)\n"
    "  --check             load the config and scripts, apply migrations to an\n"
    "                      in-memory database, report errors and exit\n"
    "  --version           print the version\n"
    "\n"
    "Signals: SIGHUP reloads the scripts (and the config's app table); SIGINT/SIGTERM stop gracefully.\n";

struct daemon {
	const char *name;
	struct event_base *base;
	struct paygate *pg;
	int stopping;
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

int daemon_main(const char *name, int argc, char **argv, void (*configure)(struct paygate_options *o))
{
	struct paygate_options o = { 0 };
	char err[2048];

	for (int i = 1; i < argc; i++) {
		if (strcmp(argv[i], "--config") == 0 && i + 1 < argc) {
			o.config_path = argv[++i];
		} else if (strcmp(argv[i], "--listen") == 0 && i + 1 < argc) {
			o.listen = argv[++i];
		} else if (strcmp(argv[i], "--check") == 0) {
			o.check_only = 1;
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

	struct daemon d = { 0 };
	d.name = name;
	d.base = event_base_new();
	if (!d.base) {
		fprintf(stderr, "%s: cannot create the event loop\n", name);
		return 1;
	}
	if (configure)
		configure(&o);
	d.pg = paygate_new(d.base, &o, err, sizeof err);
	if (!d.pg) {
		fprintf(stderr, "%s: %s\n", name, err);
		event_base_free(d.base);
		return 1;
	}
	if (o.check_only) {
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
	struct event *sigs[3];
	const int signos[3] = { SIGHUP, SIGINT, SIGTERM };
	for (int i = 0; i < 3; i++) {
		sigs[i] = evsignal_new(d.base, signos[i], on_signal, &d);
		evsignal_add(sigs[i], NULL);
	}
	printf("%s %s listening on http://%s:%d\n", name, PAYGATE_VERSION, paygate_host(d.pg), paygate_port(d.pg));
	fflush(stdout);
	event_base_dispatch(d.base);
	for (int i = 0; i < 3; i++)
		event_free(sigs[i]);
	paygate_free(d.pg);
	event_base_free(d.base);
	return 0;
}

/* main.c — the paygate daemon: options, signals, the event loop. */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

#include <event2/event.h>

#include "paygate.h"

static const char usage[] =
	"usage: paygate [--config FILE] [--listen HOST:PORT] [--check]\n"
	"       paygate --version | --help\n"
	"\n"
	"  --config FILE       configuration file (Lua table syntax; see README)\n"
	"  --listen HOST:PORT  override the listen address (port 0 picks a free port)\n"
	"  --check             load the config and scripts, apply migrations to an\n"
	"                      in-memory database, report errors and exit\n"
	"  --version           print the version\n"
	"\n"
	"Signals: SIGHUP reloads the scripts; SIGINT/SIGTERM stop gracefully.\n";

struct daemon {
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
		paygate_reload(d->pg, err, sizeof err);   /* the engine logs the outcome */
		return;
	}
	if (d->stopping++) {
		event_base_loopbreak(d->base);             /* a second Ctrl-C: now */
		return;
	}
	fprintf(stderr, "paygate: stopping (waiting up to 10 s for requests in flight)\n");
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

int main(int argc, char **argv)
{
	const char *config = NULL, *listen = NULL;
	int check = 0;
	char err[2048];

	for (int i = 1; i < argc; i++) {
		if (strcmp(argv[i], "--config") == 0 && i + 1 < argc) {
			config = argv[++i];
		} else if (strcmp(argv[i], "--listen") == 0 && i + 1 < argc) {
			listen = argv[++i];
		} else if (strcmp(argv[i], "--check") == 0) {
			check = 1;
		} else if (strcmp(argv[i], "--version") == 0) {
			printf("paygate %s\n", PAYGATE_VERSION);
			return 0;
		} else if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
			fputs(usage, stdout);
			return 0;
		} else {
			fprintf(stderr, "paygate: unknown option '%s'\n%s", argv[i], usage);
			return 2;
		}
	}
	signal(SIGPIPE, SIG_IGN);
	raise_fd_limit();

	struct daemon d = { 0 };
	d.base = event_base_new();
	if (!d.base) {
		fprintf(stderr, "paygate: cannot create the event loop\n");
		return 1;
	}
	d.pg = paygate_new_ex(d.base, config, listen, check, err, sizeof err);
	if (!d.pg) {
		fprintf(stderr, "paygate: %s\n", err);
		event_base_free(d.base);
		return 1;
	}
	if (check) {
		printf("paygate: configuration and scripts OK\n");
		paygate_free(d.pg);
		event_base_free(d.base);
		return 0;
	}
	if (paygate_listen(d.pg, err, sizeof err) < 0) {
		fprintf(stderr, "paygate: %s\n", err);
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
	printf("paygate %s listening on http://%s:%d\n", PAYGATE_VERSION, paygate_host(d.pg), paygate_port(d.pg));
	fflush(stdout);
	event_base_dispatch(d.base);
	for (int i = 0; i < 3; i++)
		event_free(sigs[i]);
	paygate_free(d.pg);
	event_base_free(d.base);
	return 0;
}

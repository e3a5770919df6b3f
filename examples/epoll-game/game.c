/* game.c — a game server on a plain epoll loop (no libevent of its own) selling items through paygate's own thread. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/epoll.h>
#include <sys/signalfd.h>
#include <sys/socket.h>

#include <paygate.h>

#include "inventory.h" /* the game's state and host.deliver: ../game-common/ */

/*
** The game owns its thread and its loop: one epoll set with the listening
** socket, the players' sockets, a signalfd and paygate's descriptor.
** paygate runs on a thread of its own (paygate_start_thread); everything it
** hands back — call results, host.deliver, the end of a shutdown — runs
** here, on the game's thread, inside paygate_dispatch_completions. So the
** inventory (../game-common/inventory.c) needs no lock.
**
**   game protocol (TCP)   BUY 42 7  ──paygate_call("buy")──►  paygate's thread: scripts/store.lua
**                         OK {...}  ◄──dispatch, later──────  (order + WeChat APP prepay)
**   paygate's HTTP port   WeChat Pay's notifications (paygate_listen, on paygate's thread)
**   paid order            scripts/delivery.lua ──host.deliver{...}──► inventory_deliver(), on the game's thread
**
** The line protocol is examples/game-server's: LOGIN, BUY, INV, PRICE, RELOAD, QUIT.
**
** With --mode driven there is no thread of paygate's at all: paygate_new_driven, and the
** game's loop runs paygate's (paygate_timeout before each wait, paygate_run_once after).
*/

#ifndef PAYGATE_LUALIB
#define PAYGATE_LUALIB NULL /* then the config file's `lualib` */
#endif

struct buf {
	char *data;
	size_t len, cap;
};

struct client {
	int fd; /* -1 once the player hung up */
	struct buf in, out;
	int pending; /* paygate_call answers still to come */
	struct client *prev, *next;
};

struct game {
	int ep, listen_fd, sig_fd;
	struct paygate *pg;
	struct client *clients;
	struct inventory inv;
	int stopping, running;
	int driven; /* --mode driven: paygate_new_driven, no thread; otherwise paygate_start_thread */
};

/* epoll's data.ptr: one of these tags, or a client. */
static char TAG_LISTEN, TAG_SIGNAL, TAG_PAYGATE;

static int buf_add(struct buf *b, const char *s, size_t n)
{
	if (b->len + n + 1 > b->cap) {
		size_t cap = b->cap ? b->cap : 256;
		while (cap < b->len + n + 1)
			cap *= 2;
		char *d = realloc(b->data, cap);
		if (!d)
			return -1;
		b->data = d;
		b->cap = cap;
	}
	memcpy(b->data + b->len, s, n);
	b->len += n;
	b->data[b->len] = '\0';
	return 0;
}

static int buf_printf(struct buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static int buf_printf(struct buf *b, const char *fmt, ...)
{
	char small[512];
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(small, sizeof small, fmt, ap);
	va_end(ap);
	if (n < 0)
		return -1;
	if ((size_t)n < sizeof small)
		return buf_add(b, small, (size_t)n);
	char *big = malloc((size_t)n + 1);
	if (!big)
		return -1;
	va_start(ap, fmt);
	vsnprintf(big, (size_t)n + 1, fmt, ap);
	va_end(ap);
	int rc = buf_add(b, big, (size_t)n);
	free(big);
	return rc;
}

/* Append s as a JSON string literal (the characters a player id or a code can hold, escaped). */
static int buf_json_string(struct buf *b, const char *s)
{
	buf_add(b, "\"", 1);
	for (; *s; s++) {
		if (*s == '"' || *s == '\\')
			buf_printf(b, "\\%c", *s);
		else if ((unsigned char)*s < 0x20)
			buf_printf(b, "\\u%04x", (unsigned char)*s);
		else
			buf_add(b, s, 1);
	}
	return buf_add(b, "\"", 1);
}

/* ---- players' connections ---- */

static void client_watch(struct game *g, struct client *c)
{
	struct epoll_event ev = { .events = EPOLLIN | (c->out.len ? EPOLLOUT : 0), .data.ptr = c };
	epoll_ctl(g->ep, EPOLL_CTL_MOD, c->fd, &ev);
}

static void client_flush(struct game *g, struct client *c)
{
	size_t off = 0;
	while (c->fd >= 0 && off < c->out.len) {
		ssize_t n = send(c->fd, c->out.data + off, c->out.len - off, MSG_NOSIGNAL);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			break;
		off += (size_t)n;
	}
	memmove(c->out.data, c->out.data + off, c->out.len - off);
	c->out.len -= off;
	if (c->fd >= 0)
		client_watch(g, c);
}

static void client_free(struct game *g, struct client *c)
{
	if (c->prev)
		c->prev->next = c->next;
	else
		g->clients = c->next;
	if (c->next)
		c->next->prev = c->prev;
	free(c->in.data);
	free(c->out.data);
	free(c);
}

static void hang_up(struct game *g, struct client *c)
{
	if (c->fd >= 0) {
		epoll_ctl(g->ep, EPOLL_CTL_DEL, c->fd, NULL);
		close(c->fd);
		c->fd = -1;
	}
	if (c->pending == 0) /* otherwise the last answer frees it */
		client_free(g, c);
}

static void answer(struct game *g, struct client *c, int status, const char *json)
{
	if (c->fd < 0)
		return;
	if (status == 200)
		buf_printf(&c->out, "OK %s\n", json);
	else
		buf_printf(&c->out, "ERR %d %s\n", status, json);
	client_flush(g, c);
}

struct pending {
	struct game *g;
	struct client *c;
};

/* A paygate_call result, on the game's thread. */
static void on_result(void *arg, int status, const char *json)
{
	struct pending *p = arg;
	struct client *c = p->c;
	answer(p->g, c, status, json);
	if (--c->pending == 0 && c->fd < 0)
		client_free(p->g, c);
	free(p);
}

static void call(struct game *g, struct client *c, const char *fn, const char *args)
{
	struct pending *p = calloc(1, sizeof *p);
	if (!p || paygate_call(g->pg, fn, args, on_result, p) < 0) {
		free(p);
		answer(g, c, 503, "{\"error\":\"unavailable\",\"message\":\"the shop is not available\"}");
		return;
	}
	p->g = g;
	p->c = c;
	c->pending++;
}

static void on_stopped(void *arg)
{
	struct game *g = arg;
	g->running = 0;
}

/* Graceful: no new players, the shop finishes what it is doing (at most 5 s), then the loop ends. */
static void game_stop(struct game *g)
{
	if (g->stopping++)
		return;
	printf("game: stopping\n");
	fflush(stdout);
	epoll_ctl(g->ep, EPOLL_CTL_DEL, g->listen_fd, NULL);
	paygate_shutdown(g->pg, 5000, on_stopped, g); /* on_stopped comes through the dispatch */
}

static void cmd_inventory(struct game *g, struct client *c, long player)
{
	char *json = inventory_json(&g->inv, player);
	answer(g, c, json ? 200 : 503, json ? json : "{\"error\":\"out_of_memory\"}");
	free(json);
}

static void cmd_reload(struct game *g, struct client *c)
{
	char err[1024];
	struct buf b = { 0 };
	long long gen = paygate_reload(g->pg, err, sizeof err); /* waits while paygate's thread reloads */
	if (gen < 0) {
		buf_printf(&b, "{\"error\":\"reload_failed\",\"message\":");
		buf_json_string(&b, err);
		buf_add(&b, "}", 1);
		answer(g, c, 422, b.data ? b.data : "{}");
	} else {
		buf_printf(&b, "{\"generation\":%lld}", gen);
		answer(g, c, 200, b.data ? b.data : "{}");
	}
	free(b.data);
}

static void handle(struct game *g, struct client *c, char *line)
{
	char *save = NULL, *verb = strtok_r(line, " \t\r", &save);
	char *a1 = strtok_r(NULL, " \t\r", &save), *a2 = strtok_r(NULL, " \t\r", &save);
	char *a3 = strtok_r(NULL, " \t\r", &save);
	struct buf args = { 0 };
	long x, y;

	if (!verb)
		return;
	if (strcmp(verb, "INV") == 0 && parse_id(a1, &x) == 0) {
		cmd_inventory(g, c, x);
	} else if (strcmp(verb, "RELOAD") == 0) {
		cmd_reload(g, c);
	} else if (strcmp(verb, "QUIT") == 0) {
		answer(g, c, 200, "{\"bye\":true}");
		game_stop(g);
	} else if (strcmp(verb, "LOGIN") == 0 && parse_id(a1, &x) == 0 && a2) {
		buf_printf(&args, "{\"player\":%ld,\"code\":", x);
		buf_json_string(&args, a2);
		buf_add(&args, "}", 1);
		call(g, c, "login", args.data ? args.data : "");
	} else if (strcmp(verb, "BUY") == 0 && parse_id(a1, &x) == 0 && parse_id(a2, &y) == 0) {
		buf_printf(&args, "{\"player\":%ld,\"item\":%ld,\"channel\":", x, y);
		buf_json_string(&args, a3 ? a3 : "app");
		buf_add(&args, "}", 1);
		call(g, c, "buy", args.data ? args.data : "");
	} else if (strcmp(verb, "PRICE") == 0 && parse_id(a1, &x) == 0 && parse_id(a2, &y) == 0) {
		buf_printf(&args, "{\"item\":%ld,\"price\":%ld}", x, y);
		if (!args.data || paygate_emit(g->pg, "set_price", args.data) < 0)
			answer(g, c, 503, "{\"error\":\"unavailable\"}");
		else
			answer(g, c, 200, "{\"sent\":true}");
	} else {
		answer(
		    g, c, 400,
		    "{\"error\":\"bad_command\",\"message\":"
		    "\"LOGIN <player> <code> | BUY <player> <item> [app|miniprogram] | INV <player> | PRICE <item> <fen> | RELOAD | QUIT\"}");
	}
	free(args.data);
}

static void on_readable(struct game *g, struct client *c)
{
	char chunk[4096];
	for (;;) {
		ssize_t n = recv(c->fd, chunk, sizeof chunk, 0);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
			break;
		if (n <= 0 || buf_add(&c->in, chunk, (size_t)n) < 0) {
			hang_up(g, c);
			return;
		}
	}
	char *nl;
	size_t used = 0;
	while (c->fd >= 0 && (nl = memchr(c->in.data + used, '\n', c->in.len - used))) {
		*nl = '\0';
		handle(g, c, c->in.data + used);
		used = (size_t)(nl - c->in.data) + 1;
	}
	if (c->fd < 0)
		return;
	memmove(c->in.data, c->in.data + used, c->in.len - used);
	c->in.len -= used;
	if (c->in.len > 4096)
		hang_up(g, c); /* a line that never ends */
}

static void on_accept(struct game *g)
{
	int fd;
	while ((fd = accept4(g->listen_fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC)) >= 0) {
		struct client *c = calloc(1, sizeof *c);
		struct epoll_event ev = { .events = EPOLLIN };
		if (!c) {
			close(fd);
			continue;
		}
		c->fd = fd;
		ev.data.ptr = c;
		if (epoll_ctl(g->ep, EPOLL_CTL_ADD, fd, &ev) < 0) {
			close(fd);
			free(c);
			continue;
		}
		c->next = g->clients;
		if (c->next)
			c->next->prev = c;
		g->clients = c;
	}
}

/* ---- start, loop, stop ---- */

static void shop_log(void *arg, const char *line)
{
	(void)arg;
	fprintf(stderr, "[shop] %s\n", line); /* called on paygate's thread: stdio locks the stream */
}

static int watch(struct game *g, int fd, void *tag)
{
	struct epoll_event ev = { .events = EPOLLIN, .data.ptr = tag };
	return epoll_ctl(g->ep, EPOLL_CTL_ADD, fd, &ev);
}

static int start(struct game *g, const char *config, int port, int http_port)
{
	struct paygate_function fns[] = { { "deliver", inventory_deliver, &g->inv }, { NULL, NULL, NULL } };
	struct paygate_options o = { 0 };
	struct sockaddr_in sin = { 0 };
	char err[2048], addr[64];
	sigset_t sigs;
	socklen_t len = sizeof sin;

	snprintf(addr, sizeof addr, "127.0.0.1:%d", http_port);
	o.config_path = config;
	o.lualib_dir = PAYGATE_LUALIB;
	o.listen = addr;
	o.log_fn = shop_log;
	o.functions = fns;
	/* Signals: a signalfd in our loop; blocked before paygate's thread starts, so it never takes them. */
	sigemptyset(&sigs);
	sigaddset(&sigs, SIGINT);
	sigaddset(&sigs, SIGTERM);
	sigprocmask(SIG_BLOCK, &sigs, NULL);
	if ((g->ep = epoll_create1(EPOLL_CLOEXEC)) < 0 || (g->sig_fd = signalfd(-1, &sigs, SFD_CLOEXEC)) < 0)
		return -1;
	g->pg = g->driven ? paygate_new_driven(&o, err, sizeof err) : paygate_start_thread(&o, err, sizeof err);
	if (!g->pg || paygate_listen(g->pg, err, sizeof err) < 0) {
		fprintf(stderr, "game: the shop did not start: %s\n", err);
		return -1;
	}
	sin.sin_family = AF_INET;
	sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	sin.sin_port = htons((uint16_t)port);
	int one = 1;
	g->listen_fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (g->listen_fd < 0 || setsockopt(g->listen_fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) < 0 ||
	    bind(g->listen_fd, (struct sockaddr *)&sin, sizeof sin) < 0 || listen(g->listen_fd, 64) < 0 ||
	    getsockname(g->listen_fd, (struct sockaddr *)&sin, &len) < 0) {
		fprintf(stderr, "game: cannot listen on 127.0.0.1:%d: %s\n", port, strerror(errno));
		return -1;
	}
	if (watch(g, g->listen_fd, &TAG_LISTEN) < 0 || watch(g, g->sig_fd, &TAG_SIGNAL) < 0 ||
	    watch(g, paygate_fd(g->pg), &TAG_PAYGATE) < 0)
		return -1;
	printf("game listening on 127.0.0.1:%d, http 127.0.0.1:%d\n", ntohs(sin.sin_port), paygate_port(g->pg));
	fflush(stdout);
	return 0;
}

static void run(struct game *g)
{
	struct epoll_event evs[64];
	g->running = 1;
	while (g->running) {
		/* driven: paygate's descriptor is up to date and its next timer known only right before we wait */
		int n = epoll_wait(g->ep, evs, 64, g->driven ? paygate_timeout(g->pg) : -1);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			break;
		for (int i = 0; i < n; i++) {
			void *tag = evs[i].data.ptr;
			if (tag == &TAG_PAYGATE) {
				if (!g->driven) /* results, host.deliver, shutdown done */
					paygate_dispatch_completions(g->pg);
			} else if (tag == &TAG_LISTEN) {
				on_accept(g);
			} else if (tag == &TAG_SIGNAL) {
				struct signalfd_siginfo si;
				if (read(g->sig_fd, &si, sizeof si) > 0)
					game_stop(g);
			} else {
				struct client *c = tag;
				if (c->fd < 0)
					continue;
				if (evs[i].events & EPOLLOUT)
					client_flush(g, c);
				if (evs[i].events & (EPOLLIN | EPOLLHUP | EPOLLERR))
					on_readable(g, c);
			}
		}
		if (g->driven) /* whatever is ready: results, host.deliver and shutdown done run in here */
			paygate_run_once(g->pg);
	}
}

static void cleanup(struct game *g)
{
	paygate_free(g->pg); /* answers still pending reach on_result from inside, here */
	while (g->clients) {
		struct client *c = g->clients;
		if (c->fd >= 0)
			close(c->fd);
		client_free(g, c);
	}
	inventory_free(&g->inv);
	if (g->listen_fd > 0)
		close(g->listen_fd);
	if (g->sig_fd > 0)
		close(g->sig_fd);
	if (g->ep > 0)
		close(g->ep);
}

static int parse_port(const char *s, long *out)
{
	char *end;
	errno = 0;
	long v = strtol(s, &end, 10);
	if (errno || end == s || *end || v < 0 || v > 65535)
		return -1;
	*out = v;
	return 0;
}

int main(int argc, char **argv)
{
	const char *config = NULL;
	long port = 7000, http_port = 8081;
	struct game g = { 0 };
	int rc = 0;

	for (int i = 1; i < argc; i++) {
		int ok = i + 1 < argc;
		if (ok && strcmp(argv[i], "--config") == 0)
			config = argv[++i];
		else if (ok && strcmp(argv[i], "--port") == 0 && parse_port(argv[i + 1], &port) == 0)
			i++;
		else if (ok && strcmp(argv[i], "--http") == 0 && parse_port(argv[i + 1], &http_port) == 0)
			i++;
		else if (ok && strcmp(argv[i], "--mode") == 0 &&
		         (strcmp(argv[i + 1], "thread") == 0 || strcmp(argv[i + 1], "driven") == 0))
			g.driven = strcmp(argv[++i], "driven") == 0;
		else {
			fprintf(stderr,
			        "usage: epoll-game --config FILE [--port PORT] [--http PORT] [--mode thread|driven]\n");
			return 2;
		}
	}
	signal(SIGPIPE, SIG_IGN);
	if (start(&g, config, (int)port, (int)http_port) < 0)
		rc = 1;
	else
		run(&g);
	cleanup(&g);
	return rc;
}

/* game.c — a game server on libuv selling items through paygate (own thread, or driven by the libuv loop). */
#include <errno.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <uv.h>

#include <paygate.h>

#include "inventory.h" /* the game's state and host.deliver: ../game-common/ */

/*
** The game's loop is libuv's: a TCP server for the players, signal handles, and
** paygate's descriptor in a uv_poll_t. Everything paygate hands back (call
** results, host.deliver into ../game-common/inventory.c, the end of a shutdown)
** runs on the loop's thread.
**
**   --mode thread (default)  paygate_start_thread; the poll handle calls
**                            paygate_dispatch_completions.
**   --mode driven            paygate_new_driven, no thread: a uv_prepare_t (run right before
**                            libuv waits) re-arms a timer with paygate_timeout; the poll handle
**                            and the timer call paygate_run_once.
**
** The line protocol is examples/game-server's: LOGIN, BUY, INV, PRICE, RELOAD, QUIT.
*/

#ifndef PAYGATE_LUALIB
#define PAYGATE_LUALIB NULL /* then the config file's `lualib` */
#endif

struct client {
	uv_tcp_t tcp;
	struct game *g;
	int open; /* 0 once the player hung up (or the game is stopping) */
	int pending;
	char *in;
	size_t len;
	struct client *prev, *next;
};

struct game {
	uv_loop_t loop;
	uv_tcp_t server;
	uv_signal_t sigint, sigterm;
	uv_poll_t pg_poll;
	uv_prepare_t prepare; /* driven */
	uv_timer_t timer;     /* driven */
	struct paygate *pg;
	struct client *clients;
	struct inventory inv;
	int driven, stopping;
};

/* ---- text ---- */

static char *vformat(const char *fmt, va_list ap)
{
	va_list copy;
	va_copy(copy, ap);
	int n = vsnprintf(NULL, 0, fmt, copy);
	va_end(copy);
	char *s = n >= 0 ? malloc((size_t)n + 1) : NULL;
	if (s)
		vsnprintf(s, (size_t)n + 1, fmt, ap);
	return s;
}

static char *format(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

static char *format(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	char *s = vformat(fmt, ap);
	va_end(ap);
	return s;
}

/* s as a JSON string literal (malloc'd): the characters a code or a channel can hold, escaped. */
static char *json_string(const char *s)
{
	size_t n = strlen(s);
	char *out = malloc(6 * n + 3), *p = out;
	if (!out)
		return NULL;
	*p++ = '"';
	for (; *s; s++) {
		if (*s == '"' || *s == '\\') {
			*p++ = '\\';
			*p++ = *s;
		} else if ((unsigned char)*s < 0x20) {
			p += snprintf(p, 7, "\\u%04x", (unsigned char)*s);
		} else {
			*p++ = *s;
		}
	}
	*p++ = '"';
	*p = '\0';
	return out;
}

/* ---- players ---- */

static void client_free(struct client *c)
{
	struct game *g = c->g;
	if (c->prev)
		c->prev->next = c->next;
	else
		g->clients = c->next;
	if (c->next)
		c->next->prev = c->prev;
	free(c->in);
	free(c);
}

static void on_client_closed(uv_handle_t *h)
{
	struct client *c = h->data;
	if (c->pending == 0) /* otherwise the last answer frees it */
		client_free(c);
	else
		c->tcp.data = NULL; /* closed: the answers still due free it */
}

static void hang_up(struct client *c)
{
	if (!c->open)
		return;
	c->open = 0;
	uv_close((uv_handle_t *)&c->tcp, on_client_closed);
}

static void on_written(uv_write_t *w, int status)
{
	(void)status;
	free(w->data);
	free(w);
}

static void answer(struct client *c, int status, const char *json)
{
	uv_write_t *w;
	char *line;
	if (!c->open)
		return;
	line = status == 200 ? format("OK %s\n", json) : format("ERR %d %s\n", status, json);
	if (!line || !(w = malloc(sizeof *w))) {
		free(line);
		return;
	}
	uv_buf_t buf = uv_buf_init(line, (unsigned)strlen(line));
	w->data = line;
	if (uv_write(w, (uv_stream_t *)&c->tcp, &buf, 1, on_written) < 0) {
		free(line);
		free(w);
	}
}

static void on_result(void *arg, int status, const char *json)
{
	struct client *c = arg;
	answer(c, status, json);
	if (--c->pending == 0 && !c->open && !c->tcp.data)
		client_free(c);
}

static void call(struct client *c, const char *fn, char *args)
{
	if (!args || paygate_call(c->g->pg, fn, args, on_result, c) < 0)
		answer(c, 503, "{\"error\":\"unavailable\",\"message\":\"the shop is not available\"}");
	else
		c->pending++;
	free(args);
}

/* Close h unless it is closing already or was never opened (the game struct starts zeroed). */
static void close_handle(uv_handle_t *h)
{
	if (h->type != UV_UNKNOWN_HANDLE && !uv_is_closing(h))
		uv_close(h, NULL);
}

/* The shop finished its work: close every handle, so uv_run returns. */
static void on_stopped(void *arg)
{
	struct game *g = arg;
	for (struct client *c = g->clients; c; c = c->next)
		hang_up(c);
	close_handle((uv_handle_t *)&g->pg_poll);
	close_handle((uv_handle_t *)&g->sigint);
	close_handle((uv_handle_t *)&g->sigterm);
	if (g->driven) {
		close_handle((uv_handle_t *)&g->prepare);
		close_handle((uv_handle_t *)&g->timer);
	}
}

static void game_stop(struct game *g)
{
	if (g->stopping++)
		return;
	printf("game: stopping\n");
	fflush(stdout);
	close_handle((uv_handle_t *)&g->server);
	paygate_shutdown(g->pg, 5000, on_stopped, g); /* on_stopped comes through paygate's handle */
}

static void cmd_inventory(struct client *c, long player)
{
	char *json = inventory_json(&c->g->inv, player);
	answer(c, json ? 200 : 503, json ? json : "{\"error\":\"out_of_memory\"}");
	free(json);
}

static void cmd_reload(struct client *c)
{
	char err[1024];
	long long gen = paygate_reload(c->g->pg, err, sizeof err);
	char *json, *msg = NULL;
	if (gen < 0)
		json = (msg = json_string(err)) ? format("{\"error\":\"reload_failed\",\"message\":%s}", msg) : NULL;
	else
		json = format("{\"generation\":%lld}", gen);
	answer(c, gen < 0 ? 422 : 200, json ? json : "{}");
	free(json);
	free(msg);
}

static void handle(struct client *c, char *line)
{
	char *save = NULL, *verb = strtok_r(line, " \t\r", &save);
	char *a1 = strtok_r(NULL, " \t\r", &save), *a2 = strtok_r(NULL, " \t\r", &save);
	char *a3 = strtok_r(NULL, " \t\r", &save);
	long x, y;

	if (!verb)
		return;
	if (strcmp(verb, "INV") == 0 && parse_id(a1, &x) == 0) {
		cmd_inventory(c, x);
	} else if (strcmp(verb, "RELOAD") == 0) {
		cmd_reload(c);
	} else if (strcmp(verb, "QUIT") == 0) {
		answer(c, 200, "{\"bye\":true}");
		game_stop(c->g);
	} else if (strcmp(verb, "LOGIN") == 0 && parse_id(a1, &x) == 0 && a2) {
		char *code = json_string(a2);
		call(c, "login", code ? format("{\"player\":%ld,\"code\":%s}", x, code) : NULL);
		free(code);
	} else if (strcmp(verb, "BUY") == 0 && parse_id(a1, &x) == 0 && parse_id(a2, &y) == 0) {
		char *channel = json_string(a3 ? a3 : "app");
		call(c, "buy", channel ? format("{\"player\":%ld,\"item\":%ld,\"channel\":%s}", x, y, channel) : NULL);
		free(channel);
	} else if (strcmp(verb, "PRICE") == 0 && parse_id(a1, &x) == 0 && parse_id(a2, &y) == 0) {
		char *args = format("{\"item\":%ld,\"price\":%ld}", x, y);
		if (!args || paygate_emit(c->g->pg, "set_price", args) < 0)
			answer(c, 503, "{\"error\":\"unavailable\"}");
		else
			answer(c, 200, "{\"sent\":true}");
		free(args);
	} else {
		answer(c, 400,
		       "{\"error\":\"bad_command\",\"message\":"
		       "\"LOGIN <player> <code> | BUY <player> <item> [app|miniprogram] | INV <player> | "
		       "PRICE <item> <fen> | RELOAD | QUIT\"}");
	}
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
	(void)h;
	buf->base = malloc(suggested);
	buf->len = buf->base ? suggested : 0;
}

static void on_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf)
{
	struct client *c = s->data;
	char *grown, *nl;
	size_t used = 0;

	if (n < 0 || !(grown = realloc(c->in, c->len + (size_t)n + 1))) {
		free(buf->base);
		if (n != 0)
			hang_up(c);
		return;
	}
	c->in = grown;
	memcpy(c->in + c->len, buf->base, (size_t)n);
	c->len += (size_t)n;
	c->in[c->len] = '\0';
	free(buf->base);
	while (c->open && (nl = memchr(c->in + used, '\n', c->len - used))) {
		*nl = '\0';
		handle(c, c->in + used);
		used = (size_t)(nl - c->in) + 1;
	}
	memmove(c->in, c->in + used, c->len - used);
	c->len -= used;
	if (c->len > 4096)
		hang_up(c); /* a line that never ends */
}

static void on_connection(uv_stream_t *server, int status)
{
	struct game *g = server->data;
	struct client *c;
	if (status < 0 || !(c = calloc(1, sizeof *c)))
		return;
	c->g = g;
	uv_tcp_init(&g->loop, &c->tcp);
	c->tcp.data = c;
	if (uv_accept(server, (uv_stream_t *)&c->tcp) < 0) {
		c->open = 1;
		c->next = g->clients; /* linked so that the close callback can unlink it */
		if (c->next)
			c->next->prev = c;
		g->clients = c;
		hang_up(c);
		return;
	}
	c->open = 1;
	c->next = g->clients;
	if (c->next)
		c->next->prev = c;
	g->clients = c;
	uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read);
}

/* ---- paygate in the loop ---- */

static void on_paygate(uv_poll_t *p, int status, int events)
{
	struct game *g = p->data;
	(void)status;
	(void)events;
	if (g->driven)
		paygate_run_once(g->pg);
	else
		paygate_dispatch_completions(g->pg);
}

static void on_timer(uv_timer_t *t)
{
	struct game *g = t->data;
	paygate_run_once(g->pg);
}

/* Driven: right before libuv waits, paygate says how long it may. */
static void on_prepare(uv_prepare_t *p)
{
	struct game *g = p->data;
	uv_timer_start(&g->timer, on_timer, (uint64_t)paygate_timeout(g->pg), 0);
}

static void on_signal(uv_signal_t *s, int signum)
{
	(void)signum;
	game_stop(s->data);
}

static void shop_log(void *arg, const char *line)
{
	(void)arg;
	fprintf(stderr, "[shop] %s\n", line);
}

static int start(struct game *g, const char *config, int port, int http_port)
{
	struct paygate_function fns[] = { { "deliver", inventory_deliver, &g->inv }, { NULL, NULL, NULL } };
	struct paygate_options o = { 0 };
	struct sockaddr_in sin;
	int len = sizeof sin;
	char err[2048], addr[64];

	snprintf(addr, sizeof addr, "127.0.0.1:%d", http_port);
	o.config_path = config;
	o.lualib_dir = PAYGATE_LUALIB;
	o.listen = addr;
	o.log_fn = shop_log;
	o.functions = fns;
	if (uv_loop_init(&g->loop) < 0)
		return -1;
	/* libuv's signal handles first: paygate's thread blocks every signal anyway */
	uv_signal_init(&g->loop, &g->sigint);
	uv_signal_init(&g->loop, &g->sigterm);
	g->sigint.data = g->sigterm.data = g;
	uv_signal_start(&g->sigint, on_signal, SIGINT);
	uv_signal_start(&g->sigterm, on_signal, SIGTERM);
	uv_tcp_init(&g->loop, &g->server);
	g->server.data = g;
	g->pg = g->driven ? paygate_new_driven(&o, err, sizeof err) : paygate_start_thread(&o, err, sizeof err);
	if (!g->pg || paygate_listen(g->pg, err, sizeof err) < 0) {
		fprintf(stderr, "game: the shop did not start: %s\n", err);
		return -1;
	}
	uv_poll_init(&g->loop, &g->pg_poll, paygate_fd(g->pg));
	g->pg_poll.data = g;
	uv_poll_start(&g->pg_poll, UV_READABLE, on_paygate);
	if (g->driven) {
		uv_prepare_init(&g->loop, &g->prepare);
		uv_timer_init(&g->loop, &g->timer);
		g->prepare.data = g->timer.data = g;
		uv_prepare_start(&g->prepare, on_prepare);
	}
	uv_ip4_addr("127.0.0.1", port, &sin);
	if (uv_tcp_bind(&g->server, (const struct sockaddr *)&sin, 0) < 0 ||
	    uv_listen((uv_stream_t *)&g->server, 64, on_connection) < 0 ||
	    uv_tcp_getsockname(&g->server, (struct sockaddr *)&sin, &len) < 0) {
		fprintf(stderr, "game: cannot listen on 127.0.0.1:%d\n", port);
		return -1;
	}
	printf("game listening on 127.0.0.1:%d, http 127.0.0.1:%d\n", ntohs(sin.sin_port), paygate_port(g->pg));
	fflush(stdout);
	return 0;
}

static void cleanup(struct game *g)
{
	paygate_free(g->pg); /* answers still pending reach on_result from inside, here */
	if (!g->stopping) {  /* start failed half way: close what was opened */
		close_handle((uv_handle_t *)&g->server);
		on_stopped(g);
	}
	uv_run(&g->loop, UV_RUN_DEFAULT); /* the close callbacks */
	while (g->clients)
		client_free(g->clients);
	inventory_free(&g->inv);
	uv_loop_close(&g->loop);
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
			        "usage: uv-game --config FILE [--port PORT] [--http PORT] [--mode thread|driven]\n");
			return 2;
		}
	}
	signal(SIGPIPE, SIG_IGN);
	if (start(&g, config, (int)port, (int)http_port) < 0)
		rc = 1;
	else
		uv_run(&g.loop, UV_RUN_DEFAULT);
	cleanup(&g);
	return rc;
}

/* game.c — a tiny game server that sells in-game items through an embedded paygate. */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <arpa/inet.h>
#include <netinet/in.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/listener.h>

#include <paygate.h>

#include "inventory.h" /* the game's state and host.deliver: ../game-common/ */

/*
** The game owns the process: its event loop, its signals, its line protocol on
** 127.0.0.1 and its HTTP port. paygate is a guest on that loop:
**
**   game protocol (TCP)    BUY 42 7  ──paygate_call("buy")──►  scripts/store.lua
**                          OK {...}  ◄──callback, later──────  (order + WeChat APP prepay → PayReq)
**   game HTTP port         /game/status answered here; every other path
**                          (WeChat Pay's notifications) ──paygate_handle_request──► scripts
**   paid order             scripts/delivery.lua ──host.deliver{...}──► inventory_deliver()
**                                                                   (../game-common/inventory.c)
**
** Commands, one per line, one answer line each ("OK <json>" or "ERR <status> <json>"):
**   LOGIN <player> <code>   the code of wx.login in the WeChat mini game
**   BUY <player> <item> [app|miniprogram]
**                           → {order_no, item, amount, channel, pay}: pay is the OpenSDK's PayReq
**                             (APP pay, the default) or what wx.requestPayment takes
**   INV <player>            → {"<item>": count, ...}, what was delivered
**   PRICE <item> <fen>      tells the shop a new price (an event, nothing comes back)
**   RELOAD                  reloads the shop's scripts → {"generation": n}
**   QUIT                    stops the server (graceful) and exits
*/

#ifndef PAYGATE_LUALIB
#define PAYGATE_LUALIB NULL /* then the config file's `lualib` */
#endif

struct client;

struct game {
	struct event_base *base;
	struct paygate *pg;
	struct evconnlistener *listener;
	struct evhttp *http;
	struct event *sigint, *sigterm;
	struct client *clients;
	struct inventory inv;
	int stopping;
};

struct client {
	struct game *g;
	struct bufferevent *bev; /* NULL once the player hung up */
	int pending;             /* paygate_call answers still to come */
	struct client *prev, *next;
};

/* ---- the line protocol ---- */

/* One answer line: "OK <json>" (status 200) or "ERR <status> <json>"; nothing if the player left. */
static void answer(struct client *c, int status, const char *json)
{
	if (!c->bev)
		return;
	if (status == 200)
		evbuffer_add_printf(bufferevent_get_output(c->bev), "OK %s\n", json);
	else
		evbuffer_add_printf(bufferevent_get_output(c->bev), "ERR %d %s\n", status, json);
}

static void client_free(struct client *c)
{
	struct game *g = c->g;
	if (c->bev)
		bufferevent_free(c->bev);
	if (c->prev)
		c->prev->next = c->next;
	else
		g->clients = c->next;
	if (c->next)
		c->next->prev = c->prev;
	free(c);
}

/* The result of a paygate_call: one answer line, if the player is still there. */
static void on_result(void *arg, int status, const char *json)
{
	struct client *c = arg;
	answer(c, status, json);
	if (--c->pending == 0 && !c->bev)
		client_free(c);
}

/* Queue a paygate_call for this client; answers ERR at once when paygate refuses it. */
static void call(struct client *c, const char *fn, struct evbuffer *args)
{
	evbuffer_add(args, "", 1);
	if (paygate_call(c->g->pg, fn, (const char *)evbuffer_pullup(args, -1), on_result, c) < 0) {
		answer(c, 503, "{\"error\":\"unavailable\",\"message\":\"the shop is not available\"}");
		return;
	}
	c->pending++;
}

static void cmd_inventory(struct client *c, long player)
{
	char *json = inventory_json(&c->g->inv, player);
	answer(c, json ? 200 : 503, json ? json : "{\"error\":\"out_of_memory\"}");
	free(json);
}

static void game_stop(struct game *g);

static void cmd_reload(struct client *c)
{
	char err[1024], json[64];
	long long gen = paygate_reload(c->g->pg, err, sizeof err);
	struct evbuffer *b = evbuffer_new();
	if (!b)
		return;
	if (gen < 0) {
		evbuffer_add_printf(b, "{\"error\":\"reload_failed\",\"message\":");
		paygate_json_add_string(b, err);
		evbuffer_add(b, "}", 2);
		answer(c, 422, (const char *)evbuffer_pullup(b, -1));
	} else {
		snprintf(json, sizeof json, "{\"generation\":%lld}", gen);
		answer(c, 200, json);
	}
	evbuffer_free(b);
}

/* QUIT: once "OK" is written (or the player already left), the whole game stops. */
static void on_bye_written(struct bufferevent *bev, void *arg)
{
	struct client *c = arg;
	(void)bev;
	game_stop(c->g);
}

static void on_bye_event(struct bufferevent *bev, short what, void *arg)
{
	(void)what;
	on_bye_written(bev, arg);
}

static void handle(struct client *c, char *line)
{
	char *save = NULL, *verb = strtok_r(line, " \t", &save);
	char *a1 = strtok_r(NULL, " \t", &save), *a2 = strtok_r(NULL, " \t", &save), *a3 = strtok_r(NULL, " \t", &save);
	struct evbuffer *args;
	long x, y;

	if (!verb)
		return;
	if (strcmp(verb, "INV") == 0 && parse_id(a1, &x) == 0) {
		cmd_inventory(c, x);
	} else if (strcmp(verb, "RELOAD") == 0) {
		cmd_reload(c);
	} else if (strcmp(verb, "QUIT") == 0) {
		answer(c, 200, "{\"bye\":true}");
		bufferevent_setcb(c->bev, NULL, on_bye_written, on_bye_event, c);
	} else if (!(args = evbuffer_new())) {
		answer(c, 503, "{\"error\":\"out_of_memory\"}");
	} else {
		if (strcmp(verb, "LOGIN") == 0 && parse_id(a1, &x) == 0 && a2) {
			evbuffer_add_printf(args, "{\"player\":%ld,\"code\":", x);
			paygate_json_add_string(args, a2);
			evbuffer_add(args, "}", 1);
			call(c, "login", args);
		} else if (strcmp(verb, "BUY") == 0 && parse_id(a1, &x) == 0 && parse_id(a2, &y) == 0) {
			evbuffer_add_printf(args, "{\"player\":%ld,\"item\":%ld,\"channel\":", x, y);
			paygate_json_add_string(args, a3 ? a3 : "app");
			evbuffer_add(args, "}", 1);
			call(c, "buy", args);
		} else if (strcmp(verb, "PRICE") == 0 && parse_id(a1, &x) == 0 && parse_id(a2, &y) == 0) {
			evbuffer_add_printf(args, "{\"item\":%ld,\"price\":%ld}", x, y);
			evbuffer_add(args, "", 1);
			if (paygate_emit(c->g->pg, "set_price", (const char *)evbuffer_pullup(args, -1)) < 0)
				answer(c, 503, "{\"error\":\"unavailable\"}");
			else
				answer(c, 200, "{\"sent\":true}");
		} else {
			answer(
			    c, 400,
			    "{\"error\":\"bad_command\",\"message\":"
			    "\"LOGIN <player> <code> | BUY <player> <item> [app|miniprogram] | INV <player> | PRICE <item> <fen> | RELOAD | QUIT\"}");
		}
		evbuffer_free(args);
	}
}

/* The player hung up (or sent garbage): drop the connection; answers still due are dropped too. */
static void hang_up(struct client *c)
{
	bufferevent_free(c->bev);
	c->bev = NULL;
	if (c->pending == 0) /* otherwise the last answer frees it */
		client_free(c);
}

static void on_read(struct bufferevent *bev, void *arg)
{
	struct client *c = arg;
	struct evbuffer *in = bufferevent_get_input(bev);
	char *line;
	size_t n;
	while ((line = evbuffer_readln(in, &n, EVBUFFER_EOL_CRLF))) {
		handle(c, line);
		free(line);
	}
	if (evbuffer_get_length(in) > 4096)
		hang_up(c); /* a line that never ends */
}

static void on_client_event(struct bufferevent *bev, short what, void *arg)
{
	(void)bev;
	if (what & (BEV_EVENT_EOF | BEV_EVENT_ERROR))
		hang_up(arg);
}

static void on_accept(struct evconnlistener *l, evutil_socket_t fd, struct sockaddr *sa, int salen, void *arg)
{
	struct game *g = arg;
	struct client *c = calloc(1, sizeof *c);
	(void)l;
	(void)sa;
	(void)salen;
	if (!c || !(c->bev = bufferevent_socket_new(g->base, fd, BEV_OPT_CLOSE_ON_FREE))) {
		evutil_closesocket(fd);
		free(c);
		return;
	}
	c->g = g;
	c->next = g->clients;
	if (c->next)
		c->next->prev = c;
	g->clients = c;
	bufferevent_setcb(c->bev, on_read, NULL, on_client_event, c);
	bufferevent_enable(c->bev, EV_READ | EV_WRITE);
}

/* ---- the game's HTTP port: its own route, and paygate's for the rest ---- */

static void on_http(struct evhttp_request *req, void *arg)
{
	struct game *g = arg;
	const char *path = evhttp_uri_get_path(evhttp_request_get_evhttp_uri(req));

	if (path && strcmp(path, "/game/status") == 0) {
		struct evbuffer *b = evbuffer_new();
		int players = 0;
		for (struct stack *s = g->inv.stacks; s; s = s->next)
			players++;
		if (b)
			evbuffer_add_printf(b, "{\"stacks\":%d,\"shop_generation\":%lld}\n", players,
			                    paygate_generation(g->pg));
		evhttp_send_reply(req, 200, "OK", b);
		if (b)
			evbuffer_free(b);
		return;
	}
	paygate_handle_request(g->pg, req);
}

/* ---- start and stop ---- */

static void on_shop_stopped(void *arg)
{
	struct game *g = arg;
	event_base_loopexit(g->base, NULL);
}

/* Graceful: no new players, the shop finishes what it is doing (at most 5 s), then the loop ends. */
static void game_stop(struct game *g)
{
	if (g->stopping++)
		return;
	printf("game: stopping\n");
	fflush(stdout);
	evconnlistener_disable(g->listener);
	paygate_shutdown(g->pg, 5000, on_shop_stopped, g);
}

static void on_signal(evutil_socket_t sig, short what, void *arg)
{
	(void)sig;
	(void)what;
	game_stop(arg);
}

/* paygate's log lines, tagged, on the game's stderr. */
static void shop_log(void *arg, const char *line)
{
	(void)arg;
	fprintf(stderr, "[shop] %s\n", line);
}

static int start(struct game *g, const char *config, int port, int http_port)
{
	struct paygate_function fns[] = { { "deliver", inventory_deliver, &g->inv }, { NULL, NULL, NULL } };
	struct paygate_options o = { 0 };
	struct sockaddr_in sin = { 0 };
	char err[2048];

	o.config_path = config;
	o.lualib_dir = PAYGATE_LUALIB;
	o.log_fn = shop_log;
	o.functions = fns;
	if (!(g->pg = paygate_new(g->base, &o, err, sizeof err))) {
		fprintf(stderr, "game: the shop did not start: %s\n", err);
		return -1;
	}
	g->http = evhttp_new(g->base);
	struct evhttp_bound_socket *hs =
	    g->http ? evhttp_bind_socket_with_handle(g->http, "127.0.0.1", (ev_uint16_t)http_port) : NULL;
	if (!hs) {
		fprintf(stderr, "game: cannot listen on 127.0.0.1:%d (http)\n", http_port);
		return -1;
	}
	evhttp_set_max_headers_size(g->http, 16384); /* evhttp's defaults are unbounded */
	evhttp_set_max_body_size(g->http, 65536);
	evhttp_set_timeout(g->http, 10);
	evhttp_set_gencb(g->http, on_http, g);

	sin.sin_family = AF_INET;
	sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	sin.sin_port = htons((uint16_t)port);
	g->listener = evconnlistener_new_bind(g->base, on_accept, g, LEV_OPT_CLOSE_ON_FREE | LEV_OPT_REUSEABLE, -1,
	                                      (struct sockaddr *)&sin, sizeof sin);
	if (!g->listener) {
		fprintf(stderr, "game: cannot listen on 127.0.0.1:%d\n", port);
		return -1;
	}
	struct sockaddr_in bound = { 0 }, hbound = { 0 };
	socklen_t len = sizeof bound;
	getsockname(evconnlistener_get_fd(g->listener), (struct sockaddr *)&bound, &len);
	len = sizeof hbound;
	getsockname(evhttp_bound_socket_get_fd(hs), (struct sockaddr *)&hbound, &len);
	g->sigint = evsignal_new(g->base, SIGINT, on_signal, g);
	g->sigterm = evsignal_new(g->base, SIGTERM, on_signal, g);
	if (!g->sigint || !g->sigterm || evsignal_add(g->sigint, NULL) < 0 || evsignal_add(g->sigterm, NULL) < 0)
		return -1;
	printf("game listening on 127.0.0.1:%d, http 127.0.0.1:%d\n", ntohs(bound.sin_port), ntohs(hbound.sin_port));
	fflush(stdout);
	return 0;
}

/* Everything is freed, the shop first: requests it still holds on our evhttp get their answer. */
static void cleanup(struct game *g)
{
	paygate_free(g->pg);
	while (g->clients) {
		g->clients->pending = 0;
		client_free(g->clients);
	}
	if (g->http)
		evhttp_free(g->http);
	if (g->listener)
		evconnlistener_free(g->listener);
	if (g->sigint)
		event_free(g->sigint);
	if (g->sigterm)
		event_free(g->sigterm);
	inventory_free(&g->inv);
	event_base_free(g->base);
}

/* A port number 0..65535: 0 on success. */
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
		else {
			fprintf(stderr, "usage: game --config FILE [--port PORT] [--http PORT]\n");
			return 2;
		}
	}
	signal(SIGPIPE, SIG_IGN);
	if (!(g.base = event_base_new()))
		return 1;
	if (start(&g, config, (int)port, (int)http_port) < 0)
		rc = 1;
	else
		event_base_dispatch(g.base);
	cleanup(&g);
	return rc;
}

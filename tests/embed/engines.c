/* engines.c — the embedding API from a host's side: two engines on one loop, two on their own threads, calls both ways, free. */
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include <arpa/inet.h>
#include <netinet/in.h>

#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/http.h>
#include <lauxlib.h>

#include <paygate.h>

#ifndef PAYGATE_LUALIB
#define PAYGATE_LUALIB NULL /* pkg-config --variable=lualibdir paygate, given by tests/embed/run.sh */
#endif

/*
** Built from the installed library with pkg-config, like any host program.
** Each engine gets its own scripts, database and host functions in a
** temporary directory; nothing listens anywhere. Prints "ok - ..." lines and
** "N passed, N failed".
*/

static int passed, failed;

static void check(int cond, const char *name)
{
	printf("%s - %s\n", cond ? "ok" : "not ok", name);
	if (cond)
		passed++;
	else
		failed++;
}

static const char SCRIPT[] =
    "local app = require 'paygate'\n"
    "app.migration(1, 'hits', 'CREATE TABLE hits(n INTEGER); CREATE TABLE bumps(v TEXT)')\n"
    "app.export('whoami', function() return { name = config.name } end)\n"
    "app.export('hit', function() db.exec('INSERT INTO hits(n) VALUES (1)')\n"
    "  return db.one('SELECT count(*) AS n FROM hits') end)\n"
    "app.export('tag', function() return host.tag({ asked_by = config.name }) end)\n"
    "app.export('late', function(a) return host.late(a) end)\n"
    "app.export('echo', function(a) return a end)\n"
    "app.export('module', function() local ok, m = pcall(require, 'hostmath')\n"
    "  return { has = ok, answer = ok and m.answer() or nil } end)\n"
    "app.export('fail', function() app.fail(409, 'conflict', 'not now') end)\n"
    "app.export('boom', function() error('boom') end)\n"
    "app.export('loop', function() while true do end end)\n"
    "app.export('nap', function(a) clock.sleep(a.ms) return { slept = a.ms } end)\n"
    "app.export('bumps', function() return db.one('SELECT count(*) AS n, max(v) AS v FROM bumps') end)\n"
    "app.on('bump', function(e) db.exec('INSERT INTO bumps(v) VALUES (?)', e.v) end)\n"
    "app.on('bump', function(e) error('a second handler fails; the first one still counted') end)\n"
    "app.get('/hello', function() return 200, { hello = config.name } end)\n"
    "app.get('/slow', function() host.started({}) clock.sleep(60000) return 200, {} end)\n";

/* ---- a Lua module in C: hostmath.answer() returns the number given as the module's arg ---- */

static int hostmath_answer(lua_State *L)
{
	lua_pushinteger(L, *(const int *)lua_touserdata(L, lua_upvalueindex(1)));
	return 1;
}

static int open_hostmath(lua_State *L, void *arg)
{
	lua_newtable(L);
	lua_pushlightuserdata(L, arg);
	lua_pushcclosure(L, hostmath_answer, 1);
	lua_setfield(L, -2, "answer");
	return 1;
}

/* ---- a world per engine: DIR/a and DIR/b ---- */

static int write_file(const char *path, const char *text)
{
	FILE *f = fopen(path, "w");
	if (!f)
		return -1;
	fputs(text, f);
	return fclose(f);
}

/* dir/{scripts/init.lua, paygate.conf.lua}; returns 0. */
static int make_world(const char *dir, const char *name)
{
	char path[512], conf[1024];
	snprintf(path, sizeof path, "%s/scripts", dir);
	if (mkdir(path, 0700) < 0)
		return -1;
	snprintf(path, sizeof path, "%s/scripts/init.lua", dir);
	if (write_file(path, SCRIPT) < 0)
		return -1;
	snprintf(conf, sizeof conf,
	         "scripts = 'scripts'\ndatabase = 'shop.db'\nwatch = false\nlog_level = 'info'\n"
	         "script = { max_instructions = 2000000 }\napp = { name = '%s' }\n",
	         name);
	snprintf(path, sizeof path, "%s/paygate.conf.lua", dir);
	return write_file(path, conf);
}

/* ---- the host side ---- */

struct result {
	int done, status;
	char json[1024];
};

static void on_result(void *arg, int status, const char *json)
{
	struct result *r = arg;
	r->done++;
	r->status = status;
	snprintf(r->json, sizeof r->json, "%s", json);
}

static int tag(void *arg, const char *json, struct evbuffer *reply)
{
	char who[64];
	if (paygate_json_get(json, "asked_by", who, sizeof who) < 0)
		return evbuffer_add_printf(reply, "asked_by is missing"), -1;
	evbuffer_add_printf(reply, "{\"tag\":\"%s\",\"asked_by\":", (const char *)arg);
	paygate_json_add_string(reply, who);
	evbuffer_add(reply, "}", 1);
	return 0;
}

static int late(void *arg, const char *json, struct evbuffer *reply)
{
	(void)arg;
	evbuffer_add_printf(reply, "{\"late\":true,\"got\":%s}", json);
	return 0;
}

static int64_t now_ms(void)
{
	struct timeval tv;
	gettimeofday(&tv, NULL);
	return (int64_t)tv.tv_sec * 1000 + tv.tv_usec / 1000;
}

/* Run the loop until *flag is set or ms passed; returns *flag. */
static int64_t mono_us(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static int run_until(struct event_base *base, const int *flag, int ms)
{
	int64_t end = now_ms() + ms;
	while (!*flag && now_ms() < end)
		event_base_loop(base, EVLOOP_ONCE | EVLOOP_NONBLOCK), usleep(1000);
	return *flag;
}

static struct result *call(struct event_base *base, struct paygate *pg, const char *fn, const char *args)
{
	static struct result r;
	memset(&r, 0, sizeof r);
	if (paygate_call(pg, fn, args, on_result, &r) < 0)
		return &r;
	run_until(base, &r.done, 10000);
	return &r;
}

static int contains(const struct result *r, int status, const char *text)
{
	return r->done == 1 && r->status == status && strstr(r->json, text) != NULL;
}

static int log_lines;

static void count_log(void *arg, const char *line)
{
	(void)arg;
	if (strstr(line, "level=") && strstr(line, "ts="))
		log_lines++;
}

static int shut_down;

static void on_shut_down(void *arg)
{
	(void)arg;
	shut_down = 1;
}

/* ---- paygate's routes on the host's own evhttp ---- */

static int handler_started;

static int started(void *arg, const char *json, struct evbuffer *reply)
{
	(void)arg;
	(void)json;
	(void)reply;
	handler_started = 1;
	return 0;
}

struct answer {
	int done, status;
	char body[256];
};

static void on_answer(struct evhttp_request *req, void *arg)
{
	struct answer *a = arg;
	a->done = 1;
	if (!req)
		return;
	a->status = evhttp_request_get_response_code(req);
	struct evbuffer *in = evhttp_request_get_input_buffer(req);
	size_t n = evbuffer_get_length(in);
	n = n < sizeof a->body - 1 ? n : sizeof a->body - 1;
	evbuffer_remove(in, a->body, n);
	a->body[n] = '\0';
}

/* The host's generic callback: /host/ is its own, everything else is paygate's. */
static void host_gencb(struct evhttp_request *req, void *arg)
{
	const char *path = evhttp_uri_get_path(evhttp_request_get_evhttp_uri(req));
	if (path && strncmp(path, "/host/", 6) == 0) {
		evhttp_send_reply(req, 200, "OK", NULL);
		return;
	}
	paygate_handle_request(arg, req);
}

static struct answer *get(struct event_base *base, struct evhttp_connection *conn, const char *path, int wait_ms)
{
	static struct answer a;
	memset(&a, 0, sizeof a);
	struct evhttp_request *req = evhttp_request_new(on_answer, &a);
	evhttp_add_header(evhttp_request_get_output_headers(req), "Host", "127.0.0.1");
	evhttp_make_request(conn, req, EVHTTP_REQ_GET, path);
	if (wait_ms)
		run_until(base, &a.done, wait_ms);
	return &a;
}

/*
** Engine c serves on the host's evhttp; a request still waiting in its
** handler when the engine is freed is answered 503 and the host's evhttp
** and connection stay usable.
*/
static void host_evhttp(struct event_base *base, const char *root)
{
	char dir[256], conf[512], err[1024];
	struct sockaddr_in sin;
	socklen_t len = sizeof sin;
	struct paygate_function fc[] = { { "started", started, NULL }, { NULL, NULL, NULL } };
	struct paygate_options oc = { .config_path = conf, .lualib_dir = PAYGATE_LUALIB, .functions = fc };
	struct evhttp *http = evhttp_new(base);
	struct evhttp_bound_socket *bs = http ? evhttp_bind_socket_with_handle(http, "127.0.0.1", 0) : NULL;

	snprintf(dir, sizeof dir, "%s/c", root);
	snprintf(conf, sizeof conf, "%s/paygate.conf.lua", dir);
	struct paygate *c = bs && mkdir(dir, 0700) == 0 && make_world(dir, "charlie") == 0
	                        ? paygate_new(base, &oc, err, sizeof err)
	                        : NULL;
	if (!c || getsockname(evhttp_bound_socket_get_fd(bs), (struct sockaddr *)&sin, &len) < 0) {
		check(0, "an engine serves on the host's evhttp");
		if (http)
			evhttp_free(http);
		paygate_free(c);
		return;
	}
	evhttp_set_gencb(http, host_gencb, c);
	struct evhttp_connection *conn = evhttp_connection_base_new(base, NULL, "127.0.0.1", ntohs(sin.sin_port));
	struct answer *a = get(base, conn, "/hello", 5000);
	int hello = a->status == 200 && strstr(a->body, "charlie");
	a = get(base, conn, "/healthz", 5000);
	int health = a->status == 200 && strstr(a->body, "\"generation\":1");
	a = get(base, conn, "/host/x", 5000);
	check(hello && health && a->status == 200,
	      "paygate_handle_request serves the scripts' and built-in routes on the host's evhttp, beside its own");

	a = get(base, conn, "/slow", 0);
	run_until(base, &handler_started, 5000);
	paygate_free(c);
	run_until(base, &a->done, 5000);
	check(handler_started && a->status == 503 && strstr(a->body, "shutting_down"),
	      "a request waiting on the host's evhttp when the engine is freed is answered 503");
	a = get(base, conn, "/host/after", 5000);
	check(a->status == 200, "the host's evhttp keeps working after the engine is gone");
	evhttp_connection_free(conn);
	evhttp_free(http);
}

/* ---- the JSON helpers, without any engine ---- */

static void json_helpers(void)
{
	char out[64];
	const char *j =
	    "{ \"a\" : 42, \"s\":\"x\\\"y\\u00e9\\ud83d\\ude00\", \"o\":{\"a\":1},\"n\":null,\"t\":[1,{\"b\":2}] }";
	struct evbuffer *b = evbuffer_new();

	check(paygate_json_get(j, "a", out, sizeof out) == 2 && strcmp(out, "42") == 0 &&
	          paygate_json_get(j, "s", out, sizeof out) > 0 && strcmp(out, "x\"y\xc3\xa9\xf0\x9f\x98\x80") == 0 &&
	          paygate_json_get(j, "o", out, sizeof out) > 0 && strcmp(out, "{\"a\":1}") == 0 &&
	          paygate_json_get(j, "n", out, sizeof out) == 4 && paygate_json_get(j, "t", out, sizeof out) > 0,
	      "paygate_json_get reads top-level members: numbers, unescaped strings, raw objects");
	check(paygate_json_get(j, "b", out, sizeof out) < 0 && paygate_json_get("{\"a\":1", "a", out, sizeof out) < 0 &&
	          paygate_json_get("[1]", "a", out, sizeof out) < 0 &&
	          paygate_json_get("{\"a\":tru}", "a", out, sizeof out) < 0 &&
	          paygate_json_get("{\"a\":\"abc\"}", "a", out, 3) < 0 &&
	          paygate_json_get("{\"a\":1} x", "a", out, 9) < 0,
	      "paygate_json_get refuses missing members, malformed JSON and values that do not fit");
	paygate_json_add_string(b, "q\"\\\n\x01z");
	evbuffer_add(b, "", 1);
	check(strcmp((const char *)evbuffer_pullup(b, -1), "\"q\\\"\\\\\\n\\u0001z\"") == 0,
	      "paygate_json_add_string escapes quotes, backslashes and control bytes");
	evbuffer_free(b);
}

/* ---- own-thread mode: two engines, each on a thread of its own, the host on this thread ---- */

static pthread_t host_thread;
static int host_fn_elsewhere; /* a host function ran on another thread than the host's */

static int tag_here(void *arg, const char *json, struct evbuffer *reply)
{
	if (!pthread_equal(pthread_self(), host_thread))
		host_fn_elsewhere++;
	return tag(arg, json, reply);
}

/* Poll both engines' descriptors and dispatch, until *flag is set or ms passed; returns *flag. */
static int pump(struct paygate *c, struct paygate *d, const int *flag, int ms)
{
	int64_t end = now_ms() + ms;
	while (!*flag && now_ms() < end) {
		struct pollfd fds[2] = { { .fd = c ? paygate_fd(c) : -1, .events = POLLIN },
			                 { .fd = d ? paygate_fd(d) : -1, .events = POLLIN } };
		if (poll(fds, 2, 50) < 0)
			break;
		if (c && (fds[0].revents & POLLIN))
			paygate_dispatch_completions(c);
		if (d && (fds[1].revents & POLLIN))
			paygate_dispatch_completions(d);
	}
	return *flag;
}

static struct result *tcall(struct paygate *pg, const char *fn, const char *args)
{
	static struct result r;
	memset(&r, 0, sizeof r);
	if (paygate_call(pg, fn, args, on_result, &r) < 0)
		return &r;
	pump(pg, NULL, &r.done, 10000);
	return &r;
}

/* Callers on other threads: each makes 25 calls to "hit"; results come back on the host's thread. */
struct caller {
	struct paygate *pg;
	struct result results[25];
	int refused;
};

static void *caller_main(void *arg)
{
	struct caller *k = arg;
	for (int i = 0; i < 25; i++)
		if (paygate_call(k->pg, "hit", NULL, on_result, &k->results[i]) < 0)
			k->refused++;
	return NULL;
}

static int results_done(struct caller *k, int n)
{
	int done = 0;
	for (int i = 0; i < n; i++)
		for (int j = 0; j < 25; j++)
			done += k[i].results[j].done == 1 && k[i].results[j].status == 200;
	return done;
}

struct freeing {
	struct paygate *pg;
	int done;
};

static void free_engine(void *arg, int status, const char *json)
{
	struct freeing *f = arg;
	(void)status;
	(void)json;
	f->done++;
	paygate_free(f->pg);
}

static void own_threads(const char *root)
{
	char dir_c[256], dir_d[256], conf_c[512], conf_d[512], err[1024];
	struct paygate_function fc[] = { { "tag", tag_here, "C" }, { NULL, NULL, NULL } };
	struct paygate_function fd[] = { { "tag", tag_here, "D" }, { NULL, NULL, NULL } };
	struct result *r;

	host_thread = pthread_self();
	snprintf(dir_c, sizeof dir_c, "%s/thread-c", root);
	snprintf(dir_d, sizeof dir_d, "%s/thread-d", root);
	snprintf(conf_c, sizeof conf_c, "%s/paygate.conf.lua", dir_c);
	snprintf(conf_d, sizeof conf_d, "%s/paygate.conf.lua", dir_d);
	if (mkdir(dir_c, 0700) < 0 || mkdir(dir_d, 0700) < 0 || make_world(dir_c, "charlie") < 0 ||
	    make_world(dir_d, "delta") < 0) {
		check(0, "own-thread set-up");
		return;
	}
	struct paygate_options oc = { .config_path = conf_c,
		                      .lualib_dir = PAYGATE_LUALIB,
		                      .functions = fc,
		                      .log_file = stderr };
	struct paygate_options od = { .config_path = conf_d,
		                      .lualib_dir = PAYGATE_LUALIB,
		                      .functions = fd,
		                      .log_file = stderr };
	struct paygate *c = paygate_start_thread(&oc, err, sizeof err);
	if (!c)
		fprintf(stderr, "engine c: %s\n", err);
	struct paygate *d = paygate_start_thread(&od, err, sizeof err);
	if (!d)
		fprintf(stderr, "engine d: %s\n", err);
	check(c && d && paygate_fd(c) >= 0 && paygate_fd(d) >= 0 && paygate_fd(c) != paygate_fd(d) &&
	          paygate_generation(c) == 1 && paygate_generation(d) == 1,
	      "own-thread mode: two engines, each on its own thread, each with its own descriptor");
	if (!c || !d) {
		paygate_free(c);
		paygate_free(d);
		return;
	}
	r = tcall(c, "whoami", NULL);
	int charlie = contains(r, 200, "\"charlie\"");
	r = tcall(d, "whoami", NULL);
	check(charlie && contains(r, 200, "\"delta\""), "own-thread mode: each engine runs its own scripts and config");

	struct result pending = { 0 };
	paygate_call(c, "whoami", NULL, on_result, &pending);
	usleep(100 * 1000);
	int not_yet = pending.done == 0; /* done on paygate's thread, but handed over only by a dispatch */
	pump(c, NULL, &pending.done, 5000);
	check(not_yet && pending.done == 1,
	      "own-thread mode: a result reaches the callback only inside paygate_dispatch_completions");

	r = tcall(c, "tag", NULL);
	int tag_c = contains(r, 200, "\"tag\":\"C\"") && strstr(r->json, "\"asked_by\":\"charlie\"");
	r = tcall(d, "tag", NULL);
	check(tag_c && contains(r, 200, "\"tag\":\"D\"") && host_fn_elsewhere == 0,
	      "own-thread mode: host functions are per engine and run on the host's thread, never on paygate's");

	struct caller k[4];
	pthread_t tids[4];
	memset(k, 0, sizeof k);
	for (int i = 0; i < 4; i++) {
		k[i].pg = c;
		pthread_create(&tids[i], NULL, caller_main, &k[i]);
	}
	for (int i = 0; i < 4; i++)
		pthread_join(tids[i], NULL);
	int64_t end = now_ms() + 20000;
	while (results_done(k, 4) < 100 && now_ms() < end) {
		int none = 0;
		pump(c, NULL, &none, 50);
	}
	r = tcall(c, "hit", NULL);
	int hundred = contains(r, 200, "\"n\":101");
	r = tcall(d, "hit", NULL);
	check(results_done(k, 4) == 100 && k[0].refused + k[1].refused + k[2].refused + k[3].refused == 0 && hundred &&
	          contains(r, 200, "\"n\":1"),
	      "own-thread mode: paygate_call from four other threads at once: 100 results, 100 writes, "
	      "none in the other engine's database");

	int reg = paygate_register(d, "late", late, NULL);
	r = tcall(d, "late", "{\"k\":2}");
	check(reg == 0 && contains(r, 200, "\"late\":true") && paygate_reload(c, err, sizeof err) == 2 &&
	          paygate_generation(c) == 2 && paygate_generation(d) == 1,
	      "own-thread mode: register and reload run on the engine's thread; reloading one leaves the other alone");

	memset(&pending, 0, sizeof pending);
	paygate_call(c, "nap", "{\"ms\":60000}", on_result, &pending);
	usleep(50 * 1000);
	paygate_free(c);
	check(pending.done == 1 && pending.status == 503 && strstr(pending.json, "cancelled"),
	      "own-thread mode: paygate_free joins the thread; a pending call gets its 503 from inside it");
	r = tcall(d, "whoami", NULL);
	check(contains(r, 200, "delta"), "own-thread mode: the other engine keeps working after one is freed");

	/* A callback that frees the engine while more results are queued behind it. */
	char dir_e[256], conf_e[512];
	snprintf(dir_e, sizeof dir_e, "%s/thread-e", root);
	snprintf(conf_e, sizeof conf_e, "%s/paygate.conf.lua", dir_e);
	struct paygate_options oe = { .config_path = conf_e, .lualib_dir = PAYGATE_LUALIB, .log_file = stderr };
	struct paygate *e = mkdir(dir_e, 0700) == 0 && make_world(dir_e, "echo") == 0
	                        ? paygate_start_thread(&oe, err, sizeof err)
	                        : NULL;
	struct freeing f = { .pg = e };
	struct result after[3];
	memset(after, 0, sizeof after);
	if (e) {
		paygate_call(e, "whoami", NULL, free_engine, &f);
		for (int i = 0; i < 3; i++)
			paygate_call(e, "whoami", NULL, on_result, &after[i]);
		usleep(200 * 1000); /* all four done on paygate's thread, queued for us */
		pump(e, NULL, &f.done, 5000);
	}
	check(e && f.done == 1 && after[0].done == 1 && after[1].done == 1 && after[2].done == 1,
	      "own-thread mode: a callback may free the engine; the results queued behind it still come, once each");

	shut_down = 0;
	paygate_shutdown(d, 5000, on_shut_down, NULL);
	int not_inside = shut_down == 0;
	pump(d, NULL, &shut_down, 6000);
	check(not_inside && shut_down && paygate_emit(d, "bump", NULL) < 0,
	      "own-thread mode: shutdown's done comes through the dispatch; events are refused afterwards");
	paygate_free(d);
}

int main(int argc, char **argv)
{
	char dir_a[256], dir_b[256], conf_a[512], conf_b[512], err[1024];
	struct event_base *base = event_base_new();
	struct result *r;
	struct result pending = { 0 };

	json_helpers();
	if (argc != 2) {
		fprintf(stderr, "usage: engines EMPTY_DIR\n");
		return 2;
	}
	snprintf(dir_a, sizeof dir_a, "%s/a", argv[1]);
	snprintf(dir_b, sizeof dir_b, "%s/b", argv[1]);
	if (!base || mkdir(dir_a, 0700) < 0 || mkdir(dir_b, 0700) < 0 || make_world(dir_a, "alpha") < 0 ||
	    make_world(dir_b, "bravo") < 0) {
		printf("not ok - set-up\n0 passed, 1 failed\n");
		return 1;
	}
	snprintf(conf_a, sizeof conf_a, "%s/paygate.conf.lua", dir_a);
	snprintf(conf_b, sizeof conf_b, "%s/paygate.conf.lua", dir_b);

	struct paygate_function fa[] = { { "tag", tag, "A" }, { NULL, NULL, NULL } };
	struct paygate_function fb[] = { { "tag", tag, "B" }, { NULL, NULL, NULL } };
	static int forty_two = 42;
	struct paygate_lua_module ma[] = { { "hostmath", open_hostmath, &forty_two }, { NULL, NULL, NULL } };
	struct paygate_options oa = { .config_path = conf_a,
		                      .lualib_dir = PAYGATE_LUALIB,
		                      .functions = fa,
		                      .lua_modules = ma,
		                      .log_fn = count_log };
	struct paygate_options ob = { .config_path = conf_b,
		                      .lualib_dir = PAYGATE_LUALIB,
		                      .functions = fb,
		                      .log_file = stderr };
	struct paygate *a = paygate_new(base, &oa, err, sizeof err);
	if (!a)
		fprintf(stderr, "engine a: %s\n", err);
	struct paygate *b = paygate_new(base, &ob, err, sizeof err);
	if (!b)
		fprintf(stderr, "engine b: %s\n", err);
	check(a && b && paygate_generation(a) == 1 && paygate_generation(b) == 1,
	      "two engines start on one event_base, each with its own config, scripts and database");
	if (!a || !b) {
		printf("%d passed, %d failed\n", passed, failed + 1);
		return 1;
	}

	r = call(base, a, "whoami", NULL);
	int alpha = contains(r, 200, "\"alpha\"");
	r = call(base, b, "whoami", NULL);
	check(alpha && contains(r, 200, "\"bravo\""), "each engine runs its own scripts with its own config");

	r = call(base, a, "tag", NULL);
	int tag_a = contains(r, 200, "\"tag\":\"A\"") && strstr(r->json, "\"asked_by\":\"alpha\"");
	r = call(base, b, "tag", NULL);
	check(tag_a && contains(r, 200, "\"tag\":\"B\""),
	      "host functions are per engine (same name, different C argument)");

	call(base, a, "hit", NULL);
	r = call(base, a, "hit", NULL);
	int two = contains(r, 200, "\"n\":2");
	r = call(base, b, "hit", NULL);
	check(two && contains(r, 200, "\"n\":1"), "databases are separate: two hits on a, one on b");

	memset(&pending, 0, sizeof pending);
	paygate_call(a, "whoami", NULL, on_result, &pending);
	int not_inside = pending.done == 0;
	run_until(base, &pending.done, 5000);
	check(not_inside && pending.done == 1, "the callback runs later from the loop, never inside paygate_call");

	r = call(base, a, "echo", "{\"x\":[1,2,{\"y\":\"z\"}],\"big\":9007199254740991}");
	check(contains(r, 200, "\"big\":9007199254740991") && strstr(r->json, "\"y\":\"z\""),
	      "arguments and results travel as JSON (integers stay exact)");
	r = call(base, a, "nope", NULL);
	check(contains(r, 404, "no_such_function"), "an unknown function answers 404 no_such_function");
	r = call(base, a, "module", NULL);
	int has = contains(r, 200, "\"has\":true") && strstr(r->json, "\"answer\":42");
	r = call(base, b, "module", NULL);
	check(has && contains(r, 200, "\"has\":false"),
	      "a Lua module in C (lua_modules) is required by that engine's scripts only, with its own arg");
	struct paygate_lua_module hiding[] = { { "init", open_hostmath, &forty_two }, { NULL, NULL, NULL } };
	struct paygate_options oh = { .config_path = conf_b,
		                      .lualib_dir = PAYGATE_LUALIB,
		                      .lua_modules = hiding,
		                      .log_file = stderr,
		                      .no_watch = 1 };
	struct paygate *hidden = paygate_new(base, &oh, err, sizeof err);
	check(!hidden && strstr(err, "would hide"), "a Lua module in C may not hide a script of the same name");
	paygate_free(hidden);
	r = call(base, a, "echo", "{not json");
	check(contains(r, 400, "invalid_arguments"), "arguments that are not JSON answer 400");
	r = call(base, a, "fail", NULL);
	check(contains(r, 409, "\"error\":\"conflict\"") && strstr(r->json, "not now"),
	      "app.fail(status, code, message) reaches the host as that status and error");
	r = call(base, a, "boom", NULL);
	check(contains(r, 500, "internal_error"), "a script error answers 500 (the traceback is in the log)");
	r = call(base, a, "loop", NULL);
	check(contains(r, 500, "script_timeout"), "a runaway function is stopped and answers 500 script_timeout");

	struct result nap = { 0 }, quick = { 0 };
	paygate_call(a, "nap", "{\"ms\":300}", on_result, &nap);
	paygate_call(b, "whoami", NULL, on_result, &quick);
	run_until(base, &quick.done, 5000);
	int b_first = quick.done && !nap.done;
	run_until(base, &nap.done, 5000);
	check(b_first && contains(&nap, 200, "\"slept\":300"),
	      "a call that waits (clock.sleep) blocks neither the loop nor the other engine");

	/* libevent's timers read the coarse monotonic clock, up to a tick (4 ms) behind the real one;
	   run_until wakes the loop every millisecond, so a timer checked on the coarse clock alone
	   would end many of these sleeps early. */
	int early = 0, naps = 0;
	for (int i = 0; i < 40; i++) {
		int64_t t0 = mono_us();
		r = call(base, a, "nap", "{\"ms\":7}");
		naps += contains(r, 200, "\"slept\":7");
		early += mono_us() - t0 < 7000;
	}
	check(naps == 40 && early == 0, "clock.sleep(ms) never returns before ms have passed");

	check(paygate_emit(a, "bump", "{\"v\":\"hello\"}") == 0 && paygate_emit(a, "nobody_listens", NULL) == 0,
	      "paygate_emit queues events (handled or not)");
	struct result ra = { 0 };
	for (int i = 0; i < 50 && !strstr(ra.json, "hello"); i++)
		ra = *call(base, a, "bumps", NULL);
	r = call(base, b, "bumps", NULL);
	check(strstr(ra.json, "\"n\":1") && strstr(ra.json, "hello") && contains(r, 200, "\"n\":0"),
	      "an event reaches its engine's app.on handlers only; a failing handler does not stop the others");

	r = call(base, b, "late", "{\"k\":1}");
	int before = contains(r, 500, "internal_error");
	int reg = paygate_register(b, "late", late, NULL);
	r = call(base, b, "late", "{\"k\":1}");
	int after = contains(r, 200, "\"late\":true") && strstr(r->json, "\"k\":1");
	paygate_register(b, "late", NULL, NULL);
	r = call(base, b, "late", NULL);
	check(before && reg == 0 && after && contains(r, 500, "internal_error") &&
	          paygate_register(b, "not a name", late, NULL) < 0,
	      "paygate_register after creation works at once, NULL removes, bad names are refused");

	char rerr[512];
	check(paygate_reload(a, rerr, sizeof rerr) == 2 && paygate_generation(a) == 2 && paygate_generation(b) == 1,
	      "reloading one engine leaves the other's generation alone");
	r = call(base, a, "hit", NULL);
	check(contains(r, 200, "\"n\":3"), "after a reload the data is still there");
	check(log_lines > 0, "log_fn receives the engine's log lines");

	memset(&pending, 0, sizeof pending);
	paygate_call(a, "nap", "{\"ms\":60000}", on_result, &pending);
	struct result never = { 0 };
	paygate_call(a, "whoami", NULL, on_result, &never); /* queued, not yet started */
	event_base_loop(base, EVLOOP_ONCE | EVLOOP_NONBLOCK);
	paygate_free(a);
	check(pending.done == 1 && pending.status == 503 && strstr(pending.json, "cancelled") && never.done == 1,
	      "calls pending at paygate_free get exactly one callback (503 cancelled when unfinished)");
	r = call(base, b, "whoami", NULL);
	check(contains(r, 200, "bravo"), "the other engine keeps working after one is freed");

	struct result slow = { 0 }, refused = { 0 };
	paygate_call(b, "nap", "{\"ms\":200}", on_result, &slow);
	event_base_loop(base, EVLOOP_ONCE | EVLOOP_NONBLOCK);
	paygate_shutdown(b, 5000, on_shut_down, NULL);
	paygate_call(b, "whoami", NULL, on_result, &refused);
	run_until(base, &shut_down, 6000);
	check(shut_down && contains(&slow, 200, "slept") && contains(&refused, 503, "shutting_down"),
	      "shutdown lets a call in flight finish, refuses new ones with 503, then calls done");
	check(paygate_emit(b, "bump", NULL) < 0, "events are refused while shutting down");
	paygate_free(b);
	host_evhttp(base, argv[1]);
	own_threads(argv[1]);
	event_base_free(base);
	printf("%d passed, %d failed\n", passed, failed);
	return failed ? 1 : 0;
}

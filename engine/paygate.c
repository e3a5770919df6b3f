/* paygate.c — the public API: create, listen, reload, shut down, free; calls both ways; JSON helpers. */
#include "paygate.h"

#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <curl/curl.h>
#include <event2/buffer.h>
#include <event2/http.h>

#include "engine.h"
#include "fetch.h"
#include "host.h"
#include "http.h"
#include "jobs.h"
#include "reload.h"
#include "script.h"
#include "secure.h"
#include "store.h"
#include "wxclient.h"

int64_t engine_now_ms(void)
{
	struct timeval tv;
	gettimeofday(&tv, NULL);
	return (int64_t)tv.tv_sec * 1000 + tv.tv_usec / 1000;
}

/*
** The engine behind the public handle, plus what only an embedding needs:
** the pending graceful shutdown (so paygate_free can cancel it) and the log
** stream made from the host's log callback.
*/
struct paygate {
	struct engine e;                   /* first: (struct engine *)pg is the engine */
	struct shutdown_state *shutdown;
	FILE *log_stream;                  /* fopencookie over log_sink, when opts->log_fn */
	struct log_sink *sink;
};

/* ---- the host's log callback, behind a FILE* so the logger stays one fprintf ---- */

struct log_sink {
	void (*fn)(void *arg, const char *line);
	void *arg;
	size_t len;
	char line[8200];                   /* log lines are at most 8 KiB */
};

static ssize_t sink_write(void *cookie, const char *buf, size_t n)
{
	struct log_sink *s = cookie;
	for (size_t i = 0; i < n; i++) {
		if (buf[i] == '\n') {
			s->line[s->len] = '\0';
			s->fn(s->arg, s->line);
			s->len = 0;
		} else if (s->len < sizeof s->line - 1) {
			s->line[s->len++] = buf[i];
		}
	}
	return (ssize_t)n;
}

static FILE *open_log(struct paygate *pg, const struct paygate_options *o)
{
	cookie_io_functions_t io = { .write = sink_write };
	if (!o->log_fn)
		return o->log_file ? o->log_file : stderr;
	if (!(pg->sink = calloc(1, sizeof *pg->sink)))
		return NULL;
	pg->sink->fn = o->log_fn;
	pg->sink->arg = o->log_arg;
	if (!(pg->log_stream = fopencookie(pg->sink, "w", io)))
		return NULL;
	setvbuf(pg->log_stream, NULL, _IOLBF, 0);
	return pg->log_stream;
}

/* ---- creation ---- */

/* Replace an owned config string with a copy of value (when given): 0, or -1 out of memory. */
static int override(char **field, const char *value)
{
	char *copy;
	if (!value)
		return 0;
	if (!(copy = strdup(value)))
		return -1;
	free(*field);
	*field = copy;
	return 0;
}

static int load_config(struct engine *e, const struct paygate_options *o, char *err, size_t errlen)
{
	if (config_defaults(&e->cfg) < 0)
		goto nomem;
	if (o->config_path && config_load(&e->cfg, o->config_path, err, errlen) < 0)
		return -1;
	if (o->listen && config_set_listen(&e->cfg, o->listen, err, errlen) < 0)
		return -1;
	if (override(&e->cfg.db_path, o->check_only ? ":memory:" : o->database) < 0 ||
	    override(&e->cfg.scripts_dir, o->scripts_dir) < 0 || override(&e->cfg.lualib_dir, o->lualib_dir) < 0)
		goto nomem;
	if (o->no_watch || o->check_only)
		e->cfg.watch = 0;
	return 0;
nomem:
	snprintf(err, errlen, "out of memory");
	return -1;
}

static int register_functions(struct engine *e, const struct paygate_function *f, char *err, size_t errlen)
{
	for (; f && f->name; f++) {
		if (host_register(e, f->name, f->fn, f->arg) < 0) {
			snprintf(err, errlen, "cannot register host function '%s' (names are [A-Za-z_][A-Za-z0-9_]*, "
			                      "at most 63 bytes)", f->name);
			return -1;
		}
	}
	return 0;
}

struct paygate *paygate_new(struct event_base *base, const struct paygate_options *opts, char *err, size_t errlen)
{
	static const struct paygate_options defaults;
	const struct paygate_options *o = opts ? opts : &defaults;
	struct paygate *pg = calloc(1, sizeof *pg);
	struct engine *e = &pg->e;
	FILE *log_out;

	if (!pg) {
		snprintf(err, errlen, "out of memory");
		return NULL;
	}
	if (errlen)
		err[0] = '\0';
	e->base = base;
	gettimeofday(&e->started, NULL);
	metrics_init(&e->metrics);
	curl_global_init(CURL_GLOBAL_DEFAULT);   /* reference counted by libcurl; undone in paygate_free */
	if (load_config(e, o, err, errlen) < 0)
		goto fail;
	if (!(log_out = open_log(pg, o)) || host_init(e) < 0 || sched_init(e) < 0 || !(e->fetch = fetch_new(e))) {
		snprintf(err, errlen, "out of memory");
		goto fail;
	}
	log_init(&e->log, e->cfg.log_level, log_out);
	if (register_functions(e, o->functions, err, errlen) < 0)
		goto fail;
	if (!(e->store = store_open(e, e->cfg.db_path, err, errlen)))
		goto fail;
	if (!(e->jobs = jobs_new(e, err, errlen)))
		goto fail;
	if (!(e->wxc = wxc_new(e, err, errlen)) && err[0])
		goto fail;
	if (secure_init(e, err, errlen) < 0)
		goto fail;
	if (http_init(e, err, errlen) < 0)
		goto fail;
	if (reload_run(e, "start", err, errlen) < 0)
		goto fail;
	if (e->cfg.watch && reload_watch_start(e, err, errlen) < 0)
		log_warn(&e->log, NULL, "not watching scripts for changes: %s", err);
	if (!o->check_only)
		jobs_kick(e->jobs);
	return pg;
fail:
	paygate_free(pg);
	return NULL;
}

struct paygate *paygate_new_ex(struct event_base *base, const char *config_path, const char *listen,
                               int check_only, char *err, size_t errlen)
{
	struct paygate_options o = { .config_path = config_path, .listen = listen, .check_only = check_only };
	return paygate_new(base, &o, err, errlen);
}

int paygate_listen(struct paygate *pg, char *err, size_t errlen)
{
	struct engine *e = &pg->e;
	if (http_listen(e, e->cfg.listen_host, e->cfg.listen_port, err, errlen) < 0)
		return -1;
	if (!e->cfg.admin_token && strncmp(e->cfg.listen_host, "127.", 4) != 0 &&
	    strcmp(e->cfg.listen_host, "::1") != 0 && strcmp(e->cfg.listen_host, "localhost") != 0)
		log_warn(&e->log, NULL, "listening on %s without admin.token_file: admin endpoints answer loopback "
		                        "peers only; behind a local reverse proxy configure a token", e->cfg.listen_host);
	return 0;
}

const char *paygate_host(const struct paygate *pg)
{
	return pg->e.cfg.listen_host;
}

int paygate_port(const struct paygate *pg)
{
	return pg->e.port;
}

void paygate_handle_request(struct paygate *pg, struct evhttp_request *req)
{
	struct engine *e = &pg->e;
	if (e->stopping) {
		struct evbuffer *b = evbuffer_new();
		if (b)
			evbuffer_add_printf(b, "{\"error\":\"shutting_down\",\"message\":\"the gateway is shutting down\"}");
		evhttp_add_header(evhttp_request_get_output_headers(req), "Content-Type", "application/json; charset=utf-8");
		evhttp_send_reply(req, 503, "Service Unavailable", b);
		if (b)
			evbuffer_free(b);
		return;
	}
	http_handle_request(e, req);
}

long long paygate_reload(struct paygate *pg, char *err, size_t errlen)
{
	struct engine *e = &pg->e;
	if (reload_run(e, "api", err, errlen) < 0)
		return -1;
	return (long long)e->gen->id;
}

long long paygate_generation(const struct paygate *pg)
{
	return pg->e.gen ? (long long)pg->e.gen->id : 0;
}

/* ---- calls both ways (host.c) ---- */

int paygate_register(struct paygate *pg, const char *name, paygate_host_fn fn, void *arg)
{
	return host_register(&pg->e, name, fn, arg);
}

int paygate_call(struct paygate *pg, const char *name, const char *json_args, paygate_call_cb cb, void *arg)
{
	return host_call(&pg->e, name, json_args, cb, arg);
}

int paygate_emit(struct paygate *pg, const char *event, const char *json)
{
	return host_emit(&pg->e, event, json);
}

/* ---- graceful shutdown ---- */

struct shutdown_state {
	struct paygate *pg;
	struct event *tick;
	int64_t deadline;
	void (*done)(void *);
	void *arg;
};

/* Requests, host calls and events, and jobs still running. */
static int busy(struct engine *e)
{
	return e->http_inflight + host_inflight(e) + (e->jobs ? jobs_running(e->jobs) : 0);
}

static void shutdown_tick(evutil_socket_t fd, short what, void *arg)
{
	struct shutdown_state *s = arg;
	struct engine *e = &s->pg->e;
	(void)fd;
	(void)what;
	if (busy(e) > 0 && engine_now_ms() < s->deadline)
		return;                        /* EV_PERSIST: look again in 50 ms */
	if (busy(e) > 0)
		log_warn(&e->log, NULL, "shutdown: %d requests, %d host calls and %d jobs still in flight at the deadline",
		         e->http_inflight, host_inflight(e), e->jobs ? jobs_running(e->jobs) : 0);
	event_free(s->tick);
	s->pg->shutdown = NULL;
	void (*done)(void *) = s->done;
	void *darg = s->arg;
	free(s);
	done(darg);
}

void paygate_shutdown(struct paygate *pg, int grace_ms, void (*done)(void *arg), void *arg)
{
	struct engine *e = &pg->e;
	struct shutdown_state *s;
	struct timeval tv = { 0, 50 * 1000 };

	e->stopping = 1;
	http_stop_accepting(e);
	reload_watch_stop(e);
	if (pg->shutdown)                  /* asked twice: the first one's done wins */
		return;
	s = calloc(1, sizeof *s);
	if (!s || !(s->tick = event_new(e->base, -1, EV_PERSIST, shutdown_tick, s))) {
		free(s);
		done(arg);
		return;
	}
	s->pg = pg;
	s->deadline = engine_now_ms() + grace_ms;
	s->done = done;
	s->arg = arg;
	pg->shutdown = s;
	event_add(s->tick, &tv);
	event_active(s->tick, EV_TIMEOUT, 0);
}

void paygate_free(struct paygate *pg)
{
	struct engine *e;
	if (!pg)
		return;
	e = &pg->e;
	e->stopping = 1;
	if (pg->shutdown) {
		event_free(pg->shutdown->tick);
		free(pg->shutdown);
		pg->shutdown = NULL;
	}
	reload_watch_stop(e);
	http_free(e);                      /* frees connections; their requests are cancelled via on_close */
	sched_cancel_all(e);               /* host-evhttp requests answered 503, host calls cancelled,
	                                      jobs still waiting re-queued at the next start */
	host_free(e);                      /* pending host calls get their result or 503 */
	if (e->gen) {
		struct script_gen *g = e->gen;
		e->gen = NULL;
		script_gen_unref(g);
	}
	fetch_free(e->fetch);
	jobs_free(e->jobs);
	wxc_free(e->wxc);
	secure_free(e);
	store_close(e->store);
	sched_free(e);
	metrics_free(&e->metrics);
	config_free(&e->cfg);
	curl_global_cleanup();
	if (pg->log_stream)
		fclose(pg->log_stream);
	free(pg->sink);
	free(pg);
}

/* ---- JSON helpers for host functions ---- */

int paygate_json_add_string(struct evbuffer *out, const char *s)
{
	static const char hex[] = "0123456789abcdef";
	int rc = evbuffer_add(out, "\"", 1);
	while (rc == 0 && *s) {
		size_t run = strcspn(s, "\"\\\x01\x02\x03\x04\x05\x06\x07\x08\t\n\x0b\x0c\r\x0e\x0f"
		                        "\x10\x11\x12\x13\x14\x15\x16\x17\x18\x19\x1a\x1b\x1c\x1d\x1e\x1f\x7f");
		rc = evbuffer_add(out, s, run);
		s += run;
		if (rc == 0 && *s) {
			unsigned char c = (unsigned char)*s++;
			char esc[6] = { '\\', (char)c, 0, 0, 0, 0 };
			if (c == '"' || c == '\\') {
				rc = evbuffer_add(out, esc, 2);
			} else {
				esc[1] = 'u'; esc[2] = '0'; esc[3] = '0'; esc[4] = hex[c >> 4]; esc[5] = hex[c & 15];
				rc = evbuffer_add(out, esc, 6);
			}
		}
	}
	return rc == 0 ? evbuffer_add(out, "\"", 1) : -1;
}

static const char *skip_ws(const char *p)
{
	while (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r')
		p++;
	return p;
}

static int hex4(const char *p, unsigned *out)
{
	unsigned v = 0;
	for (int i = 0; i < 4; i++) {
		char c = p[i];
		int d = c >= '0' && c <= '9' ? c - '0'
		      : c >= 'a' && c <= 'f' ? c - 'a' + 10
		      : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
		if (d < 0)
			return -1;
		v = v * 16 + (unsigned)d;
	}
	*out = v;
	return 0;
}

/* Encode code point cp as UTF-8 into out (4 bytes room); returns the length. */
static size_t put_utf8(unsigned cp, char *out)
{
	if (cp < 0x80) {
		out[0] = (char)cp;
		return 1;
	}
	if (cp < 0x800) {
		out[0] = (char)(0xC0 | (cp >> 6));
		out[1] = (char)(0x80 | (cp & 0x3F));
		return 2;
	}
	if (cp < 0x10000) {
		out[0] = (char)(0xE0 | (cp >> 12));
		out[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
		out[2] = (char)(0x80 | (cp & 0x3F));
		return 3;
	}
	out[0] = (char)(0xF0 | (cp >> 18));
	out[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
	out[2] = (char)(0x80 | ((cp >> 6) & 0x3F));
	out[3] = (char)(0x80 | (cp & 0x3F));
	return 4;
}

/* The code point of the \u escape at p (just after "\u"), surrogate pairs joined; advances *pp. 0 on error. */
static unsigned read_u_escape(const char **pp)
{
	const char *p = *pp;
	unsigned cp, lo;
	if (hex4(p, &cp) < 0)
		return 0;
	p += 4;
	if (cp >= 0xD800 && cp <= 0xDBFF) {
		if (p[0] != '\\' || p[1] != 'u' || hex4(p + 2, &lo) < 0 || lo < 0xDC00 || lo > 0xDFFF)
			return 0;
		cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
		p += 6;
	} else if (cp >= 0xDC00 && cp <= 0xDFFF) {
		return 0;
	}
	*pp = p;
	return cp;                         /* \u0000 is refused too: out is a C string */
}

/*
** Scan the JSON string at p (on its opening quote), decoding it into out
** (capacity cap) when out is non-NULL; *len gets the decoded length.
** Returns the byte after the closing quote, or NULL when malformed or
** when it does not fit.
*/
static const char *scan_string(const char *p, char *out, size_t cap, size_t *len)
{
	size_t n = 0;
	if (*p++ != '"')
		return NULL;
	for (;;) {
		unsigned char c = (unsigned char)*p++;
		char enc[4];
		size_t k = 1;
		if (c == '"')
			break;
		if (c < 0x20)
			return NULL;               /* the end of the text, or a raw control byte */
		enc[0] = (char)c;
		if (c == '\\') {
			c = (unsigned char)*p++;
			switch (c) {
			case '"': case '\\': case '/': enc[0] = (char)c; break;
			case 'b': enc[0] = '\b'; break;
			case 'f': enc[0] = '\f'; break;
			case 'n': enc[0] = '\n'; break;
			case 'r': enc[0] = '\r'; break;
			case 't': enc[0] = '\t'; break;
			case 'u': {
				unsigned cp = read_u_escape(&p);
				if (!cp)
					return NULL;
				k = put_utf8(cp, enc);
				break;
			}
			default: return NULL;
			}
		}
		if (out) {
			if (n + k >= cap)
				return NULL;
			memcpy(out + n, enc, k);
		}
		n += k;
	}
	if (out)
		out[n] = '\0';
	if (len)
		*len = n;
	return p;
}

static const char *skip_number(const char *p)
{
	if (*p == '-')
		p++;
	if (*p < '0' || *p > '9')
		return NULL;
	while (*p >= '0' && *p <= '9')
		p++;
	if (*p == '.') {
		if (*++p < '0' || *p > '9')
			return NULL;
		while (*p >= '0' && *p <= '9')
			p++;
	}
	if (*p == 'e' || *p == 'E') {
		p++;
		if (*p == '+' || *p == '-')
			p++;
		if (*p < '0' || *p > '9')
			return NULL;
		while (*p >= '0' && *p <= '9')
			p++;
	}
	return p;
}

/* The byte after the JSON value at p (after blanks), or NULL when malformed or nested too deep. */
static const char *skip_value(const char *p, int depth)
{
	p = skip_ws(p);
	if (depth > 64)
		return NULL;
	if (*p == '"')
		return scan_string(p, NULL, 0, NULL);
	if (*p == '{' || *p == '[') {
		int obj = *p == '{';
		char close = obj ? '}' : ']';
		p = skip_ws(p + 1);
		if (*p == close)
			return p + 1;
		for (;;) {
			if (obj) {
				if (!(p = scan_string(skip_ws(p), NULL, 0, NULL)))
					return NULL;
				p = skip_ws(p);
				if (*p++ != ':')
					return NULL;
			}
			if (!(p = skip_value(p, depth + 1)))
				return NULL;
			p = skip_ws(p);
			if (*p == close)
				return p + 1;
			if (*p++ != ',')
				return NULL;
		}
	}
	if (strncmp(p, "true", 4) == 0 || strncmp(p, "null", 4) == 0)
		return p + 4;
	if (strncmp(p, "false", 5) == 0)
		return p + 5;
	return skip_number(p);
}

/* Copy the value at p..end into out: a string decoded, anything else as its text. */
static int copy_value(const char *p, const char *end, char *out, size_t outlen)
{
	size_t n;
	if (*p == '"')
		return scan_string(p, out, outlen, &n) ? (int)n : -1;
	n = (size_t)(end - p);
	if (n >= outlen)
		return -1;
	memcpy(out, p, n);
	out[n] = '\0';
	return (int)n;
}

int paygate_json_get(const char *json, const char *key, char *out, size_t outlen)
{
	const char *p;
	int found = -1;

	if (!json || !key || !out || outlen == 0 || outlen > INT_MAX)
		return -1;
	p = skip_ws(json);
	if (*p++ != '{')
		return -1;
	p = skip_ws(p);
	if (*p == '}')
		return -1;
	for (;;) {
		char name[256];
		size_t nlen = 0;
		const char *after = scan_string(p, name, sizeof name, &nlen);
		int match = after && nlen == strlen(key) && strcmp(name, key) == 0;
		if (!after && !(after = scan_string(p, NULL, 0, NULL)))   /* a long name: not ours */
			return -1;
		p = skip_ws(after);
		if (*p++ != ':')
			return -1;
		p = skip_ws(p);
		const char *end = skip_value(p, 0);
		if (!end)
			return -1;
		if (match && found < 0 && (found = copy_value(p, end, out, outlen)) < 0)
			return -1;
		p = skip_ws(end);
		if (*p == '}')
			break;
		if (*p++ != ',')
			return -1;
		p = skip_ws(p);
	}
	return *skip_ws(p + 1) == '\0' ? found : -1;
}

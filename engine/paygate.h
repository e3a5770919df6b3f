/* paygate.h — the public API: run the paygate engine inside your own program, on its loop or beside it. */
#ifndef PAYGATE_H
#define PAYGATE_H

/**
 * @file paygate.h
 *
 * libpaygate runs the WeChat Pay gateway (HTTP routes, outbound HTTPS,
 * WeChat Pay signing, SQLite, durable jobs, hot-reloadable Lua scripts)
 * inside a host program: a game server, a shop server, or the paygate daemon
 * itself (engine/main.c). Three modes (docs/embedding.md has a table):
 *
 *   - libevent host: paygate_new(base, ...) on the host's event_base.
 *   - own thread: paygate_start_thread(...) for hosts on any other loop;
 *     one descriptor (paygate_fd) and paygate_dispatch_completions.
 *   - host-driven: paygate_new_driven(...), no thread; the host's loop waits
 *     on paygate_fd for at most paygate_timeout and calls paygate_run_once.
 *
 * The contract with the host (libevent host; the other modes say what differs):
 *
 *   - Everything runs on the host's event_base, from the host's
 *     event_base_dispatch(). paygate starts no threads, installs no signal
 *     handlers, never calls exit() and never blocks the loop.
 *   - An engine (struct paygate) owns all of its state: configuration, Lua
 *     VMs, database connection, curl handle, jobs, logger. Several engines
 *     may live in one process (two merchants, two apps) without sharing
 *     anything; engines on different event_bases may run on different
 *     threads, but one engine must only be used from the thread that runs
 *     its event_base.
 *   - Process-wide libraries: libcurl's global init is reference counted
 *     and thread-safe since 7.84.0 (paygate calls curl_global_init and
 *     curl_global_cleanup once per engine); OpenSSL 3 and SQLite initialise
 *     themselves; lua-cjson keeps its settings in each Lua VM. The host
 *     should ignore SIGPIPE (paygate writes to sockets that peers may close).
 *   - Errors are reported through return values and an `err` buffer that
 *     receives a message for a person; no function prints to stdout.
 *
 * A minimal host:
 *
 * @code
 *   struct event_base *base = event_base_new();
 *   struct paygate_options o = { .config_path = "paygate.conf.lua" };
 *   char err[1024];
 *   struct paygate *pg = paygate_new(base, &o, err, sizeof err);
 *   if (!pg || paygate_listen(pg, err, sizeof err) < 0) { fprintf(stderr, "%s\n", err); ... }
 *   event_base_dispatch(base);
 *   paygate_free(pg);
 *   event_base_free(base);
 * @endcode
 */

#include <stddef.h>
#include <stdio.h>

#include <event2/event.h>

#ifdef __cplusplus
extern "C" {
#endif

#define PAYGATE_VERSION     "0.1.0"
/** The version as a number: 0xMMmmpp. */
#define PAYGATE_VERSION_NUM 0x000100

struct evbuffer;
struct evhttp_request;
struct lua_State;

/** An engine: one script generation at a time, its database, jobs and HTTP server. */
struct paygate;

/**
 * A C function of the host that scripts call as `host.<name>(table)`.
 *
 * @param arg the pointer given at registration.
 * @param json_args the script's argument encoded as JSON (an object for a
 *        table, "null" when the script passed nothing). Valid during the call.
 * @param reply an empty buffer owned by paygate: append the JSON result (or
 *        nothing, which scripts see as nil). On failure append a message
 *        for a person instead.
 * @return 0 on success; any other value raises a Lua error in the script
 *         with the text of `reply` (a fulfillment job then retries later).
 *
 * The call is synchronous and runs inside the script's coroutine: keep it
 * short and never wait in it. From inside it the host may call
 * paygate_call, paygate_emit, paygate_register and paygate_reload on the
 * same engine, but never paygate_free or paygate_shutdown.
 */
typedef int (*paygate_host_fn)(void *arg, const char *json_args, struct evbuffer *reply);

/**
 * A Lua module written in C that scripts load with `require(name)`, in
 * every generation. `open` runs while a generation is built, in that
 * generation's Lua state: it pushes the module's value (usually a table of
 * functions) and returns 1; a Lua error it raises fails the load like a
 * script error would. The module's functions run inside the script jail's
 * instruction budget and memory cap, but they are the host's trusted C:
 * they must never block. (The local WeChat Pay sandbox adds its own
 * `wechatpay.sandbox` module this way.)
 */
struct paygate_lua_module {
	const char *name; /**< the require name; not one of the engine's own modules */
	int (*open)(struct lua_State *L, void *arg);
	void *arg; /**< handed to open */
};

/**
 * When the engine is one of several worker processes that serve one
 * gateway on one database (what the paygate daemon runs with `workers = N`
 * in its config). A host with one engine leaves paygate_options.worker NULL.
 * Every pointer must stay valid while the engine lives.
 */
struct paygate_worker {
	int index; /**< 0 .. count-1: in log lines and as the `worker` label in /metrics */
	int count;
	/** A listening socket the workers share: paygate_listen accepts on it instead of binding. */
	int listen_fd;
	/** Names this run of the gateway; with index and incarnation it names the owner of the jobs
	    this engine runs, so that it never re-queues a job another live worker is running. */
	const char *run_id;
	/** How many times this worker index was started before in this run: at start the engine
	    re-queues the jobs its dead predecessors left running. */
	int incarnation;
	/** A buffer (shared memory) of running_len bytes where the engine keeps a note of the script
	    running now ("request 3f2a... POST /api/orders"; "" when none), for a watchdog outside the
	    loop to log when the loop stops making progress. */
	char *running;
	size_t running_len;
	/** /metrics: append the other workers' series to `text` (this engine's, already rendered). */
	void (*peers_metrics)(void *arg, struct evbuffer *text);
	/** /healthz: append `,"workers":...` to the JSON object being written (not yet closed). */
	void (*peers_health)(void *arg, struct evbuffer *json);
	/** A reload asked of this engine (POST /admin/reload) succeeded: have the others reload too. */
	void (*reload_peers)(void *arg);
	void *arg;
};

/** One entry of paygate_options.functions. */
struct paygate_function {
	const char *name; /**< [A-Za-z_][A-Za-z0-9_]*, at most 63 bytes */
	paygate_host_fn fn;
	void *arg;
};

/**
 * How to create an engine. Zero-initialise it and set what you need; every
 * field is optional and every string is copied by paygate_new.
 */
struct paygate_options {
	/** A config file (Lua table syntax, see README); NULL: the built-in defaults. */
	const char *config_path;
	/** "host:port" overriding `listen` of the config (port 0 picks a free port). */
	const char *listen;
	/** Overrides `database` of the config; ":memory:" keeps nothing. */
	const char *database;
	/** Overrides `scripts` of the config (relative paths: to the working directory). */
	const char *scripts_dir;
	/** Overrides `lualib` of the config; pkg-config gives the installed one:
	    `pkg-config --variable=lualibdir paygate`. */
	const char *lualib_dir;
	/** Non-zero: do not watch the script directories (reload with paygate_reload only). */
	int no_watch;
	/** Non-zero: load and migrate the scripts on an in-memory database and
	    start no jobs (what `paygate --check` does). */
	int check_only;
	/** Where log lines go (logfmt, one per line); NULL: stderr. Not closed by paygate. */
	FILE *log_file;
	/** Alternatively, each log line (without its newline) is handed to this
	    function, from the event loop; it wins over log_file. */
	void (*log_fn)(void *arg, const char *line);
	void *log_arg;
	/** Host functions available to the very first generation (and every later
	    one), ended by an entry whose name is NULL; the array need not outlive
	    the call. See also paygate_register. */
	const struct paygate_function *functions;
	/** Lua modules in C for the scripts, ended by an entry whose name is
	    NULL; the array need not outlive the call. */
	const struct paygate_lua_module *lua_modules;
	/** This engine is one of a gateway's worker processes (see struct paygate_worker); NULL: alone. */
	const struct paygate_worker *worker;
};

/**
 * Create an engine on the host's event loop: read the configuration, open
 * the database, load and migrate the scripts (the first generation) and
 * start the durable jobs. Nothing listens yet: call paygate_listen, or hand
 * requests over with paygate_handle_request.
 *
 * @param base the event_base that will run everything.
 * @param opts the options, or NULL for all defaults.
 * @param err, errlen receive a message when NULL is returned.
 * @return the engine, or NULL (nothing is left allocated, nothing is running).
 */
struct paygate *paygate_new(struct event_base *base, const struct paygate_options *opts, char *err, size_t errlen);

/**
 * paygate_new with only config_path, listen and check_only set (kept for
 * hosts written against 0.1).
 */
struct paygate *paygate_new_ex(struct event_base *base, const char *config_path, const char *listen, int check_only,
                               char *err, size_t errlen);

/**
 * Serve HTTP on the configured address with paygate's own evhttp (limits
 * from the config file: header and body size, timeouts).
 * @return 0, or -1 with err filled (address in use, ...); nothing changed then.
 */
int paygate_listen(struct paygate *pg, char *err, size_t errlen);

/** How the config asks the daemon to run this gateway (`workers`, `watchdog_ms`). */
struct paygate_supervision {
	int workers;           /**< worker processes serving the listener */
	int watchdog_ms;       /**< a worker whose loop makes no progress this long is ended; 0: no watchdog */
	char listen_host[256]; /**< where to listen, as configured (or overridden by paygate_options.listen) */
	int listen_port;
};
void paygate_supervision(const struct paygate *pg, struct paygate_supervision *out);

/** The host it listens on, as configured. */
const char *paygate_host(const struct paygate *pg);

/** The port actually bound (useful with port 0), or 0 before paygate_listen. */
int paygate_port(const struct paygate *pg);

/**
 * Serve one request that arrived on the host's own evhttp: paygate's
 * routes (the scripts' routes, /healthz, /metrics, /admin/...) on the host's
 * port. Call it from the host's generic callback (evhttp_set_gencb) for
 * the paths the host does not answer itself; libevent 2.1 has no prefix
 * callbacks, so which paths go to paygate is the host's decision:
 *
 * @code
 *   static void on_http(struct evhttp_request *req, void *arg)
 *   {
 *       const char *path = evhttp_uri_get_path(evhttp_request_get_evhttp_uri(req));
 *       if (path && strncmp(path, "/game/", 6) == 0)
 *           answer_game_route(req);
 *       else
 *           paygate_handle_request(arg, req);
 *   }
 * @endcode
 *
 * paygate takes the request over: it always answers it exactly once (maybe
 * later, when the handler waits for WeChat), and while it waits it owns
 * the connection's close callback (evhttp_connection_set_closecb) to notice
 * a client that hangs up. Scripts see the path unchanged. The size limits
 * and timeouts are those of the host's evhttp: set them
 * (evhttp_set_max_body_size, evhttp_set_timeout ...), evhttp's defaults are
 * unbounded. A request still waiting when the engine is freed is answered
 * 503. While shutting down, new requests are answered 503.
 */
void paygate_handle_request(struct paygate *pg, struct evhttp_request *req);

/**
 * Load the scripts again now (build a new generation aside, migrate, swap).
 * Work in flight finishes on the generation it started on.
 * @return the new generation id, or -1 with err filled: the running
 *         generation then keeps serving.
 */
long long paygate_reload(struct paygate *pg, char *err, size_t errlen);

/** Append this engine's /metrics text (Prometheus text format; its own figures only) to out. */
void paygate_metrics(struct paygate *pg, struct evbuffer *out);

/** The id of the generation serving now (1 after paygate_new, +1 per reload that went live). */
long long paygate_generation(const struct paygate *pg);

/**
 * Make `fn` callable by scripts as `host.<name>(table)`, which returns the
 * decoded reply (or raises the host's error text). Registering a name again
 * replaces it; fn NULL removes it. Every generation, current and future,
 * sees the change at once: scripts look the name up when they call.
 * @return 0, or -1 when the name is not [A-Za-z_][A-Za-z0-9_]* of at most
 *         63 bytes or memory ran out.
 */
int paygate_register(struct paygate *pg, const char *name, paygate_host_fn fn, void *arg);

/**
 * The result of paygate_call.
 *
 * @param arg the pointer given to paygate_call.
 * @param status 200 when the function returned; otherwise an HTTP-like
 *        status: the one of `app.fail(status, code, message)` in the
 *        script, 400 (json_args is not JSON), 404 (no such exported
 *        function), 500 (the script failed or ran too long; the log has the
 *        traceback), 503 (the engine is shutting down or was freed, no
 *        script generation is loaded, the script memory is full, or
 *        "storage_failed": the database lost the batch holding the call's
 *        writes). A result is handed over only once the writes of the loop
 *        turn that produced it are on disk.
 * @param json_result on 200 the function's return value as JSON ("null"
 *        for nil); otherwise {"error": code, "message": text}. Valid only
 *        during the callback.
 */
typedef void (*paygate_call_cb)(void *arg, int status, const char *json_result);

/**
 * Run the function the scripts exported as `name` (app.export(name, fn))
 * with the decoded `json_args` (NULL means {}), in a coroutine of its own:
 * it may wait for WeChat Pay or http.request without blocking anything.
 *
 * `cb` is called exactly once, later, from the event loop — never from
 * inside paygate_call — also for every error. The one exception to "from
 * the event loop": calls still pending when the engine is freed get their
 * result (503 when unfinished) from inside paygate_free, and must not use
 * the engine then.
 *
 * @return 0 when the call is queued; -1 only when cb is NULL, memory ran
 *         out or the engine is being freed: cb will then never be called.
 */
int paygate_call(struct paygate *pg, const char *name, const char *json_args, paygate_call_cb cb, void *arg);

/**
 * Deliver an event to the scripts' handlers (app.on(event, fn)), each
 * called with the decoded `json` (NULL means {}) in turn, in one coroutine
 * started from the event loop. Nothing comes back: an error in a handler
 * is logged and the next handler still runs. An event nobody handles is
 * dropped.
 * @return 0 when queued; -1 when memory ran out, the event name is empty,
 *         or the engine is shutting down.
 */
int paygate_emit(struct paygate *pg, const char *event, const char *json);

/**
 * Stop accepting work and let work in flight finish, for at most grace_ms:
 * requests, paygate_call and paygate_emit coroutines and running jobs.
 * Meanwhile paygate's own listener accepts no connection, requests handed
 * over with paygate_handle_request and new calls are answered 503, new
 * events are refused and no job starts. Then `done(arg)` is
 * called from the event loop (or at once, when memory ran out). Free the
 * engine afterwards with paygate_free; freeing it earlier is allowed and
 * done is then never called.
 */
void paygate_shutdown(struct paygate *pg, int grace_ms, void (*done)(void *arg), void *arg);

/**
 * Free everything the engine holds. Work still in flight is cancelled:
 * requests waiting on the host's evhttp are answered 503, pending
 * paygate_call callbacks get 503, jobs run again at the next start.
 * Never call it from inside a host function. pg may be NULL.
 */
void paygate_free(struct paygate *pg);

/* ---- own-thread mode: embedding in any event loop ---- */

/**
 * Create an engine that runs on a thread and an event loop of its own, for
 * hosts without libevent (a plain epoll or kqueue loop, libuv, Boost.Asio,
 * skynet ...). The engine is built on the calling thread exactly like
 * paygate_new (same options, same errors; NULL leaves nothing behind), then
 * its loop moves to a new thread, which blocks every signal.
 *
 * The host's side, from one thread of its choice (the "host's thread"):
 *
 *   - paygate_fd(pg) is a descriptor that becomes readable when results or
 *     host-function calls are waiting. Add it to your poller (epoll, uv_poll,
 *     asio's posix::stream_descriptor ...) and, when it is readable, call
 *     paygate_dispatch_completions(pg). Every paygate_call callback, every
 *     host function (paygate_register, options.functions) and the done of
 *     paygate_shutdown runs there, on your thread: your state needs no locks.
 *   - paygate_call and paygate_emit may be called from any thread; they copy
 *     their arguments, queue them and return at once (never blocking).
 *   - paygate_listen, paygate_reload, paygate_register, paygate_generation and
 *     paygate_shutdown run on the engine's thread while the caller waits for
 *     them (a reload takes as long as loading the scripts); call them from the
 *     host's thread, inside host functions and callbacks too.
 *   - paygate_handle_request is not available (the request would be on your
 *     loop, the engine on its own): serve paygate's routes with paygate_listen.
 *   - log_fn is called on the engine's thread.
 *   - A script calling a host function waits (without blocking the engine)
 *     until your thread has run it, so a host function can be called only
 *     where a script may wait: not inside db.tx, not while the scripts load.
 *     During paygate_shutdown keep dispatching: a delivery in flight waits
 *     for you.
 *   - paygate_free(pg), from the host's thread, ends the loop, joins the
 *     thread and frees everything; pending calls get their result (503 when
 *     unfinished) from inside it, on the calling thread.
 *
 * @code
 *   struct paygate *pg = paygate_start_thread(&o, err, sizeof err);
 *   paygate_listen(pg, err, sizeof err);                  // WeChat Pay's notifications
 *   struct epoll_event ev = { .events = EPOLLIN, .data.ptr = pg };
 *   epoll_ctl(ep, EPOLL_CTL_ADD, paygate_fd(pg), &ev);
 *   ...  // in the loop, when paygate_fd(pg) is readable:
 *   paygate_dispatch_completions(pg);
 * @endcode
 */
struct paygate *paygate_start_thread(const struct paygate_options *opts, char *err, size_t errlen);

/**
 * The descriptor to poll for readability: own-thread mode, an eventfd (then
 * call paygate_dispatch_completions); host-driven mode, an epoll set (then
 * call paygate_run_once). -1 for an engine of paygate_new.
 */
int paygate_fd(const struct paygate *pg);

/**
 * Own-thread mode: run, on the calling thread, what is waiting for the
 * host: call results, host functions, a finished shutdown. Never blocks;
 * reading the descriptor is part of it. Call it when paygate_fd(pg) is
 * readable (calling it more often is harmless). It runs what was queued
 * when it started; a callback may free the engine (what is still queued
 * then gets its result from inside paygate_free); called from inside a
 * callback it does nothing.
 * @return how many were run; 0 for an engine of paygate_new.
 */
int paygate_dispatch_completions(struct paygate *pg);

/* ---- host-driven mode: the host's loop runs the engine's, no thread ---- */

/**
 * Create an engine whose loop the host runs from its own loop, on its own
 * thread, with no thread of paygate's: the libcurl multi_socket / libuv
 * uv_backend_fd shape. Built like paygate_new (same options, same errors).
 * Then, in the host's loop:
 *
 *   - paygate_fd(pg) is a descriptor (an epoll set of paygate's) that is
 *     readable when something the engine waits on is ready. Watch it for
 *     readability.
 *   - paygate_timeout(pg), called right before the host waits (after its own
 *     work, paygate_call and paygate_emit included), brings that descriptor
 *     up to date and returns how many milliseconds the host may wait at most:
 *     0 means "call paygate_run_once now"; it is never more than 1000.
 *   - paygate_run_once(pg), when the descriptor is readable or the timeout
 *     passed, runs everything that is ready and returns without waiting.
 *     Call results, host functions and shutdown's done run inside it, on the
 *     host's thread.
 *
 * Everything else is as with paygate_new, on the host's thread only.
 * paygate_handle_request is not meant for it (the host has no evhttp).
 *
 * @code
 *   for (;;) {
 *       int n = epoll_wait(ep, evs, 64, paygate_timeout(pg));   // paygate_fd(pg) is in ep
 *       ... the host's own events ...
 *       paygate_run_once(pg);                                     // cheap when nothing is ready
 *   }
 * @endcode
 */
struct paygate *paygate_new_driven(const struct paygate_options *opts, char *err, size_t errlen);

/** Host-driven mode: update paygate_fd's set, and return the longest wait in ms (0..1000); -1 in other modes. */
int paygate_timeout(struct paygate *pg);

/** Host-driven mode: run what is ready now, never waiting. @return 0; -1 in other modes. */
int paygate_run_once(struct paygate *pg);

/* ---- JSON helpers for host functions (no JSON library needed for flat objects) ---- */

/**
 * Copy the value of the top-level member `key` of the JSON object `json`
 * into out: strings unescaped (UTF-8, without quotes), anything else as
 * its JSON text (42, true, null, {...}, [...]).
 * @return the length written (excluding the NUL), or -1 when json is not a
 *         well-formed object, has no such member, or the value does not fit
 *         in outlen bytes with its NUL.
 */
int paygate_json_get(const char *json, const char *key, char *out, size_t outlen);

/** Append s to out as a JSON string literal (quotes and escapes). @return 0, or -1 when memory ran out. */
int paygate_json_add_string(struct evbuffer *out, const char *s);

#ifdef __cplusplus
}
#endif

#endif

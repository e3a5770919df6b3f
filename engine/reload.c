/* reload.c — hot reload: build a generation aside, migrate, swap; triggered by file changes, SIGHUP or admin. */
#include "reload.h"

#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/inotify.h>
#include <unistd.h>

#include <event2/event.h>
#include <lauxlib.h>

#include "config.h"
#include "coro.h"
#include "engine.h"
#include "gen.h"
#include "jobs.h"
#include "script.h"
#include "store.h"

/* ---- build, migrate, swap ---- */

struct migrate_args {
	struct engine *e;
	char *err;
	size_t errlen;
};

/* [-1 (lightuserdata args), +0]: store_migrate touches the new VM, so run it protected. */
static int migrate_protected(lua_State *L)
{
	struct migrate_args *a = lua_touserdata(L, 1);
	struct gen *g = jail_of(L)->owner;
	gen_push_app_field(g, "_migrations");
	if (!lua_istable(L, -1))
		return luaL_error(L, "lualib 'paygate' has no _migrations list");
	if (store_migrate(a->e->store, L, -1, a->err, a->errlen) < 0)
		return luaL_error(L, "%s", a->err);
	return 0;
}

static int migrate(struct engine *e, struct gen *g, char *err, size_t errlen)
{
	struct migrate_args a = { e, err, errlen };
	struct jail_budget budget = { 0 };
	lua_pushcfunction(g->L, migrate_protected);
	lua_pushlightuserdata(g->L, &a);
	jail_budget(g->L, &budget, e->cfg.script_max_instructions * 4);
	int rc = lua_pcall(g->L, 1, 0, 0);
	jail_unbudget(g->L);
	if (rc != LUA_OK) {
		snprintf(err, errlen, "%s", lua_tostring(g->L, -1) ? lua_tostring(g->L, -1) : "migration failed");
		lua_pop(g->L, 1);
		return -1;
	}
	return 0;
}

/*
** "migration N (...) failed: ..." names the script that declared migration N:
** app.migration keeps where it was called ("scripts/schema.lua:12"), so the
** error becomes "scripts/schema.lua:12: migration N (...) failed: ...".
*/
static void name_migration_file(struct gen *g, char *err, size_t errlen)
{
	long long v;
	char where[512] = "";

	if (sscanf(err, "migration %lld ", &v) != 1)
		return;
	lua_State *L = g->L;
	gen_push_app_field(g, "_migrations");
	if (lua_istable(L, -1)) {
		lua_Integer n = (lua_Integer)lua_rawlen(L, -1);
		for (lua_Integer i = 1; i <= n && !where[0]; i++) {
			if (lua_rawgeti(L, -1, i) == LUA_TTABLE) {
				lua_pushliteral(L, "version");
				lua_rawget(L, -2);
				int found = lua_isinteger(L, -1) && lua_tointeger(L, -1) == v;
				lua_pop(L, 1);
				if (found) {
					lua_pushliteral(L, "where");
					if (lua_rawget(L, -2) == LUA_TSTRING)
						snprintf(where, sizeof where, "%s", lua_tostring(L, -1));
					lua_pop(L, 1);
				}
			}
			lua_pop(L, 1);
		}
	}
	lua_pop(L, 1);
	if (!where[0])
		return;
	char *rest = strdup(err);
	if (rest)
		snprintf(err, errlen, "%s: %s", where, rest);
	free(rest);
}

/*
** A reload takes the config file's `app` table afresh (settings the scripts
** read as `config`); the rest of the file is read at start only. NULL in
** *app_json: there is no file to read (an embedder's defaults).
*/
static int reread_app(struct engine *e, char **app_json, char *err, size_t errlen)
{
	struct config fresh;

	*app_json = NULL;
	if (!e->cfg.path)
		return 0;
	if (config_defaults(&fresh) < 0) {
		config_free(&fresh);
		snprintf(err, errlen, "out of memory");
		return -1;
	}
	if (config_load(&fresh, e->cfg.path, err, errlen) < 0) {
		config_free(&fresh);
		return -1;
	}
	*app_json = fresh.app_json;
	fresh.app_json = NULL;
	config_free(&fresh);
	return 0;
}

static void record(struct engine *e, int ok, const char *error)
{
	e->last_reload_ok = ok;
	snprintf(e->last_reload_error, sizeof e->last_reload_error, "%s", ok ? "" : error);
	gettimeofday(&e->last_reload_at, NULL);
	if (ok)
		e->metrics.reloads_ok++;
	else
		e->metrics.reloads_failed++;
}

/*
** A reload refused because script.max_draining generations are still
** finishing work is not lost: it is tried again (reading the files afresh,
** so the newest save) once one of them has drained.
*/
#define RETRY_MS 100

static void on_retry(evutil_socket_t fd, short what, void *arg)
{
	struct engine *e = arg;
	char err[1024];
	(void)fd;
	(void)what;
	if (e->stopping)
		return;
	if (e->draining >= e->cfg.max_draining) {
		struct timeval tv = { 0, RETRY_MS * 1000 };
		evtimer_add(e->reload_retry, &tv);
		return;
	}
	reload_run(e, "retry after draining", err, sizeof err);
}

static void retry_later(struct engine *e)
{
	struct timeval tv = { 0, RETRY_MS * 1000 };
	if (!e->reload_retry)
		e->reload_retry = evtimer_new(e->base, on_retry, e);
	if (e->reload_retry)
		evtimer_add(e->reload_retry, &tv);
}

int reload_run(struct engine *e, const char *trigger, char *err, size_t errlen)
{
	struct gen *g;
	char *app_json = NULL, *kept_json = NULL;

	if (e->draining >= e->cfg.max_draining) {
		snprintf(
		    err, errlen,
		    "%d older generations are still finishing work; the reload is tried again once one has drained",
		    e->draining);
		retry_later(e);
		goto fail;
	}
	if (store_in_tx(e->store)) {
		snprintf(err, errlen, "a transaction is open; try again");
		goto fail;
	}
	if (strcmp(trigger, "start") != 0) {
		if (reread_app(e, &app_json, err, errlen) < 0)
			goto fail;
		if (app_json) { /* the new generation decodes it; the old one keeps its own */
			kept_json = e->cfg.app_json;
			e->cfg.app_json = app_json;
		}
	}
	g = NULL;
	if (store_load_begin(e->store, err, errlen) == 0) {
		g = script_load(e, err, errlen);
		if (g && migrate(e, g, err, errlen) < 0) {
			name_migration_file(g, err, errlen);
			gen_unref(g);
			g = NULL;
		}
		store_load_end(e->store);
	}
	if (!g) {
		if (app_json) {
			e->cfg.app_json = kept_json;
			free(app_json);
		}
		goto fail;
	}
	free(kept_json);
	/* The swap: a pointer assignment, nothing in between can yield or fail. */
	g->id = ++e->next_gen_id;
	struct gen *old = e->gen;
	e->gen = g;
	if (old) {
		old->retired = 1;
		e->draining++;
		gen_unref(old);
	}
	if (e->reload_retry)
		evtimer_del(e->reload_retry); /* this one read the newest files */
	record(e, 1, NULL);
	log_info(&e->log, NULL, "script generation %llu live (%s)", (unsigned long long)g->id, trigger);
	if (e->jobs)
		jobs_kick(e->jobs);
	return 0;
fail:
	record(e, 0, err);
	if (e->gen)
		log_error(&e->log, NULL, "reload (%s) refused, generation %llu keeps serving: %s", trigger,
		          (unsigned long long)e->gen->id, err);
	else
		log_error(&e->log, NULL, "scripts refused (%s), nothing is serving: %s", trigger, err);
	return -1;
}

/* ---- inotify ---- */

/*
** Editors save by writing a temporary file and renaming it over the old
** one, so we watch directories (not files) for close-after-write, moves,
** creations and deletions, and reload once the directory has been quiet for
** watch_debounce_ms: a reload never sees half of a save. With watch_marker,
** only writing (or touching) scripts/.reload reloads: a change spanning
** several files, saved one by one, is applied when its author says so.
*/
struct watch {
	int fd;
	int root; /* the watch descriptor of the scripts directory */
	struct event *ev;
	struct event *debounce;
};

#define WATCH_MASK    (IN_CLOSE_WRITE | IN_MOVED_TO | IN_MOVED_FROM | IN_CREATE | IN_DELETE)
#define RELOAD_MARKER ".reload"

/* Add watches on dir and its subdirectories (inotify_add_watch is idempotent); returns dir's descriptor. */
static int watch_tree(struct engine *e, int fd, const char *dir, int depth)
{
	int wd = depth > 8 ? -1 : inotify_add_watch(fd, dir, WATCH_MASK | (e->cfg.watch_marker ? IN_ATTRIB : 0));
	if (wd < 0)
		return wd;
	DIR *d = opendir(dir);
	struct dirent *de;
	if (!d)
		return wd;
	while ((de = readdir(d))) {
		if (de->d_name[0] == '.' || de->d_type != DT_DIR)
			continue;
		char sub[4096];
		snprintf(sub, sizeof sub, "%s/%s", dir, de->d_name);
		watch_tree(e, fd, sub, depth + 1);
	}
	closedir(d);
	return wd;
}

static void on_quiet(evutil_socket_t fd, short what, void *arg)
{
	struct engine *e = arg;
	char err[1024];
	(void)fd;
	(void)what;
	reload_run(e, "file change", err, sizeof err);
	watch_tree(e, e->watch->fd, e->cfg.scripts_dir, 0); /* pick up new subdirectories */
	watch_tree(e, e->watch->fd, e->cfg.lualib_dir, 0);
}

/* Only .lua files matter (or only the marker); editor swap files and the like are ignored. */
static int interesting(const struct engine *e, const struct inotify_event *ev)
{
	if (e->cfg.watch_marker)
		return ev->wd == e->watch->root && ev->len && strcmp(ev->name, RELOAD_MARKER) == 0;
	if (ev->mask & IN_ISDIR)
		return 1;
	size_t n = ev->len ? strlen(ev->name) : 0;
	return n > 4 && strcmp(ev->name + n - 4, ".lua") == 0;
}

static void on_inotify(evutil_socket_t fd, short what, void *arg)
{
	struct engine *e = arg;
	char buf[8192] __attribute__((aligned(__alignof__(struct inotify_event))));
	int hit = 0;
	ssize_t n;
	(void)what;
	while ((n = read(fd, buf, sizeof buf)) > 0) {
		for (char *p = buf; p < buf + n;) {
			struct inotify_event *ev = (struct inotify_event *)p;
			hit |= interesting(e, ev);
			p += sizeof *ev + ev->len;
		}
	}
	if (hit) {
		struct timeval tv = { e->cfg.watch_debounce_ms / 1000, (e->cfg.watch_debounce_ms % 1000) * 1000 };
		evtimer_add(e->watch->debounce, &tv); /* re-arming restarts the quiet period */
	}
}

int reload_watch_start(struct engine *e, char *err, size_t errlen)
{
	struct watch *w = calloc(1, sizeof *w);
	if (!w) {
		snprintf(err, errlen, "out of memory");
		return -1;
	}
	w->fd = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
	if (w->fd < 0) {
		snprintf(err, errlen, "inotify: %s", strerror(errno));
		free(w);
		return -1;
	}
	e->watch = w;
	w->root = watch_tree(e, w->fd, e->cfg.scripts_dir, 0);
	watch_tree(e, w->fd, e->cfg.lualib_dir, 0);
	w->ev = event_new(e->base, w->fd, EV_READ | EV_PERSIST, on_inotify, e);
	w->debounce = evtimer_new(e->base, on_quiet, e);
	if (!w->ev || !w->debounce || event_add(w->ev, NULL) < 0) {
		snprintf(err, errlen, "cannot watch the script directories");
		reload_watch_stop(e);
		return -1;
	}
	return 0;
}

void reload_watch_stop(struct engine *e)
{
	struct watch *w = e->watch;
	if (e->reload_retry) {
		event_free(e->reload_retry);
		e->reload_retry = NULL;
	}
	if (!w)
		return;
	if (w->ev)
		event_free(w->ev);
	if (w->debounce)
		event_free(w->debounce);
	close(w->fd);
	free(w);
	e->watch = NULL;
}

/* script.c — script generations: a sandboxed Lua VM holding lualib + scripts, shared by reference. */
#include "script.h"

#include <ctype.h>
#include <stdlib.h>
#include <string.h>

#include <event2/event.h>
#include <lauxlib.h>

#include "engine.h"
#include "fetch.h"
#include "host.h"
#include "http.h"
#include "jobs.h"
#include "json.h"
#include "secure.h"
#include "store.h"
#include "wxclient.h"
#include "wxsandbox.h"

#define MAX_SCRIPT_BYTES (4u << 20)

/* ---- require: scripts first, then lualib; text only; one shared sandbox env ---- */

/* Upvalues: 1 = engine (light), 2 = env, 3 = loaded table. */
static int find_module(lua_State *L, struct engine *e, const char *name, char *path, size_t cap)
{
	const char *dirs[2] = { e->cfg.scripts_dir, e->cfg.lualib_dir };
	char rel[256];
	size_t n = strlen(name);

	if (n == 0 || n >= sizeof rel - 5)
		return luaL_error(L, "require: bad module name '%s'", name);
	for (size_t i = 0; i < n; i++) {
		unsigned char c = (unsigned char)name[i];
		if (!(isalnum(c) || c == '_' || c == '.' || c == '-') || (c == '.' && (i == 0 || name[i - 1] == '.')))
			return luaL_error(L, "require: bad module name '%s' (letters, digits, _ - and . only)", name);
		rel[i] = c == '.' ? '/' : (char)c;
	}
	memcpy(rel + n, ".lua", 5);
	for (int d = 0; d < 2; d++) {
		snprintf(path, cap, "%s/%s", dirs[d], rel);
		FILE *f = fopen(path, "rb");
		if (f) {
			fclose(f);
			return 1;
		}
	}
	return 0;
}

static int l_require(lua_State *L)
{
	struct engine *e = lua_touserdata(L, lua_upvalueindex(1));
	const char *name = luaL_checkstring(L, 1);
	char path[1024], err[512];

	lua_settop(L, 1);
	lua_getfield(L, lua_upvalueindex(3), name);
	if (lua_toboolean(L, -1)) {
		if (lua_islightuserdata(L, -1))
			return luaL_error(L, "require: '%s' requires itself (a loop)", name);
		return 1;
	}
	if (!find_module(L, e, name, path, sizeof path))
		return luaL_error(L, "module '%s' not found in %s or %s", name, e->cfg.scripts_dir, e->cfg.lualib_dir);
	size_t len;
	char *src = config_read_file(path, MAX_SCRIPT_BYTES, &len, err, sizeof err);
	if (!src)
		return luaL_error(L, "require '%s': %s", name, err);
	char chunk[1100];
	snprintf(chunk, sizeof chunk, "@%s", path);
	int rc = luaL_loadbufferx(L, src, len, chunk, "t");
	free(src);
	if (rc != LUA_OK)
		return lua_error(L);
	lua_pushvalue(L, lua_upvalueindex(2));
	lua_setupvalue(L, -2, 1);                      /* _ENV = the sandbox env */
	lua_pushlightuserdata(L, L);                   /* "loading" marker catches loops */
	lua_setfield(L, lua_upvalueindex(3), name);
	lua_pushstring(L, name);
	lua_call(L, 1, 1);
	if (lua_isnil(L, -1)) {
		lua_pop(L, 1);
		lua_pushboolean(L, 1);
	}
	lua_pushvalue(L, -1);
	lua_setfield(L, lua_upvalueindex(3), name);
	return 1;
}

/* ---- log ---- */

static int log_at(lua_State *L, enum log_level level)
{
	struct engine *e = lua_touserdata(L, lua_upvalueindex(1));
	char fields[2048];
	size_t len = 0;

	if (level < e->log.level)
		return 0;
	const char *msg = luaL_checkstring(L, 1);
	fields[0] = '\0';
	if (lua_istable(L, 2)) {
		lua_pushnil(L);
		while (lua_next(L, 2)) {
			if (lua_type(L, -2) == LUA_TSTRING) {
				const char *k = lua_tostring(L, -2);
				log_field(fields, sizeof fields, &len, k, luaL_tolstring(L, -1, NULL));
				lua_pop(L, 1);
			}
			lua_pop(L, 1);
		}
	}
	log_emit(&e->log, level, script_reqid(L), msg, fields);
	return 0;
}

static int l_log_debug(lua_State *L) { return log_at(L, LOG_DEBUG); }
static int l_log_info(lua_State *L) { return log_at(L, LOG_INFO); }
static int l_log_warn(lua_State *L) { return log_at(L, LOG_WARN); }
static int l_log_error(lua_State *L) { return log_at(L, LOG_ERROR); }

/* print(...) goes to the log at info level, never to stdout. */
static int l_print(lua_State *L)
{
	luaL_Buffer b;
	int n = lua_gettop(L);
	luaL_buffinit(L, &b);
	for (int i = 1; i <= n; i++) {
		if (i > 1)
			luaL_addchar(&b, '\t');
		luaL_tolstring(L, i, NULL);
		luaL_addvalue(&b);
	}
	luaL_pushresult(&b);
	lua_replace(L, 1);
	lua_settop(L, 1);
	return l_log_info(L);
}

/* ---- clock: now() in ms, sleep(ms) ---- */

static int l_now(lua_State *L)
{
	lua_pushinteger(L, engine_now_ms());
	return 1;
}

static void sleep_done(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	coro_wake(arg);
}

static void sleep_cleanup(struct coro *c)
{
	event_free(c->wait);
}

static int l_sleep(lua_State *L)
{
	struct engine *e = lua_touserdata(L, lua_upvalueindex(1));
	lua_Integer ms = luaL_checkinteger(L, 1);
	struct coro *c = coro_of(L);

	luaL_argcheck(L, ms >= 0 && ms <= 24 * 3600 * 1000, 1, "sleep takes 0 to 86400000 ms");
	coro_check_suspend(L, "clock.sleep");
	struct event *ev = evtimer_new(e->base, sleep_done, c);
	struct timeval tv = { (time_t)(ms / 1000), (suseconds_t)((ms % 1000) * 1000) };
	if (!ev || evtimer_add(ev, &tv) < 0) {
		if (ev)
			event_free(ev);
		return luaL_error(L, "clock.sleep: cannot arm a timer");
	}
	lua_settop(L, 0);
	return coro_suspend(L, "clock.sleep", ev, sleep_cleanup, NULL);
}

/* ---- building a generation ---- */

const char *script_reqid(lua_State *L)
{
	struct coro *c = coro_of(L);
	if (!c) {                             /* a coroutine the script made: ask who runs */
		struct script_gen *g = sbx_of(L)->owner;
		c = g->eng->sched.current;
	}
	return c ? c->reqid : NULL;
}

static void register_modules(lua_State *L, struct engine *e, int env)
{
	static const luaL_Reg logf[] = {
		{ "debug", l_log_debug }, { "info", l_log_info }, { "warn", l_log_warn },
		{ "error", l_log_error }, { NULL, NULL }
	};
	static const luaL_Reg clockf[] = { { "now", l_now }, { "sleep", l_sleep }, { NULL, NULL } };

	http_register_lua(L);
	json_push_lua(L);
	int json = lua_gettop(L);
	lua_pushvalue(L, json);
	sbx_set_readonly(L, env, "json");

	store_push_lua(L, e);
	sbx_set_readonly(L, env, "db");
	fetch_push_lua(L, e);
	sbx_set_readonly(L, env, "http");
	lua_pushvalue(L, json);
	jobs_push_lua(L, e);                  /* consumes json: payloads are encoded with it */
	sbx_set_readonly(L, env, "jobs");
	metrics_push_lua(L, e);
	sbx_set_readonly(L, env, "metrics");
	secure_push_lua(L, e);
	sbx_set_readonly(L, env, "secure");
	lua_pushvalue(L, json);
	host_push_lua(L, e);                  /* consumes json: replies are decoded with it */
	sbx_set_readonly(L, env, "host");

	lua_newtable(L);
	lua_pushlightuserdata(L, e);
	luaL_setfuncs(L, logf, 1);
	sbx_set_readonly(L, env, "log");
	lua_newtable(L);
	lua_pushlightuserdata(L, e);
	luaL_setfuncs(L, clockf, 1);
	sbx_set_readonly(L, env, "clock");

	lua_pushlightuserdata(L, e);
	lua_pushcclosure(L, l_print, 1);
	sbx_set_global(L, env, "print");

	/* config: the `app` table of the config file, decoded afresh for each generation */
	lua_getfield(L, json, "decode");
	lua_pushstring(L, e->cfg.app_json);
	lua_call(L, 1, 1);
	sbx_set_readonly(L, env, "config");
	lua_pop(L, 1);                        /* json */
}

/* Fetch app[name] as a function and keep a registry reference to it. */
static int ref_app_function(lua_State *L, int app, const char *name)
{
	lua_getfield(L, app, name);
	if (!lua_isfunction(L, -1))
		return luaL_error(L, "lualib 'paygate' does not define %s", name);
	return luaL_ref(L, LUA_REGISTRYINDEX);
}

/* [-1 (lightuserdata gen), +0]: everything that can raise runs here, under the load budget. */
static int load_protected(lua_State *L)
{
	struct script_gen *g = lua_touserdata(L, 1);
	struct engine *e = g->eng;

	sbx_push_env(L);
	int env = lua_gettop(L);
	register_modules(L, e, env);

	lua_newtable(L);                      /* loaded modules, with the engine's own preloaded */
	int loaded = lua_gettop(L);
	lua_getfield(L, env, "json");
	lua_getfield(L, env, "http");
	wxc_push_lua(L, e);
	lua_setfield(L, loaded, "wechatpay.core");
	if (e->cfg.wechatpay_sandbox) {
		wxs_push_lua(L, e);
		lua_setfield(L, loaded, "wechatpay.sandbox");
	}
	lua_pushlightuserdata(L, e);
	lua_pushvalue(L, env);
	lua_pushvalue(L, loaded);
	lua_pushcclosure(L, l_require, 3);
	lua_pushvalue(L, -1);
	sbx_set_global(L, env, "require");
	int req = lua_gettop(L);

	lua_pushvalue(L, req);
	lua_pushliteral(L, "paygate");
	lua_call(L, 1, 1);
	int app = lua_gettop(L);
	if (!lua_istable(L, app))
		return luaL_error(L, "lualib 'paygate' must return a table");
	lua_pushvalue(L, req);
	lua_pushliteral(L, "init");
	lua_call(L, 1, 0);

	g->dispatch_ref = ref_app_function(L, app, "_dispatch");
	g->run_job_ref = ref_app_function(L, app, "_run_job");
	lua_pushvalue(L, app);
	g->app_ref = luaL_ref(L, LUA_REGISTRYINDEX);
	return 0;
}

struct script_gen *script_gen_load(struct engine *e, char *err, size_t errlen)
{
	struct script_gen *g = calloc(1, sizeof *g);
	struct sbx_budget budget = { 0 };

	if (!g) {
		snprintf(err, errlen, "out of memory");
		return NULL;
	}
	g->eng = e;
	g->refs = 1;
	g->L = sbx_newstate(&g->sbx, e->cfg.script_memory_bytes, g);
	if (!g->L) {
		snprintf(err, errlen, "cannot create a Lua state within %zu bytes", e->cfg.script_memory_bytes);
		free(g);
		return NULL;
	}
	/* Requests make short-lived garbage: the generational collector suits it. */
	lua_gc(g->L, LUA_GCGEN, 0, 0);
	lua_pushcfunction(g->L, load_protected);
	lua_pushlightuserdata(g->L, g);
	sbx_budget(g->L, &budget, e->cfg.script_max_instructions * 4);
	int rc = lua_pcall(g->L, 1, 0, 0);
	sbx_unbudget(g->L);
	if (rc != LUA_OK) {
		const char *msg = rc == LUA_ERRMEM ? "out of memory (script memory limit)" : lua_tostring(g->L, -1);
		snprintf(err, errlen, "%s", msg ? msg : "unknown error");
		lua_close(g->L);
		free(g);
		return NULL;
	}
	gettimeofday(&g->loaded_at, NULL);
	return g;
}

void script_gen_push_app_field(struct script_gen *g, const char *name)
{
	lua_rawgeti(g->L, LUA_REGISTRYINDEX, g->app_ref);
	lua_getfield(g->L, -1, name);
	lua_remove(g->L, -2);
}

void script_gen_ref(struct script_gen *g)
{
	g->refs++;
}

void script_gen_unref(struct script_gen *g)
{
	if (--g->refs > 0)
		return;
	struct engine *e = g->eng;
	if (g->retired) {
		e->draining--;
		log_info(&e->log, NULL, "script generation %llu drained and freed", (unsigned long long)g->id);
	}
	lua_close(g->L);
	free(g);
}

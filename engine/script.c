/* script.c — loading a script generation: the jailed VM, the engine's modules, lualib and the scripts. */
#include "script.h"

#include <ctype.h>
#include <stdlib.h>
#include <string.h>

#include <event2/event.h>
#include <lauxlib.h>

#include "bill.h"
#include "clock.h"
#include "coro.h"
#include "engine.h"
#include "fetch.h"
#include "gen.h"
#include "host.h"
#include "http.h"
#include "jobs.h"
#include "json.h"
#include "secure.h"
#include "store.h"
#include "wxclient.h"

#define MAX_SCRIPT_BYTES (4u << 20)

/* ---- require: scripts first, then lualib; text only; one shared jail env ---- */

/* Upvalues: 1 = engine (light), 2 = env, 3 = loaded table, 4 = names of the library's modules. */
/* 1 when the module is a script, 2 when it is the library's (lualib), 0 when there is none. */
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
			return d + 1;
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
	if (strcmp(name, "wechatpay") == 0 || strcmp(name, "wechatpay.core") == 0)
		((struct gen *)jail_of(L)->owner)->uses_wechatpay = 1;
	lua_getfield(L, lua_upvalueindex(3), name);
	if (lua_toboolean(L, -1)) {
		if (lua_islightuserdata(L, -1))
			return luaL_error(L, "require: '%s' requires itself (a loop)", name);
		if (lua_getfield(L, lua_upvalueindex(4), name) != LUA_TNIL)
			jail_push_view(L, -2); /* the library's tables are shared by every request: read-only */
		else
			lua_pop(L, 1);
		return 1;
	}
	int where = find_module(L, e, name, path, sizeof path);
	if (!where)
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
	lua_setupvalue(L, -2, 1);    /* _ENV = the jail env */
	lua_pushlightuserdata(L, L); /* "loading" marker catches loops */
	lua_setfield(L, lua_upvalueindex(3), name);
	lua_pushstring(L, name);
	lua_call(L, 1, 1);
	if (lua_isnil(L, -1)) {
		lua_pop(L, 1);
		lua_pushboolean(L, 1);
	}
	lua_pushvalue(L, -1);
	lua_setfield(L, lua_upvalueindex(3), name);
	if (where == 2) {
		lua_pushboolean(L, 1);
		lua_setfield(L, lua_upvalueindex(4), name);
		jail_push_view(L, -1);
	}
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
	log_emit(&e->log, level, coro_reqid(L), msg, fields);
	return 0;
}

static int l_log_debug(lua_State *L)
{
	return log_at(L, LOG_DEBUG);
}
static int l_log_info(lua_State *L)
{
	return log_at(L, LOG_INFO);
}
static int l_log_warn(lua_State *L)
{
	return log_at(L, LOG_WARN);
}
static int l_log_error(lua_State *L)
{
	return log_at(L, LOG_ERROR);
}

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
	lua_pushinteger(L, clock_now_ms());
	return 1;
}

static int l_sleep(lua_State *L)
{
	lua_Integer ms = luaL_checkinteger(L, 1);
	luaL_argcheck(L, ms >= 0 && ms <= 24 * 3600 * 1000, 1, "sleep takes 0 to 86400000 ms");
	lua_settop(L, 0);
	return coro_sleepk(L, "clock.sleep", (int64_t)ms * 1000, 0, NULL);
}

/* ---- building a generation ---- */

static void register_modules(lua_State *L, struct engine *e, int env)
{
	static const luaL_Reg logf[] = { { "debug", l_log_debug },
		                         { "info", l_log_info },
		                         { "warn", l_log_warn },
		                         { "error", l_log_error },
		                         { NULL, NULL } };
	static const luaL_Reg clockf[] = { { "now", l_now }, { "sleep", l_sleep }, { NULL, NULL } };

	http_register_lua(L);
	json_push_lua(L);
	int json = lua_gettop(L);
	jail_charge_functions(L, json);
	lua_pushvalue(L, json);
	jail_set_readonly(L, env, "json");

	store_push_lua(L, e);
	jail_set_readonly(L, env, "db");
	fetch_push_lua(L, e);
	jail_set_readonly(L, env, "http");
	lua_pushvalue(L, json);
	jobs_push_lua(L, e); /* consumes json: payloads are encoded with it */
	jail_set_readonly(L, env, "jobs");
	metrics_push_lua(L, &e->metrics);
	jail_set_readonly(L, env, "metrics");
	secure_push_lua(L, e);
	jail_charge_functions(L, -1);
	jail_set_readonly(L, env, "secure");
	lua_pushvalue(L, json);
	host_push_lua(L, e); /* consumes json: replies are decoded with it */
	jail_set_readonly(L, env, "host");

	lua_newtable(L);
	lua_pushlightuserdata(L, e);
	luaL_setfuncs(L, logf, 1);
	jail_set_readonly(L, env, "log");
	lua_newtable(L);
	lua_pushlightuserdata(L, e);
	luaL_setfuncs(L, clockf, 1);
	jail_set_readonly(L, env, "clock");

	lua_pushlightuserdata(L, e);
	lua_pushcclosure(L, l_print, 1);
	jail_set_global(L, env, "print");

	/* config: the `app` table of the config file, decoded afresh for each generation */
	lua_getfield(L, json, "decode");
	lua_pushstring(L, e->cfg.app_json);
	lua_call(L, 1, 1);
	jail_set_readonly(L, env, "config");
	lua_pop(L, 1); /* json */
}

/* Fetch app[name] as a function and keep a registry reference to it. */
static int ref_app_function(lua_State *L, int app, const char *name)
{
	lua_getfield(L, app, name);
	if (!lua_isfunction(L, -1))
		return luaL_error(L, "lualib 'paygate' does not define %s", name);
	return luaL_ref(L, LUA_REGISTRYINDEX);
}

/* loaded[m->name] = the value m->open pushes; the engine's own names are not the host's to take. [-0, +0, e] */
static void open_host_module(lua_State *L, struct engine *e, const struct lua_module *m, int loaded)
{
	char path[1024] = "";
	if (lua_getfield(L, loaded, m->name) != LUA_TNIL)
		luaL_error(L, "Lua module '%s' of the host: the engine has a module of that name", m->name);
	lua_pop(L, 1);
	if (find_module(L, e, m->name, path, sizeof path) || strcmp(m->name, "paygate") == 0 ||
	    strcmp(m->name, "init") == 0)
		luaL_error(L, "Lua module '%s' of the host would hide the script of that name%s%s; name it otherwise",
		           m->name, path[0] ? " " : "", path);
	int top = lua_gettop(L);
	if (m->open(L, m->arg) != 1 || lua_gettop(L) != top + 1)
		luaL_error(L, "Lua module '%s' of the host: open must push one value and return 1", m->name);
	lua_setfield(L, loaded, m->name);
}

/* [-1 (lightuserdata gen), +0]: everything that can raise runs here, under the load budget. */
static int load_protected(lua_State *L)
{
	struct gen *g = lua_touserdata(L, 1);
	struct engine *e = g->eng;

	jail_push_env(L);
	int env = lua_gettop(L);
	register_modules(L, e, env);

	lua_newtable(L); /* loaded modules, with the engine's own preloaded */
	int loaded = lua_gettop(L);
	lua_getfield(L, env, "json");
	lua_getfield(L, env, "http");
	wxc_push_lua(L, e);
	lua_setfield(L, loaded, "wechatpay.core");
	bill_push_lua(L);
	lua_setfield(L, loaded, "wechatpay.bill");
	for (int i = 0; i < e->nmodules; i++)
		open_host_module(L, e, &e->modules[i], loaded);
	lua_pushlightuserdata(L, e);
	lua_pushvalue(L, env);
	lua_pushvalue(L, loaded);
	lua_newtable(L);
	lua_pushcclosure(L, l_require, 4);
	lua_pushvalue(L, -1);
	jail_set_global(L, env, "require");
	int req = lua_gettop(L);

	lua_pushvalue(L, req);
	lua_pushliteral(L, "paygate");
	lua_call(L, 1, 0);
	lua_getfield(L, loaded, "paygate"); /* the real table: scripts get a read-only view of it */
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

struct gen *script_load(struct engine *e, char *err, size_t errlen)
{
	struct gen *g = gen_new(e, e->cfg.script_memory_bytes);
	struct jail_budget budget = { 0 };

	if (!g) {
		snprintf(err, errlen, "cannot create a Lua state within %zu bytes", e->cfg.script_memory_bytes);
		return NULL;
	}
	/* Requests make short-lived garbage: the generational collector suits it. */
	lua_gc(g->L, LUA_GCGEN, 0, 0);
	lua_pushcfunction(g->L, load_protected);
	lua_pushlightuserdata(g->L, g);
	jail_budget(g->L, &budget, e->cfg.script_max_instructions * 4);
	int rc = lua_pcall(g->L, 1, 0, 0);
	jail_unbudget(g->L);
	if (rc != LUA_OK) {
		const char *msg = rc == LUA_ERRMEM ? "out of memory (script memory limit)" : lua_tostring(g->L, -1);
		snprintf(err, errlen, "%s", msg ? msg : "unknown error");
		gen_unref(g);
		return NULL;
	}
	gettimeofday(&g->loaded_at, NULL);
	return g;
}

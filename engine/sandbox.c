/* sandbox.c — what a script may touch: capped memory, an instruction budget, allow-listed globals. */
#include "sandbox.h"

#include <stdlib.h>
#include <string.h>

#include <lauxlib.h>
#include <lualib.h>

/* ---- the allocator: a byte cap per generation ---- */

/*
** Lua's allocator contract: nsize == 0 frees; growth may fail (Lua then
** collects garbage and retries before raising LUA_ERRMEM); shrinking must not.
*/
static void *sbx_alloc(void *ud, void *ptr, size_t osize, size_t nsize)
{
	struct sbx *s = ud;
	size_t old = ptr ? osize : 0;

	if (nsize == 0) {
		free(ptr);
		s->used -= old;
		return NULL;
	}
	if (nsize > old && nsize - old > s->limit - s->used)
		return NULL;
	void *np = realloc(ptr, nsize);
	if (!np)
		return NULL;
	s->used = s->used - old + nsize;
	if (s->used > s->peak)
		s->peak = s->used;
	return np;
}

/* ---- the instruction budget ---- */

/*
** Runs every SBX_HOOK_EVERY instructions. Once the budget is spent the hook
** re-arms itself for every instruction, so a script that catches the error
** with pcall is stopped again at its very next instruction (Redis does the
** same with a line hook).
*/
static void sbx_hook(lua_State *L, lua_Debug *ar)
{
	struct sbx *s = sbx_of(L);
	struct sbx_budget *b = s->active;

	(void)ar;
	if (!b)
		return;
	if (!b->killed) {
		b->left -= SBX_HOOK_EVERY;
		if (b->left > 0)
			return;
		b->killed = 1;
	}
	lua_sethook(L, sbx_hook, LUA_MASKCOUNT, 1);
	luaL_error(L, "script exceeded its instruction budget (a runaway loop?)");
}

static int sbx_panic(lua_State *L)
{
	const char *msg = lua_tostring(L, -1);
	fprintf(stderr, "paygate: unprotected Lua error: %s\n", msg ? msg : "?");
	abort();
}

lua_State *sbx_newstate(struct sbx *s, size_t limit, void *owner)
{
	memset(s, 0, sizeof *s);
	s->limit = limit;
	s->owner = owner;
	lua_State *L = lua_newstate(sbx_alloc, s);
	if (!L)
		return NULL;
	lua_atpanic(L, sbx_panic);
	*(void **)lua_getextraspace(L) = NULL;   /* threads copy it: "not an engine coroutine" */
	lua_sethook(L, sbx_hook, LUA_MASKCOUNT, SBX_HOOK_EVERY);
	return L;
}

struct sbx *sbx_of(lua_State *L)
{
	void *ud;
	lua_getallocf(L, &ud);
	return ud;
}

void sbx_budget(lua_State *L, struct sbx_budget *b, int64_t instructions)
{
	if (instructions > 0) {
		b->left = instructions;
		b->killed = 0;
	}
	sbx_of(L)->active = b;
}

void sbx_unbudget(lua_State *L)
{
	sbx_of(L)->active = NULL;
}

/* ---- the environment ---- */

static int strict_index(lua_State *L)
{
	return luaL_error(L, "undefined global '%s'", luaL_optstring(L, 2, "?"));
}

static int strict_newindex(lua_State *L)
{
	return luaL_error(L, "assignment to undeclared global '%s' (declare it local)",
	                  luaL_optstring(L, 2, "?"));
}

static int readonly_newindex(lua_State *L)
{
	return luaL_error(L, "attempt to modify a read-only table (field '%s')",
	                  luaL_optstring(L, 2, "?"));
}

void sbx_set_readonly(lua_State *L, int env_index, const char *name)
{
	env_index = lua_absindex(L, env_index);
	lua_newtable(L);                      /* proxy */
	lua_createtable(L, 0, 3);             /* its metatable */
	lua_pushvalue(L, -3);
	lua_setfield(L, -2, "__index");
	lua_pushcfunction(L, readonly_newindex);
	lua_setfield(L, -2, "__newindex");
	lua_pushboolean(L, 0);
	lua_setfield(L, -2, "__metatable");
	lua_setmetatable(L, -2);
	sbx_set_global(L, env_index, name);   /* env[name] = proxy */
	lua_pop(L, 1);                        /* the real table */
}

void sbx_set_global(lua_State *L, int env_index, const char *name)
{
	env_index = lua_absindex(L, env_index);
	lua_pushstring(L, name);
	lua_insert(L, -2);
	lua_rawset(L, env_index);
}

/* load(chunk [, name [, mode [, env]]]) with mode forced to text: no bytecode, ever. */
static int safe_load(lua_State *L)
{
	size_t len;
	const char *s = luaL_checklstring(L, 1, &len);
	const char *name = luaL_optstring(L, 2, "=(load)");
	const char *mode = luaL_optstring(L, 3, "t");

	if (strcmp(mode, "t") != 0)
		return luaL_error(L, "load: only text chunks are allowed (mode \"t\")");
	if (len > 0 && s[0] == LUA_SIGNATURE[0])
		return luaL_error(L, "load: binary chunks are not allowed");
	if (luaL_loadbufferx(L, s, len, name, "t") != LUA_OK) {
		luaL_pushfail(L);
		lua_insert(L, -2);
		return 2;
	}
	if (!lua_isnone(L, 4)) {
		lua_pushvalue(L, 4);
	} else {
		lua_pushvalue(L, lua_upvalueindex(1));
	}
	if (!lua_setupvalue(L, -2, 1))
		lua_pop(L, 1);
	return 1;
}

/* collectgarbage: scripts may ask how much memory they use, not stop the collector. */
static int safe_collectgarbage(lua_State *L)
{
	const char *opt = luaL_optstring(L, 1, "collect");
	if (strcmp(opt, "count") == 0) {
		lua_pushnumber(L, (lua_Number)lua_gc(L, LUA_GCCOUNT) +
		                  (lua_Number)lua_gc(L, LUA_GCCOUNTB) / 1024.0);
		return 1;
	}
	if (strcmp(opt, "collect") == 0 || strcmp(opt, "step") == 0) {
		lua_gc(L, strcmp(opt, "collect") == 0 ? LUA_GCCOLLECT : LUA_GCSTEP, 0);
		lua_pushinteger(L, 0);
		return 1;
	}
	return luaL_error(L, "collectgarbage('%s') is not allowed in scripts", opt);
}

static const char *const base_allowed[] = {
	"assert", "error", "ipairs", "next", "pairs", "pcall", "xpcall", "select",
	"tonumber", "tostring", "type", "rawequal", "rawlen", "rawget",
	"setmetatable", "getmetatable", "_VERSION", NULL
};

static const char *const libs_allowed[] = {
	"string", "table", "math", "utf8", "coroutine", NULL
};

static const char *const os_allowed[] = { "time", "clock", "date", "difftime", NULL };

/* Copy the named fields of the table at `from` into a new table. [-0, +1, e] */
static void copy_fields(lua_State *L, int from, const char *const *names)
{
	lua_newtable(L);
	for (; *names; names++) {
		lua_getfield(L, from, *names);
		lua_setfield(L, -2, *names);
	}
}

/* Shallow copy of the table at `from`, minus `except`. [-0, +1, e] */
static void copy_table(lua_State *L, int from, const char *except)
{
	lua_newtable(L);
	lua_pushnil(L);
	while (lua_next(L, from)) {
		if (except && lua_type(L, -2) == LUA_TSTRING && strcmp(lua_tostring(L, -2), except) == 0) {
			lua_pop(L, 1);
			continue;
		}
		lua_pushvalue(L, -2);
		lua_insert(L, -2);
		lua_rawset(L, -4);
	}
}

static void open_libs(lua_State *L)
{
	static const luaL_Reg libs[] = {
		{ LUA_GNAME, luaopen_base }, { LUA_STRLIBNAME, luaopen_string },
		{ LUA_TABLIBNAME, luaopen_table }, { LUA_MATHLIBNAME, luaopen_math },
		{ LUA_UTF8LIBNAME, luaopen_utf8 }, { LUA_COLIBNAME, luaopen_coroutine },
		{ LUA_OSLIBNAME, luaopen_os }, { NULL, NULL }
	};
	for (const luaL_Reg *l = libs; l->name; l++) {
		luaL_requiref(L, l->name, l->func, 1);
		lua_pop(L, 1);
	}
}

void sbx_push_env(lua_State *L)
{
	open_libs(L);
	lua_pushglobaltable(L);
	int g = lua_gettop(L);

	copy_fields(L, g, base_allowed);
	int env = lua_gettop(L);
	lua_pushvalue(L, env);
	lua_pushcclosure(L, safe_load, 1);
	lua_setfield(L, env, "load");
	lua_pushcfunction(L, safe_collectgarbage);
	lua_setfield(L, env, "collectgarbage");

	for (const char *const *lib = libs_allowed; *lib; lib++) {
		lua_getfield(L, g, *lib);
		copy_table(L, lua_gettop(L), strcmp(*lib, "string") == 0 ? "dump" : NULL);
		lua_remove(L, -2);
		sbx_set_readonly(L, env, *lib);
	}
	lua_getfield(L, g, "os");
	copy_fields(L, lua_gettop(L), os_allowed);
	lua_remove(L, -2);
	sbx_set_readonly(L, env, "os");

	/* String methods (s:upper()) keep working, but the metatable is hidden. */
	lua_pushliteral(L, "");
	lua_getmetatable(L, -1);
	lua_pushboolean(L, 0);
	lua_setfield(L, -2, "__metatable");
	lua_pop(L, 2);

	lua_pushvalue(L, env);
	lua_setfield(L, env, "_G");
	lua_createtable(L, 0, 3);
	lua_pushcfunction(L, strict_index);
	lua_setfield(L, -2, "__index");
	lua_pushcfunction(L, strict_newindex);
	lua_setfield(L, -2, "__newindex");
	lua_pushboolean(L, 0);
	lua_setfield(L, -2, "__metatable");
	lua_setmetatable(L, env);
	lua_remove(L, g);
}

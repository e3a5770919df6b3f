/* jail.c — the script jail: what a script may touch: capped memory, an instruction budget, allow-listed globals. */
#include "jail.h"

#include <stdlib.h>
#include <string.h>

#include <lauxlib.h>
#include <lualib.h>

/* ---- the allocator: a byte cap per generation ---- */

/*
** Lua's allocator contract: nsize == 0 frees; growth may fail (Lua then
** collects garbage and retries before raising LUA_ERRMEM); shrinking must not.
*/
static void *jail_alloc(void *ud, void *ptr, size_t osize, size_t nsize)
{
	struct jail *s = ud;
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
** Runs every JAIL_HOOK_EVERY instructions. Once the budget is spent the hook
** re-arms itself for every instruction, so a script that catches the error
** with pcall is stopped again at its very next instruction (Redis does the
** same with a line hook).
*/
static void jail_hook(lua_State *L, lua_Debug *ar)
{
	struct jail *s = jail_of(L);
	struct jail_budget *b = s->active;

	(void)ar;
	if (!b)
		return;
	if (!b->killed) {
		b->left -= JAIL_HOOK_EVERY;
		if (b->left > 0)
			return;
		b->killed = 1;
	}
	lua_sethook(L, jail_hook, LUA_MASKCOUNT, 1);
	if (b->thread && b->thread != L) /* stopped inside a coroutine the script made */
		lua_sethook(b->thread, jail_hook, LUA_MASKCOUNT, 1);
	luaL_error(L, "script exceeded its instruction budget (a runaway loop?)");
}

static int jail_panic(lua_State *L)
{
	const char *msg = lua_tostring(L, -1);
	fprintf(stderr, "paygate: unprotected Lua error: %s\n", msg ? msg : "?");
	abort();
}

lua_State *jail_newstate(struct jail *s, size_t limit, void *owner)
{
	memset(s, 0, sizeof *s);
	s->limit = limit;
	s->owner = owner;
	lua_State *L = lua_newstate(jail_alloc, s);
	if (!L)
		return NULL;
	lua_atpanic(L, jail_panic);
	*(void **)lua_getextraspace(L) = NULL; /* threads copy it: "not an engine coroutine" */
	lua_sethook(L, jail_hook, LUA_MASKCOUNT, JAIL_HOOK_EVERY);
	return L;
}

struct jail *jail_of(lua_State *L)
{
	void *ud;
	lua_getallocf(L, &ud);
	return ud;
}

void jail_budget(lua_State *L, struct jail_budget *b, int64_t instructions)
{
	if (instructions > 0) {
		b->left = instructions;
		b->killed = 0;
	}
	jail_of(L)->active = b;
}

void jail_unbudget(lua_State *L)
{
	jail_of(L)->active = NULL;
}

/* ---- the environment ---- */

static int strict_index(lua_State *L)
{
	return luaL_error(L, "undefined global '%s'", luaL_optstring(L, 2, "?"));
}

static int strict_newindex(lua_State *L)
{
	return luaL_error(L, "assignment to undeclared global '%s' (declare it local)", luaL_optstring(L, 2, "?"));
}

static int readonly_newindex(lua_State *L)
{
	return luaL_error(L, "attempt to modify a read-only table (field '%s')", luaL_optstring(L, 2, "?"));
}

void jail_set_readonly(lua_State *L, int env_index, const char *name)
{
	env_index = lua_absindex(L, env_index);
	lua_newtable(L);          /* proxy */
	lua_createtable(L, 0, 3); /* its metatable */
	lua_pushvalue(L, -3);
	lua_setfield(L, -2, "__index");
	lua_pushcfunction(L, readonly_newindex);
	lua_setfield(L, -2, "__newindex");
	lua_pushboolean(L, 0);
	lua_setfield(L, -2, "__metatable");
	lua_setmetatable(L, -2);
	jail_set_global(L, env_index, name); /* env[name] = proxy */
	lua_pop(L, 1);                       /* the real table */
}

void jail_set_global(lua_State *L, int env_index, const char *name)
{
	env_index = lua_absindex(L, env_index);
	/* An env made by jail_push_env keeps its names in the table behind __index. */
	if (lua_getmetatable(L, env_index)) {
		lua_getfield(L, -1, "__index");
		lua_remove(L, -2);
		if (lua_istable(L, -1)) {
			lua_insert(L, -2);
			lua_pushstring(L, name);
			lua_insert(L, -2);
			lua_rawset(L, -3);
			lua_pop(L, 1);
			return;
		}
		lua_pop(L, 1);
	}
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
		lua_pushnumber(L, (lua_Number)lua_gc(L, LUA_GCCOUNT) + (lua_Number)lua_gc(L, LUA_GCCOUNTB) / 1024.0);
		return 1;
	}
	if (strcmp(opt, "collect") == 0 || strcmp(opt, "step") == 0) {
		lua_gc(L, strcmp(opt, "collect") == 0 ? LUA_GCCOLLECT : LUA_GCSTEP, 0);
		lua_pushinteger(L, 0);
		return 1;
	}
	return luaL_error(L, "collectgarbage('%s') is not allowed in scripts", opt);
}

/* setmetatable without __gc: finalizers run with hooks off, beyond any budget. */
static int safe_setmetatable(lua_State *L)
{
	if (lua_istable(L, 2) && lua_getfield(L, 2, "__gc") != LUA_TNIL)
		return luaL_error(L, "setmetatable: __gc metamethods are not allowed in scripts");
	lua_settop(L, 2);
	lua_pushvalue(L, lua_upvalueindex(1));
	lua_insert(L, 1);
	lua_call(L, 2, 1);
	return 1;
}

/*
** Pattern matching runs in C, out of reach of the instruction hook, and
** patterns like ".-.-.-b" backtrack in time n^k. Refuse a call whose worst
** case (subject length to the power of the number of repetition items) is
** beyond JAIL_PATTERN_BUDGET; plain finds and simple patterns are unaffected.
*/
#define JAIL_PATTERN_BUDGET 1e9

static int pattern_items(const char *p, size_t n)
{
	int k = 0;
	for (size_t i = 0; i < n; i++) {
		if (p[i] == '%') {
			i++;
		} else if (p[i] == '[') {
			for (i++; i < n && p[i] != ']'; i++)
				if (p[i] == '%')
					i++;
		} else if (p[i] == '*' || p[i] == '+' || p[i] == '-') {
			k++;
		}
	}
	return k;
}

static int guarded_pattern(lua_State *L)
{
	size_t n, plen;
	const char *s = luaL_checklstring(L, 1, &n);
	const char *p = luaL_checklstring(L, 2, &plen);
	int plain = lua_tointeger(L, lua_upvalueindex(2)) && lua_toboolean(L, 4); /* find(s, p, init, plain) */
	(void)s;
	if (!plain) {
		double cost = 1;
		for (int k = pattern_items(p, plen); k > 0 && cost <= JAIL_PATTERN_BUDGET; k--)
			cost *= (double)n + 1;
		if (cost > JAIL_PATTERN_BUDGET)
			return luaL_error(L,
			                  "pattern '%s' is too costly for a subject of %d bytes "
			                  "(it could backtrack for a very long time)",
			                  p, (int)n);
	}
	int nargs = lua_gettop(L);
	lua_pushvalue(L, lua_upvalueindex(1));
	lua_insert(L, 1);
	lua_call(L, nargs, LUA_MULTRET);
	return lua_gettop(L);
}

/* Wrap string.find/match/gmatch/gsub of the copy at the top of the stack. */
static void guard_string_lib(lua_State *L)
{
	static const char *const fns[] = { "find", "match", "gmatch", "gsub", NULL };
	for (const char *const *f = fns; *f; f++) {
		lua_getfield(L, -1, *f);
		lua_pushinteger(L, strcmp(*f, "find") == 0);
		lua_pushcclosure(L, guarded_pattern, 2);
		lua_setfield(L, -2, *f);
	}
}

/* coroutine.resume/close on a request's own coroutine would steal or kill it. */
static int guarded_coroutine(lua_State *L)
{
	lua_State *co = lua_tothread(L, 1);
	if (co && *(void **)lua_getextraspace(co) != NULL)
		return luaL_error(L, "coroutine: a request's or job's own coroutine cannot be resumed or closed "
		                     "by a script");
	int nargs = lua_gettop(L);
	lua_pushvalue(L, lua_upvalueindex(1));
	lua_insert(L, 1);
	lua_call(L, nargs, LUA_MULTRET);
	return lua_gettop(L);
}

static void guard_coroutine_lib(lua_State *L)
{
	static const char *const fns[] = { "resume", "close", NULL };
	for (const char *const *f = fns; *f; f++) {
		lua_getfield(L, -1, *f);
		lua_pushcclosure(L, guarded_coroutine, 1);
		lua_setfield(L, -2, *f);
	}
}

static const char *const base_allowed[] = { "assert", "error",  "ipairs",       "next",         "pairs",    "pcall",
	                                    "xpcall", "select", "tonumber",     "tostring",     "type",     "rawequal",
	                                    "rawlen", "rawget", "setmetatable", "getmetatable", "_VERSION", NULL };

static const char *const libs_allowed[] = { "string", "table", "math", "utf8", "coroutine", NULL };

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
	static const luaL_Reg libs[] = { { LUA_GNAME, luaopen_base },       { LUA_STRLIBNAME, luaopen_string },
		                         { LUA_TABLIBNAME, luaopen_table }, { LUA_MATHLIBNAME, luaopen_math },
		                         { LUA_UTF8LIBNAME, luaopen_utf8 }, { LUA_COLIBNAME, luaopen_coroutine },
		                         { LUA_OSLIBNAME, luaopen_os },     { NULL, NULL } };
	for (const luaL_Reg *l = libs; l->name; l++) {
		luaL_requiref(L, l->name, l->func, 1);
		lua_pop(L, 1);
	}
}

/*
** The globals scripts see are two tables: `env`, always empty, whose
** metatable forwards reads to `real` (the allowed names) and refuses every
** write; and `real`, whose own metatable raises on names that do not exist.
** So no request can add, replace or delete a global for the requests after
** it, and a typo is an error instead of a nil.
*/
void jail_push_env(lua_State *L)
{
	open_libs(L);
	lua_pushglobaltable(L);
	int g = lua_gettop(L);

	copy_fields(L, g, base_allowed);
	int real = lua_gettop(L);
	lua_newtable(L);
	int env = lua_gettop(L);

	lua_pushvalue(L, env);
	lua_pushcclosure(L, safe_load, 1);
	lua_setfield(L, real, "load");
	lua_pushcfunction(L, safe_collectgarbage);
	lua_setfield(L, real, "collectgarbage");
	lua_getfield(L, g, "setmetatable");
	lua_pushcclosure(L, safe_setmetatable, 1);
	lua_setfield(L, real, "setmetatable");

	for (const char *const *lib = libs_allowed; *lib; lib++) {
		lua_getfield(L, g, *lib);
		copy_table(L, lua_gettop(L), strcmp(*lib, "string") == 0 ? "dump" : NULL);
		lua_remove(L, -2);
		if (strcmp(*lib, "string") == 0)
			guard_string_lib(L);
		else if (strcmp(*lib, "coroutine") == 0)
			guard_coroutine_lib(L);
		jail_set_readonly(L, real, *lib);
	}
	lua_getfield(L, g, "os");
	copy_fields(L, lua_gettop(L), os_allowed);
	lua_remove(L, -2);
	jail_set_readonly(L, real, "os");

	/* s:upper() keeps working through the filtered copy; the metatable itself is hidden. */
	lua_pushliteral(L, "");
	lua_getmetatable(L, -1);
	lua_getfield(L, real, "string");
	lua_getmetatable(L, -1);
	lua_getfield(L, -1, "__index"); /* the copy behind the read-only proxy */
	lua_setfield(L, -4, "__index");
	lua_pop(L, 2);
	lua_pushboolean(L, 0);
	lua_setfield(L, -2, "__metatable");
	lua_pop(L, 2);

	lua_pushvalue(L, env);
	lua_setfield(L, real, "_G");
	lua_createtable(L, 0, 2); /* real: unknown names raise */
	lua_pushcfunction(L, strict_index);
	lua_setfield(L, -2, "__index");
	lua_pushboolean(L, 0);
	lua_setfield(L, -2, "__metatable");
	lua_setmetatable(L, real);
	lua_createtable(L, 0, 3); /* env: reads go to real, writes fail */
	lua_pushvalue(L, real);
	lua_setfield(L, -2, "__index");
	lua_pushcfunction(L, strict_newindex);
	lua_setfield(L, -2, "__newindex");
	lua_pushboolean(L, 0);
	lua_setfield(L, -2, "__metatable");
	lua_setmetatable(L, env);
	lua_remove(L, real);
	lua_remove(L, g);
}

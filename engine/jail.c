/* jail.c — the script jail: what a script may touch: capped memory, an instruction budget, allow-listed globals. */
#include "jail.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include <lauxlib.h>
#include <lualib.h>

#include "pattern.h"

static void jail_hook(lua_State *L, lua_Debug *ar);

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
	if (nsize > old && s->active) { /* bytes made cost time: charge them (C functions copy in one instruction) */
		struct jail_budget *b = s->active;
		b->left -= (int64_t)((nsize - old) / JAIL_BYTES_PER_INSTRUCTION);
		if (b->left <= 0 && !b->killed && b->thread) /* stop at its next instruction, not 1000 later */
			lua_sethook(b->thread, jail_hook, LUA_MASKCOUNT, 1);
	}
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
static void budget_spent(lua_State *L, struct jail_budget *b)
{
	b->killed = 1;
	lua_sethook(L, jail_hook, LUA_MASKCOUNT, 1);
	if (b->thread && b->thread != L) /* stopped inside a coroutine the script made */
		lua_sethook(b->thread, jail_hook, LUA_MASKCOUNT, 1);
	luaL_error(L, "script exceeded its instruction budget (a runaway loop?)");
}

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
	}
	budget_spent(L, b);
}

void jail_charge(lua_State *L, int64_t instructions)
{
	struct jail_budget *b = jail_of(L)->active;
	if (!b || instructions <= 0)
		return;
	b->left -= instructions;
	if (b->left <= 0 || b->killed)
		budget_spent(L, b);
}

int jail_charge_nothrow(lua_State *L, int64_t instructions)
{
	struct jail_budget *b = jail_of(L)->active;
	if (!b)
		return 0;
	b->left -= instructions;
	if (b->left > 0 && !b->killed)
		return 0;
	b->killed = 1;
	lua_sethook(L, jail_hook, LUA_MASKCOUNT, 1);
	if (b->thread && b->thread != L)
		lua_sethook(b->thread, jail_hook, LUA_MASKCOUNT, 1);
	return 1;
}

int jail_budget_spent(lua_State *L)
{
	struct jail_budget *b = jail_of(L)->active;
	return b && b->killed;
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

/*
** Read-only views of shared tables: what `require` gives scripts for the
** library's modules. A view holds nothing itself; reads go to the real table
** and a table read through a view is itself a view (so the constant tables
** inside a module are covered too); writes raise; # and pairs work. The
** module's own code keeps its real table.
*/
#define JAIL_VIEWS "paygate.jail.views"

static int view_index(lua_State *L)
{
	lua_settop(L, 2);
	lua_gettable(L, lua_upvalueindex(1));
	jail_push_view(L, -1);
	return 1;
}

static int view_newindex(lua_State *L)
{
	return luaL_error(L, "attempt to modify a read-only table (field '%s' of a shared library module)",
	                  luaL_optstring(L, 2, "?"));
}

static int view_len(lua_State *L)
{
	lua_len(L, lua_upvalueindex(1));
	return 1;
}

static int view_next(lua_State *L)
{
	lua_settop(L, 2);
	if (!lua_next(L, lua_upvalueindex(1)))
		return 0;
	jail_push_view(L, -1);
	lua_remove(L, -2);
	return 2;
}

static int view_pairs(lua_State *L)
{
	lua_pushvalue(L, lua_upvalueindex(1));
	lua_pushcclosure(L, view_next, 1);
	lua_pushvalue(L, 1); /* the state is the view: the real table never reaches the script */
	lua_pushnil(L);
	return 3;
}

void jail_push_view(lua_State *L, int idx)
{
	idx = lua_absindex(L, idx);
	if (!lua_istable(L, idx)) {
		lua_pushvalue(L, idx);
		return;
	}
	if (luaL_getsubtable(L, LUA_REGISTRYINDEX, JAIL_VIEWS) == 0) { /* new: real -> view, weak keys */
		lua_createtable(L, 0, 1);
		lua_pushliteral(L, "k");
		lua_setfield(L, -2, "__mode");
		lua_setmetatable(L, -2);
	}
	lua_pushvalue(L, idx);
	if (lua_rawget(L, -2) == LUA_TTABLE) {
		lua_remove(L, -2);
		return;
	}
	lua_pop(L, 1);
	lua_newtable(L); /* the view */
	lua_createtable(L, 0, 5);
	static const struct {
		const char *name;
		lua_CFunction fn;
	} mm[] = { { "__index", view_index }, { "__len", view_len }, { "__pairs", view_pairs } };
	for (size_t i = 0; i < sizeof mm / sizeof mm[0]; i++) {
		lua_pushvalue(L, idx);
		lua_pushcclosure(L, mm[i].fn, 1);
		lua_setfield(L, -2, mm[i].name);
	}
	lua_pushcfunction(L, view_newindex);
	lua_setfield(L, -2, "__newindex");
	lua_pushboolean(L, 0);
	lua_setfield(L, -2, "__metatable");
	lua_setmetatable(L, -2);
	lua_pushvalue(L, idx);
	lua_pushvalue(L, -2);
	lua_rawset(L, -4); /* views[real] = view */
	lua_remove(L, -2);
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
** C functions do work in proportion to their arguments in what the hook sees
** as one instruction: string.rep("", 1e15) loops 1e15 times, table.insert(t,
** 1, x) moves every element, string.upper copies its subject. Each wrapped
** function is charged first, by what it is about to do: the bytes of its
** string arguments, the elements of its table arguments, and for rep, concat,
** move and unpack the count it is asked for; what they allocate is charged by
** the allocator. Pattern functions are this jail's own matcher (pattern.c),
** which charges every step.
*/
enum charge_kind { CHARGE_BYTES, CHARGE_REP, CHARGE_RANGE, CHARGE_SORT, CHARGE_ELEMENTS };

static int64_t bytes_cost(size_t n)
{
	return (int64_t)(n / JAIL_BYTES_PER_INSTRUCTION) + 1;
}

/* What the call with these arguments will cost, in instructions. */
static double call_cost(lua_State *L, enum charge_kind kind)
{
	double cost = 1;
	int n = lua_gettop(L);
	for (int i = 1; i <= n; i++) {
		if (lua_type(L, i) == LUA_TSTRING)
			cost += (double)bytes_cost(lua_rawlen(L, i));
		else if (lua_type(L, i) == LUA_TTABLE && kind != CHARGE_RANGE)
			cost += (double)lua_rawlen(L, i);
	}
	if (kind == CHARGE_REP) { /* rep(s, n, sep): n copies, even of nothing */
		double times = lua_type(L, 2) == LUA_TNUMBER ? (double)lua_tonumber(L, 2) : 0;
		double each = (double)(lua_rawlen(L, 1) + (lua_type(L, 3) == LUA_TSTRING ? lua_rawlen(L, 3) : 0));
		if (times > 0 && times * each <= (double)jail_of(L)->limit) /* beyond it, the allocation fails first */
			cost += times * (1 + each / JAIL_BYTES_PER_INSTRUCTION);
	} else if (kind == CHARGE_RANGE) { /* concat(t, sep, i, j), unpack(t, i, j), move(a, f, e, t) */
		int first = lua_gettop(L) >= 2 && lua_type(L, 2) == LUA_TSTRING ? 3 : 2;
		if (lua_type(L, 1) == LUA_TTABLE && lua_type(L, 2) == LUA_TNUMBER && lua_type(L, 3) == LUA_TNUMBER &&
		    lua_type(L, 4) == LUA_TTABLE)
			first = 2; /* move */
		lua_Integer i = lua_isinteger(L, first) ? lua_tointeger(L, first) : 1;
		lua_Integer j = lua_isinteger(L, first + 1) ? lua_tointeger(L, first + 1)
		                                            : (lua_istable(L, 1) ? (lua_Integer)lua_rawlen(L, 1) : 0);
		if (j >= i)
			cost += (double)j - (double)i + 1;
	} else if (kind == CHARGE_SORT && lua_istable(L, 1)) {
		double len = (double)lua_rawlen(L, 1);
		cost += len * log2(len + 2);
	}
	return cost;
}

static int charged_call(lua_State *L)
{
	double cost = call_cost(L, (enum charge_kind)lua_tointeger(L, lua_upvalueindex(2)));
	jail_charge(L, cost > 4e18 ? INT64_C(4000000000000000000) : (int64_t)cost);
	int nargs = lua_gettop(L);
	lua_pushvalue(L, lua_upvalueindex(1));
	lua_insert(L, 1);
	lua_call(L, nargs, LUA_MULTRET);
	return lua_gettop(L);
}

static void charge_field(lua_State *L, int t, const char *name, enum charge_kind kind)
{
	t = lua_absindex(L, t);
	if (lua_getfield(L, t, name) != LUA_TFUNCTION) {
		lua_pop(L, 1);
		return;
	}
	lua_pushinteger(L, kind);
	lua_pushcclosure(L, charged_call, 2);
	lua_setfield(L, t, name);
}

void jail_charge_functions(lua_State *L, int t)
{
	t = lua_absindex(L, t);
	lua_pushnil(L);
	while (lua_next(L, t)) {
		int cf = lua_iscfunction(L, -1) && lua_type(L, -2) == LUA_TSTRING;
		lua_pop(L, 1);
		if (cf) {
			lua_pushvalue(L, -1);
			lua_pushvalue(L, -1);
			lua_gettable(L, t);
			lua_pushinteger(L, CHARGE_BYTES);
			lua_pushcclosure(L, charged_call, 2);
			lua_settable(L, t); /* replacing an existing key keeps the traversal valid */
		}
	}
}

static void charge_pattern_steps(lua_State *L, int64_t steps)
{
	jail_charge(L, steps);
}

/* The string, table, utf8 and os copies at the top of the stack: charged, and patterns our own. */
static void charge_lib(lua_State *L, const char *lib)
{
	if (strcmp(lib, "string") == 0) {
		lua_getfield(L, -1, "rep");
		jail_charge_functions(L, -2);
		lua_pushinteger(L, CHARGE_REP);
		lua_pushcclosure(L, charged_call, 2);
		lua_setfield(L, -2, "rep");
		pattern_set_functions(L, charge_pattern_steps);
	} else if (strcmp(lib, "table") == 0) {
		static const char *const elements[] = { "insert", "remove", "pack", NULL };
		for (const char *const *f = elements; *f; f++)
			charge_field(L, -1, *f, CHARGE_ELEMENTS);
		charge_field(L, -1, "concat", CHARGE_RANGE);
		charge_field(L, -1, "unpack", CHARGE_RANGE);
		charge_field(L, -1, "move", CHARGE_RANGE);
		charge_field(L, -1, "sort", CHARGE_SORT);
	} else if (strcmp(lib, "utf8") == 0 || strcmp(lib, "os") == 0) {
		jail_charge_functions(L, -1);
	}
}

/*
** xpcall's message handler runs when the error is raised: for the budget's
** own error that is inside the hook, where Lua runs it with hooks off, so a
** handler that loops would never be stopped. Once the budget is spent the
** handler is skipped and the error passes through as it is.
*/
static int guarded_handler(lua_State *L)
{
	if (jail_budget_spent(L))
		return 1;
	int nargs = lua_gettop(L);
	lua_pushvalue(L, lua_upvalueindex(1));
	lua_insert(L, 1);
	lua_call(L, nargs, 1);
	return 1;
}

static int safe_xpcall_done(lua_State *L, int status, lua_KContext extra)
{
	if (status != LUA_OK && status != LUA_YIELD) {
		lua_pushboolean(L, 0);
		lua_pushvalue(L, -2);
		return 2;
	}
	return lua_gettop(L) - (int)extra;
}

/* xpcall(f, msgh, ...) with msgh behind guarded_handler; yields through it like the real one. */
static int safe_xpcall(lua_State *L)
{
	int n = lua_gettop(L);
	luaL_checktype(L, 2, LUA_TFUNCTION);
	lua_pushvalue(L, 2);
	lua_pushcclosure(L, guarded_handler, 1);
	lua_replace(L, 2);
	lua_pushboolean(L, 1);
	lua_pushvalue(L, 1);
	lua_rotate(L, 3, 2); /* f, handler, true, f, args... */
	int status = lua_pcallk(L, n - 2, LUA_MULTRET, 2, 2, safe_xpcall_done);
	return safe_xpcall_done(L, status, 2);
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
	lua_pushcfunction(L, safe_xpcall);
	lua_setfield(L, real, "xpcall");
	charge_field(L, real, "tonumber", CHARGE_BYTES);
	charge_field(L, real, "load", CHARGE_BYTES);

	for (const char *const *lib = libs_allowed; *lib; lib++) {
		lua_getfield(L, g, *lib);
		copy_table(L, lua_gettop(L), strcmp(*lib, "string") == 0 ? "dump" : NULL);
		lua_remove(L, -2);
		charge_lib(L, *lib);
		if (strcmp(*lib, "coroutine") == 0)
			guard_coroutine_lib(L);
		jail_set_readonly(L, real, *lib);
	}
	lua_getfield(L, g, "os");
	copy_fields(L, lua_gettop(L), os_allowed);
	lua_remove(L, -2);
	charge_lib(L, "os");
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

/* jail.h — the script jail: what a script may touch: capped memory, an instruction budget, allow-listed globals. */
#ifndef PAYGATE_JAIL_H
#define PAYGATE_JAIL_H

#include <stddef.h>
#include <stdint.h>

#include <lua.h>

/* Instructions between two budget checks. */
#define JAIL_HOOK_EVERY 1000

/* Bytes a C function may copy, scan or allocate for the cost of one instruction. */
#define JAIL_BYTES_PER_INSTRUCTION 8

/* The instruction budget of one piece of running Lua (a request, a job, a load). */
struct jail_budget {
	int64_t left;
	int killed;
	lua_State *thread; /* the engine coroutine it belongs to, if any */
};

/* One per Lua VM (script generation); it is the allocator's userdata. */
struct jail {
	size_t used; /* bytes the VM holds now */
	size_t peak;
	size_t limit;               /* allocations past this fail: LUA_ERRMEM */
	struct jail_budget *active; /* whose instructions are being counted */
	void *owner;                /* back pointer for engine callbacks (the generation) */
};

/*
** Create a Lua state whose every allocation goes through `s` (capped at
** limit bytes) and whose threads all carry the budget hook. Returns NULL when
** even the empty state does not fit.
*/
lua_State *jail_newstate(struct jail *s, size_t limit, void *owner);

/* The jail of a state (the allocator userdata). */
struct jail *jail_of(lua_State *L);

/* Count `b` against the instructions run from now on, until jail_unbudget. */
void jail_budget(lua_State *L, struct jail_budget *b, int64_t instructions);
void jail_unbudget(lua_State *L);

/*
** Charge work done outside the interpreter (C functions, SQL) to the active
** budget: jail_charge raises the budget's error once it is spent;
** jail_charge_nothrow returns 1 instead (for callbacks that cannot raise).
** Either way the budget is then spent for good: the script is stopped at its
** next instruction, even inside pcall. Without an active budget they do nothing.
*/
void jail_charge(lua_State *L, int64_t instructions);
int jail_charge_nothrow(lua_State *L, int64_t instructions);

/* Whether the active budget is spent. */
int jail_budget_spent(lua_State *L);

/*
** Wrap every C function of the table at t so that a call is first charged
** the bytes of its string arguments and the elements of its table
** arguments. For functions that do not yield. [-0, +0, e]
*/
void jail_charge_functions(lua_State *L, int t);

/*
** Push a read-only view of the value at idx: for a table, a proxy whose reads
** go to it (tables read through it are views too), whose writes raise, with
** # and pairs; any other value as it is. One view per table. [-0, +1, e]
*/
void jail_push_view(lua_State *L, int idx);

/*
** Open the allowed standard libraries and push the protected globals table
** scripts run in: reading or writing an undeclared global is an error, its
** metatable and the library tables cannot be changed, `load` accepts text
** only, and io, debug, package, os.execute, string.dump, dofile, loadfile do
** not exist. [-0, +1, e]
*/
void jail_push_env(lua_State *L);

/*
** Set env[name] to a read-only proxy of the table at the top of the stack,
** popping it. [-1, +0, e]
*/
void jail_set_readonly(lua_State *L, int env_index, const char *name);

/* env[name] = the value at the top of the stack, bypassing strictness. [-1, +0, e] */
void jail_set_global(lua_State *L, int env_index, const char *name);

#endif

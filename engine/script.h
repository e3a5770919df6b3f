/* script.h — script generations: a sandboxed Lua VM holding lualib + scripts, shared by reference. */
#ifndef PAYGATE_SCRIPT_H
#define PAYGATE_SCRIPT_H

#include <stdint.h>
#include <sys/time.h>

#include <lua.h>

#include "sandbox.h"

struct engine;

#define SCRIPT_POOL_MAX 128           /* finished threads kept for reuse */

/*
** One compiled set of scripts. The engine holds one reference to the current
** generation; every request or job running on it holds another. A generation
** retired by a reload is freed when its last user ends.
*/
struct script_gen {
	struct engine *eng;
	uint64_t id;
	int refs;
	int retired;                  /* replaced by a newer generation */
	lua_State *L;
	struct sbx sbx;
	int app_ref;                  /* the `paygate` lualib module table */
	int dispatch_ref;             /* app._dispatch(req) → status, body, headers */
	int run_job_ref;              /* app._run_job(name, payload_json, info) */
	struct timeval loaded_at;
	int npool;                    /* reusable threads (see coro.c) */
	struct { lua_State *co; int ref; } pool[SCRIPT_POOL_MAX];
};

/*
** Build a new generation from the configured lualib and scripts directories:
** fresh VM, sandbox, engine modules, lualib's `paygate`, then scripts/init.lua.
** Migrations are not applied here (see reload). Returns NULL with the error
** (file:line where known) in err; nothing is left allocated.
*/
struct script_gen *script_gen_load(struct engine *e, char *err, size_t errlen);

void script_gen_ref(struct script_gen *g);
void script_gen_unref(struct script_gen *g);

/* Push the app module's field `name` (e.g. "_migrations") onto g->L. [-0, +1] */
void script_gen_push_app_field(struct script_gen *g, const char *name);

/* The request id of the coroutine running on L, or NULL. */
const char *script_reqid(lua_State *L);

#endif

/* gen.h — a script generation's lifetime: one jailed Lua VM, shared by reference, with a pool of threads. */
#ifndef PAYGATE_GEN_H
#define PAYGATE_GEN_H

#include <stdint.h>
#include <sys/time.h>

#include <lua.h>

#include "jail.h"

struct engine;

#define GEN_POOL_MAX 128 /* finished threads kept for reuse */

/*
** One compiled set of scripts (built by script.c). The engine holds one
** reference to the current generation; every request or job running on it
** holds another. A generation retired by a reload is freed when its last
** user ends.
*/
struct gen {
	struct engine *eng;
	uint64_t id;
	int refs;
	int retired; /* replaced by a newer generation */
	lua_State *L;
	struct jail jail;
	int app_ref;      /* the `paygate` lualib module table */
	int dispatch_ref; /* app._dispatch(req) → status, body, headers */
	int run_job_ref;  /* app._run_job(name, payload_json, info) */
	struct timeval loaded_at;
	int uses_wechatpay; /* the scripts required wechatpay (--check wants it configured) */
	int npool;          /* parked threads (see gen_park_thread) */
	struct {
		lua_State *co;
		int ref;
	} pool[GEN_POOL_MAX];
};

/*
** A new generation around a fresh jailed VM of at most limit bytes, with one
** reference (the caller's). Returns NULL when even the empty VM does not fit.
*/
struct gen *gen_new(struct engine *e, size_t limit);

void gen_ref(struct gen *g);

/* Drop a reference; the last one closes the VM (and counts a retired generation as drained). */
void gen_unref(struct gen *g);

/* Push the app module's field `name` (e.g. "_migrations") onto g->L. [-0, +1] */
void gen_push_app_field(struct gen *g, const char *name);

/*
** A thread whose function returned normally is as good as new (its stack is
** empty), so each generation keeps a few for reuse: creating and collecting a
** thread per request is most of the per-request cost. gen_park_thread keeps
** co (anchored by registry reference ref) and returns 1, or returns 0 when the
** pool is full (the caller then releases it). gen_take_thread returns 1 with a
** parked thread, or 0 when there is none.
*/
int gen_park_thread(struct gen *g, lua_State *co, int ref);
int gen_take_thread(struct gen *g, lua_State **co, int *ref);

/* Is co a parked thread? (Not an engine coroutine, yet not the script's to resume either.) */
int gen_is_parked(lua_State *co);

#endif

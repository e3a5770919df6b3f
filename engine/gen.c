/* gen.c — a script generation's lifetime: one jailed Lua VM, shared by reference, with a pool of threads. */
#include "gen.h"

#include <assert.h>
#include <stdlib.h>

#include "engine.h"

/* The extra space of a parked thread points here. */
static char parked_marker;

struct gen *gen_new(struct engine *e, size_t limit)
{
	struct gen *g = calloc(1, sizeof *g);
	if (!g)
		return NULL;
	g->eng = e;
	g->refs = 1;
	g->L = jail_newstate(&g->jail, limit, g);
	if (!g->L) {
		free(g);
		return NULL;
	}
	g->jail.where = e->worker.where; /* the watchdog's note of the script line running now */
	g->jail.where_len = e->worker.where_len;
	return g;
}

void gen_ref(struct gen *g)
{
	assert(g->refs > 0);
	g->refs++;
}

void gen_unref(struct gen *g)
{
	assert(g->refs > 0);
	if (--g->refs > 0)
		return;
	struct engine *e = g->eng;
	if (g->retired) {
		assert(e->draining > 0);
		e->draining--;
		log_info(&e->log, NULL, "script generation %llu drained and freed", (unsigned long long)g->id);
	}
	lua_close(g->L);
	free(g);
}

void gen_push_app_field(struct gen *g, const char *name)
{
	lua_rawgeti(g->L, LUA_REGISTRYINDEX, g->app_ref);
	lua_getfield(g->L, -1, name);
	lua_remove(g->L, -2);
}

int gen_park_thread(struct gen *g, lua_State *co, int ref)
{
	if (g->npool >= GEN_POOL_MAX)
		return 0;
	assert(lua_status(co) == LUA_OK);
	lua_settop(co, 0);
	*(void **)lua_getextraspace(co) = &parked_marker;
	g->pool[g->npool].co = co;
	g->pool[g->npool].ref = ref;
	g->npool++;
	return 1;
}

int gen_take_thread(struct gen *g, lua_State **co, int *ref)
{
	if (g->npool == 0)
		return 0;
	g->npool--;
	*co = g->pool[g->npool].co;
	*ref = g->pool[g->npool].ref;
	return 1;
}

int gen_is_parked(lua_State *co)
{
	return *(void **)lua_getextraspace(co) == &parked_marker;
}

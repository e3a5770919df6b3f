/* fuzz_json.c — libFuzzer target: json.decode as scripts call it (in the jail), then encode and decode again. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <lauxlib.h>

#include "jail.h"
#include "json.h"
#include "replay.h"

/*
** The input is handed to json.decode inside a jailed state like a request
** body. Whatever it is, decode returns or raises an ordinary error. What it
** decodes must encode (or be refused with an error: numbers out of range,
** nesting), and what that encodes must decode again and encode to the same
** length (key order may differ): a finding is a crash, a sanitizer report or
** an abort below.
*/

static const char *const ROUND_TRIP =
    "local s = ...\n"
    "local ok, v = pcall(json.decode, s)\n"
    "if not ok then assert(type(v) == 'string', 'decode raised a non-string') return 'refused' end\n"
    "local ok2, e1 = pcall(json.encode, v)\n"
    "if not ok2 then assert(type(e1) == 'string') return 'not encodable' end\n"
    "local v2 = json.decode(e1)\n"
    "local e2 = json.encode(v2)\n"
    "assert(#e1 == #e2, 'encode(decode(encode(x))) changed: ' .. e1 .. ' vs ' .. e2)\n"
    "return 'ok'\n";

static lua_State *L;
static struct jail jail;
static int chunk_ref;

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (!L) {
		L = jail_newstate(&jail, 64u << 20, NULL);
		if (!L)
			abort();
		jail_push_env(L);
		json_push_lua(L);
		jail_set_global(L, -2, "json");
		if (luaL_loadbufferx(L, ROUND_TRIP, strlen(ROUND_TRIP), "=round_trip", "t") != LUA_OK)
			abort();
		lua_pushvalue(L, -2);
		lua_setupvalue(L, -2, 1);
		chunk_ref = luaL_ref(L, LUA_REGISTRYINDEX);
		lua_pop(L, 1);
	}
	lua_rawgeti(L, LUA_REGISTRYINDEX, chunk_ref);
	lua_pushlstring(L, (const char *)data, size);
	if (lua_pcall(L, 1, 1, 0) != LUA_OK) {
		const char *msg = lua_tostring(L, -1);
		if (!msg || !strstr(msg, "memory")) { /* the jail's cap is an ordinary outcome */
			fprintf(stderr, "fuzz_json: %s\n", msg ? msg : "(error object)");
			abort();
		}
	}
	if (getenv("FUZZ_SHOW"))
		fprintf(stderr, "fuzz_json: %s %s\n", luaL_typename(L, -1),
		        lua_tostring(L, -1) ? lua_tostring(L, -1) : "");
	lua_settop(L, 0);
	lua_gc(L, LUA_GCCOLLECT);
	return 0;
}

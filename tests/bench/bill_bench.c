/* bill_bench.c — runs tests/bench/bills.lua on plain Lua 5.4 with engine/bill.c's wechatpay.bill module. */
#include <lauxlib.h>
#include <lualib.h>
#include <stdio.h>

#include "bill.h"

int main(int argc, char **argv)
{
	if (argc != 3) {
		fprintf(stderr, "usage: bill_bench LUALIB_DIR SCRIPT\n");
		return 2;
	}
	lua_State *L = luaL_newstate();
	luaL_openlibs(L);
	bill_push_lua(L);
	lua_setglobal(L, "bill");
	lua_pushstring(L, argv[1]);
	lua_setglobal(L, "LUALIB");
	int rc = luaL_dofile(L, argv[2]);
	if (rc != LUA_OK)
		fprintf(stderr, "bill_bench: %s\n", lua_tostring(L, -1));
	lua_close(L);
	return rc == LUA_OK ? 0 : 1;
}

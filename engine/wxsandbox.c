/* wxsandbox.c — the WeChat Pay side of the protocol, for the local sandbox only: verify merchants, sign, encrypt. */
#include "wxsandbox.h"

#include <lauxlib.h>

void wxs_push_lua(lua_State *L, struct engine *e)
{
	(void)e;
	lua_newtable(L);
}

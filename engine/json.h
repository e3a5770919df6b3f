/* json.h — JSON for scripts: lua-cjson decoding made integer-exact, and an encoder that writes into Lua memory. */
#ifndef PAYGATE_JSON_H
#define PAYGATE_JSON_H

#include <lua.h>

#define JSON_MAX_DEPTH 32

/*
** Push the `json` table: encode(v), decode(s), null, array(t), empty_array.
** decode gives integers for integral numbers below 2^53 (lua-cjson 2.1 gives
** floats only) and refuses nesting deeper than JSON_MAX_DEPTH. [-0, +1, e]
*/
void json_push_lua(lua_State *L);

/*
** Encode the value at idx into a new string on the stack. Errors (raised as
** Lua errors) on cycles, depth, non-finite numbers, and keys that are neither
** strings nor integers. [-0, +1, e]
*/
void json_encode_value(lua_State *L, int idx);

#endif

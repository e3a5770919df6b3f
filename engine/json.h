/* json.h — the one JSON module: for scripts (integer-exact decoding, an encoder into Lua memory) and for C. */
#ifndef PAYGATE_JSON_H
#define PAYGATE_JSON_H

#include <stddef.h>

#include <lua.h>

struct evbuffer;

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

/* Append s as a JSON string (quoted, escaped) to b: 0, or -1 when memory ran out. */
int json_add_string(struct evbuffer *b, const char *s);

/*
** Copy the value of `key` in the JSON object `json` into out (a string
** decoded, anything else as its text): its length, or -1 when json is not
** one well-formed object, the key is absent, or the value does not fit.
** Same contract as paygate_json_get (paygate.h).
*/
int json_get_field(const char *json, const char *key, char *out, size_t outlen);

#endif

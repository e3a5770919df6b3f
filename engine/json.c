/* json.c — JSON for scripts: lua-cjson decoding made integer-exact, and an encoder that writes into Lua memory. */
#include "json.h"

#include <math.h>
#include <string.h>

#include <lauxlib.h>
#include <lua-cjson.h>

/*
** Why our own encoder: lua-cjson 2.1.0 encodes through a malloc'd buffer
** sized with int arithmetic (CVE-2022-24834), prints integers as %.14g, and
** cannot tell an empty array from an empty object. This one appends to a
** buffer allocated by the state's allocator, so its memory counts against
** the generation's cap and no size computation can overflow.
*/

#define ARRAY_MT "paygate.json.array"
#define JBUF_MT "paygate.json.buffer"

/*
** The output buffer lives in a userdata whose memory comes from the state's
** allocator (so it counts against the cap) and is freed by __gc even when an
** error unwinds the encoder half-way.
*/
struct jbuf {
	lua_State *L;
	char *p;
	size_t len, cap;
};

static int jbuf_gc(lua_State *L)
{
	struct jbuf *jb = lua_touserdata(L, 1);
	void *ud;
	lua_Alloc f = lua_getallocf(L, &ud);
	if (jb->p)
		f(ud, jb->p, jb->cap, 0);
	jb->p = NULL;
	jb->cap = jb->len = 0;
	return 0;
}

static void jb_add(struct jbuf *jb, const char *s, size_t n)
{
	if (n > jb->cap - jb->len) {
		size_t ncap = jb->cap ? jb->cap : 256;
		while (ncap - jb->len < n) {
			if (ncap > ((size_t)1 << 40))
				luaL_error(jb->L, "json.encode: output too large");
			ncap *= 2;
		}
		void *ud;
		lua_Alloc f = lua_getallocf(jb->L, &ud);
		char *np = f(ud, jb->p, jb->p ? jb->cap : 0, ncap);
		if (!np)
			luaL_error(jb->L, "not enough memory");
		jb->p = np;
		jb->cap = ncap;
	}
	memcpy(jb->p + jb->len, s, n);
	jb->len += n;
}

#define jb_str(jb, s) jb_add((jb), (s), strlen(s))
#define jb_char(jb, c) do { char ch_ = (c); jb_add((jb), &ch_, 1); } while (0)

static void enc(lua_State *L, struct jbuf *b, int idx, int depth);

static void enc_string(struct jbuf *b, const char *s, size_t n)
{
	static const char hex[] = "0123456789abcdef";
	jb_char(b, '"');
	for (size_t i = 0; i < n; i++) {
		unsigned char c = (unsigned char)s[i];
		switch (c) {
		case '"': jb_str(b, "\\\""); break;
		case '\\': jb_str(b, "\\\\"); break;
		case '\n': jb_str(b, "\\n"); break;
		case '\r': jb_str(b, "\\r"); break;
		case '\t': jb_str(b, "\\t"); break;
		default:
			if (c < 0x20 || c == 0x7f) {
				char u[6] = { '\\', 'u', '0', '0', hex[c >> 4], hex[c & 15] };
				jb_add(b, u, 6);
			} else {
				size_t j = i;           /* copy a run of plain bytes at once */
				while (j < n && s[j] != '"' && s[j] != '\\' && (unsigned char)s[j] >= 0x20 &&
				       (unsigned char)s[j] != 0x7f)
					j++;
				jb_add(b, s + i, j - i);
				i = j - 1;
			}
		}
	}
	jb_char(b, '"');
}

static void enc_number(lua_State *L, struct jbuf *b, int idx)
{
	char tmp[64];
	if (lua_isinteger(L, idx)) {
		snprintf(tmp, sizeof tmp, LUA_INTEGER_FMT, (LUAI_UACINT)lua_tointeger(L, idx));
	} else {
		lua_Number x = lua_tonumber(L, idx);
		if (!isfinite(x))
			luaL_error(L, "json.encode: cannot encode %s", isnan(x) ? "NaN" : "infinity");
		if (x == floor(x) && fabs(x) < 1e15)
			snprintf(tmp, sizeof tmp, "%.0f", x);
		else
			snprintf(tmp, sizeof tmp, "%.17g", x);
	}
	jb_str(b, tmp);
}

/* Is the table at idx a sequence 1..n (n > 0), or marked as an array? Returns n or -1. */
static lua_Integer array_len(lua_State *L, int idx)
{
	lua_Integer n = 0, max = 0;
	if (lua_getmetatable(L, idx)) {
		luaL_getmetatable(L, ARRAY_MT);
		int marked = lua_rawequal(L, -1, -2);
		lua_pop(L, 2);
		if (marked)
			return (lua_Integer)lua_rawlen(L, idx);
	}
	lua_pushnil(L);
	while (lua_next(L, idx)) {
		lua_pop(L, 1);
		if (!lua_isinteger(L, -1) || lua_tointeger(L, -1) < 1) {
			lua_pop(L, 1);
			return -1;
		}
		lua_Integer k = lua_tointeger(L, -1);
		if (k > max)
			max = k;
		n++;
	}
	return (n > 0 && max == n) ? n : -1;
}

static void enc_table(lua_State *L, struct jbuf *b, int idx, int depth)
{
	lua_Integer n = array_len(L, idx);
	if (n >= 0) {
		jb_char(b, '[');
		for (lua_Integer i = 1; i <= n; i++) {
			if (i > 1)
				jb_char(b, ',');
			lua_rawgeti(L, idx, i);
			enc(L, b, lua_gettop(L), depth + 1);
			lua_pop(L, 1);
		}
		jb_char(b, ']');
		return;
	}
	int first = 1;
	jb_char(b, '{');
	lua_pushnil(L);
	while (lua_next(L, idx)) {
		size_t kl;
		const char *k;
		char num[32];
		if (lua_type(L, -2) == LUA_TSTRING) {
			k = lua_tolstring(L, -2, &kl);
		} else if (lua_isinteger(L, -2)) {
			kl = (size_t)snprintf(num, sizeof num, LUA_INTEGER_FMT, (LUAI_UACINT)lua_tointeger(L, -2));
			k = num;
		} else {
			luaL_error(L, "json.encode: table keys must be strings or integers");
			return;
		}
		if (!first)
			jb_char(b, ',');
		first = 0;
		enc_string(b, k, kl);
		jb_char(b, ':');
		enc(L, b, lua_gettop(L), depth + 1);
		lua_pop(L, 1);
	}
	jb_char(b, '}');
}

static void enc(lua_State *L, struct jbuf *b, int idx, int depth)
{
	if (depth > JSON_MAX_DEPTH)
		luaL_error(L, "json.encode: nested deeper than %d levels (or a cycle)", JSON_MAX_DEPTH);
	luaL_checkstack(L, 6, "json.encode");
	switch (lua_type(L, idx)) {
	case LUA_TNIL:
		jb_str(b, "null");
		break;
	case LUA_TBOOLEAN:
		jb_str(b, lua_toboolean(L, idx) ? "true" : "false");
		break;
	case LUA_TNUMBER:
		enc_number(L, b, idx);
		break;
	case LUA_TSTRING: {
		size_t n;
		const char *s = lua_tolstring(L, idx, &n);
		enc_string(b, s, n);
		break;
	}
	case LUA_TTABLE:
		enc_table(L, b, idx, depth);
		break;
	case LUA_TLIGHTUSERDATA:
		if (lua_touserdata(L, idx) == NULL) {     /* json.null */
			jb_str(b, "null");
			break;
		}
		/* fall through */
	default:
		luaL_error(L, "json.encode: cannot encode a %s", luaL_typename(L, idx));
	}
}

void json_encode_value(lua_State *L, int idx)
{
	idx = lua_absindex(L, idx);
	struct jbuf *jb = lua_newuserdatauv(L, sizeof *jb, 0);
	memset(jb, 0, sizeof *jb);
	jb->L = L;
	luaL_setmetatable(L, JBUF_MT);
	enc(L, jb, idx, 0);
	lua_pushlstring(L, jb->p ? jb->p : "", jb->len);
	lua_pushcfunction(L, jbuf_gc);        /* free the bytes now, not at the next GC */
	lua_pushvalue(L, -3);
	lua_call(L, 1, 0);
	lua_remove(L, -2);
}

/*
** json.encode(v): encodes into one buffer kept per generation (upvalue 1),
** reused across calls because encoding calls no Lua code and so cannot be
** re-entered; a buffer grown past 64 KiB is given back after the call.
*/
static int l_encode(lua_State *L)
{
	struct jbuf *jb = lua_touserdata(L, lua_upvalueindex(1));
	luaL_checkany(L, 1);
	lua_settop(L, 1);
	jb->L = L;
	jb->len = 0;
	enc(L, jb, 1, 0);
	lua_pushlstring(L, jb->p ? jb->p : "", jb->len);
	if (jb->cap > 64 * 1024) {
		lua_pushcfunction(L, jbuf_gc);
		lua_pushvalue(L, lua_upvalueindex(1));
		lua_call(L, 1, 0);
	}
	return 1;
}

/* Turn integral floats below 2^53 into integers, recursively. [-0, +0] */
static void integerize(lua_State *L, int idx, int depth)
{
	if (depth > JSON_MAX_DEPTH + 1)
		return;
	luaL_checkstack(L, 4, "json.decode");
	lua_pushnil(L);
	while (lua_next(L, idx)) {
		if (lua_type(L, -1) == LUA_TNUMBER && !lua_isinteger(L, -1)) {
			lua_Number x = lua_tonumber(L, -1);
			if (x == floor(x) && fabs(x) < 9007199254740992.0) {
				lua_pushvalue(L, -2);
				lua_pushinteger(L, (lua_Integer)x);
				lua_rawset(L, idx);
			}
		} else if (lua_type(L, -1) == LUA_TTABLE) {
			integerize(L, lua_gettop(L), depth + 1);
		}
		lua_pop(L, 1);
	}
}

/* json.decode(s) → value, or raises "json.decode: ..." */
static int l_decode(lua_State *L)
{
	luaL_checkstring(L, 1);
	lua_settop(L, 1);
	lua_pushvalue(L, lua_upvalueindex(1));
	lua_insert(L, 1);
	lua_call(L, 1, 1);
	if (lua_type(L, -1) == LUA_TTABLE)
		integerize(L, lua_gettop(L), 0);
	else if (lua_type(L, -1) == LUA_TNUMBER) {
		lua_Number x = lua_tonumber(L, -1);
		if (x == floor(x) && fabs(x) < 9007199254740992.0) {
			lua_pop(L, 1);
			lua_pushinteger(L, (lua_Integer)x);
		}
	}
	return 1;
}

/* json.array(t) → t, marked so that it encodes as [] even when empty. */
static int l_array(lua_State *L)
{
	if (lua_isnoneornil(L, 1))
		lua_newtable(L);
	luaL_checktype(L, 1, LUA_TTABLE);
	lua_settop(L, 1);
	luaL_setmetatable(L, ARRAY_MT);
	return 1;
}

void json_push_lua(lua_State *L)
{
	luaL_newmetatable(L, ARRAY_MT);
	lua_pop(L, 1);
	luaL_newmetatable(L, JBUF_MT);
	lua_pushcfunction(L, jbuf_gc);
	lua_setfield(L, -2, "__gc");
	lua_pop(L, 1);

	luaL_requiref(L, "cjson", luaopen_cjson, 0);
	int cj = lua_gettop(L);
	lua_getfield(L, cj, "decode_max_depth");
	lua_pushinteger(L, JSON_MAX_DEPTH);
	lua_call(L, 1, 0);
	lua_getfield(L, cj, "decode_invalid_numbers");   /* no NaN / Infinity / hex */
	lua_pushboolean(L, 0);
	lua_call(L, 1, 0);

	lua_newtable(L);
	struct jbuf *jb = lua_newuserdatauv(L, sizeof *jb, 0);
	memset(jb, 0, sizeof *jb);
	luaL_setmetatable(L, JBUF_MT);
	lua_pushcclosure(L, l_encode, 1);
	lua_setfield(L, -2, "encode");
	lua_getfield(L, cj, "decode");
	lua_pushcclosure(L, l_decode, 1);
	lua_setfield(L, -2, "decode");
	lua_getfield(L, cj, "null");
	lua_setfield(L, -2, "null");
	lua_pushcfunction(L, l_array);
	lua_setfield(L, -2, "array");
	lua_remove(L, cj);
}

/* json.c — the one JSON module: for scripts (integer-exact decoding, an encoder into Lua memory) and for C. */
#include "json.h"

#include <limits.h>
#include <math.h>
#include <string.h>

#include <event2/buffer.h>
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
#define JBUF_MT  "paygate.json.buffer"

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
#define jb_char(jb, c)                 \
	do {                           \
		char ch_ = (c);        \
		jb_add((jb), &ch_, 1); \
	} while (0)

static void enc(lua_State *L, struct jbuf *b, int idx, int depth);

/*
** The one JSON string escaper: "..." with quotes, backslashes and control
** bytes (and DEL) escaped, everything else copied in runs. put() appends
** n bytes to its sink.
*/
typedef void (*json_put_fn)(void *sink, const char *p, size_t n);

static void escape_string(const char *s, size_t n, json_put_fn put, void *sink)
{
	static const char hex[] = "0123456789abcdef";
	put(sink, "\"", 1);
	for (size_t i = 0; i < n; i++) {
		unsigned char c = (unsigned char)s[i];
		switch (c) {
		case '"':
			put(sink, "\\\"", 2);
			break;
		case '\\':
			put(sink, "\\\\", 2);
			break;
		case '\n':
			put(sink, "\\n", 2);
			break;
		case '\r':
			put(sink, "\\r", 2);
			break;
		case '\t':
			put(sink, "\\t", 2);
			break;
		default:
			if (c < 0x20 || c == 0x7f) {
				char u[6] = { '\\', 'u', '0', '0', hex[c >> 4], hex[c & 15] };
				put(sink, u, 6);
			} else {
				size_t j = i; /* copy a run of plain bytes at once */
				while (j < n && s[j] != '"' && s[j] != '\\' && (unsigned char)s[j] >= 0x20 &&
				       (unsigned char)s[j] != 0x7f)
					j++;
				put(sink, s + i, j - i);
				i = j - 1;
			}
		}
	}
	put(sink, "\"", 1);
}

static void jb_put(void *sink, const char *p, size_t n)
{
	jb_add(sink, p, n);
}

static void enc_string(struct jbuf *b, const char *s, size_t n)
{
	escape_string(s, n, jb_put, b);
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
		if (lua_touserdata(L, idx) == NULL) { /* json.null */
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
	lua_pushcfunction(L, jbuf_gc); /* free the bytes now, not at the next GC */
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
	lua_getfield(L, cj, "decode_invalid_numbers"); /* no NaN / Infinity / hex */
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

/* ---- JSON for C callers: a string into an evbuffer, one field out of an object ---- */

struct evsink {
	struct evbuffer *b;
	int failed;
};

static void ev_put(void *sink, const char *p, size_t n)
{
	struct evsink *k = sink;
	if (!k->failed && evbuffer_add(k->b, p, n) < 0)
		k->failed = 1;
}

int json_add_string(struct evbuffer *b, const char *s)
{
	struct evsink k = { b, 0 };
	escape_string(s, strlen(s), ev_put, &k);
	return k.failed ? -1 : 0;
}

static const char *skip_ws(const char *p)
{
	while (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r')
		p++;
	return p;
}

static int hex4(const char *p, unsigned *out)
{
	unsigned v = 0;
	for (int i = 0; i < 4; i++) {
		char c = p[i];
		int d = c >= '0' && c <= '9'   ? c - '0'
		        : c >= 'a' && c <= 'f' ? c - 'a' + 10
		        : c >= 'A' && c <= 'F' ? c - 'A' + 10
		                               : -1;
		if (d < 0)
			return -1;
		v = v * 16 + (unsigned)d;
	}
	*out = v;
	return 0;
}

/* Encode code point cp as UTF-8 into out (4 bytes room); returns the length. */
static size_t put_utf8(unsigned cp, char *out)
{
	if (cp < 0x80) {
		out[0] = (char)cp;
		return 1;
	}
	if (cp < 0x800) {
		out[0] = (char)(0xC0 | (cp >> 6));
		out[1] = (char)(0x80 | (cp & 0x3F));
		return 2;
	}
	if (cp < 0x10000) {
		out[0] = (char)(0xE0 | (cp >> 12));
		out[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
		out[2] = (char)(0x80 | (cp & 0x3F));
		return 3;
	}
	out[0] = (char)(0xF0 | (cp >> 18));
	out[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
	out[2] = (char)(0x80 | ((cp >> 6) & 0x3F));
	out[3] = (char)(0x80 | (cp & 0x3F));
	return 4;
}

/* The code point of the \u escape at p (just after "\u"), surrogate pairs joined; advances *pp. 0 on error. */
static unsigned read_u_escape(const char **pp)
{
	const char *p = *pp;
	unsigned cp, lo;
	if (hex4(p, &cp) < 0)
		return 0;
	p += 4;
	if (cp >= 0xD800 && cp <= 0xDBFF) {
		if (p[0] != '\\' || p[1] != 'u' || hex4(p + 2, &lo) < 0 || lo < 0xDC00 || lo > 0xDFFF)
			return 0;
		cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
		p += 6;
	} else if (cp >= 0xDC00 && cp <= 0xDFFF) {
		return 0;
	}
	*pp = p;
	return cp; /* \u0000 is refused too: out is a C string */
}

/*
** Scan the JSON string at p (on its opening quote), decoding it into out
** (capacity cap) when out is non-NULL; *len gets the decoded length.
** Returns the byte after the closing quote, or NULL when malformed or
** when it does not fit.
*/
static const char *scan_string(const char *p, char *out, size_t cap, size_t *len)
{
	size_t n = 0;
	if (*p++ != '"')
		return NULL;
	for (;;) {
		unsigned char c = (unsigned char)*p++;
		char enc[4];
		size_t k = 1;
		if (c == '"')
			break;
		if (c < 0x20)
			return NULL; /* the end of the text, or a raw control byte */
		enc[0] = (char)c;
		if (c == '\\') {
			c = (unsigned char)*p++;
			switch (c) {
			case '"':
			case '\\':
			case '/':
				enc[0] = (char)c;
				break;
			case 'b':
				enc[0] = '\b';
				break;
			case 'f':
				enc[0] = '\f';
				break;
			case 'n':
				enc[0] = '\n';
				break;
			case 'r':
				enc[0] = '\r';
				break;
			case 't':
				enc[0] = '\t';
				break;
			case 'u': {
				unsigned cp = read_u_escape(&p);
				if (!cp)
					return NULL;
				k = put_utf8(cp, enc);
				break;
			}
			default:
				return NULL;
			}
		}
		if (out) {
			if (n + k >= cap)
				return NULL;
			memcpy(out + n, enc, k);
		}
		n += k;
	}
	if (out)
		out[n] = '\0';
	if (len)
		*len = n;
	return p;
}

static const char *skip_number(const char *p)
{
	if (*p == '-')
		p++;
	if (*p < '0' || *p > '9')
		return NULL;
	while (*p >= '0' && *p <= '9')
		p++;
	if (*p == '.') {
		if (*++p < '0' || *p > '9')
			return NULL;
		while (*p >= '0' && *p <= '9')
			p++;
	}
	if (*p == 'e' || *p == 'E') {
		p++;
		if (*p == '+' || *p == '-')
			p++;
		if (*p < '0' || *p > '9')
			return NULL;
		while (*p >= '0' && *p <= '9')
			p++;
	}
	return p;
}

/* The byte after the JSON value at p (after blanks), or NULL when malformed or nested too deep. */
static const char *skip_value(const char *p, int depth)
{
	p = skip_ws(p);
	if (depth > 64)
		return NULL;
	if (*p == '"')
		return scan_string(p, NULL, 0, NULL);
	if (*p == '{' || *p == '[') {
		int obj = *p == '{';
		char close = obj ? '}' : ']';
		p = skip_ws(p + 1);
		if (*p == close)
			return p + 1;
		for (;;) {
			if (obj) {
				if (!(p = scan_string(skip_ws(p), NULL, 0, NULL)))
					return NULL;
				p = skip_ws(p);
				if (*p++ != ':')
					return NULL;
			}
			if (!(p = skip_value(p, depth + 1)))
				return NULL;
			p = skip_ws(p);
			if (*p == close)
				return p + 1;
			if (*p++ != ',')
				return NULL;
		}
	}
	if (strncmp(p, "true", 4) == 0 || strncmp(p, "null", 4) == 0)
		return p + 4;
	if (strncmp(p, "false", 5) == 0)
		return p + 5;
	return skip_number(p);
}

/* Copy the value at p..end into out: a string decoded, anything else as its text. */
static int copy_value(const char *p, const char *end, char *out, size_t outlen)
{
	size_t n;
	if (*p == '"')
		return scan_string(p, out, outlen, &n) ? (int)n : -1;
	n = (size_t)(end - p);
	if (n >= outlen)
		return -1;
	memcpy(out, p, n);
	out[n] = '\0';
	return (int)n;
}

int json_get_field(const char *json, const char *key, char *out, size_t outlen)
{
	const char *p;
	int found = -1;

	if (!json || !key || !out || outlen == 0 || outlen > INT_MAX)
		return -1;
	p = skip_ws(json);
	if (*p++ != '{')
		return -1;
	p = skip_ws(p);
	if (*p == '}')
		return -1;
	for (;;) {
		char name[256];
		size_t nlen = 0;
		const char *after = scan_string(p, name, sizeof name, &nlen);
		int match = after && nlen == strlen(key) && strcmp(name, key) == 0;
		if (!after && !(after = scan_string(p, NULL, 0, NULL))) /* a long name: not ours */
			return -1;
		p = skip_ws(after);
		if (*p++ != ':')
			return -1;
		p = skip_ws(p);
		const char *end = skip_value(p, 0);
		if (!end)
			return -1;
		if (match && found < 0 && (found = copy_value(p, end, out, outlen)) < 0)
			return -1;
		p = skip_ws(end);
		if (*p == '}')
			break;
		if (*p++ != ',')
			return -1;
		p = skip_ws(p);
	}
	return *skip_ws(p + 1) == '\0' ? found : -1;
}

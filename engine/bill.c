/* bill.c — WeChat Pay's daily bills: gzip (zlib), the SHA1 check and a streaming parser (Lua: wechatpay.bill). */
#include "bill.h"

#include <stdlib.h>
#include <string.h>

#include <lauxlib.h>
#include <openssl/evp.h>
#include <zlib.h>

#define BILL_MT "paygate.bill"

int bill_gunzip(const void *in, size_t n, size_t max, char **out, size_t *outlen, char *err, size_t errlen)
{
	z_stream z;
	size_t cap = n * 4 + 4096, len = 0;
	char *buf;
	int rc;

	*out = NULL;
	*outlen = 0;
	memset(&z, 0, sizeof z);
	if (inflateInit2(&z, 15 + 16) != Z_OK) {
		snprintf(err, errlen, "gunzip: cannot start zlib");
		return -1;
	}
	if (cap > max + 1)
		cap = max + 1;
	buf = malloc(cap + 1);
	if (!buf) {
		inflateEnd(&z);
		snprintf(err, errlen, "gunzip: out of memory");
		return -1;
	}
	z.next_in = (Bytef *)(uintptr_t)in;
	z.avail_in = (uInt)n;
	for (;;) {
		if (len == cap) {
			if (cap > max) {
				free(buf);
				inflateEnd(&z);
				snprintf(err, errlen, "gunzip: the bill is larger than %u bytes", (unsigned)max);
				return -1;
			}
			size_t ncap = cap * 2 > max + 1 ? max + 1 : cap * 2;
			char *nb = realloc(buf, ncap + 1);
			if (!nb) {
				free(buf);
				inflateEnd(&z);
				snprintf(err, errlen, "gunzip: out of memory");
				return -1;
			}
			buf = nb;
			cap = ncap;
		}
		z.next_out = (Bytef *)buf + len;
		z.avail_out = (uInt)(cap - len);
		rc = inflate(&z, Z_NO_FLUSH);
		len = cap - z.avail_out;
		if (rc == Z_STREAM_END)
			break;
		if (rc == Z_BUF_ERROR && z.avail_in == 0) {
			free(buf);
			inflateEnd(&z);
			snprintf(err, errlen, "gunzip: the file is truncated");
			return -1;
		}
		if (rc != Z_OK && rc != Z_BUF_ERROR) {
			snprintf(err, errlen, "gunzip: not gzip data (%s)", z.msg ? z.msg : "bad header");
			free(buf);
			inflateEnd(&z);
			return -1;
		}
	}
	inflateEnd(&z);
	if (len > max) {
		free(buf);
		snprintf(err, errlen, "gunzip: the bill is larger than %u bytes", (unsigned)max);
		return -1;
	}
	buf[len] = '\0';
	*out = buf;
	*outlen = len;
	return 0;
}

int bill_gzip(const void *in, size_t n, char **out, size_t *outlen, char *err, size_t errlen)
{
	z_stream z;
	memset(&z, 0, sizeof z);
	*out = NULL;
	*outlen = 0;
	if (deflateInit2(&z, 6, Z_DEFLATED, 15 + 16, 8, Z_DEFAULT_STRATEGY) != Z_OK) {
		snprintf(err, errlen, "gzip: cannot start zlib");
		return -1;
	}
	size_t cap = deflateBound(&z, (uLong)n) + 32;
	char *buf = malloc(cap);
	if (!buf) {
		deflateEnd(&z);
		snprintf(err, errlen, "gzip: out of memory");
		return -1;
	}
	z.next_in = (Bytef *)(uintptr_t)in;
	z.avail_in = (uInt)n;
	z.next_out = (Bytef *)buf;
	z.avail_out = (uInt)cap;
	int rc = deflate(&z, Z_FINISH);
	if (rc != Z_STREAM_END) {
		free(buf);
		deflateEnd(&z);
		snprintf(err, errlen, "gzip: deflate failed");
		return -1;
	}
	*outlen = cap - z.avail_out;
	*out = buf;
	deflateEnd(&z);
	return 0;
}

void bill_sha1_hex(const void *p, size_t n, char hex[41])
{
	unsigned char md[EVP_MAX_MD_SIZE];
	unsigned int mdlen = 0;
	static const char digits[] = "0123456789abcdef";

	hex[0] = '\0';
	if (EVP_Digest(p, n, md, &mdlen, EVP_sha1(), NULL) != 1 || mdlen != 20)
		return;
	for (unsigned i = 0; i < 20; i++) {
		hex[2 * i] = digits[md[i] >> 4];
		hex[2 * i + 1] = digits[md[i] & 15];
	}
	hex[40] = '\0';
}

int bill_amount(const char *s, size_t n, int scale, int64_t *out)
{
	size_t i = 0;
	int neg = 0, idigits = 0, fdigits = 0;
	int64_t v = 0;

	if (scale < 0 || scale > 6)
		return -1;
	if (i < n && s[i] == '`')
		i++;
	if (i < n && (s[i] == '-' || s[i] == '+'))
		neg = s[i++] == '-';
	for (; i < n && s[i] >= '0' && s[i] <= '9'; i++) {
		if (++idigits > 15)
			return -1;
		v = v * 10 + (s[i] - '0');
	}
	if (idigits == 0)
		return -1;
	if (i < n && s[i] == '.') {
		i++;
		if (i == n)
			return -1;
		for (; i < n && s[i] >= '0' && s[i] <= '9'; i++) {
			if (fdigits < scale)
				v = v * 10 + (s[i] - '0');
			else if (s[i] != '0')
				return -1; /* a part of a unit: not exact */
			fdigits++;
		}
	}
	if (i != n)
		return -1;
	for (; fdigits < scale; fdigits++)
		v *= 10;
	*out = neg ? -v : v;
	return 0;
}

/* ---- the Lua module ---- */

struct bill {
	char *data; /* the bill's text, malloc'd: never in the Lua heap */
	size_t len;
	size_t body;    /* where the first line after the header starts */
	size_t pos;     /* the rows iterator's position */
	size_t summary; /* the summary header line's start, once found; (size_t)-1 before */
	char sha1[41];
};

static struct bill *check_bill(lua_State *L, int idx)
{
	struct bill *b = luaL_checkudata(L, idx, BILL_MT);
	if (!b->data)
		luaL_error(L, "the bill is closed");
	return b;
}

/* The next non-empty line at or after *pos: its start and length without \r\n; advances *pos. */
static int next_line(const struct bill *b, size_t *pos, size_t *start, size_t *len)
{
	while (*pos < b->len) {
		size_t s = *pos;
		const char *nl = memchr(b->data + s, '\n', b->len - s);
		size_t e = nl ? (size_t)(nl - b->data) : b->len;
		*pos = nl ? e + 1 : b->len;
		size_t l = e - s;
		while (l > 0 && (b->data[s + l - 1] == '\r' || b->data[s + l - 1] == ' '))
			l--;
		if (l == 0)
			continue;
		*start = s;
		*len = l;
		return 1;
	}
	return 0;
}

/* Push an array of the fields of line [s, s+l): split on "," (plain) or ",`" (backticked). */
static void push_fields(lua_State *L, const char *p, size_t l)
{
	int ticked = l > 0 && p[0] == '`';
	const char *end = p + l;
	lua_Integer n = 0;

	lua_newtable(L);
	if (l >= 3 && (unsigned char)p[0] == 0xEF && (unsigned char)p[1] == 0xBB && (unsigned char)p[2] == 0xBF)
		p += 3; /* a UTF-8 byte order mark */
	if (ticked)
		p++;
	for (;;) {
		const char *q = p;
		if (ticked) {
			while (q + 1 < end && !(q[0] == ',' && q[1] == '`'))
				q++;
			if (q + 1 >= end)
				q = end;
		} else {
			q = memchr(p, ',', (size_t)(end - p));
			if (!q)
				q = end;
		}
		lua_pushlstring(L, p, (size_t)(q - p));
		lua_rawseti(L, -2, ++n);
		if (q >= end)
			break;
		p = q + (ticked ? 2 : 1);
	}
}

static int l_open(lua_State *L)
{
	size_t n;
	const char *data = luaL_checklstring(L, 1, &n);
	int gz = 0;
	const char *want = NULL;
	char err[160];

	if (lua_istable(L, 2)) {
		lua_getfield(L, 2, "gzip");
		gz = lua_toboolean(L, -1);
		lua_getfield(L, 2, "sha1");
		want = lua_tostring(L, -1);
		lua_pop(L, 2);
	}
	struct bill *b = lua_newuserdatauv(L, sizeof *b, 0);
	memset(b, 0, sizeof *b);
	b->summary = (size_t)-1;
	luaL_setmetatable(L, BILL_MT);
	if (gz) {
		if (bill_gunzip(data, n, BILL_MAX_BYTES, &b->data, &b->len, err, sizeof err) < 0) {
			lua_pushnil(L);
			lua_pushliteral(L, "bad_gzip");
			lua_pushstring(L, err);
			return 3;
		}
	} else {
		if (n > BILL_MAX_BYTES) {
			lua_pushnil(L);
			lua_pushliteral(L, "too_large");
			lua_pushfstring(L, "the bill is larger than %d bytes", (int)BILL_MAX_BYTES);
			return 3;
		}
		b->data = malloc(n + 1);
		if (!b->data)
			return luaL_error(L, "bill: out of memory");
		memcpy(b->data, data, n);
		b->data[n] = '\0';
		b->len = n;
	}
	bill_sha1_hex(b->data, b->len, b->sha1);
	if (want && strcasecmp(want, b->sha1) != 0) {
		free(b->data);
		b->data = NULL;
		lua_pushnil(L);
		lua_pushliteral(L, "hash_mismatch");
		lua_pushfstring(L, "the bill's SHA1 is %s, WeChat Pay said %s", b->sha1, want);
		return 3;
	}
	size_t pos = 0, s, l;
	if (!next_line(b, &pos, &s, &l)) {
		free(b->data);
		b->data = NULL;
		lua_pushnil(L);
		lua_pushliteral(L, "bad_format");
		lua_pushliteral(L, "the bill is empty (no header line)");
		return 3;
	}
	b->body = b->pos = pos;
	return 1;
}

static int l_header(lua_State *L)
{
	struct bill *b = check_bill(L, 1);
	size_t pos = 0, s, l;
	next_line(b, &pos, &s, &l);
	push_fields(L, b->data + s, l);
	return 1;
}

static int rows_next(lua_State *L)
{
	struct bill *b = check_bill(L, lua_upvalueindex(1));
	size_t s, l;
	if (b->summary != (size_t)-1 && b->pos > b->summary)
		return 0;
	size_t before = b->pos;
	if (!next_line(b, &b->pos, &s, &l))
		return 0;
	if (b->data[s] != '`') { /* the summary header: the details are over */
		b->summary = s;
		b->pos = before + (s - before) + 1;
		return 0;
	}
	push_fields(L, b->data + s, l);
	return 1;
}

static int l_rows(lua_State *L)
{
	struct bill *b = check_bill(L, 1);
	b->pos = b->body;
	lua_pushvalue(L, 1);
	lua_pushcclosure(L, rows_next, 1);
	return 1;
}

static int l_summary(lua_State *L)
{
	struct bill *b = check_bill(L, 1);
	size_t pos = b->body, s, l;
	if (b->summary == (size_t)-1) {
		while (next_line(b, &pos, &s, &l)) {
			if (b->data[s] != '`') {
				b->summary = s;
				break;
			}
		}
		if (b->summary == (size_t)-1)
			return 0;
	}
	pos = b->summary;
	next_line(b, &pos, &s, &l);
	push_fields(L, b->data + s, l);
	if (next_line(b, &pos, &s, &l))
		push_fields(L, b->data + s, l);
	else
		lua_pushnil(L);
	return 2;
}

static int l_info(lua_State *L)
{
	struct bill *b = check_bill(L, 1);
	lua_createtable(L, 0, 2);
	lua_pushinteger(L, (lua_Integer)b->len);
	lua_setfield(L, -2, "bytes");
	lua_pushstring(L, b->sha1);
	lua_setfield(L, -2, "sha1");
	return 1;
}

static int l_close(lua_State *L)
{
	struct bill *b = luaL_checkudata(L, 1, BILL_MT);
	free(b->data);
	b->data = NULL;
	return 0;
}

static int l_amount(lua_State *L)
{
	size_t n;
	const char *s = luaL_checklstring(L, 1, &n);
	int scale = (int)luaL_optinteger(L, 2, 2);
	int64_t v;
	luaL_argcheck(L, scale >= 0 && scale <= 6, 2, "scale must be 0 to 6");
	if (bill_amount(s, n, scale, &v) < 0) {
		lua_pushnil(L);
		lua_pushfstring(L, "not an amount in yuan with at most %d exact decimals: '%s'", scale, s);
		return 2;
	}
	lua_pushinteger(L, (lua_Integer)v);
	return 1;
}

static int l_gzip(lua_State *L)
{
	size_t n, outlen;
	const char *s = luaL_checklstring(L, 1, &n);
	char *out, err[160];
	if (bill_gzip(s, n, &out, &outlen, err, sizeof err) < 0)
		return luaL_error(L, "%s", err);
	lua_pushlstring(L, out, outlen);
	free(out);
	return 1;
}

static int l_gunzip(lua_State *L)
{
	size_t n, outlen;
	const char *s = luaL_checklstring(L, 1, &n);
	char *out, err[160];
	if (bill_gunzip(s, n, BILL_MAX_BYTES, &out, &outlen, err, sizeof err) < 0) {
		lua_pushnil(L);
		lua_pushstring(L, err);
		return 2;
	}
	lua_pushlstring(L, out, outlen);
	free(out);
	return 1;
}

static int l_sha1(lua_State *L)
{
	size_t n;
	const char *s = luaL_checklstring(L, 1, &n);
	char hex[41];
	bill_sha1_hex(s, n, hex);
	lua_pushstring(L, hex);
	return 1;
}

void bill_push_lua(lua_State *L)
{
	static const luaL_Reg methods[] = { { "header", l_header }, { "rows", l_rows },   { "summary", l_summary },
		                            { "info", l_info },     { "close", l_close }, { NULL, NULL } };
	static const luaL_Reg fns[] = { { "open", l_open },     { "amount", l_amount }, { "gzip", l_gzip },
		                        { "gunzip", l_gunzip }, { "sha1", l_sha1 },     { NULL, NULL } };
	if (luaL_newmetatable(L, BILL_MT)) {
		lua_newtable(L);
		luaL_setfuncs(L, methods, 0);
		lua_setfield(L, -2, "__index");
		lua_pushcfunction(L, l_close);
		lua_setfield(L, -2, "__gc");
	}
	lua_pop(L, 1);
	luaL_newlib(L, fns);
}

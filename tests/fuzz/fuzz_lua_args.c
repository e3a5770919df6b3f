/* fuzz_lua_args.c — libFuzzer target: arbitrary values across the Lua/C boundary of db (binding) and wechatpay.request. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "fixture.h"
#include "replay.h"

/*
** Input: byte 0 picks the export ("db" or "wx", tests/fuzz/scripts/init.lua);
** the rest is read as a list of values, each a tag byte and its bytes: nil,
** booleans, 64-bit integers, doubles, strings (any bytes), nested arrays. They
** become a JSON array, the export's arguments (paygate_call), which hands
** them to db.exec/query/one/tx and wechatpay.request as they are. Every call
** is in pcall: the export must return (status 200) within 2 s, whatever the
** values; a crash, a sanitizer report or a hang is a finding.
*/

struct out {
	char *buf;
	size_t len, cap;
};

static void put(struct out *o, const char *s, size_t n)
{
	if (o->len + n + 1 > o->cap) {
		o->cap = (o->len + n + 1) * 2;
		o->buf = realloc(o->buf, o->cap);
		if (!o->buf)
			abort();
	}
	memcpy(o->buf + o->len, s, n);
	o->len += n;
	o->buf[o->len] = '\0';
}

static void put_str(struct out *o, const char *s)
{
	put(o, s, strlen(s));
}

static size_t values(struct out *o, const uint8_t *d, size_t n, int depth)
{
	size_t i = 0;
	int count = 0;
	put_str(o, "[");
	while (i < n && count < 64) {
		uint8_t tag = d[i++];
		char num[64];
		if (count++)
			put_str(o, ",");
		switch (tag % 8) {
		case 0:
			put_str(o, "null");
			break;
		case 1:
			put_str(o, tag & 8 ? "true" : "false");
			break;
		case 2: {
			int64_t v = 0;
			size_t k = n - i < 8 ? n - i : 8;
			memcpy(&v, d + i, k);
			i += k;
			snprintf(num, sizeof num, "%lld", (long long)v);
			put_str(o, num);
			break;
		}
		case 3: {
			double v = 0;
			size_t k = n - i < 8 ? n - i : 8;
			memcpy(&v, d + i, k);
			i += k;
			if (v != v || v - v != 0) /* NaN and infinities are not JSON */
				v = 0;
			snprintf(num, sizeof num, "%.17g", v);
			put_str(o, num);
			break;
		}
		case 4: {
			size_t len = i < n ? d[i++] : 0;
			if (len > n - i)
				len = n - i;
			put_str(o, "\"");
			for (size_t k = 0; k < len; k++) {
				char esc[8];
				snprintf(esc, sizeof esc, "\\u%04x", d[i + k]);
				put_str(o, esc);
			}
			i += len;
			put_str(o, "\"");
			break;
		}
		case 5:
			if (depth < 4) {
				i += values(o, d + i, n - i, depth + 1);
			} else {
				put_str(o, "[]");
			}
			break;
		case 6:
			if (depth > 0) {
				o->len -= count > 1 ? 1 : 0; /* drop the comma just written */
				o->buf[o->len] = '\0';
				put_str(o, "]");
				return i;
			}
			put_str(o, "0");
			break;
		default:
			snprintf(num, sizeof num, "%d", tag / 8 - 16);
			put_str(o, num);
			break;
		}
	}
	put_str(o, "]");
	return i;
}

struct result {
	int done, status;
};

static void on_result(void *arg, int status, const char *json)
{
	struct result *r = arg;
	if (getenv("FUZZ_SHOW"))
		fprintf(stderr, "fuzz_lua_args: %d %s\n", status, json ? json : "");
	r->done = 1;
	r->status = status;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct paygate *pg = fx_engine();
	struct out o = { 0 };
	struct result r = { 0 };
	if (size == 0)
		return 0;
	values(&o, data + 1, size - 1, 0);
	if (paygate_call(pg, data[0] & 1 ? "wx" : "db", o.buf, on_result, &r) < 0)
		abort();
	if (!fx_run_until(&r.done, 2000)) {
		fprintf(stderr, "fuzz_lua_args: the call did not finish in 2 s: %s\n", o.buf);
		abort();
	}
	if (r.status != 200) {
		fprintf(stderr, "fuzz_lua_args: the export failed (%d) on %s\n", r.status, o.buf);
		abort();
	}
	free(o.buf);
	return 0;
}

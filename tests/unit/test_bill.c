/* test_bill.c — WeChat Pay bills in C (engine/bill.c): exact amounts, gzip both ways, SHA1, the line reader. */
#include <lauxlib.h>
#include <lualib.h>

#include "bill.h"
#include "unit.h"

static int64_t amount(const char *s, int scale, int *ok)
{
	int64_t v = 0;
	*ok = bill_amount(s, strlen(s), scale, &v) == 0;
	return v;
}

static void t_amounts_exact(void)
{
	int ok;
	CHECK_EQ_INT(amount("12.34", 2, &ok), 1234);
	CHECK(ok);
	CHECK_EQ_INT(amount("`0.01", 2, &ok), 1);
	CHECK(ok);
	CHECK_EQ_INT(amount("-0.5", 2, &ok), -50);
	CHECK(ok);
	CHECK_EQ_INT(amount("7", 2, &ok), 700);
	CHECK(ok);
	CHECK_EQ_INT(amount("0.07000", 2, &ok), 7); /* WeChat's fee column: five decimals, zeros past the fen */
	CHECK(ok);
	CHECK_EQ_INT(amount("0.07000", 5, &ok), 7000);
	CHECK(ok);
	CHECK_EQ_INT(amount("20.0", 0, &ok), 20); /* a count in the fund flow summary */
	CHECK(ok);
	CHECK_EQ_INT(amount("999999999999999.99", 2, &ok), 99999999999999999LL);
	CHECK(ok);
	/* 0.1 + 0.2 is 30 fen, not a float's 30.000000000000004 */
	int64_t a = amount("0.1", 2, &ok), b = amount("0.2", 2, &ok);
	CHECK_EQ_INT(a + b, amount("0.3", 2, &ok));
}

static void t_amounts_refused(void)
{
	int ok;
	const char *bad[] = { "",      "`",   ".5",  "1.",    "1.234", "0.00001",          "1e3", "1,00", " 1.00",
		              "1.00 ", "--1", "abc", "1.2.3", "+",     "12345678901234567" };
	for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
		amount(bad[i], 2, &ok);
		if (ok)
			unit_show("accepted", bad[i], strlen(bad[i]));
		CHECK(!ok);
	}
}

static void t_gzip_round_trip_and_errors(void)
{
	const char *text = "交易时间,商户订单号\r\n`2026-12-01 10:00:00,`PG1\r\n";
	char *gz, *back, err[160];
	size_t gzlen, backlen;
	CHECK_EQ_INT(bill_gzip(text, strlen(text), &gz, &gzlen, err, sizeof err), 0);
	CHECK((unsigned char)gz[0] == 0x1f && (unsigned char)gz[1] == 0x8b);
	CHECK_EQ_INT(bill_gunzip(gz, gzlen, 1 << 20, &back, &backlen, err, sizeof err), 0);
	CHECK_EQ_MEM(back, backlen, text, strlen(text));
	free(back);
	/* truncated, corrupted, too large, not gzip: each an error, never a partial bill */
	CHECK_EQ_INT(bill_gunzip(gz, gzlen - 9, 1 << 20, &back, &backlen, err, sizeof err), -1);
	CHECK(back == NULL);
	gz[gzlen / 2] ^= 0x55;
	CHECK_EQ_INT(bill_gunzip(gz, gzlen, 1 << 20, &back, &backlen, err, sizeof err), -1);
	gz[gzlen / 2] ^= 0x55;
	CHECK_EQ_INT(bill_gunzip(gz, gzlen, 10, &back, &backlen, err, sizeof err), -1);
	CHECK(strstr(err, "larger") != NULL);
	CHECK_EQ_INT(bill_gunzip(text, strlen(text), 1 << 20, &back, &backlen, err, sizeof err), -1);
	free(gz);
}

static void t_sha1(void)
{
	char hex[41];
	bill_sha1_hex("abc", 3, hex); /* FIPS 180 test vector */
	CHECK_EQ_STR(hex, "a9993e364706816aba3e25717850c26c9cd0d89d");
}

/* The Lua module on a plain Lua state: the reader hands out lines, the hash check refuses. */
static void t_reader(void)
{
	lua_State *L = luaL_newstate();
	luaL_openlibs(L);
	bill_push_lua(L);
	lua_setglobal(L, "bill");
	const char *script =
	    "local text = '\\xEF\\xBB\\xBFa,b\\r\\n`1,`x,y\\r\\n\\r\\n`2,`z\\r\\nn,s\\r\\n`2,`3.00\\r\\n'\n"
	    "local b = assert(bill.open(text, { sha1 = bill.sha1(text) }))\n"
	    "local h = b:header(); assert(h[1] == 'a' and h[2] == 'b', 'header')\n"
	    "local rows = {} for r in b:rows() do rows[#rows + 1] = r end\n"
	    "assert(#rows == 2, 'two rows ' .. #rows)\n"
	    "assert(rows[1][2] == 'x,y' and rows[2][1] == '2', 'fields split on ,` only')\n"
	    "local n, v = b:summary(); assert(n[1] == 'n' and v[2] == '3.00', 'summary')\n"
	    "assert(bill.amount(v[2]) == 300)\n"
	    "local again = 0 for _ in b:rows() do again = again + 1 end assert(again == 2, 'rows again')\n"
	    "b:close(); assert(not pcall(b.rows, b), 'closed')\n"
	    "local z = assert(bill.open(bill.gzip(text), { gzip = true, sha1 = bill.sha1(text) }))\n"
	    "assert(z:info().bytes == #text)\n"
	    "local x, why = bill.open(text, { sha1 = string.rep('0', 40) }); assert(not x and why == 'hash_mismatch')\n"
	    "local y, why2 = bill.open('not gzip', { gzip = true }); assert(not y and why2 == 'bad_gzip')\n"
	    "local e, why3 = bill.open('\\r\\n\\r\\n'); assert(not e and why3 == 'bad_format')\n";
	int rc = luaL_dostring(L, script);
	if (rc != LUA_OK)
		unit_show("lua", lua_tostring(L, -1), strlen(lua_tostring(L, -1)));
	CHECK_EQ_INT(rc, LUA_OK);
	lua_close(L);
}

/* Bills cut, flipped and spliced at random: every one is read or refused, none crashes the reader. */
static void t_malformed(void)
{
	lua_State *L = luaL_newstate();
	luaL_openlibs(L);
	bill_push_lua(L);
	lua_setglobal(L, "bill");
	const char *script =
	    "math.randomseed(14)\n"
	    "local good = 'a,b,c\\r\\n`1,`2.00,`x\\r\\n`2,`3.5,`y\\r\\nn,t\\r\\n`2,`5.50\\r\\n'\n"
	    "local alphabet = { '`', ',', '\\r', '\\n', '.', '-', '0', '9', 'a', '\\0', '\\xEF', ',`' }\n"
	    "local read = 0\n"
	    "for i = 1, 3000 do\n"
	    "  local s = good\n"
	    "  for _ = 1, math.random(1, 4) do\n"
	    "    local at = math.random(0, #s)\n"
	    "    local op = math.random(3)\n"
	    "    if op == 1 then s = s:sub(1, at)\n"
	    "    elseif op == 2 then s = s:sub(1, at) .. alphabet[math.random(#alphabet)] .. s:sub(at + 1)\n"
	    "    else s = s:sub(1, at) .. s:sub(at + 2) end\n"
	    "  end\n"
	    "  for _, gz in ipairs({ false, true }) do\n"
	    "    local data = gz and (i % 2 == 0 and bill.gzip(s):sub(1, math.random(1, 40)) or bill.gzip(s)) or s\n"
	    "    local b = bill.open(data, { gzip = gz })\n"
	    "    if b then\n"
	    "      b:header()\n"
	    "      for row in b:rows() do for _, f in ipairs(row) do bill.amount(f) end end\n"
	    "      b:summary(); b:close(); read = read + 1\n"
	    "    end\n"
	    "  end\n"
	    "end\n"
	    "assert(read > 1000, 'most mutations still read: ' .. read)\n";
	int rc = luaL_dostring(L, script);
	if (rc != LUA_OK)
		unit_show("lua", lua_tostring(L, -1), strlen(lua_tostring(L, -1)));
	CHECK_EQ_INT(rc, LUA_OK);
	lua_close(L);
}

static const struct unit_test tests[] = {
	{ "amounts in yuan become exact integers (fen, or finer for fees)", t_amounts_exact },
	{ "amounts that are not exact or not numbers are refused", t_amounts_refused },
	{ "gzip round-trips; truncated, corrupted, oversized or plain input is an error",
	  t_gzip_round_trip_and_errors },
	{ "SHA1 in lower-case hex", t_sha1 },
	{ "the Lua reader: header, rows on ,`, summary, the hash and gzip checks", t_reader },
	{ "3,000 malformed bills, plain and gzip (truncated too): each read or refused, none crashes", t_malformed },
};

UNIT_MAIN(tests)

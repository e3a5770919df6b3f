/* test_pattern.c — the jail's pattern matcher against Lua's own, and its step limit on the catastrophic patterns. */
#include <lauxlib.h>
#include <lualib.h>

#include "pattern.h"
#include "unit.h"

static int64_t steps_left;

static void charge(lua_State *L, int64_t steps)
{
	steps_left -= steps;
	if (steps_left <= 0) {
		lua_pushliteral(L, "budget spent");
		lua_error(L);
	}
}

/* A plain Lua state with the stock string library and ours as the global P; runs code, returns its string. */
static char result[4096];

static const char *run(const char *code, int64_t budget)
{
	lua_State *L = luaL_newstate();
	luaL_openlibs(L);
	lua_newtable(L);
	pattern_set_functions(L, charge);
	lua_setglobal(L, "P");
	steps_left = budget;
	if (luaL_loadstring(L, code) != LUA_OK || lua_pcall(L, 0, 1, 0) != LUA_OK)
		snprintf(result, sizeof result, "error: %s", lua_tostring(L, -1));
	else
		snprintf(result, sizeof result, "%s", lua_tostring(L, -1) ? lua_tostring(L, -1) : "(not a string)");
	lua_close(L);
	return result;
}

/*
** Random patterns and subjects over a small alphabet, each call made with
** both matchers: same success, same results (error texts may differ).
*/
static const char *const DIFFERENTIAL =
    "local atoms = { 'a', 'b', '.', '%a', '%d', '%s', '%A', '[ab]', '[^a]', '[a-c]', '[%d_]', '%%', '%.',\n"
    "  '(', ')', '()', '%1', '%b()', '%f[%w]', '$', '^', 'x', '-', '*', '+', '?', '[]]', '[^]a]' }\n"
    "local chars = { 'a', 'b', 'c', '1', '2', ' ', '(', ')', '_', '.', '%', 'x' }\n"
    "local seed = 7\n"
    "local function rnd(n) seed = (seed * 1103515245 + 12345) % 2147483648; return seed % n + 1 end\n"
    "local function pack(ok, ...) local t = { n = select('#', ...) }\n"
    "  for i = 1, t.n do t[i] = tostring((select(i, ...))) end\n"
    "  return ok and ('ok ' .. table.concat(t, ',')) or 'error' end\n"
    "local bad = 0\n"
    "local first\n"
    "for iter = 1, 20000 do\n"
    "  local p, s = {}, {}\n"
    "  for i = 1, rnd(6) do p[#p + 1] = atoms[rnd(#atoms)] end\n"
    "  for i = 1, rnd(12) - 1 do s[#s + 1] = chars[rnd(#chars)] end\n"
    "  p, s = table.concat(p), table.concat(s)\n"
    "  local init = rnd(5) - 2\n"
    "  local calls = {\n"
    "    function(f) return f.find(s, p) end, function(f) return f.find(s, p, init) end,\n"
    "    function(f) return f.find(s, p, init, true) end, function(f) return f.match(s, p) end,\n"
    "    function(f) return f.match(s, p, init) end,\n"
    "    function(f) local out = {} for a, b in f.gmatch(s, p) do out[#out + 1] = tostring(a) .. '/' .. "
    "tostring(b) if #out > 50 then break end end return table.concat(out, ';') end,\n"
    "    function(f) return f.gsub(s, p, '<%0>') end, function(f) return f.gsub(s, p, '%1', 2) end,\n"
    "    function(f) return f.gsub(s, p, { a = 'A', b = false }) end,\n"
    "    function(f) return f.gsub(s, p, function(c) return c == 'a' and 'Z' or nil end) end,\n"
    "  }\n"
    "  for k, call in ipairs(calls) do\n"
    "    local want, got = pack(pcall(call, string)), pack(pcall(call, P))\n"
    "    if want ~= got then bad = bad + 1; first = first or string.format('%q %q call %d: lua %s, ours %s', s, p, "
    "k, want, got) end\n"
    "  end\n"
    "end\n"
    "return bad == 0 and 'same' or (bad .. ' differ; first: ' .. first)\n";

static void t_same_as_lua(void)
{
	CHECK_EQ_STR(run(DIFFERENTIAL, INT64_C(1) << 60), "same");
}

static void t_catastrophic_patterns_stop(void)
{
	/* the two of the report: a start-position factor, and optional items on a short subject */
	CHECK_EQ_STR(run("return tostring(P.find(string.rep('a', 1e5), '.-b'))", 10000000), "error: budget spent");
	CHECK_EQ_STR(run("return tostring(P.find(string.rep('a', 40), string.rep('a?', 40) .. string.rep('a', 40) .. "
	                 "'b'))",
	                 10000000),
	             "error: budget spent");
	CHECK_EQ_STR(run("return tostring(P.match(string.rep('a', 5000), '.-.-.-.-b'))", 10000000),
	             "error: budget spent");
	/* a plain find is linear, even on the worst case for a naive search */
	CHECK_EQ_STR(
	    run("return tostring(P.find(string.rep('a', 1e6), string.rep('a', 5e5) .. 'b', 1, true))", 10000000),
	    "nil");
}

static void t_ordinary_use_is_cheap(void)
{
	CHECK_EQ_STR(
	    run("local s = string.rep('word ', 20000) return tostring(select(2, P.gsub(s, '%s+', ' ')))", 1000000),
	    "20000");
	CHECK_EQ_STR(run("return P.match('/api/orders/A1/pay', '^/api/orders/([^/]+)/pay$')", 1000), "A1");
}

static const struct unit_test tests[] = {
	{ "the matcher gives what Lua's gives on 200,000 random calls", t_same_as_lua },
	{ "catastrophic patterns and worst-case plain finds end within the step budget", t_catastrophic_patterns_stop },
	{ "ordinary patterns cost about one step per byte", t_ordinary_use_is_cheap },
};

UNIT_MAIN(tests)

/* test_engine.c — unit tests of engine pieces that need no event loop: JSON, config, jail, metrics, asserts. */
#include <signal.h>
#include <stdint.h>
#include <sys/wait.h>
#include <unistd.h>

#include <lauxlib.h>
#include <lualib.h>

#include "config.h"
#include "gen.h"
#include "jail.h"
#include "json.h"
#include "metrics.h"
#include "unit.h"

/* Run `code` in a fresh jailed state with the json module as a global; return its string result. */
static const char *run_lua(lua_State *L, const char *code)
{
	jail_push_env(L);
	json_push_lua(L);
	jail_set_global(L, -2, "json");
	if (luaL_loadbufferx(L, code, strlen(code), "=test", "t") != LUA_OK)
		return lua_tostring(L, -1);
	lua_pushvalue(L, -2);
	lua_setupvalue(L, -2, 1);
	if (lua_pcall(L, 0, 1, 0) != LUA_OK)
		return lua_tostring(L, -1);
	return lua_tostring(L, -1);
}

static void t_json_encode(void)
{
	struct jail s;
	lua_State *L = jail_newstate(&s, 16u << 20, NULL);
	CHECK_EQ_STR(run_lua(L, "return json.encode({1, 2, 3})"), "[1,2,3]");
	CHECK_EQ_STR(run_lua(L, "return json.encode(9007199254740993)"), "9007199254740993");
	CHECK_EQ_STR(run_lua(L, "return json.encode(1.5)"), "1.5");
	CHECK_EQ_STR(run_lua(L, "return json.encode(json.array())"), "[]");
	CHECK_EQ_STR(run_lua(L, "return json.encode({})"), "{}");
	CHECK_EQ_STR(run_lua(L, "return json.encode('a\"b\\\\c\\n\\1')"), "\"a\\\"b\\\\c\\n\\u0001\"");
	CHECK_EQ_STR(run_lua(L, "return json.encode({json.null, true, false})"), "[null,true,false]");
	CHECK_EQ_STR(run_lua(L, "return json.encode({[1]=1, [3]=3})"), "{\"1\":1,\"3\":3}");
	lua_close(L);
}

static void t_json_encode_refuses(void)
{
	struct jail s;
	lua_State *L = jail_newstate(&s, 16u << 20, NULL);
	CHECK(strstr(run_lua(L, "local t = {} t.t = t return json.encode(t)"), "deeper than") != NULL);
	CHECK(strstr(run_lua(L, "return json.encode(0/0)"), "NaN") != NULL);
	CHECK(strstr(run_lua(L, "return json.encode(1/0)"), "infinity") != NULL);
	CHECK(strstr(run_lua(L, "return json.encode(pcall)"), "cannot encode") != NULL);
	CHECK(strstr(run_lua(L, "return json.encode({[true]=1})"), "keys must be") != NULL);
	lua_close(L);
}

static void t_json_decode_integers(void)
{
	struct jail s;
	lua_State *L = jail_newstate(&s, 16u << 20, NULL);
	CHECK_EQ_STR(run_lua(L, "local t = json.decode('{\"a\":1,\"b\":[2,2.5],\"c\":1e3}') "
	                        "return math.type(t.a)..math.type(t.b[1])..math.type(t.b[2])..math.type(t.c)"),
	             "integerintegerfloatinteger");
	CHECK_EQ_STR(run_lua(L, "return math.type(json.decode('9007199254740993'))"), "float");
	CHECK_EQ_STR(run_lua(L, "return math.type(json.decode('7'))"), "integer");
	CHECK(strstr(run_lua(L, "return json.decode(string.rep('[', 40) .. string.rep(']', 40))"), "") != NULL);
	CHECK_EQ_STR(run_lua(L, "return tostring(pcall(json.decode, string.rep('[', 40) .. string.rep(']', 40)))"),
	             "false");
	CHECK_EQ_STR(run_lua(L, "return tostring(pcall(json.decode, '[NaN]'))"), "false");
	lua_close(L);
}

/* The allocator cap turns a memory bomb into an ordinary error and the state stays usable. */
static void t_jail_memory_cap(void)
{
	struct jail s;
	lua_State *L = jail_newstate(&s, 8u << 20, NULL);
	CHECK(strstr(run_lua(L, "local ok, e = pcall(string.rep, 'x', 64 * 1024 * 1024) return tostring(e)"),
	             "not enough memory") != NULL);
	CHECK(s.used <= s.limit);
	CHECK_EQ_STR(run_lua(L, "return 'still fine'"), "still fine");
	lua_close(L);
}

static void t_jail_budget(void)
{
	struct jail s;
	struct jail_budget b = { 0 };
	lua_State *L = jail_newstate(&s, 16u << 20, NULL);
	jail_budget(L, &b, 1000000);
	const char *r = run_lua(L, "while true do pcall(function() while true do end end) end");
	jail_unbudget(L);
	CHECK(strstr(r, "instruction budget") != NULL);
	CHECK(b.killed);
	lua_close(L);
}

static void t_jail_env(void)
{
	struct jail s;
	lua_State *L = jail_newstate(&s, 16u << 20, NULL);
	CHECK(strstr(run_lua(L, "return tostring(io)"), "undefined global 'io'") != NULL);
	CHECK(strstr(run_lua(L, "x = 1"), "undeclared global 'x'") != NULL);
	CHECK(strstr(run_lua(L, "string.upper = nil"), "read-only") != NULL);
	CHECK_EQ_STR(run_lua(L, "return tostring(getmetatable(_G))"), "false");
	CHECK_EQ_STR(run_lua(L, "return tostring(getmetatable(''))"), "false");
	CHECK_EQ_STR(run_lua(L, "return tostring(string.dump)"), "nil");
	CHECK(strstr(run_lua(L, "return load('\\27Lua', 'x', 'b')"), "only text") != NULL);
	CHECK_EQ_STR(run_lua(L, "return ('abc'):upper()"), "ABC");
	lua_close(L);
}

static char *write_temp(const char *text)
{
	static char path[64];
	snprintf(path, sizeof path, "/tmp/paygate-unit-%d.conf.lua", (int)getpid());
	FILE *f = fopen(path, "w");
	fputs(text, f);
	fclose(f);
	return path;
}

static void t_config_defaults_and_overrides(void)
{
	struct config c;
	char err[256] = "";
	config_defaults(&c);
	const char *p = write_temp("listen = '127.0.0.1:0'\nscripts = 's'\nlimits = { max_body_bytes = 2048 }\n"
	                           "app = { shop = 'x', n = 3 }\n");
	CHECK_EQ_INT(config_load(&c, p, err, sizeof err), 0);
	CHECK_EQ_INT(c.listen_port, 0);
	CHECK_EQ_INT((long long)c.max_body_bytes, 2048);
	CHECK(strstr(c.scripts_dir, "/tmp/s") != NULL); /* relative to the file */
	CHECK(strstr(c.app_json, "\"shop\":\"x\"") != NULL);
	config_free(&c);
	unlink(p);
}

static void t_config_errors_are_clear(void)
{
	static const struct {
		const char *text, *want;
	} cases[] = {
		{ "limits = { max_body_bytes = 'big' }", "limits.max_body_bytes must be an integer" },
		{ "listen = 'nowhere'", "must look like 127.0.0.1:8080" },
		{ "limits = { header_timeout_ms = 5 }", "limits.header_timeout_ms must be an integer from 100" },
		{ "limits = { max_connections = 0 }", "limits.max_connections must be an integer from 1" },
		{ "log_level = 'loud'", "log_level must be one of" },
		{ "this is not lua", "config:" },
		{ "os.exit(1)", "config:" },
		{ "admin = { token_file = '/nonexistent/token' }", "cannot open" },
		{ "lisen = '127.0.0.1:1'", "unknown key 'lisen' (did you mean 'listen'?)" },
		{ "fetch = { timeout = 5 }", "unknown key 'fetch.timeout' (did you mean 'fetch.timeout_ms'?)" },
		{ "wechatpay = { mchid = '1', appid = 'x', merchant_serial = 's', private_key_file = 'k', "
		  "apiv3_key_file = 'a', notify_urll = 'u' }",
		  "did you mean 'wechatpay.notify_url'?" },
		{ "zzzzzzzzzz = 1", "unknown key 'zzzzzzzzzz' (the keys are in docs/configuration.md)" },
		{ "admin = { tokens = { ['bad name'] = 'x' } }", "admin.tokens must be" },
	};
	for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
		struct config c;
		char err[512] = "";
		config_defaults(&c);
		const char *p = write_temp(cases[i].text);
		CHECK_EQ_INT(config_load(&c, p, err, sizeof err), -1);
		if (!strstr(err, cases[i].want))
			printf("#     case %zu: %s\n", i, err);
		CHECK(strstr(err, cases[i].want) != NULL);
		config_free(&c);
		unlink(p);
	}
}

static void t_metrics_series(void)
{
	struct metrics m;
	metrics_init(&m);
	CHECK_EQ_INT(metrics_update(&m, "orders_total", "status=\"PAID\"", 1, 0), 0);
	CHECK_EQ_INT(metrics_update(&m, "orders_total", "status=\"PAID\"", 2, 0), 0);
	CHECK_EQ_INT(metrics_update(&m, "bad name", NULL, 1, 0), -1);
	CHECK_EQ_INT(metrics_update(&m, "1bad", NULL, 1, 0), -1);
	CHECK_EQ_INT(m.nseries, 1);
	metrics_observe_request(&m, 204, 0.002);
	CHECK_EQ_INT((long long)m.http_by_class[2], 1);
	metrics_free(&m);
}

/* A generation whose references are all gone is taken again: the invariant's assert must stop the process. */
static void t_asserts_are_live(void)
{
	pid_t pid = fork();
	int status = 0;
	if (pid == 0) {
		struct gen g = { 0 };
		fclose(stderr); /* the assertion message is expected; keep the log quiet */
		gen_ref(&g);
		_exit(0);
	}
	CHECK(pid > 0);
	CHECK(waitpid(pid, &status, 0) == pid);
	CHECK(WIFSIGNALED(status) && WTERMSIG(status) == SIGABRT);
}

static const struct unit_test tests[] = {
	{ "json.encode writes integers exactly, arrays and escapes", t_json_encode },
	{ "json.encode refuses cycles, NaN, infinity, functions and odd keys", t_json_encode_refuses },
	{ "json.decode gives integers for integral numbers below 2^53 and limits depth", t_json_decode_integers },
	{ "a memory bomb is an ordinary error under the jail's allocator cap", t_jail_memory_cap },
	{ "the jail's instruction budget stops a loop even inside pcall", t_jail_budget },
	{ "the jail env hides io, is strict, and protects its tables", t_jail_env },
	{ "config: defaults, overrides, relative paths, app table as JSON", t_config_defaults_and_overrides },
	{ "config: every mistake gets a message naming the field", t_config_errors_are_clear },
	{ "metrics: series accumulate and bad names are refused", t_metrics_series },
	{ "assertions are live in this build: taking a dead generation aborts", t_asserts_are_live },
};

UNIT_MAIN(tests)

/* secure.c — secrets for scripts: random ids, signed expiring session tokens, digests, constant-time compare. */
#include "secure.h"

#include <stdlib.h>
#include <string.h>

#include <lauxlib.h>

#include "clock.h"
#include "crypto.h"
#include "engine.h"
#include "pgdb.h"
#include "store.h"

/*
** A session token is "EXPIRY.SUBJECT.MAC": EXPIRY in Unix seconds, SUBJECT
** (an openid) of [A-Za-z0-9_-], MAC = hex HMAC-SHA256 under the engine's
** secret of "paygate-session-v1|EXPIRY|SUBJECT". No server-side table is
** needed, and the secret never leaves C.
*/

#define TOKEN_DOMAIN "paygate-session-v1|"

static int load_secret(struct engine *e, char *err, size_t errlen)
{
	sqlite3 *db = store_db(e->store);
	sqlite3_stmt *s = NULL;
	unsigned char fresh[32];

	if (sqlite3_exec(db, "CREATE TABLE IF NOT EXISTS _paygate_secrets (name TEXT PRIMARY KEY, value BLOB NOT NULL)",
	                 NULL, NULL, NULL) != SQLITE_OK)
		goto fail;
	if (crypto_random_bytes(fresh, sizeof fresh, err, errlen) < 0)
		return -1;
	/* Keep the first secret ever stored; a new one only when there is none. */
	if (sqlite3_prepare_v2(db,
	                       "INSERT INTO _paygate_secrets(name, value) VALUES ('session', ?) "
	                       "ON CONFLICT(name) DO NOTHING",
	                       -1, &s, NULL) != SQLITE_OK)
		goto fail;
	sqlite3_bind_blob(s, 1, fresh, sizeof fresh, SQLITE_TRANSIENT);
	int rc = sqlite3_step(s);
	sqlite3_finalize(s);
	memset(fresh, 0, sizeof fresh);
	if (rc != SQLITE_DONE || sqlite3_prepare_v2(db, "SELECT value FROM _paygate_secrets WHERE name = 'session'", -1,
	                                            &s, NULL) != SQLITE_OK)
		goto fail;
	if (sqlite3_step(s) == SQLITE_ROW && sqlite3_column_bytes(s, 0) >= 16) {
		e->secret_len = (size_t)sqlite3_column_bytes(s, 0);
		e->secret = malloc(e->secret_len);
		if (e->secret)
			memcpy(e->secret, sqlite3_column_blob(s, 0), e->secret_len);
	}
	sqlite3_finalize(s);
	if (!e->secret)
		goto fail;
	return 0;
fail:
	snprintf(err, errlen, "cannot set up the session secret: %s", sqlite3_errmsg(db));
	return -1;
}

/* On PostgreSQL: the same table, shared by every node, read once at start-up (blocking, before serving). */
static int load_secret_pg(struct engine *e, struct pgdb *pg, char *err, size_t errlen)
{
	unsigned char fresh[32];
	PGconn *pq = pgdb_sync_begin(pg, err, errlen);
	PGresult *res = NULL;
	if (!pq)
		return -1;
	if (crypto_random_bytes(fresh, sizeof fresh, err, errlen) < 0) {
		pgdb_sync_end(pg);
		return -1;
	}
	const char *vals[] = { (const char *)fresh };
	const int lens[] = { (int)sizeof fresh }, formats[] = { 1 };
	char e2[300];
	/* Nodes that start together: one creates the table and stores its secret, the others find it. */
	if (pgdb_sync_lock(pg, 1, err, errlen) < 0) {
		pgdb_sync_end(pg);
		return -1;
	}
	res = PQexec(pq, "CREATE TABLE IF NOT EXISTS _paygate_secrets (name TEXT PRIMARY KEY, value BYTEA NOT NULL)");
	int ok = PQresultStatus(res) == PGRES_COMMAND_OK;
	PQclear(res);
	if (ok) { /* keep the first secret ever stored, whichever node stored it */
		res = PQexecParams(pq,
		                   "INSERT INTO _paygate_secrets(name, value) VALUES ('session', $1) "
		                   "ON CONFLICT (name) DO NOTHING",
		                   1, NULL, vals, lens, formats, 1);
		ok = PQresultStatus(res) == PGRES_COMMAND_OK;
		PQclear(res);
	}
	memset(fresh, 0, sizeof fresh);
	pgdb_sync_lock(pg, 0, e2, sizeof e2);
	if (ok) {
		res = PQexecParams(pq, "SELECT value FROM _paygate_secrets WHERE name = 'session'", 0, NULL, NULL, NULL,
		                   NULL, 1);
		if (PQresultStatus(res) == PGRES_TUPLES_OK && PQntuples(res) == 1 && PQgetlength(res, 0, 0) >= 16) {
			e->secret_len = (size_t)PQgetlength(res, 0, 0);
			if ((e->secret = malloc(e->secret_len)))
				memcpy(e->secret, PQgetvalue(res, 0, 0), e->secret_len);
		}
		PQclear(res);
	}
	if (!e->secret)
		snprintf(err, errlen, "cannot set up the session secret: %s", PQerrorMessage(pq));
	pgdb_sync_end(pg);
	return e->secret ? 0 : -1;
}

/* The secret's table is the engine's alone: scripts' SQL can neither read nor change it. */
static int load_from_db(struct engine *e, char *err, size_t errlen)
{
	if (store_pg(e->store))
		return load_secret_pg(e, store_pg(e->store), err, errlen);
	store_engine_begin(e->store);
	int rc = load_secret(e, err, errlen);
	store_engine_end(e->store);
	return rc;
}

int secure_init(struct engine *e, char *err, size_t errlen)
{
	if (!e->cfg.session_secret_file)
		return load_from_db(e, err, errlen);
	struct crypto_buf b = { 0 };
	if (crypto_read_file(e->cfg.session_secret_file, &b, err, errlen) < 0)
		return -1;
	if (b.len < 32) {
		snprintf(err, errlen, "session_secret_file must hold at least 32 bytes");
		crypto_buf_free(&b);
		return -1;
	}
	e->secret = malloc(b.len);
	if (e->secret) {
		memcpy(e->secret, b.data, b.len);
		e->secret_len = b.len;
	}
	crypto_buf_free(&b);
	return e->secret ? 0 : -1;
}

void secure_free(struct engine *e)
{
	if (e->secret) {
		memset(e->secret, 0, e->secret_len);
		free(e->secret);
	}
	e->secret = NULL;
	e->secret_len = 0;
}

static struct engine *upengine(lua_State *L)
{
	return lua_touserdata(L, lua_upvalueindex(1));
}

/* secure.random_id(nbytes) → 2*nbytes lower-case hex characters from the OS CSPRNG */
static int l_random_id(lua_State *L)
{
	lua_Integer n = luaL_optinteger(L, 1, 16);
	unsigned char raw[64];
	char hex[129], err[CRYPTO_ERRLEN];
	luaL_argcheck(L, n >= 8 && n <= 64, 1, "between 8 and 64 bytes");
	if (crypto_random_bytes(raw, (size_t)n, err, sizeof err) < 0)
		return luaL_error(L, "secure.random_id: %s", err);
	crypto_hex_encode(raw, (size_t)n, 0, hex, sizeof hex);
	lua_pushstring(L, hex);
	return 1;
}

static int mac(struct engine *e, const char *exp, const char *subject, char hex[65])
{
	char msg[256];
	unsigned char d[32];
	int n = snprintf(msg, sizeof msg, TOKEN_DOMAIN "%s|%s", exp, subject);
	if (n < 0 || (size_t)n >= sizeof msg || crypto_hmac_sha256(e->secret, e->secret_len, msg, (size_t)n, d) < 0)
		return -1;
	return crypto_hex_encode(d, sizeof d, 0, hex, 65);
}

static int good_subject(const char *s, size_t n)
{
	if (n == 0 || n > 128)
		return 0;
	for (size_t i = 0; i < n; i++) {
		char c = s[i];
		if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' ||
		      c == '-'))
			return 0;
	}
	return 1;
}

/* secure.issue_token(subject, ttl_s) → token, expires_at (Unix seconds) */
static int l_issue_token(lua_State *L)
{
	struct engine *e = upengine(L);
	size_t n;
	const char *subject = luaL_checklstring(L, 1, &n);
	lua_Integer ttl = luaL_checkinteger(L, 2);
	char exp[24], hex[65];

	luaL_argcheck(L, good_subject(subject, n), 1, "1-128 of [A-Za-z0-9_-]");
	luaL_argcheck(L, ttl > 0 && ttl <= 30 * 86400, 2, "1 s to 30 days");
	long long at = (long long)(clock_now_ms() / 1000 + ttl);
	snprintf(exp, sizeof exp, "%lld", at);
	if (mac(e, exp, subject, hex) < 0)
		return luaL_error(L, "secure.issue_token: cannot sign");
	lua_pushfstring(L, "%s.%s.%s", exp, subject, hex);
	lua_pushinteger(L, at);
	return 2;
}

/* secure.verify_token(token) → subject | nil, "malformed" | "bad_signature" | "expired" */
static int l_verify_token(lua_State *L)
{
	struct engine *e = upengine(L);
	size_t n;
	const char *t = luaL_checklstring(L, 1, &n);
	char buf[256], hex[65];

	const char *d1 = memchr(t, '.', n), *d2 = d1 ? memchr(d1 + 1, '.', n - (size_t)(d1 + 1 - t)) : NULL;
	if (n >= sizeof buf || !d1 || !d2 || d1 == t || (size_t)(t + n - d2 - 1) != 64) {
		lua_pushnil(L);
		lua_pushliteral(L, "malformed");
		return 2;
	}
	memcpy(buf, t, n);
	buf[d1 - t] = buf[d2 - t] = '\0';
	const char *exp = buf, *subject = buf + (d1 - t) + 1, *sig = buf + (d2 - t) + 1;
	char *end;
	long long at = strtoll(exp, &end, 10);
	if (*end || !good_subject(subject, strlen(subject)) || mac(e, exp, subject, hex) < 0) {
		lua_pushnil(L);
		lua_pushliteral(L, "malformed");
		return 2;
	}
	if (!crypto_ct_equal(hex, sig, 64)) {
		lua_pushnil(L);
		lua_pushliteral(L, "bad_signature");
		return 2;
	}
	if (at <= clock_now_ms() / 1000) {
		lua_pushnil(L);
		lua_pushliteral(L, "expired");
		return 2;
	}
	lua_pushstring(L, subject);
	return 1;
}

/* secure.sha256_hex(s) → 64 hex characters */
static int l_sha256_hex(lua_State *L)
{
	size_t n;
	const char *s = luaL_checklstring(L, 1, &n);
	unsigned char d[32];
	char hex[65];
	crypto_sha256(s, n, d);
	crypto_hex_encode(d, sizeof d, 0, hex, sizeof hex);
	lua_pushstring(L, hex);
	return 1;
}

/* secure.equal(a, b) → whether the strings are equal, in time independent of where they differ */
static int l_equal(lua_State *L)
{
	size_t na, nb;
	const char *a = luaL_checklstring(L, 1, &na), *b = luaL_checklstring(L, 2, &nb);
	lua_pushboolean(L, na == nb && crypto_ct_equal(a, b, na));
	return 1;
}

void secure_push_lua(lua_State *L, struct engine *e)
{
	static const luaL_Reg fns[] = { { "random_id", l_random_id },
		                        { "issue_token", l_issue_token },
		                        { "verify_token", l_verify_token },
		                        { "sha256_hex", l_sha256_hex },
		                        { "equal", l_equal },
		                        { NULL, NULL } };
	lua_newtable(L);
	lua_pushlightuserdata(L, e);
	luaL_setfuncs(L, fns, 1);
}

/* wxsandbox.c — the sandbox's Lua module `wechatpay.sandbox`: WeChat Pay's keys, checks and signatures for scripts. */
#include "wxsandbox.h"

#include <ctype.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include <lauxlib.h>

#include "clock.h"
#include "crypto.h"
#include "wechatpay.h"
#include "wxserver.h"

/*
** The sandbox plays WeChat Pay, so it holds the keys WeChat Pay would hold:
** the platform private key (certificate mode), the "WeChat Pay public key"
** private half (public-key mode), the merchant's certificate (to verify
** merchant requests) and the APIv3 key (to encrypt resources). All of them
** stay in a userdata freed by __gc; scripts only get signatures, ciphertext
** and the non-secret serials. Every primitive comes from wxserver.h,
** wechatpay.h and crypto.h — nothing here does crypto by hand.
*/

#define KEYS_MT          "paygate.wxsandbox.keys"
#define MAX_PATH_LEN     1024
#define BEIJING_OFFSET_S (8 * 3600)

struct wxs_keys {
	EVP_PKEY *platform_key;           /* signs responses and notifications (certificate mode) */
	struct crypto_cert platform_cert; /* its certificate: serial, validity */
	struct crypto_buf platform_pem;   /* sent encrypted by /v3/certificates */
	EVP_PKEY *pubkey_key;             /* public-key mode: the private half, or NULL */
	char pubkey_id[128];
	struct crypto_cert merchant_cert; /* verifies merchant requests and paySign */
	unsigned char apiv3[32];
	struct crypto_buf app_secret; /* mini-program AppSecret for jscode2session, may be empty */
};

/* ---- loading ---- */

/* Resolve path against the config file's directory unless it is absolute. */
static void resolve(const char *cfg, const char *path, char *out, size_t cap)
{
	const char *slash = cfg ? strrchr(cfg, '/') : NULL;
	if (path[0] == '/' || !slash)
		snprintf(out, cap, "%s", path);
	else
		snprintf(out, cap, "%.*s/%s", (int)(slash - cfg), cfg, path);
}

/* Read the file named by opts[field] (resolved) into out, trailing newlines cut; 0 when absent. */
static int read_opt_file(lua_State *L, const char *cfg, const char *field, struct crypto_buf *out, int required)
{
	char path[MAX_PATH_LEN], err[CRYPTO_ERRLEN];
	lua_getfield(L, 1, field);
	const char *name = lua_tostring(L, -1);
	lua_pop(L, 1);
	if (!name) {
		if (required)
			return luaL_error(L, "sandbox.load_keys: %s is required", field);
		return 0;
	}
	resolve(cfg, name, path, sizeof path);
	if (crypto_read_file(path, out, err, sizeof err) < 0)
		return luaL_error(L, "sandbox.load_keys: %s: %s", field, err);
	while (out->len && (out->data[out->len - 1] == '\n' || out->data[out->len - 1] == '\r'))
		out->data[--out->len] = '\0';
	return 1;
}

static void keys_clear(struct wxs_keys *k)
{
	crypto_key_free(k->platform_key);
	crypto_cert_clear(&k->platform_cert);
	crypto_buf_free(&k->platform_pem);
	crypto_key_free(k->pubkey_key);
	crypto_cert_clear(&k->merchant_cert);
	crypto_buf_free(&k->app_secret);
	memset(k, 0, sizeof *k);
}

static int keys_gc(lua_State *L)
{
	keys_clear(luaL_checkudata(L, 1, KEYS_MT));
	return 0;
}

static struct wxs_keys *check_keys(lua_State *L)
{
	return luaL_checkudata(L, 1, KEYS_MT);
}

/* Load one PEM private key from buf into *out; raises naming the field on failure. */
static void load_private(lua_State *L, struct crypto_buf *pem, EVP_PKEY **out, const char *field)
{
	char err[CRYPTO_ERRLEN];
	*out = crypto_private_key_from_pem((const char *)pem->data, pem->len, err, sizeof err);
	crypto_buf_free(pem);
	if (!*out)
		luaL_error(L, "sandbox.load_keys: %s: %s", field, err);
}

/* Parse a PEM certificate; the PEM is freed afterwards unless keep is set. Raises on failure. */
static void load_cert(lua_State *L, struct crypto_buf *pem, struct crypto_cert *out, const char *field, int keep)
{
	char err[CRYPTO_ERRLEN];
	int rc = crypto_cert_from_pem((const char *)pem->data, pem->len, out, err, sizeof err);
	if (!keep)
		crypto_buf_free(pem);
	if (rc < 0)
		luaL_error(L, "sandbox.load_keys: %s: %s", field, err);
}

/* The public-key id: public_key_id, or the contents of public_key_id_file. */
static void load_pubkey_id(lua_State *L, const char *cfg, struct wxs_keys *k)
{
	struct crypto_buf idf = { 0 };
	lua_getfield(L, 1, "public_key_id");
	const char *id = lua_tostring(L, -1);
	if (!id && read_opt_file(L, cfg, "public_key_id_file", &idf, 0))
		id = (const char *)idf.data;
	if (!id || strncmp(id, WXP_PUBKEY_ID_PREFIX, strlen(WXP_PUBKEY_ID_PREFIX)) != 0 ||
	    strlen(id) >= sizeof k->pubkey_id) {
		crypto_buf_free(&idf);
		luaL_error(L, "sandbox.load_keys: public_key_id (or public_key_id_file) must hold PUB_KEY_ID_…");
	}
	snprintf(k->pubkey_id, sizeof k->pubkey_id, "%s", id);
	crypto_buf_free(&idf);
	lua_pop(L, 1);
}

/*
** sandbox.load_keys{platform_key_file=, platform_cert_file=, merchant_cert_file=,
** apiv3_key_file=, public_key_file=?, public_key_id= | public_key_id_file=?,
** app_secret_file=?} → keys. Raises with the field and the reason when a file
** is missing or malformed; nothing is kept then (the userdata's __gc frees what
** was loaded). [-0, +1, e]
*/
static int l_load_keys(lua_State *L)
{
	const char *cfg = lua_touserdata(L, lua_upvalueindex(1));
	struct crypto_buf buf = { 0 };
	luaL_checktype(L, 1, LUA_TTABLE);
	lua_settop(L, 1);
	struct wxs_keys *k = lua_newuserdatauv(L, sizeof *k, 0);
	memset(k, 0, sizeof *k);
	luaL_setmetatable(L, KEYS_MT);

	read_opt_file(L, cfg, "platform_key_file", &buf, 1);
	load_private(L, &buf, &k->platform_key, "platform_key_file");
	read_opt_file(L, cfg, "platform_cert_file", &k->platform_pem, 1);
	load_cert(L, &k->platform_pem, &k->platform_cert, "platform_cert_file", 1);
	read_opt_file(L, cfg, "merchant_cert_file", &buf, 1);
	load_cert(L, &buf, &k->merchant_cert, "merchant_cert_file", 0);
	read_opt_file(L, cfg, "apiv3_key_file", &buf, 1);
	if (buf.len != sizeof k->apiv3) {
		size_t n = buf.len;
		crypto_buf_free(&buf);
		return luaL_error(L, "sandbox.load_keys: the APIv3 key must be 32 bytes (it is %d)", (int)n);
	}
	memcpy(k->apiv3, buf.data, sizeof k->apiv3);
	crypto_buf_free(&buf);
	if (read_opt_file(L, cfg, "public_key_file", &buf, 0)) {
		load_private(L, &buf, &k->pubkey_key, "public_key_file");
		load_pubkey_id(L, cfg, k);
	}
	read_opt_file(L, cfg, "app_secret_file", &k->app_secret, 0);
	return 1;
}

/* ---- small helpers ---- */

static int64_t now_s(void)
{
	return clock_now_ms() / 1000;
}

/* RFC 3339 in Beijing time (+08:00), as WeChat Pay writes times. */
static void beijing_time(int64_t t, char *out, size_t cap)
{
	time_t bt = (time_t)(t + BEIJING_OFFSET_S);
	struct tm tm;
	gmtime_r(&bt, &tm);
	strftime(out, cap, "%Y-%m-%dT%H:%M:%S+08:00", &tm);
}

static void set_str(lua_State *L, const char *field, const char *value)
{
	lua_pushstring(L, value);
	lua_setfield(L, -2, field);
}

/* Raise with crypto's message: only for failures that are the sandbox's own fault. */
static int fail(lua_State *L, const char *what, const char *err)
{
	return luaL_error(L, "sandbox: %s: %s", what, err);
}

/* ---- verifying merchant requests ---- */

/*
** keys:parse_authorization(header) → {mchid=, nonce_str=, timestamp=, serial_no=,
** signature=} | nil, kind, message. kind is "scheme" (not WECHATPAY2-SHA256-RSA2048)
** or "format" (missing or malformed), the two answers WeChat Pay tells apart.
*/
static int l_parse_authorization(lua_State *L)
{
	const char *h = luaL_optstring(L, 2, NULL);
	char err[CRYPTO_ERRLEN];
	struct wxsrv_auth a;
	check_keys(L);
	const char *space = h ? strchr(h, ' ') : NULL;
	if (!h || !*h || !space) {
		lua_pushnil(L);
		lua_pushliteral(L, "format");
		lua_pushliteral(L, "Authorization is missing or has no scheme");
		return 3;
	}
	if ((size_t)(space - h) != strlen(WXP_AUTH_SCHEME) ||
	    strncmp(h, WXP_AUTH_SCHEME, strlen(WXP_AUTH_SCHEME)) != 0) {
		lua_pushnil(L);
		lua_pushliteral(L, "scheme");
		lua_pushliteral(L, "the Authorization scheme is not " WXP_AUTH_SCHEME);
		return 3;
	}
	if (wxsrv_parse_authorization(h, &a, err, sizeof err) < 0) {
		lua_pushnil(L);
		lua_pushliteral(L, "format");
		lua_pushstring(L, err);
		return 3;
	}
	lua_createtable(L, 0, 5);
	set_str(L, "mchid", a.mchid);
	set_str(L, "nonce_str", a.nonce_str);
	set_str(L, "timestamp", a.timestamp);
	set_str(L, "serial_no", a.serial_no);
	set_str(L, "signature", a.signature);
	wxsrv_auth_free(&a);
	return 1;
}

static int all_digits(const char *s, size_t max)
{
	size_t n = 0;
	for (; s[n]; n++)
		if (!isdigit((unsigned char)s[n]))
			return 0;
	return n > 0 && n <= max;
}

static int refuse(lua_State *L, const char *kind, const char *message)
{
	lua_pushnil(L);
	lua_pushstring(L, kind);
	lua_pushstring(L, message);
	return 3;
}

/*
** keys:verify_request(method, url, body, auth, now?) → true | nil, kind, message.
** The checks run in WeChat Pay's order: timestamp format ("format"), skew over
** 300 s ("stale"), serial_no of the merchant certificate ("serial"), then the
** SHA256withRSA signature over METHOD\nURL\nTS\nNONCE\nBODY\n ("signature"; the
** message is then the signed string the server built, for sign_information).
*/
static int l_verify_request(lua_State *L)
{
	struct wxs_keys *k = check_keys(L);
	const char *method = luaL_checkstring(L, 2), *url = luaL_checkstring(L, 3);
	size_t blen;
	const char *body = luaL_optlstring(L, 4, "", &blen);
	luaL_checktype(L, 5, LUA_TTABLE);
	int64_t now = luaL_optinteger(L, 6, now_s());
	char err[CRYPTO_ERRLEN];
	struct crypto_buf msg = { 0 };

	lua_getfield(L, 5, "timestamp");
	lua_getfield(L, 5, "nonce_str");
	lua_getfield(L, 5, "serial_no");
	lua_getfield(L, 5, "signature");
	const char *ts = luaL_optstring(L, -4, ""), *nonce = luaL_optstring(L, -3, "");
	const char *serial = luaL_optstring(L, -2, ""), *sig = luaL_optstring(L, -1, "");
	if (!all_digits(ts, 18))
		return refuse(L, "format", "timestamp is not a number of seconds");
	int64_t t = strtoll(ts, NULL, 10);
	if (t > now + 300 || t < now - 300)
		return refuse(L, "stale", "timestamp is more than 5 minutes away from the server's time");
	if (strcasecmp(serial, k->merchant_cert.serial) != 0)
		return refuse(L, "serial", "serial_no is not the merchant certificate's serial");
	if (wxp_request_message(method, url, t, nonce, body, blen, &msg, err, sizeof err) < 0)
		return refuse(L, "format", err);
	int ok = crypto_rsa_verify_sha256(k->merchant_cert.pubkey, msg.data, msg.len, sig, strlen(sig), err,
	                                  sizeof err) == 0;
	if (ok) {
		crypto_buf_free(&msg);
		lua_pushboolean(L, 1);
		return 1;
	}
	lua_pushnil(L);
	lua_pushliteral(L, "signature");
	lua_pushlstring(L, (const char *)msg.data, msg.len);
	crypto_buf_free(&msg);
	return 3;
}

/* keys:verify_pay_sign(appid, timeStamp, nonceStr, package, paySign) → boolean (wx.requestPayment's check). */
static int l_verify_pay_sign(lua_State *L)
{
	struct wxs_keys *k = check_keys(L);
	const char *f[4];
	size_t siglen;
	for (int i = 0; i < 4; i++)
		f[i] = luaL_checkstring(L, i + 2);
	const char *sig = luaL_checklstring(L, 6, &siglen);
	lua_pushfstring(L, "%s\n%s\n%s\n%s\n", f[0], f[1], f[2], f[3]);
	size_t mlen;
	const char *msg = lua_tolstring(L, -1, &mlen);
	lua_pushboolean(L, crypto_rsa_verify_sha256(k->merchant_cert.pubkey, msg, mlen, sig, siglen, NULL, 0) == 0);
	return 1;
}

/* keys:check_app_secret(secret) → boolean; false when no app_secret_file was loaded. */
static int l_check_app_secret(lua_State *L)
{
	struct wxs_keys *k = check_keys(L);
	size_t n;
	const char *s = luaL_checklstring(L, 2, &n);
	lua_pushboolean(L,
	                k->app_secret.len > 0 && n == k->app_secret.len && crypto_ct_equal(s, k->app_secret.data, n));
	return 1;
}

/* ---- signing what WeChat Pay sends ---- */

/* A probe signature: the prefix WeChat Pay uses, then Base64 noise of a real signature's length. */
static int probe_signature(struct crypto_buf *out, char *err, size_t errlen)
{
	unsigned char noise[240];
	struct crypto_buf b64 = { 0 };
	size_t plen = strlen(WXP_PROBE_PREFIX);
	if (crypto_random_bytes(noise, sizeof noise, err, errlen) < 0 ||
	    crypto_base64_encode(noise, sizeof noise, &b64, err, errlen) < 0)
		return -1;
	out->data = malloc(plen + b64.len + 1);
	if (!out->data) {
		crypto_buf_free(&b64);
		snprintf(err, errlen, "out of memory");
		return -1;
	}
	memcpy(out->data, WXP_PROBE_PREFIX, plen);
	memcpy(out->data + plen, b64.data, b64.len + 1);
	out->len = plen + b64.len;
	crypto_buf_free(&b64);
	return 0;
}

static int opt_bool(lua_State *L, int t, const char *field)
{
	if (!lua_istable(L, t))
		return 0;
	lua_getfield(L, t, field);
	int v = lua_toboolean(L, -1);
	lua_pop(L, 1);
	return v;
}

/*
** keys:sign_response(body, {public_key=, probe=, bad=, timestamp=}?) → headers
** {Wechatpay-Timestamp, -Nonce, -Signature, -Serial, -Signature-Type}: the body
** signed as TIMESTAMP\nNONCE\nBODY\n with the platform key, or with the public-key
** mode key (serial PUB_KEY_ID_…) when public_key is set. probe gives a
** WECHATPAY/SIGNTEST/ signature; bad a well-formed signature over other bytes.
*/
static int l_sign_response(lua_State *L)
{
	struct wxs_keys *k = check_keys(L);
	size_t blen;
	const char *body = luaL_optlstring(L, 2, "", &blen);
	int use_pub = opt_bool(L, 3, "public_key"), probe = opt_bool(L, 3, "probe"), bad = opt_bool(L, 3, "bad");
	int64_t ts = now_s();
	char nonce[33], tsbuf[24], err[CRYPTO_ERRLEN];
	struct crypto_buf sig = { 0 };

	if (lua_istable(L, 3)) {
		lua_getfield(L, 3, "timestamp");
		ts = luaL_optinteger(L, -1, ts);
		lua_pop(L, 1);
	}
	if (use_pub && !k->pubkey_key)
		return luaL_error(L, "sandbox: sign_response: no public_key_file was loaded");
	EVP_PKEY *key = use_pub ? k->pubkey_key : k->platform_key;
	if (crypto_nonce_hex(nonce, 32, err, sizeof err) < 0)
		return fail(L, "nonce", err);
	/* bad: a genuine signature, but over another nonce than the one sent */
	int rc = probe ? probe_signature(&sig, err, sizeof err)
	               : wxsrv_sign_response(key, ts, bad ? "00000000000000000000000000000000" : nonce, body, blen,
	                                     &sig, err, sizeof err);
	if (rc < 0)
		return fail(L, "sign_response", err);
	snprintf(tsbuf, sizeof tsbuf, "%lld", (long long)ts);
	lua_createtable(L, 0, 5);
	set_str(L, "Wechatpay-Timestamp", tsbuf);
	set_str(L, "Wechatpay-Nonce", nonce);
	set_str(L, "Wechatpay-Signature", (const char *)sig.data);
	set_str(L, "Wechatpay-Serial", use_pub ? k->pubkey_id : k->platform_cert.serial);
	set_str(L, "Wechatpay-Signature-Type", WXP_SIGNATURE_TYPE);
	crypto_buf_free(&sig);
	return 1;
}

/* Push {algorithm=, ciphertext=, associated_data=, nonce=} for plaintext under the APIv3 key. */
static void push_resource(lua_State *L, struct wxs_keys *k, const char *pt, size_t len, const char *ad)
{
	char nonce[13], err[CRYPTO_ERRLEN];
	struct crypto_buf ct = { 0 };
	if (crypto_nonce_alnum(nonce, 12, err, sizeof err) < 0 ||
	    wxsrv_encrypt_resource(k->apiv3, sizeof k->apiv3, nonce, ad, pt, len, &ct, err, sizeof err) < 0)
		fail(L, "encrypt_resource", err);
	lua_createtable(L, 0, 4);
	set_str(L, "algorithm", WXP_ALGORITHM);
	set_str(L, "ciphertext", (const char *)ct.data);
	set_str(L, "associated_data", ad);
	set_str(L, "nonce", nonce);
	crypto_buf_free(&ct);
}

/* keys:encrypt_resource(plaintext, associated_data) → resource table (AEAD_AES_256_GCM, 12-char nonce). */
static int l_encrypt_resource(lua_State *L)
{
	struct wxs_keys *k = check_keys(L);
	size_t len;
	const char *pt = luaL_checklstring(L, 2, &len);
	const char *ad = luaL_optstring(L, 3, "");
	push_resource(L, k, pt, len, ad);
	return 1;
}

/* keys:certificates_response() → {data = {{serial_no, effective_time, expire_time, encrypt_certificate}}}. */
static int l_certificates_response(lua_State *L)
{
	struct wxs_keys *k = check_keys(L);
	char t[40];
	lua_createtable(L, 0, 1);
	lua_createtable(L, 1, 0);
	lua_createtable(L, 0, 4);
	set_str(L, "serial_no", k->platform_cert.serial);
	beijing_time(k->platform_cert.not_before, t, sizeof t);
	set_str(L, "effective_time", t);
	beijing_time(k->platform_cert.not_after, t, sizeof t);
	set_str(L, "expire_time", t);
	push_resource(L, k, (const char *)k->platform_pem.data, k->platform_pem.len, "certificate");
	lua_setfield(L, -2, "encrypt_certificate");
	lua_rawseti(L, -2, 1);
	lua_setfield(L, -2, "data");
	return 1;
}

/* keys:info() → {platform_serial=, merchant_serial=, public_key_id=?, app_secret=bool}: nothing secret. */
static int l_info(lua_State *L)
{
	struct wxs_keys *k = check_keys(L);
	lua_createtable(L, 0, 4);
	set_str(L, "platform_serial", k->platform_cert.serial);
	set_str(L, "merchant_serial", k->merchant_cert.serial);
	if (k->pubkey_key)
		set_str(L, "public_key_id", k->pubkey_id);
	lua_pushboolean(L, k->app_secret.len > 0);
	lua_setfield(L, -2, "app_secret");
	return 1;
}

/* ---- ids ---- */

/* sandbox.uuid() → a random (version 4) UUID, the shape of notification ids. */
static int l_uuid(lua_State *L)
{
	unsigned char b[16];
	char err[CRYPTO_ERRLEN], hex[33], out[37];
	if (crypto_random_bytes(b, sizeof b, err, sizeof err) < 0)
		return fail(L, "uuid", err);
	b[6] = (unsigned char)((b[6] & 0x0f) | 0x40);
	b[8] = (unsigned char)((b[8] & 0x3f) | 0x80);
	crypto_hex_encode(b, sizeof b, 0, hex, sizeof hex);
	snprintf(out, sizeof out, "%.8s-%.4s-%.4s-%.4s-%.12s", hex, hex + 8, hex + 12, hex + 16, hex + 20);
	lua_pushstring(L, out);
	return 1;
}

/* Random characters from alphabet (unbiased: bytes at or past the largest multiple are redrawn). */
static int random_from(lua_State *L, const char *alphabet)
{
	lua_Integer n = luaL_checkinteger(L, 1);
	size_t m = strlen(alphabet);
	unsigned limit = 256 - 256 % (unsigned)m;
	char out[129], err[CRYPTO_ERRLEN];
	luaL_argcheck(L, n >= 1 && n <= 128, 1, "length must be 1 to 128");
	for (lua_Integer i = 0; i < n;) {
		unsigned char c;
		if (crypto_random_bytes(&c, 1, err, sizeof err) < 0)
			return fail(L, "random", err);
		if (c < limit)
			out[i++] = alphabet[c % m];
	}
	lua_pushlstring(L, out, (size_t)n);
	return 1;
}

/* sandbox.random_digits(n), random_alnum(n), random_hex(n) → n random characters (n ≤ 128). */
static int l_random_digits(lua_State *L)
{
	return random_from(L, "0123456789");
}
static int l_random_alnum(lua_State *L)
{
	return random_from(L, "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz");
}
static int l_random_hex(lua_State *L)
{
	return random_from(L, "0123456789abcdef");
}

/* sandbox.beijing_time(unix_seconds) → "yyyy-MM-DDTHH:mm:ss+08:00". */
static int l_beijing_time(lua_State *L)
{
	char t[40];
	beijing_time(luaL_checkinteger(L, 1), t, sizeof t);
	lua_pushstring(L, t);
	return 1;
}

int wxsandbox_open(lua_State *L, void *config_path)
{
	static const luaL_Reg methods[] = { { "parse_authorization", l_parse_authorization },
		                            { "verify_request", l_verify_request },
		                            { "verify_pay_sign", l_verify_pay_sign },
		                            { "check_app_secret", l_check_app_secret },
		                            { "sign_response", l_sign_response },
		                            { "encrypt_resource", l_encrypt_resource },
		                            { "certificates_response", l_certificates_response },
		                            { "info", l_info },
		                            { NULL, NULL } };
	static const luaL_Reg fns[] = { { "uuid", l_uuid },
		                        { "random_digits", l_random_digits },
		                        { "random_alnum", l_random_alnum },
		                        { "random_hex", l_random_hex },
		                        { "beijing_time", l_beijing_time },
		                        { NULL, NULL } };
	if (luaL_newmetatable(L, KEYS_MT)) {
		luaL_newlib(L, methods);
		lua_setfield(L, -2, "__index");
		lua_pushcfunction(L, keys_gc);
		lua_setfield(L, -2, "__gc");
		lua_pushliteral(L, "locked");
		lua_setfield(L, -2, "__metatable");
	}
	lua_pop(L, 1);
	luaL_newlib(L, fns);
	lua_pushlightuserdata(L, config_path);
	lua_pushcclosure(L, l_load_keys, 1);
	lua_setfield(L, -2, "load_keys");
	return 1;
}

/* wxclient.c — the WeChat Pay merchant client: keys from config, signed calls, verified answers, notifications. */
#include "wxclient.h"

#include <ctype.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <event2/buffer.h>
#include <event2/http.h>
#include <lauxlib.h>

#include "clock.h"
#include "coro.h"
#include "crypto.h"
#include "engine.h"
#include "http.h"
#include "wechatpay.h"

/*
** Every step that a payment's safety rests on happens here, in C, where no
** script can skip it: requests are signed over the exact bytes sent, every
** 2xx answer is verified before a script sees it, and a notification's
** resource is only ever decrypted after its signature and timestamp passed.
** Keys never reach Lua.
*/

#define USER_AGENT \
	"paygate/" \
	"0.1 (+wechatpay-apiv3)"

struct wxclient {
	struct engine *eng;
	const struct wxpay_config *cfg;
	char serial[CRYPTO_SERIAL_MAX]; /* the merchant certificate's serial (sent as serial_no) */
	EVP_PKEY *merchant_key;
	unsigned char apiv3_key[32];
	char *app_secret;        /* NULL: login not configured */
	struct wxp_keyset *keys; /* what may verify WeChat Pay's signatures */
	int64_t certs_at;        /* last certificate download (ms) */
};

/* ---- loading ---- */

static void warn_if_shared(struct engine *e, const char *path)
{
	struct stat st;
	if (stat(path, &st) == 0 && (st.st_mode & 077))
		log_warn(&e->log, NULL, "key file %s is readable by group or others; chmod 600 it", path);
}

/* A secret file's bytes, without a trailing newline. */
static int read_secret(struct engine *e, const char *path, struct crypto_buf *out, char *err, size_t errlen)
{
	warn_if_shared(e, path);
	if (crypto_read_file(path, out, err, errlen) < 0)
		return -1;
	while (out->len && (out->data[out->len - 1] == '\n' || out->data[out->len - 1] == '\r'))
		out->data[--out->len] = '\0';
	return 0;
}

static int load_verifying_keys(struct wxclient *w, char *err, size_t errlen)
{
	const struct wxpay_config *c = w->cfg;
	w->keys = wxp_keyset_new();
	if (!w->keys) {
		snprintf(err, errlen, "out of memory");
		return -1;
	}
	for (int i = 0; i < c->n_platform_certs; i++) {
		struct crypto_buf pem = { 0 };
		if (crypto_read_file(c->platform_cert_files[i], &pem, err, errlen) < 0)
			return -1;
		int rc = wxp_keyset_add_cert(w->keys, (const char *)pem.data, pem.len, NULL, err, errlen);
		crypto_buf_free(&pem);
		if (rc < 0)
			return -1;
	}
	if (c->public_key_file) {
		struct crypto_buf pem = { 0 };
		if (crypto_read_file(c->public_key_file, &pem, err, errlen) < 0)
			return -1;
		int rc =
		    wxp_keyset_add_public_key(w->keys, c->public_key_id, (const char *)pem.data, pem.len, err, errlen);
		crypto_buf_free(&pem);
		if (rc < 0)
			return -1;
	}
	return 0;
}

struct wxclient *wxc_new(struct engine *e, char *err, size_t errlen)
{
	const struct wxpay_config *c = &e->cfg.wxpay;
	struct wxclient *w;
	struct crypto_buf key = { 0 };

	err[0] = '\0';
	if (!c->enabled)
		return NULL;
	if (!(w = calloc(1, sizeof *w))) {
		snprintf(err, errlen, "out of memory");
		return NULL;
	}
	w->eng = e;
	w->cfg = c;
	warn_if_shared(e, c->private_key_file);
	if (!(w->merchant_key = crypto_private_key_from_file(c->private_key_file, err, errlen)))
		goto fail;
	if (read_secret(e, c->apiv3_key_file, &key, err, errlen) < 0)
		goto fail;
	if (key.len != 32) {
		snprintf(err, errlen, "the APIv3 key in %s must be exactly 32 bytes (it is %zu)", c->apiv3_key_file,
		         key.len);
		goto fail;
	}
	memcpy(w->apiv3_key, key.data, 32);
	crypto_buf_free(&key);
	if (c->app_secret_file) {
		if (read_secret(e, c->app_secret_file, &key, err, errlen) < 0)
			goto fail;
		w->app_secret = strdup((const char *)key.data);
		crypto_buf_free(&key);
	}
	if (load_verifying_keys(w, err, errlen) < 0)
		goto fail;
	if (c->sandbox && (strncmp(c->base_url, "http://", 7) == 0 || strncmp(c->login_base_url, "http://", 7) == 0))
		log_warn(&e->log, NULL,
		         "wechatpay.sandbox: calls go to %s and %s without TLS; this is for a local sandbox only, "
		         "never for WeChat Pay",
		         c->base_url, c->login_base_url);
	if (c->merchant_serial) {
		snprintf(w->serial, sizeof w->serial, "%s", c->merchant_serial);
	} else {
		struct crypto_cert cert;
		if (crypto_cert_from_file(c->merchant_cert_file, &cert, err, errlen) < 0)
			goto fail;
		snprintf(w->serial, sizeof w->serial, "%s", cert.serial);
		crypto_cert_clear(&cert);
	}
	return w;
fail:
	crypto_buf_free(&key);
	wxc_free(w);
	return NULL;
}

void wxc_free(struct wxclient *w)
{
	if (!w)
		return;
	crypto_key_free(w->merchant_key);
	wxp_keyset_free(w->keys);
	if (w->app_secret) {
		memset(w->app_secret, 0, strlen(w->app_secret));
		free(w->app_secret);
	}
	memset(w->apiv3_key, 0, sizeof w->apiv3_key);
	free(w);
}

/* ---- helpers ---- */

static struct wxclient *client(lua_State *L)
{
	struct engine *e = lua_touserdata(L, lua_upvalueindex(1));
	if (!e->wxc)
		luaL_error(L, "wechatpay is not configured (add a wechatpay = {...} table to the config)");
	return e->wxc;
}

static int64_t now_s(void)
{
	return clock_now_ms() / 1000;
}

/* Call json.decode (upvalue 3) on the string at idx; pushes the value or nil. */
static void decode_json(lua_State *L, int idx)
{
	idx = lua_absindex(L, idx);
	lua_getfield(L, lua_upvalueindex(3), "decode");
	lua_pushvalue(L, idx);
	if (lua_pcall(L, 1, 1, 0) != LUA_OK) {
		lua_pop(L, 1);
		lua_pushnil(L);
	}
}

/* Return nil, reason, message (the shape of every refusal here). */
static int refuse(lua_State *L, const char *reason, const char *message)
{
	lua_pushnil(L);
	lua_pushstring(L, reason);
	lua_pushstring(L, message);
	return 3;
}

static void count(struct engine *e, const char *metric, const char *result)
{
	char labels[96];
	snprintf(labels, sizeof labels, "result=\"%s\"", result);
	metrics_update(&e->metrics, metric, labels, 1, 0);
}

/*
** The reason for a call that got no answer, from http.request's "kind: message": timeout,
** connect, tls (the handshake failed or the certificate was refused) or network (anything else:
** the connection broke, or the request was never sent).
*/
static const char *no_answer_reason(const char *err)
{
	static const char *const kinds[] = { "timeout", "connect", "tls" };
	size_t n = err ? strcspn(err, ":") : 0;
	for (size_t i = 0; i < sizeof kinds / sizeof kinds[0]; i++)
		if (n == strlen(kinds[i]) && strncmp(err, kinds[i], n) == 0)
			return kinds[i];
	return "network";
}

/* Read header `name` of the response table res.headers (lower-case names) at idx. */
static const char *res_header(lua_State *L, int headers, const char *name)
{
	lua_getfield(L, headers, name);
	const char *v = lua_tostring(L, -1);
	lua_pop(L, 1); /* the string stays alive in the headers table */
	return v;
}

/* ---- wechatpay.request(method, path [, body]) ---- */

/* Verify a 2xx response (res at idx); returns NULL when it is genuine, else the reason. */
static const char *verify_response(lua_State *L, struct wxclient *w, int res, char *err, size_t errlen)
{
	lua_getfield(L, res, "headers");
	int h = lua_gettop(L);
	lua_getfield(L, res, "body");
	size_t blen;
	const char *body = lua_tolstring(L, -1, &blen);
	struct wxp_headers hd = {
		res_header(L, h, "wechatpay-timestamp"),      res_header(L, h, "wechatpay-nonce"),
		res_header(L, h, "wechatpay-signature"),      res_header(L, h, "wechatpay-serial"),
		res_header(L, h, "wechatpay-signature-type"),
	};
	enum wxp_verify_result r = wxp_verify(w->keys, &hd, body ? body : "", body ? blen : 0, now_s(), err, errlen);
	lua_pop(L, 2);
	return r == WXP_VERIFY_OK ? NULL : wxp_verify_result_name(r);
}

/*
** Continuation after http.request: stack = method, path, body, res|nil, err.
** Answers {status=, body=, raw=, code=, message=, request_id=} for any HTTP
** status, or nil, reason, message when there was no genuine answer.
*/
static int request_k(lua_State *L, int status, lua_KContext ctx)
{
	struct wxclient *w = client(L);
	struct engine *e = w->eng;
	char err[CRYPTO_ERRLEN];
	(void)status;
	(void)ctx;

	if (lua_isnil(L, 4)) {
		const char *why = no_answer_reason(lua_tostring(L, 5));
		count(e, "paygate_wechatpay_calls_total", why);
		return refuse(L, why, lua_tostring(L, 5));
	}
	lua_getfield(L, 4, "status");
	lua_Integer code = lua_tointeger(L, -1);
	lua_pop(L, 1);
	if (code >= 200 && code < 300) {
		const char *why = verify_response(L, w, 4, err, sizeof err);
		if (why) {
			log_warn(&e->log, coro_reqid(L), "wechatpay %s %s: response refused: %s: %s",
			         lua_tostring(L, 1), lua_tostring(L, 2), why, err);
			count(e, "paygate_wechatpay_calls_total", "unverified");
			return refuse(L, why, err);
		}
	}
	lua_createtable(L, 0, 6);
	int out = lua_gettop(L);
	lua_pushinteger(L, code);
	lua_setfield(L, out, "status");
	lua_getfield(L, 4, "body");
	lua_pushvalue(L, -1);
	lua_setfield(L, out, "raw");
	if (lua_rawlen(L, -1) > 0) {
		decode_json(L, -1);
		if (lua_istable(L, -1)) {
			lua_getfield(L, -1, "code");
			lua_setfield(L, out, "code");
			lua_getfield(L, -1, "message");
			lua_setfield(L, out, "message");
		}
		lua_setfield(L, out, "body");
	}
	lua_pop(L, 1);
	lua_getfield(L, 4, "headers");
	lua_getfield(L, -1, "request-id");
	lua_setfield(L, out, "request_id");
	lua_pop(L, 1);
	count(e, "paygate_wechatpay_calls_total", code < 300 ? "ok" : code < 500 ? "refused" : "upstream_error");
	return 1;
}

static void set_header(lua_State *L, const char *name, const char *value)
{
	lua_pushstring(L, value);
	lua_setfield(L, -2, name);
}

/*
** Sign METHOD PATH BODY (body at stack index body_idx, 0 for none) with the merchant key and
** push http.request (upvalue 2) and its options, ready for lua_callk. The body string on
** the stack is the one sent, so the signature covers exactly the bytes that go out.
** Raises "<what>: cannot sign the request" on failure. [-0, +2, e]
*/
static void push_signed_call(lua_State *L, struct wxclient *w, const char *what, const char *method, const char *path,
                             int body_idx, int announce_pubkey)
{
	size_t blen = 0;
	const char *body = body_idx ? lua_tolstring(L, body_idx, &blen) : NULL;
	char nonce[33], err[CRYPTO_ERRLEN];
	struct crypto_buf auth = { 0 };

	if (crypto_nonce_alnum(nonce, 32, err, sizeof err) < 0 ||
	    wxp_build_authorization(w->merchant_key, w->cfg->mchid, w->serial, method, path, now_s(), nonce,
	                            body ? body : "", blen, &auth, err, sizeof err) < 0)
		luaL_error(L, "%s: cannot sign the request: %s", what, err);
	lua_pushvalue(L, lua_upvalueindex(2)); /* http.request */
	lua_createtable(L, 0, 4);
	lua_pushstring(L, method);
	lua_setfield(L, -2, "method");
	lua_pushfstring(L, "%s%s", w->cfg->base_url, path);
	lua_setfield(L, -2, "url");
	if (body) {
		lua_pushvalue(L, body_idx);
		lua_setfield(L, -2, "body");
	}
	lua_createtable(L, 0, 5);
	set_header(L, "Authorization", (const char *)auth.data);
	crypto_buf_free(&auth);
	set_header(L, "Accept", "application/json");
	set_header(L, "User-Agent", USER_AGENT);
	if (body)
		set_header(L, "Content-Type", "application/json");
	if (announce_pubkey && w->cfg->public_key_id)
		set_header(L, "Wechatpay-Serial", w->cfg->public_key_id);
	lua_setfield(L, -2, "headers");
}

static int l_request(lua_State *L)
{
	struct wxclient *w = client(L);
	const char *method = luaL_checkstring(L, 1);
	const char *path = luaL_checkstring(L, 2);

	luaL_optstring(L, 3, NULL);
	luaL_argcheck(L, path[0] == '/', 2, "path must start with / (e.g. /v3/pay/transactions/jsapi)");
	lua_settop(L, 3);
	push_signed_call(L, w, "wechatpay.request", method, path, lua_isnil(L, 3) ? 0 : 3, 1);
	lua_callk(L, 1, 2, 0, request_k);
	return request_k(L, LUA_OK, 0);
}

/* ---- wechatpay.download(url): a bill file, signed request, unsigned answer ---- */

/* Continuation: stack = url, res|nil, err. The answer carries no signature (WeChat does not
** sign bill files: the SHA1 from the signed tradebill answer is the check), so it is handed
** over as it came: {status=, raw=, code=, message=, request_id=} or nil, reason (timeout, connect,
** tls, network), message. */
static int download_k(lua_State *L, int status, lua_KContext ctx)
{
	struct wxclient *w = client(L);
	(void)status;
	(void)ctx;
	if (lua_isnil(L, 2)) {
		const char *why = no_answer_reason(lua_tostring(L, 3));
		count(w->eng, "paygate_wechatpay_calls_total", why);
		return refuse(L, why, lua_tostring(L, 3));
	}
	lua_getfield(L, 2, "status");
	lua_Integer code = lua_tointeger(L, -1);
	lua_pop(L, 1);
	lua_createtable(L, 0, 5);
	int out = lua_gettop(L);
	lua_pushinteger(L, code);
	lua_setfield(L, out, "status");
	lua_getfield(L, 2, "body");
	if (code >= 300 && lua_rawlen(L, -1) > 0) {
		decode_json(L, -1);
		if (lua_istable(L, -1)) {
			lua_getfield(L, -1, "code");
			lua_setfield(L, out, "code");
			lua_getfield(L, -1, "message");
			lua_setfield(L, out, "message");
		}
		lua_pop(L, 1);
	}
	lua_setfield(L, out, "raw");
	lua_getfield(L, 2, "headers");
	lua_getfield(L, -1, "request-id");
	lua_setfield(L, out, "request_id");
	lua_pop(L, 1);
	count(w->eng, "paygate_wechatpay_calls_total", code < 300 ? "ok" : code < 500 ? "refused" : "upstream_error");
	return 1;
}

static int l_download(lua_State *L)
{
	struct wxclient *w = client(L);
	const char *url = luaL_checkstring(L, 1);
	size_t blen = strlen(w->cfg->base_url);

	/* Signed requests go only to the configured WeChat Pay host. */
	if (strncmp(url, w->cfg->base_url, blen) != 0 || url[blen] != '/')
		return refuse(L, "invalid", "the download URL is not on the configured wechatpay.base_url");
	lua_settop(L, 1);
	push_signed_call(L, w, "wechatpay.download", "GET", url + blen, 0, 0);
	lua_callk(L, 1, 2, 0, download_k);
	return download_k(L, LUA_OK, 0);
}

/* ---- wechatpay.notification(req) → resource, envelope | nil, reason, message ---- */

/* Decrypt the resource table at idx; pushes the plaintext string or returns the reason. */
static const char *decrypt_resource(lua_State *L, struct wxclient *w, int idx, char *err, size_t errlen)
{
	struct wxp_resource r;
	struct crypto_buf pt = { 0 };
	lua_getfield(L, idx, "algorithm");
	lua_getfield(L, idx, "nonce");
	lua_getfield(L, idx, "associated_data");
	lua_getfield(L, idx, "ciphertext");
	r.algorithm = lua_tostring(L, -4);
	r.nonce = lua_tostring(L, -3);
	r.associated_data = lua_tostring(L, -2);
	r.ciphertext = lua_tostring(L, -1);
	enum wxp_decrypt_result d = wxp_decrypt_resource(w->apiv3_key, 32, &r, &pt, err, errlen);
	lua_pop(L, 4);
	if (d != WXP_DECRYPT_OK)
		return wxp_decrypt_result_name(d);
	lua_pushlstring(L, (const char *)pt.data, pt.len);
	crypto_buf_free(&pt);
	return NULL;
}

static int l_notification(lua_State *L)
{
	struct wxclient *w = client(L);
	struct engine *e = w->eng;
	struct evhttp_request *req = http_request_of(L, 1);
	char err[CRYPTO_ERRLEN] = "";

	luaL_argcheck(L, req != NULL, 1, "the request object of the notification handler");
	struct evkeyvalq *in = evhttp_request_get_input_headers(req);
	struct evbuffer *buf = evhttp_request_get_input_buffer(req);
	size_t blen = evbuffer_get_length(buf);
	const char *body = blen ? (const char *)evbuffer_pullup(buf, -1) : "";
	struct wxp_headers hd = {
		evhttp_find_header(in, "Wechatpay-Timestamp"),      evhttp_find_header(in, "Wechatpay-Nonce"),
		evhttp_find_header(in, "Wechatpay-Signature"),      evhttp_find_header(in, "Wechatpay-Serial"),
		evhttp_find_header(in, "Wechatpay-Signature-Type"),
	};
	const char *why = NULL;
	enum wxp_verify_result v = wxp_verify(w->keys, &hd, body, blen, now_s(), err, sizeof err);
	if (v != WXP_VERIFY_OK) {
		why = wxp_verify_result_name(v);
		goto refused;
	}
	lua_pushlstring(L, body, blen);
	decode_json(L, -1);
	int env = lua_gettop(L);
	if (!lua_istable(L, env) || lua_getfield(L, env, "resource") != LUA_TTABLE) {
		why = "bad_json";
		snprintf(err, sizeof err, "the notification body is not an envelope with a resource object");
		goto refused;
	}
	if ((why = decrypt_resource(L, w, lua_gettop(L), err, sizeof err)))
		goto refused;
	decode_json(L, -1);
	if (!lua_istable(L, -1)) {
		why = "bad_json";
		snprintf(err, sizeof err, "the decrypted resource is not a JSON object");
		goto refused;
	}
	count(e, "paygate_wechatpay_notifications_total", "verified");
	lua_pushvalue(L, env);
	return 2;
refused:
	log_warn(&e->log, coro_reqid(L), "wechatpay notification refused: %s: %s", why, err);
	count(e, "paygate_wechatpay_notifications_total", why);
	return refuse(L, why, err);
}

/* ---- wechatpay.pay_params(prepay_id) → the object wx.requestPayment takes ---- */

static int l_pay_params(lua_State *L)
{
	struct wxclient *w = client(L);
	const char *prepay_id = luaL_checkstring(L, 1);
	char nonce[33], ts[24], err[CRYPTO_ERRLEN];
	struct crypto_buf sig = { 0 };
	int64_t t = now_s();

	if (crypto_nonce_alnum(nonce, 32, err, sizeof err) < 0 ||
	    wxp_pay_sign(w->merchant_key, w->cfg->appid, t, nonce, prepay_id, &sig, err, sizeof err) < 0)
		return luaL_error(L, "wechatpay.pay_params: %s", err);
	snprintf(ts, sizeof ts, "%lld", (long long)t);
	lua_createtable(L, 0, 6);
	set_header(L, "appId", w->cfg->appid);
	set_header(L, "timeStamp", ts);
	set_header(L, "nonceStr", nonce);
	lua_pushfstring(L, "%s%s", WXP_PACKAGE_PREFIX, prepay_id);
	lua_setfield(L, -2, "package");
	set_header(L, "signType", "RSA");
	set_header(L, "paySign", (const char *)sig.data);
	crypto_buf_free(&sig);
	return 1;
}

/*
** ---- wechatpay.app_pay_params(prepay_id) → the OpenSDK's PayReq: {appid, partnerid, prepayid,
** package = "Sign=WXPay", noncestr, timestamp, sign} (APP pay, the mobile app's appid) ----
*/
static int l_app_pay_params(lua_State *L)
{
	struct wxclient *w = client(L);
	const char *prepay_id = luaL_checkstring(L, 1);
	char nonce[33], ts[24], err[CRYPTO_ERRLEN];
	struct crypto_buf sig = { 0 };
	int64_t t = now_s();

	if (!w->cfg->app_appid)
		return luaL_error(L, "wechatpay.app_pay_params: APP pay needs wechatpay.app_appid in the config");
	if (crypto_nonce_alnum(nonce, 32, err, sizeof err) < 0 ||
	    wxp_app_pay_sign(w->merchant_key, w->cfg->app_appid, t, nonce, prepay_id, &sig, err, sizeof err) < 0)
		return luaL_error(L, "wechatpay.app_pay_params: %s", err);
	snprintf(ts, sizeof ts, "%lld", (long long)t);
	lua_createtable(L, 0, 7);
	set_header(L, "appid", w->cfg->app_appid);
	set_header(L, "partnerid", w->cfg->mchid);
	set_header(L, "prepayid", prepay_id);
	set_header(L, "package", WXP_APP_PACKAGE);
	set_header(L, "noncestr", nonce);
	set_header(L, "timestamp", ts);
	set_header(L, "sign", (const char *)sig.data);
	crypto_buf_free(&sig);
	return 1;
}

/* ---- wechatpay.login(code) → {openid=, unionid=} | nil, reason, message ---- */

static const char *login_reason(lua_Integer errcode)
{
	switch (errcode) {
	case 40029:
		return "invalid_code";
	case 45011:
		return "rate_limited";
	case 40226:
		return "blocked";
	case -1:
		return "busy";
	default:
		return "upstream_error";
	}
}

/* Continuation: stack = code, res|nil, err. session_key is dropped here, never returned. */
static int login_k(lua_State *L, int status, lua_KContext ctx)
{
	(void)status;
	(void)ctx;
	if (lua_isnil(L, 2))
		return refuse(L, no_answer_reason(lua_tostring(L, 3)), lua_tostring(L, 3));
	lua_getfield(L, 2, "body");
	decode_json(L, -1);
	if (!lua_istable(L, -1))
		return refuse(L, "upstream_error", "jscode2session answered something that is not JSON");
	int t = lua_gettop(L);
	lua_getfield(L, t, "errcode");
	lua_Integer errcode = lua_tointeger(L, -1);
	lua_getfield(L, t, "openid");
	if (errcode != 0 || !lua_isstring(L, -1)) {
		lua_getfield(L, t, "errmsg");
		char msg[256];
		snprintf(msg, sizeof msg, "jscode2session errcode %lld: %s", (long long)errcode,
		         lua_tostring(L, -1) ? lua_tostring(L, -1) : "(no message)");
		return refuse(L, errcode == 0 ? "upstream_error" : login_reason(errcode), msg);
	}
	lua_createtable(L, 0, 2);
	lua_pushvalue(L, -2);
	lua_setfield(L, -2, "openid");
	lua_getfield(L, t, "unionid");
	lua_setfield(L, -2, "unionid");
	return 1;
}

static int l_login(lua_State *L)
{
	struct wxclient *w = client(L);
	size_t n;
	const char *code = luaL_checklstring(L, 1, &n);

	if (!w->app_secret)
		return luaL_error(L, "wechatpay.login: wechatpay.app_secret_file is not configured");
	int ok = n > 0 && n <= 128;
	for (size_t i = 0; ok && i < n; i++)
		ok = isalnum((unsigned char)code[i]) || code[i] == '_' || code[i] == '-';
	if (!ok)
		return refuse(L, "invalid_code", "a wx.login code is 1 to 128 letters, digits, _ or -");
	lua_settop(L, 1);
	lua_pushvalue(L, lua_upvalueindex(2));
	lua_createtable(L, 0, 2);
	lua_pushfstring(L, "%s/sns/jscode2session?appid=%s&secret=%s&js_code=%s&grant_type=authorization_code",
	                w->cfg->login_base_url, w->cfg->appid, w->app_secret, code);
	lua_setfield(L, -2, "url");
	lua_createtable(L, 0, 1);
	set_header(L, "User-Agent", USER_AGENT);
	lua_setfield(L, -2, "headers");
	lua_callk(L, 1, 2, 0, login_k);
	return login_k(L, LUA_OK, 0);
}

/* ---- wechatpay.refresh_certificates() → count | nil, reason, message ---- */

/*
** Continuation: stack = res|nil, err. The download is verified with the
** certificates it carries (the bootstrap every SDK does), checked against
** the APIv3 key (only WeChat Pay can encrypt for it), then replaces the
** certificates the client trusts; the public key, if any, is kept.
*/
static int certs_k(lua_State *L, int status, lua_KContext ctx)
{
	struct wxclient *w = client(L);
	char err[CRYPTO_ERRLEN];
	(void)status;
	(void)ctx;
	if (lua_isnil(L, 1))
		return refuse(L, no_answer_reason(lua_tostring(L, 2)), lua_tostring(L, 2));
	lua_getfield(L, 1, "status");
	if (lua_tointeger(L, -1) != 200)
		return refuse(L, "refused", "GET /v3/certificates did not answer 200");
	/* Nothing below raises a Lua error while `next` is held (it would leak). */
	struct wxp_keyset *next = wxp_keyset_new();
	if (!next)
		return luaL_error(L, "out of memory");
	lua_getfield(L, 1, "body");
	decode_json(L, -1);
	if (lua_istable(L, -1))
		lua_getfield(L, -1, "data");
	else
		lua_pushnil(L);
	int data = lua_gettop(L);
	lua_Integer n = lua_istable(L, data) ? (lua_Integer)lua_rawlen(L, data) : 0;
	const char *why = n == 0 ? "bad_json" : NULL;
	if (why)
		snprintf(err, sizeof err, "the certificate list is not {\"data\": [...]} with entries");
	for (lua_Integer i = 1; !why && i <= n; i++) {
		int top = lua_gettop(L);
		if (lua_rawgeti(L, data, i) != LUA_TTABLE || lua_getfield(L, -1, "encrypt_certificate") != LUA_TTABLE) {
			why = "bad_json";
			snprintf(err, sizeof err, "certificate entry %lld has no encrypt_certificate object",
			         (long long)i);
		} else if (!(why = decrypt_resource(L, w, lua_gettop(L), err, sizeof err)) &&
		           wxp_keyset_add_cert(next, lua_tostring(L, -1), lua_rawlen(L, -1), NULL, err, sizeof err) <
		               0) {
			why = "bad_certificate";
		}
		lua_settop(L, top);
	}
	if (!why) {
		if (w->cfg->public_key_file) { /* keep the public key across refreshes */
			struct crypto_buf pem = { 0 };
			if (crypto_read_file(w->cfg->public_key_file, &pem, err, sizeof err) == 0)
				wxp_keyset_add_public_key(next, w->cfg->public_key_id, (const char *)pem.data, pem.len,
				                          err, sizeof err);
			crypto_buf_free(&pem);
		}
		struct wxp_keyset *old = w->keys;
		w->keys = next; /* verify the download with what it brought */
		why = verify_response(L, w, 1, err, sizeof err);
		if (why) {
			w->keys = old;
		} else {
			wxp_keyset_free(old);
			w->certs_at = clock_now_ms();
			lua_pushinteger(L, n);
			return 1;
		}
	}
	wxp_keyset_free(next);
	log_warn(&w->eng->log, coro_reqid(L), "certificate download refused: %s: %s", why, err);
	return refuse(L, why, err);
}

static int l_refresh_certificates(lua_State *L)
{
	struct wxclient *w = client(L);

	lua_settop(L, 0);
	push_signed_call(L, w, "wechatpay.refresh_certificates", "GET", "/v3/certificates?algorithm_type=RSA", 0, 0);
	lua_callk(L, 1, 2, 0, certs_k);
	return certs_k(L, LUA_OK, 0);
}

/* ---- small things ---- */

/* wechatpay.check_order{out_trade_no=, description=, amount=} → true | nil, message */
static int l_check_order(lua_State *L)
{
	char err[CRYPTO_ERRLEN];
	int isint = 0;
	luaL_checktype(L, 1, LUA_TTABLE);
	lua_getfield(L, 1, "out_trade_no");
	lua_getfield(L, 1, "description");
	lua_getfield(L, 1, "amount");
	/* Types exactly: the string "1200" or the number 20261128001 would be sent as given. */
	lua_Integer amount = lua_isinteger(L, -1) ? lua_tointegerx(L, -1, &isint) : 0;
	const char *no = lua_type(L, -3) == LUA_TSTRING ? lua_tostring(L, -3) : NULL;
	const char *desc = lua_type(L, -2) == LUA_TSTRING ? lua_tostring(L, -2) : NULL;
	if (!no || wxp_check_out_trade_no(no, err, sizeof err) < 0) {
		if (!no)
			snprintf(err, sizeof err, "out_trade_no must be a string");
	} else if (!desc || wxp_check_description(desc, err, sizeof err) < 0) {
		if (!desc)
			snprintf(err, sizeof err, "description must be a string");
	} else if (!isint || wxp_check_amount(amount, err, sizeof err) < 0) {
		if (!isint)
			snprintf(err, sizeof err, "amount must be an integer number of fen");
	} else {
		lua_pushboolean(L, 1);
		return 1;
	}
	lua_pushnil(L);
	lua_pushstring(L, err);
	return 2;
}

/* wechatpay.settings() → the non-secret configuration scripts need. */
static int l_settings(lua_State *L)
{
	struct wxclient *w = client(L);
	const struct wxpay_config *c = w->cfg;
	lua_createtable(L, 0, 8);
	set_header(L, "mchid", c->mchid);
	set_header(L, "appid", c->appid);
	if (c->app_appid)
		set_header(L, "app_appid", c->app_appid);
	if (c->notify_url)
		set_header(L, "notify_url", c->notify_url);
	if (c->refund_notify_url)
		set_header(L, "refund_notify_url", c->refund_notify_url);
	set_header(L, "mode", c->public_key_id ? "public_key" : "certificate");
	lua_pushboolean(L, c->download_certificates && !c->public_key_id);
	lua_setfield(L, -2, "download_certificates");
	lua_pushinteger(L, c->cert_refresh_s);
	lua_setfield(L, -2, "cert_refresh_s");
	lua_pushinteger(L, (lua_Integer)wxp_keyset_count(w->keys));
	lua_setfield(L, -2, "verifying_keys");
	return 1;
}

/* wechatpay.configured() → whether a wechatpay table is in the config. */
static int l_configured(lua_State *L)
{
	struct engine *e = lua_touserdata(L, lua_upvalueindex(1));
	lua_pushboolean(L, e->wxc != NULL);
	return 1;
}

void wxc_push_lua(lua_State *L, struct engine *e)
{
	static const luaL_Reg fns[] = { { "request", l_request },
		                        { "notification", l_notification },
		                        { "pay_params", l_pay_params },
		                        { "app_pay_params", l_app_pay_params },
		                        { "login", l_login },
		                        { "refresh_certificates", l_refresh_certificates },
		                        { "check_order", l_check_order },
		                        { "settings", l_settings },
		                        { "configured", l_configured },
		                        { "download", l_download },
		                        { NULL, NULL } };
	/* upvalues: engine, http.request, json (both expected at the top of the stack: json, http) */
	int json = lua_gettop(L) - 1, http = lua_gettop(L);
	lua_newtable(L);
	lua_pushlightuserdata(L, e);
	lua_getfield(L, http, "request");
	lua_pushvalue(L, json);
	luaL_setfuncs(L, fns, 3);
	lua_remove(L, http);
	lua_remove(L, json);
}

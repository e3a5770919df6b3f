/* wechatpay.c — the merchant's side of WeChat Pay APIv3 as pure functions: no I/O, no Lua. */
#include "wechatpay.h"

#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define KEY_ID_MAX       128 /* serial or PUB_KEY_ID_… including NUL */
#define TIMESTAMP_DIGITS 18  /* more digits could overflow int64 */
#define JSON_MAX_DEPTH   32

/* ================================================================
** Helpers
** ================================================================ */

#define seterr crypto_seterr

/* Non-empty printable ASCII without '"' or '\\': safe inside key="value" and on one line. */
static int header_safe(const char *s)
{
	const unsigned char *p = (const unsigned char *)s;

	if (s == NULL || *p == '\0')
		return 0;
	for (; *p; p++)
		if (*p < 0x21 || *p > 0x7e || *p == '"' || *p == '\\')
			return 0;
	return 1;
}

/* One part of a line-oriented signing message. */
struct part {
	const void *data;
	size_t len;
};

/* Joins parts, each followed by '\n', into out. Fails only when out of memory. */
static int join_lines(const struct part *parts, size_t n, struct crypto_buf *out, char *err, size_t errlen)
{
	size_t i, total = 0, off = 0;

	out->data = NULL;
	out->len = 0;
	for (i = 0; i < n; i++) {
		if (parts[i].len > SIZE_MAX / 2 - total - 1) {
			seterr(err, errlen, "message too large");
			return -1;
		}
		total += parts[i].len + 1;
	}
	if ((out->data = malloc(total + 1)) == NULL) {
		seterr(err, errlen, "out of memory");
		return -1;
	}
	for (i = 0; i < n; i++) {
		if (parts[i].len > 0)
			memcpy(out->data + off, parts[i].data, parts[i].len);
		off += parts[i].len;
		out->data[off++] = '\n';
	}
	out->data[off] = '\0';
	out->len = off;
	return 0;
}

static struct part str_part(const char *s)
{
	struct part p = { s, strlen(s) };
	return p;
}

/* Signs the lines of `parts` with key (RSA-SHA256, Base64 into out). */
static int sign_lines(EVP_PKEY *key, const struct part *parts, size_t n, struct crypto_buf *out, char *err,
                      size_t errlen)
{
	struct crypto_buf msg;
	int rc;

	out->data = NULL;
	out->len = 0;
	if (join_lines(parts, n, &msg, err, errlen) < 0)
		return -1;
	rc = crypto_rsa_sign_sha256(key, msg.data, msg.len, out, err, errlen);
	crypto_buf_free(&msg);
	return rc;
}

/* ================================================================
** Request signing (docs/wechatpay.md, "Signing a request")
** ================================================================ */

static int method_ok(const char *m)
{
	size_t i;

	if (m == NULL || m[0] == '\0')
		return 0;
	for (i = 0; m[i]; i++)
		if (m[i] < 'A' || m[i] > 'Z' || i >= 16)
			return 0;
	return 1;
}

/* URL as sent on the wire: starts with '/', visible ASCII only (percent-encoded). */
static int url_ok(const char *u)
{
	const unsigned char *p = (const unsigned char *)u;

	if (u == NULL || *p != '/')
		return 0;
	for (; *p; p++)
		if (*p < 0x21 || *p > 0x7e)
			return 0;
	return 1;
}

/* Validates the request inputs and fills the five message parts (tsbuf holds the time). */
static int request_parts(const char *method, const char *url, int64_t timestamp, const char *nonce, const void *body,
                         size_t bodylen, char tsbuf[24], struct part parts[5], char *err, size_t errlen)
{
	if (!method_ok(method)) {
		seterr(err, errlen, "HTTP method must be uppercase letters, e.g. GET or POST");
		return -1;
	}
	if (!url_ok(url)) {
		seterr(err, errlen, "URL must be the path and raw query as sent, starting with '/', no spaces");
		return -1;
	}
	if (timestamp < 0) {
		seterr(err, errlen, "timestamp must be Unix seconds (non-negative)");
		return -1;
	}
	if (!header_safe(nonce)) {
		seterr(err, errlen, "nonce must be non-empty printable ASCII without quotes");
		return -1;
	}
	snprintf(tsbuf, 24, "%" PRId64, timestamp);
	parts[0] = str_part(method);
	parts[1] = str_part(url);
	parts[2] = str_part(tsbuf);
	parts[3] = str_part(nonce);
	parts[4].data = body;
	parts[4].len = body != NULL ? bodylen : 0;
	return 0;
}

int wxp_request_message(const char *method, const char *url, int64_t timestamp, const char *nonce, const void *body,
                        size_t bodylen, struct crypto_buf *out, char *err, size_t errlen)
{
	char ts[24];
	struct part parts[5];

	out->data = NULL;
	out->len = 0;
	if (request_parts(method, url, timestamp, nonce, body, bodylen, ts, parts, err, errlen) < 0)
		return -1;
	return join_lines(parts, 5, out, err, errlen);
}

int wxp_sign_request(EVP_PKEY *key, const char *method, const char *url, int64_t timestamp, const char *nonce,
                     const void *body, size_t bodylen, struct crypto_buf *out, char *err, size_t errlen)
{
	char ts[24];
	struct part parts[5];

	out->data = NULL;
	out->len = 0;
	if (request_parts(method, url, timestamp, nonce, body, bodylen, ts, parts, err, errlen) < 0)
		return -1;
	return sign_lines(key, parts, 5, out, err, errlen);
}

int wxp_authorization(const char *mchid, const char *nonce, int64_t timestamp, const char *serial_no,
                      const char *signature, struct crypto_buf *out, char *err, size_t errlen)
{
	const char *fmt = WXP_AUTH_SCHEME " mchid=\"%s\",nonce_str=\"%s\",timestamp=\"%" PRId64
	                                  "\",serial_no=\"%s\",signature=\"%s\"";
	int n;

	out->data = NULL;
	out->len = 0;
	if (!header_safe(mchid) || !header_safe(nonce) || !header_safe(serial_no) || !header_safe(signature) ||
	    timestamp < 0) {
		seterr(err, errlen, "Authorization values must be non-empty printable ASCII without quotes");
		return -1;
	}
	n = snprintf(NULL, 0, fmt, mchid, nonce, timestamp, serial_no, signature);
	if (n < 0 || (out->data = malloc((size_t)n + 1)) == NULL) {
		seterr(err, errlen, "out of memory");
		return -1;
	}
	snprintf((char *)out->data, (size_t)n + 1, fmt, mchid, nonce, timestamp, serial_no, signature);
	out->len = (size_t)n;
	return 0;
}

int wxp_build_authorization(EVP_PKEY *key, const char *mchid, const char *serial_no, const char *method,
                            const char *url, int64_t timestamp, const char *nonce, const void *body, size_t bodylen,
                            struct crypto_buf *out, char *err, size_t errlen)
{
	struct crypto_buf sig;
	int rc;

	out->data = NULL;
	out->len = 0;
	if (wxp_sign_request(key, method, url, timestamp, nonce, body, bodylen, &sig, err, errlen) < 0)
		return -1;
	rc = wxp_authorization(mchid, nonce, timestamp, serial_no, (char *)sig.data, out, err, errlen);
	crypto_buf_free(&sig);
	return rc;
}

/* ================================================================
** Key set (docs/wechatpay.md, "Which key verifies")
** ================================================================ */

struct ks_entry {
	char id[KEY_ID_MAX]; /* certificate serial or PUB_KEY_ID_… */
	EVP_PKEY *key;
	int is_public_key;
};

struct wxp_keyset {
	struct ks_entry *e;
	size_t n, cap;
};

struct wxp_keyset *wxp_keyset_new(void)
{
	return calloc(1, sizeof(struct wxp_keyset));
}

void wxp_keyset_free(struct wxp_keyset *ks)
{
	size_t i;

	if (ks == NULL)
		return;
	for (i = 0; i < ks->n; i++)
		crypto_key_free(ks->e[i].key);
	free(ks->e);
	free(ks);
}

static struct ks_entry *ks_find(const struct wxp_keyset *ks, const char *id)
{
	size_t i;

	for (i = 0; id != NULL && i < ks->n; i++)
		if (strcmp(ks->e[i].id, id) == 0)
			return &ks->e[i];
	return NULL;
}

static struct ks_entry *ks_find_public_key(const struct wxp_keyset *ks)
{
	size_t i;

	for (i = 0; i < ks->n; i++)
		if (ks->e[i].is_public_key)
			return &ks->e[i];
	return NULL;
}

/*
** Stores key under id, taking ownership of key. `old` (may be NULL) is the entry
** being replaced. On failure (out of memory) the caller still owns key.
*/
static int ks_put(struct wxp_keyset *ks, struct ks_entry *old, const char *id, EVP_PKEY *key, int is_public_key,
                  char *err, size_t errlen)
{
	struct ks_entry *grown;

	if (old == NULL) {
		if (ks->n == ks->cap) {
			size_t cap = ks->cap ? ks->cap * 2 : 4;
			if ((grown = realloc(ks->e, cap * sizeof *grown)) == NULL) {
				seterr(err, errlen, "out of memory");
				return -1;
			}
			ks->e = grown;
			ks->cap = cap;
		}
		old = &ks->e[ks->n++];
	} else {
		crypto_key_free(old->key);
	}
	snprintf(old->id, sizeof old->id, "%s", id);
	old->key = key;
	old->is_public_key = is_public_key;
	return 0;
}

int wxp_keyset_add_cert(struct wxp_keyset *ks, const char *pem, size_t len, char *serial_out, char *err, size_t errlen)
{
	struct crypto_cert c;
	struct ks_entry *old;

	if (crypto_cert_from_pem(pem, len, &c, err, errlen) < 0)
		return -1;
	if (!crypto_key_is_rsa(c.pubkey)) {
		seterr(err, errlen, "certificate %s does not hold an RSA key", c.serial);
		goto fail;
	}
	old = ks_find(ks, c.serial);
	if (old != NULL && old->is_public_key) {
		seterr(err, errlen, "serial %s is already used by the public key", c.serial);
		goto fail;
	}
	if (ks_put(ks, old, c.serial, c.pubkey, 0, err, errlen) < 0)
		goto fail;
	if (serial_out != NULL)
		snprintf(serial_out, CRYPTO_SERIAL_MAX, "%s", c.serial);
	return 0;
fail:
	crypto_cert_clear(&c);
	return -1;
}

/* PUB_KEY_ID_ followed by 1..100 characters of [0-9A-Za-z_]. */
static int key_id_ok(const char *id)
{
	size_t plen = strlen(WXP_PUBKEY_ID_PREFIX), i, n;

	if (id == NULL || strncmp(id, WXP_PUBKEY_ID_PREFIX, plen) != 0)
		return 0;
	n = strlen(id);
	if (n == plen || n >= KEY_ID_MAX)
		return 0;
	for (i = plen; i < n; i++)
		if (!(id[i] == '_' || (id[i] >= '0' && id[i] <= '9') || (id[i] >= 'A' && id[i] <= 'Z') ||
		      (id[i] >= 'a' && id[i] <= 'z')))
			return 0;
	return 1;
}

int wxp_keyset_add_public_key(struct wxp_keyset *ks, const char *key_id, const char *pem, size_t len, char *err,
                              size_t errlen)
{
	EVP_PKEY *key;

	if (!key_id_ok(key_id)) {
		seterr(err, errlen,
		       "public key id must look like " WXP_PUBKEY_ID_PREFIX "0000000000000024101100397200000006");
		return -1;
	}
	if ((key = crypto_public_key_from_pem(pem, len, err, errlen)) == NULL)
		return -1;
	if (!crypto_key_is_rsa(key)) {
		seterr(err, errlen, "public key %s is not an RSA key", key_id);
		crypto_key_free(key);
		return -1;
	}
	if (ks_put(ks, ks_find_public_key(ks), key_id, key, 1, err, errlen) < 0) {
		crypto_key_free(key);
		return -1;
	}
	return 0;
}

EVP_PKEY *wxp_keyset_lookup(const struct wxp_keyset *ks, const char *serial)
{
	struct ks_entry *e = ks_find(ks, serial);

	return e != NULL ? e->key : NULL;
}

size_t wxp_keyset_count(const struct wxp_keyset *ks)
{
	return ks->n;
}

/* ================================================================
** Verification (docs/wechatpay.md, "Verifying answers", "Verifying notifications")
** ================================================================ */

const char *wxp_verify_result_name(enum wxp_verify_result r)
{
	switch (r) {
	case WXP_VERIFY_OK:
		return "ok";
	case WXP_VERIFY_MISSING_HEADER:
		return "missing_header";
	case WXP_VERIFY_BAD_SIGNATURE_TYPE:
		return "bad_signature_type";
	case WXP_VERIFY_PROBE:
		return "signature_probe";
	case WXP_VERIFY_BAD_HEADER:
		return "bad_header";
	case WXP_VERIFY_STALE:
		return "stale_timestamp";
	case WXP_VERIFY_UNKNOWN_SERIAL:
		return "unknown_serial";
	case WXP_VERIFY_BAD_SIGNATURE:
		return "bad_signature";
	case WXP_VERIFY_INTERNAL:
		return "internal_error";
	}
	return "unknown";
}

int wxp_response_message(const char *timestamp, const char *nonce, const void *body, size_t bodylen,
                         struct crypto_buf *out, char *err, size_t errlen)
{
	struct part parts[3];

	parts[0] = str_part(timestamp);
	parts[1] = str_part(nonce);
	parts[2].data = body;
	parts[2].len = body != NULL ? bodylen : 0;
	return join_lines(parts, 3, out, err, errlen);
}

static int absent(const char *s)
{
	return s == NULL || s[0] == '\0';
}

/* The checks that need no key and no clock: presence, signature type, probe. */
static enum wxp_verify_result headers_present(const struct wxp_headers *h, char *err, size_t errlen)
{
	const char *missing = absent(h->timestamp)   ? "Wechatpay-Timestamp"
	                      : absent(h->nonce)     ? "Wechatpay-Nonce"
	                      : absent(h->signature) ? "Wechatpay-Signature"
	                      : absent(h->serial)    ? "Wechatpay-Serial"
	                                             : NULL;

	if (missing != NULL) {
		seterr(err, errlen, "header %s is missing (4xx responses are not signed: check the status first)",
		       missing);
		return WXP_VERIFY_MISSING_HEADER;
	}
	if (!absent(h->signature_type) && strcmp(h->signature_type, WXP_SIGNATURE_TYPE) != 0) {
		seterr(err, errlen, "unsupported Wechatpay-Signature-Type (only " WXP_SIGNATURE_TYPE ")");
		return WXP_VERIFY_BAD_SIGNATURE_TYPE;
	}
	if (strncmp(h->signature, WXP_PROBE_PREFIX, strlen(WXP_PROBE_PREFIX)) == 0) {
		seterr(err, errlen,
		       "signature probe " WXP_PROBE_PREFIX " from WeChat Pay: reject it, a correctly "
		       "signed copy follows");
		return WXP_VERIFY_PROBE;
	}
	return WXP_VERIFY_OK;
}

/* Parses 1..18 ASCII digits. Returns -1 for anything else. */
static int parse_timestamp(const char *s, int64_t *out)
{
	int64_t v = 0;
	size_t i;

	for (i = 0; s[i]; i++) {
		if (s[i] < '0' || s[i] > '9' || i >= TIMESTAMP_DIGITS)
			return -1;
		v = v * 10 + (s[i] - '0');
	}
	*out = v;
	return i > 0 ? 0 : -1;
}

static int printable(const char *s)
{
	const unsigned char *p = (const unsigned char *)s;

	for (; *p; p++)
		if (*p < 0x20 || *p == 0x7f)
			return 0;
	return 1;
}

/*
** Timestamp syntax and window: |now - ts| >= WXP_MAX_SKEW is stale, as in the Go SDK
** (PHP and the axios plugin allow exactly 300 s; we side with Go and Java). The
** difference is computed in uint64 so no pair of int64 values can overflow.
*/
static enum wxp_verify_result check_time(const struct wxp_headers *h, int64_t now, char *err, size_t errlen)
{
	int64_t ts;
	uint64_t skew;

	if (parse_timestamp(h->timestamp, &ts) < 0 || !printable(h->nonce)) {
		seterr(err, errlen, "Wechatpay-Timestamp must be decimal Unix seconds and Wechatpay-Nonce printable");
		return WXP_VERIFY_BAD_HEADER;
	}
	skew = ts >= now ? (uint64_t)ts - (uint64_t)now : (uint64_t)now - (uint64_t)ts;
	if (skew >= WXP_MAX_SKEW) {
		seterr(err, errlen,
		       "Wechatpay-Timestamp is %" PRIu64 " s away from now (limit %d s): replayed message "
		       "or wrong clock",
		       skew, WXP_MAX_SKEW);
		return WXP_VERIFY_STALE;
	}
	return WXP_VERIFY_OK;
}

enum wxp_verify_result wxp_verify(const struct wxp_keyset *ks, const struct wxp_headers *h, const void *body,
                                  size_t bodylen, int64_t now, char *err, size_t errlen)
{
	enum wxp_verify_result r;
	EVP_PKEY *key;
	struct crypto_buf msg;
	char why[CRYPTO_ERRLEN];
	int rc;

	if ((r = headers_present(h, err, errlen)) != WXP_VERIFY_OK ||
	    (r = check_time(h, now, err, errlen)) != WXP_VERIFY_OK)
		return r;
	if ((key = wxp_keyset_lookup(ks, h->serial)) == NULL) {
		seterr(err, errlen,
		       "no platform certificate or public key for Wechatpay-Serial %.64s: refresh "
		       "certificates or configure the public key",
		       h->serial);
		return WXP_VERIFY_UNKNOWN_SERIAL;
	}
	if (wxp_response_message(h->timestamp, h->nonce, body, bodylen, &msg, err, errlen) < 0)
		return WXP_VERIFY_INTERNAL;
	why[0] = '\0';
	rc = crypto_rsa_verify_sha256(key, msg.data, msg.len, h->signature, strlen(h->signature), why, sizeof why);
	crypto_buf_free(&msg);
	if (rc < 0) {
		seterr(err, errlen, "Wechatpay-Signature rejected (%s): was the body altered or re-serialised?", why);
		return WXP_VERIFY_BAD_SIGNATURE;
	}
	return WXP_VERIFY_OK;
}

/* ================================================================
** Resources (docs/wechatpay.md, "Decrypting a resource")
** ================================================================ */

const char *wxp_decrypt_result_name(enum wxp_decrypt_result r)
{
	switch (r) {
	case WXP_DECRYPT_OK:
		return "ok";
	case WXP_DECRYPT_BAD_KEY:
		return "bad_key";
	case WXP_DECRYPT_UNSUPPORTED_ALGORITHM:
		return "unsupported_algorithm";
	case WXP_DECRYPT_BAD_INPUT:
		return "bad_input";
	case WXP_DECRYPT_BAD_BASE64:
		return "bad_base64";
	case WXP_DECRYPT_BAD_TAG:
		return "bad_tag";
	case WXP_DECRYPT_INTERNAL:
		return "internal_error";
	}
	return "unknown";
}

/* 32 bytes in production; 16 accepted because the Go SDK's vectors use such keys. */
static int apiv3_key_ok(size_t keylen, char *err, size_t errlen)
{
	if (keylen != 32 && keylen != 16) {
		seterr(err, errlen,
		       "APIv3 key must be the 32-character key set in the merchant console (got %zu "
		       "bytes)",
		       keylen);
		return 0;
	}
	return 1;
}

/* Field presence, algorithm label and key length, in that order. */
static enum wxp_decrypt_result resource_checks(size_t keylen, const struct wxp_resource *r, char *err, size_t errlen)
{
	if (r->algorithm == NULL || r->nonce == NULL || r->nonce[0] == '\0' || r->ciphertext == NULL) {
		seterr(err, errlen, "resource needs algorithm, nonce and ciphertext");
		return WXP_DECRYPT_BAD_INPUT;
	}
	if (strcmp(r->algorithm, WXP_ALGORITHM) != 0) {
		seterr(err, errlen, "unsupported resource algorithm (only " WXP_ALGORITHM ")");
		return WXP_DECRYPT_UNSUPPORTED_ALGORITHM;
	}
	if (!apiv3_key_ok(keylen, err, errlen))
		return WXP_DECRYPT_BAD_KEY;
	return WXP_DECRYPT_OK;
}

enum wxp_decrypt_result wxp_decrypt_resource(const void *apiv3_key, size_t keylen, const struct wxp_resource *r,
                                             struct crypto_buf *plaintext, char *err, size_t errlen)
{
	const char *aad = r->associated_data != NULL ? r->associated_data : "";
	enum wxp_decrypt_result res;
	struct crypto_buf ct;
	int rc;

	plaintext->data = NULL;
	plaintext->len = 0;
	if ((res = resource_checks(keylen, r, err, errlen)) != WXP_DECRYPT_OK)
		return res;
	if (crypto_base64_decode(r->ciphertext, strlen(r->ciphertext), &ct, err, errlen) < 0)
		return WXP_DECRYPT_BAD_BASE64;
	if (ct.len < CRYPTO_GCM_TAG_LEN) {
		crypto_buf_free(&ct);
		seterr(err, errlen, "ciphertext is shorter than the 16-byte GCM tag");
		return WXP_DECRYPT_BAD_INPUT;
	}
	rc = crypto_aes_gcm_decrypt(apiv3_key, keylen, r->nonce, strlen(r->nonce), aad, strlen(aad), ct.data, ct.len,
	                            plaintext, err, errlen);
	crypto_buf_free(&ct);
	if (rc == CRYPTO_EAUTH)
		return WXP_DECRYPT_BAD_TAG;
	return rc < 0 ? WXP_DECRYPT_INTERNAL : WXP_DECRYPT_OK;
}

/* ================================================================
** Mini-program pay parameters (docs/wechatpay.md, "Mini-program payment parameters")
** ================================================================ */

int wxp_pay_sign(EVP_PKEY *key, const char *appid, int64_t timestamp, const char *nonce, const char *prepay_id,
                 struct crypto_buf *out, char *err, size_t errlen)
{
	char ts[24], package[160];
	struct part parts[4];

	out->data = NULL;
	out->len = 0;
	if (!header_safe(appid) || !header_safe(nonce) || !header_safe(prepay_id) || timestamp < 0 ||
	    strlen(prepay_id) >= sizeof package - strlen(WXP_PACKAGE_PREFIX)) {
		seterr(err, errlen,
		       "appid, nonce and prepay_id must be printable ASCII (prepay_id up to 140), "
		       "timestamp non-negative");
		return -1;
	}
	snprintf(ts, sizeof ts, "%" PRId64, timestamp);
	snprintf(package, sizeof package, WXP_PACKAGE_PREFIX "%s", prepay_id);
	parts[0] = str_part(appid);
	parts[1] = str_part(ts);
	parts[2] = str_part(nonce);
	parts[3] = str_part(package);
	return sign_lines(key, parts, 4, out, err, errlen);
}

int wxp_app_pay_sign(EVP_PKEY *key, const char *appid, int64_t timestamp, const char *nonce, const char *prepay_id,
                     struct crypto_buf *out, char *err, size_t errlen)
{
	char ts[24];
	struct part parts[4];

	out->data = NULL;
	out->len = 0;
	if (!header_safe(appid) || !header_safe(nonce) || !header_safe(prepay_id) || timestamp < 0 ||
	    strlen(prepay_id) > 140) {
		seterr(err, errlen,
		       "appid, noncestr and prepayid must be printable ASCII (prepayid up to 140), "
		       "timestamp non-negative");
		return -1;
	}
	snprintf(ts, sizeof ts, "%" PRId64, timestamp);
	parts[0] = str_part(appid);
	parts[1] = str_part(ts);
	parts[2] = str_part(nonce);
	parts[3] = str_part(prepay_id);
	return sign_lines(key, parts, 4, out, err, errlen);
}

/* ================================================================
** Field checks (docs/wechatpay.md, "Fields checked before sending")
** ================================================================ */

int wxp_check_out_trade_no(const char *s, char *err, size_t errlen)
{
	size_t i, n = s != NULL ? strlen(s) : 0;

	if (n < 6 || n > 32) {
		seterr(err, errlen, "out_trade_no must be 6 to 32 characters (got %zu)", n);
		return -1;
	}
	for (i = 0; i < n; i++) {
		char c = s[i];
		if (!((c >= '0' && c <= '9') || (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || c == '_' ||
		      c == '-' || c == '|' || c == '*')) {
			seterr(err, errlen, "out_trade_no may only contain letters, digits and _-|* (bad byte at %zu)",
			       i);
			return -1;
		}
	}
	return 0;
}

/* Length of the valid UTF-8 sequence at p (1..4), or 0 if invalid or truncated. */
static size_t utf8_len(const unsigned char *p, const unsigned char *end)
{
	size_t n, i;
	uint32_t cp;

	if (p[0] < 0x80)
		return 1;
	if (p[0] >= 0xc2 && p[0] <= 0xdf) {
		n = 2;
		cp = p[0] & 0x1f;
	} else if (p[0] >= 0xe0 && p[0] <= 0xef) {
		n = 3;
		cp = p[0] & 0x0f;
	} else if (p[0] >= 0xf0 && p[0] <= 0xf4) {
		n = 4;
		cp = p[0] & 0x07;
	} else
		return 0;
	if ((size_t)(end - p) < n)
		return 0;
	for (i = 1; i < n; i++) {
		if ((p[i] & 0xc0) != 0x80)
			return 0;
		cp = cp << 6 | (p[i] & 0x3f);
	}
	if ((n == 3 && (cp < 0x800 || (cp >= 0xd800 && cp <= 0xdfff))) || (n == 4 && (cp < 0x10000 || cp > 0x10ffff)))
		return 0;
	return n;
}

int wxp_check_description(const char *s, char *err, size_t errlen)
{
	const unsigned char *p = (const unsigned char *)s, *end;
	size_t n = s != NULL ? strlen(s) : 0, k;

	if (n == 0 || n > 127) {
		seterr(err, errlen, "description must be 1 to 127 bytes of UTF-8 (got %zu bytes)", n);
		return -1;
	}
	for (end = p + n; p < end; p += k)
		if ((k = utf8_len(p, end)) == 0 || *p < 0x20) {
			seterr(err, errlen,
			       "description is not valid UTF-8 text (byte "
			       "%zu)",
			       (size_t)(p - (const unsigned char *)s));
			return -1;
		}
	return 0;
}

int wxp_check_amount(int64_t total, char *err, size_t errlen)
{
	if (total <= 0) {
		seterr(err, errlen, "amount.total must be a positive number of fen (got %" PRId64 ")", total);
		return -1;
	}
	return 0;
}

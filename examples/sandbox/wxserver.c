/* wxserver.c — WeChat Pay's side of APIv3, for the sandbox only: read merchant requests, sign answers, encrypt. */
#include "wxserver.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/*
** The merchant's side of the protocol is engine/wechatpay.c. These are the
** three steps only WeChat Pay takes, built from the same primitives, so
** that the gateway's binary and library never contain them.
*/

/* ---- the merchant's Authorization header ---- */

/* Where the value of `name` goes in a wxp_auth, or NULL for an unknown name. */
static const char **auth_slot(struct wxsrv_auth *a, const char *name, size_t n)
{
	static const char *const names[5] = { "mchid", "nonce_str", "timestamp", "serial_no", "signature" };
	const char **slots[5] = { &a->mchid, &a->nonce_str, &a->timestamp, &a->serial_no, &a->signature };
	int i;

	for (i = 0; i < 5; i++)
		if (strlen(names[i]) == n && memcmp(names[i], name, n) == 0)
			return slots[i];
	return NULL;
}

/* Parses one key="value" at *pp (in place: the closing quote becomes NUL). */
static int auth_pair(struct wxsrv_auth *a, char **pp, char *err, size_t errlen)
{
	char *p = *pp, *name = p, *val;
	const char **slot;

	while (*p == '_' || (*p >= 'a' && *p <= 'z'))
		p++;
	slot = auth_slot(a, name, (size_t)(p - name));
	if (slot == NULL || p[0] != '=' || p[1] != '"') {
		crypto_seterr(err, errlen,
		              "Authorization: expected one of mchid, nonce_str, timestamp, serial_no, signature "
		              "as key=\"value\"");
		return -1;
	}
	if (*slot != NULL) {
		crypto_seterr(err, errlen, "Authorization: duplicate %.*s", (int)(p - name), name);
		return -1;
	}
	val = p + 2;
	if ((p = strchr(val, '"')) == NULL || p == val) {
		crypto_seterr(err, errlen, "Authorization: empty or unterminated value");
		return -1;
	}
	*p = '\0';
	*slot = val;
	*pp = p + 1;
	return 0;
}

/* Parses the comma-separated pairs at p into *a; all five keys are required. -1 on any defect. */
static int auth_pairs(struct wxsrv_auth *a, char *p, char *err, size_t errlen)
{
	for (;;) {
		if (auth_pair(a, &p, err, errlen) < 0)
			return -1;
		if (*p == '\0')
			break;
		if (*p++ != ',') {
			crypto_seterr(err, errlen, "Authorization: pairs must be separated by commas");
			return -1;
		}
		while (*p == ' ')
			p++;
	}
	if (!a->mchid || !a->nonce_str || !a->timestamp || !a->serial_no || !a->signature) {
		crypto_seterr(err, errlen,
		              "Authorization: all of mchid, nonce_str, timestamp, serial_no, signature are required");
		return -1;
	}
	return 0;
}

int wxsrv_parse_authorization(const char *header, struct wxsrv_auth *out, char *err, size_t errlen)
{
	const char *scheme = WXP_AUTH_SCHEME " ";
	size_t slen = strlen(scheme), rest;

	memset(out, 0, sizeof *out);
	if (header == NULL || strncmp(header, scheme, slen) != 0) {
		crypto_seterr(err, errlen, "Authorization: scheme must be " WXP_AUTH_SCHEME);
		return -1;
	}
	rest = strlen(header + slen);
	if ((out->storage.data = malloc(rest + 1)) == NULL) {
		crypto_seterr(err, errlen, "out of memory");
		return -1;
	}
	memcpy(out->storage.data, header + slen, rest + 1);
	out->storage.len = rest;
	if (auth_pairs(out, (char *)out->storage.data, err, errlen) < 0) {
		wxsrv_auth_free(out);
		return -1;
	}
	return 0;
}

void wxsrv_auth_free(struct wxsrv_auth *a)
{
	if (a == NULL)
		return;
	crypto_buf_free(&a->storage);
	memset(a, 0, sizeof *a);
}

/* ---- signed answers and encrypted resources ---- */

int wxsrv_sign_response(EVP_PKEY *key, int64_t timestamp, const char *nonce, const void *body, size_t bodylen,
                        struct crypto_buf *out, char *err, size_t errlen)
{
	char ts[24];
	struct crypto_buf msg;
	int rc;

	out->data = NULL;
	out->len = 0;
	if (timestamp < 0) {
		crypto_seterr(err, errlen, "timestamp must be non-negative");
		return -1;
	}
	snprintf(ts, sizeof ts, "%" PRId64, timestamp);
	if (wxp_response_message(ts, nonce, body, bodylen, &msg, err, errlen) < 0)
		return -1;
	rc = crypto_rsa_sign_sha256(key, msg.data, msg.len, out, err, errlen);
	crypto_buf_free(&msg);
	return rc;
}

int wxsrv_encrypt_resource(const void *apiv3_key, size_t keylen, const char *nonce, const char *associated_data,
                           const void *plaintext, size_t len, struct crypto_buf *out, char *err, size_t errlen)
{
	const char *aad = associated_data != NULL ? associated_data : "";
	struct crypto_buf ct;
	int rc;

	out->data = NULL;
	out->len = 0;
	if (keylen != 32 && keylen != 16) {
		crypto_seterr(err, errlen, "the APIv3 key must be 32 bytes (got %zu)", keylen);
		return -1;
	}
	if (nonce == NULL || nonce[0] == '\0') {
		crypto_seterr(err, errlen, "nonce must not be empty");
		return -1;
	}
	if (crypto_aes_gcm_encrypt(apiv3_key, keylen, nonce, strlen(nonce), aad, strlen(aad), plaintext, len, &ct, err,
	                           errlen) < 0)
		return -1;
	rc = crypto_base64_encode(ct.data, ct.len, out, err, errlen);
	crypto_buf_free(&ct);
	return rc;
}

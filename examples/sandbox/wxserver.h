/* wxserver.h — WeChat Pay's side of APIv3, for the sandbox only: read merchant requests, sign answers, encrypt. */
#ifndef PAYGATE_WXSERVER_H
#define PAYGATE_WXSERVER_H

#include <stddef.h>
#include <stdint.h>

#include "crypto.h"
#include "wechatpay.h"

/* The five fields of a parsed Authorization header. Each points into
** `storage` (one NUL-terminated copy of the header owned by this struct). */
struct wxsrv_auth {
	const char *mchid, *nonce_str, *timestamp, *serial_no, *signature;
	struct crypto_buf storage;
};

/* Parses an Authorization value: the scheme, then exactly the five key="value" pairs
** in any order, comma separated (spaces after commas allowed). Fails on an unknown
** scheme, unknown/duplicate/missing key or bad quoting; *out is then empty. */
int wxsrv_parse_authorization(const char *header, struct wxsrv_auth *out, char *err, size_t errlen);
void wxsrv_auth_free(struct wxsrv_auth *a);

/* Sign "TIMESTAMP\nNONCE\nBODY\n" as WeChat Pay signs its answers and notifications (Base64 into out). */
int wxsrv_sign_response(EVP_PKEY *key, int64_t timestamp, const char *nonce, const void *body, size_t bodylen,
                        struct crypto_buf *out, char *err, size_t errlen);

/* Encrypt a notification or certificate resource: out = Base64(AES-256-GCM ciphertext || tag). */
int wxsrv_encrypt_resource(const void *apiv3_key, size_t keylen, const char *nonce, const char *associated_data,
                           const void *plaintext, size_t len, struct crypto_buf *out, char *err, size_t errlen);

#endif

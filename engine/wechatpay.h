/* wechatpay.h — the merchant's side of WeChat Pay APIv3 as pure functions: no I/O, no Lua. */
#ifndef PAYGATE_WECHATPAY_H
#define PAYGATE_WECHATPAY_H

#include <stddef.h>
#include <stdint.h>

#include "crypto.h"

/*
** Everything here follows crypto.h's conventions: 0 on success, negative on failure
** with a message in (err, errlen); variable-length results in a struct crypto_buf the caller
** frees. Verification and decryption return a result enum instead, so callers can
** tell the reasons apart; the message then says what to do.
** The functions only compute: they take the current time, keys and bytes as inputs
** and never read clocks, files or the network.
** docs/wechatpay.md describes the protocol facts these functions rely on, with its test vectors.
*/

#define WXP_AUTH_SCHEME      "WECHATPAY2-SHA256-RSA2048"
#define WXP_SIGNATURE_TYPE   "WECHATPAY2-SHA256-RSA2048"
#define WXP_ALGORITHM        "AEAD_AES_256_GCM"
#define WXP_PROBE_PREFIX     "WECHATPAY/SIGNTEST/"
#define WXP_PUBKEY_ID_PREFIX "PUB_KEY_ID_"
#define WXP_MAX_SKEW         300 /* seconds; |now - timestamp| >= this is rejected (as the Go SDK) */

/* ---- request signing (merchant -> WeChat Pay) ---- */

/* Builds "METHOD\nURL\nTIMESTAMP\nNONCE\nBODY\n" (BODY may be empty). METHOD must be
** uppercase letters, URL the path plus raw query starting with "/", NONCE printable
** ASCII; a value that would break the message or header fails. */
int wxp_request_message(const char *method, const char *url, int64_t timestamp, const char *nonce, const void *body,
                        size_t bodylen, struct crypto_buf *out, char *err, size_t errlen);

/* Signs the request message with the merchant private key: out = Base64 signature. */
int wxp_sign_request(EVP_PKEY *key, const char *method, const char *url, int64_t timestamp, const char *nonce,
                     const void *body, size_t bodylen, struct crypto_buf *out, char *err, size_t errlen);

/* Formats the Authorization header value:
** WECHATPAY2-SHA256-RSA2048 mchid="…",nonce_str="…",timestamp="…",serial_no="…",signature="…"
** Fails if a value is empty or contains a space, '"', '\\', a control byte or non-ASCII. */
int wxp_authorization(const char *mchid, const char *nonce, int64_t timestamp, const char *serial_no,
                      const char *signature, struct crypto_buf *out, char *err, size_t errlen);

/* wxp_sign_request followed by wxp_authorization. */
int wxp_build_authorization(EVP_PKEY *key, const char *mchid, const char *serial_no, const char *method,
                            const char *url, int64_t timestamp, const char *nonce, const void *body, size_t bodylen,
                            struct crypto_buf *out, char *err, size_t errlen);

/* ---- keys that can verify WeChat Pay signatures ---- */

/* Platform certificates by serial, plus at most one WeChat Pay public key (PUB_KEY_ID_…).
** Holding several certificates at once is what rotation needs. */
struct wxp_keyset;

struct wxp_keyset *wxp_keyset_new(void);     /* NULL when out of memory */
void wxp_keyset_free(struct wxp_keyset *ks); /* NULL-safe */

/* Adds the PEM certificate; its serial (uppercase hex) is the lookup key and is copied
** into serial_out when that is non-NULL (CRYPTO_SERIAL_MAX bytes). A certificate with
** a serial already present replaces the old one. The set is unchanged on failure. */
int wxp_keyset_add_cert(struct wxp_keyset *ks, const char *pem, size_t len, char *serial_out, char *err, size_t errlen);

/* Sets the public key and its id, which must start with PUB_KEY_ID_; replaces any
** previous one. The set is unchanged on failure. */
int wxp_keyset_add_public_key(struct wxp_keyset *ks, const char *key_id, const char *pem, size_t len, char *err,
                              size_t errlen);

/* The key for a Wechatpay-Serial value (borrowed; valid until removed), or NULL. */
EVP_PKEY *wxp_keyset_lookup(const struct wxp_keyset *ks, const char *serial);

/* Number of keys (certificates plus the public key). */
size_t wxp_keyset_count(const struct wxp_keyset *ks);

/* ---- verifying responses and notifications ---- */

/* The Wechatpay-* headers of a response or notification; NULL (or "") = absent. */
struct wxp_headers {
	const char *timestamp;      /* Wechatpay-Timestamp */
	const char *nonce;          /* Wechatpay-Nonce */
	const char *signature;      /* Wechatpay-Signature */
	const char *serial;         /* Wechatpay-Serial */
	const char *signature_type; /* Wechatpay-Signature-Type, optional */
};

/* Outcomes of wxp_verify, in the order the checks run. */
enum wxp_verify_result {
	WXP_VERIFY_OK = 0,
	WXP_VERIFY_MISSING_HEADER,     /* timestamp, nonce, signature or serial absent */
	WXP_VERIFY_BAD_SIGNATURE_TYPE, /* Signature-Type present and not WECHATPAY2-SHA256-RSA2048 */
	WXP_VERIFY_PROBE,              /* signature starts with WECHATPAY/SIGNTEST/ */
	WXP_VERIFY_BAD_HEADER,         /* timestamp not 1..18 digits, nonce has control bytes */
	WXP_VERIFY_STALE,              /* |now - timestamp| >= WXP_MAX_SKEW */
	WXP_VERIFY_UNKNOWN_SERIAL,     /* no key in the set for Wechatpay-Serial */
	WXP_VERIFY_BAD_SIGNATURE,      /* not Base64, or RSA verification failed */
	WXP_VERIFY_INTERNAL            /* out of memory or OpenSSL failure */
};

/* Stable lower-case name of a result ("ok", "missing_header", …) for logs and Lua. */
const char *wxp_verify_result_name(enum wxp_verify_result r);

/* Builds "TIMESTAMP\nNONCE\nBODY\n". Fails only when out of memory. */
int wxp_response_message(const char *timestamp, const char *nonce, const void *body, size_t bodylen,
                         struct crypto_buf *out, char *err, size_t errlen);

/*
** Verifies a signed response or notification: the raw body bytes exactly as received
** (never re-serialised), its headers, and `now` in Unix seconds. A probe signature is
** reported as such even though it would also fail verification; any result other
** than WXP_VERIFY_OK means "do not trust this message" (answer a notification with
** 4xx/5xx so it is re-sent). Certificate validity dates are not checked here: the
** set holds what the caller trusts now.
*/
enum wxp_verify_result wxp_verify(const struct wxp_keyset *ks, const struct wxp_headers *h, const void *body,
                                  size_t bodylen, int64_t now, char *err, size_t errlen);

/* ---- notification and certificate resources ---- */

/* The `resource` (or `encrypt_certificate`) object of an envelope, already extracted
** from the JSON by the caller. associated_data NULL means "". */
struct wxp_resource {
	const char *algorithm;
	const char *nonce;
	const char *associated_data;
	const char *ciphertext; /* Base64 of ciphertext || 16-byte tag */
};

enum wxp_decrypt_result {
	WXP_DECRYPT_OK = 0,
	WXP_DECRYPT_BAD_KEY, /* APIv3 key not 32 bytes (16 accepted: Go SDK test keys) */
	WXP_DECRYPT_UNSUPPORTED_ALGORITHM,
	WXP_DECRYPT_BAD_INPUT, /* missing field or empty nonce */
	WXP_DECRYPT_BAD_BASE64,
	WXP_DECRYPT_BAD_TAG, /* authentication failed: wrong key, nonce, AAD or data */
	WXP_DECRYPT_INTERNAL
};

const char *wxp_decrypt_result_name(enum wxp_decrypt_result r);

/*
** Decrypts a resource with the APIv3 key (AEAD_AES_256_GCM: nonce and associated
** data as raw bytes, tag = last 16 bytes). The cipher size follows the key length,
** as in the Go SDK: 32 bytes = AES-256 (production), 16 = AES-128 (SDK test vectors
** only; the config layer should insist on 32). plaintext is empty on failure. The
** plaintext is not checked to be JSON (certificates decrypt to PEM): the caller
** decodes a notification's JSON with its own strict decoder.
*/
enum wxp_decrypt_result wxp_decrypt_resource(const void *apiv3_key, size_t keylen, const struct wxp_resource *r,
                                             struct crypto_buf *plaintext, char *err, size_t errlen);

/* ---- mini-program payment parameters ---- */

#define WXP_PACKAGE_PREFIX "prepay_id="

/* paySign = Base64(SHA256withRSA(key, appId\ntimeStamp\nnonceStr\nprepay_id=ID\n)).
** The caller passes signType "RSA" and package WXP_PACKAGE_PREFIX + prepay_id along. */
int wxp_pay_sign(EVP_PKEY *key, const char *appid, int64_t timestamp, const char *nonce, const char *prepay_id,
                 struct crypto_buf *out, char *err, size_t errlen);

/*
** APP pay (the OpenSDK's PayReq): sign = RSA-SHA256 over "appid\ntimestamp\nnoncestr\nprepayid\n" with
** the merchant key, Base64. appid is the mobile app's; the PayReq also carries partnerid (the
** mchid) and package WXP_APP_PACKAGE, neither of which is signed. 0, or -1 with err filled.
*/
#define WXP_APP_PACKAGE "Sign=WXPay"
int wxp_app_pay_sign(EVP_PKEY *key, const char *appid, int64_t timestamp, const char *nonce, const char *prepay_id,
                     struct crypto_buf *out, char *err, size_t errlen);

/* ---- field checks for the prepay request ---- */

/* 6..32 bytes of [0-9A-Za-z_-|*]. */
int wxp_check_out_trade_no(const char *s, char *err, size_t errlen);
/* Non-empty valid UTF-8 of at most 127 bytes. */
int wxp_check_description(const char *s, char *err, size_t errlen);
/* Amount in fen: a positive integer. */
int wxp_check_amount(int64_t total, char *err, size_t errlen);

#endif

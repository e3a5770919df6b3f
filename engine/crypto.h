/* crypto.h — the OpenSSL EVP primitives paygate uses: encodings, hashes, RSA, AES-GCM, random, keys. */
#ifndef PAYGATE_CRYPTO_H
#define PAYGATE_CRYPTO_H

#include <stddef.h>
#include <stdint.h>
#include <openssl/types.h>

/*
** Conventions for the whole module.
**
** - Functions return 0 on success and a negative value on failure. On failure a
**   one-line message is written into the caller's buffer `err` (size `errlen`;
**   CRYPTO_ERRLEN is enough). `err` may be NULL when the caller does not care.
**   Messages never contain key material, plaintext or signatures.
** - Variable-length results are returned in a struct crypto_buf, heap memory owned by the
**   caller and released with crypto_buf_free(). The bytes are always followed by a
**   NUL that is not counted in `len`, so text results can be used as C strings.
**   On failure the output struct crypto_buf is left empty ({NULL, 0}).
** - There is no module state: every function works on its arguments only, and the
**   OpenSSL error queue of the calling thread is drained before returning.
** - Keys are plain EVP_PKEY pointers; crypto_key_free() releases them.
*/

#define CRYPTO_ERRLEN      256
#define CRYPTO_SHA256_LEN  32
#define CRYPTO_GCM_TAG_LEN 16
#define CRYPTO_EAUTH       (-2) /* AES-GCM: tag did not authenticate */
#define CRYPTO_SERIAL_MAX  130  /* hex digits of a 64-byte serial, sign and NUL */

struct crypto_buf {
	unsigned char *data;
	size_t len;
};

/* Frees b->data (wiping it first: it may hold plaintext) and empties b. NULL-safe. */
void crypto_buf_free(struct crypto_buf *b);

/* printf into (err, errlen) when err is non-NULL: the error convention of crypto and wechatpay. */
void crypto_seterr(char *err, size_t errlen, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

/* ---- encodings ---- */

/* Standard Base64 with padding, no line breaks. Fails only when memory runs out. */
int crypto_base64_encode(const void *in, size_t len, struct crypto_buf *out, char *err, size_t errlen);

/* Strict standard Base64 decode: the length must be a multiple of 4, padding only at
** the end, no whitespace, unused trailing bits zero. Any other input fails with
** "invalid base64". */
int crypto_base64_decode(const char *in, size_t len, struct crypto_buf *out, char *err, size_t errlen);

/* Writes 2*len hex digits and a NUL into out (outsz >= 2*len+1), uppercase when
** `upper` is non-zero. Returns -1, writing nothing, when out is too small. */
int crypto_hex_encode(const void *in, size_t len, int upper, char *out, size_t outsz);

/* ---- digests and MACs (fail only if OpenSSL fails) ---- */

int crypto_sha256(const void *in, size_t len, unsigned char out[CRYPTO_SHA256_LEN]);
int crypto_hmac_sha256(const void *key, size_t keylen, const void *msg, size_t len,
                       unsigned char out[CRYPTO_SHA256_LEN]);

/* Constant-time comparison of two buffers of the same length: 1 if equal, 0 if not. */
int crypto_ct_equal(const void *a, const void *b, size_t len);

/* ---- RSA (SHA256withRSA, PKCS#1 v1.5) ---- */

/* Signs msg with an RSA private key; out receives the Base64 signature text.
** Fails if the key is not an RSA private key. */
int crypto_rsa_sign_sha256(EVP_PKEY *key, const void *msg, size_t len, struct crypto_buf *out, char *err,
                           size_t errlen);

/* Verifies a Base64 signature (sig, siglen bytes) over msg with an RSA public key.
** Returns 0 when it verifies; -1 when the Base64 is invalid, the key is not RSA or
** the signature does not match (err says which). */
int crypto_rsa_verify_sha256(EVP_PKEY *key, const void *msg, size_t len, const char *sig, size_t siglen, char *err,
                             size_t errlen);

/* ---- AES-GCM ---- */

/*
** AES-GCM with a 16-byte key (AES-128) or a 32-byte key (AES-256), an IV of any
** non-zero length (12 bytes is the norm), additional data (may be empty) and a
** 16-byte tag. encrypt: out = ciphertext || tag. decrypt: `in` is ciphertext || tag;
** out = plaintext. decrypt returns CRYPTO_EAUTH when the tag does not authenticate
** (wrong key, IV, AAD or altered data) and releases any partial plaintext; -1 for
** other errors (bad key length, input shorter than the tag).
*/
int crypto_aes_gcm_encrypt(const void *key, size_t keylen, const void *iv, size_t ivlen, const void *aad, size_t aadlen,
                           const void *in, size_t len, struct crypto_buf *out, char *err, size_t errlen);
int crypto_aes_gcm_decrypt(const void *key, size_t keylen, const void *iv, size_t ivlen, const void *aad, size_t aadlen,
                           const void *in, size_t len, struct crypto_buf *out, char *err, size_t errlen);

/* ---- randomness (OpenSSL's CSPRNG) ---- */

int crypto_random_bytes(void *out, size_t len, char *err, size_t errlen);
/* Write `n` random characters from [0-9A-Za-z] (unbiased) and a NUL into out,
** which must hold n+1 bytes. */
int crypto_nonce_alnum(char *out, size_t n, char *err, size_t errlen);
/* Write `n` random uppercase hex digits and a NUL into out (n+1 bytes). */
int crypto_nonce_hex(char *out, size_t n, char *err, size_t errlen);

/* ---- keys and certificates ---- */

/* Loads a PEM private key, PKCS#8 ("PRIVATE KEY") or PKCS#1 ("RSA PRIVATE KEY").
** Encrypted keys are refused (never prompts). NULL on failure. */
EVP_PKEY *crypto_private_key_from_pem(const char *pem, size_t len, char *err, size_t errlen);
EVP_PKEY *crypto_private_key_from_file(const char *path, char *err, size_t errlen);
/* Loads a PEM public key ("PUBLIC KEY", SubjectPublicKeyInfo). NULL on failure. */
EVP_PKEY *crypto_public_key_from_pem(const char *pem, size_t len, char *err, size_t errlen);
EVP_PKEY *crypto_public_key_from_file(const char *path, char *err, size_t errlen);
void crypto_key_free(EVP_PKEY *key);
/* 1 if key is a plain RSA key (not RSA-PSS, not EC), else 0. */
int crypto_key_is_rsa(EVP_PKEY *key);

/* What paygate needs from an X.509 certificate. */
struct crypto_cert {
	EVP_PKEY *pubkey;               /* owned; freed by crypto_cert_clear */
	char serial[CRYPTO_SERIAL_MAX]; /* uppercase hex without leading zeros, as Go's %X */
	int64_t not_before;             /* Unix seconds */
	int64_t not_after;
};

/* Parses the first PEM certificate in pem into *out. On failure *out is zeroed. */
int crypto_cert_from_pem(const char *pem, size_t len, struct crypto_cert *out, char *err, size_t errlen);
int crypto_cert_from_file(const char *path, struct crypto_cert *out, char *err, size_t errlen);
/* Releases what *c owns and zeroes it. NULL-safe. */
void crypto_cert_clear(struct crypto_cert *c);

/*
** Checks a PEM bundle of trusted CA certificates (what TLS verification would load from it):
** returns how many of its certificates are CAs (at least 1), or -1 with err when the file
** cannot be read, holds a malformed or no certificate, or holds no CA certificate.
*/
int crypto_ca_bundle_check(const char *path, char *err, size_t errlen);

/* Reads a whole file (at most 1 MiB) into out. */
int crypto_read_file(const char *path, struct crypto_buf *out, char *err, size_t errlen);

#endif

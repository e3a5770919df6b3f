/* crypto.c — OpenSSL EVP primitives: encodings, hashes, RSA, AES-GCM, random, keys (see crypto.h). */
#include "crypto.h"

#include <limits.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <errno.h>

#include <openssl/bn.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#define READ_FILE_MAX (1024 * 1024)

/* ================================================================
** Errors and buffers
** ================================================================ */

#define seterr crypto_seterr

void crypto_seterr(char *err, size_t errlen, const char *fmt, ...)
{
	va_list ap;

	if (err == NULL || errlen == 0)
		return;
	va_start(ap, fmt);
	vsnprintf(err, errlen, fmt, ap);
	va_end(ap);
}

/*
** Reports `what` followed by OpenSSL's reason for the most recent error, then
** drains the thread's error queue so no stale error leaks into other code.
** Reason strings are static descriptions ("bad decrypt"), never data.
*/
static void ossl_err(char *err, size_t errlen, const char *what)
{
	unsigned long e = ERR_peek_last_error();
	const char *reason = e ? ERR_reason_error_string(e) : NULL;

	if (reason != NULL)
		seterr(err, errlen, "%s: %s", what, reason);
	else
		seterr(err, errlen, "%s", what);
	ERR_clear_error();
}

/* Allocates n bytes plus a NUL terminator into *b. Returns -1 when out of memory. */
static int buf_alloc(struct crypto_buf *b, size_t n, char *err, size_t errlen)
{
	b->data = NULL;
	b->len = 0;
	if (n == SIZE_MAX || (b->data = malloc(n + 1)) == NULL) {
		seterr(err, errlen, "out of memory");
		return -1;
	}
	b->data[n] = '\0';
	b->len = n;
	return 0;
}

void crypto_buf_free(struct crypto_buf *b)
{
	if (b == NULL)
		return;
	if (b->data != NULL) {
		OPENSSL_cleanse(b->data, b->len + 1);
		free(b->data);
	}
	b->data = NULL;
	b->len = 0;
}

/* OpenSSL takes int lengths; refuse anything larger instead of truncating. */
static int len_ok(size_t len, char *err, size_t errlen)
{
	if (len > INT_MAX) {
		seterr(err, errlen, "input too large");
		return 0;
	}
	return 1;
}

/* ================================================================
** Encodings
** ================================================================ */

int crypto_base64_encode(const void *in, size_t len, struct crypto_buf *out, char *err, size_t errlen)
{
	size_t n;

	out->data = NULL;
	out->len = 0;
	if (len > (size_t)INT_MAX / 4 * 3 - 3) {
		seterr(err, errlen, "input too large");
		return -1;
	}
	n = (len + 2) / 3 * 4;
	if (buf_alloc(out, n, err, errlen) < 0)
		return -1;
	if (len > 0)
		EVP_EncodeBlock(out->data, in, (int)len);
	return 0;
}

/* Value of a Base64 digit, or -1 for any other byte. */
/* The value of each Base64 digit, -1 for any other byte (a table: notifications decode a lot of it). */
static signed char b64_values[256];

static void b64_init(void)
{
	static const char digits[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
	memset(b64_values, -1, sizeof b64_values);
	for (int i = 0; i < 64; i++)
		b64_values[(unsigned char)digits[i]] = (signed char)i;
}

static int b64_value(unsigned char c)
{
	return b64_values[c];
}

/*
** Decodes one 4-character group into up to 3 bytes; `last` allows padding.
** Returns the number of bytes produced, or -1 if the group is not canonical
** Base64 (bad digit, misplaced '=', or non-zero bits hidden under padding).
*/
static int b64_group(const unsigned char *g, int last, unsigned char *o)
{
	int v[4], pad = 0, i;

	for (i = 0; i < 4; i++) {
		if (g[i] == '=' && last && i >= 2) {
			pad++;
			v[i] = 0;
			continue;
		}
		if (pad > 0 || (v[i] = b64_value(g[i])) < 0)
			return -1;
	}
	if ((pad == 2 && (v[1] & 0x0f)) || (pad == 1 && (v[2] & 0x03)))
		return -1;
	o[0] = (unsigned char)(v[0] << 2 | v[1] >> 4);
	o[1] = (unsigned char)((v[1] & 0x0f) << 4 | v[2] >> 2);
	o[2] = (unsigned char)((v[2] & 0x03) << 6 | v[3]);
	return 3 - pad;
}

int crypto_base64_decode(const char *in, size_t len, struct crypto_buf *out, char *err, size_t errlen)
{
	const unsigned char *p = (const unsigned char *)in;
	size_t i, n = 0;
	int k;

	static pthread_once_t once = PTHREAD_ONCE_INIT;
	pthread_once(&once, b64_init);
	out->data = NULL;
	out->len = 0;
	if (len % 4 != 0) {
		seterr(err, errlen, "invalid base64: length %zu is not a multiple of 4", len);
		return -1;
	}
	if (buf_alloc(out, len / 4 * 3, err, errlen) < 0)
		return -1;
	for (i = 0; i < len; i += 4) {
		if ((k = b64_group(p + i, i + 4 == len, out->data + n)) < 0) {
			crypto_buf_free(out);
			seterr(err, errlen, "invalid base64 near offset %zu", i);
			return -1;
		}
		n += (size_t)k;
	}
	out->len = n;
	out->data[n] = '\0';
	return 0;
}

int crypto_hex_encode(const void *in, size_t len, int upper, char *out, size_t outsz)
{
	const char *digits = upper ? "0123456789ABCDEF" : "0123456789abcdef";
	const unsigned char *p = in;
	size_t i;

	if (outsz == 0 || len > (outsz - 1) / 2)
		return -1;
	for (i = 0; i < len; i++) {
		out[2 * i] = digits[p[i] >> 4];
		out[2 * i + 1] = digits[p[i] & 0x0f];
	}
	out[2 * len] = '\0';
	return 0;
}

/* ================================================================
** Digests, MACs, comparison
** ================================================================ */

static int digest(const EVP_MD *md, const void *in, size_t len, unsigned char *out)
{
	int ok = EVP_Digest(in, len, out, NULL, md, NULL);

	ERR_clear_error();
	return ok ? 0 : -1;
}

int crypto_sha256(const void *in, size_t len, unsigned char out[CRYPTO_SHA256_LEN])
{
	return digest(EVP_sha256(), in, len, out);
}

/* HMAC-SHA256 through the EVP_MAC interface (HMAC() is fine too, but EVP_MAC is the 3.0 API). */
int crypto_hmac_sha256(const void *key, size_t keylen, const void *msg, size_t len,
                       unsigned char out[CRYPTO_SHA256_LEN])
{
	EVP_MAC *mac = EVP_MAC_fetch(NULL, "HMAC", NULL);
	EVP_MAC_CTX *ctx = NULL;
	OSSL_PARAM params[2];
	size_t outlen = 0;
	int rc = -1;

	if (mac == NULL || (ctx = EVP_MAC_CTX_new(mac)) == NULL)
		goto fail;
	params[0] = OSSL_PARAM_construct_utf8_string("digest", (char *)"SHA256", 0);
	params[1] = OSSL_PARAM_construct_end();
	if (!EVP_MAC_init(ctx, key, keylen, params) || !EVP_MAC_update(ctx, msg, len) ||
	    !EVP_MAC_final(ctx, out, &outlen, CRYPTO_SHA256_LEN) || outlen != CRYPTO_SHA256_LEN)
		goto fail;
	rc = 0;
fail:
	EVP_MAC_CTX_free(ctx);
	EVP_MAC_free(mac);
	ERR_clear_error();
	return rc;
}

int crypto_ct_equal(const void *a, const void *b, size_t len)
{
	return CRYPTO_memcmp(a, b, len) == 0;
}

/* ================================================================
** RSA SHA256withRSA (PKCS#1 v1.5)
** ================================================================ */

int crypto_key_is_rsa(EVP_PKEY *key)
{
	return key != NULL && EVP_PKEY_get_base_id(key) == EVP_PKEY_RSA;
}

static int is_rsa(EVP_PKEY *key, char *err, size_t errlen)
{
	if (!crypto_key_is_rsa(key)) {
		seterr(err, errlen, "key is not an RSA key");
		return 0;
	}
	return 1;
}

/* Raw signature bytes into sig (allocated). Leaves sig empty on failure. */
static int rsa_sign_raw(EVP_PKEY *key, const void *msg, size_t len, struct crypto_buf *sig, char *err, size_t errlen)
{
	EVP_MD_CTX *ctx = EVP_MD_CTX_new();
	size_t n = 0;

	sig->data = NULL;
	sig->len = 0;
	if (ctx == NULL || EVP_DigestSignInit(ctx, NULL, EVP_sha256(), NULL, key) != 1 ||
	    EVP_DigestSign(ctx, NULL, &n, msg, len) != 1)
		goto fail;
	if (buf_alloc(sig, n, err, errlen) < 0) {
		EVP_MD_CTX_free(ctx);
		return -1;
	}
	if (EVP_DigestSign(ctx, sig->data, &n, msg, len) != 1)
		goto fail;
	sig->len = n;
	EVP_MD_CTX_free(ctx);
	return 0;
fail:
	ossl_err(err, errlen, "RSA signing failed");
	crypto_buf_free(sig);
	EVP_MD_CTX_free(ctx);
	return -1;
}

int crypto_rsa_sign_sha256(EVP_PKEY *key, const void *msg, size_t len, struct crypto_buf *out, char *err, size_t errlen)
{
	struct crypto_buf raw;
	int rc;

	out->data = NULL;
	out->len = 0;
	if (!is_rsa(key, err, errlen) || rsa_sign_raw(key, msg, len, &raw, err, errlen) < 0)
		return -1;
	rc = crypto_base64_encode(raw.data, raw.len, out, err, errlen);
	crypto_buf_free(&raw);
	return rc;
}

int crypto_rsa_verify_sha256(EVP_PKEY *key, const void *msg, size_t len, const char *sig, size_t siglen, char *err,
                             size_t errlen)
{
	EVP_MD_CTX *ctx = NULL;
	struct crypto_buf raw = { NULL, 0 };
	int rc = -1;

	if (!is_rsa(key, err, errlen))
		return -1;
	if (crypto_base64_decode(sig, siglen, &raw, NULL, 0) < 0) {
		seterr(err, errlen, "signature is not valid base64");
		return -1;
	}
	if ((ctx = EVP_MD_CTX_new()) == NULL || EVP_DigestVerifyInit(ctx, NULL, EVP_sha256(), NULL, key) != 1) {
		ossl_err(err, errlen, "cannot set up RSA verification");
		goto fail;
	}
	if (EVP_DigestVerify(ctx, raw.data, raw.len, msg, len) != 1) {
		seterr(err, errlen, "signature does not match");
		goto fail;
	}
	rc = 0;
fail:
	ERR_clear_error();
	EVP_MD_CTX_free(ctx);
	crypto_buf_free(&raw);
	return rc;
}

/* ================================================================
** AES-GCM
** ================================================================ */

/* AES-GCM cipher for a key length, chosen as the Go SDK does; NULL for other lengths. */
static const EVP_CIPHER *gcm_cipher(size_t keylen, char *err, size_t errlen)
{
	if (keylen == 32)
		return EVP_aes_256_gcm();
	if (keylen == 16)
		return EVP_aes_128_gcm();
	seterr(err, errlen, "AES-GCM key must be 16 or 32 bytes, got %zu", keylen);
	return NULL;
}

/* 1 if the lengths fit OpenSSL's int parameters and the IV is not empty; else 0 with err set. */
static int gcm_args_ok(size_t ivlen, size_t aadlen, size_t len, char *err, size_t errlen)
{
	if (ivlen == 0) {
		seterr(err, errlen, "AES-GCM nonce is empty");
		return 0;
	}
	return len_ok(ivlen, err, errlen) && len_ok(aadlen, err, errlen) && len_ok(len, err, errlen);
}

/* Creates a context keyed for `enc` (1 encrypt, 0 decrypt) and feeds the AAD. NULL on failure. */
static EVP_CIPHER_CTX *gcm_start(int enc, const void *key, size_t keylen, const void *iv, size_t ivlen, const void *aad,
                                 size_t aadlen, char *err, size_t errlen)
{
	const EVP_CIPHER *cipher = gcm_cipher(keylen, err, errlen);
	EVP_CIPHER_CTX *ctx;
	int n;

	if (cipher == NULL)
		return NULL;
	if ((ctx = EVP_CIPHER_CTX_new()) == NULL || EVP_CipherInit_ex(ctx, cipher, NULL, NULL, NULL, enc) != 1 ||
	    EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_SET_IVLEN, (int)ivlen, NULL) != 1 ||
	    EVP_CipherInit_ex(ctx, NULL, NULL, key, iv, enc) != 1 ||
	    (aadlen > 0 && EVP_CipherUpdate(ctx, NULL, &n, aad, (int)aadlen) != 1)) {
		ossl_err(err, errlen, "cannot set up AES-GCM");
		EVP_CIPHER_CTX_free(ctx);
		return NULL;
	}
	return ctx;
}

int crypto_aes_gcm_encrypt(const void *key, size_t keylen, const void *iv, size_t ivlen, const void *aad, size_t aadlen,
                           const void *in, size_t len, struct crypto_buf *out, char *err, size_t errlen)
{
	EVP_CIPHER_CTX *ctx = NULL;
	int n = 0, m = 0;

	out->data = NULL;
	out->len = 0;
	if (len > INT_MAX - CRYPTO_GCM_TAG_LEN) {
		seterr(err, errlen, "input too large");
		return -1;
	}
	if (!gcm_args_ok(ivlen, aadlen, len, err, errlen) ||
	    (ctx = gcm_start(1, key, keylen, iv, ivlen, aad, aadlen, err, errlen)) == NULL)
		return -1;
	if (buf_alloc(out, len + CRYPTO_GCM_TAG_LEN, err, errlen) < 0)
		goto fail;
	if ((len > 0 && EVP_EncryptUpdate(ctx, out->data, &n, in, (int)len) != 1) ||
	    EVP_EncryptFinal_ex(ctx, out->data + n, &m) != 1 ||
	    EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_GET_TAG, CRYPTO_GCM_TAG_LEN, out->data + len) != 1) {
		ossl_err(err, errlen, "AES-GCM encryption failed");
		goto fail;
	}
	EVP_CIPHER_CTX_free(ctx);
	return 0;
fail:
	crypto_buf_free(out);
	EVP_CIPHER_CTX_free(ctx);
	return -1;
}

int crypto_aes_gcm_decrypt(const void *key, size_t keylen, const void *iv, size_t ivlen, const void *aad, size_t aadlen,
                           const void *in, size_t len, struct crypto_buf *out, char *err, size_t errlen)
{
	const unsigned char *p = in;
	EVP_CIPHER_CTX *ctx = NULL;
	size_t ctlen;
	int n = 0, m = 0, rc = -1;

	out->data = NULL;
	out->len = 0;
	if (len < CRYPTO_GCM_TAG_LEN) {
		seterr(err, errlen, "AES-GCM input is shorter than the 16-byte tag");
		return -1;
	}
	ctlen = len - CRYPTO_GCM_TAG_LEN;
	if (!gcm_args_ok(ivlen, aadlen, len, err, errlen) ||
	    (ctx = gcm_start(0, key, keylen, iv, ivlen, aad, aadlen, err, errlen)) == NULL)
		return -1;
	if (buf_alloc(out, ctlen, err, errlen) < 0)
		goto fail;
	if ((ctlen > 0 && EVP_DecryptUpdate(ctx, out->data, &n, p, (int)ctlen) != 1) ||
	    EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_SET_TAG, CRYPTO_GCM_TAG_LEN, (void *)(p + ctlen)) != 1) {
		ossl_err(err, errlen, "AES-GCM decryption failed");
		goto fail;
	}
	if (EVP_DecryptFinal_ex(ctx, out->data + n, &m) != 1) {
		ERR_clear_error();
		seterr(err, errlen,
		       "AES-GCM tag mismatch (wrong key, nonce or associated data, or altered ciphertext)");
		rc = CRYPTO_EAUTH;
		goto fail;
	}
	EVP_CIPHER_CTX_free(ctx);
	return 0;
fail:
	crypto_buf_free(out);
	EVP_CIPHER_CTX_free(ctx);
	return rc;
}

/* ================================================================
** Randomness
** ================================================================ */

int crypto_random_bytes(void *out, size_t len, char *err, size_t errlen)
{
	if (!len_ok(len, err, errlen))
		return -1;
	if (len > 0 && RAND_bytes(out, (int)len) != 1) {
		ossl_err(err, errlen, "random generator failed");
		return -1;
	}
	return 0;
}

/* Fills out[0..n) with characters of `alphabet` (size k <= 256), by rejection sampling
** so every character is equally likely; then NUL-terminates. */
static int random_chars(char *out, size_t n, const char *alphabet, unsigned k, char *err, size_t errlen)
{
	unsigned char pool[64];
	unsigned limit = 256 - 256 % k;
	size_t i = 0, j = sizeof pool;

	while (i < n) {
		if (j == sizeof pool) {
			if (crypto_random_bytes(pool, sizeof pool, err, errlen) < 0)
				return -1;
			j = 0;
		}
		if (pool[j] < limit)
			out[i++] = alphabet[pool[j] % k];
		j++;
	}
	out[n] = '\0';
	OPENSSL_cleanse(pool, sizeof pool);
	return 0;
}

int crypto_nonce_alnum(char *out, size_t n, char *err, size_t errlen)
{
	return random_chars(out, n, "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz", 62, err, errlen);
}

int crypto_nonce_hex(char *out, size_t n, char *err, size_t errlen)
{
	return random_chars(out, n, "0123456789ABCDEF", 16, err, errlen);
}

/* ================================================================
** Keys and certificates
** ================================================================ */

/* Password callback that refuses: an encrypted key fails instead of prompting on a tty. */
static int no_password(char *buf, int size, int rwflag, void *u)
{
	(void)buf;
	(void)size;
	(void)rwflag;
	(void)u;
	return -1;
}

static BIO *mem_bio(const char *pem, size_t len, char *err, size_t errlen)
{
	BIO *bio;

	if (pem == NULL || !len_ok(len, err, errlen))
		return NULL;
	if ((bio = BIO_new_mem_buf(pem, (int)len)) == NULL)
		seterr(err, errlen, "out of memory");
	return bio;
}

EVP_PKEY *crypto_private_key_from_pem(const char *pem, size_t len, char *err, size_t errlen)
{
	BIO *bio = mem_bio(pem, len, err, errlen);
	EVP_PKEY *key;

	if (bio == NULL)
		return NULL;
	key = PEM_read_bio_PrivateKey(bio, NULL, no_password, NULL);
	BIO_free(bio);
	if (key == NULL)
		ossl_err(err, errlen, "cannot read PEM private key (PKCS#8 or PKCS#1, unencrypted)");
	ERR_clear_error();
	return key;
}

EVP_PKEY *crypto_public_key_from_pem(const char *pem, size_t len, char *err, size_t errlen)
{
	BIO *bio = mem_bio(pem, len, err, errlen);
	EVP_PKEY *key;

	if (bio == NULL)
		return NULL;
	key = PEM_read_bio_PUBKEY(bio, NULL, no_password, NULL);
	BIO_free(bio);
	if (key == NULL)
		ossl_err(err, errlen, "cannot read PEM public key (expected BEGIN PUBLIC KEY)");
	ERR_clear_error();
	return key;
}

/* Shared shape of the *_from_file loaders: read, parse, wipe the file bytes. */
static EVP_PKEY *key_from_file(const char *path, int private_key, char *err, size_t errlen)
{
	struct crypto_buf b;
	EVP_PKEY *key;
	char why[CRYPTO_ERRLEN];

	if (crypto_read_file(path, &b, err, errlen) < 0)
		return NULL;
	why[0] = '\0';
	key = private_key ? crypto_private_key_from_pem((char *)b.data, b.len, why, sizeof why)
	                  : crypto_public_key_from_pem((char *)b.data, b.len, why, sizeof why);
	crypto_buf_free(&b);
	if (key == NULL)
		seterr(err, errlen, "%s: %s", path, why);
	return key;
}

EVP_PKEY *crypto_private_key_from_file(const char *path, char *err, size_t errlen)
{
	return key_from_file(path, 1, err, errlen);
}

EVP_PKEY *crypto_public_key_from_file(const char *path, char *err, size_t errlen)
{
	return key_from_file(path, 0, err, errlen);
}

void crypto_key_free(EVP_PKEY *key)
{
	EVP_PKEY_free(key);
}

/*
** Serial as Go prints a big.Int with %X: uppercase hex, no leading zeros, "-" for a
** negative value. (BN_bn2hex would keep a leading zero nibble, e.g. "0ABC".)
*/
static int cert_serial(X509 *x, char *out, size_t outsz, char *err, size_t errlen)
{
	BIGNUM *bn = ASN1_INTEGER_to_BN(X509_get0_serialNumber(x), NULL);
	unsigned char bytes[(CRYPTO_SERIAL_MAX - 2) / 2];
	char hex[CRYPTO_SERIAL_MAX - 1]; /* room for the '-' sign in out */
	const char *h = hex;
	int n, rc = -1;

	if (bn == NULL || (n = BN_num_bytes(bn)) > (int)sizeof bytes) {
		seterr(err, errlen, "certificate serial number is missing or too long");
		goto fail;
	}
	BN_bn2bin(bn, bytes);
	crypto_hex_encode(bytes, (size_t)n, 1, hex, sizeof hex);
	while (h[0] == '0' && h[1] != '\0')
		h++;
	if (*h == '\0')
		h = "0";
	snprintf(out, outsz, "%s%s", BN_is_negative(bn) ? "-" : "", h);
	rc = 0;
fail:
	BN_free(bn);
	ERR_clear_error();
	return rc;
}

/* Seconds between the Unix epoch and t. */
static int asn1_time_unix(const ASN1_TIME *t, int64_t *out)
{
	ASN1_TIME *epoch = ASN1_TIME_set(NULL, 0);
	int days = 0, secs = 0, ok;

	ok = epoch != NULL && t != NULL && ASN1_TIME_diff(&days, &secs, epoch, t);
	ASN1_TIME_free(epoch);
	ERR_clear_error();
	if (!ok)
		return -1;
	*out = (int64_t)days * 86400 + secs;
	return 0;
}

/* Fills serial, dates and public key of *out from x. On failure the caller clears *out. */
static int cert_fill(X509 *x, struct crypto_cert *out, char *err, size_t errlen)
{
	if (cert_serial(x, out->serial, sizeof out->serial, err, errlen) < 0)
		return -1;
	if (asn1_time_unix(X509_get0_notBefore(x), &out->not_before) < 0 ||
	    asn1_time_unix(X509_get0_notAfter(x), &out->not_after) < 0) {
		seterr(err, errlen, "certificate validity dates are unreadable");
		return -1;
	}
	if ((out->pubkey = X509_get_pubkey(x)) == NULL) {
		ossl_err(err, errlen, "certificate public key is unreadable");
		return -1;
	}
	return 0;
}

int crypto_cert_from_pem(const char *pem, size_t len, struct crypto_cert *out, char *err, size_t errlen)
{
	BIO *bio;
	X509 *x = NULL;
	int rc = -1;

	memset(out, 0, sizeof *out);
	if ((bio = mem_bio(pem, len, err, errlen)) == NULL)
		return -1;
	if ((x = PEM_read_bio_X509(bio, NULL, no_password, NULL)) == NULL) {
		ossl_err(err, errlen, "cannot read PEM certificate");
		goto fail;
	}
	if (cert_fill(x, out, err, errlen) < 0) {
		crypto_cert_clear(out);
		goto fail;
	}
	rc = 0;
fail:
	X509_free(x);
	BIO_free(bio);
	ERR_clear_error();
	return rc;
}

int crypto_cert_from_file(const char *path, struct crypto_cert *out, char *err, size_t errlen)
{
	struct crypto_buf b;
	char why[CRYPTO_ERRLEN];
	int rc;

	memset(out, 0, sizeof *out);
	if (crypto_read_file(path, &b, err, errlen) < 0)
		return -1;
	why[0] = '\0';
	rc = crypto_cert_from_pem((char *)b.data, b.len, out, why, sizeof why);
	crypto_buf_free(&b);
	if (rc < 0)
		seterr(err, errlen, "%s: %s", path, why);
	return rc;
}

int crypto_ca_bundle_check(const char *path, char *err, size_t errlen)
{
	struct crypto_buf b;
	int ncerts = 0, ncas = 0;

	if (crypto_read_file(path, &b, err, errlen) < 0)
		return -1;
	BIO *bio = BIO_new_mem_buf(b.data, (int)b.len);
	STACK_OF(X509_INFO) *infos = bio ? PEM_X509_INFO_read_bio(bio, NULL, NULL, NULL) : NULL;
	BIO_free(bio);
	crypto_buf_free(&b);
	if (!infos) {
		seterr(err, errlen, "%s is not a PEM certificate bundle (malformed PEM)", path);
		ERR_clear_error();
		return -1;
	}
	for (int i = 0; i < sk_X509_INFO_num(infos); i++) {
		X509 *x = sk_X509_INFO_value(infos, i)->x509;
		if (!x)
			continue;
		ncerts++;
		if (X509_check_ca(x) > 0)
			ncas++;
	}
	sk_X509_INFO_pop_free(infos, X509_INFO_free);
	ERR_clear_error();
	if (ncerts == 0)
		seterr(err, errlen, "%s holds no PEM certificate", path);
	else if (ncas == 0)
		seterr(err, errlen, "%s holds %d certificate%s but no CA certificate", path, ncerts,
		       ncerts == 1 ? "" : "s");
	return ncas > 0 ? ncas : -1;
}

void crypto_cert_clear(struct crypto_cert *c)
{
	if (c == NULL)
		return;
	EVP_PKEY_free(c->pubkey);
	memset(c, 0, sizeof *c);
}

/* ================================================================
** Files
** ================================================================ */

int crypto_read_file(const char *path, struct crypto_buf *out, char *err, size_t errlen)
{
	FILE *f = fopen(path, "rb");
	size_t n;

	out->data = NULL;
	out->len = 0;
	if (f == NULL) {
		seterr(err, errlen, "cannot open %s: %s", path, strerror(errno));
		return -1;
	}
	if (buf_alloc(out, READ_FILE_MAX, err, errlen) < 0)
		goto fail;
	n = fread(out->data, 1, READ_FILE_MAX, f);
	if (ferror(f) || fgetc(f) != EOF) {
		seterr(err, errlen, ferror(f) ? "cannot read %s" : "%s is larger than 1 MiB", path);
		goto fail;
	}
	out->len = n;
	out->data[n] = '\0';
	fclose(f);
	return 0;
fail:
	crypto_buf_free(out);
	fclose(f);
	return -1;
}

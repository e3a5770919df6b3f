/* fuzz_notify.c — libFuzzer target: notification headers + body -> verify -> decrypt -> JSON check. */
#define _POSIX_C_SOURCE 200809L
#include "wechatpay.h"
#include "wxserver.h"

#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/*
** Input layout (see tests/fuzz/corpus/notify/ for examples):
**
**   byte 0   flags: 1 = sign the message with the TV3 test key before verifying, so
**            the stages after verification are reachable for any body;
**            2 = treat the ciphertext field as plaintext and encrypt it first, so the
**            JSON check sees arbitrary decrypted bytes; 4 = use the 32-byte APIv3
**            key (AES-256) instead of the 16-byte Go SDK test key (AES-128).
**   then nine '\n'-terminated fields: Wechatpay-Timestamp, -Nonce, -Signature,
**   -Serial, -Signature-Type ("" = absent), resource algorithm, nonce,
**   associated_data, ciphertext; everything after them is the raw body.
**
** Besides "no crash", the harness checks invariants and traps when one breaks: a
** message it signed itself must verify unless an earlier check rejects it, and a
** resource it encrypted must decrypt to the same bytes.
**
** Built with -DPAYGATE_LIBFUZZER for libFuzzer; otherwise main() replays the files
** (or directories of files) named on the command line, printing "ok - FILE" for each
** input that ran without a crash and a final "N passed, N failed".
*/

#ifndef FUZZ_VECTORS_DIR
#define FUZZ_VECTORS_DIR "tests/vectors"
#endif

#define NOW     1624523846 /* the TV3b notification's timestamp */
#define NFIELDS 9

static EVP_PKEY *signer;
static struct wxp_keyset *keys;

/* Loads the TV3 key and certificate once; exits the harness if they are missing. */
static void setup(void)
{
	const char *dir = getenv("PAYGATE_VECTORS");
	char path[1024], err[CRYPTO_ERRLEN];
	struct crypto_buf pem;

	if (keys != NULL)
		return;
	dir = dir != NULL && dir[0] ? dir : FUZZ_VECTORS_DIR;
	snprintf(path, sizeof path, "%s/tv3_key.pem", dir);
	signer = crypto_private_key_from_file(path, err, sizeof err);
	snprintf(path, sizeof path, "%s/tv3_cert.pem", dir);
	keys = wxp_keyset_new();
	if (signer == NULL || keys == NULL || crypto_read_file(path, &pem, err, sizeof err) < 0) {
		fprintf(stderr, "fuzz_notify: cannot load test keys from %s (set PAYGATE_VECTORS): %s\n", dir, err);
		exit(2);
	}
	if (wxp_keyset_add_cert(keys, (char *)pem.data, pem.len, NULL, err, sizeof err) < 0) {
		fprintf(stderr, "fuzz_notify: %s\n", err);
		exit(2);
	}
	crypto_buf_free(&pem);
}

/* Splits data into NFIELDS NUL-terminated copies and the body. Returns -1 if too few. */
static int split(const uint8_t *data, size_t size, char **fields, const uint8_t **body, size_t *bodylen)
{
	size_t i, start = 0, pos = 0;

	for (i = 0; i < NFIELDS; i++) {
		while (pos < size && data[pos] != '\n')
			pos++;
		if (pos == size)
			return -1;
		fields[i] = malloc(pos - start + 1);
		if (fields[i] == NULL)
			return -1;
		memcpy(fields[i], data + start, pos - start);
		fields[i][pos - start] = '\0';
		start = ++pos;
	}
	*body = data + start;
	*bodylen = size - start;
	return 0;
}

/* Signs "TS\nNONCE\nBODY\n" exactly as given; returns the Base64 signature or NULL. */
static struct crypto_buf sign_exact(const char *ts, const char *nonce, const uint8_t *body, size_t len)
{
	struct crypto_buf msg, sig = { NULL, 0 };

	if (wxp_response_message(ts, nonce, body, len, &msg, NULL, 0) == 0) {
		crypto_rsa_sign_sha256(signer, msg.data, msg.len, &sig, NULL, 0);
		crypto_buf_free(&msg);
	}
	return sig;
}

/* Decrypts the resource and checks the invariants of what we encrypted ourselves. */
static void decrypt_stage(int flags, char **f)
{
	const char *key = flags & 4 ? "a7cde1ZJB1kG2e7VfTs3jQzaWizur8Gb" : "testMchAPIv3Key0";
	size_t keylen = strlen(key);
	struct crypto_buf ct = { NULL, 0 }, pt = { NULL, 0 };
	struct wxp_resource r = { f[5], f[6], f[7], f[8] };
	enum wxp_decrypt_result res;
	int sealed = 0;

	if ((flags & 2) && wxsrv_encrypt_resource(key, keylen, f[6], f[7], f[8], strlen(f[8]), &ct, NULL, 0) == 0) {
		r.ciphertext = (char *)ct.data;
		sealed = 1;
	}
	res = wxp_decrypt_resource(key, keylen, &r, &pt, NULL, 0);
	if (sealed && strcmp(f[5], WXP_ALGORITHM) == 0 &&
	    (res != WXP_DECRYPT_OK || pt.len != strlen(f[8]) || memcmp(pt.data, f[8], pt.len) != 0))
		__builtin_trap();
	crypto_buf_free(&pt);
	crypto_buf_free(&ct);
}

/* The stages a notification goes through, on one input. */
static void pipeline(int flags, char **f, const uint8_t *body, size_t bodylen)
{
	struct wxp_headers h = { f[0], f[1], f[2], f[3], f[4][0] ? f[4] : NULL };
	struct crypto_buf sig = { NULL, 0 };
	enum wxp_verify_result r;

	if (flags & 1) {
		sig = sign_exact(f[0], f[1], body, bodylen);
		if (sig.data != NULL)
			h.signature = (char *)sig.data;
	}
	r = wxp_verify(keys, &h, body, bodylen, NOW, NULL, 0);
	if ((flags & 1) && sig.data != NULL && r == WXP_VERIFY_BAD_SIGNATURE)
		__builtin_trap();
	crypto_buf_free(&sig);
	if (r == WXP_VERIFY_OK)
		decrypt_stage(flags, f);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char *fields[NFIELDS] = { NULL };
	const uint8_t *body;
	size_t bodylen, i;
	struct wxsrv_auth auth;

	setup();
	if (size == 0)
		return 0;
	if (split(data + 1, size - 1, fields, &body, &bodylen) == 0) {
		if (wxsrv_parse_authorization(fields[2], &auth, NULL, 0) == 0)
			wxsrv_auth_free(&auth);
		pipeline(data[0], fields, body, bodylen);
	}
	for (i = 0; i < NFIELDS; i++)
		free(fields[i]);
	return 0;
}

#ifndef PAYGATE_LIBFUZZER

/* Replays one file. Returns 0, or -1 if it cannot be read. */
static int replay_file(const char *path)
{
	char err[CRYPTO_ERRLEN];
	struct crypto_buf b;

	if (crypto_read_file(path, &b, err, sizeof err) < 0) {
		printf("not ok - %s\n#   %s\n", path, err);
		return -1;
	}
	LLVMFuzzerTestOneInput(b.data, b.len);
	crypto_buf_free(&b);
	printf("ok - %s\n", path);
	return 0;
}

/* Replays a file, or every regular file directly inside a directory, counting outcomes. */
static void replay(const char *path, int *passed, int *failed)
{
	DIR *d = opendir(path);
	struct dirent *e;
	char sub[4096];

	if (d == NULL) {
		*(replay_file(path) == 0 ? passed : failed) += 1;
		return;
	}
	while ((e = readdir(d)) != NULL) {
		if (e->d_name[0] == '.')
			continue;
		snprintf(sub, sizeof sub, "%s/%s", path, e->d_name);
		*(replay_file(sub) == 0 ? passed : failed) += 1;
	}
	closedir(d);
}

/* A crash aborts the run; an input that cannot be read counts as failed. */
int main(int argc, char **argv)
{
	int i, passed = 0, failed = 0;

	if (argc < 2) {
		fprintf(stderr, "usage: fuzz_notify FILE|DIR...  (replays inputs; build with libFuzzer to fuzz)\n");
		return 2;
	}
	for (i = 1; i < argc; i++)
		replay(argv[i], &passed, &failed);
	printf("%d passed, %d failed\n", passed, failed);
	crypto_key_free(signer);
	wxp_keyset_free(keys);
	return failed ? 1 : 0;
}

#endif

/* wxp_tool.c — a small CLI over engine/wechatpay.c, used by the Node conformance test and by hand. */
#include "wechatpay.h"
#include "wxserver.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/*
** Exit status: 0 done (or verified), 1 verification failed, 2 bad usage or input.
** Bodies and plaintexts are read from files so that any bytes can be passed; the
** APIv3 key is read from a file (trailing newline stripped) to keep it out of argv.
** Results go to stdout without a trailing newline, errors to stderr.
*/

static const char usage[] = "usage: wxp_tool COMMAND ARGS...\n"
                            "  sign-request KEY.pem METHOD URL TIMESTAMP NONCE BODYFILE\n"
                            "  authorization KEY.pem MCHID SERIAL METHOD URL TIMESTAMP NONCE BODYFILE\n"
                            "  verify-authorization CERT.pem METHOD URL BODYFILE HEADER\n"
                            "  sign-response KEY.pem TIMESTAMP NONCE BODYFILE\n"
                            "  verify-response CERT.pem|PUBKEY.pem SERIAL TIMESTAMP NONCE SIGNATURE BODYFILE NOW\n"
                            "  encrypt-resource APIV3KEYFILE NONCE ASSOCIATED_DATA PLAINTEXTFILE\n"
                            "  decrypt-resource APIV3KEYFILE NONCE ASSOCIATED_DATA CIPHERTEXT\n"
                            "  pay-sign KEY.pem APPID TIMESTAMP NONCE PREPAY_ID\n"
                            "  app-pay-sign KEY.pem APPID TIMESTAMP NONCESTR PREPAYID\n"
                            "  serial CERT.pem\n";

static char err[CRYPTO_ERRLEN];

static int fail(const char *what)
{
	fprintf(stderr, "wxp_tool: %s: %s\n", what, err);
	return 2;
}

static int parse_int64(const char *s, int64_t *out)
{
	char *end;
	long long v;

	errno = 0;
	v = strtoll(s, &end, 10);
	if (errno != 0 || end == s || *end != '\0') {
		fprintf(stderr, "wxp_tool: not an integer: %s\n", s);
		return -1;
	}
	*out = (int64_t)v;
	return 0;
}

/* Prints a struct crypto_buf to stdout and frees it. */
static int emit(struct crypto_buf *b)
{
	fwrite(b->data, 1, b->len, stdout);
	crypto_buf_free(b);
	return 0;
}

static int read_apiv3_key(const char *path, struct crypto_buf *key)
{
	if (crypto_read_file(path, key, err, sizeof err) < 0)
		return -1;
	while (key->len > 0 && (key->data[key->len - 1] == '\n' || key->data[key->len - 1] == '\r'))
		key->data[--key->len] = '\0';
	return 0;
}

static int cmd_sign_request(char **a)
{
	EVP_PKEY *key = crypto_private_key_from_file(a[0], err, sizeof err);
	struct crypto_buf body = { NULL, 0 }, sig = { NULL, 0 };
	int64_t ts;
	int rc = 2;

	if (key == NULL)
		return fail("key");
	if (parse_int64(a[3], &ts) < 0 || crypto_read_file(a[5], &body, err, sizeof err) < 0 ||
	    wxp_sign_request(key, a[1], a[2], ts, a[4], body.data, body.len, &sig, err, sizeof err) < 0)
		rc = fail("sign-request");
	else
		rc = emit(&sig);
	crypto_buf_free(&body);
	crypto_key_free(key);
	return rc;
}

static int cmd_authorization(char **a)
{
	EVP_PKEY *key = crypto_private_key_from_file(a[0], err, sizeof err);
	struct crypto_buf body = { NULL, 0 }, h = { NULL, 0 };
	int64_t ts;
	int rc;

	if (key == NULL)
		return fail("key");
	if (parse_int64(a[5], &ts) < 0 || crypto_read_file(a[7], &body, err, sizeof err) < 0 ||
	    wxp_build_authorization(key, a[1], a[2], a[3], a[4], ts, a[6], body.data, body.len, &h, err, sizeof err) <
	        0)
		rc = fail("authorization");
	else
		rc = emit(&h);
	crypto_buf_free(&body);
	crypto_key_free(key);
	return rc;
}

/* Checks a request's Authorization the way the sandbox does: serial, then signature. */
static int check_authorization(const struct crypto_cert *c, const char *method, const char *url,
                               const struct crypto_buf *body, const struct wxsrv_auth *auth)
{
	struct crypto_buf msg = { NULL, 0 };
	int64_t ts;
	int rc;

	if (strcmp(auth->serial_no, c->serial) != 0) {
		fprintf(stderr, "wxp_tool: serial_no %s is not the certificate's %s\n", auth->serial_no, c->serial);
		return 1;
	}
	if (parse_int64(auth->timestamp, &ts) < 0 ||
	    wxp_request_message(method, url, ts, auth->nonce_str, body->data, body->len, &msg, err, sizeof err) < 0)
		return fail("request message");
	rc = crypto_rsa_verify_sha256(c->pubkey, msg.data, msg.len, auth->signature, strlen(auth->signature), err,
	                              sizeof err);
	crypto_buf_free(&msg);
	if (rc < 0) {
		fprintf(stderr, "wxp_tool: %s\n", err);
		return 1;
	}
	fputs("ok", stdout);
	return 0;
}

static int cmd_verify_authorization(char **a)
{
	struct crypto_cert c;
	struct crypto_buf body = { NULL, 0 };
	struct wxsrv_auth auth;
	int rc;

	if (crypto_cert_from_file(a[0], &c, err, sizeof err) < 0)
		return fail("certificate");
	if (crypto_read_file(a[3], &body, err, sizeof err) < 0 ||
	    wxsrv_parse_authorization(a[4], &auth, err, sizeof err) < 0) {
		rc = fail("verify-authorization");
	} else {
		rc = check_authorization(&c, a[1], a[2], &body, &auth);
		wxsrv_auth_free(&auth);
	}
	crypto_buf_free(&body);
	crypto_cert_clear(&c);
	return rc;
}

static int cmd_sign_response(char **a)
{
	EVP_PKEY *key = crypto_private_key_from_file(a[0], err, sizeof err);
	struct crypto_buf body = { NULL, 0 }, sig = { NULL, 0 };
	int64_t ts;
	int rc;

	if (key == NULL)
		return fail("key");
	if (parse_int64(a[1], &ts) < 0 || crypto_read_file(a[3], &body, err, sizeof err) < 0 ||
	    wxsrv_sign_response(key, ts, a[2], body.data, body.len, &sig, err, sizeof err) < 0)
		rc = fail("sign-response");
	else
		rc = emit(&sig);
	crypto_buf_free(&body);
	crypto_key_free(key);
	return rc;
}

/* Adds a.pem to ks as a certificate, or as the public key when SERIAL is a PUB_KEY_ID_. */
static int load_verifier(struct wxp_keyset *ks, const char *path, const char *serial)
{
	struct crypto_buf pem = { NULL, 0 };
	int rc;

	if (crypto_read_file(path, &pem, err, sizeof err) < 0)
		return -1;
	if (strncmp(serial, WXP_PUBKEY_ID_PREFIX, strlen(WXP_PUBKEY_ID_PREFIX)) == 0)
		rc = wxp_keyset_add_public_key(ks, serial, (char *)pem.data, pem.len, err, sizeof err);
	else
		rc = wxp_keyset_add_cert(ks, (char *)pem.data, pem.len, NULL, err, sizeof err);
	crypto_buf_free(&pem);
	return rc;
}

static int cmd_verify_response(char **a)
{
	struct wxp_keyset *ks = wxp_keyset_new();
	struct wxp_headers h = { a[2], a[3], a[4], a[1], NULL };
	struct crypto_buf body = { NULL, 0 };
	enum wxp_verify_result r;
	int64_t now;
	int rc;

	if (ks == NULL || load_verifier(ks, a[0], a[1]) < 0 || parse_int64(a[6], &now) < 0 ||
	    crypto_read_file(a[5], &body, err, sizeof err) < 0) {
		rc = fail("verify-response");
	} else {
		r = wxp_verify(ks, &h, body.data, body.len, now, err, sizeof err);
		fputs(wxp_verify_result_name(r), stdout);
		if (r != WXP_VERIFY_OK)
			fprintf(stderr, "wxp_tool: %s\n", err);
		rc = r == WXP_VERIFY_OK ? 0 : 1;
	}
	crypto_buf_free(&body);
	wxp_keyset_free(ks);
	return rc;
}

static int cmd_encrypt_resource(char **a)
{
	struct crypto_buf key = { NULL, 0 }, pt = { NULL, 0 }, ct = { NULL, 0 };
	int rc;

	if (read_apiv3_key(a[0], &key) < 0 || crypto_read_file(a[3], &pt, err, sizeof err) < 0 ||
	    wxsrv_encrypt_resource(key.data, key.len, a[1], a[2], pt.data, pt.len, &ct, err, sizeof err) < 0)
		rc = fail("encrypt-resource");
	else
		rc = emit(&ct);
	crypto_buf_free(&key);
	crypto_buf_free(&pt);
	return rc;
}

static int cmd_decrypt_resource(char **a)
{
	struct crypto_buf key = { NULL, 0 }, pt = { NULL, 0 };
	struct wxp_resource r = { WXP_ALGORITHM, a[1], a[2], a[3] };
	enum wxp_decrypt_result res;

	if (read_apiv3_key(a[0], &key) < 0)
		return fail("decrypt-resource");
	res = wxp_decrypt_resource(key.data, key.len, &r, &pt, err, sizeof err);
	crypto_buf_free(&key);
	if (res != WXP_DECRYPT_OK) {
		fprintf(stderr, "wxp_tool: %s: %s\n", wxp_decrypt_result_name(res), err);
		return 1;
	}
	return emit(&pt);
}

/* KEY APPID TIMESTAMP NONCE PREPAY_ID: the payment signature `sign` makes (mini program or APP pay). */
static int pay_sign_with(char **a, const char *what,
                         int (*sign)(EVP_PKEY *, const char *, int64_t, const char *, const char *, struct crypto_buf *,
                                     char *, size_t))
{
	EVP_PKEY *key = crypto_private_key_from_file(a[0], err, sizeof err);
	struct crypto_buf sig = { NULL, 0 };
	int64_t ts;
	int rc;

	if (key == NULL)
		return fail("key");
	if (parse_int64(a[2], &ts) < 0 || sign(key, a[1], ts, a[3], a[4], &sig, err, sizeof err) < 0)
		rc = fail(what);
	else
		rc = emit(&sig);
	crypto_key_free(key);
	return rc;
}

static int cmd_pay_sign(char **a)
{
	return pay_sign_with(a, "pay-sign", wxp_pay_sign);
}

static int cmd_app_pay_sign(char **a)
{
	return pay_sign_with(a, "app-pay-sign", wxp_app_pay_sign);
}

static int cmd_serial(char **a)
{
	struct crypto_cert c;

	if (crypto_cert_from_file(a[0], &c, err, sizeof err) < 0)
		return fail("certificate");
	fputs(c.serial, stdout);
	crypto_cert_clear(&c);
	return 0;
}

static const struct command {
	const char *name;
	int argc;
	int (*fn)(char **args);
} commands[] = {
	{ "sign-request", 6, cmd_sign_request },
	{ "authorization", 8, cmd_authorization },
	{ "verify-authorization", 5, cmd_verify_authorization },
	{ "sign-response", 4, cmd_sign_response },
	{ "verify-response", 7, cmd_verify_response },
	{ "encrypt-resource", 4, cmd_encrypt_resource },
	{ "decrypt-resource", 4, cmd_decrypt_resource },
	{ "pay-sign", 5, cmd_pay_sign },
	{ "app-pay-sign", 5, cmd_app_pay_sign },
	{ "serial", 1, cmd_serial },
};

int main(int argc, char **argv)
{
	size_t i;

	for (i = 0; argc > 1 && i < sizeof commands / sizeof commands[0]; i++)
		if (strcmp(argv[1], commands[i].name) == 0) {
			if (argc - 2 != commands[i].argc)
				break;
			return commands[i].fn(argv + 2);
		}
	fputs(usage, stderr);
	return 2;
}

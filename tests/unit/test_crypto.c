/* test_crypto.c — unit tests of engine/crypto.c against published vectors (docs/wechatpay-v3.md §11). */
#include "../../engine/crypto.h"
#include "unit.h"

#include <ctype.h>

static char err[CRYPTO_ERRLEN];

/* Hex of a digest, for comparisons with published values. */
static const char *hex(const unsigned char *p, size_t n)
{
	static char out[129];

	crypto_hex_encode(p, n, 0, out, sizeof out);
	return out;
}

/* ---- encodings ---- */

static void t_base64_rfc4648(void)
{
	static const char *const plain[] = { "", "f", "fo", "foo", "foob", "fooba", "foobar" };
	static const char *const enc[] = { "", "Zg==", "Zm8=", "Zm9v", "Zm9vYg==", "Zm9vYmE=", "Zm9vYmFy" };
	struct crypto_buf b;
	size_t i;

	for (i = 0; i < sizeof plain / sizeof plain[0]; i++) {
		CHECK_EQ_INT(crypto_base64_encode(plain[i], strlen(plain[i]), &b, err, sizeof err), 0);
		CHECK_EQ_STR(b.data, enc[i]);
		crypto_buf_free(&b);
		CHECK_EQ_INT(crypto_base64_decode(enc[i], strlen(enc[i]), &b, err, sizeof err), 0);
		CHECK_EQ_MEM(b.data, b.len, plain[i], strlen(plain[i]));
		crypto_buf_free(&b);
	}
}

static void t_base64_rejects_non_canonical(void)
{
#define S(x)                     \
	{                        \
		x, sizeof(x) - 1 \
	}
	static const struct {
		const char *s;
		size_t n;
	} bad[] = {
		S("Zg="),  S("Zg"),       S("Zh=="), S("Zm9="), S("Zm9v\n"),   S(" Zm9v"),   S("Z==="),  S("===="),
		S("=Zm9"), S("Zg==Zg=="), S("Zm-v"), S("Zm_v"), S("Zm9v===="), S("Z\x80=="), S("Zm\0v"),
	};
#undef S
	struct crypto_buf b;
	size_t i;

	for (i = 0; i < sizeof bad / sizeof bad[0]; i++) {
		err[0] = '\0';
		CHECK_EQ_INT(crypto_base64_decode(bad[i].s, bad[i].n, &b, err, sizeof err), -1);
		CHECK(b.data == NULL && b.len == 0);
		CHECK(strstr(err, "invalid base64") != NULL);
	}
}

static void t_hex_encode(void)
{
	char out[7];

	CHECK_EQ_INT(crypto_hex_encode("\x00\xab\xff", 3, 1, out, sizeof out), 0);
	CHECK_EQ_STR(out, "00ABFF");
	CHECK_EQ_INT(crypto_hex_encode("\x00\xab\xff", 3, 0, out, sizeof out), 0);
	CHECK_EQ_STR(out, "00abff");
	CHECK_EQ_INT(crypto_hex_encode("\x00\xab\xff", 3, 0, out, 6), -1);
}

/* ---- digests ---- */

static void t_digests(void)
{
	unsigned char d[32];

	CHECK_EQ_INT(crypto_sha256("abc", 3, d), 0);
	CHECK_EQ_STR(hex(d, 32), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
	/* RFC 4231 test case 2 */
	CHECK_EQ_INT(crypto_hmac_sha256("Jefe", 4, "what do ya want for nothing?", 28, d), 0);
	CHECK_EQ_STR(hex(d, 32), "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");
}

static void t_ct_equal(void)
{
	CHECK(crypto_ct_equal("abcd", "abcd", 4));
	CHECK(!crypto_ct_equal("abcd", "abce", 4));
	CHECK(crypto_ct_equal("", "", 0));
}

/* ---- RSA ---- */

#define TV3A_SIG \
	"BKyAfU4iMCuvXMXS0Wzam3V/cnxZ+JaqigPM5OhljS2iOT95OO6Fsuml2JkFANJU9K6q9bLlDhPXuoVz+pp4hAm6pHU4ld815U4jsKu1RkyaII+1CYBUYC8TK0XtJ8FwUXXz8vZHh58rrAVN1XwNyvD1vfpxrMT4SL536GLwvpUHlCqIMzoZUguLli/K8V29QiOhuH6IEqLNJn8e9b3nwNcQ7be3CzYGpDAKBfDGPCqCv8Rw5zndhlffk2FEA70G4hvMwe51qMN/RAJbknXG23bSlObuTCN7Ndj1aJGH6/L+hdwfLpUtJm4QYVazzW7DFD27EpSQEqA8bX9+8m1rLg=="

#define TV2_SIG \
	"mfI1CPqvBrgcXfgXMFjdNIhBf27ACE2YyeWsWV9ZI7T7RU0vHvbQpu9Z32ogzc+k8ZC5n3kz7h70eWKjgqNdKQF0eRp8mVKlmfzMLBVHbssB9jEZEDXThOX1XFqX7s7ymia1hoHQxQagPGzkdWxtlZPZ4ZPvr1RiqkgAu6Is8MZgXXrRoBKqjmSdrP1N7uxzJ/cjfSiis9FiLjuADoqmQ1P7p2N876YPAol7Rn0+GswwAwxldbdLrmVSjfytfSBJFqTMHn4itojgxSWWN1byuckQt8hSTEv/Lg97QoeGniYP17T80pJeQyL3b+295FPHSO2AtvCgyIbKMZ0BALilAA=="
#define TV2_MSG \
	"1722850421\nd824f2e086d3c1df967785d13fcd22ef\n{\"code_url\":\"weixin://wxpay/bizpayurl?pr=JyC91EIz1\"}\n"

static void t_rsa_sign_tv3a(void)
{
	EVP_PKEY *key = crypto_private_key_from_file(unit_vector("tv3_key.pem"), err, sizeof err);
	struct crypto_buf sig = { NULL, 0 };

	CHECK(key != NULL);
	CHECK_EQ_INT(crypto_rsa_sign_sha256(key, "source", 6, &sig, err, sizeof err), 0);
	CHECK_EQ_STR(sig.data, TV3A_SIG);
	CHECK_EQ_INT(sig.len, 344);
	CHECK_EQ_INT(crypto_rsa_verify_sha256(key, "source", 6, TV3A_SIG, strlen(TV3A_SIG), err, sizeof err), 0);
	crypto_buf_free(&sig);
	crypto_key_free(key);
}

static void t_rsa_verify_tv2(void)
{
	EVP_PKEY *pub = crypto_public_key_from_file(unit_vector("tv2_wechatpay_public_key.pem"), err, sizeof err);
	char bad[] = TV2_SIG;

	CHECK(pub != NULL);
	CHECK_EQ_INT(crypto_rsa_verify_sha256(pub, TV2_MSG, strlen(TV2_MSG), TV2_SIG, strlen(TV2_SIG), err, sizeof err),
	             0);
	CHECK_EQ_INT(
	    crypto_rsa_verify_sha256(pub, TV2_MSG, strlen(TV2_MSG) - 1, TV2_SIG, strlen(TV2_SIG), err, sizeof err), -1);
	CHECK_EQ_STR(err, "signature does not match");
	bad[10] = '*';
	CHECK_EQ_INT(crypto_rsa_verify_sha256(pub, TV2_MSG, strlen(TV2_MSG), bad, strlen(bad), err, sizeof err), -1);
	CHECK_EQ_STR(err, "signature is not valid base64");
	crypto_key_free(pub);
}

/* The doc's TV1g: GET /v3/certificates with an empty body, signed by the TV1 key. */
#define TV1G_MSG "GET\n/v3/certificates\n1554208460\n593BEC0C930BF1AFEB40B4A08C8FB242\n\n"
#define TV1G_SIG \
	"JNEITrKv8DWEtBJGZtxG9ARa+eIZDIn1Ht3MQM5j9jP77TtHdfCqLjpwevfWftBuaGMfEdiu2sWYtLvnZIoLW3FH10OVCBzKncid5xClTwav8JX+uDeGBBX8w64iHvFyuQj8ukZT+F1AFJii8hmXLD8Os90thnL0bfJYLo/4K237TH4dEd44NTH9ElFb/ykrvv9RBs+mCNpy5IUe2Qxhba3d3RiMqhWK2sSr3tsVzQihJ0TPMnjWqoU2W5Y/v3rBFDmLhqe0ZW6A4vyvjmiR0v/8XEI25Py4PNyZXszsdl4j0zLqelUJxGEMUBhYg1LIoDPjYMlA9HV1yKD6+JYZJA=="

static void t_pkcs1_and_pkcs8_keys_sign_alike(void)
{
	const char *files[] = { "tv1_merchant_key.pem", "tv1_merchant_key_pkcs1.pem" };
	size_t i;

	for (i = 0; i < 2; i++) {
		EVP_PKEY *key = crypto_private_key_from_file(unit_vector(files[i]), err, sizeof err);
		struct crypto_buf sig = { NULL, 0 };
		CHECK(key != NULL);
		CHECK(crypto_key_is_rsa(key));
		CHECK_EQ_INT(crypto_rsa_sign_sha256(key, TV1G_MSG, strlen(TV1G_MSG), &sig, err, sizeof err), 0);
		CHECK_EQ_STR(sig.data, TV1G_SIG);
		crypto_buf_free(&sig);
		crypto_key_free(key);
	}
}

static void t_key_loading_failures_are_clean(void)
{
	static const char garbage[] =
	    "-----BEGIN PRIVATE KEY-----\nMIIEvAIBADANBgkqhkiG9w0BAQEFAASC\n-----END PRIVATE KEY-----\n";
	EVP_PKEY *key;
	struct crypto_buf sig = { NULL, 0 };

	err[0] = '\0';
	CHECK(crypto_private_key_from_pem(garbage, strlen(garbage), err, sizeof err) == NULL);
	CHECK(err[0] != '\0' && strstr(err, "MII") == NULL);
	/* an encrypted key fails instead of prompting for a password */
	err[0] = '\0';
	CHECK(crypto_private_key_from_file(unit_vector("tv3_key_encrypted.pem"), err, sizeof err) == NULL);
	CHECK(strstr(err, "tv3_key_encrypted.pem") != NULL);
	CHECK(crypto_private_key_from_file(unit_vector("no-such-file.pem"), err, sizeof err) == NULL);
	CHECK(strstr(err, "no-such-file.pem") != NULL);
	CHECK(crypto_public_key_from_pem("not a key", 9, err, sizeof err) == NULL);
	CHECK(crypto_private_key_from_pem(NULL, 0, err, sizeof err) == NULL);
	/* a public key cannot sign */
	key = crypto_public_key_from_file(unit_vector("tv2_wechatpay_public_key.pem"), err, sizeof err);
	CHECK(key != NULL);
	CHECK_EQ_INT(crypto_rsa_sign_sha256(key, "x", 1, &sig, err, sizeof err), -1);
	CHECK(sig.data == NULL);
	crypto_key_free(key);
}

/* ---- certificates ---- */

static void t_cert_tv3(void)
{
	struct crypto_cert c;
	EVP_PKEY *key = crypto_private_key_from_file(unit_vector("tv3_key.pem"), err, sizeof err);
	struct crypto_buf sig = { NULL, 0 };

	CHECK_EQ_INT(crypto_cert_from_file(unit_vector("tv3_cert.pem"), &c, err, sizeof err), 0);
	CHECK_EQ_STR(c.serial, "D7CE59D1F522D701");
	CHECK_EQ_INT(c.not_before, 1619513723); /* 2021-04-27 08:55:23Z */
	CHECK_EQ_INT(c.not_after, 1934873723);  /* 2031-04-25 08:55:23Z */
	CHECK_EQ_INT(crypto_rsa_sign_sha256(key, "source", 6, &sig, err, sizeof err), 0);
	CHECK_EQ_INT(crypto_rsa_verify_sha256(c.pubkey, "source", 6, (char *)sig.data, sig.len, err, sizeof err), 0);
	crypto_buf_free(&sig);
	crypto_key_free(key);
	crypto_cert_clear(&c);
	CHECK(c.pubkey == NULL);
}

static void t_cert_serial_drops_leading_zero_like_go(void)
{
	struct crypto_cert c;

	CHECK_EQ_INT(crypto_cert_from_file(unit_vector("serial_leading_zero_cert.pem"), &c, err, sizeof err), 0);
	CHECK_EQ_STR(c.serial, "ABCDEF012");
	crypto_cert_clear(&c);
	CHECK_EQ_INT(crypto_cert_from_pem("junk", 4, &c, err, sizeof err), -1);
	CHECK(c.pubkey == NULL && c.serial[0] == '\0');
}

/* ---- AES-GCM ---- */

/* Decrypts Base64 ct with (key, iv, aad); returns crypto's status and the plaintext in pt. */
static int gcm_open(const char *key, const char *iv, const char *aad, const char *b64, struct crypto_buf *pt)
{
	struct crypto_buf ct;
	int rc;

	pt->data = NULL;
	pt->len = 0;
	if (crypto_base64_decode(b64, strlen(b64), &ct, err, sizeof err) < 0)
		return 99;
	rc = crypto_aes_gcm_decrypt(key, strlen(key), iv, strlen(iv), aad, strlen(aad), ct.data, ct.len, pt, err,
	                            sizeof err);
	crypto_buf_free(&ct);
	return rc;
}

/* Encrypts and returns the Base64 of ciphertext||tag in a static buffer. */
static const char *gcm_seal(const char *key, const char *iv, const char *aad, const char *pt)
{
	static char out[2048];
	struct crypto_buf ct, b;

	out[0] = '\0';
	if (crypto_aes_gcm_encrypt(key, strlen(key), iv, strlen(iv), aad, strlen(aad), pt, strlen(pt), &ct, err,
	                           sizeof err) < 0)
		return "(encrypt failed)";
	crypto_base64_encode(ct.data, ct.len, &b, err, sizeof err);
	snprintf(out, sizeof out, "%s", (char *)b.data);
	crypto_buf_free(&ct);
	crypto_buf_free(&b);
	return out;
}

static void t_gcm_tv3c_aes128(void)
{
	struct crypto_buf pt;

	CHECK_EQ_INT(gcm_open("testAPIv3Key0000", "wCq51qZv4Yfg", "Dl56FrqWQJF1t9LtC3vEUsniZKvbqdR8",
	                      "FsdXzxryWfKwvLJKf8LG/ToRPTRh8RN9wROC", &pt),
	             0);
	CHECK_EQ_STR(pt.data, "Hello World");
	crypto_buf_free(&pt);
	CHECK_EQ_STR(gcm_seal("testAPIv3Key0000", "wCq51qZv4Yfg", "Dl56FrqWQJF1t9LtC3vEUsniZKvbqdR8", "Hello World"),
	             "FsdXzxryWfKwvLJKf8LG/ToRPTRh8RN9wROC");
	CHECK_EQ_INT(gcm_open("testAPIv3Key1111", "wCq51qZv4Yfg", "Dl56FrqWQJF1t9LtC3vEUsniZKvbqdR8",
	                      "FsdXzxryWfKwvLJKf8LG/ToRPTRh8RN9wROC", &pt),
	             CRYPTO_EAUTH);
	CHECK(pt.data == NULL);
	/* 12 bytes: shorter than a tag */
	CHECK_EQ_INT(
	    gcm_open("testAPIv3Key0000", "wCq51qZv4Yfg", "Dl56FrqWQJF1t9LtC3vEUsniZKvbqdR8", "SGVsbG8gV29ybGQK", &pt),
	    -1);
}

static void t_gcm_tv4a_aes256(void)
{
	const char *key = "a7cde1ZJB1kG2e7VfTs3jQzaWizur8Gb";
	struct crypto_buf pt, raw;

	CHECK_EQ_STR(gcm_seal(key, "uluk4a9R25RW", "associatedData", "message"), "ulwSiIajGClcvcOYvOQ7+l+0PAbzzwI=");
	CHECK_EQ_INT(crypto_base64_decode("ulwSiIajGClcvcOYvOQ7+l+0PAbzzwI=", 32, &raw, err, sizeof err), 0);
	CHECK_EQ_STR(hex(raw.data, raw.len), "ba5c128886a318295cbdc398bce43bfa5fb43c06f3cf02");
	crypto_buf_free(&raw);
	CHECK_EQ_INT(gcm_open(key, "uluk4a9R25RW", "associatedData", "ulwSiIajGClcvcOYvOQ7+l+0PAbzzwI=", &pt), 0);
	CHECK_EQ_STR(pt.data, "message");
	crypto_buf_free(&pt);
	CHECK_EQ_INT(gcm_open(key, "uluk4a9R25RW", "bad-associatedData", "ulwSiIajGClcvcOYvOQ7+l+0PAbzzwI=", &pt),
	             CRYPTO_EAUTH);
	CHECK_EQ_INT(gcm_open(key, "bad-4a9R25RW", "associatedData", "ulwSiIajGClcvcOYvOQ7+l+0PAbzzwI=", &pt),
	             CRYPTO_EAUTH);
	CHECK(strstr(err, "tag mismatch") != NULL);
}

static void t_gcm_tv5_16_byte_iv(void)
{
	const char *key = "0123456789abcdef0123456789abcdef", *iv = "0123456789abcdef";
	struct crypto_buf pt;

	CHECK_EQ_STR(gcm_seal(key, iv, "", ""), "GvpmmdtYwexXIPhySs9Tlg==");
	CHECK_EQ_STR(gcm_seal(key, iv, "world", "hello"), "APoZlYpivU3HjbAiB4CvW1rAFr8J");
	CHECK_EQ_INT(gcm_open(key, iv, "world", "APoZlYpivU3HjbAiB4CvW1rAFr8J", &pt), 0);
	CHECK_EQ_STR(pt.data, "hello");
	crypto_buf_free(&pt);
	CHECK_EQ_INT(gcm_open(key, iv, "", "GvpmmdtYwexXIPhySs9Tlg==", &pt), 0);
	CHECK_EQ_INT(pt.len, 0);
	crypto_buf_free(&pt);
}

static void t_gcm_bad_arguments(void)
{
	struct crypto_buf out;

	CHECK_EQ_INT(crypto_aes_gcm_encrypt("short", 5, "iv", 2, "", 0, "x", 1, &out, err, sizeof err), -1);
	CHECK(strstr(err, "16 or 32") != NULL);
	CHECK_EQ_INT(crypto_aes_gcm_encrypt("0123456789abcdef", 16, "", 0, "", 0, "x", 1, &out, err, sizeof err), -1);
	CHECK(out.data == NULL);
}

/* ---- randomness ---- */

static void t_nonces(void)
{
	char a[33], b[33], h[33];
	unsigned char r[16];
	size_t i;

	CHECK_EQ_INT(crypto_nonce_alnum(a, 32, err, sizeof err), 0);
	CHECK_EQ_INT(crypto_nonce_alnum(b, 32, err, sizeof err), 0);
	CHECK_EQ_INT(crypto_nonce_hex(h, 32, err, sizeof err), 0);
	CHECK_EQ_INT(strlen(a), 32);
	CHECK_EQ_INT(strlen(h), 32);
	CHECK(strcmp(a, b) != 0);
	for (i = 0; i < 32; i++) {
		CHECK(isalnum((unsigned char)a[i]));
		CHECK(isdigit((unsigned char)h[i]) || (h[i] >= 'A' && h[i] <= 'F'));
	}
	CHECK_EQ_INT(crypto_random_bytes(r, sizeof r, err, sizeof err), 0);
	CHECK_EQ_INT(crypto_random_bytes(r, 0, err, sizeof err), 0);
}

static void t_read_file_limits(void)
{
	struct crypto_buf b;

	CHECK_EQ_INT(crypto_read_file(unit_vector("tv3_cert.pem"), &b, err, sizeof err), 0);
	CHECK(b.data != NULL && b.len > 1000 && memcmp(b.data, "-----BEGIN CERTIFICATE-----", 27) == 0);
	CHECK(b.data != NULL && strlen((char *)b.data) == b.len);
	crypto_buf_free(&b);
	CHECK_EQ_INT(crypto_read_file("/nonexistent/paygate", &b, err, sizeof err), -1);
	CHECK(strstr(err, "/nonexistent/paygate") != NULL);
	crypto_buf_free(NULL);
}

static const struct unit_test tests[] = {
	{ "base64 matches RFC 4648 both ways", t_base64_rfc4648 },
	{ "base64 decode rejects every non-canonical form", t_base64_rejects_non_canonical },
	{ "hex encode upper/lower and refuses a short buffer", t_hex_encode },
	{ "SHA-256 and HMAC-SHA256 match published values", t_digests },
	{ "constant-time compare tells equal from different", t_ct_equal },
	{ "RSA signature of 'source' with the Go SDK key is TV3a", t_rsa_sign_tv3a },
	{ "TV2 response signature verifies with the WeChat Pay public key, altered fails", t_rsa_verify_tv2 },
	{ "PKCS#8 and PKCS#1 forms of the TV1 key both produce TV1g", t_pkcs1_and_pkcs8_keys_sign_alike },
	{ "bad, encrypted or missing keys fail with a message and no key bytes", t_key_loading_failures_are_clean },
	{ "TV3 certificate gives serial D7CE59D1F522D701, its dates and its key", t_cert_tv3 },
	{ "certificate serial with a leading zero nibble prints as Go's %X", t_cert_serial_drops_leading_zero_like_go },
	{ "AES-128-GCM TV3c decrypts, re-encrypts, and fails with the wrong key", t_gcm_tv3c_aes128 },
	{ "AES-256-GCM TV4a both ways; wrong AAD or nonce fails the tag", t_gcm_tv4a_aes256 },
	{ "AES-256-GCM with a 16-byte IV reproduces TV5", t_gcm_tv5_16_byte_iv },
	{ "AES-GCM refuses bad key lengths and empty nonces", t_gcm_bad_arguments },
	{ "nonces are random, 32 chars, from their alphabets", t_nonces },
	{ "read_file reads whole files and names the missing one", t_read_file_limits },
};

UNIT_MAIN(tests)

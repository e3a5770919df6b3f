/* test_wechatpay.c — unit tests of engine/wechatpay.c: every vector of docs/wechatpay-v3.md §11 and the rejections. */
#include "wechatpay.h"
#include "wxserver.h"
#include "unit.h"

static char err[CRYPTO_ERRLEN];

/* ================================================================
** Vectors (docs/wechatpay-v3.md §11), copied verbatim
** ================================================================ */

#define TV1_MCHID        "1900007291"
#define TV1_SERIAL       "408B07E79B8269FEC3D5D3E6AB8ED163A6A380DB"
#define TV1_TS           1554208460
#define TV1_NONCE        "593BEC0C930BF1AFEB40B4A08C8FB242"
#define TV1C_BODY_PREFIX "{\"appid\":\"wxd678efh567hg6787\",\"mchid\":\"1230000109\""

#define TV2_TS     "1722850421"
#define TV2_NONCE  "d824f2e086d3c1df967785d13fcd22ef"
#define TV2_KEY_ID "PUB_KEY_ID_0000000000000024101100397200000006"
#define TV2_BODY   "{\"code_url\":\"weixin://wxpay/bizpayurl?pr=JyC91EIz1\"}"
#define TV2_SIG                                                                                                \
	"mfI1CPqvBrgcXfgXMFjdNIhBf27ACE2YyeWsWV9ZI7T7RU0vHvbQpu9Z32ogzc+k8ZC5n3kz7h70eWKjgqNdKQF0eRp8mVKlmfzM" \
	"LBVHbssB9jEZEDXThOX1XFqX7s7ymia1hoHQxQagPGzkdWxtlZPZ4ZPvr1RiqkgAu6Is8MZgXXrRoBKqjmSdrP1N7uxzJ/cjfSii" \
	"s9FiLjuADoqmQ1P7p2N876YPAol7Rn0+GswwAwxldbdLrmVSjfytfSBJFqTMHn4itojgxSWWN1byuckQt8hSTEv/Lg97QoeGniYP" \
	"17T80pJeQyL3b+295FPHSO2AtvCgyIbKMZ0BALilAA=="

#define TV3_SERIAL "D7CE59D1F522D701"
#define TV3B_TS    "1624523846"
#define TV3B_NONCE "EcZ9Cmy4Xyx1i6RlJQzLcCyEqDa26NBz"
#define TV3B_KEY   "testMchAPIv3Key0"
#define TV3B_CIPHERTEXT                                                                                        \
	"YDS3lKPaC4Y52Gf3uhft5qUBlIa8b428AWTtTauHQfQrRw+X1WpiuHIDy0vo1Vd6VEq67aVyqPdDYMkRVSDaZL3iZttevRMOoPKM" \
	"ifozg6XPWjIZumks/GpT48lI4NizyeaqLBokNebthah3o1H76qSlO9NkDjp9bzmKLEYYH9TEklFUpsvPqOTOcgSLgh21YJXYR7dE" \
	"BXFgRLiNIKRgO5JdXh1hccRUAlyVWxE54PXpnQ=="

#define TV4_KEY     "a7cde1ZJB1kG2e7VfTs3jQzaWizur8Gb"
#define TV4B_SERIAL "5DEA10EF55877E3CF6C33255C2E7DEFFF7E427EC"
#define TV4B_SHA256 "8693813ac0735cb54b6e67f25086a5924c103712255b8857049b8e502d564eb4"

#define TV1A_SIG                                                                                               \
	"jnks4dlrPw3ZX+ozVvSK39oa0t7OMBsg83BHAwd8BRdUFiVaQNTLTvci+wURgP1OQBbKYhFGvt7iqYpDSTQkp7Uq1sltaQKyncCy" \
	"rA1g88m5bsKERQfPyT0ahSwKTYJ1CAn9QiJuSJRq1QsQs07eehbU/k9BCS51jTyc1Jpsi2H77HF9f/BnjXAOP3/sPObg6V5Ee4Ez" \
	"wLox684hhuMuIwHo7D8KFk3LIHOKDcNI4It1aCXydFWNpNK+SG86VUDe5kwoDpw4Ulqfu9z8OFDGbDs9TCxEv8iqQzbpxOlEVoOe" \
	"2kalSYM5kApQb3nZcxdUtoE0liJGW3RGUNE0t4v01A=="

#define TV1B_SIG                                                                                               \
	"Lc9VXxmeonkdV8Xk9tmigQFLhl0vRWTerdmoRu01aAnYwIrD/5nsSwE1WlmZGLRlAFTNQ3QsMa0+VRDlJp1Wp5p0nO8EK68b5sJB" \
	"bjouxaFciIfq1zfDWWz+jqhcMoKXI1A6dPm1AW7D4d30WsMTNzp6g23OXakIsh9LO3lUmwvTuE0BY8ncf6tNGk4wKmvXwERd/Zpo" \
	"QY3MAVKz+Nakwc+2XBmzT66KcUehU5kr4IvGa/lEU5RZb/q00zP9VLdBhC/jQSX3X1UcJLCtEc4gTmib4tnmAT+bHF/e17ZAuxDN" \
	"cx6rqT8gNEXqaJGG+1OflMSTU2tpyG65G4dMKdFcoA=="

#define TV1C_SIG                                                                                               \
	"gEuexJ547PHFV77TQ6eiE4tphVYfWfUe1Wc2dBmVnoMYU2rl/M4zhw+b3vBhuMw6AC7pteNkryLA7UWU2h+umo0OdSuuLm1++O3N" \
	"ckQPCSfm6dypsjn4GYm84KMqXWFrhFmyxEwIdEJDr3w1UYfxOcu55OQupfLkrt/ZzuOspnliJFrPzGQFUk7lGqMMtpz3EfbDUNxn" \
	"VsHblORg3hVmuYNmbGWnS2ovU30Y2Q+iKFDxzkaXBk8LTy6HzvxizRo6Q+J4SVM7O0hKXfgo1QdI68kpzNULb3EVBXlhTyPUzhkH" \
	"zzLxECL1qHl3HH2hEv8++C+4wBlsagF3j/O6PABojA=="

#define TV1D_SIG                                                                                               \
	"C9PrZx8RTw7NF+e6SLmZxKgUBdXjH6EmUiu1i85Y6MApfWn4ueNpS4ED5no6uGObU0cfzTdaWyl6gAWDmyO2nG3MjHursadpzpNT" \
	"8d+HaZapKis+boTHwJLgZXHXtacjX4zx2lOk/AONrKCLkjXRnh/DDp/kNsmDNYEiu+d/SeVvr+cL0XkL0CibAphyQSLYkv7Fh9ue" \
	"l89ax3ZGgVnBx+/MaBLCrYc1UqyYBDqfWPhS9fZf2OSghWMFp9c5dm+ORc97XbgzSOwAl8dcfLSrL/Sb4+L57+JZiq0iURjMXWzA" \
	"D8FTUFYsJtJOYszRXJKLZNh4WGST39oplhhSdtxcoQ=="

#define TV1E_SIG                                                                                               \
	"oykQTJijZbHL+0QjYjOcwvovGxlU9LMcfVheUUdvr94DIzN02MBwwAwnBMsDqGTnXe0fr7kxFbXz3cd53e7Fx2VU8S9Lt3u1dCMQ" \
	"V+b5Ut6wpReTMBcfSVVXl4AbmLHxvyi1KhVg+O3KGL2BT4dEbuR93voru/p/9CS7gyMSviZiupf1cuaipyTdZ/1Nn4ESeuPX8H7p" \
	"2nwaxNLbS/rdLltvQGU1ecK0m4u5p4uXh1mdM1Kh8fymJHvkurOzVORoB3Y23g2RUFT0WwNBVxpp19bdAWsqIoouPjyY6tFGD9cn" \
	"QIVmIbm9oRDrOWmQMHubWlmjYL5UfP39pq1T+/hNpw=="

#define TV1F_SIG                                                                                               \
	"mI35pfNEQV6777ke/1T+LJLQDNTm7yeoUJH+j/adPGhmCCi0PbgkvYQTRcXH0uibcLVtvFLdGLpmoYO9FV6lBBsTAjuhh5YOvQi0" \
	"e2g3e0yytitiNET9FEuqM0pjnKfRW4K6LIZDdbWJv9KhZUx3DrJa5TL7OJ7VdADVivxVySIlPVKjGwuCXzuXSJes0UcILgWQUMyh" \
	"a5/3nYofuHtS7r+KYyMuxD+oJ9VM1Qdxk4UIG59CP5Y3wtYIFybyF3bdu1caHTRRX+DLyMXyYA/IrTmiW01c4RPjpHBX5Dk1sZyY" \
	"1zVsWNsvMHr2e1NTWtBxKJ+qk5N61J7caYoepHFaxw=="

#define TV1G_SIG                                                                                               \
	"JNEITrKv8DWEtBJGZtxG9ARa+eIZDIn1Ht3MQM5j9jP77TtHdfCqLjpwevfWftBuaGMfEdiu2sWYtLvnZIoLW3FH10OVCBzKncid" \
	"5xClTwav8JX+uDeGBBX8w64iHvFyuQj8ukZT+F1AFJii8hmXLD8Os90thnL0bfJYLo/4K237TH4dEd44NTH9ElFb/ykrvv9RBs+m" \
	"CNpy5IUe2Qxhba3d3RiMqhWK2sSr3tsVzQihJ0TPMnjWqoU2W5Y/v3rBFDmLhqe0ZW6A4vyvjmiR0v/8XEI25Py4PNyZXszsdl4j" \
	"0zLqelUJxGEMUBhYg1LIoDPjYMlA9HV1yKD6+JYZJA=="

#define TV1A_BODY                                                                                                                \
	"{\"appid\":\"wxd678efh567hg6787\",\"mchid\":\"1900007291\",\"description\":\"Image形象店-深圳腾大-QQ公仔\",\"" \
	"out_trade_no\":\"1217752501201407033233368018\",\"notify_url\":\"https://www.weixin.qq.com/wxpay/pay"                   \
	".php\",\"amount\":{\"total\":100,\"currency\":\"CNY\"},\"payer\":{\"openid\":\"oUpF8uMuAJO_M2pxb1Q9z"                   \
	"NjWeS6o\"}}"

#define TV1D_URL                                                                                               \
	"/v3/marketing/partnerships?limit=5&offset=10&authorized_data%3D%7B%22business_type%22%3A%22FAVOR_STO" \
	"CK%22%2C%20%22stock_id%22%3A%222433405%22%7D&partner%3D%7B%22type%22%3A%22APPID%22%2C%22appid%22%3A%" \
	"22wx4e1916a585d1f4e9%22%2C%22merchant_id%22%3A%222480029552%22%7D"

#define TV1E_BODY                                                                                              \
	"{ \"filename\": \"wechatpay_logo.png\", \"sha256\": \"d2973a45b1d528c21ebb77792ef3fcea40fa9a4e04a17e" \
	"35369102ba9c84c8b1\"}"

#define TV3B_SIG                                                                                               \
	"tJHIiIS9eB2hAYstmAmbbD3ZE5LiIm/Ug5tuL4fC0YOFRWIHV39UFIZXC0e9Wl6lBu6sKvkqDkzpqzBsVHyXFlbYZTOQrVdG4b6L" \
	"fTnK4mikv9++ixJMd3vTf2yCqvBkh98zs3Ds5zsYQakzbcwhmw4fMJs4nPLws28H0UW9FjDR//rxELLwXvV1VEA1IBLX70xptjL8" \
	"hrfUjEE8kkry6yNJTHZRU8CAc7qHli2Ng1V1qb9ARbK8A3ThmFmPQvRGrapI/jS2laKKgYUmfdEdkNO6B2Cke5e8VTxY406ArAmQ" \
	"90GAihDwIcb16TQMnzCMBoutnwZKNiKRACrFmtxw2Q=="

#define TV3B_BODY                                                                                                      \
	"{\"id\":\"3119dfba-e649-5eec-ab1e-3412bc4d2e17\",\"create_time\":\"2021-06-24T16:37:26+08:00\",\"res"         \
	"ource_type\":\"encrypt-resource\",\"event_type\":\"PAYSCORE.USER_OPEN_SERVICE\",\"summary\":\"签约成功\"" \
	",\"resource\":{\"original_type\":\"payscore\",\"algorithm\":\"AEAD_AES_256_GCM\",\"ciphertext\":\"YD"         \
	"S3lKPaC4Y52Gf3uhft5qUBlIa8b428AWTtTauHQfQrRw+X1WpiuHIDy0vo1Vd6VEq67aVyqPdDYMkRVSDaZL3iZttevRMOoPKMif"         \
	"ozg6XPWjIZumks/GpT48lI4NizyeaqLBokNebthah3o1H76qSlO9NkDjp9bzmKLEYYH9TEklFUpsvPqOTOcgSLgh21YJXYR7dEBX"         \
	"FgRLiNIKRgO5JdXh1hccRUAlyVWxE54PXpnQ==\",\"associated_data\":\"payscore\",\"nonce\":\"Kj7QIyUiYx1q\""         \
	"}}"

#define TV3B_PLAIN                                                                                             \
	"{\"mchid\":\"1234567890\",\"appid\":\"054aa7d7a2a54ab5898df65bd96f001c\",\"create_time\":\"2020-06-3" \
	"0T12:12:00+08:00\",\"out_contract_code\":\"21640bdbd08e473e828f3206a2741c6e\"}"

#define TV4B_CT                                                                                                \
	"Mr/AxbvY+WL9hKlD5nIa03LOMPpn5f+CWeNxE4ujl0f5gXZ9XLJ9CldkArCOTsbU62XgKnTc3YvRMZQ7wCmE2fzwmAenAySTYsPm" \
	"s72JhggPWfdqVxri9YD5wBYKn8Ck0Fc5JIiVw9WlN2oxHBz83mRVsjoTGC5+cX1CdYqKuZ8pkvi0aCJIq07ZC8MHoTowUz+4jYJy" \
	"9XeKqip83Z7BmUYxsePpNM+HtihBqTJIUYXJfX7Col5X0ACsApRoU9l6swfW/kzvqNpDJavhDBGasLrr5822+Fk5nVkcTi53f8Wb" \
	"ue7ODWjJxj1yhRYcxFCvXLtpYNB+Qa1aXtrBSdBdBI2p7o+6Imn+auHLBCzkrZqF/yd+d4vTn4tqHPLUj89XcHsMf96uBo3T/HQV" \
	"8LEDeIO+6YvOK9FrIDYsvp+imN4n/mnF7eJKo9mpN/QqWJiawrFpAmMMxFKBjIdpgMnVUl3Z11RcWKyfOJ3kcmItTWcnZFNyDgR9" \
	"cS0aU6QPlefa3uUW89uzBuHjcFdDl43yU3LE4qZnHLDcDgx4qt0OFCLiy51GXtEpyYs5k99YJBvKK+RyIs4Yc1/smBmClQUhxW+8" \
	"bsPNOcXfDvH2yX4YzESoO4TV0RqiCgnsSd4zIFyJPiMKIGzVHiw6Kg0eGCmB4mGHEEZCQ0eN3SSPO0QVjjtBYfgXDZfVHSaAB8Pj" \
	"WBVNFimoViZZQrwT6Ygo0LU0Dd8+F5aHFYr4OPHPslr3hrgutEYXDTv1vTA6ABJGqknJ9Y2vtyWpy7aIwxc0kQq/1ezjs+RMVL/L" \
	"RpGDnbx1/CGPDjZhYgZypKa55+PDhoaQxqkF3xCLz2DGoNHZYmFqxzAOsAK0vJZw4VcAk6ssbA6YIaMuiemEpxfLC9ZiXtRqsX9s" \
	"+GWjjtA8JywOFMO+NKZm9BH/E5YNg2DDD3sHG9Mciwn7yJ6sdf8h2lAWlEExAOeiBNyshOHAQ0/S+x1ncWNiqY+Uh5n0rtonvePV" \
	"2MsxVlEWR3AVHn1abcEWkzivd+G5kg7LYO0goqzGClcQfnFfZdO6KwcMXsBCnm9A1Bl4+k5LLokTIYH5/36SRIZ9j0CHGD77BQLE" \
	"7x8AlNsoFS2m263tLLq78TFqvZUTIZIQcVIl+NInscS3xQbA38qqFqutCWIwoF1azuJ7woiJyMvnS3xzIpNzP+rzJ8VDXxjLjpEU" \
	"BOC9WDs74+QMtsAdmh6g0KDclHEk8WJ4P2bnso4z3VCGoDT5X/0bS1C+jMZMKaOCNB21FZ08qgUHmKeDeg8ylENu+mh2Y/AaEDSG" \
	"kGBHIfFbhMYO3uRxhk9hldiHEnHgdkXiVAAUWk/IhtmGijibO/L76vB74Xpes973uK+2iFKgNBk8qTLLZZnuWbcMQuA6VsFULRb/" \
	"C+q9B21YuAWPMzvgBwr4EX2m/OpF5w8Q0HL7v1H5H0mIGJbrjnklUPoBYrw30W3uk7yF0KE6sfMukafFx0S9rBOL0RykGDPwC0lH" \
	"SNySkXDeM5XvDJ+dtHK+RDwhJR+azfrWAHGMtZcQ+YVamjWVmHxXM03j3GeCXgqae1upwHzkPL5OwojcQ5MQi3Kv/1xtwY0cRN/y" \
	"eZTOsXfujtqhkJj/Vltby4lnW4SCj4LjWQF19BY6zhzF4yybBA8bhhtoNP/zx8QkhHAkIROkK2ZVgfocCAPvfQ+vSrsIBO+L5cmg" \
	"6mzFn4g84lsHscgXnszIlzUrzx/4Tam0uwuS9J1gddZ0I0QUt9SJzfsoBCTU0OgNMUtXKS5HvgXe7abexMtFH5eulOsAuFZkQ5LY" \
	"Ja/m4yHFInXzL/t3hjdTi2NmxUufvYzwIyffRTu5vS9vjscARD9lUQDHFQ/xgWe1i8EkRlrSfjlXt00+4//h2bcJKyTBT3IXwvKN" \
	"suY29V9/vU3HkvWKZ99zpSlmcZRuBa1BHbyPEvc0NlqIIoKidxqUvOR64MzudHhAjgWFP+IXojfhS3Gj9OJhBL7s"

#define TV7_PLAIN                                                                                                      \
	"{\"mchid\":\"1900007291\",\"appid\":\"wxd678efh567hg6787\",\"out_trade_no\":\"1217752501201407033233"         \
	"368018\",\"transaction_id\":\"4200000000002104083200000488\",\"trade_type\":\"JSAPI\",\"trade_state\""        \
	":\"SUCCESS\",\"trade_state_desc\":\"支付成功\",\"bank_type\":\"OTHERS\",\"attach\":\"\",\"success_time\"" \
	":\"2018-06-08T10:34:56+08:00\",\"payer\":{\"openid\":\"oUpF8uMuAJO_M2pxb1Q9zNjWeS6o\"},\"amount\":{\""        \
	"total\":100,\"payer_total\":100,\"currency\":\"CNY\",\"payer_currency\":\"CNY\"}}"

#define TV7_CT                                                                                                 \
	"Y/YEfUnbjBvKjySKXZexHPQB7g82rJu0ma+GDqJJTec+dUFFEmUAr1GSevciGbQaxBCU90ZRIDRRP3k0Q8C6+HrJ5eTgbTaEORoE" \
	"2mN6L4zvytbkDjceOOVX+PcO8zfSqWelbBn/HTARoR/IJ8vaYvibDUCkftT9CMoL36cVDNRb98YeXU5jdSpKJPMSe4cQDRnfSbdO" \
	"moGrYDrGIuaq+H4d277delFR1T00HFNYZvZPuIms2CHx3sOaWHZLStwaZQMkwM7dTb2AZMK6kuek1ZhPBVPRl3r/wvKKx59r/dZS" \
	"ePKbSZ9QVvW4aaBMA4XS98rlzg37g5ULu4yU8oCYBGIeaCRgXYBPosViGRKHb1iX4E+f1TMlQHNVfMkPHUfUyyCLrmyth6ceFG8Z" \
	"VOYrX6+Srw3a0qrk7AG2pvIfy9WkbaOU+e4vTIhoO4k6LLQDSwsHgmXJV9kxFfLxrjEFktpQWAdJ2dFuMq1y5wPMTC/Svw+8b6V8" \
	"tqfVBsxifA0josngM+SrMoQylk0ucQWvxQsPbjPH4RfLLytfnph5UBo4QtXds8tskhaoaXq4yozg75w4OoaCIW4kNWcQ+CRK"

/* ================================================================
** Fixtures
** ================================================================ */

static EVP_PKEY *load_key(const char *name)
{
	EVP_PKEY *k = crypto_private_key_from_file(unit_vector(name), err, sizeof err);

	if (k == NULL)
		printf("#   cannot load %s: %s\n", name, err);
	return k;
}

static int add_cert_file(struct wxp_keyset *ks, const char *name, char *serial)
{
	struct crypto_buf pem;
	int rc;

	if (crypto_read_file(unit_vector(name), &pem, err, sizeof err) < 0)
		return -1;
	rc = wxp_keyset_add_cert(ks, (char *)pem.data, pem.len, serial, err, sizeof err);
	crypto_buf_free(&pem);
	return rc;
}

static int add_public_key_file(struct wxp_keyset *ks, const char *id, const char *name)
{
	struct crypto_buf pem;
	int rc;

	if (crypto_read_file(unit_vector(name), &pem, err, sizeof err) < 0)
		return -1;
	rc = wxp_keyset_add_public_key(ks, id, (char *)pem.data, pem.len, err, sizeof err);
	crypto_buf_free(&pem);
	return rc;
}

/* A key set as a gateway in mixed mode holds it: the TV3 certificate and the TV2 public key. */
static struct wxp_keyset *mixed_keyset(void)
{
	struct wxp_keyset *ks = wxp_keyset_new();

	CHECK(ks != NULL);
	CHECK_EQ_INT(add_cert_file(ks, "tv3_cert.pem", NULL), 0);
	CHECK_EQ_INT(add_public_key_file(ks, TV2_KEY_ID, "tv2_wechatpay_public_key.pem"), 0);
	return ks;
}

/* Signs a request with the TV1 key; returns the signature in a static buffer. */
static const char *tv1_sign(const char *method, const char *url, const char *body)
{
	static char out[400];
	EVP_PKEY *key = load_key("tv1_merchant_key.pem");
	struct crypto_buf sig = { NULL, 0 };

	out[0] = '\0';
	if (wxp_sign_request(key, method, url, TV1_TS, TV1_NONCE, body, strlen(body), &sig, err, sizeof err) == 0)
		snprintf(out, sizeof out, "%s", (char *)sig.data);
	crypto_buf_free(&sig);
	crypto_key_free(key);
	return out;
}

/* ================================================================
** Request signing (TV1)
** ================================================================ */

static void t_tv1_request_signatures(void)
{
	char tv1c_body[sizeof TV1A_BODY];
	struct crypto_buf msg;

	CHECK_EQ_STR(tv1_sign("POST", "/v3/pay/transactions/jsapi", TV1A_BODY), TV1A_SIG);
	CHECK_EQ_STR(tv1_sign("GET", "/v3/refund/domestic/refunds/123123123123", ""), TV1B_SIG);
	/* TV1c: the older doc's body differs only in mchid */
	memcpy(tv1c_body, TV1A_BODY, sizeof tv1c_body);
	memcpy(tv1c_body + strlen("{\"appid\":\"wxd678efh567hg6787\",\"mchid\":\""), "1230000109", 10);
	CHECK_EQ_MEM(tv1c_body, strlen(TV1C_BODY_PREFIX), TV1C_BODY_PREFIX, strlen(TV1C_BODY_PREFIX));
	CHECK_EQ_STR(tv1_sign("POST", "/v3/pay/transactions/jsapi", tv1c_body), TV1C_SIG);
	CHECK_EQ_STR(tv1_sign("GET", TV1D_URL, ""), TV1D_SIG);
	CHECK_EQ_STR(tv1_sign("POST", "/v3/marketing/favor/media/image-upload", TV1E_BODY), TV1E_SIG);
	CHECK_EQ_STR(tv1_sign("GET", "/v3/certificates", ""), TV1G_SIG);
	/* the signed string of TV1a is 372 bytes and ends in the body and a newline */
	CHECK_EQ_INT(wxp_request_message("POST", "/v3/pay/transactions/jsapi", TV1_TS, TV1_NONCE, TV1A_BODY,
	                                 strlen(TV1A_BODY), &msg, err, sizeof err),
	             0);
	CHECK_EQ_INT(msg.len, 372);
	CHECK(msg.data[msg.len - 1] == '\n' && msg.data[msg.len - 2] == '}');
	crypto_buf_free(&msg);
}

static void t_tv1b_full_authorization_header(void)
{
	EVP_PKEY *key = load_key("tv1_merchant_key.pem");
	struct crypto_buf h = { NULL, 0 };
	struct wxsrv_auth a;
	const char *doc_order =
	    "WECHATPAY2-SHA256-RSA2048 mchid=\"1900007291\",nonce_str=\"593BEC0C930BF1AFEB40B4A08C8FB242\","
	    "signature=\"" TV1B_SIG "\",timestamp=\"1554208460\",serial_no=\"" TV1_SERIAL "\"";

	CHECK_EQ_INT(wxp_build_authorization(key, TV1_MCHID, TV1_SERIAL, "GET",
	                                     "/v3/refund/domestic/refunds/123123123123", TV1_TS, TV1_NONCE, NULL, 0, &h,
	                                     err, sizeof err),
	             0);
	CHECK_EQ_STR(h.data,
	             "WECHATPAY2-SHA256-RSA2048 mchid=\"1900007291\",nonce_str=\"593BEC0C930BF1AFEB40B4A08C8FB242\","
	             "timestamp=\"1554208460\",serial_no=\"" TV1_SERIAL "\",signature=\"" TV1B_SIG "\"");
	/* the doc prints the pairs in another order: the parser takes any order */
	CHECK_EQ_INT(wxsrv_parse_authorization(doc_order, &a, err, sizeof err), 0);
	CHECK_EQ_STR(a.mchid, TV1_MCHID);
	CHECK_EQ_STR(a.nonce_str, TV1_NONCE);
	CHECK_EQ_STR(a.timestamp, "1554208460");
	CHECK_EQ_STR(a.serial_no, TV1_SERIAL);
	CHECK_EQ_STR(a.signature, TV1B_SIG);
	wxsrv_auth_free(&a);
	CHECK_EQ_INT(wxsrv_parse_authorization((char *)h.data, &a, err, sizeof err), 0);
	CHECK_EQ_STR(a.signature, TV1B_SIG);
	wxsrv_auth_free(&a);
	crypto_buf_free(&h);
	crypto_key_free(key);
}

static void t_authorization_parser_rejects_malformed_headers(void)
{
	static const char *const bad[] = {
		NULL,
		"",
		"WECHATPAY2-SM2-WITH-SM3 mchid=\"1\",nonce_str=\"n\",timestamp=\"1\",serial_no=\"s\",signature=\"x\"",
		"WECHATPAY2-SHA256-RSA2048 mchid=\"1\",nonce_str=\"n\",timestamp=\"1\",serial_no=\"s\"",
		"WECHATPAY2-SHA256-RSA2048 mchid=\"1\",mchid=\"2\",nonce_str=\"n\",timestamp=\"1\",serial_no=\"s\",signature=\"x\"",
		"WECHATPAY2-SHA256-RSA2048 mchid=\"1\",nonce_str=\"n\",timestamp=\"1\",serial_no=\"s\",signature=\"x\",extra=\"y\"",
		"WECHATPAY2-SHA256-RSA2048 mchid=\"1\",nonce_str=\"n\",timestamp=\"1\",serial_no=\"s\",signature=\"x",
		"WECHATPAY2-SHA256-RSA2048 mchid=\"1\";nonce_str=\"n\",timestamp=\"1\",serial_no=\"s\",signature=\"x\"",
		"WECHATPAY2-SHA256-RSA2048 mchid=1,nonce_str=\"n\",timestamp=\"1\",serial_no=\"s\",signature=\"x\"",
		"WECHATPAY2-SHA256-RSA2048 mchid=\"\",nonce_str=\"n\",timestamp=\"1\",serial_no=\"s\",signature=\"x\"",
		"WECHATPAY2-SHA256-RSA2048 mchid=\"1\",nonce_str=\"n\",timestamp=\"1\",serial_no=\"s\",signature=\"x\",",
	};
	struct wxsrv_auth a;
	size_t i;

	for (i = 0; i < sizeof bad / sizeof bad[0]; i++) {
		err[0] = '\0';
		CHECK_EQ_INT(wxsrv_parse_authorization(bad[i], &a, err, sizeof err), -1);
		CHECK(a.storage.data == NULL && a.mchid == NULL);
		CHECK(strncmp(err, "Authorization", 13) == 0);
	}
	CHECK_EQ_INT(
	    wxsrv_parse_authorization("WECHATPAY2-SHA256-RSA2048 mchid=\"1\", nonce_str=\"n\", timestamp=\"1\", "
	                              "serial_no=\"s\", signature=\"x\"",
	                              &a, err, sizeof err),
	    0);
	CHECK_EQ_STR(a.serial_no, "s");
	wxsrv_auth_free(&a);
}

static void t_signing_inputs_that_would_break_the_message_fail(void)
{
	EVP_PKEY *key = load_key("tv1_merchant_key.pem");
	struct crypto_buf out = { NULL, 0 };

	CHECK_EQ_INT(wxp_sign_request(key, "post", "/v3/x", 1, "n", "", 0, &out, err, sizeof err), -1);
	CHECK(strstr(err, "uppercase") != NULL);
	CHECK_EQ_INT(
	    wxp_sign_request(key, "GET", "https://api.mch.weixin.qq.com/v3/x", 1, "n", "", 0, &out, err, sizeof err),
	    -1);
	CHECK_EQ_INT(wxp_sign_request(key, "GET", "/v3/x y", 1, "n", "", 0, &out, err, sizeof err), -1);
	CHECK_EQ_INT(wxp_sign_request(key, "GET", "/v3/x\r\nX: y", 1, "n", "", 0, &out, err, sizeof err), -1);
	CHECK_EQ_INT(wxp_sign_request(key, "GET", "/v3/x", 1, "a\nb", "", 0, &out, err, sizeof err), -1);
	CHECK_EQ_INT(wxp_sign_request(key, "GET", "/v3/x", -1, "n", "", 0, &out, err, sizeof err), -1);
	CHECK_EQ_INT(wxp_authorization("190\"0", "n", 1, "S", "sig", &out, err, sizeof err), -1);
	CHECK_EQ_INT(wxp_authorization("1900", "n", 1, "", "sig", &out, err, sizeof err), -1);
	CHECK(out.data == NULL);
	crypto_key_free(key);
}

/* ================================================================
** Pay parameters (TV1f)
** ================================================================ */

static void t_tv1f_pay_sign(void)
{
	EVP_PKEY *key = load_key("tv1_merchant_key.pem");
	struct crypto_buf sig = { NULL, 0 };

	CHECK_EQ_INT(wxp_pay_sign(key, "wx2421b1c4370ec43b", TV1_TS, TV1_NONCE, "wx201410272009395522657a690389285100",
	                          &sig, err, sizeof err),
	             0);
	CHECK_EQ_STR(sig.data, TV1F_SIG);
	crypto_buf_free(&sig);
	CHECK_EQ_INT(wxp_pay_sign(key, "wx2421b1c4370ec43b", TV1_TS, TV1_NONCE, "wx20\n14", &sig, err, sizeof err), -1);
	crypto_key_free(key);
}

/* ================================================================
** Verification (TV2, TV3b)
** ================================================================ */

static struct wxp_headers tv2_headers(void)
{
	struct wxp_headers h = { TV2_TS, TV2_NONCE, TV2_SIG, TV2_KEY_ID, NULL };
	return h;
}

static struct wxp_headers tv3b_headers(void)
{
	struct wxp_headers h = { TV3B_TS, TV3B_NONCE, TV3B_SIG, TV3_SERIAL, "WECHATPAY2-SHA256-RSA2048" };
	return h;
}

static void t_tv2_response_verifies_with_public_key(void)
{
	struct wxp_keyset *ks = mixed_keyset();
	struct wxp_headers h = tv2_headers();

	CHECK_EQ_INT(wxp_verify(ks, &h, TV2_BODY, strlen(TV2_BODY), 1722850421, err, sizeof err), WXP_VERIFY_OK);
	h.signature_type = "";
	CHECK_EQ_INT(wxp_verify(ks, &h, TV2_BODY, strlen(TV2_BODY), 1722850421, err, sizeof err), WXP_VERIFY_OK);
	wxp_keyset_free(ks);
}

static void t_tv3b_notification_verifies_and_decrypts(void)
{
	struct wxp_keyset *ks = wxp_keyset_new();
	struct wxp_headers h = tv3b_headers();
	struct wxp_resource r = { "AEAD_AES_256_GCM", "Kj7QIyUiYx1q", "payscore", TV3B_CIPHERTEXT };
	char serial[CRYPTO_SERIAL_MAX];
	struct crypto_buf pt = { NULL, 0 };

	CHECK_EQ_INT(strlen(TV3B_BODY), 568);
	CHECK(strstr(TV3B_BODY, "\"ciphertext\":\"" TV3B_CIPHERTEXT "\"") != NULL);
	CHECK_EQ_INT(add_cert_file(ks, "tv3_cert.pem", serial), 0);
	CHECK_EQ_STR(serial, TV3_SERIAL);
	CHECK_EQ_INT(wxp_verify(ks, &h, TV3B_BODY, strlen(TV3B_BODY), 1624523846, err, sizeof err), WXP_VERIFY_OK);
	CHECK_EQ_INT(wxp_decrypt_resource(TV3B_KEY, strlen(TV3B_KEY), &r, &pt, err, sizeof err), WXP_DECRYPT_OK);
	CHECK_EQ_STR(pt.data, TV3B_PLAIN);
	crypto_buf_free(&pt);
	wxp_keyset_free(ks);
}

/*
** Flips every bit of every byte of one header value (or the body) and requires each
** altered message to be rejected. Returns the number of variants tried.
*/
static size_t flip_every_bit(const struct wxp_keyset *ks, struct wxp_headers h, int field, const char *body,
                             int64_t now)
{
	const char *orig = field == 0 ? h.timestamp : field == 1 ? h.nonce : field == 2 ? h.signature : body;
	size_t n = strlen(orig), i, tried = 0;
	char *copy = malloc(n + 1);
	int bit;

	for (i = 0; copy != NULL && i < n; i++) {
		for (bit = 0; bit < 8; bit++) {
			struct wxp_headers v = h;
			const char *b = body;
			memcpy(copy, orig, n + 1);
			copy[i] = (char)(copy[i] ^ (1 << bit));
			if (field == 0)
				v.timestamp = copy;
			else if (field == 1)
				v.nonce = copy;
			else if (field == 2)
				v.signature = copy;
			else
				b = copy;
			if (wxp_verify(ks, &v, b, n == strlen(body) && field == 3 ? n : strlen(body), now, err,
			               sizeof err) == WXP_VERIFY_OK) {
				printf("#   accepted with field %d byte %zu bit %d flipped\n", field, i, bit);
				unit_fail(__FILE__, __LINE__, "an altered message verified");
			}
			tried++;
		}
	}
	free(copy);
	return tried;
}

static void t_altering_any_bit_of_tv2_or_tv3b_is_rejected(void)
{
	struct wxp_keyset *ks = mixed_keyset();
	int field;

	for (field = 0; field < 4; field++) {
		CHECK(flip_every_bit(ks, tv2_headers(), field, TV2_BODY, 1722850421) > 0);
		CHECK(flip_every_bit(ks, tv3b_headers(), field, TV3B_BODY, 1624523846) > 0);
	}
	wxp_keyset_free(ks);
}

static void t_each_missing_header_is_reported(void)
{
	struct wxp_keyset *ks = mixed_keyset();
	const char *names[] = { "Wechatpay-Timestamp", "Wechatpay-Nonce", "Wechatpay-Signature", "Wechatpay-Serial" };
	int i, empty;

	for (i = 0; i < 4; i++) {
		for (empty = 0; empty < 2; empty++) {
			struct wxp_headers h = tv3b_headers();
			const char **slot = i == 0   ? &h.timestamp
			                    : i == 1 ? &h.nonce
			                    : i == 2 ? &h.signature
			                             : &h.serial;
			*slot = empty ? "" : NULL;
			CHECK_EQ_INT(wxp_verify(ks, &h, TV3B_BODY, strlen(TV3B_BODY), 1624523846, err, sizeof err),
			             WXP_VERIFY_MISSING_HEADER);
			CHECK(strstr(err, names[i]) != NULL);
		}
	}
	wxp_keyset_free(ks);
}

static void t_unsupported_signature_type_is_rejected(void)
{
	struct wxp_keyset *ks = mixed_keyset();
	struct wxp_headers h = tv3b_headers();

	h.signature_type = "WECHATPAY2-SM2-WITH-SM3";
	CHECK_EQ_INT(wxp_verify(ks, &h, TV3B_BODY, strlen(TV3B_BODY), 1624523846, err, sizeof err),
	             WXP_VERIFY_BAD_SIGNATURE_TYPE);
	h.signature_type = "wechatpay2-sha256-rsa2048";
	CHECK_EQ_INT(wxp_verify(ks, &h, TV3B_BODY, strlen(TV3B_BODY), 1624523846, err, sizeof err),
	             WXP_VERIFY_BAD_SIGNATURE_TYPE);
	CHECK_EQ_STR(wxp_verify_result_name(WXP_VERIFY_BAD_SIGNATURE_TYPE), "bad_signature_type");
	wxp_keyset_free(ks);
}

static void t_signature_probe_is_rejected_as_probe(void)
{
	struct wxp_keyset *ks = mixed_keyset();
	struct wxp_headers h = tv3b_headers();

	h.signature = "WECHATPAY/SIGNTEST/" TV3B_SIG;
	CHECK_EQ_INT(wxp_verify(ks, &h, TV3B_BODY, strlen(TV3B_BODY), 1624523846, err, sizeof err), WXP_VERIFY_PROBE);
	h.signature = "WECHATPAY/SIGNTEST/";
	CHECK_EQ_INT(wxp_verify(ks, &h, TV3B_BODY, strlen(TV3B_BODY), 1624523846, err, sizeof err), WXP_VERIFY_PROBE);
	CHECK_EQ_STR(wxp_verify_result_name(WXP_VERIFY_PROBE), "signature_probe");
	wxp_keyset_free(ks);
}

static void t_timestamp_window_is_under_300_seconds_both_ways(void)
{
	struct wxp_keyset *ks = mixed_keyset();
	struct wxp_headers h = tv2_headers(), n = tv3b_headers();
	const int64_t ts = 1722850421, nts = 1624523846;
	static const int64_t stale[] = { 300, -300, 301, -301, 3600, -86400, 1722850421 };
	size_t i;

	CHECK_EQ_INT(wxp_verify(ks, &h, TV2_BODY, strlen(TV2_BODY), ts + 299, err, sizeof err), WXP_VERIFY_OK);
	CHECK_EQ_INT(wxp_verify(ks, &h, TV2_BODY, strlen(TV2_BODY), ts - 299, err, sizeof err), WXP_VERIFY_OK);
	CHECK_EQ_INT(wxp_verify(ks, &n, TV3B_BODY, strlen(TV3B_BODY), nts + 299, err, sizeof err), WXP_VERIFY_OK);
	CHECK_EQ_INT(wxp_verify(ks, &n, TV3B_BODY, strlen(TV3B_BODY), nts - 299, err, sizeof err), WXP_VERIFY_OK);
	for (i = 0; i < sizeof stale / sizeof stale[0]; i++) {
		CHECK_EQ_INT(wxp_verify(ks, &h, TV2_BODY, strlen(TV2_BODY), ts + stale[i], err, sizeof err),
		             WXP_VERIFY_STALE);
		CHECK_EQ_INT(wxp_verify(ks, &n, TV3B_BODY, strlen(TV3B_BODY), nts + stale[i], err, sizeof err),
		             WXP_VERIFY_STALE);
	}
	CHECK(strstr(err, "300") != NULL);
	CHECK_EQ_INT(wxp_verify(ks, &h, TV2_BODY, strlen(TV2_BODY), INT64_MIN, err, sizeof err), WXP_VERIFY_STALE);
	CHECK_EQ_INT(wxp_verify(ks, &h, TV2_BODY, strlen(TV2_BODY), INT64_MAX, err, sizeof err), WXP_VERIFY_STALE);
	wxp_keyset_free(ks);
}

static void t_timestamp_must_be_digits(void)
{
	struct wxp_keyset *ks = mixed_keyset();
	static const char *const bad[] = { "17228504a1",  " 1722850421",  "1722850421 ", "+1722850421",
		                           "-1722850421", "1722850421.0", "0x66b0a175",  "1234567890123456789" };
	size_t i;

	for (i = 0; i < sizeof bad / sizeof bad[0]; i++) {
		struct wxp_headers h = tv2_headers();
		h.timestamp = bad[i];
		CHECK_EQ_INT(wxp_verify(ks, &h, TV2_BODY, strlen(TV2_BODY), 1722850421, err, sizeof err),
		             WXP_VERIFY_BAD_HEADER);
	}
	wxp_keyset_free(ks);
}

static void t_unknown_serial_is_rejected(void)
{
	struct wxp_keyset *ks = mixed_keyset();
	struct wxp_headers h = tv3b_headers();

	h.serial = "D7CE59D1F522D702";
	CHECK_EQ_INT(wxp_verify(ks, &h, TV3B_BODY, strlen(TV3B_BODY), 1624523846, err, sizeof err),
	             WXP_VERIFY_UNKNOWN_SERIAL);
	CHECK(strstr(err, "D7CE59D1F522D702") != NULL);
	h.serial = "d7ce59d1f522d701";
	CHECK_EQ_INT(wxp_verify(ks, &h, TV3B_BODY, strlen(TV3B_BODY), 1624523846, err, sizeof err),
	             WXP_VERIFY_UNKNOWN_SERIAL);
	/* a valid signature under the wrong key: the TV2 response presented as if signed by the TV3 cert */
	h = tv2_headers();
	h.serial = TV3_SERIAL;
	CHECK_EQ_INT(wxp_verify(ks, &h, TV2_BODY, strlen(TV2_BODY), 1722850421, err, sizeof err),
	             WXP_VERIFY_BAD_SIGNATURE);
	wxp_keyset_free(ks);
}

static void t_sandbox_response_signature_round_trips(void)
{
	EVP_PKEY *key = load_key("tv3_key.pem");
	struct wxp_keyset *ks = mixed_keyset();
	struct crypto_buf sig = { NULL, 0 };
	const char *body = "{\"prepay_id\":\"wx26112221580621e9b071c00d9e093b0000\"}";
	struct wxp_headers h = { "1700000000", "5K8264ILTKCH16CQ2502SI8ZNMTM67VS", NULL, TV3_SERIAL, NULL };

	CHECK_EQ_INT(wxsrv_sign_response(key, 1700000000, h.nonce, body, strlen(body), &sig, err, sizeof err), 0);
	h.signature = (char *)sig.data;
	CHECK_EQ_INT(wxp_verify(ks, &h, body, strlen(body), 1700000000, err, sizeof err), WXP_VERIFY_OK);
	CHECK_EQ_INT(wxp_verify(ks, &h, "", 0, 1700000000, err, sizeof err), WXP_VERIFY_BAD_SIGNATURE);
	crypto_buf_free(&sig);
	/* a 204 response signs an empty body: the last line is just "\n" */
	CHECK_EQ_INT(wxsrv_sign_response(key, 1700000000, h.nonce, NULL, 0, &sig, err, sizeof err), 0);
	h.signature = (char *)sig.data;
	CHECK_EQ_INT(wxp_verify(ks, &h, NULL, 0, 1700000000, err, sizeof err), WXP_VERIFY_OK);
	crypto_buf_free(&sig);
	wxp_keyset_free(ks);
	crypto_key_free(key);
}

/* ================================================================
** Key set
** ================================================================ */

static void t_keyset_holds_several_certificates_for_rotation(void)
{
	struct wxp_keyset *ks = mixed_keyset();
	EVP_PKEY *first;

	CHECK_EQ_INT(wxp_keyset_count(ks), 2);
	CHECK(wxp_keyset_lookup(ks, TV3_SERIAL) != NULL);
	CHECK(wxp_keyset_lookup(ks, TV2_KEY_ID) != NULL);
	CHECK(wxp_keyset_lookup(ks, "ABCDEF012") == NULL);
	CHECK_EQ_INT(add_cert_file(ks, "serial_leading_zero_cert.pem", NULL), 0);
	CHECK_EQ_INT(wxp_keyset_count(ks), 3);
	CHECK(wxp_keyset_lookup(ks, "ABCDEF012") != NULL);
	/* re-adding a certificate replaces it */
	first = wxp_keyset_lookup(ks, TV3_SERIAL);
	CHECK_EQ_INT(add_cert_file(ks, "tv3_cert.pem", NULL), 0);
	CHECK_EQ_INT(wxp_keyset_count(ks), 3);
	CHECK(wxp_keyset_lookup(ks, TV3_SERIAL) != NULL && wxp_keyset_lookup(ks, TV3_SERIAL) != first);
	/* a second public key replaces the first */
	CHECK_EQ_INT(
	    add_public_key_file(ks, "PUB_KEY_ID_0000000000000024101100397200000007", "tv2_wechatpay_public_key.pem"),
	    0);
	CHECK_EQ_INT(wxp_keyset_count(ks), 3);
	CHECK(wxp_keyset_lookup(ks, TV2_KEY_ID) == NULL);
	CHECK(wxp_keyset_lookup(ks, TV3_SERIAL) != NULL);
	wxp_keyset_free(ks);
	wxp_keyset_free(NULL);
}

static void t_keyset_refuses_bad_input_unchanged(void)
{
	struct wxp_keyset *ks = mixed_keyset();

	CHECK_EQ_INT(wxp_keyset_add_cert(ks, "junk", 4, NULL, err, sizeof err), -1);
	CHECK_EQ_INT(add_public_key_file(ks, "KEY_0001", "tv2_wechatpay_public_key.pem"), -1);
	CHECK(strstr(err, "PUB_KEY_ID_") != NULL);
	CHECK_EQ_INT(add_public_key_file(ks, "PUB_KEY_ID_", "tv2_wechatpay_public_key.pem"), -1);
	CHECK_EQ_INT(add_public_key_file(ks, "PUB_KEY_ID_1\"", "tv2_wechatpay_public_key.pem"), -1);
	CHECK_EQ_INT(wxp_keyset_add_public_key(ks, "PUB_KEY_ID_1", "junk", 4, err, sizeof err), -1);
	CHECK_EQ_INT(wxp_keyset_count(ks), 2);
	wxp_keyset_free(ks);
}

/* ================================================================
** Resources (TV3c, TV4a, TV4b, TV5, TV7)
** ================================================================ */

static enum wxp_decrypt_result decrypt(const char *key, const char *alg, const char *nonce, const char *aad,
                                       const char *ct, struct crypto_buf *pt)
{
	struct wxp_resource r = { alg, nonce, aad, ct };
	return wxp_decrypt_resource(key, strlen(key), &r, pt, err, sizeof err);
}

static void t_tv3c_and_tv4a_resources(void)
{
	struct crypto_buf pt = { NULL, 0 }, ct = { NULL, 0 };

	CHECK_EQ_INT(decrypt("testAPIv3Key0000", WXP_ALGORITHM, "wCq51qZv4Yfg", "Dl56FrqWQJF1t9LtC3vEUsniZKvbqdR8",
	                     "FsdXzxryWfKwvLJKf8LG/ToRPTRh8RN9wROC", &pt),
	             WXP_DECRYPT_OK);
	CHECK_EQ_STR(pt.data, "Hello World");
	crypto_buf_free(&pt);
	CHECK_EQ_INT(decrypt("testAPIv3Key1111", WXP_ALGORITHM, "wCq51qZv4Yfg", "Dl56FrqWQJF1t9LtC3vEUsniZKvbqdR8",
	                     "FsdXzxryWfKwvLJKf8LG/ToRPTRh8RN9wROC", &pt),
	             WXP_DECRYPT_BAD_TAG);
	CHECK(pt.data == NULL);
	CHECK_EQ_INT(decrypt("testAPIv3Key0000", WXP_ALGORITHM, "wCq51qZv4Yfg", "Dl56FrqWQJF1t9LtC3vEUsniZKvbqdR8",
	                     "SGVsbG8gV29ybGQK", &pt),
	             WXP_DECRYPT_BAD_INPUT);
	CHECK_EQ_INT(
	    wxsrv_encrypt_resource(TV4_KEY, 32, "uluk4a9R25RW", "associatedData", "message", 7, &ct, err, sizeof err),
	    0);
	CHECK_EQ_STR(ct.data, "ulwSiIajGClcvcOYvOQ7+l+0PAbzzwI=");
	crypto_buf_free(&ct);
	CHECK_EQ_INT(
	    decrypt(TV4_KEY, WXP_ALGORITHM, "uluk4a9R25RW", "associatedData", "ulwSiIajGClcvcOYvOQ7+l+0PAbzzwI=", &pt),
	    WXP_DECRYPT_OK);
	CHECK_EQ_STR(pt.data, "message");
	crypto_buf_free(&pt);
	CHECK_EQ_INT(decrypt(TV4_KEY, WXP_ALGORITHM, "uluk4a9R25RW", "bad-associatedData",
	                     "ulwSiIajGClcvcOYvOQ7+l+0PAbzzwI=", &pt),
	             WXP_DECRYPT_BAD_TAG);
	CHECK_EQ_INT(
	    decrypt(TV4_KEY, WXP_ALGORITHM, "bad-4a9R25RW", "associatedData", "ulwSiIajGClcvcOYvOQ7+l+0PAbzzwI=", &pt),
	    WXP_DECRYPT_BAD_TAG);
	CHECK_EQ_STR(wxp_decrypt_result_name(WXP_DECRYPT_BAD_TAG), "bad_tag");
}

static void t_resource_failures_have_distinct_reasons(void)
{
	struct crypto_buf pt = { NULL, 0 };
	struct wxp_resource r = { WXP_ALGORITHM, NULL, "a", "AAAA" };

	CHECK_EQ_INT(
	    decrypt(TV4_KEY, "AEAD_SM4_GCM", "uluk4a9R25RW", "associatedData", "ulwSiIajGClcvcOYvOQ7+l+0PAbzzwI=", &pt),
	    WXP_DECRYPT_UNSUPPORTED_ALGORITHM);
	CHECK_EQ_INT(decrypt(TV4_KEY, "aead_aes_256_gcm", "uluk4a9R25RW", "associatedData",
	                     "ulwSiIajGClcvcOYvOQ7+l+0PAbzzwI=", &pt),
	             WXP_DECRYPT_UNSUPPORTED_ALGORITHM);
	CHECK_EQ_INT(
	    decrypt(TV4_KEY, WXP_ALGORITHM, "uluk4a9R25RW", "associatedData", "ulwSiIajGClcvcOYvOQ7+l+0PAbzzwI", &pt),
	    WXP_DECRYPT_BAD_BASE64);
	CHECK_EQ_INT(
	    decrypt(TV4_KEY, WXP_ALGORITHM, "uluk4a9R25RW", "associatedData", "ulwSiIajGClcvc OYvOQ7+l+0PAbzzwI=", &pt),
	    WXP_DECRYPT_BAD_BASE64);
	CHECK_EQ_INT(decrypt("a7cde1ZJB1kG2e7VfTs3jQzaWizur8G", WXP_ALGORITHM, "uluk4a9R25RW", "associatedData",
	                     "ulwSiIajGClcvcOYvOQ7+l+0PAbzzwI=", &pt),
	             WXP_DECRYPT_BAD_KEY);
	CHECK(strstr(err, "32") != NULL && strstr(err, "a7cde") == NULL);
	CHECK_EQ_INT(decrypt(TV4_KEY, WXP_ALGORITHM, "", "associatedData", "ulwSiIajGClcvcOYvOQ7+l+0PAbzzwI=", &pt),
	             WXP_DECRYPT_BAD_INPUT);
	CHECK_EQ_INT(wxp_decrypt_resource(TV4_KEY, 32, &r, &pt, err, sizeof err), WXP_DECRYPT_BAD_INPUT);
	CHECK(pt.data == NULL);
}

static void t_tv4b_certificate_download_decrypts_to_the_tenpay_certificate(void)
{
	struct wxp_keyset *ks = wxp_keyset_new();
	struct crypto_buf pem = { NULL, 0 };
	unsigned char digest[CRYPTO_SHA256_LEN];
	char hexd[65], serial[CRYPTO_SERIAL_MAX];
	struct crypto_cert c;

	CHECK_EQ_INT(strlen(TV4B_CT), 1988);
	CHECK_EQ_INT(decrypt(TV4_KEY, WXP_ALGORITHM, "14b16c03dc1b", "certificate", TV4B_CT, &pem), WXP_DECRYPT_OK);
	CHECK_EQ_INT(pem.len, 1475);
	crypto_sha256(pem.data, pem.len, digest);
	crypto_hex_encode(digest, sizeof digest, 0, hexd, sizeof hexd);
	CHECK_EQ_STR(hexd, TV4B_SHA256);
	CHECK_EQ_INT(wxp_keyset_add_cert(ks, (char *)pem.data, pem.len, serial, err, sizeof err), 0);
	CHECK_EQ_STR(serial, TV4B_SERIAL);
	CHECK(wxp_keyset_lookup(ks, TV4B_SERIAL) != NULL);
	CHECK_EQ_INT(crypto_cert_from_pem((char *)pem.data, pem.len, &c, err, sizeof err), 0);
	CHECK_EQ_INT(c.not_before, 1695136558); /* 2023-09-19 15:15:58Z */
	CHECK_EQ_INT(c.not_after, 1852816558);  /* 2028-09-17 15:15:58Z */
	crypto_cert_clear(&c);
	crypto_buf_free(&pem);
	wxp_keyset_free(ks);
}

static void t_tv5_resource_with_16_byte_nonce(void)
{
	struct crypto_buf ct = { NULL, 0 }, pt = { NULL, 0 };
	const char *key = "0123456789abcdef0123456789abcdef";

	CHECK_EQ_INT(wxsrv_encrypt_resource(key, 32, "0123456789abcdef", "world", "hello", 5, &ct, err, sizeof err), 0);
	CHECK_EQ_STR(ct.data, "APoZlYpivU3HjbAiB4CvW1rAFr8J");
	crypto_buf_free(&ct);
	CHECK_EQ_INT(wxsrv_encrypt_resource(key, 32, "0123456789abcdef", NULL, "", 0, &ct, err, sizeof err), 0);
	CHECK_EQ_STR(ct.data, "GvpmmdtYwexXIPhySs9Tlg==");
	crypto_buf_free(&ct);
	CHECK_EQ_INT(decrypt(key, WXP_ALGORITHM, "0123456789abcdef", "world", "APoZlYpivU3HjbAiB4CvW1rAFr8J", &pt),
	             WXP_DECRYPT_OK);
	CHECK_EQ_STR(pt.data, "hello");
	crypto_buf_free(&pt);
}

static void t_tv7_payment_notification_resource(void)
{
	struct crypto_buf ct = { NULL, 0 }, pt = { NULL, 0 };

	CHECK_EQ_INT(wxsrv_encrypt_resource(TV4_KEY, 32, "fdasflkja484", "transaction", TV7_PLAIN, strlen(TV7_PLAIN),
	                                    &ct, err, sizeof err),
	             0);
	CHECK_EQ_STR(ct.data, TV7_CT);
	crypto_buf_free(&ct);
	CHECK_EQ_INT(decrypt(TV4_KEY, WXP_ALGORITHM, "fdasflkja484", "transaction", TV7_CT, &pt), WXP_DECRYPT_OK);
	CHECK_EQ_STR(pt.data, TV7_PLAIN);
	crypto_buf_free(&pt);
	CHECK_EQ_INT(decrypt(TV4_KEY, WXP_ALGORITHM, "fdasflkja484", "refund", TV7_CT, &pt), WXP_DECRYPT_BAD_TAG);
}

/* ================================================================
** Field checks
** ================================================================ */

static void t_field_checks(void)
{
	CHECK_EQ_INT(wxp_check_out_trade_no("1217752501201407033233368018", err, sizeof err), 0);
	CHECK_EQ_INT(wxp_check_out_trade_no("ab_-|*", err, sizeof err), 0);
	CHECK_EQ_INT(wxp_check_out_trade_no("12345678901234567890123456789012", err, sizeof err), 0);
	CHECK_EQ_INT(wxp_check_out_trade_no("123456789012345678901234567890123", err, sizeof err), -1);
	CHECK(strstr(err, "6 to 32") != NULL);
	CHECK_EQ_INT(wxp_check_out_trade_no("12345", err, sizeof err), -1);
	CHECK_EQ_INT(wxp_check_out_trade_no("1234 56", err, sizeof err), -1);
	CHECK_EQ_INT(wxp_check_out_trade_no("1234@56", err, sizeof err), -1);
	CHECK_EQ_INT(wxp_check_out_trade_no(NULL, err, sizeof err), -1);
	CHECK_EQ_INT(wxp_check_description("Image形象店-深圳腾大-QQ公仔", err, sizeof err), 0);
	CHECK_EQ_INT(wxp_check_description("", err, sizeof err), -1);
	CHECK_EQ_INT(wxp_check_description("\xff\xfe", err, sizeof err), -1);
	CHECK_EQ_INT(wxp_check_description("a\nb", err, sizeof err), -1);
	{
		char d[129];
		memset(d, 'x', 128);
		d[128] = '\0';
		CHECK_EQ_INT(wxp_check_description(d, err, sizeof err), -1);
		d[127] = '\0';
		CHECK_EQ_INT(wxp_check_description(d, err, sizeof err), 0);
	}
	CHECK_EQ_INT(wxp_check_amount(1, err, sizeof err), 0);
	CHECK_EQ_INT(wxp_check_amount(0, err, sizeof err), -1);
	CHECK_EQ_INT(wxp_check_amount(-100, err, sizeof err), -1);
	CHECK(strstr(err, "positive") != NULL);
}

static const struct unit_test tests[] = {
	{ "TV1a-e,g request signatures match the official examples bit for bit", t_tv1_request_signatures },
	{ "TV1b Authorization header is built, and the doc's header parses in any order",
	  t_tv1b_full_authorization_header },
	{ "malformed Authorization headers are refused", t_authorization_parser_rejects_malformed_headers },
	{ "signing inputs that could break the message or header fail",
	  t_signing_inputs_that_would_break_the_message_fail },
	{ "TV1f paySign for wx.requestPayment", t_tv1f_pay_sign },
	{ "TV2 response verifies with the WeChat Pay public key by PUB_KEY_ID",
	  t_tv2_response_verifies_with_public_key },
	{ "TV3b notification verifies by serial D7CE59D1F522D701 and decrypts exactly",
	  t_tv3b_notification_verifies_and_decrypts },
	{ "flipping any bit of timestamp, nonce, signature or body of TV2/TV3b is rejected",
	  t_altering_any_bit_of_tv2_or_tv3b_is_rejected },
	{ "each missing or empty Wechatpay header is reported by name", t_each_missing_header_is_reported },
	{ "a Signature-Type other than WECHATPAY2-SHA256-RSA2048 is rejected",
	  t_unsupported_signature_type_is_rejected },
	{ "a WECHATPAY/SIGNTEST/ probe is rejected as a probe", t_signature_probe_is_rejected_as_probe },
	{ "299 s of skew passes, 300 s and more either way is stale",
	  t_timestamp_window_is_under_300_seconds_both_ways },
	{ "a timestamp that is not plain digits is a bad header", t_timestamp_must_be_digits },
	{ "an unknown serial is rejected; the wrong key fails the signature", t_unknown_serial_is_rejected },
	{ "sandbox response signatures verify, including the empty 204 body",
	  t_sandbox_response_signature_round_trips },
	{ "the key set holds several certificates and a public key for rotation",
	  t_keyset_holds_several_certificates_for_rotation },
	{ "the key set refuses bad certificates, keys and ids and stays unchanged",
	  t_keyset_refuses_bad_input_unchanged },
	{ "TV3c and TV4a resources both ways; wrong key, AAD or nonce fails the tag", t_tv3c_and_tv4a_resources },
	{ "resource failures: algorithm, base64, key, input each have their reason",
	  t_resource_failures_have_distinct_reasons },
	{ "TV4b certificate download decrypts to the Tenpay cert 5DEA10EF...",
	  t_tv4b_certificate_download_decrypts_to_the_tenpay_certificate },
	{ "TV5 resource with a 16-byte nonce", t_tv5_resource_with_16_byte_nonce },
	{ "TV7 payment notification resource encrypts to the derived ciphertext", t_tv7_payment_notification_resource },
	{ "out_trade_no, description and amount checks", t_field_checks },
};

UNIT_MAIN(tests)

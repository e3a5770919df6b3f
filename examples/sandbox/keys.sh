#!/bin/sh
# keys.sh — create the WeChat Pay sandbox's TEST keys (only those missing) in a state directory.
#
# Usage: examples/sandbox/keys.sh [DIR]        (default: var/sandbox under the repository)
#
# Everything made here is a TEST key for the local sandbox: self-signed, random, never
# registered anywhere. Do not use them with the real WeChat Pay. Files are mode 0600.
#
#   merchant_key.pem  merchant_cert.pem  merchant_serial   the merchant API key pair (apiclient_key.pem);
#                                                          serial always 5E7A1C3B9D2F4A6C8E0B1D3F5A7C9E2B4D6F8A0C
#   platform_key.pem  platform_cert.pem  platform_serial   the "WeChat Pay platform certificate" (certificate mode)
#   pubkey_key.pem    pubkey.pem         pubkey_id         the "WeChat Pay public key" and its PUB_KEY_ID_… (public-key mode)
#   apiv3_key                                              32 alphanumeric bytes
#   app_secret                                             the mini program's AppSecret (jscode2session)
set -eu

root=$(cd "$(dirname "$0")/../.." && pwd)
dir=${1:-$root/var/sandbox}

command -v openssl >/dev/null 2>&1 || { echo "keys.sh: openssl is not installed (apt-get install -y openssl)" >&2; exit 1; }
umask 077
mkdir -p "$dir"
cd "$dir"

# serial FILE: the certificate serial as WeChat Pay writes it (uppercase hex, no leading zeros).
serial() {
	openssl x509 -in "$1" -noout -serial | sed 's/^serial=//; s/^0*//' | tr 'a-f' 'A-F'
}

# pair NAME SUBJECT [SERIAL]: NAME_key.pem + NAME_cert.pem (RSA-2048, self-signed, 5 years) + NAME_serial.
pair() {
	if [ ! -f "$1_key.pem" ] || [ ! -f "$1_cert.pem" ]; then
		openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$1_key.pem" 2>/dev/null
		openssl req -x509 -new -key "$1_key.pem" -subj "$2" -days 1825 ${3:+-set_serial "0x$3"} \
			-out "$1_cert.pem" 2>/dev/null
		rm -f "$1_serial"
	fi
	[ -f "$1_serial" ] || serial "$1_cert.pem" >"$1_serial"
}

# random CHARS N: N random characters out of the tr class CHARS.
random() {
	openssl rand 8192 | LC_ALL=C tr -dc "$1" | head -c "$2"
}

# The merchant certificate always gets this serial, so a gateway config can name it
# (wechatpay.merchant_serial) before the keys exist; the key itself is random.
MERCHANT_SERIAL=5E7A1C3B9D2F4A6C8E0B1D3F5A7C9E2B4D6F8A0C
pair merchant "/CN=paygate sandbox TEST merchant/O=paygate TEST ONLY" "$MERCHANT_SERIAL"
pair platform "/CN=paygate sandbox TEST platform (Tenpay.com sign stand-in)/O=paygate TEST ONLY"

if [ ! -f pubkey_key.pem ]; then
	openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out pubkey_key.pem 2>/dev/null
	rm -f pubkey.pem pubkey_id
fi
[ -f pubkey.pem ] || openssl pkey -in pubkey_key.pem -pubout -out pubkey.pem 2>/dev/null
[ -f pubkey_id ] || printf 'PUB_KEY_ID_01%s' "$(random 0-9 32)" >pubkey_id

while [ ! -s apiv3_key ] || [ "$(wc -c <apiv3_key)" -ne 32 ]; do random A-Za-z0-9 32 >apiv3_key; done
[ -s app_secret ] || random 0-9a-f 32 >app_secret

[ -f README ] || cat >README <<'EOF'
TEST KEYS made by examples/sandbox/keys.sh for the local WeChat Pay sandbox only.
They are not WeChat Pay's keys and must never be used with api.mch.weixin.qq.com.
EOF
chmod 600 ./*
echo "$dir"

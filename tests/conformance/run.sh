#!/bin/sh
# run.sh — installs wechatpay-node-v3 into tests/conformance/node_modules and runs the conformance tests.
#
# Usage: tests/conformance/run.sh            (from anywhere)
#   WXP_TOOL=path/to/wxp_tool  use an already built tool; otherwise it is built here
#                              into a temporary directory with gcc.
set -eu

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)

for tool in node npm openssl; do
    if ! command -v "$tool" >/dev/null 2>&1; then
        echo "conformance: '$tool' is not installed (apt-get install -y nodejs npm openssl)" >&2
        exit 1
    fi
done

cd "$here"
if [ ! -f node_modules/wechatpay-node-v3/package.json ]; then
    if [ -f package-lock.json ]; then install=ci; else install=install; fi
    if ! npm "$install" --no-audit --no-fund --loglevel=error; then
        echo "conformance: could not install wechatpay-node-v3 from the npm registry (npm $install failed);" >&2
        echo "conformance: check network access to the registry, then run $0 again" >&2
        exit 1
    fi
fi

tmp=
if [ -z "${WXP_TOOL:-}" ]; then
    tmp=$(mktemp -d)
    trap 'rm -rf "$tmp"' EXIT INT TERM
    WXP_TOOL="$tmp/wxp_tool"
    # shellcheck disable=SC2046
    gcc -std=c11 -Wall -Wextra -O2 -o "$WXP_TOOL" \
        "$root/tests/tools/wxp_tool.c" "$root/engine/wechatpay.c" "$root/engine/crypto.c" \
        $(pkg-config --cflags --libs libcrypto)
fi
export WXP_TOOL

# sandbox.test.js starts the WeChat Pay sandbox (examples/sandbox) with PAYGATE_BIN
# (default build/paygate, so run `make` first) and drives it with the SDK's own client.
PAYGATE_BIN=${PAYGATE_BIN:-$root/build/paygate}
export PAYGATE_BIN
node --test conformance.test.js sandbox.test.js

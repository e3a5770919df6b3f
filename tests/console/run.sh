#!/bin/sh
# run.sh — the web console in a real browser: Debian's chromium driven by puppeteer-core (npm).
# Installs puppeteer-core into tests/console/node_modules when missing; make test installs
# chromium (apt-get) when missing. Screenshots go to build/test-logs/console-*.png.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
cd "$here"
CHROMIUM=${CHROMIUM:-$(command -v chromium || true)}
if [ -z "$CHROMIUM" ]; then
	echo "console: chromium is not installed (apt-get install -y chromium; make test does it as root)" >&2
	exit 1
fi
if [ ! -f node_modules/puppeteer-core/package.json ]; then
	if ! npm ci --no-audit --no-fund --loglevel=error; then
		echo "console: could not install puppeteer-core from the npm registry (npm ci failed)" >&2
		exit 1
	fi
fi
CHROMIUM="$CHROMIUM" exec node --test --test-reporter=tap --test-timeout=120000 console.test.mjs

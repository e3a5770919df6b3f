#!/usr/bin/env bash
# tests/pg/run.sh — the PostgreSQL specs alone, against a private cluster started for the run:
#
#   tests/pg/run.sh                              # every spec that runs on PostgreSQL
#   tests/pg/run.sh tests/e2e/shop.test.mjs      # chosen ones
#   tests/pg/run.sh --test-name-pattern='on postgresql' tests/e2e/jobs.test.mjs   # options go to node --test
#
# The cluster (tests/pg/cluster.sh) lives in its own directory and is stopped by its PID at
# the end, whatever happens. Build first (make all).
set -u
cd "$(dirname "$0")/../.."
BUILD=${BUILD:-build}
export PAYGATE_BIN="${PAYGATE_BIN:-$PWD/$BUILD/paygate}"
export PAYGATE_SANDBOX_BIN="${PAYGATE_SANDBOX_BIN:-$PWD/$BUILD/paygate-sandbox}"
dir=$(mktemp -d /tmp/paygate-pg-run.XXXXXX)
trap 'tests/pg/cluster.sh stop "$dir"' EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
PAYGATE_TEST_PG=$(tests/pg/cluster.sh start "$dir") || exit 1
export PAYGATE_TEST_PG
echo "private PostgreSQL at $PAYGATE_TEST_PG"
opts=() files=()
for a in "$@"; do
	case "$a" in -*) opts+=("$a") ;; *) files+=("$a") ;; esac
done
if [ ${#files[@]} -eq 0 ]; then
	files=(tests/e2e/pg.test.mjs tests/e2e/postgresql.test.mjs tests/e2e/shop.test.mjs tests/e2e/jobs.test.mjs tests/e2e/hooks.test.mjs
		tests/e2e/miniprogram.test.mjs tests/e2e/nodes.test.mjs)
fi
node --test --test-reporter=spec --test-timeout=120000 "${opts[@]}" "${files[@]}"

#!/bin/sh
# run-demo.sh — the demo shop on 127.0.0.1:8080 against the local WeChat Pay sandbox on 127.0.0.1:8090.
#
# Makes the sandbox's TEST keys if missing (var/sandbox/), starts the sandbox and the gateway
# (build/paygate-sandbox and build/paygate, each with its own config), prints a purchase you
# can paste, and stops both on Ctrl-C. Nothing talks to the real WeChat; everything listens on 127.0.0.1 only.
set -eu

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
BIN=${PAYGATE_BIN:-$root/build/paygate}
SANDBOX_BIN=${PAYGATE_SANDBOX_BIN:-$root/build/paygate-sandbox}
SANDBOX_CONF=examples/sandbox/sandbox.conf.lua
GATEWAY_CONF=${GATEWAY_CONF:-examples/paygate.conf.lua}
S=http://127.0.0.1:8090
G=http://127.0.0.1:8080

for b in "$BIN" "$SANDBOX_BIN"; do [ -x "$b" ] || { echo "run-demo: $b is missing; run make first" >&2; exit 1; }; done
command -v curl >/dev/null 2>&1 || { echo "run-demo: curl is not installed (apt-get install -y curl)" >&2; exit 1; }
examples/sandbox/keys.sh var/sandbox >/dev/null
mkdir -p var

sandbox_pid=
gateway_pid=
stop() {
	trap - INT TERM EXIT
	for pid in $gateway_pid $sandbox_pid; do
		kill "$pid" 2>/dev/null || true
	done
	for pid in $gateway_pid $sandbox_pid; do
		wait "$pid" 2>/dev/null || true
	done
	echo "run-demo: stopped"
}
trap 'stop; exit 0' INT TERM
trap stop EXIT

# wait_up NAME URL PID: until URL/healthz answers, or fail if the process died.
wait_up() {
	i=0
	until curl -fs -o /dev/null "$2/healthz"; do
		kill -0 "$3" 2>/dev/null || { echo "run-demo: the $1 exited; see var/$1.log" >&2; exit 1; }
		i=$((i + 1))
		[ "$i" -lt 100 ] || { echo "run-demo: the $1 did not start in 10 s; see var/$1.log" >&2; exit 1; }
		sleep 0.1
	done
}

# Each in a session of its own: Ctrl-C reaches this script only, which then stops both (the
# daemons would otherwise take the terminal's SIGINT themselves and look as if they had died).
# (setsid runs the program itself in this process, so $! stays its pid.)
SETSID=$(command -v setsid || true)
$SETSID "$SANDBOX_BIN" --config "$SANDBOX_CONF" >var/sandbox.log 2>&1 &
sandbox_pid=$!
wait_up sandbox "$S" "$sandbox_pid"
# The sandbox keeps its faults in its database: a demo starts without any.
curl -fs -X DELETE "$S/sandbox/faults" >/dev/null || echo "run-demo: could not clear the sandbox's faults; see $S/sandbox/faults" >&2
$SETSID "$BIN" --config "$GATEWAY_CONF" >var/gateway.log 2>&1 &
gateway_pid=$!
wait_up gateway "$G" "$gateway_pid"

cat <<EOF

  WeChat Pay sandbox  $S   (pid $sandbox_pid, log var/sandbox.log, TEST keys in var/sandbox/)
  paygate demo shop   $G   (pid $gateway_pid, log var/gateway.log)
  operator console    $G/admin/   (the demo trusts loopback: admin.trust_loopback = true)
  sandbox faults      none (cleared at start)

A purchase, end to end (paste into another shell):

  S=$S G=$G OPENID=oDemoUser00000000000000000001
  CODE=\$(curl -s -X POST \$S/sandbox/login-code -d "{\"openid\":\"\$OPENID\"}" | sed -n 's/.*"code":"\([^"]*\)".*/\1/p')
  TOKEN=\$(curl -s -X POST \$G/api/login -H 'Content-Type: application/json' -d "{\"code\":\"\$CODE\"}" | sed -n 's/.*"token":"\([^"]*\)".*/\1/p')
  curl -s \$G/api/products; echo
  ORDER=\$(curl -s -X POST \$G/api/orders -H "Authorization: Bearer \$TOKEN" -H 'Content-Type: application/json' \\
            -d '{"items":[{"product_id":1,"qty":1}]}' | sed -n 's/.*"order_no":"\([^"]*\)".*/\1/p')
  PAY=\$(curl -s -X POST \$G/api/orders/\$ORDER/pay -H "Authorization: Bearer \$TOKEN")
  PREPAY=\$(echo "\$PAY" | sed -n 's/.*"package":"prepay_id=\([^"]*\)".*/\1/p')
  echo "\$PAY"
  curl -s -X POST \$S/sandbox/pay -d "{\"prepay_id\":\"\$PREPAY\",\"openid\":\"\$OPENID\",\"pay_params\":\$PAY}"; echo
  sleep 1; curl -s \$G/api/orders/\$ORDER -H "Authorization: Bearer \$TOKEN"; echo

What the sandbox did:  curl -s \$S/sandbox/orders/\$ORDER    curl -s \$S/sandbox/notifications
Break it on purpose:   curl -s -X POST \$S/sandbox/faults -d '{"notify_drop":{"count":1},"probe":{"rate":0.1}}'
  then buy again: the payment's notification is never sent, yet the order still becomes PAID
  (the gateway asks WeChat itself: GET /api/orders/{no} at once, the reconciler after a minute);
  one WeChat answer in ten is a signature probe, which paygate refuses: a job asks again by
  itself, a pay request answers 502 upstream_error and the mini program tries again.
  The console's timeline shows "paid via status_query". Heal it: curl -s -X DELETE \$S/sandbox/faults

Ctrl-C stops both.
EOF

while :; do
	kill -0 "$sandbox_pid" 2>/dev/null || { echo "run-demo: the sandbox exited; see var/sandbox.log" >&2; exit 1; }
	kill -0 "$gateway_pid" 2>/dev/null || { echo "run-demo: the gateway exited; see var/gateway.log" >&2; exit 1; }
	sleep 1
done

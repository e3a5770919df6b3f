# tests/bench/lib.sh — what the benchmark scripts share (sourced): core pinning and server start-up.

# With two or more cores, the servers get one core and wrk another, so that where the
# scheduler happens to put them does not decide the result.
PIN_SERVER=""; PIN_WRK=""
if command -v taskset >/dev/null && [ "$(nproc)" -ge 2 ]; then
	PIN_SERVER="taskset -c 1"; PIN_WRK="taskset -c 0"
fi

port_of() { # wait for "listening on http://127.0.0.1:PORT" in $1; prints PORT
	for _ in $(seq 200); do
		p=$(grep -o '127\.0\.0\.1:[0-9]*' "$1" 2>/dev/null | head -1 | cut -d: -f2)
		[ -n "$p" ] && { echo "$p"; return; }
		sleep 0.05
	done
	echo "server did not start: $(cat "$1")" >&2; exit 1
}

worker_pid() { # PORT: the pid of the first worker of the paygate on PORT (its master only supervises)
	curl -sf "http://127.0.0.1:$1/healthz" | grep -o '"pid":[0-9]*' | head -1 | cut -d: -f2
}

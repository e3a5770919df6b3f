#!/usr/bin/env bash
# tests/pg/cluster.sh — a private PostgreSQL cluster for the tests, in a directory of its own.
#
#   tests/pg/cluster.sh start DIR   # initdb + start; prints postgresql://postgres@127.0.0.1:PORT/postgres
#   tests/pg/cluster.sh stop DIR    # stop it by the PID in DIR/data/postmaster.pid, then remove DIR
#
# The server listens on 127.0.0.1 only, on a free port; its unix socket is in DIR; only
# 127.0.0.1 is trusted (no password), the socket takes the postgres user by peer. It runs as
# the `postgres` user (initdb and postgres refuse root) from Debian's postgresql-N
# (/usr/lib/postgresql/N/bin, the newest N; PG_BIN overrides). A DIR left by a killed run
# (a server still running in it, or only its files) is stopped and removed by `start`.
# fsync and synchronous_commit stay on: the specs test durability, and a commit must be on
# disk before paygate answers.
set -euo pipefail

usage() { echo "usage: $0 start|stop DIR" >&2; exit 2; }
[ $# -eq 2 ] || usage
cmd=$1
dir=$2
case "$dir" in /*) ;; *) dir="$PWD/$dir" ;; esac
case "$dir" in /|/tmp|/tmp/) echo "cluster.sh: refusing DIR $dir" >&2; exit 2 ;; esac

as_pg() { runuser -u postgres -- "$@"; }

# The postmaster PID recorded in DIR, if that process is still a postgres serving DIR/data.
live_pid() {
	local pidfile="$dir/data/postmaster.pid" pid
	[ -r "$pidfile" ] || return 1
	pid=$(head -1 "$pidfile" 2>/dev/null || true)
	[[ "$pid" =~ ^[0-9]+$ ]] || return 1
	[ -r "/proc/$pid/cmdline" ] || return 1
	# A PID from a killed run may have been reused by another process: check it is ours.
	tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q "postgres.*$dir/data" || return 1
	echo "$pid"
}

stop_cluster() {
	local pid kids i
	if pid=$(live_pid); then
		kids=$(ps -o pid= --ppid "$pid" 2>/dev/null | tr -d ' ' || true)
		# SIGINT is PostgreSQL's fast shutdown (pg_ctl -m fast): roll back open transactions,
		# close the connections, checkpoint, exit. SIGTERM would wait for every client to leave.
		kill -INT "$pid" 2>/dev/null || true
		for ((i = 0; i < 150; i++)); do
			kill -0 "$pid" 2>/dev/null || break
			sleep 0.1
		done
		if kill -0 "$pid" 2>/dev/null; then
			echo "cluster.sh: postgres $pid did not stop in 15 s; SIGKILL" >&2
			kill -KILL "$pid" 2>/dev/null || true
			for k in $kids; do kill -KILL "$k" 2>/dev/null || true; done
			for ((i = 0; i < 50; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
		fi
	fi
	rm -rf "$dir"
}

pg_bin() {
	if [ -n "${PG_BIN:-}" ]; then echo "$PG_BIN"; return; fi
	local d
	d=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
	[ -n "$d" ] && [ -x "$d/initdb" ] || { echo "cluster.sh: no /usr/lib/postgresql/*/bin/initdb (apt-get install postgresql)" >&2; exit 1; }
	echo "$d"
}

# A port nothing listens on now (the server's start is the real test: retried on a clash).
pick_port() {
	local p used
	used=$(ss -Htln 2>/dev/null | awk '{print $4}' | sed 's/.*://' || true)
	for _ in $(seq 1 100); do
		p=$((20000 + RANDOM % 30000))
		grep -qx "$p" <<<"$used" || { echo "$p"; return; }
	done
	echo $((20000 + RANDOM % 30000))
}

start_cluster() {
	local bin port url i
	bin=$(pg_bin)
	id postgres >/dev/null 2>&1 || { echo "cluster.sh: no postgres user (apt-get install postgresql)" >&2; exit 1; }
	stop_cluster   # whatever a killed run left here
	mkdir -p "$dir"
	chown postgres: "$dir"
	chmod 700 "$dir"
	as_pg "$bin/initdb" -D "$dir/data" -U postgres -A peer --auth-host=reject -E UTF8 --locale=C.UTF-8 \
		--no-instructions >"$dir/initdb.log" 2>&1 || {
		echo "cluster.sh: initdb failed:" >&2; cat "$dir/initdb.log" >&2; exit 1; }
	cat >"$dir/data/pg_hba.conf" <<-'EOF'
		# The tests' private cluster: the postgres user over the unix socket (peer), anyone from
		# 127.0.0.1 without a password; nothing else.
		local all postgres peer
		host  all all 127.0.0.1/32 trust
	EOF
	# Sized for the tests: a few gateways at once, each with workers × pool connections, plus
	# psql. Serializable transactions take predicate locks; the default pool of them is per
	# connection and ample. Durability settings are left at their defaults (on).
	cat >>"$dir/data/postgresql.conf" <<-EOF

		# tests/pg/cluster.sh
		listen_addresses = '127.0.0.1'
		unix_socket_directories = '$dir'
		max_connections = 200
		shared_buffers = 64MB
		max_wal_size = 1GB
		fsync = on
		synchronous_commit = on
		log_destination = 'stderr'
		log_line_prefix = '%m [%p] %d '
		log_min_messages = warning
		log_min_error_statement = error
	EOF
	chown postgres: "$dir/data/pg_hba.conf" "$dir/data/postgresql.conf"
	for ((i = 0; i < 5; i++)); do
		port=$(pick_port)
		if as_pg "$bin/pg_ctl" -D "$dir/data" -l "$dir/postgres.log" -o "-p $port" -w -t 60 start >"$dir/pg_ctl.log" 2>&1; then
			url="postgresql://postgres@127.0.0.1:$port/postgres"
			echo "$url"
			return 0
		fi
		grep -q "could not bind\|already in use" "$dir/postgres.log" 2>/dev/null || break
	done
	echo "cluster.sh: postgres did not start:" >&2
	cat "$dir/pg_ctl.log" "$dir/postgres.log" >&2 2>/dev/null || true
	stop_cluster
	exit 1
}

case "$cmd" in
start) start_cluster ;;
stop) stop_cluster ;;
*) usage ;;
esac

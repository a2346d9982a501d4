#!/usr/bin/env bash
# A local cluster beside the machine's own services (which it leaves alone), made of the engines'
# own clustering and replication:
# - RabbitMQ: three more nodes, rabbit1..3@localhost on AMQP ports 5681..5683, joined into one
#   cluster, each with its own node name, config, distribution port and data directory;
# - PostgreSQL: a primary (port 5441) and a streaming replica made with pg_basebackup (5442),
#   every commit waiting for the replica (synchronous_commit = on);
# - HAProxy on 5440: the stable database address, the way a managed service or an operator's
#   -rw Service is one. It sends connections to the primary while it answers, otherwise to the
#   replica; `failover` stops the primary and promotes the replica, so the address moves.
#   HAProxy also balances 127.0.0.1:8080 over the gateways on 8081 and 8082 that answer
#   /healthz (what a Service or a load balancer does): the providers' notifications go there.
#
#   deploy/cluster.sh up | down | status | env
#   deploy/cluster.sh stop-node N | start-node N   (N = 1..3; the node's app only)
#   deploy/cluster.sh failover
#
# State lives in $CLUSTER_DIR (default /tmp/memberline-cluster). Run as root (it runs each engine
# as its own user) on a machine of this kind: Debian's rabbitmq-server and PostgreSQL 15;
# HAProxy is installed from Debian's packages when missing.
set -euo pipefail

DIR=${CLUSTER_DIR:-/tmp/memberline-cluster}
PGBIN=${PGBIN:-$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)}
AMQP_PORTS=(5681 5682 5683)
DIST_PORTS=(25681 25682 25683)
PG_PRIMARY=5441
PG_REPLICA=5442
PG_ADDRESS=5440
GATEWAYS=8080

say() { echo "cluster: $*" >&2; }
as_rabbit() { runuser -u rabbitmq -- env HOME=/var/lib/rabbitmq "$@"; }
as_postgres() { runuser -u postgres -- "$@"; }
ctl() { as_rabbit rabbitmqctl -n "rabbit$1@localhost" "${@:2}"; }

node_env() {
	local n=$1 i=$(($1 - 1)) base="$DIR/rabbit$1"
	echo RABBITMQ_NODENAME="rabbit$n@localhost" \
		RABBITMQ_CONFIG_FILE="$base/rabbitmq" \
		RABBITMQ_DIST_PORT="${DIST_PORTS[$i]}" \
		RABBITMQ_MNESIA_BASE="$base/mnesia" \
		RABBITMQ_LOG_BASE="$base/log" \
		RABBITMQ_ENABLED_PLUGINS_FILE="$base/enabled_plugins" \
		RABBITMQ_PID_FILE="$base/pid"
}

start_rabbit_node() {
	local n=$1 i=$(($1 - 1)) base="$DIR/rabbit$1"
	mkdir -p "$base/mnesia" "$base/log"
	# Debian's own config pins 5672: each node needs a file of its own. No management plugin.
	printf 'listeners.tcp.local = 127.0.0.1:%s\nloopback_users = none\n' "${AMQP_PORTS[$i]}" \
		>"$base/rabbitmq.conf"
	echo '[].' >"$base/enabled_plugins"
	chown -R rabbitmq:rabbitmq "$base"
	# shellcheck disable=SC2046
	as_rabbit env $(node_env "$n") /usr/lib/rabbitmq/bin/rabbitmq-server -detached
	as_rabbit env $(node_env "$n") /usr/lib/rabbitmq/bin/rabbitmqctl -n "rabbit$n@localhost" \
		wait --timeout 60 "$base/pid" >/dev/null
}

rabbit_up() {
	for n in 1 2 3; do
		if ctl "$n" status >/dev/null 2>&1; then continue; fi
		say "starting rabbit$n@localhost on ${AMQP_PORTS[$((n - 1))]}"
		start_rabbit_node "$n"
	done
	for n in 2 3; do
		if ctl "$n" cluster_status 2>/dev/null | grep -q "rabbit1@localhost"; then continue; fi
		say "joining rabbit$n to rabbit1"
		ctl "$n" stop_app >/dev/null
		ctl "$n" join_cluster rabbit1@localhost >/dev/null
		ctl "$n" start_app >/dev/null
	done
}

pg_conf() {
	cat <<-EOF
		port = $1
		listen_addresses = '127.0.0.1'
		unix_socket_directories = '$DIR'
		wal_level = replica
		max_wal_senders = 5
		max_connections = 300
		synchronous_commit = on
	EOF
}

pg_up() {
	mkdir -p "$DIR"
	chown postgres:postgres "$DIR"
	if [ ! -d "$DIR/pg-primary" ]; then
		say "creating the PostgreSQL primary on $PG_PRIMARY"
		as_postgres "$PGBIN/initdb" -D "$DIR/pg-primary" -A trust -U postgres >/dev/null
		{
			pg_conf $PG_PRIMARY
			echo "synchronous_standby_names = 'r1'"
		} >>"$DIR/pg-primary/postgresql.conf"
		# `host all all` does not cover replication connections.
		echo "host replication all 127.0.0.1/32 trust" >>"$DIR/pg-primary/pg_hba.conf"
	fi
	if ! as_postgres "$PGBIN/pg_ctl" -D "$DIR/pg-primary" status >/dev/null 2>&1 &&
		[ ! -f "$DIR/pg-primary/failed-over" ]; then
		as_postgres "$PGBIN/pg_ctl" -D "$DIR/pg-primary" -l "$DIR/pg-primary.log" -w start >/dev/null
	fi
	if [ ! -d "$DIR/pg-replica" ]; then
		say "creating the streaming replica on $PG_REPLICA (pg_basebackup)"
		as_postgres "$PGBIN/pg_basebackup" -h 127.0.0.1 -p $PG_PRIMARY -U postgres \
			-D "$DIR/pg-replica" -R -X stream
		pg_conf $PG_REPLICA >>"$DIR/pg-replica/postgresql.conf"
		echo "primary_conninfo = 'host=127.0.0.1 port=$PG_PRIMARY user=postgres application_name=r1'" \
			>>"$DIR/pg-replica/postgresql.auto.conf"
	fi
	if ! as_postgres "$PGBIN/pg_ctl" -D "$DIR/pg-replica" status >/dev/null 2>&1; then
		as_postgres "$PGBIN/pg_ctl" -D "$DIR/pg-replica" -l "$DIR/pg-replica.log" -w start >/dev/null
	fi
}

haproxy_up() {
	command -v haproxy >/dev/null || {
		say "installing HAProxy from Debian's packages"
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq haproxy >/dev/null
	}
	# The primary while it answers; the replica (promoted by `failover`) once it does not.
	# Sessions to a server marked down are cut, so clients reconnect to the other.
	cat >"$DIR/haproxy.cfg" <<-EOF
		global
		    maxconn 2000
		defaults
		    mode tcp
		    timeout connect 2s
		    timeout client 1h
		    timeout server 1h
		listen postgres
		    bind 127.0.0.1:$PG_ADDRESS
		    option pgsql-check user postgres
		    default-server inter 500ms fall 2 rise 2 on-marked-down shutdown-sessions
		    server primary 127.0.0.1:$PG_PRIMARY check
		    server replica 127.0.0.1:$PG_REPLICA check backup
		listen gateways
		    bind 127.0.0.1:$GATEWAYS
		    mode http
		    balance roundrobin
		    option httpchk GET /healthz
		    retry-on conn-failure
		    default-server inter 500ms fall 2 rise 1
		    server gateway1 127.0.0.1:8081 check
		    server gateway2 127.0.0.1:8082 check
	EOF
	if [ -f "$DIR/haproxy.pid" ] && kill -0 "$(cat "$DIR/haproxy.pid")" 2>/dev/null; then
		return
	fi
	haproxy -D -f "$DIR/haproxy.cfg" -p "$DIR/haproxy.pid"
}

psql_at() { psql -h 127.0.0.1 -p "$1" -U postgres -d postgres -tAc "$2"; }

status() {
	for n in 1 2 3; do
		printf 'rabbit%s@localhost (127.0.0.1:%s): ' "$n" "${AMQP_PORTS[$((n - 1))]}"
		ctl "$n" status >/dev/null 2>&1 && echo running || echo stopped
	done
	ctl 1 cluster_status --formatter json 2>/dev/null |
		python3 -c 'import json,sys; s=json.load(sys.stdin); print("running nodes:", " ".join(sorted(s["running_nodes"])))' ||
		true
	printf 'replication (primary %s): ' $PG_PRIMARY
	psql_at $PG_PRIMARY "SELECT application_name || ' ' || sync_state FROM pg_stat_replication" 2>/dev/null ||
		echo "primary down"
	printf 'database address 127.0.0.1:%s reaches a server in recovery: ' $PG_ADDRESS
	psql_at $PG_ADDRESS "SELECT pg_is_in_recovery()" 2>/dev/null || echo "unreachable"
}

env_lines() {
	local urls=()
	for p in "${AMQP_PORTS[@]}"; do urls+=("amqp://guest:guest@127.0.0.1:$p/%2f"); done
	echo "MEMBERLINE__AMQP__URL=$(
		IFS=,
		echo "${urls[*]}"
	)"
	echo "MEMBERLINE__DATABASE__URL=postgres://postgres@127.0.0.1:$PG_ADDRESS/memberline"
}

failover() {
	say "stopping the primary (immediate) and promoting the replica"
	as_postgres "$PGBIN/pg_ctl" -D "$DIR/pg-primary" -m immediate stop >/dev/null || true
	touch "$DIR/pg-primary/failed-over"
	as_postgres "$PGBIN/pg_ctl" -D "$DIR/pg-replica" promote -w >/dev/null
	# The promoted node copied synchronous_standby_names from the primary: with no standby left,
	# every commit would wait forever. What Patroni and CloudNativePG do on a failover (SET, not
	# RESET: the copied value is in postgresql.conf, which RESET does not override).
	psql_at $PG_REPLICA "ALTER SYSTEM SET synchronous_standby_names = ''" >/dev/null
	psql_at $PG_REPLICA "SELECT pg_reload_conf()" >/dev/null
	# HAProxy notices within two checks (1 s): back once the address reaches the new primary.
	for _ in $(seq 1 100); do
		[ "$(psql_at $PG_ADDRESS "SELECT pg_is_in_recovery()" 2>/dev/null)" = f ] && return
		sleep 0.1
	done
	say "the database address did not reach the promoted replica within 10 s"
	exit 1
}

down() {
	if [ -f "$DIR/haproxy.pid" ]; then kill "$(cat "$DIR/haproxy.pid")" 2>/dev/null || true; fi
	for d in pg-replica pg-primary; do
		[ -d "$DIR/$d" ] && as_postgres "$PGBIN/pg_ctl" -D "$DIR/$d" -m fast stop >/dev/null 2>&1 || true
	done
	for n in 3 2 1; do ctl "$n" stop >/dev/null 2>&1 || true; done
	rm -rf "$DIR"
	say "stopped and removed $DIR"
}

case "${1:-}" in
up)
	rabbit_up
	pg_up
	haproxy_up
	status
	;;
down) down ;;
status) status ;;
env) env_lines ;;
stop-node) ctl "$2" stop_app >/dev/null ;;
start-node) ctl "$2" start_app >/dev/null ;;
failover) failover ;;
*)
	sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//'
	exit 2
	;;
esac

#!/usr/bin/env bash
# `make cluster`: Memberline scaled out on one machine, beside the machine's own services.
# - deploy/cluster.sh up: a 3-node RabbitMQ cluster (5681..5683), a PostgreSQL primary with a
#   synchronous streaming replica, and the stable database address that moves on failover (5440);
# - the provider emulator, two gateways (8081, 8082, balanced on 8080) each with its embedded relay, a standalone
#   relay, and two replicas of the workers' process; every process is given the three brokers'
#   addresses and fails over among them.
# It checks that every quorum queue has a replica on each node, prints where things are, and on
# Ctrl-C stops every process it started and the cluster (CLUSTER_KEEP=1 keeps the cluster).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=target/debug

deploy/cluster.sh up
while IFS= read -r line; do export "${line?}"; done < <(deploy/cluster.sh env)
export MEMBERLINE__RELAY__EMBEDDED=true
export MEMBERLINE__LOG__FILTER=${MEMBERLINE__LOG__FILTER:-warn}
ADDRESS=${MEMBERLINE__DATABASE__URL%/*}
psql "$ADDRESS/postgres" -tAc "SELECT 1 FROM pg_database WHERE datname = 'memberline'" | grep -q 1 ||
	psql "$ADDRESS/postgres" -qc "CREATE DATABASE memberline"
"$BIN/memberline" migrate up
"$BIN/memberline" seed

pids=()
cleanup() {
	trap - INT TERM EXIT
	for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
	# Each process drains and stops on its own; one still running after 30 s is killed, so the
	# cluster is never taken down under a live process.
	for _ in $(seq 1 300); do
		alive=0
		for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
		[ $alive = 0 ] && break
		sleep 0.1
	done
	for pid in "${pids[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
	[ "${CLUSTER_KEEP:-0}" = 1 ] || deploy/cluster.sh down
	echo "Stopped."
}
trap cleanup INT TERM EXIT

EMULATOR=${EMULATOR_LISTEN:-127.0.0.1:8090}
"$BIN/provider-emulator" --listen "$EMULATOR" --keys deploy/dev-keys &
pids+=($!)
for port in 8081 8082; do
	MEMBERLINE__HTTP__PORT=$port "$BIN/memberline" serve &
	pids+=($!)
done
MEMBERLINE__RELAY__METRICS_ADDR=127.0.0.1:9111 "$BIN/memberline" relay &
pids+=($!)
for port in 9121 9122; do
	MEMBERLINE__WORKERS__METRICS_ADDR=127.0.0.1:$port "$BIN/memberline-workers" &
	pids+=($!)
done

ready() { curl -fsS "$1" >/dev/null 2>&1; }
for url in http://127.0.0.1:8081/readyz http://127.0.0.1:8082/readyz \
	http://127.0.0.1:9111/readyz http://127.0.0.1:9121/readyz http://127.0.0.1:9122/readyz; do
	for _ in $(seq 1 300); do ready "$url" && break || sleep 0.1; done
	ready "$url" || {
		echo "not ready: $url" >&2
		exit 1
	}
done

# Every quorum queue of Memberline's has its three replicas (the broker's own default on 3.x: a
# member on every node of the cluster at declaration).
runuser -u rabbitmq -- env HOME=/var/lib/rabbitmq rabbitmqctl -n rabbit1@localhost -q \
	list_queues name type members --no-table-headers |
	awk '$1 ~ /^memberline\./ && $2 == "quorum" { n++; if (gsub(/rabbit[0-9]@localhost/, "&") != 3) { bad++; print "fewer than 3 replicas: " $1 } }
		END { printf "quorum queues: %d, each with 3 replicas: %s\n", n, bad ? "no" : "yes"; exit bad }'

USER_TOKEN=$("$BIN/memberline" token --user 1 --role user)
cat <<MSG

  Memberline is running scaled out.
    Gateways:      http://127.0.0.1:8080 (HAProxy over both) -> 127.0.0.1:8081, 127.0.0.1:8082
                   (each with an embedded relay; the providers' notifications come through 8080)
    Relay:         http://127.0.0.1:9111/metrics   Workers: http://127.0.0.1:9121/metrics, :9122
    RabbitMQ:      rabbit1..3@localhost on 127.0.0.1:5681..5683 (deploy/cluster.sh status)
    PostgreSQL:    primary 5441, synchronous replica 5442, reached through 127.0.0.1:5440
    Providers:     http://$EMULATOR

  Demo buyer token: $USER_TOKEN
  Try a fault:    deploy/cluster.sh stop-node 2   (then start-node 2)
                  deploy/cluster.sh failover      (the replica becomes the primary)

  Ctrl-C stops everything.
MSG
wait -n "${pids[@]}"

#!/usr/bin/env bash
# Makes sure PostgreSQL (127.0.0.1:5432) and RabbitMQ (127.0.0.1:5672) are up.
# Starts them when installed but stopped; otherwise says exactly what is missing and how to get
# it. Never installs or replaces a service on its own, and never uses an in-memory stand-in.
set -euo pipefail

PG_HOST=${PGHOST:-127.0.0.1}
PG_PORT=${PGPORT:-5432}
AMQP_PORT=${AMQP_PORT:-5672}

port_open() { (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; }

wait_for() { # name host port seconds
  local i
  for ((i = 0; i < $4 * 10; i++)); do
    port_open "$2" "$3" && return 0
    sleep 0.1
  done
  echo "error: $1 did not start listening on $2:$3 within $4 s" >&2
  return 1
}

ensure_postgres() {
  if command -v pg_isready >/dev/null && pg_isready -q -h "$PG_HOST" -p "$PG_PORT"; then
    return 0
  fi
  if port_open "$PG_HOST" "$PG_PORT"; then return 0; fi
  if command -v pg_ctlcluster >/dev/null && [ -d /etc/postgresql ] && [ -n "$(ls /etc/postgresql)" ]; then
    echo "PostgreSQL is installed but stopped; starting it"
    local version
    version=$(ls /etc/postgresql | sort -V | tail -n 1)
    pg_ctlcluster --skip-systemctl-redirect "$version" main start
    wait_for PostgreSQL "$PG_HOST" "$PG_PORT" 30
    return 0
  fi
  if command -v docker >/dev/null && docker info >/dev/null 2>&1; then
    echo "Starting PostgreSQL with docker compose"
    docker compose -f "$(dirname "$0")/compose.yaml" up -d postgres
    wait_for PostgreSQL "$PG_HOST" "$PG_PORT" 60
    return 0
  fi
  cat >&2 <<MSG
error: PostgreSQL is not running on $PG_HOST:$PG_PORT and is not installed.
  Debian/Ubuntu:  apt-get install -y postgresql && pg_ctlcluster --skip-systemctl-redirect \$(ls /etc/postgresql) main start
  It must accept user 'postgres' without a password on 127.0.0.1 (trust auth), or set
  MEMBERLINE__DATABASE__URL and TEST_DATABASE_URL to a server you have.
MSG
  return 1
}

ensure_rabbitmq() {
  if port_open 127.0.0.1 "$AMQP_PORT"; then return 0; fi
  if command -v rabbitmq-server >/dev/null; then
    echo "RabbitMQ is installed but stopped; starting it"
    rabbitmq-server -detached
    if command -v rabbitmqctl >/dev/null; then
      rabbitmqctl await_startup --timeout 120 >/dev/null
    fi
    wait_for RabbitMQ 127.0.0.1 "$AMQP_PORT" 60
    return 0
  fi
  if command -v docker >/dev/null && docker info >/dev/null 2>&1; then
    echo "Starting RabbitMQ with docker compose"
    docker compose -f "$(dirname "$0")/compose.yaml" up -d rabbitmq
    wait_for RabbitMQ 127.0.0.1 "$AMQP_PORT" 120
    return 0
  fi
  cat >&2 <<MSG
error: RabbitMQ is not running on 127.0.0.1:$AMQP_PORT and is not installed.
  Debian/Ubuntu:  apt-get install -y rabbitmq-server && rabbitmq-server -detached && rabbitmqctl await_startup
  It must accept guest/guest from 127.0.0.1, or set MEMBERLINE__AMQP__URL and TEST_AMQP_URL.
MSG
  return 1
}

ensure_postgres
ensure_rabbitmq
echo "PostgreSQL and RabbitMQ are up"

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

# Starts the locally installed broker with as many file descriptors as the system allows: every
# quorum queue keeps files open, and at the default soft limit (1024) a broker holding a few
# hundred queues stops answering.
start_local_rabbitmq() {
  if [ "$(id -u)" = 0 ] && id rabbitmq >/dev/null 2>&1 && [ -x /usr/lib/rabbitmq/bin/rabbitmq-server ]; then
    # Debian's wrapper switches user with su, which resets the limit: raise it after the switch.
    su rabbitmq -s /bin/sh -c 'ulimit -n "$(ulimit -Hn)" 2>/dev/null; cd /var/lib/rabbitmq && /usr/lib/rabbitmq/bin/rabbitmq-server -detached'
  else
    (ulimit -n "$(ulimit -Hn)" 2>/dev/null || true; rabbitmq-server -detached)
  fi
}

# A broker that accepts TCP but answers nothing (out of file descriptors, say) is as good as
# down: on a machine where we run the local install, restart it.
rabbitmq_hung() {
  command -v rabbitmqctl >/dev/null || return 1
  ! timeout 30 rabbitmqctl -q status >/dev/null 2>&1
}

# The file-descriptor limit of the running local broker, if rabbitmqctl can tell.
rabbitmq_fd_limit() {
  timeout 30 rabbitmqctl -q status 2>/dev/null | sed -n 's/^Total: [0-9]*, limit: \([0-9]*\)$/\1/p' | head -n 1
}

stop_local_rabbitmq() {
  timeout 60 rabbitmqctl -q stop >/dev/null 2>&1 || pkill -9 -f '[b]eam.smp.*rabbit' || true
  for _ in $(seq 1 100); do port_open 127.0.0.1 "$AMQP_PORT" || break; sleep 0.2; done
}

ensure_rabbitmq() {
  if port_open 127.0.0.1 "$AMQP_PORT"; then
    command -v rabbitmq-server >/dev/null || return 0
    if rabbitmq_hung; then
      echo "RabbitMQ listens but does not answer; restarting the local broker" >&2
      pkill -9 -f '[b]eam.smp.*rabbit' || true
      for _ in $(seq 1 100); do port_open 127.0.0.1 "$AMQP_PORT" || break; sleep 0.2; done
    else
      local limit
      limit=$(rabbitmq_fd_limit)
      if [ -z "$limit" ] || [ "$limit" -ge 4000 ]; then return 0; fi
      echo "RabbitMQ runs with $limit file descriptors; restarting it with more (quorum queues need them)"
      stop_local_rabbitmq
    fi
  fi
  if command -v rabbitmq-server >/dev/null; then
    echo "RabbitMQ is installed but stopped; starting it"
    start_local_rabbitmq
    # The node registers with epmd a few seconds after -detached returns, and await_startup
    # fails at once until it has: ask again until it answers or two minutes have passed.
    if command -v rabbitmqctl >/dev/null; then
      local i
      for ((i = 0; i < 60; i++)); do
        timeout 30 rabbitmqctl -q await_startup --timeout 30 >/dev/null 2>&1 && break
        sleep 2
      done
    fi
    wait_for RabbitMQ 127.0.0.1 "$AMQP_PORT" 60
    if command -v rabbitmqctl >/dev/null && ! timeout 30 rabbitmqctl -q await_startup --timeout 30 >/dev/null; then
      echo "error: RabbitMQ did not finish starting within two minutes" >&2
      return 1
    fi
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

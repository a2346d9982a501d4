#!/usr/bin/env bash
# Contract test: the gateway against its own /openapi.json, with schemathesis (property-based).
#
# Every operation is tested with every schemathesis check: each status answered is documented,
# responses match their schemas, what the schema allows is accepted and what it forbids is
# refused. The gateway runs as the real binary, configured as `make run` configures it
# (deploy/config/local.toml: WeChat Pay and Alipay on, every channel, WeChat sign-in) against the
# provider emulator (tests/emulator, the dev keys of deploy/dev-keys), so an order paid by WeChat
# or Alipay is answered 201 with its `payment` and checked against the document like any other.
# It runs on a fresh database (ml_test_*, so `make clean-test-data` drops what a killed run
# leaves) and a fresh AMQP prefix, both removed at exit. Schemathesis lives in a virtualenv under
# target/, created on first use.
#
# Ends with `N passed, N failed` over the tested operations (and the stateful scenarios); exits
# non-zero on any failure. CONTRACT_SEED=<n> replays another seed (the default is fixed so that CI
# runs are reproducible; schemathesis prints the seed it used).
set -euo pipefail
cd "$(dirname "$0")/../.."

SCHEMATHESIS_VERSION=4.32.5
PIKA_VERSION=1.4.4
SEED=${CONTRACT_SEED:-20261124}
VENV=target/contract-venv
OUT=target/contract
BIN=${CARGO_TARGET_DIR:-target}/debug/memberline
EMULATOR_BIN=${CARGO_TARGET_DIR:-target}/debug/provider-emulator
PGURL=${PGURL:-postgres://postgres@127.0.0.1:5432}
AMQP_URL=${MEMBERLINE__AMQP__URL:-amqp://guest:guest@127.0.0.1:5672/%2f}
RUN_ID="contract_$(date +%s)_$$"
DB="ml_test_${RUN_ID}"

summary_failed() { echo "contract: 0 passed, 1 failed"; exit 1; }

# --- tools -----------------------------------------------------------------------------------
PINS="schemathesis==$SCHEMATHESIS_VERSION pika==$PIKA_VERSION"
if [ "$(cat "$VENV/pins" 2>/dev/null)" != "$PINS" ]; then
  echo "Installing $PINS into $VENV"
  rm -rf "$VENV"
  if ! python3 -m venv "$VENV" >/dev/null 2>&1; then
    # Debian ships venv (with ensurepip) as a package of its own.
    rm -rf "$VENV"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null
    apt-get install -y -qq python3-venv >/dev/null
    python3 -m venv "$VENV"
  fi
  # shellcheck disable=SC2086 # one argument per pin
  "$VENV/bin/pip" install -q --disable-pip-version-check $PINS || summary_failed
  echo "$PINS" >"$VENV/pins"
fi
cargo build -q -p memberline-gateway -p memberline-emulator --bin memberline --bin provider-emulator \
  || summary_failed
mkdir -p "$OUT"

# --- a fresh gateway and the provider emulator -------------------------------------------------
# The providers notify the gateway, and the cashiers send buyers back to it, at addresses it is
# configured with: it needs its port before it starts, so it gets one that was free a moment ago
# (as the browser tests do).
GATEWAY_PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
GATEWAY="http://127.0.0.1:$GATEWAY_PORT"
export MEMBERLINE_ENV=local
export MEMBERLINE__DATABASE__URL="$PGURL/$DB"
export MEMBERLINE__AMQP__URL="$AMQP_URL"
export MEMBERLINE__AMQP__PREFIX="ml_test_${RUN_ID}"
export MEMBERLINE__HTTP__HOST=127.0.0.1
export MEMBERLINE__HTTP__PORT=$GATEWAY_PORT
export MEMBERLINE__LOG__FORMAT=json
export MEMBERLINE__PAYMENTS__PUBLIC_URL=$GATEWAY
export MEMBERLINE__PAYMENTS__WECHAT__NOTIFY_URL=$GATEWAY/v1/payments/wechat/notify
export MEMBERLINE__PAYMENTS__ALIPAY__NOTIFY_URL=$GATEWAY/v1/payments/alipay/notify
# A secret of this run's own: the tokens below are minted and verified with it.
MEMBERLINE__AUTH__JWT_SECRET=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')
export MEMBERLINE__AUTH__JWT_SECRET
SERVER_PID=
EMULATOR_PID=

cleanup() {
  local status=$?
  for pid in $SERVER_PID $EMULATOR_PID; do
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  "$BIN" topology 2>/dev/null | "$VENV/bin/python" tests/contract/topology.py "$AMQP_URL" \
    || echo "warning: could not delete the AMQP topology of prefix $MEMBERLINE__AMQP__PREFIX" >&2
  psql "$PGURL/postgres" -qc "DROP DATABASE IF EXISTS $DB WITH (FORCE)" >/dev/null 2>&1 \
    || echo "warning: could not drop database $DB (make clean-test-data drops it)" >&2
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

psql "$PGURL/postgres" -qc "CREATE DATABASE $DB" >/dev/null || summary_failed
"$BIN" migrate up >"$OUT/migrate.log" 2>&1 || { cat "$OUT/migrate.log" >&2; summary_failed; }
"$BIN" seed >"$OUT/seed.log" 2>&1 || { cat "$OUT/seed.log" >&2; summary_failed; }
USER_TOKEN=$("$BIN" token --user 1 --role user)
ADMIN_TOKEN=$("$BIN" token --user 1 --role admin)

# The emulator on a free port of its own; it prints where it listens. (The logs are emptied first:
# the last run's name other ports.)
: >"$OUT/emulator.stdout"
: >"$OUT/gateway.log"
"$EMULATOR_BIN" --listen 127.0.0.1:0 --keys deploy/dev-keys >"$OUT/emulator.stdout" 2>"$OUT/emulator.log" &
EMULATOR_PID=$!
deadline=$((SECONDS + 15))
EMULATOR=
until [ -n "$EMULATOR" ]; do
  if ! kill -0 "$EMULATOR_PID" 2>/dev/null || [ $SECONDS -ge $deadline ]; then
    echo "error: the provider emulator did not start; its log:" >&2
    cat "$OUT/emulator.log" >&2
    summary_failed
  fi
  EMULATOR=$(sed -n 's/^provider-emulator listening on //p' "$OUT/emulator.stdout" 2>/dev/null | head -n1)
  [ -n "$EMULATOR" ] || sleep 0.05
done
export MEMBERLINE__PAYMENTS__WECHAT__BASE_URL=$EMULATOR
export MEMBERLINE__PAYMENTS__WECHAT__LOGIN_BASE_URL=$EMULATOR
export MEMBERLINE__PAYMENTS__ALIPAY__GATEWAY_URL=$EMULATOR/gateway.do

"$BIN" serve >"$OUT/gateway.log" 2>&1 &
SERVER_PID=$!

# Started when it logs that it listens.
deadline=$((SECONDS + 30))
until grep -q '"Gateway listening"' "$OUT/gateway.log"; do
  if ! kill -0 "$SERVER_PID" 2>/dev/null || [ $SECONDS -ge $deadline ]; then
    echo "error: the gateway did not start; its log:" >&2
    cat "$OUT/gateway.log" >&2
    summary_failed
  fi
  sleep 0.1
done
BASE=$GATEWAY

# Ready when /healthz answers and the embedded relay has declared the prefix's queues, which the
# dead-letter endpoints read (until then they are 503).
until curl -fs --max-time 15 -o /dev/null "$BASE/healthz" \
  && curl -fs --max-time 15 -o /dev/null -H "Authorization: Bearer $ADMIN_TOKEN" "$BASE/v1/admin/dead-letters"; do
  if [ $SECONDS -ge $deadline ]; then
    echo "error: the gateway at $BASE was not ready within 30 s; its log:" >&2
    cat "$OUT/gateway.log" >&2
    summary_failed
  fi
  sleep 0.2
done

# --- the contract ------------------------------------------------------------------------------
started=$SECONDS
rm -f "$OUT/junit.xml"
set +e
HYPOTHESIS_STORAGE_DIRECTORY="$OUT/hypothesis" \
  ML_CONTRACT_USER_TOKEN=$USER_TOKEN ML_CONTRACT_ADMIN_TOKEN=$ADMIN_TOKEN \
  "$VENV/bin/schemathesis" --config-file tests/contract/schemathesis.toml run "$BASE/openapi.json" \
  --no-color --seed "$SEED" --report junit --report-junit-path "$OUT/junit.xml"
st_status=$?
set -e
echo "schemathesis took $((SECONDS - started)) s (exit $st_status)"

# What the providers are on for: schemathesis must have had a WeChat and an Alipay checkout
# answered 201, and so checked the answer (its `payment`) against the document. Every answer of
# POST /v1/orders is stored with its idempotency key.
unchecked=0
for provider in wechat alipay; do
  if ! created=$(psql "$PGURL/$DB" -Atc "SELECT count(*) FROM idempotency_keys k
      JOIN orders o ON o.id = k.order_id WHERE k.status_code = 201 AND o.provider = '$provider'" 2>&1); then
    echo "error: cannot count the $provider checkouts: $created" >&2
    created=0
  fi
  echo "POST /v1/orders answered 201 with a $provider payment: $created"
  if [ "$created" = 0 ]; then
    echo "error: no $provider checkout was answered 201, so none was checked against the document" >&2
    unchecked=$((unchecked + 1))
  fi
done

# One closing line over the operations schemathesis tested (each is a JUnit test case).
"$VENV/bin/python" - "$OUT/junit.xml" "$st_status" "$unchecked" <<'PY' || exit 1
import sys
import xml.etree.ElementTree as ET

path, status, unchecked = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
try:
    cases = list(ET.parse(path).getroot().iter("testcase"))
except (OSError, ET.ParseError):
    cases = []
failed = sum(1 for c in cases if c.find("failure") is not None or c.find("error") is not None)
skipped = sum(1 for c in cases if c.find("skipped") is not None)
passed = len(cases) - failed - skipped
if status != 0 and failed == 0:
    failed = 1  # schemathesis failed without a report (a crash, an unreachable schema)
failed += unchecked  # a provider whose checkout was never answered 201
print(f"contract: {passed} passed, {failed} failed" + (f", {skipped} skipped" if skipped else ""))
sys.exit(1 if failed else 0)
PY

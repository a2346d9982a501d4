#!/usr/bin/env bash
# Contract test: the gateway against its own /openapi.json, with schemathesis (property-based).
#
# Every operation is tested with every schemathesis check: each status answered is documented,
# responses match their schemas, what the schema allows is accepted and what it forbids is
# refused. The gateway runs as the real binary on a fresh database (ml_test_*, so
# `make clean-test-data` drops what a killed run leaves) and a fresh AMQP prefix, both removed
# at exit. Schemathesis lives in a virtualenv under target/, created on first use.
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
cargo build -q -p memberline-gateway --bin memberline || summary_failed
mkdir -p "$OUT"

# --- a fresh gateway ---------------------------------------------------------------------------
export MEMBERLINE__DATABASE__URL="$PGURL/$DB"
export MEMBERLINE__AMQP__URL="$AMQP_URL"
export MEMBERLINE__AMQP__PREFIX="ml_test_${RUN_ID}"
export MEMBERLINE__HTTP__HOST=127.0.0.1
export MEMBERLINE__HTTP__PORT=0
export MEMBERLINE__LOG__FORMAT=json
# No provider emulator runs here: provider pay methods answer 422 pay_method_unavailable (the
# payments suite tests them against the emulator).
export MEMBERLINE__PAYMENTS__WECHAT__ENABLED=false
export MEMBERLINE__PAYMENTS__ALIPAY__ENABLED=false
# Nor does WeChat's sign-in: without the apps' secrets it answers 422 wechat_app_unavailable
# (the payments suite signs in against the emulator).
export MEMBERLINE__PAYMENTS__WECHAT__MINIPROGRAM_SECRET=
export MEMBERLINE__PAYMENTS__WECHAT__OFFICIAL_ACCOUNT_SECRET=
# A secret of this run's own: the tokens below are minted and verified with it.
MEMBERLINE__AUTH__JWT_SECRET=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')
export MEMBERLINE__AUTH__JWT_SECRET
SERVER_PID=

cleanup() {
  local status=$?
  if [ -n "$SERVER_PID" ]; then
    kill "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
  fi
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

"$BIN" serve >"$OUT/gateway.log" 2>&1 &
SERVER_PID=$!

# Port 0: the gateway picks a free port and logs it.
deadline=$((SECONDS + 30))
PORT=
until [ -n "$PORT" ]; do
  if ! kill -0 "$SERVER_PID" 2>/dev/null || [ $SECONDS -ge $deadline ]; then
    echo "error: the gateway did not start; its log:" >&2
    cat "$OUT/gateway.log" >&2
    summary_failed
  fi
  PORT=$(grep -m1 '"Gateway listening"' "$OUT/gateway.log" | grep -oE '"port":[0-9]+' | cut -d: -f2 || true)
  [ -n "$PORT" ] || sleep 0.1
done
BASE="http://127.0.0.1:$PORT"

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

# One closing line over the operations schemathesis tested (each is a JUnit test case).
"$VENV/bin/python" - "$OUT/junit.xml" "$st_status" <<'PY' || exit 1
import sys
import xml.etree.ElementTree as ET

path, status = sys.argv[1], int(sys.argv[2])
try:
    cases = list(ET.parse(path).getroot().iter("testcase"))
except (OSError, ET.ParseError):
    cases = []
failed = sum(1 for c in cases if c.find("failure") is not None or c.find("error") is not None)
skipped = sum(1 for c in cases if c.find("skipped") is not None)
passed = len(cases) - failed - skipped
if status != 0 and failed == 0:
    failed = 1  # schemathesis failed without a report (a crash, an unreachable schema)
print(f"contract: {passed} passed, {failed} failed" + (f", {skipped} skipped" if skipped else ""))
sys.exit(1 if failed else 0)
PY

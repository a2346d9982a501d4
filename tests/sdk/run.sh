#!/usr/bin/env bash
# SDK check: the provider emulator (tests/emulator) against unmodified merchant SDKs from PyPI.
#
# Real clients are the judges of whether the emulator speaks WeChat Pay API v3 and the Alipay open
# API exactly enough: request signing, signed answers (204 included), the public-key mode serial,
# signed business errors, notification signatures and AES-256-GCM resources, and the pages a
# buyer's browser meets (WeChat's H5 cashier, Alipay's wap and page cashiers, opened and paid with
# `requests`). Three SDKs:
#   - wechatpayv3 (minibear2021), in platform public-key mode: Native, JSAPI (a mini-program
#     buyer's login code from the emulator; the front-end paySign by the SDK's own sign(), checked
#     as WeChat's client does, a forged one refused, and equal byte for byte to the gateway's vector
#     tests/sdk/vectors/jsapi_pay_sign.json) and H5 (h5_url with redirect_url, cashier, 302 back);
#   - python-alipay-sdk (fzlee), GET requests, brace-counting answer parser; wap and page pay
#     order strings opened at the gateway, paid at the cashier, the synchronous return verified;
#   - alipay-sdk-python (Ant's official), POST form requests; page_execute as a GET URL (wap) and
#     as its auto-submitting POST form (page), the return verified. It always connects to port 80
#     whatever its server_url says (its WebUtils.get_http_connection), so it gets an emulator of
#     its own on <random 127.x.y.z>:80. It is the only section that sends Alipay requests as POST
#     forms, as the gateway's own client does: where port 80 cannot be bound (not root), the run
#     fails and says how to allow it, rather than pass without it.
# Configuration only: the SDKs get the development keys and identifiers (deploy/dev-keys) and
# the emulator's address (wechatpayv3 and python-alipay-sdk take it as their one gateway
# attribute, having no constructor parameter for it); nothing inside them is patched.
#
# The SDKs live in a virtualenv under target/, created on first use (the official Alipay SDK in a
# directory of its own, as both Alipay SDKs install a package named `alipay`). Each assertion prints
# `ok - …` or `FAIL - …`; the run ends with `sdk: N passed, N failed` and exits non-zero on any
# failure.
set -euo pipefail
cd "$(dirname "$0")/../.."

WECHATPAYV3_VERSION=2.0.4
PYTHON_ALIPAY_SDK_VERSION=3.4.0
ALIPAY_SDK_PYTHON_VERSION=3.7.1411
VENV=target/sdk-venv
OFFICIAL="$VENV/official"
OUT=target/sdk
BIN=${CARGO_TARGET_DIR:-target}/debug/provider-emulator
KEYS="$PWD/deploy/dev-keys"
TIME_SCALE=0.01

summary_failed() { echo "sdk: 0 passed, 1 failed"; exit 1; }

# --- tools -----------------------------------------------------------------------------------
# The SDKs and their direct dependencies (the libraries that do their signing and transport).
DEPS="cryptography==50.0.2 requests==2.34.2 pycryptodomex==3.24.2 pyOpenSSL==26.4.0 pycryptodome==4.4.0 rsa==4.9.1"
PINS="wechatpayv3==$WECHATPAYV3_VERSION python-alipay-sdk==$PYTHON_ALIPAY_SDK_VERSION alipay-sdk-python==$ALIPAY_SDK_PYTHON_VERSION $DEPS"
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
  "$VENV/bin/pip" install -q --disable-pip-version-check \
    "wechatpayv3==$WECHATPAYV3_VERSION" "python-alipay-sdk==$PYTHON_ALIPAY_SDK_VERSION" $DEPS \
    || summary_failed
  # Its dependencies (pycryptodome, rsa) are in DEPS above.
  "$VENV/bin/pip" install -q --disable-pip-version-check --no-deps --target "$OFFICIAL" \
    "alipay-sdk-python==$ALIPAY_SDK_PYTHON_VERSION" || summary_failed
  echo "$PINS" >"$VENV/pins"
fi
cargo build -q -p memberline-emulator --bin provider-emulator || summary_failed
mkdir -p "$OUT"

# --- emulators ---------------------------------------------------------------------------------
EMULATOR_PIDS=()
cleanup() {
  local status=$?
  for pid in ${EMULATOR_PIDS[@]+"${EMULATOR_PIDS[@]}"}; do
    kill "$pid" 2>/dev/null || true
  done
  for pid in ${EMULATOR_PIDS[@]+"${EMULATOR_PIDS[@]}"}; do
    wait "$pid" 2>/dev/null || true
  done
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# start_emulator LISTEN NAME: starts one, sets EMULATOR_BASE to its http://ADDR, or returns 1 with
# EMULATOR_ERROR set when it exits or stays silent for 15 s (its stderr is in $OUT/NAME.log).
start_emulator() {
  local listen=$1 name=$2 pid line deadline=$((SECONDS + 15))
  EMULATOR_BASE='' EMULATOR_ERROR=''
  RUST_LOG=${RUST_LOG:-info} "$BIN" --listen "$listen" --keys "$KEYS" --time-scale "$TIME_SCALE" \
    >"$OUT/$name.stdout" 2>"$OUT/$name.log" &
  pid=$!
  EMULATOR_PIDS+=("$pid")
  while :; do
    line=$(grep -m1 '^provider-emulator listening on ' "$OUT/$name.stdout" 2>/dev/null || true)
    if [ -n "$line" ]; then
      EMULATOR_BASE=${line#provider-emulator listening on }
      return 0
    fi
    if ! kill -0 "$pid" 2>/dev/null; then
      # anyhow's report: `Error: <context>`, then `Caused by:` and the cause, indented.
      local error cause
      error=$(sed -n 's/^Error: //p' "$OUT/$name.log" | head -n1)
      cause=$(sed -n '/^Caused by:/{n;s/^ *//;p;q}' "$OUT/$name.log")
      EMULATOR_ERROR="the emulator could not start (${error:-see $OUT/$name.log}${cause:+: $cause})"
      return 1
    fi
    if [ $SECONDS -ge $deadline ]; then
      EMULATOR_ERROR="the emulator did not report its address within 15 s (see $OUT/$name.log)"
      return 1
    fi
    sleep 0.05
  done
}

if ! start_emulator 127.0.0.1:0 emulator; then
  echo "error: $EMULATOR_ERROR" >&2
  cat "$OUT/emulator.log" >&2
  summary_failed
fi
MAIN_BASE=$EMULATOR_BASE
echo "provider emulator at $MAIN_BASE (log: $OUT/emulator.log)"

# A loopback address of this run's own for the port-80 emulator (any 127/8 address is local).
ADDR80="127.$((RANDOM % 200 + 20)).$((RANDOM % 250 + 1)).$((RANDOM % 250 + 1))"
if start_emulator "$ADDR80:80" emulator80; then
  echo "provider emulator for alipay-sdk-python at $EMULATOR_BASE (log: $OUT/emulator80.log)"
  # Written without the port: the SDK cannot parse a server_url that has one.
  PORT80_ARGS=(--emulator80 "${EMULATOR_BASE%:80}")
else
  allow="run as root, or let the emulator bind port 80: sudo setcap cap_net_bind_service=+ep $BIN"
  allow+=" (again after each build), or sudo sysctl -w net.ipv4.ip_unprivileged_port_start=80"
  PORT80_ARGS=(--no-emulator80 "it always connects to port 80, and $EMULATOR_ERROR; $allow")
fi

# --- the check ---------------------------------------------------------------------------------
# Everything is on loopback: no proxy may stand in between (urllib and requests read these).
# sdk_check.py prints the closing `sdk: N passed, N failed` line and exits non-zero on a failure.
env -u http_proxy -u HTTP_PROXY -u https_proxy -u HTTPS_PROXY -u all_proxy -u ALL_PROXY \
  "$VENV/bin/python" tests/sdk/sdk_check.py --emulator "$MAIN_BASE" --keys "$KEYS" \
  --official "$OFFICIAL" "${PORT80_ARGS[@]}"

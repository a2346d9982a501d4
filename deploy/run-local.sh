#!/usr/bin/env bash
# `make run`: starts the payment provider emulator (WeChat Pay + Alipay, 127.0.0.1:8090), the
# gateway (with its embedded outbox relay) and the four workers (one process) on the local
# services, prints where everything is and demo tokens, and stops every
# process it started on Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=target/debug
PORT=${MEMBERLINE__HTTP__PORT:-8080}
export MEMBERLINE__HTTP__PORT=$PORT

pids=()
cleanup() {
  trap - INT TERM EXIT
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  echo "Stopped."
}
trap cleanup INT TERM EXIT

EMULATOR=${EMULATOR_LISTEN:-127.0.0.1:8090}
"$BIN/provider-emulator" --listen "$EMULATOR" --keys deploy/dev-keys &
pids+=($!)
"$BIN/memberline" serve &
pids+=($!)
"$BIN/memberline-workers" &
pids+=($!)

for _ in $(seq 1 100); do
  curl -fsS "http://127.0.0.1:$PORT/healthz" >/dev/null 2>&1 && break
  sleep 0.1
done

USER_TOKEN=$("$BIN/memberline" token --user 1 --role user)
ADMIN_TOKEN=$("$BIN/memberline" token --user 0 --role admin)
MERCHANT_TOKEN=$("$BIN/memberline" token --user 0 --role merchant)
cat <<MSG

  Memberline is running.
    API:           http://127.0.0.1:$PORT/v1/plans
    Buyer page:    http://127.0.0.1:$PORT/vip       (sign in with the demo buyer's token below)
    Console:       http://127.0.0.1:$PORT/console   (sign in with the merchant token below)
    API docs:      http://127.0.0.1:$PORT/docs   (document: /openapi.json)
    Health:        http://127.0.0.1:$PORT/readyz   Metrics: /metrics
    Workers:       http://${MEMBERLINE__WORKERS__METRICS_ADDR:-127.0.0.1:9100}/metrics (and /readyz)
    Providers:     http://$EMULATOR  (WeChat Pay v3 + Alipay emulator; notifications: /emulator/notifications)

  Demo buyer (user 1, Gold level, 10% off) token:
    $USER_TOKEN
  Merchant token (the console's live feed):
    $MERCHANT_TOKEN
  Admin token:
    $ADMIN_TOKEN
  Demo admin (POST /v1/auth/staff {"username", "password"}): username admin, password memberline-demo-admin

  Try:
    curl -s -H "Authorization: Bearer $USER_TOKEN" http://127.0.0.1:$PORT/v1/plans
    curl -s -X POST -H "Authorization: Bearer $USER_TOKEN" -H 'Idempotency-Key: demo-1' \\
         -H 'Content-Type: application/json' -d '{"plan_id": 1, "pay_method": "points"}' \\
         http://127.0.0.1:$PORT/v1/orders
    # Pay with WeChat (or "alipay"): the answer carries payment.code_url and payment.qr_png_url
    curl -s -X POST -H "Authorization: Bearer $USER_TOKEN" -H 'Idempotency-Key: demo-wx-1' \\
         -H 'Content-Type: application/json' -d '{"plan_id": 1, "pay_method": "wechat"}' \\
         http://127.0.0.1:$PORT/v1/orders
    # ...then scan: open http://$EMULATOR/emulator/scan?code=<code_url, URL-encoded> and press Pay,
    # or: curl -s -X POST -H 'Content-Type: application/json' \\
    #       -d '{"provider":"wechat","out_trade_no":"<order_no>"}' http://$EMULATOR/emulator/pay
    # Sign in as a mini-program buyer: a login code as wx.login gives one, exchanged for a token
    # (then pay inside WeChat with "channel": "jsapi", "wechat_app": "miniprogram"):
    curl -s -X POST -H 'Content-Type: application/json' -d '{"app": "miniprogram"}' http://$EMULATOR/emulator/wechat/codes
    curl -s -X POST -H 'Content-Type: application/json' \\
         -d '{"app": "miniprogram", "code": "<code>"}' http://127.0.0.1:$PORT/v1/auth/wechat
    # On a phone, /vip pays by WeChat H5 and Alipay's mobile cashier (the emulator's cashier pages).
    curl -s -H "Authorization: Bearer $USER_TOKEN" http://127.0.0.1:$PORT/v1/me   # membership, savings, level
    curl -s -H "Authorization: Bearer $USER_TOKEN" http://127.0.0.1:$PORT/v1/me/notifications
    target/debug/memberline-dlq list --worker ledger                           # dead letters, if any
    # The merchant console's live feed (paid orders, reminders, refunds) in a terminal:
    MEMBERLINE_TOKEN=$MERCHANT_TOKEN target/debug/memberline console tail --url http://127.0.0.1:$PORT --after 0

  Ctrl-C stops everything.
MSG
wait -n "${pids[@]}"

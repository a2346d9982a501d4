#!/usr/bin/env python3
"""Writes the seed inputs of the fuzz targets into fuzz/corpus/<target>/seed-*.

Real inputs, made the way the providers and the system make them: WeChat Pay notifications
signed with the development platform key and sealed with the development APIv3 key, Alipay
notifications and returns signed with the development Alipay key (deploy/dev-keys/), event
envelopes as the relay publishes them, request bodies as clients send them. Timestamps are the
fuzz targets' clock (memberline_fuzz::NOW). Needs Python's `cryptography`.

    python3 fuzz/seeds.py     # then `make fuzz` (or cargo fuzz run <target>) grows the corpus
"""

import base64
import json
import os
import urllib.parse
from pathlib import Path

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

ROOT = Path(__file__).resolve().parent.parent
CORPUS = ROOT / "fuzz" / "corpus"
KEYS = ROOT / "deploy" / "dev-keys"

NOW = 1_780_000_000  # memberline_fuzz::NOW: 2026-05-28T20:26:40Z, 2026-05-29 04:26:40 in Beijing
APIV3_KEY = b"w20rERqvyXUYJfRcGdayYGsFga5MZsn8"
SERIAL = "PUB_KEY_ID_0119000001092026112400000001"
MCHID, APPID = "1900000109", "wxd0e1c2b3a4958677"
ALIPAY_APP_ID, ALIPAY_SELLER_ID = "2021000148600001", "2088100000000001"
ORDER_NO = "ML202605280000000007"


def private_key(name):
    return serialization.load_pem_private_key((KEYS / name).read_bytes(), password=None)


def sign(key, message: bytes) -> str:
    return base64.b64encode(key.sign(message, padding.PKCS1v15(), hashes.SHA256())).decode()


def compact(value) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


def write(target, name, data: bytes):
    path = CORPUS / target / f"seed-{name}"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def message(start: str, headers, body: bytes) -> bytes:
    head = "".join(f"{k}: {v}\n" for k, v in headers)
    return f"{start}\n{head}\n".encode() + body


# --- WeChat Pay ----------------------------------------------------------------------------

WECHAT = private_key("wechat/platform_private_key.pem")

TRANSACTION = {
    "mchid": MCHID,
    "appid": APPID,
    "out_trade_no": ORDER_NO,
    "transaction_id": "4200002026052800000000000007",
    "trade_type": "NATIVE",
    "trade_state": "SUCCESS",
    "trade_state_desc": "支付成功",
    "bank_type": "OTHERS",
    "attach": "",
    "success_time": "2026-05-29T04:26:00+08:00",
    "payer": {"openid": "oUpF8uMuAJO_M2pxb1Q9zNjWeS6o"},
    "amount": {"total": 2500, "payer_total": 2500, "currency": "CNY", "payer_currency": "CNY"},
}
JSAPI_TRANSACTION = dict(TRANSACTION, trade_type="JSAPI", appid="wx8f1e2d3c4b5a6978")
CLOSED_TRANSACTION = {k: v for k, v in TRANSACTION.items() if k not in ("success_time", "transaction_id")}
CLOSED_TRANSACTION.update(trade_state="CLOSED", trade_state_desc="已关闭")
REFUND = {
    "mchid": MCHID,
    "out_trade_no": ORDER_NO,
    "transaction_id": "4200002026052800000000000007",
    "out_refund_no": "RF202605280000000007",
    "refund_id": "50300002026052800000000000007",
    "refund_status": "SUCCESS",
    "success_time": "2026-05-29T04:30:00+08:00",
    "user_received_account": "支付用户零钱",
    "amount": {"total": 2500, "refund": 2500, "payer_total": 2500, "payer_refund": 2500},
}


def envelope(event_id, event_type, summary, original_type, ciphertext, nonce):
    return {
        "id": event_id,
        "create_time": "2026-05-29T04:26:40+08:00",
        "resource_type": "encrypt-resource",
        "event_type": event_type,
        "summary": summary,
        "resource": {
            "original_type": original_type,
            "algorithm": "AEAD_AES_256_GCM",
            "ciphertext": ciphertext,
            "associated_data": original_type,
            "nonce": nonce,
        },
    }


def sealed(plaintext: dict, nonce: str, aad: str) -> str:
    return base64.b64encode(AESGCM(APIV3_KEY).encrypt(nonce.encode(), compact(plaintext), aad.encode())).decode()


def wechat_headers(body: bytes, timestamp=NOW, nonce="5K8264ILTKCH16CQ2502SI8ZNMTM67VS", signature=None):
    signature = signature or sign(WECHAT, f"{timestamp}\n{nonce}\n".encode() + body + b"\n")
    return [
        ("Wechatpay-Timestamp", str(timestamp)),
        ("Wechatpay-Nonce", nonce),
        ("Wechatpay-Signature", signature),
        ("Wechatpay-Serial", SERIAL),
    ]


def wechat_seeds():
    events = [
        ("paid", "TRANSACTION.SUCCESS", "支付成功", "transaction", TRANSACTION, "fdQiTnDF3wQ6"),
        ("paid-jsapi", "TRANSACTION.SUCCESS", "支付成功", "transaction", JSAPI_TRANSACTION, "a8Xk2PqL9mZt"),
        ("closed", "TRANSACTION.CLOSED", "已关闭", "transaction", CLOSED_TRANSACTION, "Q2w3E4r5T6y7"),
        ("refunded", "REFUND.SUCCESS", "退款成功", "refund", REFUND, "Zx8Cv7Bn6Mm5"),
    ]
    for i, (name, event_type, summary, original_type, plaintext, nonce) in enumerate(events):
        event_id = f"EV-2026052804264{i}-0000-0000-0000-00000000000{i}"
        body = compact(envelope(event_id, event_type, summary, original_type,
                                sealed(plaintext, nonce, original_type), nonce))
        write("wechat_notify", f"as-sent-{name}", message("as-sent", wechat_headers(body), body))
        # Signed (and sealed) by the target itself: no Wechatpay-Signature header.
        unsigned = [h for h in wechat_headers(body) if h[0] != "Wechatpay-Signature"]
        write("wechat_notify", f"sign-{name}", message("sign", unsigned, body))
        clear = compact(envelope(event_id, event_type, summary, original_type, compact(plaintext).decode(), nonce))
        write("wechat_notify", f"seal-{name}", message("seal", unsigned, clear))
        write("wechat_decrypt", f"text-{name}", message("text", [("Nonce", nonce), ("Associated-Data", original_type)],
                                                         sealed(plaintext, nonce, original_type).encode()))
        write("wechat_decrypt", f"seal-{name}", message("seal", [("Nonce", nonce), ("Associated-Data", original_type)],
                                                         compact(plaintext)))
    paid = compact(envelope("EV-stale", "TRANSACTION.SUCCESS", "支付成功", "transaction",
                            sealed(TRANSACTION, "fdQiTnDF3wQ6", "transaction"), "fdQiTnDF3wQ6"))
    write("wechat_notify", "as-sent-stale", message("as-sent", wechat_headers(paid, timestamp=NOW - 301), paid))
    write("wechat_decrypt", "bytes-short", message("bytes", [("Nonce", "fdQiTnDF3wQ6"), ("Associated-Data", "")], b"0123456789"))


# --- Alipay --------------------------------------------------------------------------------

ALIPAY = private_key("alipay/alipay_private_key.pem")


def alipay_signed(params):
    content = "&".join(f"{k}={v}" for k, v in sorted(params) if k not in ("sign", "sign_type"))
    return params + [("sign", sign(ALIPAY, content.encode()))]


def alipay_notification(status, notify_id):
    p = [
        ("notify_time", "2026-05-29 04:26:40"),
        ("notify_type", "trade_status_sync"),
        ("notify_id", notify_id),
        ("app_id", ALIPAY_APP_ID),
        ("charset", "utf-8"),
        ("version", "1.0"),
        ("sign_type", "RSA2"),
        ("trade_no", "2026052822001400000000000007"),
        ("out_trade_no", ORDER_NO),
        ("buyer_id", "2088102177000007"),
        ("buyer_logon_id", "159****0007"),
        ("seller_id", ALIPAY_SELLER_ID),
        ("trade_status", status),
        ("total_amount", "25.00"),
        ("gmt_create", "2026-05-29 04:25:10"),
        ("subject", "Monthly 月度会员"),
    ]
    if status in ("TRADE_SUCCESS", "TRADE_FINISHED"):
        p += [
            ("receipt_amount", "25.00"),
            ("invoice_amount", "25.00"),
            ("buyer_pay_amount", "25.00"),
            ("point_amount", "0.00"),
            ("gmt_payment", "2026-05-29 04:26:00"),
            ("fund_bill_list", '[{"amount":"25.00","fundChannel":"ALIPAYACCOUNT"}]'),
        ]
    if status == "TRADE_CLOSED":
        p += [("gmt_close", "2026-05-29 04:40:00")]
    return p


def alipay_seeds():
    for status, notify_id in [("TRADE_SUCCESS", "2026052900222042601000000007"),
                              ("TRADE_FINISHED", "2026052900222042601000000008"),
                              ("TRADE_CLOSED", "2026052900222042601000000009")]:
        params = alipay_notification(status, notify_id)
        name = status.lower().replace("_", "-")
        write("alipay_notify", f"as-sent-{name}", message("as-sent", [], urllib.parse.urlencode(alipay_signed(params)).encode()))
        write("alipay_notify", f"sign-{name}", message("sign", [], urllib.parse.urlencode(params).encode()))
    for method in ["alipay.trade.wap.pay.return", "alipay.trade.page.pay.return"]:
        params = [
            ("charset", "utf-8"),
            ("out_trade_no", ORDER_NO),
            ("method", method),
            ("total_amount", "25.00"),
            ("trade_no", "2026052822001400000000000007"),
            ("auth_app_id", ALIPAY_APP_ID),
            ("app_id", ALIPAY_APP_ID),
            ("version", "1.0"),
            ("sign_type", "RSA2"),
            ("seller_id", ALIPAY_SELLER_ID),
            ("timestamp", "2026-05-29 04:26:41"),
        ]
        name = method.split(".")[2]
        write("alipay_return", f"as-sent-{name}", message("as-sent", [], urllib.parse.urlencode(alipay_signed(params)).encode()))
        write("alipay_return", f"sign-{name}", message("sign", [], urllib.parse.urlencode(params).encode()))
    write("alipay_return", "as-sent-forged", message("as-sent", [], f"out_trade_no={ORDER_NO}&sign=Zm9yZ2Vk".encode()))


# --- Event envelopes -----------------------------------------------------------------------

PLAN = {"plan_id": 1, "plan_code": "monthly", "plan_name": "Monthly", "plan_kind": "membership",
        "duration_days": 30, "uses": None}


def event(n, event_type, payload, causation=None):
    return compact({
        "event_id": f"01970f4c-8a00-7000-8000-00000000000{n}",
        "type": event_type,
        "version": 1,
        "occurred_at": "2026-05-28T20:26:40.123456Z",
        "correlation_id": "01970f4c-89f0-7000-8000-000000000001",
        "causation_id": causation,
        "payload": payload,
    })


def envelope_seeds():
    paid_at = "2026-05-28T20:26:00Z"
    order = {"order_id": 7, "order_no": ORDER_NO, "buyer_id": 1}
    events = {
        "order-paid": event(1, "order.paid", {**order, **PLAN, "pay_method": "wechat", "amount_fen": 2500,
                                              "amount_points": 0, "original_price_fen": 3000,
                                              "original_price_points": 3000, "paid_at": paid_at}),
        "order-paid-pass": event(2, "order.paid", {**order, **PLAN, "plan_kind": "pass", "duration_days": None,
                                                   "uses": 10, "pay_method": "points", "amount_fen": 0,
                                                   "amount_points": 900, "original_price_fen": 1000,
                                                   "original_price_points": None, "paid_at": paid_at}),
        "membership-extended": event(3, "membership.extended", {
            "user_id": 1, "order_id": 7, "plan_kind": "membership", "starts_at": paid_at,
            "ends_at": "2026-06-27T20:26:00Z", "permanent": False, "pass_uses": None},
            causation="01970f4c-8a00-7000-8000-000000000001"),
        "level-changed": event(4, "level.changed", {"user_id": 1, "from_level": 0, "to_level": 1,
                                                    "growth": 1200, "order_id": 7}),
        "order-closed": event(5, "order.closed", {**order, "provider": "alipay", "reason": "expired",
                                                  "amount_fen": 2500, "closed_at": paid_at}),
        "late-payment-refunded": event(6, "order.late_payment_refunded", {
            **order, "provider": "wechat", "transaction_id": "4200002026052800000000000007",
            "out_refund_no": "LR202605280000000007", "refund_id": None, "amount_fen": 2500,
            "refunded_at": paid_at, "why": "not_eligible"}),
        "order-refunded": event(7, "order.refunded", {**order, **PLAN, "pay_method": "balance", "refund_fen": 2500,
                                                      "refund_points": 0, "refund_id": 3,
                                                      "reason": "用户申请退款", "refunded_at": paid_at}),
        "membership-changed": event(8, "membership.changed", {
            "user_id": 1, "change": "refund", "order_id": 7, "removed_secs": 2592000,
            "removed_pass_uses": 0, "ends_at": None, "permanent": False}),
        "membership-revoked": event(9, "membership.revoked", {"user_id": 1, "actor_id": 100, "reason": "fraud",
                                                              "audit_id": 12, "revoked_at": paid_at}),
        "order-reminded": event(0, "order.reminded", {**order, "plan_name": "Monthly",
                                                      "reminded_at": paid_at}),
    }
    for name, body in events.items():
        write("event_envelope", name, body)
    write("event_envelope", "unknown-type", event(1, "order.shipped", {"order_id": 7}))


# --- Request bodies ------------------------------------------------------------------------

def request(line, body, key=None):
    headers = [("Content-Type", "application/json")] + ([("Idempotency-Key", key)] if key else [])
    return message(line, headers, compact(body))


def body_seeds():
    bodies = {
        "place-order-points": request("POST /v1/orders", {"plan_id": 1, "pay_method": "points"}, "demo-1"),
        "place-order-jsapi": request("POST /v1/orders", {
            "plan_id": 2, "pay_method": "wechat", "channel": "jsapi", "wechat_app": "miniprogram",
            "expected_price_fen": 2250.0}, "wx-2"),
        "place-order-price": request("POST /v1/orders", {"plan_id": 1, "pay_method": "alipay",
                                                         "channel": "wap", "price_fen": 1}, "ali-3"),
        "refund": request("POST /v1/admin/orders/7/refund", {"reason": "用户申请退款"}, "refund-7"),
        "grant": request("PUT /v1/admin/users/1/membership", {"plan_id": 3, "reason": "compensation"}, "grant-1"),
        "revoke": request("DELETE /v1/admin/users/1/membership", {"reason": " fraud "}, "revoke-1"),
        "adjust": request("POST /v1/admin/members/1/adjustments",
                          {"ledger": "balance", "delta": -500, "reason": "goodwill"}, "adjust-1"),
        "change-member": request("PATCH /v1/admin/members/2", {"name": "Ada", "phone": "+8613800000000"}),
        "create-user": request("POST /v1/admin/users", {"name": "Grace", "balance_fen": 100000, "points": 50}),
        "replay": request("POST /v1/admin/dead-letters/replay",
                          {"worker": "notifier", "event_id": "01970f4c-8a00-7000-8000-000000000001", "limit": 10}),
        "create-plan": request("POST /v1/admin/plans", {
            "code": "weekly", "name": "Weekly", "kind": "membership", "duration_days": 7,
            "original_price_fen": 1000, "price_fen": 800, "price_points": 800,
            "image_url": "https://cdn.example.com:8443/plans/weekly.png",
            "pay_methods": ["balance", "wechat", "wechat"], "channels": ["native", "qr"]}),
        "create-plan-pass": request("POST /v1/admin/plans", {
            "code": "yoga_10", "name": "瑜伽十次卡", "kind": "pass", "uses": 10, "original_price_fen": 50000,
            "price_fen": 45000, "is_free": False, "on_shelf": False, "sort": 3, "image_url": "/img/yoga.png"}),
        "change-plan": request("PATCH /v1/admin/plans/1", {
            "kind": "pass", "duration_days": None, "uses": 5, "price_points": None, "image_url": None,
            "channels": None, "pay_methods": ["points"]}),
        "create-level": request("POST /v1/admin/levels", {"id": 4, "name": "Platinum", "min_growth": 50000,
                                                          "discount_percent": 80, "points_bonus_percent": 150}),
        "change-level": request("PATCH /v1/admin/levels/1", {"name": "Silver+", "min_growth": 900,
                                                             "discount_percent": 94}),
        "wechat-sign-in": request("POST /v1/auth/wechat", {"app": "miniprogram", "code": "0a3Xyz9Lmn"}),
        "wechat-link": request("POST /v1/me/wechat", {"app": "official_account", "code": "071AbCdE"}),
        "staff-sign-in": request("POST /v1/auth/staff",
                                 {"username": "admin", "password": "correct horse battery staple"}),
    }
    for name, data in bodies.items():
        write("api_bodies", name, data)


if __name__ == "__main__":
    wechat_seeds()
    alipay_seeds()
    envelope_seeds()
    body_seeds()
    for target in sorted(os.listdir(CORPUS)):
        print(f"{target}: {len(os.listdir(CORPUS / target))} files")

"""WeChat Pay API v3 through the unmodified PyPI SDK `wechatpayv3` (minibear2021), in platform
public-key mode (`public_key` + `public_key_id`, "微信支付公钥"), against the provider emulator.

The SDK verifies the signature of every 2xx answer itself (it raises otherwise), so each call that
returns proves the answer was signed with the platform key named `PUB_KEY_ID_…`; notifications go
through the SDK's own `callback(headers, body)` (signature check and AES-256-GCM decryption).

Usage: wechat_v3.py <emulator base URL> <keys dir>
"""

import json
import sys
import time

from harness import (
    WECHAT_APIV3_KEY,
    WECHAT_APPID,
    WECHAT_KEY_ID,
    WECHAT_MCHID,
    WECHAT_SERIAL,
    Emulator,
    NotifyServer,
    parse_json,
    read_key,
    run_section,
    unique,
)
from wechatpayv3 import WeChatPay, WeChatPayType

NOTIFY_PATH = "/wechat/notify"
TOTAL = 1990  # fen
REFUND = 500


def main(report):
    base, keys = sys.argv[1], sys.argv[2]
    emulator = Emulator(base)
    server = NotifyServer()
    wxpay = WeChatPay(
        wechatpay_type=WeChatPayType.NATIVE,
        mchid=WECHAT_MCHID,
        private_key=read_key(keys, "wechat", "merchant_private_key.pem"),
        cert_serial_no=WECHAT_SERIAL,
        appid=WECHAT_APPID,
        apiv3_key=WECHAT_APIV3_KEY,
        notify_url=server.base + NOTIFY_PATH,
        public_key=read_key(keys, "wechat", "platform_public_key.pem"),
        public_key_id=WECHAT_KEY_ID,
        timeout=(5, 15),
    )
    # Configuration only: the SDK has no constructor parameter for its gateway, it is this one
    # attribute ('https://api.mch.weixin.qq.com' by default).
    wxpay._core._gate_way = base.rstrip("/")

    def on_notify(capture):
        # What a merchant's endpoint does: the SDK verifies and decrypts; 204 when it accepts,
        # 4XX with {"code": "FAIL"} when it does not (PROTOCOLS.md, "Reply").
        result = wxpay.callback(capture.headers, capture.body)
        if result:
            capture.verified, capture.result = True, result
            capture.reply_status, capture.reply_body = 204, b""
        else:
            capture.reply_status = 401
            capture.reply_body = json.dumps({"code": "FAIL", "message": "signature or decryption failed"}).encode()

    server.handle(NOTIFY_PATH, on_notify)

    def call(what, fn, fatal=False):
        """An SDK call: (status, raw body, body as a JSON object or {})."""
        code, body = report.step(what, fn, fatal=fatal, default=(None, ""))
        return code, body, parse_json(body)

    def notification_for(event_type, key, value):
        def match(capture):
            r = capture.result or {}
            return r.get("event_type") == event_type and (r.get("resource") or {}).get(key) == value

        return match

    # --- order A: native pay, query, pay, notify, query, refund ---------------------------------
    order = unique("SDKWX")
    description = "Memberline 会员 月卡"
    attach = "sdk-check|A"

    def pay():
        return wxpay.pay(
            description=description,
            out_trade_no=order,
            amount={"total": TOTAL, "currency": "CNY"},
            attach=attach,
        )

    code, body, js = call("native pay", pay, fatal=True)
    code_url = js.get("code_url", "")
    report.check(
        "native pay: 200 with a weixin:// code_url, answer signature verified by the SDK",
        code == 200 and code_url.startswith("weixin://wxpay/bizpayurl?pr="),
        f"status {code}, body {body!r}",
        fatal=True,
    )

    code, body, js = call("native pay again", pay, fatal=True)
    report.check(
        "native pay again with identical parameters: the same code_url",
        code == 200 and js.get("code_url") == code_url,
        f"status {code}, body {body!r}, first code_url {code_url}",
    )

    code, body, js = call("query before payment", lambda: wxpay.query(out_trade_no=order), fatal=True)
    tx = js
    report.check(
        "query by out_trade_no before payment: trade_state NOTPAY",
        code == 200 and tx.get("trade_state") == "NOTPAY" and tx.get("out_trade_no") == order,
        f"status {code}, body {body!r}",
    )

    mark = server.mark()
    status, paid = emulator.pay("wechat", order)
    report.check(
        "the buyer pays (/emulator/pay)",
        status == 200 and paid.get("transaction_id"),
        f"status {status}, body {paid!r}",
        fatal=True,
    )
    transaction_id = paid["transaction_id"]

    capture = server.wait(NOTIFY_PATH, notification_for("TRANSACTION.SUCCESS", "out_trade_no", order), after=mark)
    if capture is None:
        seen = server.seen(NOTIFY_PATH, after=mark)
        report.fail(
            "TRANSACTION.SUCCESS verified and decrypted by wechatpay.callback()",
            f"no verified notification within the timeout; received {len(seen)}: "
            + "; ".join(c.describe() for c in seen),
        )
    else:
        resource = capture.result["resource"]
        expected = {
            "out_trade_no": order,
            "transaction_id": transaction_id,
            "trade_state": "SUCCESS",
            "mchid": WECHAT_MCHID,
            "appid": WECHAT_APPID,
            "trade_type": "NATIVE",
            "attach": attach,
        }
        wrong = {k: resource.get(k) for k, v in expected.items() if resource.get(k) != v}
        amount = resource.get("amount") or {}
        if amount.get("total") != TOTAL or amount.get("payer_total") != TOTAL:
            wrong["amount"] = amount
        report.check(
            "TRANSACTION.SUCCESS verified and decrypted by wechatpay.callback() to the paid transaction",
            not wrong and capture.headers.get("Wechatpay-Serial") == WECHAT_KEY_ID,
            f"unexpected fields {wrong!r}, Wechatpay-Serial {capture.headers.get('Wechatpay-Serial')!r}",
        )
        attempt = emulator.wait_attempt("wechat", order, lambda a: a.get("event") == "TRANSACTION.SUCCESS")
        report.check(
            "the emulator takes the merchant's bodiless 204 as success",
            attempt is not None and attempt.get("reply_status") == 204 and attempt.get("success") is True,
            f"logged attempt {attempt!r}",
        )

    code, body, js = call("query after payment", lambda: wxpay.query(out_trade_no=order), fatal=True)
    tx = js
    amount = tx.get("amount") or {}
    report.check(
        "query after payment: SUCCESS, the transaction_id paid, amount total and payer_total",
        code == 200
        and tx.get("trade_state") == "SUCCESS"
        and tx.get("transaction_id") == transaction_id
        and amount.get("total") == TOTAL
        and amount.get("payer_total") == TOTAL
        and amount.get("currency") == "CNY",
        f"status {code}, body {body!r}",
    )

    refund_no = order + "R1"
    mark = server.mark()
    code, body, js = call(
        "refund",
        lambda: wxpay.refund(
            out_refund_no=refund_no,
            amount={"refund": REFUND, "total": TOTAL, "currency": "CNY"},
            out_trade_no=order,
            reason="SDK check",
        ),
        fatal=True,
    )
    refund = js
    report.check(
        "refund: accepted (PROCESSING or SUCCESS) for the amount asked",
        code == 200
        and refund.get("out_refund_no") == refund_no
        and refund.get("status") in ("PROCESSING", "SUCCESS")
        and (refund.get("amount") or {}).get("refund") == REFUND,
        f"status {code}, body {body!r}",
    )

    deadline = time.monotonic() + 10
    while True:
        code, body, js = call("refund query", lambda: wxpay.query_refund(out_refund_no=refund_no), fatal=True)
        refund = js
        if refund.get("status") == "SUCCESS" or time.monotonic() >= deadline:
            break
        time.sleep(0.1)
    report.check(
        "refund query: SUCCESS with the refund amount",
        code == 200 and refund.get("status") == "SUCCESS" and (refund.get("amount") or {}).get("refund") == REFUND,
        f"status {code}, body {body!r}",
    )

    capture = server.wait(NOTIFY_PATH, notification_for("REFUND.SUCCESS", "out_refund_no", refund_no), after=mark)
    if capture is None:
        seen = server.seen(NOTIFY_PATH, after=mark)
        report.fail(
            "REFUND.SUCCESS verified and decrypted by wechatpay.callback()",
            f"no verified notification within the timeout; received {len(seen)}: "
            + "; ".join(c.describe() for c in seen),
        )
    else:
        resource = capture.result["resource"]
        report.check(
            "REFUND.SUCCESS verified and decrypted by wechatpay.callback()",
            resource.get("refund_status") == "SUCCESS"
            and resource.get("out_trade_no") == order
            and (resource.get("amount") or {}).get("refund") == REFUND,
            f"resource {resource!r}",
        )

    code, body, js = call("query after refund", lambda: wxpay.query(out_trade_no=order))
    report.check(
        "query after the refund: trade_state REFUND",
        code == 200 and js.get("trade_state") == "REFUND",
        f"status {code}, body {body!r}",
    )

    # --- a forged notification must not pass the SDK -------------------------------------------
    mark = server.mark()
    status, reply = emulator.send(provider="wechat", out_trade_no=order, tamper_body=True)
    forged = server.seen(NOTIFY_PATH, after=mark)
    report.check(
        "a notification altered after signing is refused by wechatpay.callback()",
        status == 200 and forged and not forged[-1].verified and reply.get("status") == 401,
        lambda: f"/emulator/send answered {status} {reply!r}; captures " + "; ".join(c.describe() for c in forged),
    )

    # --- order B: close (a signed 204), then it cannot be paid ----------------------------------
    other = unique("SDKWXB")
    code, body, js = call(
        "native pay for the order to close",
        lambda: wxpay.pay(description="Memberline 季卡", out_trade_no=other, amount={"total": 5900, "currency": "CNY"}),
    )
    if code == 200:
        code, body, js = call("close", lambda: wxpay.close(out_trade_no=other))
        report.check(
            "close: 204, its empty-body signature verified by the SDK",
            code == 204,
            f"status {code}, body {body!r}",
        )
        code, body, js = call("query after close", lambda: wxpay.query(out_trade_no=other))
        report.check(
            "query after close: trade_state CLOSED",
            code == 200 and js.get("trade_state") == "CLOSED",
            f"status {code}, body {body!r}",
        )
        status, paid = emulator.pay("wechat", other)
        report.check(
            "a closed order cannot be paid (/emulator/pay answers 409)",
            status == 409,
            f"status {status}, body {paid!r}",
        )
    else:
        report.fail("native pay for the order to close", f"status {code}, body {body!r}")

    code, body, js = call("query of an unknown order", lambda: wxpay.query(out_trade_no=unique("SDKWXNONE")))
    report.check(
        "query of an unknown order: 404 ORDER_NOT_EXIST",
        code == 404 and js.get("code") == "ORDER_NOT_EXIST",
        f"status {code}, body {body!r}",
    )
    server.close()


if __name__ == "__main__":
    run_section("wechatpayv3", main)

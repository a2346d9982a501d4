"""WeChat Pay API v3 through the unmodified PyPI SDK `wechatpayv3` (minibear2021), in platform
public-key mode (`public_key` + `public_key_id`, "微信支付公钥"), against the provider emulator.

The SDK verifies the signature of every 2xx answer itself (it raises otherwise), so each call that
returns proves the answer was signed with the platform key named `PUB_KEY_ID_…`; notifications go
through the SDK's own `callback(headers, body)` (signature check and AES-256-GCM decryption).

JSAPI and H5 orders go through the same `pay()` with `pay_type` (and, for JSAPI, the
mini-program's `appid` per call); the JSAPI front-end `paySign` is the SDK's own `sign([appId,
timeStamp, nonceStr, package])`, checked by the emulator as WeChat's client does and compared
byte for byte with the vector the gateway's unit test reproduces (vectors/jsapi_pay_sign.json).
The H5 cashier is opened and paid with `requests`, as the buyer's browser would.

Usage: wechat_v3.py <emulator base URL> <keys dir>
"""

import json
import os
import sys
import time
import urllib.parse
import uuid

import requests
from harness import (
    WECHAT_APIV3_KEY,
    WECHAT_APPID,
    WECHAT_KEY_ID,
    WECHAT_MCHID,
    WECHAT_MINIPROGRAM_APPID,
    WECHAT_SERIAL,
    Emulator,
    NotifyServer,
    parse_json,
    read_forms,
    read_key,
    run_section,
    submit,
    unique,
)
from wechatpayv3 import WeChatPay, WeChatPayType

NOTIFY_PATH = "/wechat/notify"
TOTAL = 1990  # fen
REFUND = 500
PAY_SIGN_VECTOR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "vectors", "jsapi_pay_sign.json")
# Where the H5 cashier sends the buyer back (never followed: nothing listens there).
H5_RETURN = "http://127.0.0.1:9/h5-return"


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

    # --- paySign: the SDK's own signature of the gateway's vector -------------------------------
    def vector_sign():
        with open(PAY_SIGN_VECTOR, encoding="utf-8") as f:
            vector = json.load(f)
        signed = wxpay.sign([vector["appId"], vector["timeStamp"], vector["nonceStr"], vector["package"]])
        return vector, signed

    vector, signed = report.step("paySign of the vector", vector_sign, default=({}, None))
    if signed is not None:
        # PKCS#1 v1.5 is deterministic: the same key and message give the same bytes.
        report.check(
            "paySign of the vector equals the gateway's",
            signed == vector.get("paySign"),
            f"wechatpay.sign() gave {signed!r}, the vector has {vector.get('paySign')!r}",
        )

    def front_end(prepay_id):
        """What the merchant hands the mini-program for `wx.requestPayment`, as the SDK's examples
        make it: a timestamp, a nonce, and `sign([appid, timestamp, nonce, package])`."""
        timestamp = str(int(time.time()))
        nonce = uuid.uuid4().hex
        package = "prepay_id=" + prepay_id
        return {
            "appId": WECHAT_MINIPROGRAM_APPID,
            "timeStamp": timestamp,
            "nonceStr": nonce,
            "package": package,
            "signType": "RSA",
            "paySign": wxpay.sign([WECHAT_MINIPROGRAM_APPID, timestamp, nonce, package]),
        }

    # --- order C: JSAPI in the mini-program -----------------------------------------------------
    def jsapi():
        status, login = emulator.wechat_code("miniprogram")
        if not report.check(
            "a mini-program buyer logs in (/emulator/wechat/codes)",
            status == 200 and login.get("openid") and login.get("appid") == WECHAT_MINIPROGRAM_APPID,
            f"status {status}, body {login!r}",
        ):
            return
        openid = login["openid"]
        order = unique("SDKWXJ")
        code, body, js = call(
            "JSAPI pay",
            lambda: wxpay.pay(
                description="Memberline 会员 月卡",
                out_trade_no=order,
                amount={"total": TOTAL, "currency": "CNY"},
                payer={"openid": openid},
                appid=WECHAT_MINIPROGRAM_APPID,
                pay_type=WeChatPayType.JSAPI,
            ),
        )
        prepay_id = js.get("prepay_id", "")
        if not report.check(
            "JSAPI pay with the mini-program appid and the buyer's openid: 200 with a prepay_id",
            code == 200 and prepay_id.startswith("wx"),
            f"status {code}, body {body!r}",
        ):
            return

        params = report.step("JSAPI front-end parameters", lambda: front_end(prepay_id))
        if params is None:
            return
        # A paySign that is not over these parameters (the signature of another nonce), and a
        # package naming another prepay_id: WeChat's client refuses both.
        forged = dict(params, paySign=front_end(prepay_id)["paySign"])
        status, reply = emulator.pay("wechat", order, jsapi_params=forged)
        report.check(
            "JSAPI: a paySign that is not over the parameters is refused (/emulator/pay answers 400)",
            status == 400 and "paySign" in str(reply.get("error", "")),
            f"status {status}, body {reply!r}",
        )
        other = front_end("wx" + "0" * (len(prepay_id) - 2))
        status, reply = emulator.pay("wechat", order, jsapi_params=other)
        report.check(
            "JSAPI: a package naming another prepay_id is refused (/emulator/pay answers 400)",
            status == 400 and "package" in str(reply.get("error", "")),
            f"status {status}, body {reply!r}",
        )
        code, body, js = call("JSAPI query before payment", lambda: wxpay.query(out_trade_no=order))
        report.check(
            "JSAPI: the refused payments left the order unpaid (trade_state NOTPAY)",
            code == 200 and js.get("trade_state") == "NOTPAY",
            f"status {code}, body {body!r}",
        )

        mark = server.mark()
        status, paid = emulator.pay("wechat", order, jsapi_params=params)
        if not report.check(
            "JSAPI: the buyer pays with the SDK-signed front-end parameters (/emulator/pay, jsapi_params)",
            status == 200 and paid.get("transaction_id"),
            f"status {status}, body {paid!r}, parameters {params!r}",
        ):
            return
        transaction_id = paid["transaction_id"]

        capture = server.wait(NOTIFY_PATH, notification_for("TRANSACTION.SUCCESS", "out_trade_no", order), after=mark)
        if capture is None:
            seen = server.seen(NOTIFY_PATH, after=mark)
            report.fail(
                "JSAPI: TRANSACTION.SUCCESS verified and decrypted by wechatpay.callback()",
                f"no verified notification within the timeout; received {len(seen)}: "
                + "; ".join(c.describe() for c in seen),
            )
        else:
            resource = capture.result["resource"]
            expected = {
                "transaction_id": transaction_id,
                "trade_state": "SUCCESS",
                "trade_type": "JSAPI",
                "appid": WECHAT_MINIPROGRAM_APPID,
                "mchid": WECHAT_MCHID,
            }
            wrong = {k: resource.get(k) for k, v in expected.items() if resource.get(k) != v}
            if (resource.get("payer") or {}).get("openid") != openid:
                wrong["payer"] = resource.get("payer")
            report.check(
                "JSAPI: TRANSACTION.SUCCESS verified and decrypted by wechatpay.callback(), trade_type JSAPI",
                not wrong,
                f"unexpected fields {wrong!r}",
            )

        code, body, js = call("JSAPI query after payment", lambda: wxpay.query(out_trade_no=order))
        report.check(
            "JSAPI query after payment: SUCCESS, trade_type JSAPI, payer.openid the buyer's",
            code == 200
            and js.get("trade_state") == "SUCCESS"
            and js.get("trade_type") == "JSAPI"
            and js.get("transaction_id") == transaction_id
            and (js.get("payer") or {}).get("openid") == openid,
            f"status {code}, body {body!r}, openid {openid}",
        )

    jsapi()

    # --- order D: H5, the cashier page in the buyer's browser -----------------------------------
    def h5():
        order = unique("SDKWXH")
        code, body, js = call(
            "H5 pay",
            lambda: wxpay.pay(
                description="Memberline 会员 月卡",
                out_trade_no=order,
                amount={"total": TOTAL, "currency": "CNY"},
                scene_info={"payer_client_ip": "127.0.0.1", "h5_info": {"type": "Wap"}},
                pay_type=WeChatPayType.H5,
            ),
        )
        h5_url = js.get("h5_url", "")
        if not report.check(
            "H5 pay: 200 with an h5_url to the cashier (checkmweb)",
            code == 200 and h5_url.startswith(base.rstrip("/") + "/cgi-bin/mmpayweb-bin/checkmweb?"),
            f"status {code}, body {body!r}",
        ):
            return
        # What the merchant's page does: append where the buyer comes back to.
        redirect = f"{H5_RETURN}?out_trade_no={order}"
        page = report.step(
            "open the h5_url",
            lambda: requests.get(h5_url + "&redirect_url=" + urllib.parse.quote(redirect, safe=""), timeout=15),
        )
        if page is None:
            return
        forms = [f for f in read_forms(page.text) if "pay" in f.ids]
        if not report.check(
            "H5: the h5_url (with &redirect_url=) opens the cashier page with its Pay button",
            page.status_code == 200 and "text/html" in page.headers.get("Content-Type", "") and forms,
            f"status {page.status_code}, body {page.text[:300]!r}",
        ):
            return
        form = forms[0]
        mark = server.mark()
        paid = report.step(
            "submit the H5 cashier form",
            lambda: submit(page, form),
        )
        if paid is None:
            return
        report.check(
            "H5: paying at the cashier (POST checkmweb/pay) answers 302 to the redirect_url",
            form.action == "/cgi-bin/mmpayweb-bin/checkmweb/pay"
            and paid.status_code == 302
            and paid.headers.get("Location") == redirect,
            f"form {form.method} {form.action} {form.fields!r}; status {paid.status_code}, "
            f"Location {paid.headers.get('Location')!r}",
        )
        capture = server.wait(NOTIFY_PATH, notification_for("TRANSACTION.SUCCESS", "out_trade_no", order), after=mark)
        report.check(
            "H5: TRANSACTION.SUCCESS verified and decrypted by wechatpay.callback(), trade_type MWEB",
            capture is not None and capture.result["resource"].get("trade_type") == "MWEB",
            lambda: "; ".join(c.describe() for c in server.seen(NOTIFY_PATH, after=mark)) or "no notification",
        )
        code, body, js = call("H5 query after payment", lambda: wxpay.query(out_trade_no=order))
        report.check(
            "H5 query after payment: SUCCESS, trade_type MWEB",
            code == 200 and js.get("trade_state") == "SUCCESS" and js.get("trade_type") == "MWEB",
            f"status {code}, body {body!r}",
        )

    h5()

    code, body, js = call("query of an unknown order", lambda: wxpay.query(out_trade_no=unique("SDKWXNONE")))
    report.check(
        "query of an unknown order: 404 ORDER_NOT_EXIST",
        code == 404 and js.get("code") == "ORDER_NOT_EXIST",
        f"status {code}, body {body!r}",
    )
    server.close()


if __name__ == "__main__":
    run_section("wechatpayv3", main)

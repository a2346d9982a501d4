"""The Alipay open API through Ant's official, unmodified PyPI SDK `alipay-sdk-python`
(`DefaultAlipayClient`, `AlipayClientConfig`), RSA2, against the provider emulator.

This client POSTs the common parameters as a query string and `biz_content` as a form body, and
locates the signed object with a regular expression for `}` `,"sign":"`; `execute` raises unless
the answer's `sign` verifies with the Alipay public key. Notifications are verified the way its
documentation shows: `get_sign_content` over every parameter but `sign` and `sign_type`, then
`verify_with_rsa`.

The wap and page cashiers: `page_execute(request, http_method="GET")` gives a URL to open, the
default `page_execute(request)` an auto-submitting POST form (the common parameters, sign
included, in its action; `biz_content` a hidden input), submitted here as a browser would. The
synchronous return on the cashier's 302 to `return_url` is verified like a notification.

The SDK connects to port 80 (443 for https) whatever `server_url` says (and a `server_url` with a
port makes it raise TypeError), so the emulator it talks to must listen on port 80: `run.sh` starts
one on a loopback address of its own, and fails the run where the machine does not allow it.

Usage: alipay_official.py <emulator base URL, port 80> <keys dir>
(run with this SDK first on sys.path: it shares the package name `alipay` with python-alipay-sdk)
"""

import sys
import urllib.parse

import requests
from alipay.aop.api.AlipayClientConfig import AlipayClientConfig
from alipay.aop.api.DefaultAlipayClient import DefaultAlipayClient
from alipay.aop.api.domain.AlipayTradeCloseModel import AlipayTradeCloseModel
from alipay.aop.api.domain.AlipayTradeFastpayRefundQueryModel import AlipayTradeFastpayRefundQueryModel
from alipay.aop.api.domain.AlipayTradePagePayModel import AlipayTradePagePayModel
from alipay.aop.api.domain.AlipayTradePrecreateModel import AlipayTradePrecreateModel
from alipay.aop.api.domain.AlipayTradeQueryModel import AlipayTradeQueryModel
from alipay.aop.api.domain.AlipayTradeRefundModel import AlipayTradeRefundModel
from alipay.aop.api.domain.AlipayTradeWapPayModel import AlipayTradeWapPayModel
from alipay.aop.api.request.AlipayTradeCloseRequest import AlipayTradeCloseRequest
from alipay.aop.api.request.AlipayTradeFastpayRefundQueryRequest import AlipayTradeFastpayRefundQueryRequest
from alipay.aop.api.request.AlipayTradePagePayRequest import AlipayTradePagePayRequest
from alipay.aop.api.request.AlipayTradePrecreateRequest import AlipayTradePrecreateRequest
from alipay.aop.api.request.AlipayTradeQueryRequest import AlipayTradeQueryRequest
from alipay.aop.api.request.AlipayTradeRefundRequest import AlipayTradeRefundRequest
from alipay.aop.api.request.AlipayTradeWapPayRequest import AlipayTradeWapPayRequest
from alipay.aop.api.response.AlipayTradeCloseResponse import AlipayTradeCloseResponse
from alipay.aop.api.response.AlipayTradeFastpayRefundQueryResponse import AlipayTradeFastpayRefundQueryResponse
from alipay.aop.api.response.AlipayTradePrecreateResponse import AlipayTradePrecreateResponse
from alipay.aop.api.response.AlipayTradeQueryResponse import AlipayTradeQueryResponse
from alipay.aop.api.response.AlipayTradeRefundResponse import AlipayTradeRefundResponse
from alipay.aop.api.util.SignatureUtils import get_sign_content, verify_with_rsa
from cryptography.hazmat.primitives import serialization
from harness import (
    ALIPAY_APP_ID,
    ALIPAY_SELLER_ID,
    Emulator,
    NotifyServer,
    read_forms,
    read_key,
    run_section,
    submit,
    unique,
)

NOTIFY_PATH = "/alipay-official/notify"
TOTAL = "19.90"
REFUND = "5.00"
# Where the cashier sends the buyer back (never followed: nothing listens there).
RETURN_URL = "http://127.0.0.1:9/return"
QUIT_URL = "http://127.0.0.1:9/quit"


def pkcs1(pem):
    """The app private key as this SDK reads it (PKCS#1, `BEGIN RSA PRIVATE KEY`, which Alipay's
    key tool hands out for non-Java languages); the repository keeps PKCS#8. Same key."""
    key = serialization.load_pem_private_key(pem.encode(), password=None)
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()
    ).decode()


def main(report):
    base, keys = sys.argv[1], sys.argv[2]
    emulator = Emulator(base)
    server = NotifyServer()
    alipay_public_key = read_key(keys, "alipay", "alipay_public_key.pem")
    config = AlipayClientConfig()
    config.server_url = base.rstrip("/") + "/gateway.do"
    config.app_id = ALIPAY_APP_ID
    config.app_private_key = pkcs1(read_key(keys, "alipay", "app_private_key.pem"))
    config.alipay_public_key = alipay_public_key
    config.sign_type = "RSA2"
    config.timeout = 15
    client = DefaultAlipayClient(alipay_client_config=config)
    notify_url = server.base + NOTIFY_PATH

    def verified(params):
        """What Alipay signs (notifications, synchronous returns), checked as this SDK's
        documentation shows: `get_sign_content` over every parameter but `sign` and `sign_type`,
        then `verify_with_rsa`."""
        params = dict(params)
        sign = params.pop("sign", "")
        params.pop("sign_type", None)
        message = get_sign_content(params).encode("utf-8")
        try:
            return bool(sign) and verify_with_rsa(alipay_public_key, message, sign)
        except Exception:  # rsa raises VerificationError on a mismatch
            return False

    def on_notify(capture):
        params = dict(urllib.parse.parse_qsl(capture.body.decode("utf-8"), keep_blank_values=True))
        capture.result = dict(params)
        capture.verified = verified(params)
        capture.reply_status = 200
        capture.reply_body = b"success" if capture.verified else b"fail"

    server.handle(NOTIFY_PATH, on_notify)

    def execute(what, request, response_class, fatal=False):
        """Executes `request`; the parsed response object, or None when the SDK raised."""

        def run():
            response = response_class()
            response.parse_response_content(client.execute(request))
            return response

        return report.step(what, run, fatal=fatal)

    def fields(response):
        return response.body if response is not None else None

    def precreate(out_trade_no, total, subject):
        model = AlipayTradePrecreateModel()
        model.out_trade_no, model.total_amount, model.subject = out_trade_no, total, subject
        request = AlipayTradePrecreateRequest(biz_model=model)
        request.notify_url = notify_url
        return request

    def query(out_trade_no):
        model = AlipayTradeQueryModel()
        model.out_trade_no = out_trade_no
        return AlipayTradeQueryRequest(biz_model=model)

    def close(out_trade_no):
        model = AlipayTradeCloseModel()
        model.out_trade_no = out_trade_no
        return AlipayTradeCloseRequest(biz_model=model)

    def notification(out_trade_no, status, after, extra=None):
        def match(capture):
            r = capture.result or {}
            return (
                capture.verified
                and r.get("out_trade_no") == out_trade_no
                and r.get("trade_status") == status
                and all(r.get(k) == v for k, v in (extra or {}).items())
            )

        return server.wait(NOTIFY_PATH, match, after=after)

    def no_notification(what, after):
        seen = server.seen(NOTIFY_PATH, after=after)
        report.fail(
            what,
            f"no verified notification within the timeout; received {len(seen)}: "
            + "; ".join(c.describe() for c in seen),
        )

    # --- trade A --------------------------------------------------------------------------------
    order = unique("SDKAOF")
    subject = "Memberline 会员 月卡"
    r = execute("precreate", precreate(order, TOTAL, subject), AlipayTradePrecreateResponse, fatal=True)
    report.check(
        "precreate (POST form): code 10000 with a qr_code, answer sign verified by the SDK",
        r.code == "10000" and r.out_trade_no == order and str(r.qr_code or "").startswith("https://qr.alipay.com/"),
        f"answer {fields(r)!r}",
        fatal=True,
    )

    r = execute("query before the scan", query(order), AlipayTradeQueryResponse)
    report.check(
        "query before the scan: 40004 ACQ.TRADE_NOT_EXIST, a signed business error",
        r is not None and r.code == "40004" and r.sub_code == "ACQ.TRADE_NOT_EXIST",
        f"answer {fields(r)!r}",
    )

    mark = server.mark()
    status, paid = emulator.pay("alipay", order)
    report.check(
        "the buyer scans and pays (/emulator/pay)",
        status == 200 and paid.get("transaction_id"),
        f"status {status}, body {paid!r}",
        fatal=True,
    )
    trade_no = paid["transaction_id"]

    capture = notification(order, "TRADE_SUCCESS", mark)
    if capture is None:
        no_notification("TRADE_SUCCESS notification verified with verify_with_rsa", mark)
    else:
        n = capture.result
        expected = {
            "trade_no": trade_no,
            "total_amount": TOTAL,
            "app_id": ALIPAY_APP_ID,
            "seller_id": ALIPAY_SELLER_ID,
            "subject": subject,
        }
        wrong = {k: n.get(k) for k, v in expected.items() if n.get(k) != v}
        report.check(
            "TRADE_SUCCESS notification verified with verify_with_rsa, with the trade's amount and ids",
            not wrong,
            f"unexpected fields {wrong!r}",
        )
        attempt = emulator.wait_attempt("alipay", order, lambda a: a.get("event") == "TRADE_SUCCESS")
        report.check(
            "the emulator takes the merchant's `success` as success",
            attempt is not None and attempt.get("reply_body") == "success" and attempt.get("success") is True,
            f"logged attempt {attempt!r}",
        )

    r = execute("query after payment", query(order), AlipayTradeQueryResponse)
    report.check(
        "query after payment: TRADE_SUCCESS with the trade_no and total_amount",
        r is not None
        and r.code == "10000"
        and r.trade_status == "TRADE_SUCCESS"
        and r.trade_no == trade_no
        and str(r.total_amount) == TOTAL,
        f"answer {fields(r)!r}",
    )

    request_no = order + "R1"
    model = AlipayTradeRefundModel()
    model.out_trade_no, model.refund_amount, model.out_request_no = order, REFUND, request_no
    mark = server.mark()
    r = execute("refund", AlipayTradeRefundRequest(biz_model=model), AlipayTradeRefundResponse)
    report.check(
        "refund (partial): code 10000, fund_change Y, refund_fee",
        r is not None and r.code == "10000" and r.fund_change == "Y" and str(r.refund_fee) == REFUND,
        f"answer {fields(r)!r}",
    )

    model = AlipayTradeFastpayRefundQueryModel()
    model.out_trade_no, model.out_request_no = order, request_no
    r = execute(
        "refund query", AlipayTradeFastpayRefundQueryRequest(biz_model=model), AlipayTradeFastpayRefundQueryResponse
    )
    report.check(
        "refund query: REFUND_SUCCESS with the refund amount",
        r is not None and r.code == "10000" and r.refund_status == "REFUND_SUCCESS" and str(r.refund_amount) == REFUND,
        f"answer {fields(r)!r}",
    )

    capture = notification(order, "TRADE_SUCCESS", mark, {"out_biz_no": request_no})
    if capture is None:
        no_notification("refund notification verified with verify_with_rsa", mark)
    else:
        report.check(
            "refund notification (TRADE_SUCCESS, out_biz_no) verified with verify_with_rsa",
            capture.result.get("refund_fee") == REFUND,
            f"notification {capture.result!r}",
        )

    mark = server.mark()
    status, reply = emulator.send(provider="alipay", out_trade_no=order, tamper_body=True)
    forged = server.seen(NOTIFY_PATH, after=mark)
    report.check(
        "a notification altered after signing is refused by verify_with_rsa",
        status == 200 and forged and not forged[-1].verified and reply.get("body") == "fail",
        lambda: f"/emulator/send answered {status} {reply!r}; captures " + "; ".join(c.describe() for c in forged),
    )

    # --- trades W and P: the wap and page cashiers in the buyer's browser ----------------------
    def cashier_form(page):
        """The cashier's form with its Pay button, if `page` is Alipay's cashier."""
        forms = [f for f in read_forms(page.text) if "pay" in f.ids]
        ok = page.status_code == 200 and "text/html" in page.headers.get("Content-Type", "") and forms
        return forms[0] if ok else None

    def described(page):
        return f"status {page.status_code}, body {page.text[:400]!r}" if page is not None else "no page"

    model = AlipayTradeWapPayModel()
    model.out_trade_no, model.total_amount, model.subject = unique("SDKAOFW"), TOTAL, "Memberline 会员 月卡"
    model.product_code, model.quit_url = "QUICK_WAP_WAY", QUIT_URL
    request = AlipayTradeWapPayRequest(biz_model=model)
    request.return_url, request.notify_url = RETURN_URL, notify_url
    url = report.step("wap pay page_execute(GET)", lambda: client.page_execute(request, http_method="GET"))
    page = None
    if url is not None:
        page = report.step("open the wap pay URL", lambda: requests.get(url, timeout=15))
    report.check(
        "alipay.trade.wap.pay by page_execute(http_method=GET): the URL opens the HTML cashier with its Pay "
        "button and quit link",
        page is not None
        and url.startswith(config.server_url + "?")
        and cashier_form(page)
        and 'id="quit"' in page.text,
        lambda: f"URL {url!r}; {described(page)}",
    )

    order = unique("SDKAOFP")
    model = AlipayTradePagePayModel()
    model.out_trade_no, model.total_amount, model.subject = order, TOTAL, "Memberline 会员 月卡"
    model.product_code = "FAST_INSTANT_TRADE_PAY"
    request = AlipayTradePagePayRequest(biz_model=model)
    request.return_url, request.notify_url = RETURN_URL, notify_url
    html = report.step("page pay page_execute(POST)", lambda: client.page_execute(request)) or ""
    forms = read_forms(html)
    form = forms[0] if len(forms) == 1 else None
    page = None
    if form is not None:
        # What the browser does with the SDK's form (its script submits it on load).
        page = report.step(
            "submit the page pay form",
            lambda: requests.request(form.method, form.action, data=form.fields, timeout=15),
        )
    cashier = page is not None and cashier_form(page)
    if not report.check(
        "alipay.trade.page.pay by page_execute (POST form): its hidden biz_content posted to its action "
        "(common parameters and sign) opens the HTML cashier",
        form is not None
        and form.method == "post"
        and form.action.startswith(config.server_url + "?")
        and "sign" in dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(form.action).query))
        and [name for name, _ in form.fields] == ["biz_content"]
        and cashier,
        lambda: f"form {html!r}; {described(page)}",
    ):
        cashier = None
    paid = None
    if cashier:
        mark = server.mark()
        paid = report.step(
            "pay at the page cashier",
            lambda: submit(page, cashier),
        )
    if paid is not None:
        location = paid.headers.get("Location", "")
        report.check(
            "page: paying at the cashier (POST /emulator/alipay/cashier/pay) answers 302 to the return_url",
            cashier.action == "/emulator/alipay/cashier/pay"
            and paid.status_code == 302
            and location.startswith(RETURN_URL + "?"),
            f"form {cashier.method} {cashier.action} {cashier.fields!r}; status {paid.status_code}, "
            f"Location {location!r}",
        )
        # What a merchant's return page does: the same check as for a notification.
        returned = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(location).query, keep_blank_values=True))
        report.check(
            "page: the synchronous return (alipay.trade.page.pay.return) verified with verify_with_rsa",
            verified(returned)
            and returned.get("method") == "alipay.trade.page.pay.return"
            and returned.get("out_trade_no") == order
            and returned.get("total_amount") == TOTAL
            and "trade_status" not in returned,
            f"return {returned!r}",
        )
        report.check(
            "page: a return with an altered total_amount is refused by verify_with_rsa",
            returned.get("sign") and not verified(dict(returned, total_amount="0.01")),
            f"return {returned!r}",
        )
        capture = notification(order, "TRADE_SUCCESS", mark)
        if capture is None:
            no_notification("page: TRADE_SUCCESS notification verified with verify_with_rsa", mark)
        else:
            report.ok("page: TRADE_SUCCESS notification verified with verify_with_rsa")
        r = execute("page: query after payment", query(order), AlipayTradeQueryResponse)
        report.check(
            "page: query after payment: TRADE_SUCCESS with the trade_no of the return",
            r is not None
            and r.code == "10000"
            and r.trade_status == "TRADE_SUCCESS"
            and r.trade_no == returned.get("trade_no")
            and str(r.total_amount) == TOTAL,
            f"answer {fields(r)!r}",
        )

    # --- trade B: close before and after the scan -----------------------------------------------
    other = unique("SDKAOFB")
    r = execute(
        "precreate of the trade to close", precreate(other, "59.00", "Memberline 季卡"), AlipayTradePrecreateResponse
    )
    if r is None or r.code != "10000":
        report.fail("precreate of the trade to close", f"answer {fields(r)!r}")
        return
    r = execute("close before the scan", close(other), AlipayTradeCloseResponse)
    report.check(
        "close before the scan: 40004 ACQ.TRADE_NOT_EXIST (the trade does not exist yet)",
        r is not None and r.code == "40004" and r.sub_code == "ACQ.TRADE_NOT_EXIST",
        f"answer {fields(r)!r}",
    )
    status, scanned = emulator.scan("alipay", other)
    report.check("the buyer scans (/emulator/scan)", status == 200, f"status {status}, body {scanned!r}")
    mark = server.mark()
    r = execute("close after the scan", close(other), AlipayTradeCloseResponse)
    report.check(
        "close after the scan: code 10000",
        r is not None and r.code == "10000" and r.out_trade_no == other,
        f"answer {fields(r)!r}",
    )
    r = execute("query after close", query(other), AlipayTradeQueryResponse)
    report.check(
        "query after close: TRADE_CLOSED",
        r is not None and r.code == "10000" and r.trade_status == "TRADE_CLOSED",
        f"answer {fields(r)!r}",
    )
    capture = notification(other, "TRADE_CLOSED", mark)
    if capture is None:
        no_notification("TRADE_CLOSED notification verified with verify_with_rsa", mark)
    else:
        report.ok("TRADE_CLOSED notification verified with verify_with_rsa")
    server.close()


if __name__ == "__main__":
    run_section("alipay-sdk-python", main)

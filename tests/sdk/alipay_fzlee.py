"""The Alipay open API through the unmodified PyPI SDK `python-alipay-sdk` (fzlee, `AliPay`), RSA2,
against the provider emulator.

This client sends every request as a GET query string and finds the signed `*_response` object by
counting braces; it raises unless the answer carries a `sign` that verifies with the Alipay public
key, so each call that returns proves the answer was signed over its exact bytes. Notifications go
through the SDK's own `verify(data, sign)`.

The wap and page cashiers: the SDK's `api_alipay_trade_wap_pay` / `api_alipay_trade_page_pay`
order strings are opened as `gateway?order_string` with `requests` (the buyer's browser), the
cashier's Pay button is submitted, and the synchronous return on the 302 to `return_url` goes
through the same `verify(data, sign)`.

Usage: alipay_fzlee.py <emulator base URL> <keys dir>
"""

import sys
import urllib.parse

import requests
from alipay import AliPay
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

NOTIFY_PATH = "/alipay/notify"
TOTAL = "19.90"
REFUND = "5.00"
# Where the cashier sends the buyer back (never followed: nothing listens there).
RETURN_URL = "http://127.0.0.1:9/return"
QUIT_URL = "http://127.0.0.1:9/quit"


def main(report):
    base, keys = sys.argv[1], sys.argv[2]
    emulator = Emulator(base)
    server = NotifyServer()
    alipay = AliPay(
        appid=ALIPAY_APP_ID,
        app_notify_url=server.base + NOTIFY_PATH,
        app_private_key_string=read_key(keys, "alipay", "app_private_key.pem"),
        alipay_public_key_string=read_key(keys, "alipay", "alipay_public_key.pem"),
        sign_type="RSA2",
    )
    # Configuration only: the SDK has no constructor parameter for its gateway, it is this one
    # attribute ('https://openapi.alipay.com/gateway.do' by default).
    gateway = base.rstrip("/") + "/gateway.do"
    alipay._gateway = gateway

    def on_notify(capture):
        # What a merchant's endpoint does: every parameter that arrived, empty ones included,
        # goes to the SDK's verify (which drops sign_type itself); `success` only when it passes.
        params = dict(urllib.parse.parse_qsl(capture.body.decode("utf-8"), keep_blank_values=True))
        sign = params.pop("sign", "")
        capture.result = dict(params)
        capture.verified = bool(sign) and alipay.verify(params, sign)
        capture.reply_status = 200
        capture.reply_body = b"success" if capture.verified else b"fail"

    server.handle(NOTIFY_PATH, on_notify)

    def call(what, fn, fatal=False):
        return report.step(what, fn, fatal=fatal, default={}) or {}

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

    # --- trade A: precreate, query before the scan, pay, notify, query, refund ------------------
    order = unique("SDKALI")
    subject = "Memberline 会员 月卡"
    r = call(
        "precreate",
        lambda: alipay.api_alipay_trade_precreate(subject=subject, out_trade_no=order, total_amount=TOTAL),
        fatal=True,
    )
    report.check(
        "precreate (GET): code 10000 with a qr_code, answer sign verified by the SDK",
        r.get("code") == "10000"
        and r.get("out_trade_no") == order
        and str(r.get("qr_code", "")).startswith("https://qr.alipay.com/"),
        f"answer {r!r}",
        fatal=True,
    )

    r = call("query before the scan", lambda: alipay.api_alipay_trade_query(out_trade_no=order))
    report.check(
        "query before the scan: 40004 ACQ.TRADE_NOT_EXIST, a signed business error",
        r.get("code") == "40004" and r.get("sub_code") == "ACQ.TRADE_NOT_EXIST",
        f"answer {r!r}",
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
        no_notification("TRADE_SUCCESS notification verified by alipay.verify()", mark)
    else:
        n = capture.result
        expected = {
            "trade_no": trade_no,
            "total_amount": TOTAL,
            "app_id": ALIPAY_APP_ID,
            "seller_id": ALIPAY_SELLER_ID,
            "subject": subject,
            "notify_type": "trade_status_sync",
        }
        wrong = {k: n.get(k) for k, v in expected.items() if n.get(k) != v}
        empty = [k for k, v in n.items() if v == ""]
        report.check(
            "TRADE_SUCCESS notification verified by alipay.verify(), with the trade's amount and ids",
            not wrong and not empty,
            f"unexpected fields {wrong!r}, empty parameters {empty!r}",
        )
        attempt = emulator.wait_attempt("alipay", order, lambda a: a.get("event") == "TRADE_SUCCESS")
        report.check(
            "the emulator takes the merchant's `success` as success",
            attempt is not None and attempt.get("reply_body") == "success" and attempt.get("success") is True,
            f"logged attempt {attempt!r}",
        )

    r = call("query after payment", lambda: alipay.api_alipay_trade_query(out_trade_no=order))
    report.check(
        "query after payment: TRADE_SUCCESS with the trade_no and total_amount",
        r.get("code") == "10000"
        and r.get("trade_status") == "TRADE_SUCCESS"
        and r.get("trade_no") == trade_no
        and r.get("total_amount") == TOTAL,
        f"answer {r!r}",
    )

    request_no = order + "R1"
    mark = server.mark()
    r = call(
        "refund",
        lambda: alipay.api_alipay_trade_refund(refund_amount=REFUND, out_trade_no=order, out_request_no=request_no),
    )
    report.check(
        "refund (partial): code 10000, fund_change Y, refund_fee",
        r.get("code") == "10000" and r.get("fund_change") == "Y" and r.get("refund_fee") == REFUND,
        f"answer {r!r}",
    )

    r = call(
        "refund query",
        lambda: alipay.api_alipay_trade_fastpay_refund_query(out_request_no=request_no, out_trade_no=order),
    )
    report.check(
        "refund query: REFUND_SUCCESS with the refund amount",
        r.get("code") == "10000" and r.get("refund_status") == "REFUND_SUCCESS" and r.get("refund_amount") == REFUND,
        f"answer {r!r}",
    )

    capture = notification(order, "TRADE_SUCCESS", mark, {"out_biz_no": request_no})
    if capture is None:
        no_notification("refund notification verified by alipay.verify()", mark)
    else:
        report.check(
            "refund notification (TRADE_SUCCESS, out_biz_no) verified by alipay.verify()",
            capture.result.get("refund_fee") == REFUND,
            f"notification {capture.result!r}",
        )

    # --- a forged notification must not pass the SDK -------------------------------------------
    mark = server.mark()
    status, reply = emulator.send(provider="alipay", out_trade_no=order, tamper_body=True)
    forged = server.seen(NOTIFY_PATH, after=mark)
    report.check(
        "a notification altered after signing is refused by alipay.verify()",
        status == 200 and forged and not forged[-1].verified and reply.get("body") == "fail",
        lambda: f"/emulator/send answered {status} {reply!r}; captures " + "; ".join(c.describe() for c in forged),
    )

    # --- trades W and P: the wap and page cashiers in the buyer's browser ----------------------
    def cashier(kind, build, tamper):
        """Opens the order string at the gateway, pays at the cashier, verifies the return."""
        order = unique("SDKALIW" if kind == "wap" else "SDKALIP")
        method = f"alipay.trade.{kind}.pay"
        order_string = report.step(f"{kind} pay order string", lambda: build(order))
        if order_string is None:
            return
        # The merchant sends the browser to `gateway?order_string`.
        page = report.step(f"open the {kind} cashier", lambda: requests.get(gateway + "?" + order_string, timeout=15))
        if page is None:
            return
        forms = [f for f in read_forms(page.text) if "pay" in f.ids]
        if not report.check(
            f"{method} (GET gateway?order_string): 200, the HTML cashier with its Pay button"
            + (" and quit link" if kind == "wap" else ""),
            page.status_code == 200
            and "text/html" in page.headers.get("Content-Type", "")
            and forms
            and (kind != "wap" or 'id="quit"' in page.text),
            f"status {page.status_code}, body {page.text[:400]!r}",
        ):
            return
        form = forms[0]
        mark = server.mark()
        paid = report.step(
            f"pay at the {kind} cashier",
            lambda: submit(page, form),
        )
        if paid is None:
            return
        location = paid.headers.get("Location", "")
        if not report.check(
            f"{kind}: paying at the cashier (POST /emulator/alipay/cashier/pay) answers 302 to the return_url",
            form.action == "/emulator/alipay/cashier/pay"
            and paid.status_code == 302
            and location.startswith(RETURN_URL + "?"),
            f"form {form.method} {form.action} {form.fields!r}; status {paid.status_code}, Location {location!r}",
        ):
            return
        # What a merchant's return page does, as the SDK's README shows: every parameter but
        # `sign` to verify (which drops sign_type itself).
        returned = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(location).query, keep_blank_values=True))
        sign = returned.pop("sign", "")
        verified = report.step(f"{kind}: verify the return", lambda: bool(sign) and alipay.verify(dict(returned), sign))
        report.check(
            f"{kind}: the synchronous return ({method}.return) verified by alipay.verify()",
            verified is True
            and returned.get("method") == method + ".return"
            and returned.get("out_trade_no") == order
            and returned.get("total_amount") == TOTAL
            and "trade_status" not in returned,
            f"verify gave {verified!r}; return {returned!r}",
        )
        if tamper:
            altered = dict(returned, total_amount="0.01")
            verified = report.step("verify an altered return", lambda: alipay.verify(altered, sign))
            report.check(
                f"{kind}: a return with an altered total_amount is refused by alipay.verify()",
                verified is False,
                f"verify gave {verified!r}",
            )
        capture = notification(order, "TRADE_SUCCESS", mark)
        if capture is None:
            no_notification(f"{kind}: TRADE_SUCCESS notification verified by alipay.verify()", mark)
        else:
            report.ok(f"{kind}: TRADE_SUCCESS notification verified by alipay.verify()")
        r = call(f"{kind}: query after payment", lambda: alipay.api_alipay_trade_query(out_trade_no=order))
        report.check(
            f"{kind}: query after payment: TRADE_SUCCESS with the trade_no of the return",
            r.get("code") == "10000"
            and r.get("trade_status") == "TRADE_SUCCESS"
            and r.get("trade_no") == returned.get("trade_no")
            and r.get("total_amount") == TOTAL,
            f"answer {r!r}",
        )

    # python-alipay-sdk's wap pay sends product_code QUICK_WAP_PAY (Alipay's is QUICK_WAP_WAY);
    # extra keyword arguments go into biz_content. notify_url is the constructor's app_notify_url.
    cashier(
        "wap",
        lambda order: alipay.api_alipay_trade_wap_pay(
            subject="Memberline 会员 月卡", out_trade_no=order, total_amount=TOTAL, return_url=RETURN_URL, quit_url=QUIT_URL
        ),
        tamper=True,
    )
    cashier(
        "page",
        lambda order: alipay.api_alipay_trade_page_pay(
            subject="Memberline 会员 月卡", out_trade_no=order, total_amount=TOTAL, return_url=RETURN_URL
        ),
        tamper=False,
    )

    # --- trade B: close before and after the scan -----------------------------------------------
    other = unique("SDKALIB")
    r = call(
        "precreate of the trade to close",
        lambda: alipay.api_alipay_trade_precreate(subject="Memberline 季卡", out_trade_no=other, total_amount="59.00"),
    )
    if r.get("code") != "10000":
        report.fail("precreate of the trade to close", f"answer {r!r}")
        return
    r = call("close before the scan", lambda: alipay.api_alipay_trade_close(out_trade_no=other))
    report.check(
        "close before the scan: 40004 ACQ.TRADE_NOT_EXIST (the trade does not exist yet)",
        r.get("code") == "40004" and r.get("sub_code") == "ACQ.TRADE_NOT_EXIST",
        f"answer {r!r}",
    )
    status, scanned = emulator.scan("alipay", other)
    report.check("the buyer scans (/emulator/scan)", status == 200, f"status {status}, body {scanned!r}")
    mark = server.mark()
    r = call("close after the scan", lambda: alipay.api_alipay_trade_close(out_trade_no=other))
    report.check(
        "close after the scan: code 10000",
        r.get("code") == "10000" and r.get("out_trade_no") == other,
        f"answer {r!r}",
    )
    r = call("query after close", lambda: alipay.api_alipay_trade_query(out_trade_no=other))
    report.check(
        "query after close: TRADE_CLOSED",
        r.get("code") == "10000" and r.get("trade_status") == "TRADE_CLOSED",
        f"answer {r!r}",
    )
    capture = notification(other, "TRADE_CLOSED", mark)
    if capture is None:
        no_notification("TRADE_CLOSED notification verified by alipay.verify()", mark)
    else:
        report.ok("TRADE_CLOSED notification verified by alipay.verify()")
    status, paid = emulator.pay("alipay", other)
    report.check(
        "a closed trade cannot be paid (/emulator/pay answers 409)",
        status == 409,
        f"status {status}, body {paid!r}",
    )
    server.close()


if __name__ == "__main__":
    run_section("python-alipay-sdk", main)

"""What the SDK checks share: the `ok - …` / `FAIL - …` report, the provider emulator's
`/emulator/…` controls, the development keys and identifiers, a local HTTP server that plays
the merchant's notify endpoint (it hands every notification to the SDK under test as it arrives
and answers the way the provider expects a merchant to), and a reader of the HTML forms a buyer's
browser would submit (the cashiers' Pay buttons, the official Alipay SDK's auto-submitting form).

Only the standard library is used here, so that nothing in it can stand in for the SDK under test.
"""

import json
import os
import re
import sys
import threading
import time
import traceback
import urllib.error
import urllib.parse
import urllib.request
from html.entities import html5
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import requests

# deploy/dev-keys/README.md
WECHAT_MCHID = "1900000109"
WECHAT_APPID = "wxd0e1c2b3a4958677"
# tests/emulator/README.md: the mini-program bound to the same mchid (JSAPI orders, login codes)
WECHAT_MINIPROGRAM_APPID = "wx8f1e2d3c4b5a6978"
WECHAT_SERIAL = "4A7C2ABF7ABB4EA58C06FF6161AFF456880096EC"
WECHAT_KEY_ID = "PUB_KEY_ID_0119000001092026112400000001"
WECHAT_APIV3_KEY = "w20rERqvyXUYJfRcGdayYGsFga5MZsn8"
ALIPAY_APP_ID = "2021000148600001"
ALIPAY_SELLER_ID = "2088100000000001"

# How long a notification may take to arrive (the emulator sends at once; retries are scaled).
NOTIFY_TIMEOUT = 10.0


class Abort(Exception):
    """Raised by a fatal check: the rest of the section depends on it."""


class Report:
    """Prints one line per assertion and counts them."""

    def __init__(self, section):
        self.section = section
        self.passed = 0
        self.failed = 0
        self.skipped = 0

    def _line(self, text):
        print(text, flush=True)

    def ok(self, what):
        self.passed += 1
        self._line(f"ok - {self.section}: {what}")

    def fail(self, what, why, fatal=False):
        self.failed += 1
        why = " ".join(str(why).split())
        if len(why) > 600:
            why = why[:600] + "…"
        self._line(f"FAIL - {self.section}: {what}: {why}")
        if fatal:
            raise Abort(what)

    def skip(self, what, why):
        self.skipped += 1
        self._line(f"skip - {self.section}: {what}: {why}")

    def check(self, what, condition, why, fatal=False):
        """`ok` when `condition` holds, else `FAIL` with `why` (a string or a callable)."""
        if condition:
            self.ok(what)
            return True
        self.fail(what, why() if callable(why) else why, fatal)
        return False

    def step(self, what, fn, fatal=False, default=None):
        """Runs `fn()`; an exception is a FAIL of `what` (the SDK's own message included) and
        gives `default`."""
        try:
            return fn()
        except Abort:
            raise
        except Exception as e:  # any SDK error is a failed assertion
            if os.environ.get("SDK_CHECK_TRACEBACK"):
                traceback.print_exc()
            self.fail(what, f"{type(e).__name__}: {e}", fatal)
            return default

    def finish(self):
        """The machine-readable tally the driver reads, then the exit status."""
        print(f"#tally {self.passed} {self.failed} {self.skipped}", flush=True)
        return 1 if self.failed else 0


def run_section(section, body):
    """Runs `body(report)` and exits with the tally; an unexpected crash is one more failure."""
    report = Report(section)
    try:
        body(report)
    except Abort as e:
        print(f"# {section}: stopped after the failed check '{e}'", flush=True)
    except Exception as e:  # a crash is one more failure
        traceback.print_exc()
        report.fail("section crashed", f"{type(e).__name__}: {e}")
    sys.exit(report.finish())


def parse_json(text):
    """`text` as a JSON object, or {} when it is not one."""
    try:
        value = json.loads(text)
    except (TypeError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def read_key(keys_dir, provider, name):
    with open(os.path.join(keys_dir, provider, name), encoding="utf-8") as f:
        return f.read()


def unique(prefix):
    """A trade number unique to this run: `prefix` + 10 digits of time + 4 of the pid."""
    return f"{prefix}{int(time.time() * 1000) % 10**10:010d}{os.getpid() % 10**4:04d}"


class Emulator:
    """The `/emulator/…` control API (never part of either provider's protocol)."""

    def __init__(self, base):
        self.base = base.rstrip("/")

    def _call(self, method, path, payload=None):
        data = None if payload is None else json.dumps(payload).encode()
        request = urllib.request.Request(self.base + path, data=data, method=method)
        if data is not None:
            request.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(request, timeout=15) as response:
                status, raw = response.status, response.read()
        except urllib.error.HTTPError as e:
            status, raw = e.code, e.read()
        try:
            return status, json.loads(raw or b"null")
        except ValueError:
            return status, raw.decode("utf-8", "replace")

    def pay(self, provider, out_trade_no, **extra):
        return self._call("POST", "/emulator/pay", {"provider": provider, "out_trade_no": out_trade_no, **extra})

    def wechat_code(self, app):
        """A WeChat login code for a new buyer of `app`: `{code, openid, appid}`."""
        return self._call("POST", "/emulator/wechat/codes", {"app": app})

    def scan(self, provider, out_trade_no):
        return self._call("POST", "/emulator/scan", {"provider": provider, "out_trade_no": out_trade_no})

    def send(self, **request):
        return self._call("POST", "/emulator/send", request)

    def attempts(self, provider, out_trade_no):
        status, body = self._call(
            "GET", f"/emulator/notifications?provider={provider}&out_trade_no={urllib.request.quote(out_trade_no)}"
        )
        return body if status == 200 and isinstance(body, list) else []

    def wait_attempt(self, provider, out_trade_no, predicate, timeout=NOTIFY_TIMEOUT):
        """The first send attempt the emulator logged for the trade that satisfies `predicate`."""
        deadline = time.monotonic() + timeout
        while True:
            for attempt in self.attempts(provider, out_trade_no):
                if predicate(attempt):
                    return attempt
            if time.monotonic() >= deadline:
                return None
            time.sleep(0.05)


_CHARREF = re.compile(r"&(#[xX][0-9A-Fa-f]+;?|#[0-9]+;?|[A-Za-z][A-Za-z0-9]*;?)")


def attribute_value(raw):
    """An HTML attribute value as a browser reads it (HTML, "named character reference state"):
    references are decoded, except a named one without its `;` followed by a letter, a digit or
    `=`, which stays as written. That is how a form action such as `gateway.do?…&notify_url=…
    &timestamp=…` survives although `&not` and `&times` are entities; html.parser (3.11) decodes
    those too, so it is not used here."""

    def replace(m):
        ref = m.group(1)
        if ref.startswith("#"):
            digits = ref[1:].rstrip(";")
            try:
                code = int(digits[1:], 16) if digits[:1] in "xX" else int(digits)
                return chr(code) if 0 < code <= 0x10FFFF else "\ufffd"
            except ValueError:
                return m.group(0)
        if ref.endswith(";") and ref in html5:
            return html5[ref]
        # The longest entity that starts the name; without `;` only the legacy ones are entities.
        for end in range(len(ref.rstrip(";")), 0, -1):
            name = ref[:end]
            if name in html5:
                following = m.string[m.start(1) + end : m.start(1) + end + 1]
                if following.isalnum() or following == "=":
                    return m.group(0)
                return html5[name] + ref[end:]
        return m.group(0)

    return _CHARREF.sub(replace, raw)


class Form:
    """One `<form>` of a page: its action and method as written, the name/value pairs a browser
    submits (named inputs but buttons), and the ids of its elements."""

    def __init__(self, attrs):
        self.action = attrs.get("action", "")
        self.method = (attrs.get("method") or "get").lower()
        self.fields = []
        self.ids = set(filter(None, [attrs.get("id")]))


_TAG = re.compile(r"<(/?)(form|input|button)\b((?:[^>\"']|\"[^\"]*\"|'[^']*')*)>", re.I)
_ATTR = re.compile(r"""([^\s"'=/>]+)(?:\s*=\s*(?:"([^"]*)"|'([^']*)'|([^\s"'>]+)))?""")


def submit(page, form):
    """Submits `form` of the fetched `page` (a requests response) as a browser would, without
    following the redirect it answers."""
    return requests.request(
        form.method,
        urllib.parse.urljoin(page.url, form.action),
        data=form.fields,
        allow_redirects=False,
        timeout=15,
    )


def read_forms(page):
    """The forms of an HTML page, in order (enough HTML for the pages at hand: forms with inputs
    and buttons, attribute values decoded as a browser does)."""
    forms, current = [], None
    for closing, tag, rest in _TAG.findall(page):
        tag = tag.lower()
        attrs = {}
        for name, dq, sq, bare in _ATTR.findall(rest):
            attrs.setdefault(name.lower(), attribute_value(dq or sq or bare))
        if tag == "form":
            if closing:
                current = None
            else:
                current = Form(attrs)
                forms.append(current)
            continue
        if current is None or closing:
            continue
        if attrs.get("id"):
            current.ids.add(attrs["id"])
        kind = attrs.get("type", "submit" if tag == "button" else "text").lower()
        if tag == "input" and attrs.get("name") and kind not in ("submit", "button", "image", "reset", "file"):
            current.fields.append((attrs["name"], attrs.get("value", "")))
    return forms


class Capture:
    """One notification as it arrived, and what the SDK made of it."""

    def __init__(self, path, headers, body):
        self.path = path
        self.headers = headers  # the request's header object (case-insensitive get)
        self.body = body  # the raw bytes
        self.verified = False  # whether the SDK verified it
        self.result = None  # what the SDK returned (decrypted / parsed notification)
        self.error = None  # an exception the SDK raised
        self.reply_status = None
        self.reply_body = b""

    def describe(self):
        return (
            f"{self.path}: verified={self.verified} result={self.result!r} error={self.error!r} "
            f"body={self.body[:300]!r}"
        )


class NotifyServer:
    """The merchant's notify endpoint on 127.0.0.1:<free port>.

    `handle(path, fn)` registers `fn(capture)` for POSTs to `path`; it must set
    `capture.verified` / `result` and `reply_status` / `reply_body`. Everything that arrives is
    kept, in order, for `wait`.
    """

    def __init__(self):
        self._handlers = {}
        self._captures = []
        self._cond = threading.Condition()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self):  # http.server's naming
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                path = self.path.split("?", 1)[0]
                capture = Capture(path, self.headers, body)
                fn = server._handlers.get(path)
                if fn is None:
                    capture.reply_status, capture.reply_body = 404, b"no such notify path"
                else:
                    try:
                        fn(capture)
                    except Exception as e:  # recorded, answered as a failure
                        capture.error = f"{type(e).__name__}: {e}"
                        capture.reply_status = 500
                        capture.reply_body = json.dumps({"code": "FAIL", "message": capture.error}).encode()
                # Kept before the reply goes out: whoever triggered the send may look right after.
                with server._cond:
                    server._captures.append(capture)
                    server._cond.notify_all()
                self.send_response(capture.reply_status or 500)
                if capture.reply_body:
                    self.send_header("Content-Type", "text/plain; charset=utf-8")
                if capture.reply_status != 204:  # a 204 carries no Content-Length (RFC 9110)
                    self.send_header("Content-Length", str(len(capture.reply_body)))
                self.end_headers()
                if capture.reply_body:
                    self.wfile.write(capture.reply_body)

            def log_message(self, *args):
                pass

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self.base = f"http://127.0.0.1:{self._httpd.server_address[1]}"
        threading.Thread(target=self._httpd.serve_forever, daemon=True).start()

    def handle(self, path, fn):
        self._handlers[path] = fn
        return self.base + path

    def mark(self):
        """A position in the arrival order, for `wait(after=…)`."""
        with self._cond:
            return len(self._captures)

    def wait(self, path, predicate, after=0, timeout=NOTIFY_TIMEOUT):
        """The first capture at `path` (from position `after`) that satisfies `predicate`."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for capture in self._captures[after:]:
                    if capture.path == path and predicate(capture):
                        return capture
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                self._cond.wait(remaining)

    def seen(self, path, after=0):
        with self._cond:
            return [c for c in self._captures[after:] if c.path == path]

    def close(self):
        self._httpd.shutdown()

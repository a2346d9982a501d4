"""Runs each SDK section in a process of its own, passes its `ok` / `FAIL` / `skip` lines through,
and ends with `sdk: N passed, N failed` (exit status 1 on any failure). A skip is a failure: what
was skipped was not checked.

The sections run apart because `python-alipay-sdk` and Ant's `alipay-sdk-python` both install a
top-level package named `alipay`: the official one lives in a directory of its own (`--official`)
that is put first on that section's PYTHONPATH.

Usage: sdk_check.py --emulator URL --keys DIR --official DIR
                    (--emulator80 URL | --no-emulator80 REASON)
"""

import argparse
import os
import subprocess
import sys
import threading

HERE = os.path.dirname(os.path.abspath(__file__))
SECTION_TIMEOUT = 120


def run(name, script, base, keys, extra_path=None):
    """Runs one section; returns (passed, failed, skipped)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (extra_path, HERE) if p)
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    tally = None
    try:
        process = subprocess.Popen(
            [sys.executable, os.path.join(HERE, script), base, keys],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
    except OSError as e:
        print(f"FAIL - {name}: could not start: {e}", flush=True)
        return 0, 1, 0
    # Lines are passed through as they come; a section that hangs is killed.
    timed_out = threading.Event()

    def kill():
        timed_out.set()
        process.kill()

    timer = threading.Timer(SECTION_TIMEOUT, kill)
    timer.start()
    lines = []
    try:
        for line in process.stdout:
            line = line.rstrip("\n")
            if line.startswith("#tally "):
                tally = tuple(int(n) for n in line.split()[1:4])
            else:
                lines.append(line)
                print(line, flush=True)
        process.wait()
    finally:
        timer.cancel()
    if timed_out.is_set():
        print(f"FAIL - {name}: did not finish within {SECTION_TIMEOUT} s", flush=True)
        tally = None
    if tally is None:
        # A crash before the section could count (an import error, a timeout): count what it
        # printed, and the crash itself.
        passed = sum(1 for line in lines if line.startswith("ok - "))
        failed = sum(1 for line in lines if line.startswith("FAIL - "))
        print(f"FAIL - {name}: exited with status {process.returncode} without a tally", flush=True)
        return passed, failed + 1, 0
    if process.returncode != 0 and tally[1] == 0:
        print(f"FAIL - {name}: exited with status {process.returncode}", flush=True)
        return tally[0], 1, tally[2]
    return tally


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--emulator", required=True)
    parser.add_argument("--keys", required=True)
    parser.add_argument("--official", required=True)
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--emulator80")
    group.add_argument("--no-emulator80", metavar="REASON")
    args = parser.parse_args()

    totals = [0, 0, 0]
    sections = [
        ("wechatpayv3", "wechat_v3.py", args.emulator, None),
        ("python-alipay-sdk", "alipay_fzlee.py", args.emulator, None),
    ]
    if args.emulator80:
        sections.append(("alipay-sdk-python", "alipay_official.py", args.emulator80, args.official))
    for name, script, base, extra_path in sections:
        for i, n in enumerate(run(name, script, base, args.keys, extra_path)):
            totals[i] += n
    if not args.emulator80:
        # The only section that sends Alipay requests as POST forms, as the gateway's client does:
        # a run without it has not checked them.
        print(f"FAIL - alipay-sdk-python: not run: {args.no_emulator80}", flush=True)
        totals[1] += 1

    passed, failed, skipped = totals
    failed += skipped
    print(f"sdk: {passed} passed, {failed} failed" + (f" ({skipped} skipped)" if skipped else ""), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

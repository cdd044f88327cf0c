"""Syscalls per message in steady state, counted with strace against smtp-sink.

    python bench/syscalls.py                      # this checkout, both calls, both timeouts
    python bench/syscalls.py --src /other/src     # another checkout's src/ (e.g. a git worktree)

For each of ``sendmail()`` and ``send_many()``, with ``timeout=30`` and with no
timeout, a child process sends 200 messages (warm-up), then 2000 between two
``getsid(0)`` markers; the syscalls strace sees between the markers are divided
by 2000.  Needs ``strace`` and ``/usr/sbin/smtp-sink``.
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from sink import PinnedSink  # noqa: E402

CHILD = r"""
import os, sys
import fastsmtplib
mode, timeout, port, n = sys.argv[1], None if sys.argv[2] == "none" else float(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
msg = "Subject: x\r\n\r\n" + "hello world\r\n" * 70
c = fastsmtplib.SMTP("127.0.0.1", port, timeout=timeout)
c.ehlo()
def batch(k):
    if mode == "sendmail":
        for _ in range(k):
            assert c.sendmail("news@example.com", ["reader@example.org"], msg) == {}
    else:
        for r in c.send_many(("news@example.com", ["reader@example.org"], msg) for _ in range(k)):
            assert r.ok, r
batch(200)
os.getsid(0); batch(n); os.getsid(0)
c.quit()
"""

MARK = re.compile(r"(?:\d+\s+)?getsid\(0\)")
CALL = re.compile(r"(?:\d+\s+)?(\w+)\(")


def count(src: str, mode: str, timeout: str, port: int, n: int = 2000) -> collections.Counter:
    with tempfile.TemporaryDirectory() as tmp:
        trace = os.path.join(tmp, "trace")
        env = dict(os.environ, PYTHONPATH=src)
        subprocess.run(["strace", "-f", "-qq", "-e", "trace=!futex,getrusage,clock_gettime", "-o", trace,
                        sys.executable, "-c", CHILD, mode, timeout, str(port), str(n)], check=True, env=env)
        lines = open(trace).read().splitlines()
    marks = [i for i, line in enumerate(lines) if MARK.match(line)]
    calls = collections.Counter()
    for line in lines[marks[0] + 1: marks[1]]:
        m = CALL.match(line)
        if m:
            calls[m.group(1)] += 1
    return calls


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--src", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src"))
    ap.add_argument("-n", type=int, default=2000)
    args = ap.parse_args()
    with PinnedSink(cpu=1) as sink:
        time.sleep(0.2)
        for mode in ("sendmail", "send_many"):
            for timeout in ("30", "none"):
                calls = count(os.path.abspath(args.src), mode, timeout, sink.port, args.n)
                total = sum(calls.values()) / args.n
                detail = ", ".join(f"{k} {v / args.n:.2f}" for k, v in calls.most_common())
                print(f"{mode:9} timeout={timeout:4}  {total:5.2f} syscalls/msg  ({detail})")
    return 0


if __name__ == "__main__":
    sys.exit(main())

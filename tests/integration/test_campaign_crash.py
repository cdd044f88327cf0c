"""Crash safety: the sender is SIGKILLed at random points and resumed until done.

The sender runs as a real program (``python -m fastsmtplib send``) against the
project's ``Sink`` with ``store=DIR`` in this process: the store is the
server's own record of what it accepted, independent of the sender's journal.
Each round kills the sender once it has recorded a random number of
deliveries (plus a random delay, so kills land in every phase: import,
rendering, the commit before hand-over, in flight, the results commit), then
starts it again with ``--resume``.  At the end:

* every recipient the journal calls ``delivered`` is in the store exactly once;
* every ``uncertain`` one is there at most once (its body may have gone out);
* nothing else is ``pending``/``deferred``/``sending``, and nobody got two copies.
"""

from __future__ import annotations

import collections
import csv
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time

import pytest

from fastsmtplib.sink import Sink

N = 2000


def _counts(db):
    try:
        conn = sqlite3.connect("file:%s?mode=ro" % db, uri=True, timeout=1)
        try:
            return dict(conn.execute("SELECT state, COUNT(*) FROM recipients GROUP BY state"))
        finally:
            conn.close()
    except sqlite3.Error:
        return {}


def _send(tmp, port, resume, extra=()):
    argv = [sys.executable, "-m", "fastsmtplib", "send", "--recipients", str(tmp / "list.csv"),
            "--subject", "Hi {{name}}", "--text", str(tmp / "body.txt"), "--from", "news@example.org",
            "--server", "127.0.0.1:%d" % port, "--journal", str(tmp / "j.db"), "--quiet", "--json",
            "--rate", "600", "--connections", "3", *extra]
    if resume:
        argv.append("--resume")
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.parametrize("seed", [1, 2])
def test_sigkill_and_resume_never_duplicates(tmp_path, seed):
    rng = random.Random(seed)
    with open(tmp_path / "list.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["email", "name"])
        for i in range(N):
            w.writerow(["r%d@example.net" % i, "Reader %d" % i])
    (tmp_path / "body.txt").write_text("Hello {{name}}\n" + "x" * 70 + "\n")
    db = tmp_path / "j.db"
    store = tmp_path / "store"
    kills = 0
    history = []
    with Sink(port=0, store=store) as sink:
        # Kill points: random times after each start, so kills land in every
        # phase (start-up, import, rendering, the commit before hand-over, in
        # flight, the results commit).
        for i in range(4):
            p = _send(tmp_path, sink.port, resume=i > 0)
            time.sleep(rng.uniform(0.3, 1.2))
            if p.poll() is None:
                p.send_signal(signal.SIGKILL)
                kills += 1
            out, err = p.communicate(timeout=30)
            history.append((p.returncode, _counts(db)))
        p = _send(tmp_path, sink.port, resume=True)
        out, err = p.communicate(timeout=120)
        time.sleep(0.2)  # let the sink finish writing anything in flight
        stored = sink.stored()
    assert kills >= 3, history  # the run was really interrupted
    assert p.returncode in (0, 1), err
    conn = sqlite3.connect(db)
    states = dict(conn.execute("SELECT address, state FROM recipients"))
    conn.close()
    assert len(states) == N
    got = collections.Counter(r for m in stored for r in m.recipients)
    assert max(got.values()) == 1, [a for a, n in got.items() if n > 1]
    leftover = {s for s in states.values()} - {"delivered", "uncertain"}
    assert not leftover, (leftover, history)
    for addr, state in states.items():
        if state == "delivered":
            assert got[addr] == 1, (addr, history)
        else:
            assert got[addr] <= 1
    uncertain = sum(1 for s in states.values() if s == "uncertain")
    assert p.returncode == (1 if uncertain else 0)
    # Uncertainty is bounded by what can be in flight at a kill (batches marked
    # before hand-over), not by the list size.
    assert uncertain <= kills * (200 + 128), (uncertain, history)
    assert len(stored) == sum(got.values())
    # Each stored message is the right one for its recipient.
    for m in stored[:50]:
        n = int(m.recipients[0][1:].split("@")[0])
        assert b"\r\nSubject: Hi Reader %d\r\n" % n in m.content


def test_second_run_on_a_live_journal_exits_3(tmp_path):
    with open(tmp_path / "list.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["email", "name"])
        for i in range(300):
            w.writerow(["r%d@example.net" % i, "R%d" % i])
    (tmp_path / "body.txt").write_text("Hello {{name}}\n")
    with Sink(port=0) as sink:
        first = _send(tmp_path, sink.port, resume=False, extra=["--rate", "50"])
        try:
            deadline = time.monotonic() + 30
            while _counts(tmp_path / "j.db").get("delivered", 0) < 1 and time.monotonic() < deadline:
                time.sleep(0.01)
            second = _send(tmp_path, sink.port, resume=True)
            out, err = second.communicate(timeout=30)
            assert second.returncode == 3, err
            assert "in use by another run (pid %d)" % first.pid in err
        finally:
            first.send_signal(signal.SIGTERM)  # a clean pause
            out, err = first.communicate(timeout=30)
    assert first.returncode == 1, err
    assert '"paused": "interrupted by SIGTERM"' in out
    assert os.path.exists(tmp_path / "j.db")

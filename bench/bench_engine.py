"""The sans-IO engine alone: its cost per message, no sockets, no server.

    python -m pytest bench/bench_engine.py -p no:cacheprovider

Each round runs 1,000 messages through one ``Engine``: ``submit``, the writes
(``bytes_to_send``) and the server's replies (``receive_replies``, already
parsed), so ``extra_info["us_per_msg"]`` is the engine's own cost per message:
what any driver (``sendmail``, ``send_many``, the pool) pays on top of its
I/O.  Nothing here asserts a timing.

Each case runs on both twins, side by side in one group: ``compiled``
(``_engine_c`` with ``_envelope_c``) and ``pure`` (``_engine_py`` with
``_envelope_py``; the byte kernels are whichever ``_wire`` selected, so run
with ``FASTSMTPLIB_NO_EXTENSIONS=1`` for an all-Python figure).  The compiled
case is skipped when the extension is not built.
"""

from __future__ import annotations

import importlib

import pytest

from fastsmtplib import _engine_py, _envelope_py
from fastsmtplib._protocol import Capabilities

N = 1000
MSG = "Subject: engine\r\n\r\n" + "hello world, a line of text\r\n" * 34  # ~1 KB
FROM = "news@example.com"

DATA = Capabilities.from_features({"pipelining": "", "8bitmime": "", "enhancedstatuscodes": ""})
BDAT = Capabilities.from_features({"pipelining": "", "chunking": "", "enhancedstatuscodes": ""})

ENVELOPE = [(250, b"2.1.0 Ok"), (250, b"2.1.5 Ok"), (354, b"End data with <CR><LF>.<CR><LF>")]
FINAL = [(250, b"2.0.0 Ok: queued")]
BDAT_REPLIES = [(250, b"2.0.0 Ok"), (250, b"2.1.0 Ok"), (250, b"2.1.5 Ok"), (250, b"2.0.0 Ok: queued")]


def _twin(name: str):
    """The engine class of one twin; its encoder is the same twin's."""
    if name == "pure":
        return _engine_py.Engine
    try:
        return importlib.import_module("fastsmtplib._engine_c").Engine
    except ImportError:
        pytest.skip("compiled engine not built")


@pytest.fixture(params=["compiled", "pure"])
def engine_class(request, monkeypatch):
    if request.param == "pure":
        # The pure engine imports the selected encoder; give it the pure one.
        monkeypatch.setattr(_engine_py, "Encoder", _envelope_py.Encoder)
    return _twin(request.param)


def sendmail_like(rcpts: list, Engine=_engine_py.Engine) -> None:
    """What sendmail() asks of the engine, N times: one message, two groups of replies."""
    eng = Engine(DATA)
    envelope = [ENVELOPE[0]] + [ENVELOPE[1]] * len(rcpts) + [ENVELOPE[2]]
    for _ in range(N):
        r = eng.submit(None, FROM, rcpts, MSG)
        eng.bytes_to_send()
        eng.receive_replies(envelope)
        eng.bytes_to_send()
        eng.receive_replies(FINAL)
        if r.status != "delivered":
            raise AssertionError(r)


def bdat_window(window: int = 32, Engine=_engine_py.Engine) -> None:
    """send_many over BDAT: windows of messages, each answered RSET, MAIL, RCPT, BDAT."""
    eng = Engine(BDAT, window=window)
    done = 0
    results = []
    while done < N:
        for _ in range(min(window, N - done)):
            results.append(eng.submit(None, FROM, ["reader@example.org"], MSG))
        eng.bytes_to_send()
        k = eng.owed // 4 + 1 if eng.owed % 4 else eng.owed // 4
        first = BDAT_REPLIES[1:] if eng.owed % 4 else BDAT_REPLIES
        eng.receive_replies(first + BDAT_REPLIES * (k - 1))
        done += k
    if not all(r.status == "delivered" for r in results):
        raise AssertionError("not all delivered")


@pytest.mark.parametrize("case", ["1 rcpt", "20 rcpts"])
def test_engine_sendmail(benchmark, case, engine_class):
    """engine only: N x (submit, envelope group, body, final), DATA with PIPELINING."""
    rcpts = ["reader@example.org"] if case == "1 rcpt" else [f"reader{i:02d}@example.org" for i in range(20)]
    benchmark.group = f"engine: one message per call (DATA), {case}"
    benchmark.pedantic(sendmail_like, args=(rcpts, engine_class), rounds=10, iterations=1)
    _per_message(benchmark)


def test_engine_bdat_window(benchmark, engine_class):
    """engine only: N messages over BDAT in windows of 32 (ENHANCEDSTATUSCODES)."""
    benchmark.group = "engine: BDAT window"
    benchmark.pedantic(bdat_window, args=(32, engine_class), rounds=10, iterations=1)
    _per_message(benchmark)


def _per_message(benchmark) -> None:
    if benchmark.stats is not None:  # None with --benchmark-disable (the CI smoke run)
        benchmark.extra_info["us_per_msg"] = round(benchmark.stats.stats.median / N * 1e6, 2)

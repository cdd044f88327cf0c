"""The engine's twins: the compiled one loads when it should, and both behave alike.

There is one engine source, ``_engine_py.py`` (and the encoder's,
``_envelope_py.py``); setup.py compiles each, with its ``.pxd``, into
``_engine_c`` / ``_envelope_c``, and ``_engine`` / ``_envelope`` pick one.
Every other engine test imports the selector, so it runs against the compiled
twin in a compiled run and the pure one under ``FASTSMTPLIB_NO_EXTENSIONS=1``.
Here: the selection itself, the twins' public surface, a stale build, and the
same random batches (with faults) through both twins in one run, compared
write by write and result by result.
"""

from __future__ import annotations

import collections
import importlib
import importlib.machinery
import inspect
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings

import fastsmtplib._engine as selector
import fastsmtplib._envelope as envelope_selector
from fastsmtplib import _engine_py, _envelope_py
from fastsmtplib._wire import env_flag
from tests.support.engine_harness import FakeServer, drive, rcpt, sender, body
from tests.unit.conftest import compiled_expected
from tests.unit.test_engine_faults import _splitter, cases

SRC = Path(_engine_py.__file__).resolve().parent
PUBLIC_METHODS = ["submit", "bytes_to_send", "receive", "receive_replies", "connection_lost", "room",
                  "take_results"]
PROPERTIES = ["owed", "deadline_kind", "held", "in_flight", "queued", "idle"]


def load(name: str):
    """Import a compiled twin; skip only when its absence is allowed."""
    try:
        return importlib.import_module("fastsmtplib." + name)
    except ModuleNotFoundError as exc:
        if exc.name != "fastsmtplib." + name or compiled_expected():
            pytest.fail(f"the compiled engine should be built but does not import: {exc}")
        pytest.skip("compiled engine not built (FASTSMTPLIB_NO_EXTENSIONS / _ALLOW_PURE)")


# -- which twin runs ---------------------------------------------------------------------------


def test_compiled_engine_loaded():
    """Fails when the compiled engine should be in use and is not."""
    if env_flag("FASTSMTPLIB_NO_EXTENSIONS"):
        assert not selector.HAS_COMPILED_ENGINE
        assert selector.IMPLEMENTATION is _engine_py
        assert envelope_selector.IMPLEMENTATION is _envelope_py
        assert selector.Engine is _engine_py.Engine and selector.SendResult is _engine_py.SendResult
        return
    if env_flag("FASTSMTPLIB_ALLOW_PURE") and not selector.HAS_COMPILED_ENGINE:
        pytest.skip("compiled engine not built; FASTSMTPLIB_ALLOW_PURE=1 allows that")
    assert selector.HAS_COMPILED_ENGINE, (
        "fastsmtplib._engine_c did not load: build it (python setup.py build_ext --inplace), "
        "or set FASTSMTPLIB_ALLOW_PURE=1 / FASTSMTPLIB_NO_EXTENSIONS=1"
    )
    for name, selected in (("_engine_c", selector), ("_envelope_c", envelope_selector)):
        compiled = sys.modules["fastsmtplib." + name]
        assert compiled.__file__.endswith(tuple(importlib.machinery.EXTENSION_SUFFIXES))
        assert selected.IMPLEMENTATION is compiled
    compiled = selector.IMPLEMENTATION
    for name in selector.__all__[2:]:
        assert getattr(selector, name) is getattr(compiled, name), name
    # The classes really are compiled (no instance __dict__), not Python ones.
    assert selector.Engine is not _engine_py.Engine
    for obj in (selector.Engine(_caps("data")), selector.SendResult(0),
                envelope_selector.Encoder(_caps("data"))):
        assert not hasattr(obj, "__dict__"), type(obj)


def test_the_shells_use_the_selected_engine():
    from fastsmtplib import batch, smtp

    assert smtp.Engine is selector.Engine and smtp.SendResult is selector.SendResult
    assert batch.SendResult is selector.SendResult and batch.Status is selector.Status
    assert _engine_py.Encoder is envelope_selector.Encoder


@pytest.mark.parametrize("value, pure", [("1", True), ("yes", True), ("0", False), ("", False)])
def test_selector_reads_env_value(value, pure):
    if not pure and importlib.util.find_spec("fastsmtplib._engine_c") is None:
        pytest.skip("compiled engine not built")
    env = dict(os.environ, FASTSMTPLIB_NO_EXTENSIONS=value)
    env["PYTHONPATH"] = os.pathsep.join([str(SRC.parent)] + [p for p in [env.get("PYTHONPATH")] if p])
    out = subprocess.run(
        [sys.executable, "-c", "import fastsmtplib._engine as e, fastsmtplib._envelope as v; "
         "print(e.HAS_COMPILED_ENGINE, e.Engine.__module__, v.Encoder.__module__)"],
        env=env, capture_output=True, text=True, check=True,
    ).stdout.split()
    if pure:
        assert out == ["False", "fastsmtplib._engine_py", "fastsmtplib._envelope_py"]
    else:
        assert out == ["True", "fastsmtplib._engine_c", "fastsmtplib._envelope_c"]


@pytest.mark.parametrize("pure, compiled", [("_engine_py", "_engine_c"), ("_envelope_py", "_envelope_c")])
def test_compiled_twin_is_built_from_the_current_source(pure, compiled):
    """A stale build would test old rules: setup.py's copy must equal the source."""
    load(compiled)
    for ext in ("py", "pxd"):
        copy = SRC.parent.parent / "build" / "cython" / "fastsmtplib" / f"{compiled}.{ext}"
        if not copy.exists():
            pytest.skip("not built from this checkout (no build/cython copy)")
        assert copy.read_bytes() == (SRC / f"{pure}.{ext}").read_bytes(), (
            f"{compiled} was built from an older {pure}.{ext}: rebuild (python setup.py build_ext --inplace)")


# -- same surface ------------------------------------------------------------------------------


def params(fn) -> list[tuple]:
    return [(p.name, p.kind, p.default) for p in inspect.signature(fn).parameters.values()]


def test_same_public_surface():
    c = load("_engine_c")
    assert c.__doc__ == _engine_py.__doc__  # compiled from the same file
    assert c.__all__ == _engine_py.__all__
    assert [s.value for s in c.Status] == [s.value for s in _engine_py.Status]
    assert c.RFC5321_TIMEOUTS == _engine_py.RFC5321_TIMEOUTS
    # A cdef class has no signature for inspect: its constructors are called alike instead.
    for mod in (c, _engine_py):
        mod.Engine(_caps("bdat"), lmtp=False, window=2, pipelining=True, chunking=True, parser=None)
        mod.SendResult(0, from_addr="", to_addrs=None, status="", recipients=None, reply=None,
                       exception=None, attempts=0, data_replies=None)
        with pytest.raises(TypeError):
            mod.Engine(_caps("bdat"), 2)  # window is keyword-only
        with pytest.raises(TypeError):
            mod.SendResult(0, sent_at=1.0)  # set by the pool, not by the constructor
    for name in PUBLIC_METHODS:
        assert params(getattr(c.Engine, name)) == params(getattr(_engine_py.Engine, name)), name
        assert getattr(c.Engine, name).__doc__ == getattr(_engine_py.Engine, name).__doc__, name
    for name in PROPERTIES:
        assert inspect.isdatadescriptor(inspect.getattr_static(c.Engine, name)), name
        assert isinstance(inspect.getattr_static(_engine_py.Engine, name), property), name
    pub = lambda obj: {n for n in dir(obj) if not n.startswith("_")}  # noqa: E731
    caps = _caps("bdat")
    assert pub(c.Engine(caps)) == pub(_engine_py.Engine(caps))
    assert pub(c.SendResult(0)) == pub(_engine_py.SendResult(0))
    assert c.SendResult.__slots__ == _engine_py.SendResult.__slots__


def test_window_must_be_a_positive_int_in_both():
    c = load("_engine_c")
    for mod in (c, _engine_py):
        assert mod.Engine(_caps("bdat"), window=True).window == 1  # an int subclass is an int
        with pytest.raises(TypeError):
            mod.Engine(_caps("bdat"), window=2.0)
        with pytest.raises(ValueError, match="at least 1"):
            mod.Engine(_caps("bdat"), window=0)


def test_send_result_behaves_alike():
    c = load("_engine_c")
    for mod in (c, _engine_py):
        r = mod.SendResult(7, "a@b", ["c@d"], mod.DELIVERED, {"c@d": (250, b"ok"), "e@f": (550, b"no")})
        assert r.ok and r.refused == {"e@f": (550, b"no")}
        assert r == mod.SendResult(7, "a@b", ["c@d"], "delivered", {"c@d": (250, b"ok"), "e@f": (550, b"no")})
        r.sent_at, r.done_at = 1.0, 2.0  # not compared
        assert r == mod.SendResult(7, "a@b", ["c@d"], mod.DELIVERED, dict(r.recipients))
        assert r != mod.SendResult(8)
        assert r.__eq__(object()) is NotImplemented
        with pytest.raises(TypeError):
            hash(r)
        assert repr(r).startswith("SendResult(index=7, from_addr='a@b'") and "done_at=2.0" in repr(r)
        with pytest.raises(AttributeError):
            r.extra = 1  # slots in both


# -- same behaviour ----------------------------------------------------------------------------


def _caps(kind: str):
    from tests.support.engine_harness import CAPS

    return CAPS[kind]


def _outcome(mod, c: dict) -> tuple:
    """One random case through one twin: every write and every result, comparable."""
    kind, nrcpt = c["kind"], c["nrcpt"]
    lmtp = kind == "lmtp"
    eng = mod.Engine(c["caps"], lmtp=lmtp, window=c["window"])
    srv = FakeServer(lmtp=lmtp, enhanced=c["caps"].enhanced, policy=c["policy"], fault=c["fault"])
    todo = collections.deque(range(len(nrcpt)))

    def submit(i: int) -> None:
        eng.submit(i, sender(i), [rcpt(i, j) for j in range(nrcpt[i])], body(i))

    def as_room_allows(e) -> None:
        while todo and e.broken is None and e.room() > 0:
            submit(todo.popleft())

    if not c["incremental"]:
        while todo:
            submit(todo.popleft())
    run = drive(eng, srv, split=_splitter(c["chunks"]), timeout=True,
                before_write=as_room_allows if c["incremental"] else None)
    while todo:
        submit(todo.popleft())
    run.results += eng.take_results()

    def exc(e):
        return None if e is None else (type(e).__name__, str(e), getattr(e, "recipients", None))

    results = [(r.index, str(r.status), r.from_addr, r.to_addrs, r.recipients, r.reply, exc(r.exception),
                r.attempts, r.data_replies) for r in run.results]
    return (run.writes, results, run.stalled, exc(eng.broken), eng.owed, eng.idle, eng.in_flight,
            srv.log)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(c=cases())
def test_twins_agree_on_random_batches_with_faults(c):
    compiled = load("_engine_c")
    # Policies are only read, but the fault's state lives in the server: each run gets its own.
    assert _outcome(compiled, c) == _outcome(_engine_py, c)


@pytest.mark.parametrize("twin", ["selected", "pure"])
def test_long_bdat_stream_never_idle(twin):
    """Hundreds of BDAT messages whose replies trickle in, so replies are
    always owed: the owed queue is compacted while in use (``_OWED_COMPACT``),
    and every message is still paired with its own replies."""
    from tests.support.engine_harness import CAPS

    mod = selector if twin == "selected" else _engine_py
    n = 300
    eng = mod.Engine(CAPS["bdat"], window=32)
    srv = FakeServer(enhanced=True)
    todo = collections.deque(range(n))
    most_owed = [0]

    def as_room_allows(e) -> None:
        most_owed[0] = max(most_owed[0], e.owed)
        while todo and e.room() > 0:
            i = todo.popleft()
            e.submit(i, sender(i), [rcpt(i, 0)], body(i))

    run = drive(eng, srv, split=_splitter([7, 13, 29]), before_write=as_room_allows)
    assert not run.stalled and eng.broken is None and eng.idle and not todo
    assert sorted(r.index for r in run.results) == list(range(n))
    assert all(r.status == "delivered" and r.attempts == 1 for r in run.results)
    assert all(r.recipients == {rcpt(r.index, 0): (250, r.recipients[rcpt(r.index, 0)][1])} for r in run.results)
    assert len(srv.bodies) == n
    assert 32 <= most_owed[0] <= 4 * 64  # a window at a time, never everything

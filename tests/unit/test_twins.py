"""The twins cannot drift: same names, same signatures, one set of docs.

``_wire_py`` is the reference.  ``_wire_c`` imports its ``__all__`` and takes
over its docstrings at import; ``_wire`` exports the same names plus its own;
the stub ``_wire_c.pyi`` repeats them for type checkers.  These tests fail when
one of them is changed without the others.
"""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import pytest

import fastsmtplib._wire as selector
from fastsmtplib import _wire_py

STUB = Path(_wire_py.__file__).with_name("_wire_c.pyi")

FUNCTIONS = [n for n in _wire_py.__all__ if inspect.isfunction(getattr(_wire_py, n))]
CLASS_MEMBERS = [n for n in vars(_wire_py.ReplyParser) if not n.startswith("_")]


def params(sig: inspect.Signature) -> list[tuple]:
    """What must match: names, kinds and defaults (not annotations)."""
    return [(p.name, p.kind, p.default) for p in sig.parameters.values()]


def test_names_are_known():
    # Guards the lists the tests below iterate over.
    assert FUNCTIONS == [
        "dot_stuff", "dot_stuff_sized", "crlf_normalize", "encode_envelope", "sink_scan",
    ]
    assert sorted(CLASS_MEMBERS) == ["feed", "in_reply", "pending", "reset"]


def test_same_all(wire_c):
    assert list(wire_c.__all__) == list(_wire_py.__all__)
    assert len(set(_wire_py.__all__)) == len(_wire_py.__all__)


@pytest.mark.parametrize("name", _wire_py.__all__)
def test_every_name_in_both(wire_c, name):
    assert hasattr(_wire_py, name)
    assert hasattr(wire_c, name)


def test_public_names_are_all_exported(wire_c):
    # Nothing public beyond __all__ (helpers are private; imported modules and
    # the __future__ import don't count).
    def public(module):
        return {
            n for n, v in vars(module).items()
            if not n.startswith("_") and not inspect.ismodule(v) and n != "annotations"
        }

    assert public(wire_c) == set(_wire_py.__all__)
    assert public(_wire_py) == set(_wire_py.__all__)


def test_shared_objects_are_the_same(wire_c):
    # Limits and the error class are plain Python, imported by the compiled twin.
    for name in ("MAXLINE", "MAX_REPLY_LINES", "MAX_REPLY_BYTES", "ReplyLimitError"):
        assert getattr(wire_c, name) is getattr(_wire_py, name)


@pytest.mark.parametrize("name", FUNCTIONS)
def test_function_signatures(wire_c, name):
    ours = inspect.signature(getattr(wire_c, name))
    assert params(ours) == params(inspect.signature(getattr(_wire_py, name)))


@pytest.mark.parametrize("name", FUNCTIONS)
def test_function_docs_are_the_twins(wire_c, name):
    doc = getattr(wire_c, name).__doc__
    assert doc and doc == getattr(_wire_py, name).__doc__


def test_class_signature(wire_c):
    ours = inspect.signature(wire_c.ReplyParser)
    assert params(ours) == params(inspect.signature(_wire_py.ReplyParser))
    assert [p.default for p in ours.parameters.values()] == [
        _wire_py.MAXLINE, _wire_py.MAX_REPLY_LINES, _wire_py.MAX_REPLY_BYTES,
    ]


@pytest.mark.parametrize("name", CLASS_MEMBERS)
def test_class_members(wire_c, name):
    theirs = inspect.getattr_static(_wire_py.ReplyParser, name)
    ours = inspect.getattr_static(wire_c.ReplyParser, name)
    assert ours.__doc__
    if isinstance(theirs, property):
        assert inspect.isdatadescriptor(ours)
        assert getattr(ours, "fset", None) is None  # read-only in both
        with pytest.raises(AttributeError):
            setattr(wire_c.ReplyParser(), name, 0)
        return
    assert params(inspect.signature(ours)) == params(inspect.signature(theirs))
    assert ours.__doc__ == theirs.__doc__


def test_class_doc(wire_c):
    assert wire_c.ReplyParser.__doc__
    assert "_wire_py.ReplyParser" in wire_c.ReplyParser.__doc__


def test_same_public_instance_attributes(wire_c):
    def public(obj):
        return {n for n in dir(obj) if not n.startswith("_")}

    assert public(wire_c.ReplyParser()) == public(_wire_py.ReplyParser())
    for name in ("max_line", "max_lines", "max_bytes"):
        p, c = _wire_py.ReplyParser(), wire_c.ReplyParser()
        setattr(p, name, 5000)
        setattr(c, name, 5000)
        assert getattr(p, name) == getattr(c, name) == 5000


# ---------------------------------------------------------------------------
# The selector and the stub: no extension needed.


def test_selector_exports_the_twins_names():
    assert selector.__all__ == ["HAS_EXTENSIONS", "env_flag", *_wire_py.__all__]
    for name in selector.__all__:
        assert hasattr(selector, name), name


def _stub() -> ast.Module:
    return ast.parse(STUB.read_text(encoding="utf-8"))


def test_stub_all_matches():
    for node in _stub().body:
        if isinstance(node, ast.Assign) and node.targets[0].id == "__all__":
            assert ast.literal_eval(node.value) == _wire_py.__all__
            return
    pytest.fail("the stub has no __all__")


def _stub_params(fn: ast.FunctionDef) -> list[tuple[str, bool]]:
    a = fn.args
    positional = a.posonlyargs + a.args
    with_default = len(positional) - len(a.defaults)
    return [(arg.arg, i >= with_default) for i, arg in enumerate(positional)]


def _py_params(fn) -> list[tuple[str, bool]]:
    return [
        (p.name, p.default is not p.empty) for p in inspect.signature(fn).parameters.values()
    ]


def test_stub_signatures_match():
    stub = _stub()
    functions = {n.name: n for n in stub.body if isinstance(n, ast.FunctionDef)}
    assert sorted(functions) == sorted(FUNCTIONS)
    for name in FUNCTIONS:
        assert _stub_params(functions[name]) == _py_params(getattr(_wire_py, name)), name
    (cls,) = [n for n in stub.body if isinstance(n, ast.ClassDef) and n.name == "ReplyParser"]
    methods = {n.name: n for n in cls.body if isinstance(n, ast.FunctionDef)}
    assert sorted(methods) == sorted(["__init__", *CLASS_MEMBERS])
    for name in ["__init__", *CLASS_MEMBERS]:
        theirs = inspect.getattr_static(_wire_py.ReplyParser, name)
        if isinstance(theirs, property):
            decorators = [d.id for d in methods[name].decorator_list if isinstance(d, ast.Name)]
            assert decorators == ["property"], name
            continue
        assert _stub_params(methods[name]) == _py_params(theirs), name

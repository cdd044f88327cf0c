"""fastsmtplib offers smtplib's public API: names, classes, signatures, attributes.

Compared against the running interpreter's ``smtplib``, so a Python that adds
to the stdlib API makes these tests show what is missing.
"""

from __future__ import annotations

import inspect
import smtplib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import fastsmtplib

STDLIB_EXCEPTIONS = [
    "SMTPException",
    "SMTPNotSupportedError",
    "SMTPServerDisconnected",
    "SMTPResponseException",
    "SMTPSenderRefused",
    "SMTPRecipientsRefused",
    "SMTPDataError",
    "SMTPConnectError",
    "SMTPHeloError",
    "SMTPAuthenticationError",
]

#: New exception classes and the stdlib class each one narrows.
NEW_EXCEPTIONS = {
    "SMTPReplyTimeout": smtplib.SMTPServerDisconnected,
    "SMTPReplyTooLong": smtplib.SMTPResponseException,
    "SMTPMessageTooLarge": smtplib.SMTPSenderRefused,
    "SMTPPipelineError": smtplib.SMTPResponseException,
}

EXTRA_NAMES = ["SMTP_SSL", "LMTP", "SMTP_PORT", "SMTP_SSL_PORT", "LMTP_PORT", "CRLF", "bCRLF", "_MAXLINE"]

CLASSES = ["SMTP", "SMTP_SSL", "LMTP"]

INSTANCE_ATTRIBUTES = [
    "sock",
    "file",
    "helo_resp",
    "ehlo_resp",
    "does_esmtp",
    "esmtp_features",
    "debuglevel",
    "local_hostname",
    "timeout",
    "source_address",
    "command_encoding",
    "default_port",
    "ehlo_msg",
]


# -- module names ---------------------------------------------------------------
def test_all_is_a_superset_of_stdlib():
    assert set(smtplib.__all__) <= set(fastsmtplib.__all__)


def test_every_all_name_exists():
    for name in fastsmtplib.__all__:
        assert hasattr(fastsmtplib, name), name


@pytest.mark.parametrize("name", sorted(set(smtplib.__all__) | set(EXTRA_NAMES)))
def test_stdlib_name_exists(name):
    assert hasattr(fastsmtplib, name), name


@pytest.mark.parametrize("name", ["SMTP_PORT", "SMTP_SSL_PORT", "LMTP_PORT", "CRLF", "bCRLF", "_MAXLINE"])
def test_constants_equal_stdlib(name):
    assert getattr(fastsmtplib, name) == getattr(smtplib, name)


def test_has_extensions_is_bool():
    assert isinstance(fastsmtplib.HAS_EXTENSIONS, bool)


# -- exceptions ------------------------------------------------------------------
@pytest.mark.parametrize("name", STDLIB_EXCEPTIONS)
def test_exceptions_are_the_stdlib_classes(name):
    assert getattr(fastsmtplib, name) is getattr(smtplib, name)


@pytest.mark.parametrize("name", sorted(NEW_EXCEPTIONS))
def test_new_exceptions_narrow_stdlib_ones(name):
    cls = getattr(fastsmtplib, name)
    assert name in fastsmtplib.__all__
    assert issubclass(cls, NEW_EXCEPTIONS[name])
    assert issubclass(cls, smtplib.SMTPException)
    assert cls.__module__.startswith("fastsmtplib")


def test_reply_timeout_is_also_a_timeout_error():
    assert issubclass(fastsmtplib.SMTPReplyTimeout, TimeoutError)


def test_message_too_large_looks_like_a_552_sender_refusal():
    exc = fastsmtplib.SMTPMessageTooLarge(2000, 1000, "a@example.org")
    assert isinstance(exc, smtplib.SMTPSenderRefused)
    assert exc.smtp_code == 552
    assert exc.sender == "a@example.org"
    assert (exc.size, exc.limit) == (2000, 1000)


# -- classes and their methods -------------------------------------------------------
def _public_methods(cls) -> list[str]:
    names = ["__init__"]
    for name, value in inspect.getmembers(cls):
        if not name.startswith("_") and callable(value):
            names.append(name)
    return names


def _shape(func) -> list[tuple]:
    """Parameter names, kinds and defaults, annotations ignored."""
    return [(p.name, p.kind, p.default) for p in inspect.signature(func).parameters.values()]


_METHOD_CASES = [(cls, name) for cls in CLASSES for name in _public_methods(getattr(smtplib, cls))]


@pytest.mark.parametrize("cls,method", _METHOD_CASES, ids=[f"{c}.{m}" for c, m in _METHOD_CASES])
def test_method_signature_matches_stdlib(cls, method):
    ours = getattr(fastsmtplib, cls)
    assert hasattr(ours, method), f"{cls}.{method} missing"
    assert _shape(getattr(ours, method)) == _shape(getattr(getattr(smtplib, cls), method))


@pytest.mark.parametrize("cls", CLASSES)
def test_class_hierarchy(cls):
    ours = getattr(fastsmtplib, cls)
    if cls != "SMTP":
        assert issubclass(ours, fastsmtplib.SMTP)
    assert hasattr(ours, "__enter__") and hasattr(ours, "__exit__")


def _construct(module, cls):
    # No host: nothing is connected; local_hostname given so no DNS happens.
    return getattr(module, cls)(local_hostname="client.example.org")


@pytest.mark.parametrize("cls", CLASSES)
@pytest.mark.parametrize("attr", INSTANCE_ATTRIBUTES)
def test_attributes_after_construction(cls, attr):
    theirs = _construct(smtplib, cls)
    ours = _construct(fastsmtplib, cls)
    try:
        assert hasattr(ours, attr), f"{cls}().{attr} missing"
        assert getattr(ours, attr) == getattr(theirs, attr)
    finally:
        ours.close()
        theirs.close()


@pytest.mark.parametrize("cls", CLASSES)
def test_attributes_with_explicit_arguments(cls):
    kw = dict(local_hostname="h.example.org", timeout=7.5, source_address=("127.0.0.1", 0))
    theirs = getattr(smtplib, cls)(**kw)
    ours = getattr(fastsmtplib, cls)(**kw)
    for attr in INSTANCE_ATTRIBUTES:
        assert getattr(ours, attr) == getattr(theirs, attr), attr


def test_lmtp_default_port_matches_stdlib():
    # smtplib.LMTP keeps SMTP's default_port (its constructor's port is 2003).
    assert fastsmtplib.LMTP.default_port == smtplib.LMTP.default_port
    assert fastsmtplib.SMTP_SSL.default_port == smtplib.SMTP_SSL.default_port == 465


def test_local_hostname_default_is_lazy_but_answers_like_stdlib():
    ours, theirs = fastsmtplib.SMTP(), smtplib.SMTP()
    assert ours.local_hostname == theirs.local_hostname


# -- quoteaddr / quotedata ---------------------------------------------------------------
QUOTEADDR_INPUTS = [
    "user@example.org",
    "<user@example.org>",
    "User Name <user@example.org>",
    '"Name, With Comma" <user@example.org>',
    "user@example.org (comment)",
    "",
    "<>",
    "   ",
    "not an address",
    "<broken",
    "@example.org",
    "a@b@c",
    "user+tag@sub.example.org",
    "us\u00e9r@exampl\u00e9.org",
    "Jos\u00e9 <jose@example.org>",
    "<<double@example.org>>",
    "a@example.org, b@example.org",
]


@pytest.mark.parametrize("addr", QUOTEADDR_INPUTS)
def test_quoteaddr_agrees_with_stdlib(addr):
    assert fastsmtplib.quoteaddr(addr) == smtplib.quoteaddr(addr)


QUOTEDATA_INPUTS = [
    "",
    ".",
    "..",
    "a\nb",
    "a\rb",
    "a\r\nb",
    ".start\n.middle\r\n.end",
    "line\n\n.\n",
    "\r\n.\r\n",
    "trailing\r",
    "trailing\n",
    "mixed\r\r\n\n\r.x",
    "caf\u00e9\n.\u00e9",
]


@pytest.mark.parametrize("data", QUOTEDATA_INPUTS)
def test_quotedata_agrees_with_stdlib(data):
    assert fastsmtplib.quotedata(data) == smtplib.quotedata(data)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(st.sampled_from(["\r", "\n", "\r\n", ".", "..", "\n.", "\r\n."]),
                          st.text(max_size=8)), max_size=30).map("".join))
def test_quotedata_agrees_with_stdlib_on_random_text(data):
    assert fastsmtplib.quotedata(data) == smtplib.quotedata(data)

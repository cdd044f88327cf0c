"""quoteaddr's fast path for plain addresses agrees with the stdlib's parser.

``_protocol.quoteaddr`` skips ``email.utils.parseaddr`` for a plain
``dot-atom@domain`` (bare or in brackets); whatever it returns must be what
``smtplib.quoteaddr`` returns for the same text.
"""

import smtplib

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from fastsmtplib import _protocol

# Atom characters, the specials around them, and a few that must not take the
# fast path (space, quote, brackets, non-ASCII).
ALPHABET = "ab.@<>-+_=!#$%&'*/?^`{|}~ \"()[],:;\\é0Z"


@settings(max_examples=3000, deadline=None)
@given(st.text(alphabet=ALPHABET, min_size=1, max_size=14))
@example("a@b")
@example("<first.last@sub.example.org>")
@example("<a@b")
@example("a..b@c")
@example(".a@b.")
@example("a@b@c")
def test_same_path_as_stdlib(text):
    assert _protocol.quoteaddr(text) == smtplib.quoteaddr(text)


@pytest.mark.parametrize(
    "text, fast",
    [
        ("reader01@example.org", True),
        ("<reader01@example.org>", True),
        ("O'Brien+news@mail-1.example.com", True),
        ("Reader <reader@example.org>", False),
        ('"quoted local"@example.org', False),
        ("user@[192.0.2.1]", False),
        ("jörg@example.org", False),
    ],
)
def test_fast_path_only_for_plain_addresses(text, fast):
    assert (_protocol._PLAIN_ADDR.fullmatch(text) is not None) is fast
    assert _protocol.quoteaddr(text) == smtplib.quoteaddr(text)

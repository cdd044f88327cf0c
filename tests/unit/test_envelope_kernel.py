"""The envelope kernel ``encode_envelope``, on both twins.

It writes the MAIL and RCPT lines when every address is plain, and returns None
otherwise.  The reference is ``_protocol.quoteaddr``: whatever the kernel
writes must be what the general path would write, and it must refuse every
address that quoteaddr would change beyond adding brackets.
"""

from __future__ import annotations

import array

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from fastsmtplib._protocol import _PLAIN_ADDR, quoteaddr

HYPO = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow], max_examples=800)

ATEXT = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789!#$%&'*+/=?^_`{|}~-"
LABEL = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-"


def reference(from_addr, to_addrs, mail_params, rcpt_params) -> bytes:
    """What the general path writes: quoteaddr on each address."""
    return b"".join(
        [("mail FROM:%s" % quoteaddr(from_addr)).encode() + mail_params + b"\r\n"]
        + [("rcpt TO:%s" % quoteaddr(r)).encode() + rcpt_params + b"\r\n" for r in to_addrs]
    )


def is_plain(addr) -> bool:
    """The definition: _PLAIN_ADDR's fullmatch with balanced brackets."""
    return (
        isinstance(addr, str)
        and _PLAIN_ADDR.fullmatch(addr) is not None
        and (addr[0] == "<") == (addr[-1] == ">")
    )


# ---------------------------------------------------------------------------
# Exact output


@pytest.mark.parametrize(
    "from_addr, to_addrs, mail_params, rcpt_params, want",
    [
        ("a@b", [], b"", b"", b"mail FROM:<a@b>\r\n"),
        ("<a@b>", (), b"", b"", b"mail FROM:<a@b>\r\n"),
        (
            "sender@example.com",
            ["rcpt@example.org"],
            b"",
            b"",
            b"mail FROM:<sender@example.com>\r\nrcpt TO:<rcpt@example.org>\r\n",
        ),
        (
            "<bounce+x=y@lists.example.com>",
            ("<first.last@sub.example.org>", "O'Brien+news@mail-1.example.com"),
            b" size=1234 BODY=8BITMIME",
            b" NOTIFY=SUCCESS,FAILURE",
            b"mail FROM:<bounce+x=y@lists.example.com> size=1234 BODY=8BITMIME\r\n"
            b"rcpt TO:<first.last@sub.example.org> NOTIFY=SUCCESS,FAILURE\r\n"
            b"rcpt TO:<O'Brien+news@mail-1.example.com> NOTIFY=SUCCESS,FAILURE\r\n",
        ),
        (
            "a@b",
            ["a@b", "a@b"],
            b"",
            b" X",
            b"mail FROM:<a@b>\r\nrcpt TO:<a@b> X\r\nrcpt TO:<a@b> X\r\n",
        ),
        # Every atext character, numeric labels, a dash at a label's ends.
        (
            ATEXT + "@" + LABEL,
            ["1@2.3", "x@-.-", "a.b.c@d"],
            b"",
            b"",
            b"mail FROM:<" + ATEXT.encode() + b"@" + LABEL.encode() + b">\r\n"
            b"rcpt TO:<1@2.3>\r\nrcpt TO:<x@-.->\r\nrcpt TO:<a.b.c@d>\r\n",
        ),
    ],
)
def test_exact_output(wire, from_addr, to_addrs, mail_params, rcpt_params, want):
    out = wire.encode_envelope(from_addr, to_addrs, mail_params, rcpt_params)
    assert type(out) is bytes and out == want
    assert out == reference(from_addr, to_addrs, mail_params, rcpt_params)


def test_many_recipients(wire):
    to = [f"user{i}@example.org" for i in range(1000)]
    out = wire.encode_envelope("<s@example.com>", to, b" size=1", b" NOTIFY=NEVER")
    assert out == reference("<s@example.com>", to, b" size=1", b" NOTIFY=NEVER")


def test_long_address(wire):
    local = ".".join(["x" * 63] * 500)
    addr = local + "@" + ".".join(["d" * 63] * 50)
    out = wire.encode_envelope(addr, [addr, "<" + addr + ">"], b"", b"")
    assert out == reference(addr, [addr, addr], b"", b"")


def test_str_subclass_and_list_subclass(wire):
    class S(str):
        pass

    class L(list):
        pass

    class T(tuple):
        pass

    want = b"mail FROM:<a@b>\r\nrcpt TO:<c@d>\r\n"
    assert wire.encode_envelope(S("a@b"), L([S("<c@d>")]), b"", b"") == want
    assert wire.encode_envelope("a@b", T(["c@d"]), b"", b"") == want


def test_list_subclass_items_come_from_its_iterator(wire):
    # Both twins read a subclass through iteration (as [*to_addrs] does).
    class Rev(list):
        def __iter__(self):
            return iter(self[::-1])  # slicing gives a plain list

    out = wire.encode_envelope("a@b", Rev(["c@d", "e@f"]), b"", b"")
    assert out == b"mail FROM:<a@b>\r\nrcpt TO:<e@f>\r\nrcpt TO:<c@d>\r\n"


@pytest.mark.parametrize(
    "make",
    [bytearray, memoryview, lambda b: memoryview(b"??" + b + b"??")[2:-2],
     lambda b: memoryview(bytes(x for c in b for x in (c, 0)))[::2]],
    ids=["bytearray", "memoryview", "slice", "strided"],
)
def test_params_bytes_like(wire, make):
    out = wire.encode_envelope("a@b", ["c@d"], make(b" size=5"), make(b" NOTIFY=NEVER"))
    assert type(out) is bytes
    assert out == b"mail FROM:<a@b> size=5\r\nrcpt TO:<c@d> NOTIFY=NEVER\r\n"


def test_params_from_a_typed_buffer_are_its_raw_bytes(wire):
    params = array.array("B", b" X=1")
    assert wire.encode_envelope("a@b", [], params, b"") == b"mail FROM:<a@b> X=1\r\n"


def test_params_copied_as_they_are(wire):
    # The kernel does no policy on parameters: the caller checks them.
    assert wire.encode_envelope("a@b", ["c@d"], b"\x00\xff", b"") == (
        b"mail FROM:<a@b>\x00\xff\r\nrcpt TO:<c@d>\r\n"
    )


@pytest.mark.parametrize("bad", ["", " size=1", None, 5, [32], object()])
def test_params_not_bytes_like_raise_type_error(wire, bad):
    with pytest.raises(TypeError):
        wire.encode_envelope("a@b", ["c@d"], bad, b"")
    with pytest.raises(TypeError):
        wire.encode_envelope("a@b", ["c@d"], b"", bad)
    # Checked before the addresses: also when they are not plain.
    with pytest.raises(TypeError):
        wire.encode_envelope("A <a@b>", None, bad, b"")


def test_results_are_fresh(wire):
    a = wire.encode_envelope("a@b", ["c@d"], b"", b"")
    b = wire.encode_envelope("a@b", ["c@d"], b"", b"")
    assert a == b and a is not b


# ---------------------------------------------------------------------------
# None: anything quoteaddr would parse, and anything that is not a str


NOT_PLAIN = [
    "",
    "<>",
    "<",
    ">",
    "Reader <reader@example.org>",  # display name
    "reader@example.org (Reader)",  # comment
    '"quoted local"@example.org',  # quoted local part
    '"a"@b',
    "jörg@example.org",  # non-ASCII local part
    "a@bücher.example",  # non-ASCII domain
    "a@b\u0100",  # UCS-2 str
    "a@b\U0001f600",  # UCS-4 str
    "a b@c",  # space
    " a@b",
    "a@b ",
    "a@b\t",
    "a@b\r\nRSET",  # CR/LF inside
    "a@b\r",
    "a@b\n",
    "a@\nb",
    "a@b\x00",
    "a@b\x00c@d",  # NUL: must not pass for two addresses
    "<a@b",  # unbalanced
    "a@b>",
    "<<a@b>>",
    "<a@b>>",
    "<<a@b>",
    "a..b@c",  # consecutive dots
    ".a@b",  # leading dot
    "a.@b",  # trailing dot in the local part
    "a@b.",  # trailing dot in the domain
    "a@.b",
    "a@b..c",
    "a@",
    "@b",
    "@",
    "a",
    "a@b@c",
    "a@b_c",  # '_' is not allowed in a domain
    "a@[192.0.2.1]",  # address literal
    "a@b:c",
    "a(b)@c",
    "a,b@c",
    "a\\b@c",
]


@pytest.mark.parametrize("addr", NOT_PLAIN)
def test_not_plain_gives_none(wire, addr):
    assert not is_plain(addr)
    assert wire.encode_envelope(addr, ["c@d"], b"", b"") is None
    assert wire.encode_envelope("c@d", [addr], b"", b"") is None
    assert wire.encode_envelope("c@d", ("e@f", addr, "g@h"), b"", b"") is None
    assert wire.encode_envelope("c@d", ["e@f"] * 50 + [addr], b" X", b" Y") is None


@pytest.mark.parametrize("item", [None, b"a@b", bytearray(b"a@b"), 5, ["a@b"], ("a@b",)])
def test_not_a_str_gives_none(wire, item):
    assert wire.encode_envelope(item, ["c@d"], b"", b"") is None
    assert wire.encode_envelope("c@d", [item], b"", b"") is None
    assert wire.encode_envelope("c@d", ["e@f", item], b"", b"") is None


@pytest.mark.parametrize("to_addrs", ["c@d", b"c@d", None, {"c@d"}, {"c@d": 1}, iter(["c@d"])])
def test_to_addrs_not_a_list_or_tuple_gives_none(wire, to_addrs):
    assert wire.encode_envelope("a@b", to_addrs, b"", b"") is None


# ---------------------------------------------------------------------------
# Hypothesis: the twins agree, and agree with quoteaddr.

# Text around addresses: atext, the specials of RFC 5322, brackets, blanks,
# line ends, NUL and non-ASCII.
NOISE = ".@<>\"()[],:;\\ \t\r\n\x00_é\u0100\U0001f600"


@st.composite
def plain_addrs(draw):
    atom = st.text(ATEXT, min_size=1, max_size=6)
    label = st.text(LABEL, min_size=1, max_size=6)
    local = ".".join(draw(st.lists(atom, min_size=1, max_size=3)))
    domain = ".".join(draw(st.lists(label, min_size=1, max_size=3)))
    addr = local + "@" + domain
    return "<" + addr + ">" if draw(st.booleans()) else addr


@st.composite
def mutated(draw):
    """A plain address with a character inserted, replaced or deleted."""
    addr = draw(plain_addrs())
    i = draw(st.integers(0, len(addr)))
    c = draw(st.sampled_from(NOISE + "a-"))
    how = draw(st.sampled_from(["insert", "replace", "delete"]))
    if how == "insert":
        return addr[:i] + c + addr[i:]
    if how == "replace":
        return addr[:i] + c + addr[i + 1:]
    return addr[:i] + addr[i + 1:]


addresses = st.one_of(
    plain_addrs(),
    plain_addrs(),
    mutated(),
    st.text(ATEXT[:3] + NOISE, max_size=12),
    st.none(),
    st.just(b"a@b"),
)
params = st.one_of(st.just(b""), st.binary(max_size=20).map(lambda b: b" " + b))


@HYPO
@given(
    from_addr=addresses,
    to_addrs=st.lists(addresses, max_size=6),
    as_tuple=st.booleans(),
    mail_params=params,
    rcpt_params=params,
)
@example(from_addr="a@b", to_addrs=["a@b\x00c@d"], as_tuple=False, mail_params=b"", rcpt_params=b"")
@example(from_addr="<a@b", to_addrs=[], as_tuple=False, mail_params=b"", rcpt_params=b"")
def test_twins_agree_with_quoteaddr(
    wire_py, wire_c, from_addr, to_addrs, as_tuple, mail_params, rcpt_params
):
    to = tuple(to_addrs) if as_tuple else to_addrs
    out = wire_py.encode_envelope(from_addr, to, mail_params, rcpt_params)
    assert wire_c.encode_envelope(from_addr, to, mail_params, rcpt_params) == out

    addrs = [from_addr, *to_addrs]
    # Not None exactly when every address is plain (the definition) ...
    assert (out is not None) == all(map(is_plain, addrs))
    if out is not None:
        # ... and then it is what the general path writes.
        assert out == reference(from_addr, to, mail_params, rcpt_params)
    for addr in addrs:
        # None whenever quoteaddr would change an address beyond bracketing it.
        try:
            quoted = quoteaddr(addr) if isinstance(addr, str) else None
        except ValueError:  # CR or LF
            quoted = None
        if quoted is None or quoted not in ("<" + addr + ">", addr):
            assert out is None


@settings(HYPO, max_examples=300)
@given(st.lists(plain_addrs(), min_size=1, max_size=30), params, params)
def test_plain_envelopes_are_encoded(wire_py, wire_c, addrs, mail_params, rcpt_params):
    want = reference(addrs[0], addrs[1:], mail_params, rcpt_params)
    assert wire_py.encode_envelope(addrs[0], addrs[1:], mail_params, rcpt_params) == want
    assert wire_c.encode_envelope(addrs[0], addrs[1:], mail_params, rcpt_params) == want

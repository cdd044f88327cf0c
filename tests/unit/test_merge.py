"""Mail merge: rendered bytes parse back (stdlib email) into the expected, personalised message."""

from __future__ import annotations

import email
import email.policy
import html
import re
from email.message import EmailMessage
from urllib.parse import quote

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fastsmtplib.merge import (
    MergeError,
    MissingFieldError,
    Template,
    TemplateError,
    normalize_address,
    unsubscribe_headers,
    valid_address,
)

HTML = "<html><body>\n<h1>Hello {{ first_name }}!</h1>\n<p>Your city: {{city}}</p>\n" + (
    "<p>Filler paragraph with some text in it, to make the part longer.</p>\n" * 40
) + '<a href="https://example.com/u?e={{ email | url }}">unsubscribe</a>\n</body></html>\n'
TEXT = "Hello {{ first_name }}!\nYour city: {{ city }}\n" + "Filler line.\n" * 10
FROM = "News <news@example.com>"


def parse(data: bytes) -> EmailMessage:
    return email.message_from_bytes(data, policy=email.policy.default)


def crlf(s: str) -> str:
    return re.sub(r"\r\n|\r|\n", "\r\n", s)


def expected_text(template: str, row: dict, *, escape: bool) -> str:
    def sub(m: re.Match) -> str:
        if m.group(2) == "url":
            return quote(row[m.group(1)], safe="")
        v = crlf(row[m.group(1)])  # values are normalised on their own
        return html.escape(v, quote=True) if escape and m.group(2) is None else v

    out = re.sub(r"\{\{\s*([\w.\-]+)\s*(?:\|\s*(\w+)\s*)?\}\}", sub, crlf(template))
    # from_parts ends a body with a line break, as EmailMessage.set_content does.
    return out if out.endswith("\r\n") else out + "\r\n"


def assert_wire_clean(data: bytes) -> None:
    """CRLF only, no line over 998 octets (RFC 5322 §2.1.1)."""
    assert b"\r" not in data.replace(b"\r\n", b"")
    assert b"\n" not in data.replace(b"\r\n", b"")
    assert max(map(len, data.split(b"\r\n"))) <= 998


def bodies(msg: EmailMessage) -> dict[str, str]:
    return {p.get_content_type(): p.get_content() for p in msg.walk() if not p.is_multipart()}


ROW = {"first_name": "Ann", "city": "Oslo", "email": "ann@example.org"}


def test_from_parts_structure_and_content():
    t = Template.from_parts("Hi {{ first_name }}", html=HTML, text=TEXT, from_addr=FROM)
    assert t.fields == frozenset({"first_name", "city", "email"})
    data = t.render(ROW, to_addr="ann@example.org")
    assert_wire_clean(data)
    msg = parse(data)
    assert msg.get_content_type() == "multipart/alternative"
    assert [p.get_content_type() for p in msg.iter_parts()] == ["text/plain", "text/html"]
    assert msg["Subject"] == "Hi Ann"
    assert msg["To"] == "ann@example.org"
    assert msg["From"] == FROM
    assert msg["MIME-Version"] == "1.0"
    assert re.fullmatch(r"<[0-9a-f]{32}@example\.com>", msg["Message-ID"])
    assert msg["Date"].datetime is not None
    b = bodies(msg)
    assert b["text/plain"] == expected_text(TEXT, ROW, escape=False)
    assert b["text/html"] == expected_text(HTML, ROW, escape=True)
    # ASCII template and values: written 7bit, byte for byte.
    assert all(p["Content-Transfer-Encoding"] == "7bit" for p in msg.iter_parts())
    assert b"<h1>Hello Ann!</h1>" in data
    assert b"u?e=ann%40example.org" in data


def test_single_part_templates():
    for kw, ctype in ((dict(html=HTML), "text/html"), (dict(text=TEXT), "text/plain")):
        t = Template.from_parts("S", from_addr=FROM, **kw)
        msg = parse(t.render(ROW, to_addr="a@example.org"))
        assert msg.get_content_type() == ctype
        assert msg.get_content() == expected_text(kw.get("html") or kw["text"], ROW, escape=ctype == "text/html")
    with pytest.raises(TemplateError):
        Template.from_parts("S", from_addr=FROM)


def test_headers_are_one_each_and_per_recipient():
    t = Template.from_parts("S", text="x", from_addr=FROM, headers={"Reply-To": "r@example.com", "X-Campaign": "c-{{ city }}"})
    data = t.render(
        ROW, to_addr="b@example.org", message_id="<id1@example.com>",
        date="Tue, 01 Dec 2026 10:00:00 +0000", to_name="Böb, Jr.",
    )
    msg = parse(data)
    head = data.split(b"\r\n\r\n", 1)[0]
    names = [line.split(b":", 1)[0].lower() for line in head.split(b"\r\n") if line[:1] not in (b" ", b"\t")]
    for n in (b"from", b"to", b"subject", b"date", b"message-id", b"mime-version", b"content-type"):
        assert names.count(n) == 1, n
    assert msg["Message-ID"] == "<id1@example.com>"
    assert msg["Date"] == "Tue, 01 Dec 2026 10:00:00 +0000"
    assert msg["X-Campaign"] == "c-Oslo"
    assert msg["Reply-To"] == "r@example.com"
    assert msg["To"].addresses[0].display_name == "Böb, Jr."
    assert msg["To"].addresses[0].addr_spec == "b@example.org"
    with pytest.raises(TemplateError):
        Template.from_parts("S", text="x", from_addr=FROM, headers={"To": "x@example.com"})


@pytest.mark.parametrize("bad", ["Ann\r\nBcc: evil@example.net", "Ann\nBcc: evil@example.net", "Ann\rBcc: x@y.z", "A\x00B\x1bC"])
def test_header_injection_is_neutralised(bad):
    t = Template.from_parts("Hi {{ first_name }}", text="x", from_addr=FROM, headers={"X-Name": "{{ first_name }}"})
    data = t.render({"first_name": bad}, to_addr="a@example.org")
    assert_wire_clean(data)
    msg = parse(data)
    assert msg["Bcc"] is None
    expected = re.sub(r"[\x00-\x08\x0a-\x1f\x7f]", " ", bad)
    assert msg["Subject"] == "Hi " + expected
    assert msg["X-Name"] == expected


def test_missing_fields_named():
    t = Template.from_parts("Hi {{ first_name }}", text="{{ city }} {{ zip }}", from_addr=FROM)
    with pytest.raises(MissingFieldError) as ei:
        t.render({"first_name": "A"}, to_addr="a@example.org")
    assert ei.value.fields == ["city", "zip"]
    assert "'city'" in str(ei.value) and "'zip'" in str(ei.value)
    with pytest.raises(MissingFieldError, match="city"):
        t.render({"first_name": "A", "city": None, "zip": "1"}, to_addr="a@example.org")
    assert t.missing_fields(["first_name", "zip", "email"]) == ["city"]


def test_html_escaping_and_opt_outs():
    row = {"v": '<b>&"\'x'}
    t = Template.from_parts("S", html="<p>{{ v }}|{{ v | raw }}|{{ v|url }}</p>", text="{{ v }}", from_addr=FROM)
    b = bodies(parse(t.render(row, to_addr="a@example.org")))
    assert b["text/html"] == "<p>&lt;b&gt;&amp;&quot;&#x27;x|<b>&\"'x|%3Cb%3E%26%22%27x</p>\r\n"
    assert b["text/plain"] == row["v"] + "\r\n"
    t2 = Template.from_parts("S", html="<p>{{ v }}</p>", from_addr=FROM, html_escape=False)
    assert parse(t2.render(row, to_addr="a@example.org")).get_content() == "<p>" + row["v"] + "</p>\r\n"
    with pytest.raises(TemplateError, match="upper"):
        Template.from_parts("S", html="{{ v | upper }}", from_addr=FROM)


def test_bad_per_recipient_arguments():
    t = Template.from_parts("S", text="x", from_addr=FROM)
    for kw in (
        dict(to_addr="not an address"),
        dict(to_addr="a@example.org\r\nBcc: x@y.z"),
        dict(to_addr="a@example.org", message_id="<a\r\nb@c>"),
        dict(to_addr="a@example.org", date="x\r\nBcc: y"),
        dict(to_addr="a@example.org", extra_headers=[("X-A", "1\r\nBcc: y@z.z")]),
        dict(to_addr="a@example.org", extra_headers=[("Bad Name", "1")]),
        dict(to_addr="a@example.org", extra_headers=[("X-A", "é")]),
    ):
        with pytest.raises(MergeError):
            t.render({}, **kw)


def test_long_and_non_ascii_values_go_quoted_printable():
    t = Template.from_parts("S", html=HTML, text=TEXT, from_addr=FROM)
    row = dict(ROW, first_name="Zoë " + "x" * 3000, city="=_ --=_boundary")
    data = t.render(row, to_addr="a@example.org")
    assert_wire_clean(data)
    msg = parse(data)
    parts = list(msg.iter_parts())
    assert len(parts) == 2
    for p in parts:
        assert p["Content-Transfer-Encoding"] == "quoted-printable"
        raw = p.get_payload(decode=False)
        assert max(map(len, raw.splitlines())) <= 76  # RFC 2045 §6.7
    b = bodies(msg)
    assert b["text/plain"] == expected_text(TEXT, row, escape=False)
    assert b["text/html"] == expected_text(HTML, row, escape=True)


def test_non_ascii_template_static_text():
    text = "Grüße, {{ first_name }}! — «news» " + "ü" * 200 + "\n"
    t = Template.from_parts("Grüße {{ first_name }}", text=text, from_addr="Jörg <j@example.com>")
    row = {"first_name": "Ann"}
    data = t.render(row, to_addr="a@example.org")
    assert data.isascii()
    assert_wire_clean(data)
    msg = parse(data)
    assert msg["Content-Transfer-Encoding"] == "quoted-printable"
    assert msg.get_content() == expected_text(text, row, escape=False)
    assert msg["Subject"] == "Grüße Ann"
    assert msg["From"].addresses[0].display_name == "Jörg"
    t8 = Template.from_parts("S", text=text, from_addr=FROM, allow_8bit=True)
    data8 = t8.render(row, to_addr="a@example.org")
    msg8 = parse(data8)
    assert msg8["Content-Transfer-Encoding"] == "8bit"
    assert "Grüße, Ann!".encode() in data8
    assert msg8.get_content() == expected_text(text, row, escape=False)


EML = b"""From: Shop <shop@example.com>
To: placeholder@example.com
Subject: =?utf-8?q?Sale_for_{{_first=5Fname_}}?=
Message-ID: <old@example.com>
Date: Mon, 30 Nov 2026 10:00:00 +0000
Reply-To: help@example.com
MIME-Version: 1.0
Content-Type: multipart/mixed; boundary="XX"

--XX
Content-Type: multipart/alternative; boundary="YY"

--YY
Content-Type: text/plain; charset=utf-8
Content-Transfer-Encoding: quoted-printable

Dear {{ first_name }}, caf=C3=A9 prices in {{ city }}.
--YY
Content-Type: text/html; charset=utf-8
Content-Transfer-Encoding: base64

PHA+RGVhciB7eyBmaXJzdF9uYW1lIH19PC9wPgo=
--YY--
--XX
Content-Type: image/png
Content-Disposition: attachment; filename="logo.png"
Content-Transfer-Encoding: base64

iVBORw0KGgo=
--XX--
"""


def test_from_eml(tmp_path):
    p = tmp_path / "t.eml"
    p.write_bytes(EML)
    t = Template.from_eml(p)
    assert t.fields == {"first_name", "city"}
    row = {"first_name": "<Ann>", "city": "Oslo"}
    data = t.render(row, to_addr="ann@example.org")
    assert_wire_clean(data)
    msg = parse(data)
    assert msg["Subject"] == "Sale for <Ann>"
    assert msg["To"] == "ann@example.org"
    assert msg["Message-ID"] != "<old@example.com>"
    assert msg["Reply-To"] == "help@example.com"
    assert [p.get_content_type() for p in msg.walk()] == [
        "multipart/mixed", "multipart/alternative", "text/plain", "text/html", "image/png",
    ]
    b = bodies(msg)
    assert b["text/plain"] == "Dear <Ann>, café prices in Oslo."  # the CRLF before --YY is the delimiter's
    assert b["text/html"] == "<p>Dear &lt;Ann&gt;</p>\r\n"
    att = [p for p in msg.walk() if p.get_content_type() == "image/png"][0]
    assert att.get_content() == b"\x89PNG\r\n\x1a\n"
    assert att.get_filename() == "logo.png"
    assert data.count(b"\r\nTo:") == 1


_tokens = st.one_of(
    st.sampled_from(list("<>&\"'=_-.\r\n\t ") + ["--", "=_", "\r\n.\r\n", "{{", "}}", "=?utf-8?b?QQ==?=", "\x00", "\x7f"]),
    st.characters(blacklist_categories=("Cs",)),
)
values = st.one_of(
    st.lists(_tokens, max_size=60).map("".join),
    st.tuples(st.characters(blacklist_categories=("Cs",)), st.integers(500, 2000)).map(lambda t: t[0] * t[1]),
)


@settings(max_examples=150, deadline=None)
@given(first=values, city=values, mail=values, eight=st.booleans(), static=st.sampled_from(["ascii", "utf8"]))
def test_render_roundtrip_property(first, city, mail, eight, static):
    extra = "" if static == "ascii" else " Grüße ✓"
    text = TEXT + extra
    html_ = HTML + extra
    t = Template.from_parts("Hi {{ first_name }} in {{ city }}", html=html_, text=text, from_addr=FROM, allow_8bit=eight)
    row = {"first_name": first, "city": city, "email": mail}
    data = t.render(row, to_addr="a@example.org")
    assert_wire_clean(data)
    if not eight:
        assert data.isascii()
    msg = parse(data)
    assert not msg.defects
    assert msg["Bcc"] is None
    parts = list(msg.iter_parts())
    assert [p.get_content_type() for p in parts] == ["text/plain", "text/html"]
    for p in parts:
        if p["Content-Transfer-Encoding"] == "quoted-printable":
            assert max(map(len, p.get_payload().splitlines())) <= 76
    b = bodies(msg)
    assert b["text/plain"] == expected_text(text, row, escape=False)
    assert b["text/html"] == expected_text(html_, row, escape=True)
    subject = re.sub(r"[\x00-\x08\x0a-\x1f\x7f]", " ", f"Hi {first} in {city}")
    assert msg["Subject"] == subject


# -- unsubscribe headers


def test_unsubscribe_https_and_mailto():
    h = unsubscribe_headers(
        {"id": "a b&c/é"}, url_template="https://ex.com/u?id={{ id }}&e={{ to_addr }}",
        mailto="unsub@ex.com", to_addr="a+x@example.org",
    )
    assert h == [
        ("List-Unsubscribe", "<https://ex.com/u?id=a%20b%26c%2F%C3%A9&e=a%2Bx%40example.org>, <mailto:unsub@ex.com?subject=unsubscribe>"),
        ("List-Unsubscribe-Post", "List-Unsubscribe=One-Click"),
    ]
    t = Template.from_parts("S", text="x", from_addr=FROM)
    msg = parse(t.render({}, to_addr="a+x@example.org", extra_headers=h))
    assert msg["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert "".join(str(msg["List-Unsubscribe"]).split()) == h[0][1].replace(" ", "")


def test_unsubscribe_variants_and_errors():
    # RFC 8058 §3.1: one-click only with an https URI.
    assert unsubscribe_headers({}, url_template="http://ex.com/u", to_addr="a@example.org") == [
        ("List-Unsubscribe", "<http://ex.com/u>")
    ]
    assert unsubscribe_headers({}, mailto="u@ex.com", to_addr="a@example.org") == [
        ("List-Unsubscribe", "<mailto:u@ex.com?subject=unsubscribe>")
    ]
    assert unsubscribe_headers({}, to_addr="a@example.org") == []
    with pytest.raises(MergeError):
        unsubscribe_headers({}, url_template="javascript:alert(1)", to_addr="a@example.org")
    with pytest.raises(MergeError):
        unsubscribe_headers({}, url_template="https://ex.com/a b", to_addr="a@example.org")
    with pytest.raises(MergeError):
        unsubscribe_headers({}, mailto="not-an-address", to_addr="a@example.org")
    with pytest.raises(MissingFieldError, match="id"):
        unsubscribe_headers({}, url_template="https://ex.com/{{ id }}", to_addr="a@example.org")


# -- addresses


@pytest.mark.parametrize(
    "addr, ok",
    [
        ("user@example.com", True),
        ("first.last+tag@sub.example.co.uk", True),
        ("o'brien@example.ie", True),
        ("x@[192.0.2.1]", True),
        ("x@[IPv6:2001:db8::1]", True),
        ('"quoted.local"@example.com', True),
        ('"a\\"b"@example.com', True),
        ("a" * 64 + "@example.com", True),
        ("a" * 65 + "@example.com", False),
        ("a@" + ("b" * 63 + ".") * 3 + "c" * 57 + ".com", False),  # > 254 in all
        ("a@" + "b" * 64 + ".com", False),  # label > 63
        ("", False),
        ("plain", False),
        ("@example.com", False),
        ("user@", False),
        ("user@localhost", False),
        ("user@example", False),
        ("user@example.123", False),
        ("user@-example.com", False),
        ("user@example-.com", False),
        ("user@example..com", False),
        ("user@example.com.", False),
        (".user@example.com", False),
        ("us..er@example.com", False),
        ("user.@example.com", False),
        ("us er@example.com", False),
        ('"us er"@example.com', False),
        ("user@exa mple.com", False),
        ("user@example.com\r\n", False),
        ("user\n@example.com", False),
        ("us\x00er@example.com", False),
        ("a@b@example.com", False),
        ("<user@example.com>", False),
        ("User <user@example.com>", False),
        ("x@[300.0.0.1]", False),
        ("x@[IPv6:zz::1]", False),
        ("jörg@example.com", False),
        ("user@exämple.com", False),
    ],
)
def test_valid_address(addr, ok):
    assert valid_address(addr) is ok


def test_valid_address_smtputf8():
    assert valid_address("jörg@exämple.com", smtputf8=True)
    assert not valid_address("jö rg@example.com", smtputf8=True)


def test_normalize_address():
    assert normalize_address("Ann.Lee@Example.COM") == "ann.lee@example.com"
    assert normalize_address("Ann.Lee@Example.COM", fold_local=False) == "Ann.Lee@example.com"
    assert normalize_address(" a+b@X.org ") == "a+b@x.org"
    assert normalize_address("a.b@x.org") != normalize_address("ab@x.org")


def test_generated_message_ids_are_unique_and_ascii():
    t = Template.from_parts("S", text="x", from_addr="Bücher <info@bücher.de>")
    ids = {parse(t.render({}, to_addr="a@example.org"))["Message-ID"] for _ in range(50)}
    assert len(ids) == 50
    assert all(re.fullmatch(r"<[0-9a-f]{32}@xn--bcher-kva\.de>", i) for i in ids)


def test_header_folding_keeps_lines_short():
    long_ascii = " ".join(["word"] * 100)
    t = Template.from_parts("{{ s }}", text="x", from_addr=FROM)
    for value in (long_ascii, "é" * 300, "x" * 2000, "two  spaces and trail  "):
        data = t.render({"s": value}, to_addr="a@example.org")
        head = data.split(b"\r\n\r\n")[0]
        assert max(map(len, head.split(b"\r\n"))) <= 78
        assert parse(data)["Subject"] == value


def test_lone_surrogate_value_is_refused():
    t = Template.from_parts("S", text="{{ v }}", from_addr=FROM)
    for bad in ("\udcff", "a\ud800b"):
        with pytest.raises(MergeError, match="'v'"):
            t.render({"v": bad}, to_addr="a@example.org")


def test_from_eml_keeps_an_attached_message_whole():
    inner = b"From: a@example.com\r\nSubject: inner {{ x }}\r\n\r\ninner body {{ x }}\r\n"
    eml = (
        b"From: s@example.com\r\nSubject: outer\r\nMIME-Version: 1.0\r\n"
        b'Content-Type: multipart/mixed; boundary="B"\r\n\r\n'
        b"--B\r\nContent-Type: text/plain\r\n\r\nHello {{ x }}\r\n"
        b"--B\r\nContent-Type: message/rfc822\r\n\r\n" + inner + b"--B--\r\n"
    )
    t = Template.from_bytes(eml)
    assert t.fields == {"x"}  # placeholders inside the attached message are its text, not ours
    msg = parse(t.render({"x": "<1>"}, to_addr="a@example.org"))
    assert [p.get_content_type() for p in msg.iter_parts()] == ["text/plain", "message/rfc822"]
    att = list(msg.iter_parts())[1].get_content()
    assert att["Subject"] == "inner {{ x }}"
    assert att.get_content() == "inner body {{ x }}\r\n"


@pytest.mark.parametrize("eml", [
    # No Content-Type at all: text/plain by default (RFC 2045 §5.2).
    b"From: news@example.com\nSubject: Hi {{ name }}\n\nHello {{ name }}\n",
    # A multipart whose part has no headers: the same default for the part.
    b"From: news@example.com\nSubject: Hi {{ name }}\nMIME-Version: 1.0\n"
    b'Content-Type: multipart/mixed; boundary="B"\n\n--B\n\nHello {{ name }}\n--B--\n',
])
def test_template_without_content_type_is_text_plain(eml):
    t = Template.from_bytes(eml)
    msg = parse(t.render({"name": "Zoë"}, to_addr="a@example.org"))
    assert msg["Subject"] == "Hi Zoë"
    body = msg.get_body(("plain",))
    assert body.get_content_type() == "text/plain"
    assert body.get_content().rstrip() == "Hello Zoë"

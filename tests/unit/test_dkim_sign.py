"""DKIM signing: every signature is checked by dkimpy's own verifier (rsa-sha256 and ed25519-sha256)."""

from __future__ import annotations

import base64

import pytest

dkim = pytest.importorskip("dkim")
pytest.importorskip("cryptography")

from fastsmtplib.dkim_sign import DkimError, DkimSigner, generate_key  # noqa: E402
from fastsmtplib.merge import Template, unsubscribe_headers  # noqa: E402

HTML = "<p>Hello {{ first_name }}</p>\n" + "<p>Some newsletter text, the same for everyone.</p>\n" * 200
STATIC_HTML = "<p>Hello subscriber</p>\n" + "<p>Some newsletter text.</p>\n" * 200


def _needs_nacl(kind: str) -> None:
    # dkimpy verifies ed25519 with PyNaCl (the test extra installs it).
    if kind == "ed25519":
        pytest.importorskip("nacl")


@pytest.fixture(scope="module", params=["rsa", "ed25519"])
def keypair(request):
    _needs_nacl(request.param)
    pem, txt = generate_key(request.param)
    return request.param, pem, txt


def dnsfunc_for(txt: str, selector: str = "sel", domain: str = "example.com"):
    want = f"{selector}._domainkey.{domain}.".encode()

    def dnsfunc(name, timeout=5):
        return txt.encode() if name == want else None

    return dnsfunc


def rows(n):
    return [{"first_name": f"Reader{i} <&>", "email": f"r{i}@example.org"} for i in range(n)]


def render_all(t, n=5):
    out = []
    for row in rows(n):
        extra = unsubscribe_headers(row, url_template="https://example.com/u?e={{ to_addr }}",
                                    mailto="unsub@example.com", to_addr=row["email"])
        out.append(t.render(row, to_addr=row["email"], extra_headers=extra))
    return out


def test_key_kind_and_txt_record(keypair):
    kind, pem, txt = keypair
    assert pem.startswith(b"-----BEGIN PRIVATE KEY-----")
    assert txt.startswith(f"v=DKIM1; k={kind}; p=")
    signer = DkimSigner(pem, "sel", "example.com")
    assert signer.algorithm == (b"rsa-sha256" if kind == "rsa" else b"ed25519-sha256")


def test_identical_bodies_hash_once_and_verify(keypair):
    kind, pem, txt = keypair
    signer = DkimSigner(pem, "sel", "example.com")
    t = Template.from_parts("Hi {{ first_name }}", html=STATIC_HTML, from_addr="News <news@example.com>")
    msgs = [signer.sign(m) for m in render_all(t, 6)]
    assert signer.body_hashes_computed == 1
    for m in msgs:
        assert m.startswith(b"DKIM-Signature: ")
        assert dkim.verify(m, dnsfunc=dnsfunc_for(txt))
    # Every message has its own header signature (To, Message-ID differ).
    assert len({m.split(b"\r\n\r\n")[0] for m in msgs}) == 6


def test_different_bodies_verify(keypair):
    kind, pem, txt = keypair
    signer = DkimSigner(pem, "sel", "example.com")
    t = Template.from_parts("Hi {{ first_name }}", html=HTML, text="Hi {{ first_name }}\n", from_addr="News <news@example.com>")
    msgs = [signer.sign(m) for m in render_all(t, 4)]
    assert signer.body_hashes_computed == 4
    dns = dnsfunc_for(txt)
    for m in msgs:
        assert dkim.verify(m, dnsfunc=dns)
        d = dkim.DKIM(m)
        assert d.verify(dnsfunc=dns)
        signed = {h.lower() for h in d.signature_fields[b"h"].replace(b" ", b"").split(b":")}
        # RFC 8058 §4: both unsubscribe headers must be covered by the signature.
        assert {b"list-unsubscribe", b"list-unsubscribe-post", b"from", b"to", b"subject"} <= signed
        assert d.signature_fields[b"c"] == b"relaxed/relaxed"
    # Tampering with the body, a signed header, or adding a second From breaks it.
    m = msgs[0]
    assert not dkim.verify(m.replace(b"Reader0", b"Reader9"), dnsfunc=dns)
    assert not dkim.verify(m.replace(b"Subject: Hi", b"Subject: Ho"), dnsfunc=dns)
    head, body = m.split(b"\r\n\r\n", 1)
    assert not dkim.verify(head + b"\r\nFrom: evil@example.net\r\n\r\n" + body, dnsfunc=dns)
    assert not dkim.verify(head + b"\r\nList-Unsubscribe: <https://evil.example/>\r\n\r\n" + body, dnsfunc=dns)
    # Relaxed canonicalisation survives what relays do: whitespace and header case.
    relaxed = m.replace(b"Subject: Hi", b"subject:   Hi").replace(b"<p>Hello", b"<p>Hello  ")
    assert dkim.verify(relaxed, dnsfunc=dns)


def test_wrong_public_key_fails(keypair):
    kind, pem, txt = keypair
    _, other_txt = generate_key(kind)
    t = Template.from_parts("S", text="x", from_addr="news@example.com")
    m = DkimSigner(pem, "sel", "example.com").sign(t.render({}, to_addr="a@example.org"))
    assert not dkim.verify(m, dnsfunc=dnsfunc_for(other_txt))


def test_signature_matches_body_hash_of_dkimpy(keypair):
    kind, pem, txt = keypair
    signer = DkimSigner(pem, "sel", "example.com")
    t = Template.from_parts("S", html=HTML, from_addr="news@example.com")
    m = t.render({"first_name": "A"}, to_addr="a@example.org")
    sig = signer.signature(m)
    fields = dkim.util.parse_tag_value(dkim.rfc822_parse(sig + b"\r\n")[0][0][1])
    # dkimpy's own sign() computes bh= the same way.
    ref = dkim.sign(m, b"sel", b"example.com", pem if kind == "rsa" else _seed(pem),
                    canonicalize=(b"relaxed", b"relaxed"),
                    signature_algorithm=b"rsa-sha256" if kind == "rsa" else b"ed25519-sha256")
    ref_fields = dkim.util.parse_tag_value(dkim.rfc822_parse(ref + b"\r\n")[0][0][1])
    assert fields[b"bh"] == ref_fields[b"bh"]


def _seed(pem: bytes) -> bytes:
    from cryptography.hazmat.primitives import serialization

    key = serialization.load_pem_private_key(pem, password=None)
    raw = key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                            serialization.NoEncryption())
    return base64.b64encode(raw)


def test_dkimpy_ed25519_seed_format_accepted():
    pytest.importorskip("nacl")
    pem, txt = generate_key("ed25519")
    signer = DkimSigner(_seed(pem), "sel", "example.com")
    t = Template.from_parts("S", text="x", from_addr="news@example.com")
    assert dkim.verify(signer.sign(t.render({}, to_addr="a@example.org")), dnsfunc=dnsfunc_for(txt))


def test_errors():
    pem, _ = generate_key("ed25519")
    with pytest.raises(DkimError):
        DkimSigner(b"-----BEGIN PRIVATE KEY-----\ngarbage\n-----END PRIVATE KEY-----\n", "s", "example.com")
    with pytest.raises(DkimError):
        DkimSigner(b"not a key", "s", "example.com")
    with pytest.raises(DkimError):
        DkimSigner(pem, "bad selector", "example.com")
    with pytest.raises(DkimError):
        DkimSigner(pem, "s", "example.com;x=1")
    with pytest.raises(DkimError, match="From"):
        DkimSigner(pem, "s", "example.com", headers=["subject"])
    with pytest.raises(DkimError):
        DkimSigner(pem, "s", "example.com", headers=["from", "received"])
    with pytest.raises(DkimError):
        generate_key("dsa")
    signer = DkimSigner(pem, "s", "example.com")
    with pytest.raises(DkimError, match="From"):
        signer.sign(b"Subject: x\r\n\r\nbody\r\n")
    with pytest.raises(DkimError):
        signer.sign(b"no separator at all")


from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from fastsmtplib.dkim_sign import relaxed_body  # noqa: E402

_body_bytes = st.lists(
    st.sampled_from([b" ", b"  ", b"\t", b" \t ", b"\r\n", b"\r", b"\n", b"a", b"xyz", b"\xc3\xa9", b"."]),
    max_size=80,
).map(b"".join)


@settings(max_examples=500, deadline=None)
@given(_body_bytes)
def test_relaxed_body_equals_dkimpy(body):
    from dkim.canonicalization import Relaxed

    assert relaxed_body(body) == Relaxed.canonicalize_body(body)


@pytest.mark.parametrize("subject", ["Hi   there\t you", "Grüße {{ first_name }}", "x" * 200])
def test_rsa_header_is_dkimpys_gen_header_byte_for_byte(subject):
    """Same tags in, same DKIM-Signature out: the header hashing equals dkimpy's."""
    import hashlib

    from dkim.canonicalization import CanonicalizationPolicy
    from dkim.crypto import parse_pem_private_key

    pem, _ = generate_key("rsa")
    t = Template.from_parts(subject, html=HTML, from_addr="Ünï News <news@example.com>",
                            headers={"Reply-To": "r@example.com", "X-Not-Signed": "a  b"})
    row = {"first_name": "Zoë <x>", "email": "z@example.org"}
    m = t.render(row, to_addr="z@example.org", to_name="Zoë Q. Public, Esq.",
                 extra_headers=unsubscribe_headers(row, url_template="https://e.com/u/{{ to_addr }}/" + "x" * 80,
                                                   to_addr="z@example.org"))
    ours = DkimSigner(pem, "sel", "example.com").signature(m)
    tags = dkim.util.parse_tag_value(dkim.rfc822_parse(ours + b"\r\n")[0][0][1])
    include = [x.strip() for x in tags[b"h"].split(b":")]
    fields = [(b"v", b"1"), (b"a", b"rsa-sha256"), (b"c", b"relaxed/relaxed"), (b"d", b"example.com"),
              (b"q", b"dns/txt"), (b"s", b"sel"), (b"t", tags[b"t"]), (b"h", b" : ".join(include)),
              (b"bh", tags[b"bh"]), (b"b", b"0" * 60)]
    d = dkim.DKIM(m)
    d.hasher = hashlib.sha256
    ref = d.gen_header(fields, include, CanonicalizationPolicy.from_c_value(b"relaxed/relaxed"),
                       b"DKIM-Signature", parse_pem_private_key(pem))
    assert ours == b"DKIM-Signature: " + ref


from fastsmtplib.dkim_sign import BodyHasher, body_hash, chunk_info  # noqa: E402


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(_body_bytes, st.booleans()), max_size=8))
def test_body_hasher_equals_body_hash(chunks):
    """Streaming static (precomputed) and dynamic chunks gives the one-shot bh=."""
    hasher = BodyHasher()
    for chunk, static in chunks:
        if static:
            hasher.feed_static(chunk, chunk_info(chunk))
        else:
            hasher.feed(chunk)
    assert hasher.body_hash() == body_hash(b"".join(c for c, _ in chunks))


@settings(max_examples=60, deadline=None)
@given(
    first=st.lists(_body_bytes.map(lambda b: b.decode("utf-8", "replace")), max_size=3).map(" ".join),
    static_body=st.booleans(),
    eight=st.booleans(),
)
def test_render_with_dkim_streams_the_same_signature(first, static_body, eight):
    """render(dkim=) gives the bh= of the whole body, and the message verifies."""
    pytest.importorskip("nacl")
    signer, txt = _ED
    html_ = STATIC_HTML if static_body else HTML + "  trailing  \t\n\n\n"
    t = Template.from_parts("Hi {{ first_name }}", html=html_, text="Hi {{ first_name }}\n\n" if not static_body else "x\n",
                            from_addr="News <news@example.com>", allow_8bit=eight)
    row = {"first_name": first, "email": "a@example.org"}
    signed = t.render(row, to_addr="a@example.org", dkim=signer)
    assert dkim.verify(signed, dnsfunc=dnsfunc_for(txt))
    body = signed.split(b"\r\n\r\n", 1)[1]
    tags = dkim.util.parse_tag_value(dkim.rfc822_parse(signed)[0][0][1])
    assert tags[b"bh"] == body_hash(body)


_ED_PEM, _ED_TXT = generate_key("ed25519")
_ED = (DkimSigner(_ED_PEM, "sel", "example.com"), _ED_TXT)


def test_render_dkim_accepts_any_signer_with_sign():
    pytest.importorskip("nacl")
    signer, txt = _ED

    class OnlySign:
        def sign(self, message: bytes) -> bytes:
            return signer.sign(message)

    t = Template.from_parts("S", html=HTML, from_addr="news@example.com")
    signed = t.render({"first_name": "A"}, to_addr="a@example.org", dkim=OnlySign())
    assert signed.startswith(b"DKIM-Signature:")
    assert dkim.verify(signed, dnsfunc=dnsfunc_for(txt))

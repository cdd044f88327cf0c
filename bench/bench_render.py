"""Mail merge: one personalised 20 KB HTML newsletter per call, fastsmtplib.merge vs EmailMessage.

    python -m pytest bench/bench_render.py -p no:cacheprovider      # full run (~20 s)
    python -m pytest bench/ --benchmark-disable -q                   # smoke: each once
    taskset -c 0 python bench/bench_render.py                        # plain table, no pytest

Every call renders the next recipient of 1,000 (different name, address and
unsubscribe link each time), so nothing is cached across calls that a real
campaign could not cache.  Groups:

``render``       ``Template.render`` (the MIME structure was laid out once) vs
                 building an ``EmailMessage`` per recipient (set_content +
                 add_alternative + ``as_bytes(policy=SMTP)``), the usual loop.
``render-dkim``  the same plus a DKIM signature (rsa-sha256 2048, ed25519):
                 ``dkim.sign`` on the ``EmailMessage`` bytes; ``DkimSigner.sign``
                 on the rendered bytes (canonicalises the whole body); and
                 ``render(dkim=signer)`` (streams the body hash from the
                 template's precomputed pieces).  The body holds placeholders.
``dkim-static``  the body has no placeholders: ``render(dkim=)`` hashes it once.

The HTML part and the text part both hold the reader's name, and the HTML an
unsubscribe link with the address percent-encoded.  Nothing asserts a timing.

One run (2026-12-01, pinned with ``taskset -c 0``, a shared 2-core machine with
load ~6, so the stdlib rows are noisy: min / median, us per 22.5 KB message):

    render       EmailMessage per recipient     2656 / 10955
                 Template.render                  18 /    20
    render-dkim  EmailMessage + dkim.sign (rsa) 36833 / 44975
                 signer.sign(render()) rsa / ed25519   474 / 169   (min)
                 render(dkim=) rsa / ed25519           436 / 138   (min)
    dkim-static  render(dkim=) rsa / ed25519           388 /  91   (min)

RSA-2048 signing itself is ~0.35 ms of the rsa rows (OpenSSL via cryptography).
"""

from __future__ import annotations

import email.policy
import html
import itertools
import os
import sys
import time
from email.message import EmailMessage
from urllib.parse import quote

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src"))

from fastsmtplib.merge import Template, unsubscribe_headers  # noqa: E402

try:
    import dkim

    from fastsmtplib.dkim_sign import DkimSigner, generate_key
except ImportError:  # pragma: no cover
    dkim = None

FROM = "Weekly News <news@example.com>"
UNSUB = "https://example.com/u?e={{ to_addr }}"
_PARA = (
    '<tr><td class="copy" style="padding:8px 24px;font-family:Arial,sans-serif">'
    "This week in the newsletter: new releases, a long read about mail delivery, "
    'and the usual <a href="https://example.com/links?id=42">links worth reading</a>.</td></tr>\n'
)
HTML = (
    "<!DOCTYPE html>\n<html><head><title>Weekly News</title></head><body>\n<table>\n"
    "<tr><td><h1>Hello {{ first_name }}!</h1></td></tr>\n"
    + _PARA * 85
    + '<tr><td>Sent to {{ email }}. <a href="https://example.com/u?e={{ email | url }}">Unsubscribe</a>'
    "</td></tr>\n</table></body></html>\n"
)
TEXT = "Hello {{ first_name }}!\n\n" + "This week: new releases, a long read, links.\n" * 20
SUBJECT = "Weekly News for {{ first_name }}"
STATIC_HTML = HTML.replace("{{ first_name }}", "reader").replace("{{ email }}", "you").replace(
    "{{ email | url }}", "you"
)
STATIC_TEXT = TEXT.replace("{{ first_name }}", "reader")

ROWS = [
    {"first_name": f"Reader {i}", "email": f"reader{i}@example.org"} for i in range(1000)
]


def _sub(text: str, row: dict, escape: bool) -> str:
    esc = html.escape if escape else (lambda s: s)
    return (
        text.replace("{{ first_name }}", esc(row["first_name"]))
        .replace("{{ email | url }}", quote(row["email"], safe=""))
        .replace("{{ email }}", esc(row["email"]))
    )


def stdlib_render(row: dict) -> bytes:
    """The loop people write: a new EmailMessage per recipient."""
    msg = EmailMessage()
    msg["From"] = FROM
    msg["To"] = row["email"]
    msg["Subject"] = _sub(SUBJECT, row, False)
    msg["Date"] = email.utils.formatdate()
    msg["Message-ID"] = email.utils.make_msgid(domain="example.com")
    for k, v in unsubscribe_headers(row, url_template=UNSUB, to_addr=row["email"]):
        msg[k] = v
    msg.set_content(_sub(TEXT, row, False))
    msg.add_alternative(_sub(HTML, row, True), subtype="html")
    return msg.as_bytes(policy=email.policy.SMTP)


TEMPLATE = Template.from_parts(SUBJECT, html=HTML, text=TEXT, from_addr=FROM)
STATIC_TEMPLATE = Template.from_parts(SUBJECT, html=STATIC_HTML, text=STATIC_TEXT, from_addr=FROM)


def fast_render(row: dict, template: Template = TEMPLATE, signer=None) -> bytes:
    return template.render(
        row,
        to_addr=row["email"],
        extra_headers=unsubscribe_headers(row, url_template=UNSUB, to_addr=row["email"]),
        dkim=signer,
    )


_KEYS: dict[str, bytes] = {}


def key(kind: str) -> bytes:
    if kind not in _KEYS:
        _KEYS[kind] = generate_key(kind)[0]
    return _KEYS[kind]


def cases():
    """(group, name, function of a row) for every measured thing."""
    out = [
        ("render", "emailmessage", stdlib_render),
        ("render", "merge", fast_render),
    ]
    if dkim is not None:
        rsa = DkimSigner(key("rsa"), "sel", "example.com")
        ed = DkimSigner(key("ed25519"), "sel", "example.com")
        rsa_pem = key("rsa")
        out += [
            ("render-dkim", "emailmessage+dkim.sign-rsa",
             lambda r: dkim.sign(m := stdlib_render(r), b"sel", b"example.com", rsa_pem,
                                 canonicalize=(b"relaxed", b"relaxed")) + m),
            ("render-dkim", "merge,signer.sign-rsa", lambda r: rsa.sign(fast_render(r))),
            ("render-dkim", "merge,signer.sign-ed25519", lambda r: ed.sign(fast_render(r))),
            ("render-dkim", "merge(dkim=)-rsa", lambda r: fast_render(r, signer=rsa)),
            ("render-dkim", "merge(dkim=)-ed25519", lambda r: fast_render(r, signer=ed)),
            ("dkim-static", "merge(dkim=)-rsa", lambda r: fast_render(r, STATIC_TEMPLATE, rsa)),
            ("dkim-static", "merge(dkim=)-ed25519", lambda r: fast_render(r, STATIC_TEMPLATE, ed)),
        ]
    return out


_CASES = cases()


@pytest.mark.parametrize(
    "group, name, fn", _CASES, ids=[f"{g}:{n}" for g, n, _ in _CASES]
)
def test_render(benchmark, group, name, fn):
    """Render (and sign) one recipient's message."""
    benchmark.group = group
    rows = itertools.cycle(ROWS)
    sample = fn(next(rows))
    assert b"Reader 0" in sample or b"reader" in sample
    benchmark.extra_info["message_bytes"] = len(sample)
    benchmark(lambda: fn(next(rows)))


def main() -> None:
    n = 300
    print(f"{'group':<12} {'case':<28} {'us/msg':>9}  (message {len(fast_render(ROWS[0]))} bytes)")
    for group, name, fn in _CASES:
        rows = itertools.cycle(ROWS)
        fn(next(rows))
        best = float("inf")
        for _ in range(3):
            t0 = time.perf_counter()
            for _ in range(n):
                fn(next(rows))
            best = min(best, (time.perf_counter() - t0) / n * 1e6)
        print(f"{group:<12} {name:<28} {best:9.1f}")


if __name__ == "__main__":
    main()

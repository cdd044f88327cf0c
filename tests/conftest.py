"""Shared fixtures: real servers to talk to (see ``tests/support``).

aiosmtpd (in-process, function-scoped, ~10 ms to start)::

    aiosmtpd_server          plain ESMTP (SIZE, 8BITMIME), records messages
    starttls_server          + STARTTLS (trustme cert for localhost/127.0.0.1)
    starttls_required_server + STARTTLS required before MAIL
    ssl_server               implicit TLS, for SMTP_SSL
    auth_server              AUTH PLAIN LOGIN CRAM-MD5 in the clear, for
                             tests.support.aiosmtpd_server.AUTH_USER/AUTH_PASSWORD
    smtputf8_server          + SMTPUTF8
    lmtp_server              LMTP on 127.0.0.1 (one reply per recipient after DATA)
    lmtp_unix_server         LMTP on a Unix socket (``.path``)
    aiosmtpd_factory         make(**AiosmtpdServer kwargs) for anything else,
                             e.g. make(refuse_recipients={"x@y": 550})

    srv.host, srv.port, srv.messages[i].{mail_from, rcpt_tos, content, ...}

TLS::

    tls_material             the session's trustme CA + localhost cert
    client_tls_context       a fresh client SSLContext trusting that CA

Postfix (skipped when the binaries are missing, failed when ``CI`` is set;
tests using them get the ``sink`` / ``postfix`` markers automatically)::

    smtp_sink                session-scoped ``smtp-sink`` (PIPELINING, 8BITMIME)
    smtp_sink_factory        make(*options, lmtp=, pipelining=, dump=, unix_socket=)
    postfix_server           session-scoped private Postfix smtpd (CHUNKING, SMTPUTF8, DSN...)
    postfix                  the same, with the hold queue emptied before the test

Scripted faults / wire checks::

    scripted_server          make(script, **kw) -> started ScriptedServer; script
                             errors are raised at teardown (or use ``with
                             ScriptedServer(script) as srv:`` directly)

The module under test is ``tests.support.target.smtplib`` (fastsmtplib, or
the stdlib with ``FASTSMTPLIB_TEST_TARGET=smtplib``).
"""

from __future__ import annotations

import pytest

from tests.support.aiosmtpd_server import AUTH_PASSWORD, AUTH_USER, AiosmtpdServer
from tests.support.certs import tls
from tests.support.postfix import PostfixServer
from tests.support.scripted import ScriptedServer
from tests.support.sink import SmtpSink

AUTH_USERS = {AUTH_USER: AUTH_PASSWORD}

_SINK_FIXTURES = {"smtp_sink", "smtp_sink_factory"}
_POSTFIX_FIXTURES = {"postfix_server", "postfix"}


def pytest_collection_modifyitems(config, items):
    for item in items:
        names = set(getattr(item, "fixturenames", ()))
        if names & _SINK_FIXTURES:
            item.add_marker(pytest.mark.sink)
        if names & _POSTFIX_FIXTURES:
            item.add_marker(pytest.mark.postfix)


# -- TLS ---------------------------------------------------------------------
@pytest.fixture(scope="session")
def tls_material():
    return tls()


@pytest.fixture
def client_tls_context(tls_material):
    return tls_material.client_context()


# -- aiosmtpd ----------------------------------------------------------------
@pytest.fixture
def aiosmtpd_factory():
    started = []

    def make(**kwargs) -> AiosmtpdServer:
        srv = AiosmtpdServer(**kwargs).start()
        started.append(srv)
        return srv

    yield make
    for srv in reversed(started):
        srv.stop()


@pytest.fixture
def aiosmtpd_server(aiosmtpd_factory):
    return aiosmtpd_factory()


@pytest.fixture
def starttls_server(aiosmtpd_factory):
    return aiosmtpd_factory(tls="starttls")


@pytest.fixture
def starttls_required_server(aiosmtpd_factory):
    return aiosmtpd_factory(tls="starttls", require_starttls=True)


@pytest.fixture
def ssl_server(aiosmtpd_factory):
    return aiosmtpd_factory(tls="implicit")


@pytest.fixture
def auth_server(aiosmtpd_factory):
    return aiosmtpd_factory(auth=AUTH_USERS)


@pytest.fixture
def smtputf8_server(aiosmtpd_factory):
    return aiosmtpd_factory(smtputf8=True)


@pytest.fixture
def lmtp_server(aiosmtpd_factory):
    return aiosmtpd_factory(lmtp=True)


@pytest.fixture
def lmtp_unix_server(aiosmtpd_factory):
    return aiosmtpd_factory(lmtp=True, unix_socket=True)


# -- Postfix -----------------------------------------------------------------
@pytest.fixture(scope="session")
def smtp_sink():
    with SmtpSink() as sink:
        yield sink


@pytest.fixture
def smtp_sink_factory():
    started = []

    def make(*options, **kwargs) -> SmtpSink:
        sink = SmtpSink(*options, **kwargs).start()
        started.append(sink)
        return sink

    yield make
    for sink in reversed(started):
        sink.stop()


@pytest.fixture(scope="session")
def postfix_server():
    with PostfixServer() as pf:
        yield pf


@pytest.fixture
def postfix(postfix_server):
    postfix_server.delete("ALL")
    return postfix_server


# -- scripted ------------------------------------------------------------------
@pytest.fixture
def scripted_server():
    started = []

    def make(script, **kwargs) -> ScriptedServer:
        srv = ScriptedServer(script, **kwargs).start()
        started.append(srv)
        return srv

    yield make
    errors = []
    for srv in started:
        srv.wait()  # let each script finish what the client triggered
        srv.stop()
        if srv.check:
            errors.extend(srv.errors)
    if errors:
        raise errors[0]

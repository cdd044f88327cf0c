"""``send_many``: stream many messages over one connection, one result per message.

The transaction rules are the engine's (``_engine.py``); this module pulls
messages from the caller's iterable, hands them to the engine, moves bytes
through the connection and yields each message's ``SendResult`` in input order.

With PIPELINING (RFC 2920) each write carries the previous message's body and
the next message's whole envelope, so a message costs one round trip instead of
the stdlib's four.  With CHUNKING (RFC 3030) and ENHANCEDSTATUSCODES up to
``window`` messages (envelope, ``BDAT n LAST`` and body) are in flight at once.
Without PIPELINING the messages go lock-step.

Every message ends in exactly one reported state (``SendResult.status``, a
``Status``, equal to these strings):

``delivered``      every recipient accepted the message;
``partial``        delivered, but some recipients were refused;
``refused``        not delivered, the server said 5xx (permanent);
``deferred``       not delivered, the server said 4xx (try later);
``failed``         not sent: the client refused it (bad input, SIZE, ...);
``uncertain``      the body was sent but no trustworthy reply came (the
                   connection died, or the replies got out of step): it may
                   or may not have been delivered, so it must not be resent
                   blindly (that could duplicate it);
``not_attempted``  nothing was delivered (the connection died, or got out of
                   step, before the body was sent): safe to send again.

Whatever fails inside the run (a lost connection, a timeout, a reply over the
limits, a TLS error, replies out of step), every message pulled from the input
gets its result, every later one is reported ``not_attempted`` as the caller
pulls it, and the iteration ends normally.  At most ``window`` messages are
read ahead of the results, those the client refused included.

Package interface (stable names other modules of the package use; not part
of the public API): ``CLIENT_ERRORS``, ``prepare_item`` and ``submit_item``.
``SMTPPool`` prepares items in the caller's thread and submits them to a
connection's ``Engine`` in its I/O thread.
"""

from __future__ import annotations

import collections
from typing import Any, Iterable, Iterator, Sequence

from . import _message
from ._engine import (
    DEFERRED,
    DELIVERED,
    FAILED,
    NOT_ATTEMPTED,
    PARTIAL,
    REFUSED,
    UNCERTAIN,
    SendResult,
    Status,
)
from .errors import SMTPException, SMTPServerDisconnected

__all__ = ["SendResult", "Status", "send_many", "DELIVERED", "PARTIAL", "REFUSED", "DEFERRED",
           "FAILED", "UNCERTAIN", "NOT_ATTEMPTED"]

#: What the client refuses at submit time (reported ``failed``, never sent).
CLIENT_ERRORS = (ValueError, TypeError, UnicodeError, SMTPException)
_CLIENT_ERRORS = CLIENT_ERRORS


def _unpack(item: Any) -> tuple[Any, Any, Any]:
    if isinstance(item, tuple) and len(item) == 3:
        return item
    if hasattr(item, "get_all"):  # an email Message alone: envelope from headers
        return None, None, item
    raise TypeError("send_many() wants (from_addr, to_addrs, msg) tuples or Message objects, got %r" % type(item))


def prepare_item(item: Any, mail_options: Sequence[str]) -> tuple[Any, list, Any, Sequence[str]]:
    """One input item as ``(from_addr, to_addrs list, msg, mail_options)`` (package interface).

    ``item`` is a ``(from_addr, to_addrs, msg)`` tuple or an ``email``
    Message; a Message (alone or as ``msg``) is flattened here, its envelope
    taken from its headers where not given, and SMTPUTF8/8BITMIME added to
    the MAIL options when an address needs them.  ``to_addrs`` may be one
    address (a str).  Raises ``TypeError`` for any other item and
    ``ValueError`` when there is no recipient; the message is not encoded
    yet (``Engine.submit`` does that, and raises the rest of ``CLIENT_ERRORS``).
    """
    if type(item) is tuple and len(item) == 3 and not hasattr(item[2], "get_all"):
        from_addr, to_addrs, msg = item
    else:
        from_addr, to_addrs, msg = _unpack(item)
        if hasattr(msg, "get_all"):
            from_addr, to_addrs = _message.envelope(msg, from_addr, to_addrs)
            utf8 = _message.needs_smtputf8(from_addr, to_addrs)
            if utf8:
                mail_options = (*mail_options, "SMTPUTF8", "BODY=8BITMIME")
            msg = _message.flatten(msg, utf8=utf8)
    to_list = [to_addrs] if isinstance(to_addrs, str) else list(to_addrs or ())
    if not to_list:
        raise ValueError("message has no recipients")
    return from_addr, to_list, msg, mail_options


def submit_item(eng: Any, item: Any, result: SendResult, mail_options: Sequence[str], rcpt_options: Sequence[str]) -> None:
    """Hand one input item to the engine (package interface): ``prepare_item``,
    then ``Engine.submit`` with ``result``.

    ``result`` gets the envelope before the engine sees the message, so a
    message the client refuses (``CLIENT_ERRORS``, raised) is reported with it.
    """
    from_addr, to_list, msg, mail_options = prepare_item(item, mail_options)
    result.from_addr = from_addr
    result.to_addrs = to_list
    eng.submit(result.index, from_addr, to_list, msg, mail_options, rcpt_options, result=result)


def _not_attempted(source: Iterator[tuple[int, Any]], exc: BaseException) -> Iterator[SendResult]:
    for index, item in source:
        result = SendResult(index, status=NOT_ATTEMPTED, exception=exc)
        try:
            result.from_addr, to, _msg = _unpack(item)
            if to is not None:
                result.to_addrs = [to] if isinstance(to, str) else list(to)
        except TypeError:
            pass
        yield result


def send_many(
    conn: Any,
    messages: Iterable[Any],
    window: int = 32,
    mail_options: Sequence[str] = (),
    rcpt_options: Sequence[str] = (),
) -> Iterator[SendResult]:
    """Send ``messages`` on ``conn``; yield one ``SendResult`` per message, in order.

    See ``SMTP.send_many`` for the arguments.
    """
    if window < 1:
        raise ValueError("window must be at least 1")
    conn.ehlo_or_helo_if_needed()
    conn.check_in_step()  # an unasked reply would shift every pairing below
    eng = conn.engine(window)
    source = enumerate(messages)
    order: collections.deque[SendResult] = collections.deque()
    exhausted = False
    try:
        while True:
            while order and order[0].status:
                yield order.popleft()
            # Read ahead at most ``window`` messages (refused ones count too;
            # finished ones awaiting their confirming reply do not), and no
            # more than the engine can write soon.
            while not exhausted and len(order) - eng.held < window and eng.room() > 0 and eng.broken is None:
                try:
                    index, item = next(source)
                except StopIteration:
                    exhausted = True
                    break
                result = SendResult(index)
                order.append(result)
                try:
                    submit_item(eng, item, result, mail_options, rcpt_options)
                except CLIENT_ERRORS as exc:
                    exc.__traceback__ = None  # keep no frames (and payloads) alive
                    result.status, result.exception = FAILED, exc
            while order and order[0].status:
                yield order.popleft()
            if eng.broken is not None:
                while order:  # submitted after the engine stopped
                    yield order.popleft()
                if not exhausted:
                    yield from _not_attempted(source, eng.broken)
                return
            try:
                stepped = conn._io_step(eng, bulk=True)
            except Exception:  # a TLS error, ...: the engine has reported every message
                continue
            if not stepped and eng.idle and exhausted and not order:
                return
    except GeneratorExit:
        # The caller stopped iterating.  Messages already written have replies
        # owed that nobody will read: close rather than mis-pair them later.
        if eng.owed or eng.in_flight:
            conn.close()
        elif not eng.idle:
            try:
                while conn._io_step(eng):  # a pending RSET after a failure
                    pass
            except SMTPServerDisconnected:
                pass
        raise
    finally:
        if conn.sock is not None:
            conn._set_bulk_timeout(None)  # the caller asked for no timeout

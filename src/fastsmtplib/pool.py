"""``SMTPPool``: many connections to one server, driven by one I/O thread.

Shape (DESIGN.md §5)::

    callers (any thread)                      the I/O thread
    submit / sendmail / send_many  --queue-->  pending -> rate limit -> a connection's Engine
         Future[SendResult]        <--------   results: done, or retried after a backoff

* Callers hand messages over through a bounded ``queue.Queue`` (a full queue
  blocks the caller: back-pressure) and a wake-up socket pair; each message
  gets a ``concurrent.futures.Future`` that resolves to its ``SendResult``.
* One I/O thread runs a ``selectors`` loop over every connection.  Each
  connection has its own ``Engine`` (``_engine.py``: the transaction rules),
  and the loop moves bytes: ``bytes_to_send()`` is written without blocking
  (a short write keeps the rest and waits for EVENT_WRITE), what arrives is
  fed to ``Engine.receive``, and an end of file, a socket error or a reply
  deadline becomes ``Engine.connection_lost``.  With DATA each connection has
  one message per round trip in flight (the next envelope goes with the body
  before it); with BDAT a window.
* Opening a connection (connect, greeting, EHLO/LHLO, STARTTLS, AUTH) is done
  by a short-lived worker thread with the blocking ``SMTP``/``SMTP_SSL``/
  ``LMTP`` classes, so a slow handshake never stalls the loop; the socket is
  then made non-blocking and handed to the loop.  The same thread applies
  the ``pipelining``/``chunking`` switches to the connection (its engine
  reads them) and reports the handshake's duration to ``on_connect``.
  ``path`` makes it a Unix-socket connection (``_UnixSocket`` below), for
  SMTP as for LMTP.  Connections open lazily (as
  work waits), up to ``size``, and are closed and replaced after a 421, a
  lost connection, ``max_messages_per_connection`` messages or
  ``max_connection_age`` seconds; one idle for ``idle_timeout`` is closed.
* An idle connection stays registered for reading: a reply nobody asked for
  (say a 421 before the server's idle timeout) or an end of file closes it
  before it is reused.  One idle longer than ``noop_after`` is probed with
  NOOP before its next message.
* ``rate`` (messages per second) is a token bucket consulted before any
  message is handed to any connection, retries included: it holds across the
  whole pool and across reconnects.
* ``Retry`` (``retry.py``) decides what is sent again: ``deferred`` (4yz) and
  ``not_attempted`` messages, after an exponential backoff with jitter (a
  timer heap in the I/O thread), never ``uncertain`` ones unless the policy
  says ``retry_uncertain=True``.  A message's ``SendResult`` is reported once,
  when its last attempt ends; ``attempts`` counts the times it was handed to a
  server; a message deferred after its last retry carries the last reply.
* ``send_many`` returns a ``SendManyRun``.  Stopped early (``close()``,
  ``break``, leaving ``with``), it pulls no more input, cancels what was not
  yet handed to a connection (``not_attempted``, ``SendCancelled``), lets
  what was handed over finish without retries, waits for it, and keeps every
  result the caller did not take in ``run.unreported`` (and logs a summary).
* The pool reaches the blocking classes and the engine only through the
  package's documented driver interface: ``SMTP.engine()``,
  ``SMTP.check_in_step()``, ``batch.prepare_item``/``CLIENT_ERRORS``, and the
  ``Engine``'s own methods and ``parser``.
* Latency: ``SendResult.sent_at`` is ``time.monotonic()`` when the write
  carrying the message's MAIL command was issued (its first attempt's, so a
  retried message's latency includes its retries; None if it was never
  written), ``done_at`` when its outcome became known (its last attempt).
  One clock read per write and per batch of replies, not per message.
"""

from __future__ import annotations

import collections
import heapq
import itertools
import logging
import os
import queue
import random
import selectors
import socket
import threading
import time
from concurrent.futures import Future
from typing import Any, Callable, Iterable, Iterator, NamedTuple, Optional, Sequence, Union

from . import _message
from ._engine import (
    DEFERRED,
    DELIVERED,
    FAILED,
    NOT_ATTEMPTED,
    PARTIAL,
    RFC5321_TIMEOUTS,
    UNCERTAIN,
    SendResult,
)
from ._engine import Status
from .batch import CLIENT_ERRORS, prepare_item
from .errors import (
    SMTPNotSupportedError,
    SMTPPipelineError,
    SMTPReplyTimeout,
    SMTPReplyTooLong,
    SMTPServerDisconnected,
)
from .lmtp import LMTP, LMTP_PORT
from .retry import Retry
from .smtp import SMTP, SMTP_PORT, SMTP_SSL, SMTP_SSL_PORT

try:
    import ssl as _ssl
except ImportError:  # pragma: no cover
    _ssl = None  # type: ignore[assignment]

__all__ = ["SMTPPool", "PoolClosed", "SendCancelled", "SendManyRun", "ConnectInfo"]

log = logging.getLogger("fastsmtplib.pool")

_monotonic = time.monotonic
_INF = float("inf")
_RECV_SIZE = 65536
_EVENT_READ, _EVENT_WRITE = selectors.EVENT_READ, selectors.EVENT_WRITE
if _ssl is not None:
    _WANT = (BlockingIOError, InterruptedError, _ssl.SSLWantReadError, _ssl.SSLWantWriteError)
else:  # pragma: no cover
    _WANT = (BlockingIOError, InterruptedError)

# Connection (slot) states.
_CLOSED, _CONNECTING, _READY, _PROBING = range(4)


class ConnectInfo(NamedTuple):
    """What ``SMTPPool``'s ``on_connect`` callback is given, once per connection attempt."""

    #: Seconds (``time.perf_counter``) from the start of the connect to the
    #: connection being ready: TCP or Unix connect (and the TLS handshake with
    #: ``ssl``), the greeting, EHLO/LHLO, STARTTLS and the second EHLO, AUTH;
    #: or, when it failed, to the failure.
    seconds: float
    #: None: the connection is ready.  Else what made it fail (refused, timed
    #: out, a 4xx/5xx greeting, TLS, AUTH...); the pool handles the failure.
    error: Optional[BaseException]
    #: The server's EHLO/LHLO keywords, lower-case, with their parameters
    #: (``{"pipelining": "", "size": "10240000", ...}``); empty when it failed.
    features: dict


class _UnixSocket:
    """Mixin for ``SMTP``/``LMTP``: the connection is made to a Unix socket path.

    ``_get_socket`` is the step in which ``SMTP.connect`` makes its socket
    (the one ``SMTP_SSL`` replaces for TLS, as smtplib's does); everything
    after it -- the greeting, EHLO, the reader -- is the class's own.
    """

    unix_path: Union[str, bytes] = ""

    def _get_socket(self, host: str, port: int, timeout: Any) -> Any:
        if timeout is not None and not timeout:
            raise ValueError("Non-blocking socket (timeout=0) is not supported")
        if self.debuglevel > 0:  # type: ignore[attr-defined]
            self._print_debug("connect: to unix socket", self.unix_path)  # type: ignore[attr-defined]
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            if timeout is not socket._GLOBAL_DEFAULT_TIMEOUT:  # type: ignore[attr-defined]
                sock.settimeout(timeout)
            sock.connect(self.unix_path)
        except BaseException:
            sock.close()
            raise
        return sock


class _UnixSMTP(_UnixSocket, SMTP):
    """SMTP over a Unix socket."""


class _UnixLMTP(_UnixSocket, LMTP):
    """LMTP over a Unix socket given by ``path`` (any path, not only one starting with ``/``)."""


class PoolClosed(RuntimeError):
    """The pool was closed: it takes no more messages."""


class SendCancelled(RuntimeError):
    """The ``send_many`` run was closed before this message was handed to a
    connection: it was never sent (``status`` is ``not_attempted``)."""


class _Job:
    """One message and its progress through attempts (I/O thread only, after submit)."""

    __slots__ = ("item", "result", "future", "retry", "started", "mail_options", "rcpt_options",
                 "written")

    def __init__(self, item: Any, result: SendResult, future: Future, retry: Retry,
                 mail_options: Sequence[str], rcpt_options: Sequence[str]) -> None:
        self.item = item
        self.result = result
        self.future = future
        self.retry = retry
        self.started = 0.0  # monotonic time of the first attempt
        self.mail_options = mail_options
        self.rcpt_options = rcpt_options
        self.written = 0  # result.attempts when handed to the engine (its MAIL not yet written)


_new_job = object.__new__  # _new_job(_Job): a _Job without running __init__ (send_many's fast path)


class _Slot:
    """One of the pool's connections."""

    __slots__ = ("state", "conn", "sock", "eng", "out", "jobs", "deadline", "opened",
                 "idle_since", "sent", "retiring", "registered", "events", "gen", "unwritten", "tls",
                 "max_sent", "retire_at")

    def __init__(self) -> None:
        self.state = _CLOSED
        self.conn: Any = None
        self.sock: Any = None
        self.eng: Any = None
        self.out: Any = None  # bytes not yet written (memoryview), or None
        self.jobs: dict[int, _Job] = {}  # id(result) -> job, messages given to the engine
        # Jobs handed to the engine whose MAIL was not yet written, in the
        # engine's order (it writes its queue first in, first out).
        self.unwritten: collections.deque[_Job] = collections.deque()
        self.deadline = 0.0  # reply deadline while replies are owed
        self.opened = 0.0
        self.idle_since = 0.0
        self.sent = 0  # messages handed to this connection
        self.retiring = False  # take no more; close once idle
        self.registered = False
        self.events = 0
        self.gen = 0  # bumped at each open, so a late handshake result is recognised
        self.tls = False
        self.max_sent = _INF  # retire after this many messages (max_messages_per_connection)
        self.retire_at = _INF  # ... or at this time (opened + max_connection_age)


#: Messages ``send_many`` hands to the I/O thread at a time (at most).
_BATCH = 128
#: A waiting ``send_many`` caller is woken when a quarter of its in-flight
#: limit has finished, or when a result has waited this long (seconds):
#: few thread switches under load, results still streamed when it is slow.
_LINGER = 0.002
#: ``stats`` keys: plain strings, whatever the status object.
_STAT_KEY = {s: s.value for s in Status}


class _Stats(collections.Counter):
    """``SMTPPool.stats``: a ``Counter`` whose ``stats[key] += n`` is dict's own.

    ``Counter`` defines ``__delitem__`` (no KeyError for a missing key), so
    the type's shared set/delete slot becomes a generic one that looks
    ``__setitem__`` up on every store: about twice the cost of dict's, and
    the pool stores two counts per message.  With ``__delitem__`` dict's
    too, the slot is dict's (deleting a missing key raises KeyError, as for
    a dict; nothing deletes from ``stats``).  Its repr is a Counter's.
    """

    __slots__ = ()
    __delitem__ = dict.__delitem__

    def __repr__(self) -> str:
        return "Counter" + collections.Counter.__repr__(self)[len(type(self).__name__):]


class _Collector:
    """Where the I/O thread puts one ``send_many`` call's results (instead of a
    Future per message).  The caller sleeps on ``event`` with ``waiting`` set
    and is woken once ``wake_at`` results are in, or ``_LINGER`` after the
    first (``SMTPPool._flush_notify``), not per result."""

    __slots__ = ("results", "waiting", "wake_at", "event", "since", "closed")

    def __init__(self) -> None:
        self.results: collections.deque = collections.deque()
        self.closed = False  # the caller stopped: hand nothing more over, retry nothing
        self.waiting = False
        self.wake_at = 1
        self.event = threading.Event()
        self.since = 0.0  # when the I/O thread first saw it waiting with results

    def cancel(self) -> bool:
        return False

    def done(self) -> bool:
        return False

    def set_exception(self, exc: BaseException) -> None:  # pragma: no cover - internal error
        self.results.append(SendResult(None, status=NOT_ATTEMPTED, exception=exc))
        self.event.set()


class SendManyRun:
    """What ``SMTPPool.send_many`` returns: an iterator of ``SendResult``.

    Iterate it to the end, or stop early: ``close()`` (also run by ``break``
    once the run is dropped, by leaving ``with pool.send_many(...) as run``,
    and by garbage collection) cancels the messages not yet handed to a
    connection, lets those handed over finish (no retries), waits for them,
    and puts every result the caller has not taken into ``unreported``.

    Attributes:
        unreported: the results not yielded before the run was closed, in
            the order they completed (cancelled ones: ``not_attempted`` with
            ``SendCancelled``).  Empty after a run iterated to its end.
    """

    def __init__(self, pool: "SMTPPool", messages: Iterable[Any], limit: int, mail_options: tuple,
                 rcpt_options: tuple, retry: Optional[Retry]) -> None:
        self.unreported: list[SendResult] = []
        self._outstanding = 0  # pulled from the input, result not yet taken
        self._gen = pool._send_many(self, messages, limit, mail_options, rcpt_options, retry)

    def __iter__(self) -> Iterator[SendResult]:
        # The generator itself: a ``for`` loop then resumes it directly, not
        # through __next__ (a Python call per result).  It holds this run
        # (its argument), so the run lives as long as the loop does.
        return self._gen

    def __next__(self) -> SendResult:
        return next(self._gen)

    def close(self) -> None:
        """Stop: see the class docstring.  Returns once every message handed
        to a connection has its outcome; idempotent."""
        self._gen.close()

    def __enter__(self) -> "SendManyRun":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        gen = getattr(self, "_gen", None)
        if gen is not None:
            gen.close()


class SMTPPool:
    """A pool of ``size`` connections to one SMTP or LMTP server.

    Args:
        host, port: the server (host: "localhost" when not given; port 0: 25,
            465 with ``ssl``, 2003 with ``lmtp``); with ``lmtp`` a host
            starting with ``/`` is also taken as a Unix socket path (kept for
            compatibility; ``path`` says it plainly).
        path: connect to this Unix socket path (``str``, ``bytes`` or
            ``os.PathLike``) instead of a TCP host and port, speaking SMTP,
            or LMTP with ``lmtp=True``.  It excludes ``host``, ``port``,
            ``source_address``, ``ssl`` and ``starttls`` (TLS over a Unix
            socket is not supported): any of them with ``path`` raises
            ``ValueError``.  ``login`` works as over TCP.  ``pool.host`` and
            ``pool.port`` are then None and ``pool.path`` is the path.
        size: most connections open at once.
        lmtp: speak LMTP (LHLO, one reply per recipient after the data).
        ssl: implicit TLS (``SMTP_SSL``); ``starttls``: STARTTLS after EHLO.
        context: the ``ssl.SSLContext`` for either (default: a verifying one).
        login: ``(user, password)`` to AUTH with on every connection.
        local_hostname, source_address: as for ``SMTP``.
        pipelining, chunking: True (the default): use PIPELINING (RFC 2920)
            and CHUNKING/BDAT (RFC 3030) when the server advertises them
            (and the ``SMTP`` class's switch of the same name is on).  False:
            never use it on any of the pool's connections, even if advertised
            (one command per write and a wait for each reply; DATA instead of
            BDAT).  Set on each connection as it is opened.
        on_connect: ``callable(ConnectInfo)``, called once per connection
            attempt, right after it succeeded or failed, with the time its
            setup took (connect, greeting, EHLO/LHLO, STARTTLS, AUTH) and the
            error if it failed.  It runs on the thread that opened the
            connection (a pool worker thread, or the caller of
            ``open_connection``) before the connection is used: keep it quick
            and thread-safe.  An exception it raises is logged and ignored.
        timeout: seconds for connecting and for each reply (None: RFC 5321's
            per-command reply timeouts, and no connect timeout).
        max_messages_per_connection: a connection is replaced after this many
            messages (None: no limit).
        max_connection_age: ... after this many seconds (None: no limit).
        idle_timeout: a connection idle this long is closed (None: never).
        noop_after: a connection idle this long gets a NOOP before reuse.
        rate: most messages handed to the server per second, pool-wide
            (None: no limit); ``burst``: how many may go at once (default a
            tenth of a second's worth, at least 1).
        retry: the default ``Retry`` policy (``submit`` may override it).
        window: most messages in flight per connection with BDAT.
        queue_size: most messages waiting between callers and the I/O thread.
        max_in_flight: most unfinished messages ``send_many`` keeps submitted.
    """

    def __init__(
        self,
        host: Optional[str] = None,
        port: int = 0,
        *,
        path: Union[str, bytes, "os.PathLike[str]", None] = None,
        size: int = 8,
        lmtp: bool = False,
        ssl: bool = False,
        starttls: bool = False,
        context: Any = None,
        login: Optional[tuple[str, str]] = None,
        local_hostname: Optional[str] = None,
        timeout: Optional[float] = 60.0,
        source_address: Optional[tuple[str, int]] = None,
        max_messages_per_connection: Optional[int] = 1000,
        max_connection_age: Optional[float] = 300.0,
        idle_timeout: Optional[float] = 60.0,
        noop_after: Optional[float] = 10.0,
        rate: Optional[float] = None,
        burst: Optional[float] = None,
        retry: Optional[Retry] = None,
        window: int = 32,
        queue_size: Optional[int] = None,
        max_in_flight: Optional[int] = None,
        pipelining: bool = True,
        chunking: bool = True,
        on_connect: Optional[Callable[[ConnectInfo], Any]] = None,
    ) -> None:
        if path is not None:
            path = os.fspath(path)
            if not path:
                raise ValueError("path must not be empty")
            if host is not None or port:
                raise ValueError("give host/port or path, not both")
            if ssl or starttls:
                raise ValueError("TLS over a Unix socket (path with ssl/starttls) is not supported")
            if source_address is not None:
                raise ValueError("source_address does not apply to a Unix socket (path)")
        if on_connect is not None and not callable(on_connect):
            raise TypeError("on_connect must be callable or None")
        if size < 1:
            raise ValueError("size must be at least 1")
        if window < 1:
            raise ValueError("window must be at least 1")
        if ssl and starttls:
            raise ValueError("ssl and starttls are mutually exclusive")
        if lmtp and ssl:
            raise ValueError("LMTP over implicit TLS is not supported")
        if rate is not None and rate <= 0:
            raise ValueError("rate must be positive or None")
        if max_messages_per_connection is not None and max_messages_per_connection < 1:
            raise ValueError("max_messages_per_connection must be at least 1 or None")
        self.path = path
        if path is None:
            self.host: Optional[str] = host if host is not None else "localhost"
            self.port: Optional[int] = port or (LMTP_PORT if lmtp else SMTP_SSL_PORT if ssl else SMTP_PORT)
        else:
            self.host = self.port = None
        self.pipelining = bool(pipelining)
        self.chunking = bool(chunking)
        self.on_connect = on_connect
        self.size = size
        self.lmtp = lmtp
        self.ssl = ssl
        self.starttls = starttls
        self.context = context
        self.login = login
        self.local_hostname = local_hostname
        self.timeout = timeout
        self.source_address = source_address
        self.max_messages_per_connection = max_messages_per_connection
        self.max_connection_age = max_connection_age
        self.idle_timeout = idle_timeout
        self.noop_after = noop_after
        self.rate = rate
        self.burst = max(1.0, burst if burst is not None else (rate or 0) / 10.0)
        self.retry = retry if retry is not None else Retry()
        self.window = window
        qsize = queue_size if queue_size is not None else max(64, 2 * size * window)
        self.max_in_flight = max_in_flight if max_in_flight is not None else qsize + size * window * 2
        #: Counters, for tests and monitoring (written by the I/O thread only).
        self.stats: collections.Counter = _Stats()

        self._queue: queue.Queue = queue.Queue(qsize)
        self._rsock, self._wsock = socket.socketpair()
        self._rsock.setblocking(False)
        self._wsock.setblocking(False)
        self._woken = False
        self._closed = False  # no more submissions
        self._cancel = False  # close(wait=False): drop what was not handed over
        self._lock = threading.Lock()  # submit vs close
        self._handshakes: collections.deque = collections.deque()  # (slot, gen, conn or exc)
        self._notify: set = set()  # collectors with results for a waiting caller
        self._sweeps: collections.deque = collections.deque()  # collectors of stopped send_many runs
        self._rng = random.Random()
        # I/O thread state.
        self._sel = selectors.DefaultSelector()
        self._slots = [_Slot() for _ in range(size)]
        self._pending: collections.deque[_Job] = collections.deque()
        self._timers: list = []  # heap of (when, seq, job)
        self._seq = itertools.count()
        self._unfinished = 0  # jobs taken from the queue, not yet resolved
        self._tokens = self.burst
        self._token_time = _monotonic()
        self._connect_hold = 0.0  # no new connection before this time (after a failure)
        self._scan_at = _INF  # when _scan_slots is next due
        # A connection may take waiting messages that no read will hand it:
        # new or retried messages, a new connection, a rate-limit or connect
        # wait that ended.  Reads fill their own connection (_on_read).
        self._dirty = True
        self._rate_stopped = False  # set by each _fill
        self._fixed_timeout = timeout if timeout else None  # the reply timeout, when one for all
        self._buf = bytearray(_RECV_SIZE)
        self._view = memoryview(self._buf)
        self._thread = threading.Thread(target=self._run, name="fastsmtplib-pool", daemon=True)
        self._thread.start()

    # -- caller side -------------------------------------------------------------------

    def submit(
        self,
        from_addr: Optional[str],
        to_addrs: Any,
        msg: Any,
        mail_options: Sequence[str] = (),
        rcpt_options: Sequence[str] = (),
        *,
        retry: Optional[Retry] = None,
        index: Any = None,
    ) -> "Future[SendResult]":
        """Queue one message; return a Future of its ``SendResult``.

        ``msg`` may be a str, bytes or ``email.message.Message`` (then
        ``from_addr``/``to_addrs`` may be None, taken from its headers).  The
        call blocks while the pool's queue is full.  The Future may be
        cancelled until the message is handed to a connection.
        """
        return self._submit((from_addr, to_addrs, msg), index, retry, mail_options, rcpt_options)

    def _submit(self, item: Any, index: Any, retry: Optional[Retry],
                mail_options: Sequence[str], rcpt_options: Sequence[str]) -> "Future[SendResult]":
        if self._closed:
            raise PoolClosed("the pool is closed")
        fut: Future = Future()
        fut._fsl_index = index  # type: ignore[attr-defined]
        job = self._make_job(item, index, retry, mail_options, rcpt_options, fut)
        if job is not None:
            self._put([job])
            if self._closed and not self._thread.is_alive():  # closed meanwhile: nobody will take it
                _cancel(fut)
        return fut

    def _put(self, jobs: list) -> None:
        self._queue.put(jobs)
        if not self._woken:
            self._woken = True
            self._wake()

    def _make_job(self, item: Any, index: Any, retry: Optional[Retry], mail_options: Sequence[str],
                  rcpt_options: Sequence[str], fut: Any) -> Optional[_Job]:
        """A job for ``item``, or None when the client refused it (``fut`` is
        then resolved).  Runs in the caller's thread: a Message is flattened
        here, not in the I/O thread."""
        result = SendResult(index)
        if (type(item) is tuple and len(item) == 3 and (type(item[2]) is bytes or type(item[2]) is str)
                and (type(item[1]) is str or type(item[1]) is list or type(item[1]) is tuple) and item[1]):
            from_addr, to_addrs, msg = item
            to_list = [to_addrs] if type(to_addrs) is str else list(to_addrs)
        else:
            try:
                from_addr, to_list, msg, mail_options = prepare_item(item, mail_options)
            except CLIENT_ERRORS as exc:
                exc.__traceback__ = None
                result.status, result.exception = FAILED, exc
                if type(item) is tuple and len(item) == 3:
                    result.from_addr = item[0]
                self._refused(fut, result)
                return None
        result.from_addr = from_addr
        result.to_addrs = to_list
        return _Job((from_addr, to_list, msg), result, fut, retry if retry is not None else self.retry,
                    mail_options, rcpt_options)

    @staticmethod
    def _refused(fut: Any, result: SendResult) -> None:
        """A message the client refused before the I/O thread saw it."""
        if type(fut) is _Collector:
            fut.results.append(result)
        else:
            fut.set_running_or_notify_cancel()
            fut.set_result(result)

    def _wake(self) -> None:
        try:
            self._wsock.send(b"\0")
        except (BlockingIOError, OSError):
            pass  # already full of wake-ups, or closed

    def send_many(
        self,
        messages: Iterable[Any],
        *,
        mail_options: Sequence[str] = (),
        rcpt_options: Sequence[str] = (),
        retry: Optional[Retry] = None,
        max_in_flight: Optional[int] = None,
    ) -> "SendManyRun":
        """Send every message; yield one ``SendResult`` each, as they complete.

        ``messages`` are as for ``SMTP.send_many`` and are pulled lazily: at
        most ``max_in_flight`` are unfinished at once, so a generator of a
        million messages keeps memory flat.  ``result.index`` is the
        message's position in ``messages``.  Safe to run from several
        threads at once (each call its own iterator).

        Stopping early (``break``, ``close()``, leaving a ``with`` block on
        the returned ``SendManyRun``): no more messages are pulled from
        ``messages``; those pulled but not yet handed to a connection are
        cancelled, never sent (``not_attempted``, ``SendCancelled``); those
        already handed over finish their attempt, and are not retried; and
        ``close()`` waits for them.  Every result the caller did not get is
        then in ``run.unreported`` (and a summary is logged to
        ``fastsmtplib.pool``): nothing is dropped silently.
        """
        limit = max_in_flight or self.max_in_flight
        if limit < 1:
            raise ValueError("max_in_flight must be at least 1")
        if self._closed:
            raise PoolClosed("the pool is closed")
        return SendManyRun(self, messages, limit, tuple(mail_options), tuple(rcpt_options), retry)

    def _send_many(self, run: "SendManyRun", messages: Iterable[Any], limit: int, mail_options: tuple,
                   rcpt_options: tuple, retry: Optional[Retry]) -> Iterator[SendResult]:
        # Messages go to the I/O thread in batches and results come back in
        # batches: one hand-off between the threads per batch, not per message.
        # One generator frame per result (no ``yield from`` layer), and the
        # common item (a tuple of str/bytes) made into a job here, without a
        # call per message: this loop runs once per message.
        col = _Collector()
        results = col.results
        popleft = results.popleft
        source = enumerate(messages)
        exhausted = False
        make_job = self._make_job
        wake_at = max(1, limit // 4)
        outstanding = 0  # run._outstanding, kept here and stored where it is read (_stop_run)
        try:
            while True:
                if not exhausted and outstanding < limit:
                    batch: list = []
                    room = min(limit - outstanding, _BATCH)
                    for index, item in source:
                        outstanding += 1
                        if self._closed:
                            results.append(SendResult(index, status=NOT_ATTEMPTED,
                                                      exception=PoolClosed("the pool is closed")))
                            continue
                        if type(item) is tuple and len(item) == 3:
                            from_addr, to_addrs, msg = item
                            tt = type(to_addrs)
                            mt = type(msg)
                            if ((mt is bytes or mt is str) and (tt is str or tt is list or tt is tuple)
                                    and to_addrs):
                                # _make_job's fast path, written out.
                                result = SendResult(index)
                                result.from_addr = from_addr
                                result.to_addrs = to_list = [to_addrs] if tt is str else list(to_addrs)
                                # _Job(...), its __init__ written out: a class call
                                # with an __init__ frame costs twice these stores.
                                job = _new_job(_Job)
                                job.item = (from_addr, to_list, msg)
                                job.result = result
                                job.future = col
                                job.retry = retry if retry is not None else self.retry
                                job.started = 0.0
                                job.mail_options = mail_options
                                job.rcpt_options = rcpt_options
                                job.written = 0
                                batch.append(job)
                                if len(batch) >= room:
                                    break
                                continue
                        job = make_job(item, index, retry, mail_options, rcpt_options, col)
                        if job is not None:
                            batch.append(job)
                            if len(batch) >= room:
                                break
                    else:
                        exhausted = True
                    if batch:
                        self._put(batch)
                while results:
                    outstanding -= 1
                    yield popleft()
                if not outstanding:
                    if exhausted:
                        return
                    continue
                if exhausted or outstanding >= limit:
                    col.wake_at = min(outstanding, wake_at)
                    col.waiting = True
                    n = len(results)
                    if n < col.wake_at:
                        # Results that came just before ``waiting`` was set did not
                        # ask for a wake-up: do not sleep long on them.
                        col.event.wait(_LINGER if n else 1.0)
                    col.event.clear()
                    col.waiting = False
        except GeneratorExit:
            run._outstanding = outstanding
            self._stop_run(run, col)
            raise

    def _stop_run(self, run: "SendManyRun", col: _Collector) -> None:
        """The caller stopped a ``send_many``: cancel what was not handed
        over, wait for the rest, keep every result it did not get."""
        col.closed = True
        outstanding = run._outstanding
        with self._lock:
            alive = self._thread.is_alive()
            if alive:
                self._sweeps.append(col)
        if alive:
            self._wake()
        results = col.results
        unreported = run.unreported
        in_io_thread = threading.current_thread() is self._thread
        while outstanding > 0:
            while results:
                unreported.append(results.popleft())
                outstanding -= 1
            if outstanding <= 0 or in_io_thread:
                break
            if not self._thread.is_alive():  # pragma: no cover - the loop ended on an internal error
                break
            col.wake_at = outstanding
            col.waiting = True
            if len(results) < outstanding:
                col.event.wait(0.05)
            col.event.clear()
            col.waiting = False
        run._outstanding = outstanding
        if unreported:
            counts = collections.Counter(_STAT_KEY.get(r.status, r.status) for r in unreported)
            level = logging.INFO if set(counts) <= {"delivered", "partial"} else logging.WARNING
            log.log(level, "send_many stopped early: %d results not taken by the caller (%s); see SendManyRun.unreported",
                    len(unreported), ", ".join("%s %d" % kv for kv in sorted(counts.items())))

    def sendmail(
        self,
        from_addr: str,
        to_addrs: Any,
        msg: Any,
        mail_options: Sequence[str] = (),
        rcpt_options: Sequence[str] = (),
    ) -> dict[str, tuple[int, bytes]]:
        """As ``SMTP.sendmail``: the refused recipients, or the same exception.

        Thread-safe and blocking.  Retries (per the pool's ``Retry``) happen
        before it returns; the exception is that of the last attempt.
        """
        if not isinstance(msg, (str, bytes, bytearray)):
            raise TypeError("msg must be str or bytes")
        result = self.submit(from_addr, to_addrs, msg, mail_options, rcpt_options).result()
        return _as_sendmail(result)

    def send_message(
        self,
        msg: Any,
        from_addr: Optional[str] = None,
        to_addrs: Any = None,
        mail_options: Sequence[str] = (),
        rcpt_options: Sequence[str] = (),
    ) -> dict[str, tuple[int, bytes]]:
        """As ``SMTP.send_message`` (envelope from the headers, Bcc dropped)."""
        from_addr, to_list = _message.envelope(msg, from_addr, to_addrs)
        utf8 = _message.needs_smtputf8(from_addr, to_list)
        if utf8:
            mail_options = (*mail_options, "SMTPUTF8", "BODY=8BITMIME")
        flat = _message.flatten(msg, utf8=utf8)
        result = self.submit(from_addr, to_list, flat, mail_options, rcpt_options).result()
        exc = result.exception
        if utf8 and isinstance(exc, SMTPNotSupportedError):
            raise SMTPNotSupportedError(
                "One or more source or delivery addresses require"
                " internationalized email support, but the server"
                " does not advertise the required SMTPUTF8 capability"
            )
        return _as_sendmail(result)

    def close(self, wait: bool = True) -> None:
        """Take no more messages, then finish.

        ``wait=True``: every message submitted is finished (retries included)
        and the connections are closed (QUIT) before this returns.
        ``wait=False``: messages not yet handed to a connection (queued or
        waiting for a retry) are cancelled (their Futures are cancelled;
        ``send_many`` reports them ``not_attempted``); those already written
        finish in the background; returns at once.
        """
        with self._lock:
            self._closed = True
            if not wait:
                self._cancel = True
        self._wake()
        if wait and threading.current_thread() is not self._thread:
            self._thread.join()

    def __enter__(self) -> "SMTPPool":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close(wait=exc[0] is None)

    @property
    def connections(self) -> int:
        """Connections open or being opened now."""
        return sum(1 for s in self._slots if s.state != _CLOSED)

    # -- the I/O thread ----------------------------------------------------------------------

    def _run(self) -> None:
        sel = self._sel
        sel.register(self._rsock, selectors.EVENT_READ, None)
        try:
            while True:
                now = _monotonic()
                timeout = self._select_timeout(now)
                if self._notify:
                    due = self._flush_notify(now)
                    if due is not None and (timeout is None or due - now < timeout):
                        timeout = max(0.0, due - now)
                events = sel.select(timeout)
                for key, mask in events:
                    slot = key.data
                    if slot is None:
                        self._drain_wake()
                        continue
                    if mask & _EVENT_WRITE and slot.sock is not None:
                        self._on_write(slot)
                    if mask & _EVENT_READ and slot.sock is not None:
                        while self._on_read(slot):
                            pass
                now = _monotonic()
                if self._handshakes:
                    self._take_handshakes(now)
                if self._sweeps:
                    self._sweep()
                if self._queue.queue:  # a peek; the Queue's lock is taken only when there is work
                    self._take_new()
                timers = self._timers
                if timers and timers[0][0] <= now:
                    self._check_timers(now)
                if now >= self._scan_at:
                    self._scan_slots(now)
                if self._dirty and self._pending:
                    self._dispatch(now)
                if self._closed and self._finished():
                    break
        except BaseException as exc:  # pragma: no cover - a bug: fail every waiter
            self._abort(exc)
            raise
        finally:
            self._flush_notify()
            for slot in self._slots:
                if slot.state != _CLOSED:
                    self._close_slot(slot, polite=slot.eng is not None and slot.eng.idle)
            sel.close()
            self._rsock.close()
            self._wsock.close()

    def _flush_notify(self, now: Optional[float] = None) -> Optional[float]:
        """Wake the callers whose results are due: ``wake_at`` of them in, or
        the first waited ``_LINGER`` (every one when ``now`` is None).
        Returns when the next lingering one is due, or None."""
        notify = self._notify
        due = None
        for col in list(notify):
            if now is None or len(col.results) >= col.wake_at or now - col.since >= _LINGER:
                notify.discard(col)
                col.event.set()
            else:
                t = col.since + _LINGER
                if due is None or t < due:
                    due = t
        return due

    def _finished(self) -> bool:
        if self._cancel:
            self._cancel_waiting()
        return (not self._unfinished and self._queue.empty()
                and not any(s.state == _CONNECTING for s in self._slots))

    def _cancel_waiting(self) -> None:
        exc = PoolClosed("the pool was closed before this message was sent")
        jobs = list(self._pending)
        self._pending.clear()
        jobs += [job for _, _, job in self._timers]
        self._timers.clear()
        while True:
            try:
                batch = self._queue.get_nowait()
            except queue.Empty:
                break
            jobs += batch
            self._unfinished += len(batch)
        for job in jobs:
            self._drop(job, exc)

    def _drop(self, job: _Job, exc: BaseException) -> None:
        """Close(wait=False): cancel a message not handed over, or report its last outcome."""
        self._unfinished -= 1
        fut = job.future
        if type(fut) is _Collector or not _cancel(fut):  # a retry, or a send_many message
            if not job.result.status:
                job.result.status, job.result.exception = NOT_ATTEMPTED, exc
            self._unfinished += 1  # _resolve counts it again
            self._resolve(job)

    def _abort(self, exc: BaseException) -> None:  # pragma: no cover
        for slot in self._slots:
            for job in slot.jobs.values():
                if not job.future.done():
                    job.future.set_exception(exc)
        for job in list(self._pending) + [j for _, _, j in self._timers]:
            if not job.future.done():
                job.future.set_exception(exc)

    def _drain_wake(self) -> None:
        # Drain first, then clear the flag: cleared first, a caller's wake-up
        # byte could be drained here while its flag stays set, and every later
        # put would then skip waking a loop blocked in select (a lost wake-up,
        # seen as 1 s stalls).  The queue is read after this, in _take_new.
        try:
            while self._rsock.recv(4096):
                pass
        except (BlockingIOError, InterruptedError):
            pass
        self._woken = False

    def _select_timeout(self, now: float) -> Optional[float]:
        # The connections' own times (reply deadlines, idle timeouts) are
        # looked at by _scan_slots at most every _SCAN seconds, not at every
        # turn of a busy loop: _slot_wake is when the next scan is due.
        when = self._scan_at if self._scan_at is not _INF else None
        if self._timers:
            t = self._timers[0][0]
            if when is None or t < when:
                when = t
        if self._pending:
            if self.rate is not None and self._tokens < 1 and self._any_room():
                t = self._token_time + (1 - self._tokens) / self.rate
                if when is None or t < when:
                    when = t
            elif self._connect_hold > now:
                if when is None or self._connect_hold < when:
                    when = self._connect_hold
        if when is None:
            return None
        return max(0.0, when - now)

    def _any_room(self) -> bool:
        for slot in self._slots:
            if slot.state == _READY and not slot.retiring and slot.eng.room() > 0:
                return True
        return False

    # -- taking work -------------------------------------------------------------------------

    def _take_new(self) -> None:
        """Move messages from the callers' queue to ``pending``, only as many
        as the connections could take soon (the queue stays the bound)."""
        want = self.size * self.window * 2 - len(self._pending)
        get = self._queue.get_nowait
        waiting = self._queue.queue  # peeked without the lock; get_nowait takes it
        pending = self._pending
        while want > 0 and waiting:
            try:
                batch = get()
            except queue.Empty:
                return
            self._unfinished += len(batch)
            if self._cancel:
                exc = PoolClosed("the pool was closed before this message was sent")
                for job in batch:
                    self._drop(job, exc)
                continue
            pending.extend(batch)
            self._dirty = True
            want -= len(batch)

    def _sweep(self) -> None:
        """Stopped ``send_many`` runs: their messages waiting here (new, or
        for a retry) end now; those on a connection finish there."""
        cols = set()
        while self._sweeps:
            cols.add(self._sweeps.popleft())
        pending = self._pending
        keep = [job for job in pending if job.future not in cols]
        ended = [job for job in pending if job.future in cols]
        if ended:
            pending.clear()
            pending.extend(keep)
        if self._timers:
            timers = [t for t in self._timers if t[2].future not in cols]
            if len(timers) != len(self._timers):
                ended += [t[2] for t in self._timers if t[2].future in cols]
                heapq.heapify(timers)
                self._timers = timers
        for job in ended:
            self._end_cancelled(job)

    def _end_cancelled(self, job: _Job) -> None:
        """A job of a stopped run that will not be handed over (again)."""
        result = job.result
        if not job.started or not result.status:  # never sent: cancelled
            result.status = NOT_ATTEMPTED
            result.exception = SendCancelled("send_many was stopped before this message was handed to a connection")
        self._resolve(job)  # else: the outcome of its last attempt stands

    def _check_timers(self, now: float) -> None:
        timers = self._timers
        while timers and timers[0][0] <= now:
            _, _, job = heapq.heappop(timers)
            self._pending.appendleft(job)  # retries go first
            self._dirty = True

    def _scan_slots(self, now: float) -> None:
        """Reply deadlines and idle connections; sets when the next scan is due.

        Not run at every turn of a busy loop, only when something may be due
        (``_scan_at``): the earliest reply deadline or idle timeout seen at
        the last scan, or a deadline set since (``_deadline_set``).  A
        deadline refreshed by a reply only moves later, so a scan that finds
        it not yet passed just schedules the next one.
        """
        wake = _INF
        idle_timeout = self.idle_timeout
        for slot in self._slots:
            st = slot.state
            if st == _CLOSED or st == _CONNECTING:
                continue
            if slot.deadline:
                if slot.deadline <= now:
                    self.stats["reply_timeouts"] += 1
                    self._lost(slot, SMTPReplyTimeout("Connection unexpectedly closed: no reply within the timeout"))
                    continue
                t = slot.deadline
            elif st == _READY and slot.eng.idle:
                if (slot.retiring
                        or (idle_timeout is not None and now - slot.idle_since >= idle_timeout)
                        or (self.max_connection_age is not None and now - slot.opened >= self.max_connection_age)
                        or (self._closed and not self._pending and self._queue.empty())):
                    self._close_slot(slot, polite=True)
                    continue
                if idle_timeout is None:
                    continue
                t = slot.idle_since + idle_timeout
            else:
                continue
            if t < wake:
                wake = t
        self._scan_at = wake

    def _due(self, deadline: float) -> None:
        """A connection owes replies again: a scan must come by its deadline."""
        if deadline < self._scan_at:
            self._scan_at = deadline

    def _take_tokens(self, now: float) -> bool:
        """Rate limit: take one token if there is one."""
        if self.rate is None:
            return True
        tokens = self._tokens + (now - self._token_time) * self.rate
        if tokens > self.burst:
            tokens = self.burst
        self._token_time = now
        if tokens < 1:
            self._tokens = tokens
            return False
        self._tokens = tokens - 1
        return True

    def _dispatch(self, now: float) -> None:
        """Hand waiting messages to every connection with room; open more if needed."""
        self._dirty = False
        pending = self._pending
        for slot in self._slots:
            if not pending:
                return
            if slot.state == _READY and not slot.retiring:
                room = slot.eng.room()
                if room <= 0:
                    continue
                given = self._fill(slot, now, room)
                # Write what was taken even when the rate limit stopped the
                # fill part way: nothing else would flush it if no more work came.
                if given and slot.sock is not None:
                    self._flush(slot, now)
                if self._rate_stopped:
                    self._dirty = True  # rate limited: again once a token is due
                    return
        if pending:
            if now < self._connect_hold:
                self._dirty = True  # again once the hold ends (the select timeout)
            self._open_more(now)

    def _fill(self, slot: _Slot, now: float, room: int) -> int:
        """Give one ready connection up to ``room`` messages (its engine's
        ``room()``: each message taken uses one); the caller flushes.  How
        many it took; ``_rate_stopped`` says whether the rate limit stopped
        it (what it took before that must still be written by the caller)."""
        self._rate_stopped = False
        eng = slot.eng
        noop_after = self.noop_after
        if noop_after is not None and now - slot.idle_since >= noop_after and eng.idle:
            self._probe(slot, now)
            return 0
        pending = self._pending
        limited = self.rate is not None
        jobs = slot.jobs
        unwritten = slot.unwritten
        submit = eng.submit
        given = 0
        sent = slot.sent  # stored back below; read by no one else meanwhile
        max_sent = slot.max_sent
        retire_at = slot.retire_at
        # The body of the loop is what handing one message over takes (the
        # hot path: once per message), written out here rather than in a
        # method called per message.
        while room > 0 and pending and not slot.retiring:
            if limited and not self._take_tokens(now):
                self._rate_stopped = True
                break
            job = pending.popleft()
            result = job.result
            fut = job.future
            if type(fut) is _Collector:
                if fut.closed:
                    self._end_cancelled(job)
                    if limited:
                        self._tokens += 1  # nothing was handed over
                    continue
                if not job.started:
                    job.started = now
                else:  # a retry: the result starts again
                    result.status = ""
                    result.data_replies = []
            elif not job.started:
                if not fut.set_running_or_notify_cancel():
                    self._unfinished -= 1  # cancelled by the caller
                    if limited:
                        self._tokens += 1
                    continue
                job.started = now
            else:
                result.status = ""
                result.data_replies = []
            from_addr, to_list, msg = job.item
            try:
                submit(result.index, from_addr, to_list, msg, job.mail_options, job.rcpt_options,
                       result=result)
            except CLIENT_ERRORS as exc:
                exc.__traceback__ = None
                result.status, result.exception = FAILED, exc
                self._resolve(job, now)
                if limited:
                    self._tokens += 1
                continue
            jobs[id(result)] = job
            job.written = result.attempts  # the engine counts an attempt as it writes the MAIL
            unwritten.append(job)
            given += 1
            room -= 1
            sent += 1
            if sent >= max_sent or now >= retire_at:
                slot.retiring = True
                break
        if given:
            slot.sent = sent
            self.stats["handed"] += given
        return given

    # -- connections -------------------------------------------------------------------------

    def _open_more(self, now: float) -> None:
        if self._closed and self._cancel:
            return
        if now < self._connect_hold:
            return
        connecting = sum(1 for s in self._slots if s.state == _CONNECTING)
        need = len(self._pending) - connecting
        for slot in self._slots:
            if need <= 0:
                return
            if slot.state == _CLOSED:
                self._start_open(slot, now)
                need -= 1

    def _start_open(self, slot: _Slot, now: float) -> None:
        slot.state = _CONNECTING
        slot.gen += 1
        self.stats["connects"] += 1
        t = threading.Thread(target=self._handshake, args=(slot, slot.gen), daemon=True,
                             name="fastsmtplib-pool-connect")
        t.start()

    def _handshake(self, slot: _Slot, gen: int) -> None:
        """Worker thread: open one connection with the blocking classes."""
        conn = None
        try:
            conn = self._connect()
            outcome: Any = conn
        except BaseException as exc:  # reported to the I/O thread
            if conn is not None:
                conn.close()
            outcome = exc
        self._handshakes.append((slot, gen, outcome))
        self._wake()

    def open_connection(self) -> Any:
        """Open one connection as the pool opens its own, outside the pool.

        Blocking, on the calling thread: connect, greeting, EHLO/LHLO,
        STARTTLS, AUTH, then the ``pipelining``/``chunking`` switches, and
        ``on_connect`` is called as for the pool's connections.  Returns the
        ``SMTP``/``SMTP_SSL``/``LMTP`` object, which the caller owns (``quit()``
        or ``close()`` it); the pool never uses it.  For probing a server
        before a run (what it advertises: ``esmtp_features``).  Raises what
        the failed step raised (``OSError``, ``SMTPConnectError``, TLS and
        AUTH errors...).
        """
        return self._connect()

    def _connect(self) -> Any:
        """Open one connection; report it to ``on_connect`` (either thread)."""
        on_connect = self.on_connect
        if on_connect is None:
            return self._open()
        t0 = time.perf_counter()
        try:
            conn = self._open()
        except BaseException as exc:
            self._report_connect(on_connect, ConnectInfo(time.perf_counter() - t0, exc, {}))
            raise
        self._report_connect(on_connect, ConnectInfo(time.perf_counter() - t0, None,
                                                     dict(conn.esmtp_features or {})))
        return conn

    @staticmethod
    def _report_connect(on_connect: Callable[[ConnectInfo], Any], info: ConnectInfo) -> None:
        try:
            on_connect(info)
        except Exception:  # a monitoring hook must not fail a connection
            log.exception("on_connect callback raised; ignored")

    def _open(self) -> Any:
        timeout = self.timeout if self.timeout is not None else socket._GLOBAL_DEFAULT_TIMEOUT  # type: ignore[attr-defined]
        host, port = self.host, self.port
        if self.path is not None:
            conn: Any = (_UnixLMTP if self.lmtp else _UnixSMTP)(local_hostname=self.local_hostname, timeout=timeout)
            conn.unix_path = self.path
            # The socket is made from unix_path; "localhost" is the name
            # SMTP.connect remembers (as LMTP does for its Unix sockets), and
            # a nonzero port keeps it from looking for a ":port" in it.
            host, port = "localhost", LMTP_PORT if self.lmtp else SMTP_PORT
        elif self.lmtp:
            conn = LMTP(local_hostname=self.local_hostname, source_address=self.source_address, timeout=timeout)
        elif self.ssl:
            conn = SMTP_SSL(local_hostname=self.local_hostname, timeout=timeout,
                            source_address=self.source_address, context=self.context)
        else:
            conn = SMTP(local_hostname=self.local_hostname, timeout=timeout, source_address=self.source_address)
        # Read by conn.engine() when the I/O thread takes the connection over.
        # Only a False is set: True leaves the SMTP class's own switch in force.
        if not self.pipelining:
            conn.pipelining = False
        if not self.chunking:
            conn.chunking = False
        try:
            code, msg = conn.connect(host, port)
            if code != 220:
                from .errors import SMTPConnectError

                raise SMTPConnectError(code, msg)
            conn.ehlo_or_helo_if_needed()
            if self.starttls:
                conn.starttls(context=self.context)
                conn.ehlo()
            if self.login is not None:
                conn.login(*self.login)
            conn.check_in_step()  # a reply nobody asked for: do not use it
        except BaseException:
            conn.close()
            raise
        return conn

    def _take_handshakes(self, now: float) -> None:
        hs = self._handshakes
        self._dirty = True
        while hs:
            slot, gen, outcome = hs.popleft()
            if gen != slot.gen or slot.state != _CONNECTING:  # pragma: no cover - defensive
                if not isinstance(outcome, BaseException):
                    outcome.close()
                continue
            if isinstance(outcome, BaseException):
                self._connect_failed(slot, outcome, now)
                continue
            conn = outcome
            sock = conn.sock
            sock.setblocking(False)
            slot.conn = conn
            slot.sock = sock
            slot.eng = conn.engine(self.window)
            slot.out = None
            slot.deadline = 0.0
            slot.opened = slot.idle_since = now
            slot.sent = 0
            slot.max_sent = self.max_messages_per_connection or _INF
            slot.retire_at = now + self.max_connection_age if self.max_connection_age is not None else _INF
            slot.retiring = False
            slot.state = _READY
            slot.events = selectors.EVENT_READ
            slot.tls = hasattr(sock, "pending")  # decrypted bytes may wait with the fd quiet
            self._sel.register(sock, selectors.EVENT_READ, slot)
            slot.registered = True
            if self.idle_timeout is not None:
                self._due(now + self.idle_timeout)

    def _connect_failed(self, slot: _Slot, exc: BaseException, now: float) -> None:
        slot.state = _CLOSED
        self.stats["connect_failures"] += 1
        exc.__traceback__ = None
        self._connect_hold = now + min(1.0, 0.05 * (2 ** min(self.stats["connect_failures"], 5)))
        if any(s.state in (_READY, _PROBING, _CONNECTING) for s in self._slots):
            return  # others may carry the work
        # Nothing can carry the waiting messages: each fails this attempt.
        jobs = list(self._pending)
        self._pending.clear()
        for job in jobs:
            if not job.started:
                fut = job.future
                if type(fut) is not _Collector and not fut.set_running_or_notify_cancel():
                    self._unfinished -= 1
                    continue
                job.started = now
            job.result.status, job.result.exception = NOT_ATTEMPTED, exc
            self._finished_attempt(job, now)

    def _probe(self, slot: _Slot, now: float) -> None:
        """NOOP on a connection idle for a while, before its next message."""
        slot.state = _PROBING
        self.stats["noops"] += 1
        slot.deadline = now + self._reply_timeout("rset")
        self._due(slot.deadline)
        self._write(slot, b"noop\r\n", now)

    def _reply_timeout(self, kind: Optional[str]) -> float:
        if self.timeout is not None:
            return self.timeout
        return RFC5321_TIMEOUTS.get(kind or "mail", 300.0)

    def _close_slot(self, slot: _Slot, polite: bool = False) -> None:
        self._dirty = True  # a connection may be opened in its place
        sock = slot.sock
        if sock is not None:
            if slot.registered:
                try:
                    self._sel.unregister(sock)
                except (KeyError, ValueError):
                    pass
                slot.registered = False
            if polite and slot.out is None:
                try:
                    sock.send(b"quit\r\n")
                except (OSError, ValueError):
                    pass
            try:
                slot.conn.close()
            except Exception:  # pragma: no cover
                pass
            self.stats["closes"] += 1
        slot.state = _CLOSED
        slot.unwritten.clear()
        slot.conn = slot.sock = slot.eng = slot.out = None
        slot.deadline = 0.0
        slot.retiring = False

    def _lost(self, slot: _Slot, exc: BaseException) -> None:
        """The connection ended: every message on it gets its result."""
        eng = slot.eng
        results = eng.connection_lost(exc) if eng is not None else []
        self._close_slot(slot)
        self._results(slot, results)
        # A job the engine never reported (cannot happen by its rules) is not lost either.
        for job in list(slot.jobs.values()):  # pragma: no cover - defensive
            if not job.result.status:
                job.result.status, job.result.exception = NOT_ATTEMPTED, exc
            self._finished_attempt(job, _monotonic())
        slot.jobs.clear()

    # -- bytes -------------------------------------------------------------------------------

    def _flush(self, slot: _Slot, now: float) -> None:
        eng = slot.eng
        data = eng.bytes_to_send()
        if data:
            unwritten = slot.unwritten
            if unwritten:
                self._stamp_sent(unwritten)
            self._write(slot, data, now)
            if slot.sock is None:
                return
        if slot.state == _READY:
            if eng.owed:
                if not slot.deadline:
                    slot.deadline = now + (self._fixed_timeout or self._reply_timeout(eng.deadline_kind))
                    self._due(slot.deadline)
            else:
                slot.deadline = 0.0
                if eng.broken is not None:
                    self._lost(slot, eng.broken)

    @staticmethod
    def _stamp_sent(unwritten: collections.deque) -> None:
        """``sent_at`` for the messages whose MAIL this write carries: one
        clock read per write, not per message.  A retried message keeps the
        time of its first attempt's write (its latency includes the retries)."""
        t = _monotonic()
        while unwritten:
            job = unwritten[0]
            result = job.result
            if result.attempts <= job.written:
                break  # still queued in the engine (DATA: waits for the 354 before it)
            unwritten.popleft()
            if result.sent_at is None:
                result.sent_at = t

    def _write(self, slot: _Slot, data: Any, now: float) -> None:
        if slot.out is not None:
            slot.out = memoryview(bytes(slot.out) + bytes(data))
            return
        try:
            n = slot.sock.send(data)
        except _WANT:
            n = 0
        except OSError as exc:
            self._lost(slot, SMTPServerDisconnected("Server not connected: %s" % exc))
            return
        if n < len(data):
            slot.out = memoryview(data)[n:]
            self._want_write(slot, True)

    def _want_write(self, slot: _Slot, on: bool) -> None:
        events = selectors.EVENT_READ | (selectors.EVENT_WRITE if on else 0)
        if events != slot.events:
            slot.events = events
            self._sel.modify(slot.sock, events, slot)

    def _on_write(self, slot: _Slot) -> None:
        out = slot.out
        if out is None:
            self._want_write(slot, False)
            return
        try:
            n = slot.sock.send(out)
        except _WANT:
            return
        except OSError as exc:
            self._lost(slot, SMTPServerDisconnected("Server not connected: %s" % exc))
            return
        if n < len(out):
            slot.out = out[n:]
        else:
            slot.out = None
            self._want_write(slot, False)
        if slot.deadline:
            slot.deadline = _monotonic() + self._reply_timeout(slot.eng.deadline_kind if slot.eng else None)

    def _on_read(self, slot: _Slot) -> bool:
        """Read once and handle what came; True when the caller should read
        again (a full buffer, or TLS bytes decrypted and waiting in the SSL
        object with the fd quiet); False once done or the connection is gone.

        The hot path (a read per round trip per connection): one clock read,
        results resolved in place, the next message given and the write
        (body + next envelope) issued here, in one call.
        """
        rsock = slot.sock
        try:
            nread = rsock.recv_into(self._view)
        except _WANT:
            return False
        except OSError as exc:
            self._lost(slot, SMTPServerDisconnected("Connection unexpectedly closed: %s" % exc))
            return False
        eng = slot.eng
        if slot.state == _PROBING:
            return (self._probe_reply(slot, nread, _monotonic())
                    and (nread >= _RECV_SIZE or (slot.tls and rsock.pending())))
        if not eng.owed and eng.idle:
            # Nobody asked: the server spoke on its own (a 421 before its idle
            # timeout) or hung up.  Either way the connection is not reused.
            self.stats["unasked"] += 1
            self._close_slot(slot)
            return False
        if not nread:
            self._lost(slot, SMTPServerDisconnected("Connection unexpectedly closed"))
            return False
        results = eng.receive(self._view[:nread])
        now = _monotonic()
        if results:
            jobs = slot.jobs
            delivered = 0
            for result in results:
                job = jobs.pop(id(result), None)
                if job is None:  # pragma: no cover - defensive
                    continue
                col = job.future
                if result.status is DELIVERED and type(col) is _Collector:
                    # The common case, as _finished_attempt + _resolve would do it.
                    delivered += 1
                    result.done_at = now
                    job.item = None
                    col.results.append(result)
                    if col.waiting and col not in self._notify:
                        col.since = now
                        self._notify.add(col)
                else:
                    self._finished_attempt(job, now)
            if delivered:
                self._unfinished -= delivered
                self.stats["delivered"] += delivered
        if eng.broken is not None:
            self._lost(slot, eng.broken)
            return False
        # Give, write, and give again: with DATA the next envelope waits for
        # its 354, so the message after it is handed over now, ready for the
        # next round trip; with BDAT the window's room goes in this write.
        if self._pending and not slot.retiring:
            room = eng.room()
            if room > 0:
                self._fill(slot, now, room)  # written just below
                if self._rate_stopped:
                    self._dirty = True
            if slot.sock is None or slot.state != _READY:
                return slot.sock is not None and (nread >= _RECV_SIZE or (slot.tls and rsock.pending()))
        data = eng.bytes_to_send()
        if data:
            unwritten = slot.unwritten
            if unwritten:
                # _stamp_sent, written out (once per message).
                t = _monotonic()
                while unwritten:
                    job = unwritten[0]
                    result = job.result
                    if result.attempts <= job.written:
                        break
                    unwritten.popleft()
                    if result.sent_at is None:
                        result.sent_at = t
            if slot.out is None:
                # _write's common case, written out: the whole write is taken.
                try:
                    sent = rsock.send(data)
                except _WANT:
                    sent = 0
                except OSError as exc:
                    self._lost(slot, SMTPServerDisconnected("Server not connected: %s" % exc))
                    return False
                if sent < len(data):
                    slot.out = memoryview(data)[sent:]
                    self._want_write(slot, True)
            else:
                self._write(slot, data, now)
                if slot.sock is None:
                    return False
        room = eng.room() if self._pending and not slot.retiring else 0
        if room > 0:
            given = self._fill(slot, now, room)
            if slot.sock is None or slot.state != _READY:
                return slot.sock is not None and (nread >= _RECV_SIZE or (slot.tls and rsock.pending()))
            if self._rate_stopped:
                self._dirty = True
            if given:
                data = eng.bytes_to_send()
                if data:
                    self._stamp_sent(slot.unwritten)
                    self._write(slot, data, now)
                    if slot.sock is None:
                        return False
        slot.idle_since = now  # the last activity: a connection left idle has been so since
        if eng.owed:
            had = slot.deadline
            slot.deadline = now + (self._fixed_timeout or self._reply_timeout(eng.deadline_kind))
            if not had:
                self._due(slot.deadline)
            return (nread >= _RECV_SIZE or (slot.tls and rsock.pending()))
        slot.deadline = 0.0
        if slot.retiring and eng.idle:
            self._close_slot(slot, polite=True)
            return False
        return (nread >= _RECV_SIZE or (slot.tls and rsock.pending()))

    def _probe_reply(self, slot: _Slot, n: int, now: float) -> bool:
        if not n:
            self._close_slot(slot)
            return False
        try:
            replies = slot.eng.parser.feed(self._view[:n])
        except Exception:
            self._close_slot(slot)
            return False
        if not replies:
            return True
        if len(replies) == 1 and replies[0][0] == 250 and not slot.eng.parser.in_reply:
            slot.state = _READY
            slot.deadline = 0.0
            slot.idle_since = now
            if self._pending:
                self._dispatch(now)
            return slot.sock is not None
        self._close_slot(slot)
        return False

    # -- results -----------------------------------------------------------------------------

    def _results(self, slot: _Slot, results: list) -> None:
        now = _monotonic()
        jobs = slot.jobs
        for result in results:
            job = jobs.pop(id(result), None)
            if job is None:  # pragma: no cover - defensive
                continue
            self._finished_attempt(job, now)

    def _finished_attempt(self, job: _Job, now: float) -> None:
        result = job.result
        status = result.status
        if status is DELIVERED or status is PARTIAL or status is FAILED:
            self._resolve(job, now)
            return
        if status is DEFERRED or status is NOT_ATTEMPTED or status is UNCERTAIN or status in (
                "deferred", "not_attempted", "uncertain"):
            if self._cancel or (type(job.future) is _Collector and job.future.closed):
                self._resolve(job, now)
                return
            retry = job.retry.increment(status, result.reply, elapsed=now - job.started)
            job.retry = retry
            if not retry.exhausted:
                self.stats["retries"] += 1
                when = now + retry.delay(self._rng)
                heapq.heappush(self._timers, (when, next(self._seq), job))
                return
        self._resolve(job, now)

    def _resolve(self, job: _Job, now: Optional[float] = None) -> None:
        self._unfinished -= 1
        result = job.result
        st = result.status
        self.stats[_STAT_KEY.get(st, st)] += 1
        if now is None:
            now = _monotonic()
        result.done_at = now
        job.item = None  # the payload is not kept by a finished message
        fut = job.future
        if type(fut) is _Collector:
            fut.results.append(result)
            if fut.waiting and fut not in self._notify:
                fut.since = now
                self._notify.add(fut)
        else:
            fut.set_result(result)


def _cancel(fut: Future) -> bool:
    """Cancel a Future not yet running, and tell its waiters (as an executor does)."""
    if not fut.cancel():
        return False
    try:
        fut.set_running_or_notify_cancel()
    except RuntimeError:  # waiters were told already
        pass
    return True


def _outcome(fut: Future) -> SendResult:
    index = fut._fsl_index  # type: ignore[attr-defined]
    if fut.cancelled():
        exc = PoolClosed("the pool was closed before this message was sent")
        return SendResult(index, status=NOT_ATTEMPTED, exception=exc)
    exc = fut.exception()
    if exc is not None:  # pragma: no cover - only after an internal error
        return SendResult(index, status=NOT_ATTEMPTED, exception=exc)
    return fut.result()


def _as_sendmail(result: SendResult) -> dict[str, tuple[int, bytes]]:
    status = result.status
    if status is DELIVERED:
        return {}
    if status is PARTIAL:
        return result.refused
    exc = result.exception
    assert exc is not None, result
    raise exc

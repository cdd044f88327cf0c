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
  then made non-blocking and handed to the loop.  Connections open lazily (as
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
import os
import queue
import random
import selectors
import socket
import threading
import time
from concurrent.futures import Future
from typing import Any, Callable, Iterable, Iterator, Optional, Sequence

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
from .batch import _CLIENT_ERRORS, submit_item
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

__all__ = ["SMTPPool", "PoolClosed"]

_monotonic = time.monotonic
_RECV_SIZE = 65536
if _ssl is not None:
    _WANT = (BlockingIOError, InterruptedError, _ssl.SSLWantReadError, _ssl.SSLWantWriteError)
else:  # pragma: no cover
    _WANT = (BlockingIOError, InterruptedError)

# Connection (slot) states.
_CLOSED, _CONNECTING, _READY, _PROBING = range(4)


class PoolClosed(RuntimeError):
    """The pool was closed: it takes no more messages."""


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


class _Slot:
    """One of the pool's connections."""

    __slots__ = ("state", "conn", "sock", "eng", "out", "jobs", "deadline", "opened",
                 "idle_since", "sent", "retiring", "registered", "events", "gen", "unwritten")

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


#: Messages ``send_many`` hands to the I/O thread at a time.
_BATCH = 64


class _Collector:
    """Where the I/O thread puts one ``send_many`` call's results (instead of a
    Future per message); the caller is woken once per loop turn, not per result."""

    __slots__ = ("results", "waiting", "event", "pool")

    def __init__(self, pool: "SMTPPool") -> None:
        self.results: collections.deque = collections.deque()
        self.waiting = False
        self.event = threading.Event()
        self.pool = pool

    def set_running_or_notify_cancel(self) -> bool:
        return True

    def cancel(self) -> bool:
        return False

    def done(self) -> bool:
        return False

    def set_result(self, result: SendResult) -> None:
        self.results.append(result)
        if self.waiting:
            self.pool._notify.add(self)

    def set_exception(self, exc: BaseException) -> None:  # pragma: no cover - internal error
        self.set_result(SendResult(None, status=NOT_ATTEMPTED, exception=exc))


class _Recorder:
    """Stands in for an engine so ``batch.submit_item`` can unpack an item (and
    flatten an ``email`` Message) in the caller's thread, not the I/O thread."""

    __slots__ = ("args",)

    def submit(self, tag: Any, from_addr: str, to_addrs: Any, msg: Any, mail_options: Any,
               rcpt_options: Any, *, result: SendResult) -> None:
        self.args = (from_addr, to_addrs, msg, tuple(mail_options), tuple(rcpt_options))


class SMTPPool:
    """A pool of ``size`` connections to one SMTP or LMTP server.

    Args:
        host, port: the server (port 0: 25, 465 with ``ssl``, 2003 with
            ``lmtp``); with ``lmtp`` a host starting with ``/`` is a Unix socket.
        size: most connections open at once.
        lmtp: speak LMTP (LHLO, one reply per recipient after the data).
        ssl: implicit TLS (``SMTP_SSL``); ``starttls``: STARTTLS after EHLO.
        context: the ``ssl.SSLContext`` for either (default: a verifying one).
        login: ``(user, password)`` to AUTH with on every connection.
        local_hostname, source_address: as for ``SMTP``.
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
        host: str = "localhost",
        port: int = 0,
        *,
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
    ) -> None:
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
        self.host = host
        self.port = port or (LMTP_PORT if lmtp else SMTP_SSL_PORT if ssl else SMTP_PORT)
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
        self.stats = collections.Counter()

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
        """A job for ``item``, or None when the client refused it (``fut`` is then resolved)."""
        result = SendResult(index)
        if not (type(item) is tuple and len(item) == 3 and isinstance(item[2], (str, bytes))):
            # A Message (or an odd item): unpack and flatten it here, in the caller's thread.
            rec = _Recorder()
            try:
                submit_item(rec, item, result, mail_options, rcpt_options)
            except _CLIENT_ERRORS as exc:
                exc.__traceback__ = None
                result.status, result.exception = FAILED, exc
                fut.set_running_or_notify_cancel()
                fut.set_result(result)
                return None
            from_addr, to_addrs, msg, mail_options, rcpt_options = rec.args
            item = (from_addr, to_addrs, msg)
        return _Job(item, result, fut, retry if retry is not None else self.retry, mail_options, rcpt_options)

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
    ) -> Iterator[SendResult]:
        """Send every message; yield one ``SendResult`` each, as they complete.

        ``messages`` are as for ``SMTP.send_many`` and are pulled lazily: at
        most ``max_in_flight`` are unfinished at once, so a generator of a
        million messages keeps memory flat.  ``result.index`` is the
        message's position in ``messages``.  Safe to run from several
        threads at once (each call its own iterator).  Stopping early leaves
        the submitted messages to finish; their results are dropped.
        """
        limit = max_in_flight or self.max_in_flight
        if limit < 1:
            raise ValueError("max_in_flight must be at least 1")
        if self._closed:
            raise PoolClosed("the pool is closed")
        return self._send_many(messages, limit, tuple(mail_options), tuple(rcpt_options), retry)

    def _send_many(self, messages: Iterable[Any], limit: int, mail_options: tuple, rcpt_options: tuple,
                   retry: Optional[Retry]) -> Iterator[SendResult]:
        # Messages go to the I/O thread in batches and results come back in
        # batches: one hand-off between the threads per batch, not per message.
        col = _Collector(self)
        results = col.results
        source = enumerate(messages)
        outstanding = 0
        exhausted = False
        while True:
            if not exhausted and outstanding < limit:
                batch: list = []
                room = min(limit - outstanding, _BATCH)
                for index, item in source:
                    if self._closed:
                        results.append(SendResult(index, status=NOT_ATTEMPTED,
                                                  exception=PoolClosed("the pool is closed")))
                        outstanding += 1
                        continue
                    job = self._make_job(item, index, retry, mail_options, rcpt_options, col)
                    outstanding += 1
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
                yield results.popleft()
            if not outstanding:
                if exhausted:
                    return
                continue
            if exhausted or outstanding >= limit:
                col.waiting = True
                if not results:
                    col.event.wait(1.0)
                col.event.clear()
                col.waiting = False

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
                if self._notify:
                    self._flush_notify()
                now = _monotonic()
                events = sel.select(self._select_timeout(now))
                for key, mask in events:
                    slot = key.data
                    if slot is None:
                        self._drain_wake()
                        continue
                    if mask & selectors.EVENT_WRITE and slot.sock is not None:
                        self._on_write(slot)
                    if mask & selectors.EVENT_READ and slot.sock is not None:
                        self._on_read(slot)
                now = _monotonic()
                self._take_handshakes(now)
                self._take_new()
                self._check_timers(now)
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

    def _flush_notify(self) -> None:
        notify = self._notify
        while notify:
            notify.pop().event.set()

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
        if not _cancel(job.future):  # a retry, or a send_many message
            if not job.result.status:
                job.result.status, job.result.exception = NOT_ATTEMPTED, exc
            job.future.set_result(job.result)

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
        when = None
        if self._timers:
            when = self._timers[0][0]
        for slot in self._slots:
            st = slot.state
            if st == _CLOSED or st == _CONNECTING:
                continue
            t = None
            if slot.deadline:
                t = slot.deadline
            elif slot.eng is not None and slot.eng.idle:
                if self.idle_timeout is not None:
                    t = slot.idle_since + self.idle_timeout
            if t is not None and (when is None or t < when):
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
        pending = self._pending
        while want > 0:
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
            want -= len(batch)

    def _check_timers(self, now: float) -> None:
        timers = self._timers
        while timers and timers[0][0] <= now:
            _, _, job = heapq.heappop(timers)
            self._pending.appendleft(job)  # retries go first
        for slot in self._slots:
            st = slot.state
            if st == _CLOSED or st == _CONNECTING:
                continue
            if slot.deadline and slot.deadline <= now:
                self.stats["reply_timeouts"] += 1
                self._lost(slot, SMTPReplyTimeout("Connection unexpectedly closed: no reply within the timeout"))
            elif st == _READY and slot.eng.idle:
                if (slot.retiring
                        or (self.idle_timeout is not None and now - slot.idle_since >= self.idle_timeout)
                        or (self.max_connection_age is not None and now - slot.opened >= self.max_connection_age)):
                    self._close_slot(slot, polite=True)
                elif self._closed and not self._pending and self._queue.empty():
                    self._close_slot(slot, polite=True)

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
        pending = self._pending
        if not pending:
            return
        rate_limited = False
        for slot in self._slots:
            if not pending:
                break
            if slot.state != _READY or slot.retiring:
                continue
            eng = slot.eng
            if eng.idle:
                if self.noop_after is not None and now - slot.idle_since >= self.noop_after:
                    self._probe(slot, now)
                    continue
            wrote = False
            while pending and eng.room() > 0 and not slot.retiring:
                if not self._take_tokens(now):
                    rate_limited = True
                    break
                job = pending.popleft()
                if not self._give(slot, job, now):
                    if self.rate is not None:
                        self._tokens += 1  # nothing was handed over
                    continue
                wrote = True
            if wrote:
                self._flush(slot, now)
            if rate_limited:
                return
        if pending and not rate_limited:
            self._open_more(now)

    def _give(self, slot: _Slot, job: _Job, now: float) -> bool:
        """Hand one message to a connection's engine; False if it was not taken."""
        fut = job.future
        if not job.started:
            if not fut.set_running_or_notify_cancel():
                self._unfinished -= 1  # cancelled by the caller
                return False
            job.started = now
        result = job.result
        result.status = ""
        result.data_replies = []
        try:
            submit_item(slot.eng, job.item, result, job.mail_options, job.rcpt_options)
        except _CLIENT_ERRORS as exc:
            exc.__traceback__ = None
            result.status, result.exception = FAILED, exc
            self._resolve(job)
            return False
        slot.jobs[id(result)] = job
        job.written = result.attempts  # the engine counts an attempt as it writes the MAIL
        slot.unwritten.append(job)
        slot.sent += 1
        self.stats["handed"] += 1
        limit = self.max_messages_per_connection
        if limit is not None and slot.sent >= limit:
            slot.retiring = True
        elif self.max_connection_age is not None and now - slot.opened >= self.max_connection_age:
            slot.retiring = True
        return True

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

    def _connect(self) -> Any:
        timeout = self.timeout if self.timeout is not None else socket._GLOBAL_DEFAULT_TIMEOUT  # type: ignore[attr-defined]
        if self.lmtp:
            conn: Any = LMTP(local_hostname=self.local_hostname, source_address=self.source_address, timeout=timeout)
        elif self.ssl:
            conn = SMTP_SSL(local_hostname=self.local_hostname, timeout=timeout,
                            source_address=self.source_address, context=self.context)
        else:
            conn = SMTP(local_hostname=self.local_hostname, timeout=timeout, source_address=self.source_address)
        try:
            code, msg = conn.connect(self.host, self.port)
            if code != 220:
                from .errors import SMTPConnectError

                raise SMTPConnectError(code, msg)
            conn.ehlo_or_helo_if_needed()
            if self.starttls:
                conn.starttls(context=self.context)
                conn.ehlo()
            if self.login is not None:
                conn.login(*self.login)
            conn._check_in_step()  # a reply nobody asked for: do not use it
        except BaseException:
            conn.close()
            raise
        return conn

    def _take_handshakes(self, now: float) -> None:
        hs = self._handshakes
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
            slot.eng = conn._engine(self.window)
            slot.out = None
            slot.deadline = 0.0
            slot.opened = slot.idle_since = now
            slot.sent = 0
            slot.retiring = False
            slot.state = _READY
            slot.events = selectors.EVENT_READ
            self._sel.register(sock, selectors.EVENT_READ, slot)
            slot.registered = True

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
                if not job.future.set_running_or_notify_cancel():
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
        self._write(slot, b"noop\r\n", now)

    def _reply_timeout(self, kind: Optional[str]) -> float:
        if self.timeout is not None:
            return self.timeout
        return RFC5321_TIMEOUTS.get(kind or "mail", 300.0)

    def _close_slot(self, slot: _Slot, polite: bool = False) -> None:
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
        data = slot.eng.bytes_to_send()
        if data:
            unwritten = slot.unwritten
            if unwritten:
                self._stamp_sent(unwritten)
            self._write(slot, data, now)
        if slot.sock is not None and slot.state == _READY:
            eng = slot.eng
            if eng.owed:
                if not slot.deadline:
                    slot.deadline = now + self._reply_timeout(eng.deadline_kind)
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

    def _on_read(self, slot: _Slot) -> None:
        sock = slot.sock
        view = self._view
        while True:
            try:
                n = sock.recv_into(view)
            except _WANT:
                return
            except OSError as exc:
                self._lost(slot, SMTPServerDisconnected("Connection unexpectedly closed: %s" % exc))
                return
            if not self._received(slot, n):
                return
            # TLS: decrypted bytes may wait in the SSL object with the fd quiet.
            pending = getattr(sock, "pending", None)
            if pending is None or not pending():
                if n < len(view):
                    return

    def _received(self, slot: _Slot, n: int) -> bool:
        """Handle ``n`` bytes in the buffer; False once the connection is gone."""
        now = _monotonic()
        eng = slot.eng
        if slot.state == _PROBING:
            return self._probe_reply(slot, n, now)
        if not eng.owed and eng.idle:
            # Nobody asked: the server spoke on its own (a 421 before its idle
            # timeout) or hung up.  Either way the connection is not reused.
            self.stats["unasked"] += 1
            self._close_slot(slot)
            return False
        if not n:
            self._lost(slot, SMTPServerDisconnected("Connection unexpectedly closed"))
            return False
        results = eng.receive(self._view[:n])
        if eng.owed:
            slot.deadline = now + self._reply_timeout(eng.deadline_kind)
        else:
            slot.deadline = 0.0
        if results:
            self._results(slot, results)
        if eng.broken is not None:
            self._lost(slot, eng.broken)
            return False
        if slot.retiring and eng.idle:
            self._close_slot(slot, polite=True)
            return False
        if eng.room() > 0 and self._pending:
            self._dispatch(now)
        if slot.sock is not None:
            self._flush(slot, now)
        if slot.sock is not None and eng.idle:
            slot.idle_since = now
        return slot.sock is not None

    def _probe_reply(self, slot: _Slot, n: int, now: float) -> bool:
        if not n:
            self._close_slot(slot)
            return False
        try:
            replies = slot.conn._parser.feed(self._view[:n])
        except Exception:
            self._close_slot(slot)
            return False
        if not replies:
            return True
        if len(replies) == 1 and replies[0][0] == 250 and not slot.conn._parser.in_reply:
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
            if self._cancel:
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
        self.stats[str(result.status)] += 1
        result.done_at = now if now is not None else _monotonic()
        job.item = None  # the payload is not kept by a finished message
        job.future.set_result(result)


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

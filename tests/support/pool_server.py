"""A small threaded SMTP server that answers by policy and counts what it accepted.

For the pool's fault tests: any number of connections (a pool reconnects),
PIPELINING + 8BITMIME with DATA, and a ``policy(event)`` hook that decides,
per command, what to do.  The server's own ledger (``accepted``: Subject ->
how many times a body was answered 250) proves that nothing was lost or
delivered twice::

    def policy(ev):                      # ev: Event
        if ev.command == "." and ev.subject == "m3" and ev.attempt == 1:
            return "451 4.3.0 try again"
        return None                      # the normal reply

    with PoolServer(policy) as srv:      # srv.host, srv.port
        ...
    srv.accepted["m3"] == 1

A policy returns None (normal reply), a reply line (str, no CRLF),
``HANGUP`` (close without replying) or ``REPLY_THEN_HANGUP`` (the normal
reply, then close).  A 421 reply is followed by a close.  ``greeting`` and
``idle_421`` make a connection that says 421 by itself after being idle.
"""

from __future__ import annotations

import collections
import socket
import threading
from dataclasses import dataclass
from typing import Callable, Optional

__all__ = ["PoolServer", "Event", "HANGUP", "REPLY_THEN_HANGUP"]

HANGUP = "<hangup>"
REPLY_THEN_HANGUP = "<reply then hangup>"


@dataclass
class Event:
    connection: int  # accept order, from 0
    command: str  # "MAIL", "RCPT", "DATA", ".", "RSET", "NOOP", ...
    line: str  # the command line as received (no CRLF); the Subject for "."
    subject: Optional[str] = None  # for ".": the message's Subject
    attempt: int = 0  # for ".": how many bodies with this Subject arrived, this one included
    messages: int = 0  # bodies answered 250 on this connection so far


class PoolServer:
    def __init__(self, policy: Optional[Callable[[Event], Optional[str]]] = None, *,
                 extensions=("PIPELINING", "8BITMIME", "ENHANCEDSTATUSCODES"),
                 idle_421: Optional[float] = None, timeout: float = 10.0) -> None:
        self.policy = policy or (lambda ev: None)
        self.extensions = tuple(extensions)
        self.idle_421 = idle_421  # seconds idle after which a connection says 421 and closes
        self.timeout = timeout
        self.lock = threading.Lock()
        self.accepted: collections.Counter = collections.Counter()  # Subject -> 250s after a body
        self.bodies: collections.Counter = collections.Counter()  # Subject -> bodies received
        self.connections = 0
        self.commands: list = []  # (connection, line)
        self.errors: list = []
        self._threads: list = []
        self._socks: list = []
        self._stop = False

    # -- lifecycle --------------------------------------------------------------------
    def start(self) -> "PoolServer":
        ls = socket.socket()
        ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        ls.bind(("127.0.0.1", 0))
        ls.listen(64)
        self.listener = ls
        self.host, self.port = ls.getsockname()
        t = threading.Thread(target=self._accept, daemon=True, name="pool-server-accept")
        t.start()
        self._accept_thread = t
        return self

    def stop(self) -> None:
        self._stop = True
        try:
            self.listener.close()
        except OSError:
            pass
        for s in list(self._socks):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        for t in self._threads:
            t.join(5)

    def __enter__(self) -> "PoolServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def _accept(self) -> None:
        while not self._stop:
            try:
                sock, _ = self.listener.accept()
            except OSError:
                return
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # no 40 ms Nagle stalls
            with self.lock:
                index = self.connections
                self.connections += 1
            self._socks.append(sock)
            t = threading.Thread(target=self._serve, args=(sock, index), daemon=True)
            self._threads.append(t)
            t.start()

    # -- one connection ---------------------------------------------------------------------
    def _serve(self, sock: socket.socket, index: int) -> None:
        f = sock.makefile("rb")
        try:
            self._session(sock, f, index)
        except (OSError, ValueError):
            pass
        except BaseException as exc:  # pragma: no cover - a test bug
            self.errors.append(exc)
        finally:
            try:
                f.close()
                sock.close()
            except OSError:
                pass

    def _session(self, sock, f, index: int) -> None:
        def send(text: str) -> None:
            sock.sendall(text.encode() + b"\r\n")

        send("220 pool.test ESMTP")
        in_mail = False
        rcpts = 0
        messages = 0
        while True:
            sock.settimeout(self.idle_421 if (self.idle_421 and not in_mail) else self.timeout)
            try:
                raw = f.readline()
            except socket.timeout:
                send("421 4.4.2 pool.test idle timeout")
                return
            if not raw:
                return
            line = raw.rstrip(b"\r\n").decode("utf-8", "replace")
            with self.lock:
                self.commands.append((index, line))
            verb = line.split(" ", 1)[0].upper()
            ev = Event(index, verb, line, messages=messages)
            if verb in ("EHLO", "LHLO"):
                normal = "\r\n".join(("250-pool.test", *("250-" + e for e in self.extensions[:-1]),
                                      "250 " + self.extensions[-1])) if self.extensions else "250 pool.test"
            elif verb == "HELO":
                normal = "250 pool.test"
            elif verb == "MAIL":
                normal = "503 5.5.1 nested MAIL" if in_mail else "250 2.1.0 ok"
            elif verb == "RCPT":
                normal = "250 2.1.5 ok" if in_mail else "503 5.5.1 need MAIL"
            elif verb == "DATA":
                normal = "354 go" if (in_mail and rcpts) else "554 5.5.1 no valid recipients"
            elif verb == "RSET":
                normal = "250 2.0.0 ok"
            elif verb == "NOOP":
                normal = "250 2.0.0 ok"
            elif verb == "QUIT":
                send("221 2.0.0 bye")
                return
            else:
                normal = "502 5.5.2 what"
            if verb == "DATA" and normal.startswith("354"):
                action = self.policy(ev)
                if action == HANGUP:
                    return
                send(action or normal)
                if action and not action.startswith("354"):
                    if action.startswith("421"):
                        return
                    continue
                body = []
                while True:
                    b = f.readline()
                    if not b:
                        return
                    if b == b".\r\n":
                        break
                    body.append(b)
                subject = None
                for b in body:
                    if b.lower().startswith(b"subject: "):
                        subject = b[9:].strip().decode()
                        break
                    if b == b"\r\n":
                        break
                with self.lock:
                    self.bodies[subject] += 1
                    attempt = self.bodies[subject]
                dot = Event(index, ".", line, subject=subject, attempt=attempt, messages=messages)
                action = self.policy(dot)
                in_mail = False
                rcpts = 0
                if action == HANGUP:
                    return
                reply = action if action not in (None, REPLY_THEN_HANGUP) else "250 2.0.0 queued"
                if reply.startswith("250"):
                    with self.lock:
                        self.accepted[subject] += 1
                    messages += 1
                send(reply)
                if action == REPLY_THEN_HANGUP or reply.startswith("421"):
                    return
                continue
            action = self.policy(ev)
            if action == HANGUP:
                return
            reply = normal if action in (None, REPLY_THEN_HANGUP) else action
            send(reply)
            if reply.startswith("421") or action == REPLY_THEN_HANGUP:
                return
            code = reply[:3]
            if verb == "MAIL" and code == "250":
                in_mail, rcpts = True, 0
            elif verb == "RCPT" and code in ("250", "251"):
                rcpts += 1
            elif verb == "RSET":
                in_mail, rcpts = False, 0

"""A minimal SMTP sink that offers CHUNKING, for benchmarking BDAT (RFC 3030).

Postfix's ``smtp-sink`` has no BDAT, and a real Postfix ``smtpd`` writes every
message to its queue, so neither shows what a client's BDAT path costs.  This
sink accepts everything and keeps nothing; like Postfix it answers a pipelined
group with one write (RFC 2920 §3.2: replies may be sent as the input runs dry).
It is a benchmark peer, not a test oracle: the tests use real servers.

    python bench/bdat_sink.py [--port 0] [--no-chunking]   # prints "PORT n", then serves

Counts accepted messages and prints ``messages N`` on SIGTERM.
"""

from __future__ import annotations

import argparse
import os
import selectors
import shutil
import signal
import socket
import subprocess
import sys
from typing import Optional

MAX_LINE = 2048


class Session:
    __slots__ = ("sock", "inbuf", "out", "skip", "last", "in_data", "has_mail", "rcpts")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.inbuf = b""
        self.out: list = [b"220 bdat-sink ESMTP\r\n"]
        self.skip = 0  # BDAT octets still to discard
        self.last = False  # the chunk being discarded is the LAST one
        self.in_data = False  # between 354 and the end of data
        self.has_mail = False
        self.rcpts = 0


class Sink:
    def __init__(self, port: int, chunking: bool) -> None:
        self.messages = 0
        ext = [b"bdat-sink", b"PIPELINING", b"8BITMIME", b"ENHANCEDSTATUSCODES"]
        if chunking:
            ext += [b"CHUNKING"]
        self.ehlo = b"".join(b"250%s%s\r\n" % (b" " if i == len(ext) - 1 else b"-", e) for i, e in enumerate(ext))
        self.lsock = socket.create_server(("127.0.0.1", port), backlog=64)
        self.lsock.setblocking(False)
        self.sel = selectors.DefaultSelector()
        self.sel.register(self.lsock, selectors.EVENT_READ, None)

    def serve(self) -> None:
        while True:
            for key, _ in self.sel.select():
                if key.data is None:
                    conn, _addr = self.lsock.accept()
                    conn.setblocking(True)
                    s = Session(conn)
                    self.sel.register(conn, selectors.EVENT_READ, s)
                    self.flush(s)
                else:
                    self.read(key.data)

    def flush(self, s: Session) -> None:
        if s.out:
            s.sock.sendall(b"".join(s.out))
            s.out.clear()

    def close(self, s: Session) -> None:
        self.sel.unregister(s.sock)
        s.sock.close()

    def read(self, s: Session) -> None:
        try:
            chunk = s.sock.recv(262144)
        except OSError:
            chunk = b""
        if not chunk:
            self.close(s)
            return
        buf = s.inbuf + chunk
        pos = 0
        n = len(buf)
        while pos < n:
            if s.skip:  # BDAT payload: length-delimited, discarded (RFC 3030 §2)
                take = min(s.skip, n - pos)
                s.skip -= take
                pos += take
                if not s.skip:
                    self.chunk_done(s)
                continue
            if s.in_data:  # DATA payload up to CRLF.CRLF (RFC 5321 §4.1.1.4)
                end = buf.find(b"\r\n.\r\n", pos - 2 if pos >= 2 else pos)
                if end < 0:
                    pos = max(pos, n - 4)
                    break
                pos = end + 5
                s.in_data = False
                self.accept(s)
                continue
            eol = buf.find(b"\r\n", pos)
            if eol < 0:
                if n - pos > MAX_LINE:
                    s.out.append(b"500 5.5.2 line too long\r\n")
                    self.flush(s)
                    self.close(s)
                    return
                break
            line = buf[pos:eol]
            pos = eol + 2
            if not self.command(s, line):
                self.flush(s)
                self.close(s)
                return
        s.inbuf = buf[pos:]
        self.flush(s)  # the input ran dry: one write for the whole group

    def accept(self, s: Session) -> None:
        self.messages += 1
        s.has_mail, s.rcpts = False, 0
        s.out.append(b"250 2.0.0 Ok: queued\r\n")

    def chunk_done(self, s: Session) -> None:
        if not (s.has_mail and s.rcpts):
            s.out.append(b"503 5.5.1 no valid recipients\r\n")
            s.has_mail, s.rcpts = False, 0
        elif s.last:
            self.accept(s)
        else:
            s.out.append(b"250 2.0.0 Ok: chunk\r\n")

    def command(self, s: Session, line: bytes) -> bool:
        verb = line[:4].upper()
        if verb == b"MAIL":
            s.has_mail, s.rcpts = True, 0
            s.out.append(b"250 2.1.0 Ok\r\n")
        elif verb == b"RCPT":
            if s.has_mail:
                s.rcpts += 1
                s.out.append(b"250 2.1.5 Ok\r\n")
            else:
                s.out.append(b"503 5.5.1 need MAIL\r\n")
        elif verb == b"BDAT":
            parts = line.split()
            try:
                size = int(parts[1])
            except (IndexError, ValueError):
                s.out.append(b"501 5.5.4 BDAT size\r\n")
                return True
            s.last = len(parts) > 2 and parts[2].upper() == b"LAST"
            s.skip = size
            if not size:
                self.chunk_done(s)
        elif verb == b"DATA":
            if s.has_mail and s.rcpts:
                s.in_data = True
                s.out.append(b"354 End data with <CR><LF>.<CR><LF>\r\n")
            else:
                s.out.append(b"503 5.5.1 no valid recipients\r\n")
        elif verb in (b"EHLO", b"LHLO"):
            s.has_mail, s.rcpts = False, 0
            s.out.append(self.ehlo)
        elif verb == b"HELO":
            s.out.append(b"250 bdat-sink\r\n")
        elif verb in (b"RSET", b"NOOP"):
            if verb == b"RSET":
                s.has_mail, s.rcpts = False, 0
            s.out.append(b"250 2.0.0 Ok\r\n")
        elif verb == b"QUIT":
            s.out.append(b"221 2.0.0 Bye\r\n")
            return False
        else:
            s.out.append(b"502 5.5.2 command not recognized\r\n")
        return True


class PinnedBdatSink:
    """This sink in a child process pinned to ``cpu`` (taskset), on a free port."""

    def __init__(self, cpu: int = 0, chunking: bool = True) -> None:
        self.cpu = cpu
        self.chunking = chunking
        self.host = "127.0.0.1"
        self.port: Optional[int] = None
        self.proc: Optional[subprocess.Popen] = None
        self.messages: Optional[int] = None

    def __enter__(self) -> "PinnedBdatSink":
        argv = [sys.executable, os.path.abspath(__file__)] + ([] if self.chunking else ["--no-chunking"])
        taskset = shutil.which("taskset")
        if taskset:
            argv = [taskset, "-c", str(self.cpu)] + argv
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        line = self.proc.stdout.readline().decode()  # type: ignore[union-attr]
        if not line.startswith("PORT "):
            self.proc.kill()
            raise RuntimeError("bdat_sink did not start: " + line + self.proc.stderr.read().decode())  # type: ignore[union-attr]
        self.port = int(line.split()[1])
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc is None:
            return
        self.proc.terminate()
        try:
            _out, err = self.proc.communicate(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            _out, err = self.proc.communicate()
        for line in err.decode(errors="replace").splitlines():
            if line.startswith("messages "):
                self.messages = int(line.split()[1])
        self.proc = None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--no-chunking", action="store_true")
    args = ap.parse_args()
    sink = Sink(args.port, chunking=not args.no_chunking)

    def stop(*_: object) -> None:
        print(f"messages {sink.messages}", file=sys.stderr, flush=True)
        sys.exit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    print(f"PORT {sink.lsock.getsockname()[1]}", flush=True)
    sink.serve()
    return 0


if __name__ == "__main__":
    sys.exit(main())

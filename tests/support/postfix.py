"""A private Postfix ``smtpd`` on a free loopback port, with a readable queue.

Postfix 3.7 advertises PIPELINING, SIZE, 8BITMIME, SMTPUTF8, DSN, CHUNKING
(and STARTTLS here, with the trustme localhost certificate)::

    with PostfixServer() as pf:                         # pf.host, pf.port
        with smtplib.SMTP(pf.host, pf.port) as c:
            c.sendmail("a@example.org", ["b@example.org"], msg)
        [m] = pf.pop_messages()                         # PostfixMessage
        m.sender, m.recipients, m.content               # content: bytes, LF line ends

How the test reads what the server received: every message is put on
**hold** (``smtpd_end_of_data_restrictions = static:HOLD``), so it is
queued, acknowledged with ``250 2.0.0 Ok: queued as ID`` and then never
delivered; :meth:`PostfixServer.messages` walks the hold queue and reads
each file with ``postcat -c CONF -q ID``. :func:`queue_id` takes the ID out
of a DATA/BDAT reply for :meth:`PostfixServer.message`. The content is as
Postfix stored it: dot-unstuffed, lines ending in LF, with Postfix's own
``Received:`` header first (:attr:`PostfixMessage.body_without_received`
strips it). No header rewriting (``local_header_rewrite_clients =``).

Refusals, decided by the local part (``check_*_access regexp:``):
``reject*@...`` -> 550 (sender at MAIL, recipient at RCPT),
``defer*@...`` -> 450 recipient, ``bounce*@...`` unknown user 550 at RCPT.

Setup follows notes/real-servers.md: config, queue and data directories in
a private temp dir (0755, queue owned by root, data by postfix), every
service ``chroot = n``, ``maillog_file`` plus the ``postlog`` service (no
syslog here), ``postfix start`` output to a file (it daemonizes), stop with
``postfix stop`` and wait for ``master.pid`` to go. Needs root. Two more
facts found here: ``maillog_file`` must lie under ``maillog_file_prefixes``
(else ``postfix`` exits 1 silently: it prints errors only to a tty, see
:func:`_diagnose`); a freshly written ``main.cf`` makes every Postfix
command sleep ~1.8 s (so the files are backdated); and creating the queue
subdirectories ourselves saves the ~2 s ``post-install create-missing``
spends forking. Start: ~0.35 s. The stop takes 1-2 s (master's own
shutdown); a session-scoped fixture pays it once.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from .certs import tls as _tls
from .ports import free_port, require_binary, wait_for_port

__all__ = ["POSTFIX", "PostfixServer", "PostfixMessage", "queue_id", "POSTFIX_HOSTNAME"]

POSTFIX = os.environ.get("FASTSMTPLIB_POSTFIX", "/usr/sbin/postfix")
POSTCAT = os.path.join(os.path.dirname(POSTFIX), "postcat")
POSTSUPER = os.path.join(os.path.dirname(POSTFIX), "postsuper")
POSTFIX_HOSTNAME = "postfix.test"

_QUEUED_AS = re.compile(rb"queued as ([0-9A-Za-z]+)")


def queue_id(reply: bytes | str) -> str:
    """The queue ID in a ``250 2.0.0 Ok: queued as ID`` reply."""
    if isinstance(reply, str):
        reply = reply.encode()
    m = _QUEUED_AS.search(reply)
    if not m:
        raise ValueError(f"no queue ID in {reply!r}")
    return m.group(1).decode()


@dataclass
class PostfixMessage:
    """One message in the hold queue, as ``postcat`` shows it."""

    queue_id: str
    sender: str
    recipients: list
    content: bytes  # headers + body, LF line ends, Postfix's Received: first
    raw: str  # the whole postcat output, for debugging
    attributes: list  # (name, value) of the envelope's named_attribute records,
    # e.g. envelope_id, ret_flags, notify_flags, dsn_orig_rcpt (per recipient)

    def attribute(self, name: str) -> Optional[str]:
        """The first ``named_attribute`` called ``name`` (None if absent)."""
        return next((v for k, v in self.attributes if k == name), None)

    @property
    def protocol(self) -> Optional[str]:
        """The ``with`` word of Postfix's Received header: ESMTP, ESMTPS (TLS),
        ESMTPA/ESMTPSA (AUTH), UTF8SMTP, UTF8SMTPS (SMTPUTF8)..., or LMTP..."""
        m = re.search(rb"\bwith (\S+)", self.content.split(b"\n\n", 1)[0])
        return m.group(1).decode() if m else None

    @property
    def body_without_received(self) -> bytes:
        """``content`` minus the first header if it is Postfix's ``Received:``."""
        lines = self.content.split(b"\n")
        if lines and lines[0].startswith(b"Received:"):
            i = 1
            while i < len(lines) and lines[i][:1] in (b" ", b"\t"):
                i += 1
            lines = lines[i:]
        return b"\n".join(lines)


_MAIN_CF = """\
compatibility_level = 3.6
config_directory = {conf}
queue_directory = {queue}
data_directory = {data}
mail_owner = postfix
setgid_group = postdrop
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
myhostname = {hostname}
mydomain = test
myorigin = $myhostname
mydestination =
mynetworks = 127.0.0.0/8
relay_domains =
alias_maps =
alias_database =
biff = no
maillog_file = {tmp}/maillog
maillog_file_prefixes = {tmp}
# No DNS here: do not look up the client's name (it only slows the greeting).
smtpd_peername_lookup = no
local_header_rewrite_clients =
in_flow_delay = 0
access_map_reject_code = 550
smtpd_banner = $myhostname ESMTP Postfix (fastsmtplib tests)
smtpd_relay_restrictions = permit_mynetworks, reject
# Refuse senders at MAIL, not (Postfix's default) at the first RCPT.
smtpd_delay_reject = no
smtpd_sender_restrictions = check_sender_access regexp:{conf}/sender_access
smtpd_recipient_restrictions = check_recipient_access regexp:{conf}/recipient_access, permit
# Keep every message: it is queued, acknowledged, and put on hold.
smtpd_end_of_data_restrictions = check_client_access static:HOLD
smtpd_tls_security_level = may
smtpd_tls_cert_file = {conf}/cert.pem
smtpd_tls_key_file = {conf}/key.pem
smtpd_tls_loglevel = 0
smtpd_tls_session_cache_database =
message_size_limit = 10240000
"""

_SENDER_ACCESS = """\
/^reject[^@]*@/ REJECT 5.7.1 sender rejected by test config
"""

_RECIPIENT_ACCESS = """\
/^reject[^@]*@/ REJECT 5.7.1 recipient rejected by test config
/^defer[^@]*@/ DEFER 4.7.1 recipient deferred by test config
/^bounce[^@]*@/ 550 5.1.1 unknown user (test config)
"""

# Only the services this instance needs; every one with chroot = n.
_MASTER_CF = """\
{port}    inet  n  -  n  -  -  smtpd
cleanup   unix  n  -  n  -  0  cleanup
qmgr      unix  n  -  n  300  1  qmgr
tlsmgr    unix  -  -  n  1000?  1  tlsmgr
rewrite   unix  -  -  n  -  -  trivial-rewrite
bounce    unix  -  -  n  -  0  bounce
defer     unix  -  -  n  -  0  bounce
trace     unix  -  -  n  -  0  bounce
verify    unix  -  -  n  -  1  verify
flush     unix  n  -  n  1000?  0  flush
proxymap  unix  -  -  n  -  -  proxymap
showq     unix  n  -  n  -  -  showq
error     unix  -  -  n  -  -  error
retry     unix  -  -  n  -  -  error
discard   unix  -  -  n  -  -  discard
anvil     unix  -  -  n  -  1  anvil
scache    unix  -  -  n  -  1  scache
postlog   unix-dgram  n  -  n  -  1  postlogd
"""


class PostfixServer:
    """A private Postfix instance; see the module docstring."""

    def __init__(self, *, hostname: str = POSTFIX_HOSTNAME, extra_main_cf: str = "") -> None:
        self.hostname = hostname
        self.extra_main_cf = extra_main_cf
        self.host = "127.0.0.1"
        self.port: Optional[int] = None
        self.tmp: Optional[Path] = None
        self.start_seconds: Optional[float] = None
        self.stop_seconds: Optional[float] = None

    # -- paths ----------------------------------------------------------------
    @property
    def conf(self) -> Path:
        return self.tmp / "etc"

    @property
    def queue(self) -> Path:
        return self.tmp / "spool"

    @property
    def maillog(self) -> str:
        try:
            return (self.tmp / "maillog").read_text(errors="replace")
        except OSError:
            return ""

    # -- lifecycle ------------------------------------------------------------
    def start(self) -> "PostfixServer":
        require_binary(POSTFIX, "a private Postfix smtpd")
        if os.geteuid() != 0:
            import pytest

            msg = "a private Postfix smtpd needs root"
            if os.environ.get("CI"):
                pytest.fail(msg + "; CI is set, so this is an error", pytrace=False)
            pytest.skip(msg)
        try:
            return self._start()
        except BaseException:
            self.stop()
            raise

    def _start(self) -> "PostfixServer":
        t0 = time.monotonic()
        self.tmp = Path(tempfile.mkdtemp(prefix="fsl-postfix-"))
        self.tmp.chmod(0o755)  # Postfix daemons (user postfix) must traverse it
        self.conf.mkdir()
        _make_queue_dirs(self.queue, self.tmp / "data")
        _tls().write_files(self.conf)
        (self.conf / "sender_access").write_text(_SENDER_ACCESS)
        (self.conf / "recipient_access").write_text(_RECIPIENT_ACCESS)
        for _attempt in range(5):  # the free port may be taken before master binds it
            self.port = free_port(self.host)
            (self.conf / "main.cf").write_text(
                _MAIN_CF.format(conf=self.conf, queue=self.queue, data=self.tmp / "data",
                                tmp=self.tmp, hostname=self.hostname) + self.extra_main_cf
            )
            (self.conf / "master.cf").write_text(_MASTER_CF.format(port=self.port))
            # Postfix waits (6 x 0.3 s) while main.cf looks "just written";
            # backdating the files skips that.
            past = time.time() - 60
            for f in self.conf.iterdir():
                os.utime(f, (past, past))
            out = self.tmp / "start.out"
            with open(out, "wb") as f:  # never a pipe: postfix start daemonizes
                # Returns once master is listening (postfix-script runs ``master -w``).
                rc = subprocess.call([POSTFIX, "-c", str(self.conf), "start"],
                                     stdin=subprocess.DEVNULL, stdout=f, stderr=subprocess.STDOUT)
            if rc == 0:
                wait_for_port(self.host, self.port, timeout=10)
                self.start_seconds = time.monotonic() - t0
                return self
            if "in use" not in self.maillog:
                break
        raise RuntimeError(
            f"postfix start failed ({rc}): {out.read_text()}{self.maillog}{_diagnose(self.conf)}"
        )

    def _master_pid(self) -> Optional[int]:
        try:
            return int((self.queue / "pid" / "master.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def _stop_master(self) -> None:
        pid = self._master_pid()
        with open(self.tmp / "stop.out", "wb") as f:
            subprocess.call([POSTFIX, "-c", str(self.conf), "stop"],
                            stdin=subprocess.DEVNULL, stdout=f, stderr=subprocess.STDOUT)
        if pid is None:
            return
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.01)
        os.kill(pid, 9)

    def stop(self) -> None:
        if self.tmp is None:
            return
        t0 = time.monotonic()
        if self._master_pid() is not None:
            self._stop_master()
        self.stop_seconds = time.monotonic() - t0
        shutil.rmtree(self.tmp, ignore_errors=True)
        self.tmp = None

    def __enter__(self) -> "PostfixServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- what the server received ----------------------------------------------
    def queue_ids(self) -> list:
        """IDs of the messages on hold, oldest first."""
        hold = self.queue / "hold"
        if not hold.is_dir():
            return []
        files = [p for p in hold.rglob("*") if p.is_file()]
        files.sort(key=lambda p: (p.stat().st_mtime_ns, p.name))
        return [p.name for p in files]

    def message(self, qid: str) -> PostfixMessage:
        """Read one held message with ``postcat``."""
        out = subprocess.run(
            [POSTCAT, "-c", str(self.conf), "-q", qid],
            stdin=subprocess.DEVNULL, capture_output=True, check=True,
        ).stdout
        return _parse_postcat(qid, out)

    def messages(self) -> list:
        """Every message on hold, oldest first."""
        return [self.message(q) for q in self.queue_ids()]

    def pop_messages(self) -> list:
        """Every message on hold, then delete them (for a shared server)."""
        msgs = self.messages()
        for m in msgs:
            self.delete(m.queue_id)
        return msgs

    def delete(self, qid: str = "ALL") -> None:
        """Delete one held message, or all of them."""
        subprocess.run(
            [POSTSUPER, "-c", str(self.conf), "-d", qid, "hold"],
            stdin=subprocess.DEVNULL, capture_output=True, check=True,
        )

    def __repr__(self) -> str:
        return f"<PostfixServer {self.host}:{self.port} conf={self.conf if self.tmp else None}>"


# From Debian's /etc/postfix/postfix-files. Creating them here saves the ~2 s
# that ``post-install create-missing`` (run by the first ``postfix start``)
# spends forking shell tools; ``postfix start`` then only checks them.
_QUEUE_DIRS = {
    # name: (mode, group)
    "active": (0o700, None), "bounce": (0o700, None), "corrupt": (0o700, None),
    "defer": (0o700, None), "deferred": (0o700, None), "flush": (0o700, None),
    "hold": (0o700, None), "incoming": (0o700, None), "private": (0o700, None),
    "saved": (0o700, None), "trace": (0o700, None),
    "maildrop": (0o730, "postdrop"), "public": (0o710, "postdrop"),
}


def _make_queue_dirs(queue: Path, data: Path) -> None:
    queue.mkdir(mode=0o755)  # owned by root
    (queue / "pid").mkdir(mode=0o755)  # owned by root
    for name, (mode, group) in _QUEUE_DIRS.items():
        d = queue / name
        d.mkdir()
        shutil.chown(d, "postfix", group)
        d.chmod(mode)
    data.mkdir()
    shutil.chown(data, "postfix", "postfix")
    data.chmod(0o700)


def _diagnose(conf: Path) -> str:
    """Why ``postfix check`` fails: Postfix prints a fatal error only to a tty
    (otherwise to syslog, which these machines lack), so run it on a pty."""
    import pty

    pid, fd = pty.fork()
    if pid == 0:  # child
        os.execv(POSTFIX, [POSTFIX, "-c", str(conf), "check"])
    out = b""
    while True:
        try:
            chunk = os.read(fd, 4096)
        except OSError:
            break
        if not chunk:
            break
        out += chunk
    os.close(fd)
    os.waitpid(pid, 0)
    return out.decode("utf-8", "replace")


def _parse_postcat(qid: str, out: bytes) -> PostfixMessage:
    sender, recipients, attributes = "", [], []
    content: list = []
    section = ""
    for line in out.split(b"\n"):
        if line.startswith(b"*** ") and line.endswith(b" ***"):
            section = line[4:-4].decode()
            continue
        if section.startswith("ENVELOPE RECORDS"):
            key, _, value = line.decode("utf-8", "surrogateescape").partition(": ")
            if key == "sender":
                sender = value
            elif key == "recipient":
                recipients.append(value)
            elif key == "named_attribute":
                name, _, val = value.partition("=")
                attributes.append((name, val))
        elif section.startswith("MESSAGE CONTENTS"):
            content.append(line + b"\n")  # one queue file record per line
    return PostfixMessage(
        queue_id=qid,
        sender=sender,
        recipients=recipients,
        content=b"".join(content),
        raw=out.decode("utf-8", "replace"),
        attributes=attributes,
    )

"""The campaign journal: one SQLite row per recipient, so a killed run resumes.

A journal is one SQLite database (WAL mode) with two tables::

    meta(key, value)              the campaign's parameters (CSV and template
                                  digests, From, ...) and its progress markers
    recipients(row, address, norm, state, attempts, code, reply, updated)

``row`` is the recipient's record number in the CSV (the first data record is
1); ``norm`` is the normalised address, ``UNIQUE``, so duplicate detection
costs the database's index and no memory in the sender.  A recipient's state
is one of:

``pending``    not sent yet (also: the last attempt was never handed over);
``sending``    handed to the sender; only ever seen while a run is alive;
``delivered``  the server accepted it (``code``/``reply`` are its reply);
``refused``    the server said 5xx, or the client refused the message;
``deferred``   4xx until the retries ran out: ``--resume`` tries again;
``uncertain``  the body may have gone out but no reply was recorded;
``invalid``    not a usable address, or a malformed CSV record (``reply``
               says why); never sent;
``duplicate``  the same normalised address as an earlier row (``reply``
               names it); never sent.

The durability rule (why ``sending`` exists): a batch of recipients is marked
``sending`` and *committed* before any of their messages is handed to the
pool; outcomes are committed in batches afterwards.  A run killed at any
instant therefore leaves each recipient either in a final state, or
``pending`` (provably never handed over), or ``sending``.  The next run
(``--resume``) turns ``sending`` into ``uncertain``: the body may have been
sent, or even delivered with the reply lost.  ``uncertain`` recipients are
resent only when asked (``--resend-uncertain``), since that may deliver a
second copy.  Nothing ``delivered`` is ever sent again.

Commits use ``synchronous=FULL``: a commit is on disk when ``commit()``
returns, so the rule holds across a power cut, not only a killed process.

Only one run may use a journal at a time: :class:`Journal` holds an exclusive
``fcntl`` lock on a side file (``FILE.db.lock``, next to the file a symlink
names) for its lifetime; the kernel
drops it when the process dies, so a SIGKILL leaves no stale lock.  Readers
(``fastsmtplib report``) take no lock: WAL lets them read while a run writes.
"""

from __future__ import annotations

import os
import sqlite3
import time
from typing import Iterable, Iterator, Optional, Sequence

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX
    fcntl = None  # type: ignore[assignment]

__all__ = [
    "Journal",
    "JournalError",
    "JournalLocked",
    "STATES",
    "FINAL_STATES",
    "SENDABLE_STATES",
    "open_readonly",
    "counts",
    "code_counts",
    "iter_rows",
]

#: Every state, in the order reports list them.
STATES = ("pending", "sending", "delivered", "refused", "deferred", "uncertain", "invalid", "duplicate")
#: States nothing more will be done for.
FINAL_STATES = frozenset(("delivered", "refused", "invalid", "duplicate"))
#: States a run sends (``uncertain`` only with ``resend_uncertain``).
SENDABLE_STATES = ("pending", "deferred")

SCHEMA_VERSION = "1"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta(
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS recipients(
    row      INTEGER PRIMARY KEY,
    address  TEXT NOT NULL,
    norm     TEXT UNIQUE,
    state    TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    code     INTEGER,
    reply    TEXT,
    updated  REAL
);
"""


class JournalError(Exception):
    """The journal cannot be used (not a journal, another campaign's, ...)."""


class JournalLocked(JournalError):
    """Another run holds the journal's lock."""


def _connect(path: str, readonly: bool = False) -> sqlite3.Connection:
    if readonly:
        uri = "file:%s?mode=ro" % _uri_path(path)
        conn = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)
    else:
        conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA busy_timeout=5000")
    return conn


def _uri_path(path: str) -> str:
    from urllib.parse import quote

    return quote(os.path.abspath(path))


class Journal:
    """One campaign's journal, opened for writing by one run.

    Args:
        path: the database file (created if missing).

    Raises:
        JournalLocked: another process has it open for a run.
        JournalError: the file is not a journal.

    Transactions are explicit (``begin``/``commit``); every write method
    below expects to be called inside one unless it says otherwise.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = os.fspath(path)
        self._lockfd: Optional[int] = None
        self._lock()
        try:
            try:
                self.conn = _connect(self.path)
                mode = self.conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            except sqlite3.DatabaseError as exc:
                raise JournalError("%s: not a campaign journal (%s)" % (self.path, exc)) from None
            if mode.lower() != "wal":  # pragma: no cover - e.g. a filesystem without shared memory
                raise JournalError("%s: cannot use WAL mode (got %s)" % (self.path, mode))
            try:
                self.conn.execute("PRAGMA synchronous=FULL")
                self.conn.executescript(_SCHEMA)
                version = self.get("schema")
                if version is None:
                    self.set_meta({"schema": SCHEMA_VERSION})
            except sqlite3.DatabaseError as exc:  # e.g. a read-only file or directory
                raise JournalError("%s: cannot write the journal (%s)" % (self.path, exc)) from None
            if version is not None and version != SCHEMA_VERSION:
                raise JournalError("%s: journal schema %s, this version reads %s" % (self.path, version, SCHEMA_VERSION))
        except BaseException:
            self.close()
            raise

    # -- the lock ---------------------------------------------------------------------

    def _lock(self) -> None:
        if fcntl is None:  # pragma: no cover
            return
        # Named after the real path: the same database reached through a
        # symlink (to it or to a directory above it) must find the same lock.
        lockpath = os.path.realpath(self.path) + ".lock"
        fd = os.open(lockpath, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            holder = ""
            try:
                with open(lockpath) as f:
                    holder = f.read().strip()
            except OSError:
                pass
            raise JournalLocked(
                "%s is in use by another run%s" % (self.path, " (pid %s)" % holder if holder else "")
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, b"%d\n" % os.getpid())
        self._lockfd = fd

    def close(self) -> None:
        conn = getattr(self, "conn", None)
        if conn is not None:
            try:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                conn.close()
            finally:
                self.conn = None  # type: ignore[assignment]
        if self._lockfd is not None:
            os.close(self._lockfd)  # releases the flock
            self._lockfd = None

    def __enter__(self) -> "Journal":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- transactions -----------------------------------------------------------------

    def begin(self) -> None:
        self.conn.execute("BEGIN IMMEDIATE")

    def commit(self) -> None:
        self.conn.execute("COMMIT")

    # -- meta -------------------------------------------------------------------------

    def get(self, key: str) -> Optional[str]:
        row = self.conn.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return row[0] if row else None

    def meta(self) -> dict:
        return dict(self.conn.execute("SELECT key, value FROM meta"))

    def set_meta(self, values: dict) -> None:
        """Set meta keys (in the caller's transaction, or its own)."""
        self.conn.executemany("INSERT OR REPLACE INTO meta(key, value) VALUES(?, ?)",
                              [(k, str(v)) for k, v in values.items()])

    # -- import -----------------------------------------------------------------------

    def add(self, rows: Sequence[tuple]) -> list:
        """Record a batch of CSV records.

        ``rows``: ``(row, address, norm, state, reply)`` in row order; ``norm``
        is None for an ``invalid`` row.  A ``pending`` row whose ``norm`` an
        earlier row (this batch or before) already has becomes ``duplicate``.
        Returns ``(row, address, first_row)`` for each duplicate found.
        """
        now = time.time()
        conn = self.conn
        conn.executemany(
            "INSERT OR IGNORE INTO recipients(row, address, norm, state, reply, updated) VALUES(?,?,?,?,?,?)",
            [(r, a, n, s, t, now) for r, a, n, s, t in rows],
        )
        lo, hi = rows[0][0], rows[-1][0]
        present = {r for (r,) in conn.execute("SELECT row FROM recipients WHERE row BETWEEN ? AND ?", (lo, hi))}
        dups = []
        for r, a, n, s, t in rows:
            if r in present:
                continue
            # Only a UNIQUE(norm) conflict can have kept a new row out.
            first = conn.execute("SELECT row FROM recipients WHERE norm=?", (n,)).fetchone()
            first_row = first[0] if first else None
            dups.append((r, a, first_row))
        if dups:
            conn.executemany(
                "INSERT INTO recipients(row, address, norm, state, reply, updated) VALUES(?,?,NULL,'duplicate',?,?)",
                [(r, a, "duplicate of row %s" % f, now) for r, a, f in dups],
            )
        return dups

    # -- sending ----------------------------------------------------------------------

    def states(self, lo: int, hi: int) -> dict:
        """``{row: (state, address)}`` for rows ``lo..hi`` inclusive."""
        return {r: (s, a) for r, s, a in self.conn.execute(
            "SELECT row, state, address FROM recipients WHERE row BETWEEN ? AND ?", (lo, hi))}

    def mark_sending(self, rows: Iterable[int]) -> None:
        self.conn.executemany("UPDATE recipients SET state='sending', updated=? WHERE row=?",
                              [(time.time(), r) for r in rows])

    def record(self, outcomes: Sequence[tuple]) -> None:
        """Record outcomes: ``(row, state, attempts_added, code, reply)``."""
        now = time.time()
        self.conn.executemany(
            "UPDATE recipients SET state=?, attempts=attempts+?, code=?, reply=?, updated=? WHERE row=?",
            [(s, n, c, t, now, r) for r, s, n, c, t in outcomes],
        )

    def sending_to_uncertain(self) -> int:
        """A new run starts: rows a dead run left ``sending`` become ``uncertain``."""
        cur = self.conn.execute(
            "UPDATE recipients SET state='uncertain', updated=?, "
            "reply=COALESCE(reply, 'the run stopped after the message was handed over; no reply recorded') "
            "WHERE state='sending'", (time.time(),))
        return cur.rowcount

    # -- reading ----------------------------------------------------------------------

    def counts(self) -> dict:
        return counts(self.conn)

    def addresses(self, state: str, limit: int) -> list:
        return [a for (a,) in self.conn.execute(
            "SELECT address FROM recipients WHERE state=? ORDER BY row LIMIT ?", (state, limit))]


def open_readonly(path: str | os.PathLike) -> sqlite3.Connection:
    """A read-only connection to a journal (no lock: WAL lets it read during a run).

    Raises:
        JournalError: missing, or not a journal.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise JournalError("%s: no such journal" % path)
    try:
        conn = _connect(path, readonly=True)
        tables = {t for (t,) in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    except sqlite3.DatabaseError as exc:
        raise JournalError("%s: not a campaign journal (%s)" % (path, exc)) from None
    if not {"meta", "recipients"} <= tables:
        conn.close()
        raise JournalError("%s: not a campaign journal" % path)
    return conn


def counts(conn: sqlite3.Connection) -> dict:
    """``{state: n}`` for every state (zeros included)."""
    out = dict.fromkeys(STATES, 0)
    out.update(conn.execute("SELECT state, COUNT(*) FROM recipients GROUP BY state"))
    return out


def code_counts(conn: sqlite3.Connection) -> dict:
    """``{code: n}`` over recipients with a server reply code."""
    return dict(conn.execute(
        "SELECT code, COUNT(*) FROM recipients WHERE code IS NOT NULL GROUP BY code ORDER BY code"))


def iter_rows(conn: sqlite3.Connection) -> Iterator[tuple]:
    """``(address, state, code, reply, attempts)`` for every recipient, in CSV order."""
    return iter(conn.execute("SELECT address, state, code, reply, attempts FROM recipients ORDER BY row"))


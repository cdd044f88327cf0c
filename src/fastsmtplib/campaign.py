"""Newsletter campaigns: a CSV of recipients, one template, a crash-safe journal.

The command line (``fastsmtplib send``, ``report``, ``demo``) is a thin layer
over :class:`Campaign`::

    from fastsmtplib.campaign import Campaign
    from fastsmtplib.merge import Template

    c = Campaign("list.csv", Template.from_eml("news.eml"),
                 from_addr="news@example.org", host="smtp.example.org", port=587,
                 starttls=True, login=("news", password), connections=4, rate=50)
    summary = c.run()          # a Summary: counts per state and reply code, exit_code

How a run goes (every step is resumable, see ``journal.py`` for the states):

1. **Validate before anything is sent**: the CSV header must hold the address
   column and every field the template uses (else :class:`CampaignInputError`
   naming the missing ones); the journal is opened and locked
   (:class:`JournalLocked`); a journal in which a run sent anything is
   accepted only with ``resume=True`` and only for the same CSV, template,
   From and address column (SHA-256 digests kept in its ``meta`` table); one
   that never sent anything is reused as it is, or rebuilt if they changed.
2. **Import**: the CSV is streamed into the journal, one row per record, in
   committed batches: a bad address or a malformed record becomes
   ``invalid`` (with the reason), a repeated address ``duplicate`` (the
   journal's UNIQUE index finds it: no set of addresses in memory).
3. **Check the message and the server**: the first valid record's message
   is built and signed (a broken template or key: :class:`CampaignInputError`);
   one connection is opened (TLS and AUTH included) and closed; failing that,
   :class:`CampaignStartError`.  Nothing has been sent yet.
4. **Send**: the CSV is streamed again; each block of records whose rows are
   ``pending`` or ``deferred`` (and ``uncertain`` with ``resend_uncertain``)
   is rendered, marked ``sending`` and *committed*, then handed to
   ``SMTPPool.send_many``, whose bounded window pulls the next block only as
   results come back (back-pressure: memory stays flat for any list size).
   Outcomes are committed in batches.  ``max_errors`` consecutive
   connection-level failures (nothing reached a server) pause the run, as
   does :meth:`Campaign.stop` (SIGINT/SIGTERM in the command line).

A message's Message-ID is ``<campaign-id.row@from-domain>``: the same on every
attempt, so a resent ``uncertain`` message can be recognised downstream.
"""

from __future__ import annotations

import csv
import email.utils
import hashlib
import os
import re
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Optional, Sequence

from ._engine import DEFERRED, DELIVERED, FAILED, PARTIAL, REFUSED, UNCERTAIN
from .journal import SENDABLE_STATES, Journal, JournalError, JournalLocked, code_counts
from .retry import Retry

__all__ = [
    "Campaign",
    "Summary",
    "CampaignError",
    "CampaignInputError",
    "CampaignStartError",
    "JournalLocked",
    "default_journal_path",
    "csv_records",
    "neutralise_cell",
    "EXIT_OK",
    "EXIT_INCOMPLETE",
    "EXIT_USAGE",
    "EXIT_NOT_STARTED",
]

EXIT_OK = 0  # every recipient final, none deferred or uncertain
EXIT_INCOMPLETE = 1  # finished (or paused) with deferred, uncertain or pending recipients
EXIT_USAGE = 2  # usage or input error
EXIT_NOT_STARTED = 3  # could not start: server unreachable, journal locked

#: CSV records per import transaction.
IMPORT_BATCH = 5000
#: Recipients rendered, marked ``sending`` and committed at a time.
SEND_BATCH = 256
#: Outcomes per results transaction (or every ``COMMIT_INTERVAL`` seconds).
RESULT_BATCH = 1024
COMMIT_INTERVAL = 0.1
#: Uncertain/deferred addresses listed in a summary.
SAMPLE = 20


class CampaignError(Exception):
    """Base of the campaign's errors; ``exit_code`` is the command line's."""

    exit_code = EXIT_USAGE


class CampaignInputError(CampaignError):
    """Bad input: missing CSV columns, unreadable files, another campaign's journal."""

    exit_code = EXIT_USAGE


class CampaignStartError(CampaignError):
    """The campaign could not start: the server is unreachable or refused the login,
    or the journal is locked by another run."""

    exit_code = EXIT_NOT_STARTED


def default_journal_path(csv_path: str | os.PathLike) -> str:
    """The journal kept next to the CSV when none is named: ``list.csv`` -> ``list.journal.db``."""
    base, ext = os.path.splitext(os.fspath(csv_path))
    return base + ".journal.db"


def neutralise_cell(value: Any) -> Any:
    """A CSV cell a spreadsheet will not run as a formula.

    Text starting with ``= + - @``, a tab or a CR is prefixed with ``'``
    (OWASP's advice for CSV injection): reply texts come from remote servers.
    """
    if isinstance(value, str) and value and value[0] in "=+-@\t\r":
        return "'" + value
    return value


def _file_digest(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            chunk = f.read(1 << 20)
            if not chunk:
                break
            h.update(chunk)
    return h.hexdigest()


def _physical_lines(f: Any, size: int = 1 << 16) -> Iterator[bytes]:
    """The lines of binary file ``f``, each with its end: CRLF, LF or a bare CR.

    Iterating a binary file splits at LF only, so a file with bare CR line
    ends (Excel for Mac's "CSV (Macintosh)") would come as one line, read
    whole into memory and refused by the csv module.  A CRLF split across
    two reads stays one line end.
    """
    partial: list = []  # the pieces of a line whose end has not been read yet
    while True:
        chunk = f.read(size)
        if not chunk:
            break
        lines = chunk.splitlines(True)
        if partial and partial[-1].endswith(b"\r"):
            if lines[0] == b"\n":  # the LF of a CRLF that straddled the reads
                partial.append(lines.pop(0))
            yield b"".join(partial)
            partial = []
            if not lines:
                continue
        last = lines.pop()
        for line in lines:
            if partial:
                line = b"".join(partial) + line
                partial = []
            yield line
        partial.append(last)
        if last.endswith(b"\n"):
            yield b"".join(partial)
            partial = []
    if partial:
        yield b"".join(partial)


class _Records:
    """The CSV's records as ``(row, {column: value})``, streamed (``row`` from 1).

    A record whose field count differs from the header's comes as
    ``(row, error_text, raw_fields)``.  Empty lines are skipped (they are not
    records).  Raises :class:`CampaignInputError` on a header problem, bad
    UTF-8 or a CSV syntax error, naming the record.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        try:
            self._f = open(path, "rb")
        except OSError as exc:
            raise CampaignInputError("cannot read %s: %s" % (path, exc.strerror or exc)) from None
        self._reader = csv.reader(self._lines())
        self.header = self._next_header()

    def _lines(self) -> Iterator[str]:
        # Decoded line by line (not by the io layer's chunks) so that bad
        # UTF-8 is reported with its line number.
        for number, line in enumerate(_physical_lines(self._f), 1):
            if number == 1 and line.startswith(b"\xef\xbb\xbf"):
                line = line[3:]  # a byte order mark, as spreadsheets write
            try:
                yield line.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise CampaignInputError("%s: line %d is not UTF-8 (byte %d): save the file as UTF-8"
                                         % (self.path, number, exc.start + 1)) from None

    def _next_header(self) -> list:
        try:
            header = next(self._reader)
        except StopIteration:
            raise CampaignInputError("%s is empty: it needs a header line naming its columns" % self.path) from None
        except csv.Error as exc:
            raise CampaignInputError("%s: bad header line: %s" % (self.path, exc)) from None
        header = [h.strip() for h in header]
        if not any(header):
            raise CampaignInputError("%s: the header line names no columns" % self.path)
        seen = set()
        for h in header:
            # Unnamed columns (a spreadsheet's formatted but empty ones) are
            # no merge field: several of them are no conflict.
            if h in seen and h:
                raise CampaignInputError("%s: column %r appears twice in the header" % (self.path, h))
            seen.add(h)
        return header

    def close(self) -> None:
        self._f.close()

    def __enter__(self) -> "_Records":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __iter__(self) -> Iterator[tuple]:
        header = self.header
        n = len(header)
        row = 0
        reader = self._reader
        while True:
            try:
                fields = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:
                raise CampaignInputError("%s: record %d (line %d): %s"
                                         % (self.path, row + 1, reader.line_num, exc)) from None
            if not fields:
                continue
            row += 1
            if len(fields) != n:
                yield row, "record has %d fields, the header has %d" % (len(fields), n), fields
            else:
                yield row, dict(zip(header, fields)), None


def csv_records(path: str) -> Iterator[tuple]:
    """``(row, fields or error text, raw)`` for each record of ``path`` (see ``_Records``)."""
    with _Records(path) as r:
        yield from r


@dataclass
class Summary:
    """What a run ended with (all counts are over the whole journal)."""

    journal: str
    states: dict
    codes: dict
    total: int
    sent: int = 0  # outcomes recorded by this run
    elapsed: float = 0.0
    paused: Optional[str] = None  # why the run stopped early, if it did
    uncertain: list = field(default_factory=list)  # a sample of addresses
    deferred: list = field(default_factory=list)
    dry_run: Optional[str] = None
    server: Optional[str] = None

    @property
    def rate(self) -> float:
        return self.sent / self.elapsed if self.elapsed > 0 else 0.0

    @property
    def exit_code(self) -> int:
        s = self.states
        if self.paused or s.get("pending") or s.get("sending") or s.get("deferred") or s.get("uncertain"):
            return EXIT_INCOMPLETE
        return EXIT_OK

    def as_dict(self) -> dict:
        return {
            "journal": self.journal,
            "server": self.server,
            "dry_run": self.dry_run,
            "total": self.total,
            "states": self.states,
            "codes": {str(k): v for k, v in self.codes.items()},
            "sent_this_run": self.sent,
            "elapsed": round(self.elapsed, 3),
            "rate": round(self.rate, 1),
            "paused": self.paused,
            "uncertain": self.uncertain,
            "deferred": self.deferred,
            "exit_code": self.exit_code,
        }


def _outcome(result: Any) -> tuple:
    """``(state, code, reply text, connection_level)`` for a pool result."""
    status = result.status
    reply = result.reply
    exc = result.exception
    # One recipient per message: its own refusal (RCPT, or LMTP's reply after
    # the data) says more than the DATA reply that followed it.
    for code_text in result.recipients.values():
        if code_text[0] >= 400:
            reply = code_text
            break
    if reply is None and exc is not None and getattr(exc, "smtp_code", None) not in (None, -1):
        reply = (exc.smtp_code, exc.smtp_error)
    if reply is not None:
        code, text = reply
        text = text.decode("utf-8", "replace") if isinstance(text, (bytes, bytearray)) else str(text)
    else:
        code, text = None, (str(exc) if exc is not None else None)
    if status is DELIVERED or status is PARTIAL or status in ("delivered", "partial"):
        return "delivered", code, text, False
    if status is REFUSED or status == "refused":
        return "refused", code, text, False
    if status is DEFERRED or status == "deferred":
        return "deferred", code, text, False
    if status is FAILED or status == "failed":
        return "refused", code, "not sent: %s" % text, False
    if status is UNCERTAIN or status == "uncertain":
        return "uncertain", code, text or "no reply after the message was sent", True
    # not_attempted: never handed over (or lost before the body went): safe to send again.
    return "pending", code, text, True


class Campaign:
    """One campaign: recipients, a template, a journal, a server.

    Args:
        recipients: the CSV file (UTF-8, a header line; columns are merge fields).
        template: a ``merge.Template``.
        from_addr: the envelope sender (MAIL FROM) and the Message-ID domain.
        template_digest: a digest of what the template was built from, kept in
            the journal so that a resume with another template is refused.
        journal: the journal file (default: next to the CSV, ``default_journal_path``).
        address_column: the CSV column holding each recipient's address.
        host, port, ssl, starttls, context, login, timeout: the server, as for ``SMTPPool``.
        connections, rate, retry: the pool's ``size``, ``rate`` and ``Retry``.
        dkim: a ``dkim_sign.DkimSigner`` (given to ``Template.render(dkim=)``), or None.
        unsubscribe_url, unsubscribe_mailto: List-Unsubscribe targets (RFC 2369,
            RFC 8058 one-click for the URL).
        resume: continue the run recorded in an existing journal.
        resend_uncertain: send ``uncertain`` recipients again (may duplicate them).
        max_errors: pause after this many consecutive connection-level failures.
        dry_run: a directory: write each rendered message there instead of sending
            (a throwaway journal is used).
        progress: called as ``progress(done, total)`` from the sending thread.
        log: called with one line of text for notable events (stderr in the CLI).
    """

    def __init__(
        self,
        recipients: str | os.PathLike,
        template: Any,
        from_addr: str,
        *,
        template_digest: str = "",
        journal: str | os.PathLike | None = None,
        address_column: str = "email",
        host: str = "localhost",
        port: int = 0,
        ssl: bool = False,
        starttls: bool = False,
        context: Any = None,
        login: Optional[tuple] = None,
        timeout: Optional[float] = 60.0,
        connections: int = 4,
        rate: Optional[float] = None,
        retry: Optional[Retry] = None,
        dkim: Any = None,
        unsubscribe_url: Optional[str] = None,
        unsubscribe_mailto: Optional[str] = None,
        resume: bool = False,
        resend_uncertain: bool = False,
        max_errors: int = 50,
        dry_run: str | os.PathLike | None = None,
        progress: Optional[Callable[[int, int], None]] = None,
        log: Optional[Callable[[str], None]] = None,
        local_hostname: Optional[str] = None,
    ) -> None:
        self.recipients = os.fspath(recipients)
        self.template = template
        self.from_addr = from_addr
        self.template_digest = template_digest
        self.dry_run = os.fspath(dry_run) if dry_run is not None else None
        self.journal_path = os.fspath(journal) if journal is not None else default_journal_path(self.recipients)
        self.address_column = address_column
        self.host = host
        self.port = port
        self.ssl = ssl
        self.starttls = starttls
        self.context = context
        self._login = login
        self.timeout = timeout
        self.connections = connections
        self.rate = rate
        self.retry = retry if retry is not None else Retry(attempts=3, backoff=1.0, backoff_max=30.0, total=300.0)
        self.dkim = dkim
        self.unsubscribe_url = unsubscribe_url
        self.unsubscribe_mailto = unsubscribe_mailto
        self.resume = resume
        self.resend_uncertain = resend_uncertain
        self.max_errors = max_errors
        self.progress = progress
        self.log = log or (lambda line: None)
        self.local_hostname = local_hostname
        self._stop_reason: Optional[str] = None
        self._pool: Any = None
        self._batch = SEND_BATCH
        self._outcomes: list = []  # recorded with the next commit
        self._last_commit = 0.0
        # The address's domain, whatever display name or comment --from has.
        domain = email.utils.parseaddr(from_addr)[1].rpartition("@")[2] or "fastsmtplib.invalid"
        self._mid_domain = domain

    def __repr__(self) -> str:  # never shows the login
        return "<Campaign %s -> %s:%s>" % (self.recipients, self.host, self.port)

    # -- control --------------------------------------------------------------------

    def stop(self, reason: str = "stopped") -> None:
        """Pause the run cleanly (thread-safe; e.g. from a signal handler)."""
        if self._stop_reason is None:
            self._stop_reason = reason
            pool = self._pool
            if pool is not None:
                pool.close(wait=False)

    # -- the run --------------------------------------------------------------------

    def run(self) -> Summary:
        """Validate, import, check the server, send; return the :class:`Summary`.

        Raises:
            CampaignInputError: exit 2 (nothing was sent).
            CampaignStartError: exit 3 (nothing was sent by this run).
        """
        fields = self._check_header()
        if self.dry_run is not None:
            return self._run_dry(fields)
        try:
            journal = Journal(self.journal_path)
        except JournalLocked as exc:
            raise CampaignStartError(str(exc)) from None
        except (JournalError, OSError) as exc:
            raise CampaignInputError("cannot use journal %s: %s" % (self.journal_path, exc)) from None
        try:
            self._prepare(journal)
            self._import(journal)
            self._check_message()
            self._check_server()
            return self._send(journal)
        finally:
            journal.close()

    def _check_header(self) -> list:
        with _Records(self.recipients) as recs:
            header = recs.header
        missing = []
        if self.address_column not in header:
            missing.append(self.address_column)
        needed = set(getattr(self.template, "fields", ()) or ())
        if self.unsubscribe_url:
            # The URL template's fields are merge fields too (to_addr is the
            # recipient's address): checked now, not row by row while sending
            # (a dry run would call every row invalid and exit 0).
            from .merge import _split_placeholders

            try:
                pieces = _split_placeholders(self.unsubscribe_url)
            except ValueError as exc:  # an unknown filter
                raise CampaignInputError("--unsubscribe-url: %s" % exc) from None
            needed.update(p[0] for p in pieces[1::2] if p[0] != "to_addr")
        missing += sorted(f for f in needed if f not in header and f != self.address_column)
        if missing:
            raise CampaignInputError(
                "%s lacks column%s the template needs: %s (the header has: %s)"
                % (self.recipients, "s" if len(missing) > 1 else "", ", ".join(missing), ", ".join(header)))
        return header

    def _identity(self) -> dict:
        return {
            "csv_sha256": _file_digest(self.recipients),
            "template_sha256": self.template_digest,
            "from": self.from_addr,
            "address_column": self.address_column,
        }

    def _prepare(self, journal: Journal) -> None:
        """A new journal gets the campaign's identity; an old one must match it."""
        ident = self._identity()
        meta = journal.meta()
        if "campaign" not in meta:
            journal.begin()
            journal.set_meta(dict(ident, campaign=uuid.uuid4().hex[:16], csv=os.path.abspath(self.recipients),
                                  created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), imported=0))
            journal.commit()
            self.campaign_id = journal.get("campaign")
            return
        started = meta.get("started") == "1"
        differs = [k for k, v in ident.items() if meta.get(k) != v]
        if started and not self.resume:
            raise CampaignInputError(
                "journal %s already records a run of this or another campaign: pass --resume to "
                "continue it, or --journal NEW.db for a new campaign" % self.journal_path)
        if differs:
            what = {"csv_sha256": "the CSV", "template_sha256": "the template", "from": "--from",
                    "address_column": "--address-column"}
            names = ", ".join(what[k] for k in differs)
            if started:
                raise CampaignInputError(
                    "journal %s belongs to another campaign: %s changed since it was made "
                    "(resume needs the same CSV and template)" % (self.journal_path, names))
            # Nothing was ever sent with it: start it afresh.
            journal.begin()
            journal.conn.execute("DELETE FROM recipients")
            journal.conn.execute("DELETE FROM meta WHERE key NOT IN ('schema')")
            journal.commit()
            return self._prepare(journal)
        self.campaign_id = meta["campaign"]

    def _import(self, journal: Journal) -> None:
        if journal.get("import_done") == "1":
            return
        from . import merge

        valid, normalize = merge.valid_address, merge.normalize_address
        done = int(journal.get("imported") or 0)
        col = self.address_column
        batch: list = []
        invalid = duplicate = 0
        shown = 0

        def flush(upto: int) -> None:
            nonlocal duplicate, shown
            journal.begin()
            if batch:
                dups = journal.add(batch)
                duplicate += len(dups)
            journal.set_meta({"imported": upto})
            journal.commit()
            batch.clear()

        last = done
        with _Records(self.recipients) as recs:
            for row, fields, raw in recs:
                last = row
                if row <= done:
                    continue
                if raw is not None:
                    addr = raw[recs.header.index(col)] if col in recs.header and recs.header.index(col) < len(raw) else ""
                    batch.append((row, addr, None, "invalid", fields))
                    invalid += 1
                    if shown < SAMPLE:
                        self.log("row %d: invalid: %s" % (row, fields))
                        shown += 1
                else:
                    addr = fields[col].strip()
                    if not valid(addr):
                        batch.append((row, addr, None, "invalid", "not a valid address: %r" % addr[:200]))
                        invalid += 1
                        if shown < SAMPLE:
                            self.log("row %d: invalid address %r: skipped" % (row, addr[:200]))
                            shown += 1
                    else:
                        batch.append((row, addr, normalize(addr), "pending", None))
                if len(batch) >= IMPORT_BATCH:
                    flush(row)
        flush(last)
        journal.begin()
        journal.set_meta({"import_done": 1})
        journal.commit()
        counts = journal.counts()
        total = sum(counts.values())
        self.log("imported %d recipients: %d invalid, %d duplicate (skipped)"
                 % (total, counts["invalid"], counts["duplicate"]))

    def _check_message(self) -> None:
        """Render and sign the first valid record, so a broken template or DKIM
        key stops the campaign before its first message (exit 2)."""
        from . import merge

        for row, fields, raw in csv_records(self.recipients):
            if raw is None and merge.valid_address(fields[self.address_column].strip()):
                try:
                    self._render(row, fields, fields[self.address_column].strip())
                except Exception as exc:
                    raise CampaignInputError("cannot build the message for row %d: %s" % (row, _describe(exc))) from None
                return

    def _check_server(self) -> None:
        from .smtp import SMTP, SMTP_SSL

        try:
            if self.ssl:
                conn: Any = SMTP_SSL(self.host, self.port, local_hostname=self.local_hostname,
                                     timeout=self.timeout or 30, context=self.context)
            else:
                conn = SMTP(self.host, self.port, local_hostname=self.local_hostname, timeout=self.timeout or 30)
            try:
                conn.ehlo_or_helo_if_needed()
                if self.starttls:
                    conn.starttls(context=self.context)
                    conn.ehlo()
                if self._login is not None:
                    conn.login(*self._login)
            finally:
                try:
                    conn.quit()
                except Exception:
                    conn.close()
        except Exception as exc:
            raise CampaignStartError("cannot start: server %s:%s: %s" % (self.host, self.port, _describe(exc))) from None

    def _send(self, journal: Journal) -> Summary:
        from .pool import SMTPPool

        t0 = time.monotonic()
        journal.begin()
        lost = journal.sending_to_uncertain()
        journal.set_meta({"started": 1})
        journal.commit()
        if lost:
            self.log("%d recipient%s left 'sending' by an earlier run %s now 'uncertain'"
                     % (lost, "s" if lost != 1 else "", "are" if lost != 1 else "is"))
        states = list(SENDABLE_STATES)
        if self.resend_uncertain:
            states.append("uncertain")
        counts = journal.counts()
        if counts["uncertain"] and not self.resend_uncertain:
            sample = journal.addresses("uncertain", SAMPLE)
            self.log("%d uncertain recipient%s (may have received the message; not resent without "
                     "--resend-uncertain): %s%s" % (counts["uncertain"], "s" if counts["uncertain"] != 1 else "",
                                                     ", ".join(sample),
                                                     " ..." if counts["uncertain"] > len(sample) else ""))
        todo = sum(counts[s] for s in states)
        self._sendable = frozenset(states)
        done = 0
        if self.progress:
            self.progress(0, todo)
        if todo:
            window = 32
            # Everything handed to the pool is marked ``sending`` first, so what
            # a kill can leave ``uncertain`` is what is in flight: enough to
            # keep every connection's pipeline full, and with a rate limit no
            # more than about a quarter second's worth (the rest would only
            # wait in the pool's queue for tokens).
            limit = 2 * self.connections * window
            if self.rate is not None:
                limit = max(2 * self.connections, min(limit, int(self.rate / 4) + 1))
            self._batch = max(1, min(SEND_BATCH, limit // 2))
            pool = SMTPPool(
                self.host, self.port, size=self.connections, ssl=self.ssl, starttls=self.starttls,
                context=self.context, login=self._login, timeout=self.timeout, rate=self.rate,
                retry=self.retry, local_hostname=self.local_hostname, window=window,
            )
            inflight: dict = {}
            pending_out = self._outcomes = []
            self._last_commit = time.monotonic()
            consecutive = 0
            try:
                # The run is made while the pool is still open (send_many
                # refuses a closed pool); only then may stop() close it, for a
                # stop that came before (during the import or the server
                # check) or that comes at any later instant.
                results = pool.send_many(self._messages(journal, inflight), max_in_flight=limit)
                self._pool = pool
                if self._stop_reason is not None:
                    pool.close(wait=False)
                for result in results:
                    row = inflight.pop(result.index)
                    state, code, text, conn_level = _outcome(result)
                    pending_out.append((row, state, result.attempts, code, text))
                    done += 1
                    if conn_level:
                        consecutive += 1
                        if consecutive >= self.max_errors and self._stop_reason is None:
                            self.stop("paused after %d consecutive connection failures (last: %s)"
                                      % (consecutive, _printable(str(text))[:300]))
                    else:
                        consecutive = 0
                    # Outcomes usually go in the next block's transaction (see
                    # _messages); this commits them when no block comes soon.
                    now = time.monotonic()
                    if len(pending_out) >= RESULT_BATCH or now - self._last_commit >= COMMIT_INTERVAL:
                        journal.begin()
                        journal.record(pending_out)
                        journal.commit()
                        pending_out.clear()
                        self._last_commit = now
                    if self.progress:
                        self.progress(done, todo)
            finally:
                if pending_out:
                    journal.begin()
                    journal.record(pending_out)
                    journal.commit()
                self._pool = None  # first: a signal arriving now must not close it re-entrantly
                pool.close(wait=self._stop_reason is None)
        if self.progress:
            self.progress(done, todo)
        return self._summary(journal, done, time.monotonic() - t0)

    def _messages(self, journal: Journal, inflight: dict) -> Iterator[tuple]:
        """What the pool sends: each block rendered, marked ``sending`` and committed first."""
        from .merge import MergeError as merge_error

        sendable = self._sendable
        from_addr = self.from_addr
        col = self.address_column
        index = 0
        block: list = []
        with _Records(self.recipients) as recs:
            it = iter(recs)
            exhausted = False
            while not exhausted and self._stop_reason is None:
                block.clear()
                for rec in it:
                    block.append(rec)
                    if len(block) >= self._batch:
                        break
                else:
                    exhausted = True
                if not block:
                    break
                states = journal.states(block[0][0], block[-1][0])
                ready: list = []
                failed: list = []
                for row, fields, raw in block:
                    if raw is not None:
                        continue
                    state, known = states.get(row, (None, None))
                    addr = fields[col].strip()
                    if addr != known:
                        # The file is not the one imported (edited during the run?):
                        # sending now could mail the wrong person.
                        self.stop("the CSV changed during the run (row %d is %r, the journal has %r)"
                                  % (row, _printable(addr)[:100], _printable(known or "")[:100]))
                        break
                    if state not in sendable:
                        continue
                    try:
                        msg = self._render(row, fields, addr)
                    except merge_error as exc:  # this row's values cannot make a message
                        failed.append((row, "invalid", 0, None, "cannot render: %s" % exc))
                        continue
                    except Exception as exc:  # the signer or the template: not this recipient's fault
                        self.stop("cannot build the message for row %d: %s" % (row, _describe(exc)))
                        break
                    ready.append((row, addr, msg))
                if self._stop_reason is not None:
                    ready.clear()
                if not ready and not failed:
                    continue
                # One transaction (one fsync) records the outcomes so far and
                # marks this block; it is durable before any of these bodies
                # is handed over.
                journal.begin()
                outcomes = self._outcomes
                if outcomes:
                    journal.record(outcomes)
                    outcomes.clear()
                if failed:
                    journal.record(failed)
                journal.mark_sending(r for r, _, _ in ready)
                journal.commit()
                self._last_commit = time.monotonic()
                for row, addr, msg in ready:
                    inflight[index] = row
                    index += 1
                    yield (from_addr, [addr], msg)
                ready.clear()

    def _render(self, row: int, fields: dict, addr: str) -> bytes:
        from . import merge

        extra: Sequence = ()
        if self.unsubscribe_url or self.unsubscribe_mailto:
            extra = merge.unsubscribe_headers(fields, url_template=self.unsubscribe_url,
                                              mailto=self.unsubscribe_mailto, to_addr=addr)
        mid = "<%s.%d@%s>" % (self.campaign_id, row, self._mid_domain)
        if self.dkim is None:
            return self.template.render(fields, to_addr=addr, message_id=mid, extra_headers=extra)
        # Signed while rendering: the template hashes only the body lines a
        # recipient's values changed (merge.Template.render).
        return self.template.render(fields, to_addr=addr, message_id=mid, extra_headers=extra, dkim=self.dkim)

    def preview(self, row: int) -> bytes:
        """The message CSV record ``row`` gets (after a run, or while one goes on)."""
        for r, fields, raw in csv_records(self.recipients):
            if r == row:
                if raw is not None:
                    raise CampaignInputError("record %d: %s" % (row, fields))
                return self._render(row, fields, fields[self.address_column].strip())
        raise CampaignInputError("%s has no record %d" % (self.recipients, row))

    def _summary(self, journal: Journal, sent: int, elapsed: float) -> Summary:
        counts = journal.counts()
        return Summary(
            journal=os.path.abspath(self.journal_path),
            states=counts,
            codes=code_counts(journal.conn),
            total=sum(counts.values()),
            sent=sent,
            elapsed=elapsed,
            paused=self._stop_reason,
            uncertain=journal.addresses("uncertain", SAMPLE),
            deferred=journal.addresses("deferred", SAMPLE),
            server="%s:%s" % (self.host, self.port),
        )

    # -- dry run --------------------------------------------------------------------

    def _run_dry(self, header: list) -> Summary:
        import shutil
        import tempfile

        out = self.dry_run
        assert out is not None
        try:
            os.makedirs(out, exist_ok=True)
        except OSError as exc:
            raise CampaignInputError("cannot create %s: %s" % (out, exc.strerror or exc)) from None
        tmp = tempfile.mkdtemp(prefix="fastsmtplib-dry-")
        self.journal_path = os.path.join(tmp, "journal.db")
        t0 = time.monotonic()
        written = 0
        try:
            with Journal(self.journal_path) as journal:
                self._prepare(journal)
                self._import(journal)
                self._check_message()  # as a real run does: a broken message is exit 2
                self._sendable = frozenset(("pending",))
                todo = journal.counts()["pending"]
                if self.progress:
                    self.progress(0, todo)
                inflight: dict = {}
                outcomes = []
                for _from, (addr,), msg in self._messages(journal, inflight):
                    row = inflight.pop(written)
                    with open(os.path.join(out, "%08d.eml" % row), "wb") as f:
                        f.write(msg)
                    written += 1
                    outcomes.append((row, "delivered", 0, None, "written to %s" % out))
                    if len(outcomes) >= RESULT_BATCH:
                        journal.begin()
                        journal.record(outcomes)
                        journal.commit()
                        outcomes.clear()
                        if self.progress:
                            self.progress(written, todo)
                journal.begin()
                journal.record(outcomes)
                journal.commit()
                if self.progress:
                    self.progress(written, todo)
                summary = self._summary(journal, written, time.monotonic() - t0)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        summary.journal = None  # type: ignore[assignment]
        summary.dry_run = os.path.abspath(out)
        summary.server = None
        return summary


_CONTROLS = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def _printable(text: str) -> str:
    """``text`` with control characters shown as ``?``: reply texts come from
    remote servers and must not drive the terminal they are printed on."""
    return _CONTROLS.sub("?", text)


def _describe(exc: BaseException) -> str:
    """An exception as one line, without internals (and never a password: none is in them)."""
    code = getattr(exc, "smtp_code", None)
    if code is not None:
        err = getattr(exc, "smtp_error", b"")
        if isinstance(err, bytes):
            err = err.decode("utf-8", "replace")
        return _printable("%s %s" % (code, err))
    return _printable(str(exc) or type(exc).__name__)


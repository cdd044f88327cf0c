"""The campaign journal on its own (``fastsmtplib.journal``): no server involved.

Duplicates found by the UNIQUE index across and within import batches, the
``sending`` -> ``uncertain`` rule a new run applies, the lock, WAL mode and
read-only access while a run holds the journal.
"""

from __future__ import annotations

import sqlite3

import pytest

from fastsmtplib.journal import Journal, JournalError, JournalLocked, counts, open_readonly


def test_duplicates_within_and_across_batches(tmp_path):
    with Journal(tmp_path / "j.db") as j:
        j.begin()
        dups = j.add([(1, "a@x.org", "a@x.org", "pending", None), (2, "bad", None, "invalid", "why"),
                      (3, "A@X.org", "a@x.org", "pending", None), (4, "b@x.org", "b@x.org", "pending", None)])
        j.commit()
        assert dups == [(3, "A@X.org", 1)]
        j.begin()
        dups = j.add([(5, "b@X.ORG", "b@x.org", "pending", None), (6, "c@x.org", "c@x.org", "pending", None)])
        j.commit()
        assert dups == [(5, "b@X.ORG", 4)]
        assert j.states(1, 6) == {1: ("pending", "a@x.org"), 2: ("invalid", "bad"), 3: ("duplicate", "A@X.org"),
                                  4: ("pending", "b@x.org"), 5: ("duplicate", "b@X.ORG"), 6: ("pending", "c@x.org")}
        assert j.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_sending_becomes_uncertain_on_the_next_run(tmp_path):
    with Journal(tmp_path / "j.db") as j:
        j.begin()
        j.add([(i, "r%d@x.org" % i, "r%d@x.org" % i, "pending", None) for i in range(1, 6)])
        j.mark_sending([1, 2, 3])
        j.record([(1, "delivered", 1, 250, "ok")])
        j.commit()
    # The process "died" here: rows 2 and 3 were handed over with no outcome.
    with Journal(tmp_path / "j.db") as j:
        j.begin()
        assert j.sending_to_uncertain() == 2
        j.commit()
        c = j.counts()
        assert (c["delivered"], c["uncertain"], c["pending"], c["sending"]) == (1, 2, 2, 0)
        assert j.addresses("uncertain", 10) == ["r2@x.org", "r3@x.org"]


def test_lock_and_readonly_access_during_a_run(tmp_path):
    path = tmp_path / "j.db"
    with Journal(path) as j:
        j.begin()
        j.add([(1, "a@x.org", "a@x.org", "pending", None)])
        j.commit()
        with pytest.raises(JournalLocked):
            Journal(path)
        ro = open_readonly(path)  # report works while a run holds the lock
        assert counts(ro)["pending"] == 1
        with pytest.raises(sqlite3.OperationalError):
            ro.execute("DELETE FROM recipients")
        ro.close()
    Journal(path).close()  # released at close


def test_not_a_journal(tmp_path):
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"x" * 4096)
    with pytest.raises(JournalError):
        Journal(junk)
    other = tmp_path / "other.db"
    sqlite3.connect(other).execute("CREATE TABLE t(x)").connection.commit()
    with pytest.raises(JournalError):
        open_readonly(other)


def test_lock_holds_through_a_symlink(tmp_path):
    # The same database reached by another name (a symlink to it, or to its
    # directory) is the same journal: a second run must not get it.
    (tmp_path / "real").mkdir()
    (tmp_path / "link.db").symlink_to(tmp_path / "real" / "j.db")
    (tmp_path / "dirlink").symlink_to(tmp_path / "real")
    with Journal(tmp_path / "real" / "j.db"):
        with pytest.raises(JournalLocked):
            Journal(tmp_path / "link.db")
        with pytest.raises(JournalLocked):
            Journal(tmp_path / "dirlink" / "j.db")
    with Journal(tmp_path / "link.db"):
        with pytest.raises(JournalLocked):
            Journal(tmp_path / "real" / "j.db")


def test_unopenable_journal_is_a_journal_error(tmp_path):
    # A directory (or a file SQLite cannot open) is a clear JournalError
    # (exit 2 in the command line), not a raw sqlite3 error; no lock is kept.
    (tmp_path / "dir.db").mkdir()
    with pytest.raises(JournalError, match="dir.db"):
        Journal(tmp_path / "dir.db")
    (tmp_path / "dir.db").rmdir()
    with Journal(tmp_path / "dir.db") as j:
        assert j.counts()["pending"] == 0

"""Fault injection for the sink: which faults, how often, and the dice.

:class:`Faults` is the validated configuration (every field off by default);
the sink asks it questions at the points where a real server would fail.
Shares are drawn from one :class:`random.Random` per connection, seeded from
``seed`` and the connection's number, so a given client script sees the
same faults on every run however other connections interleave with it.

====================  ========================================================
``rcpt_refuse``       share of RCPTs answered ``550 5.1.1`` (recipient refused)
``rcpt_defer``        share of RCPTs answered ``451 4.3.0`` (try again later)
``data_reject``       share of messages refused after their data (the final
                      ``.`` or ``BDAT LAST``) with ``data_reject_code``
``data_reject_code``  that code: 554 (default, ``5.6.0``), or any 4xx/5xx,
                      e.g. 451 (``4.3.0``) for a temporary failure
``delay``             seconds each reply is held before it is sent (timers in
                      the loop, replies kept in order; the loop never sleeps)
``drop_after``        close each connection, without a word, right after its
                      Nth accepted message was answered
``drop_in_data``      share of messages during whose content the connection
                      is closed without a reply (after ``354``, or at ``BDAT``)
``reply_421_at``      answer the Nth command of each connection with
                      ``421 4.3.2`` and close
``seed``              makes every share reproducible (None: random)
====================  ========================================================
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Optional

__all__ = ["Faults", "FAULT_COUNTERS"]

# The counter for each fault, in Sink.counts (always present, 0 when off).
FAULT_COUNTERS = (
    "fault_rcpt_refused",
    "fault_rcpt_deferred",
    "fault_data_rejected",
    "fault_delayed",
    "fault_dropped_after",
    "fault_dropped_in_data",
    "fault_421",
)

_ENHANCED = {421: b"4.3.2", 450: b"4.2.0", 451: b"4.3.0", 452: b"4.3.1", 550: b"5.7.1",
             552: b"5.3.4", 554: b"5.6.0"}


def _share(name: str, value: float) -> float:
    value = float(value)
    if not 0.0 <= value <= 1.0:  # also rejects NaN
        raise ValueError("%s must be a share between 0 and 1, got %r" % (name, value))
    return value


def _count(name: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError("%s must be a whole number >= 0 (0: off), got %r" % (name, value))
    return value


@dataclass(frozen=True)
class Faults:
    rcpt_refuse: float = 0.0
    rcpt_defer: float = 0.0
    data_reject: float = 0.0
    data_reject_code: int = 554
    delay: float = 0.0
    drop_after: int = 0
    drop_in_data: float = 0.0
    reply_421_at: int = 0
    seed: Optional[int] = None

    def __post_init__(self) -> None:
        for name in ("rcpt_refuse", "rcpt_defer", "data_reject", "drop_in_data"):
            object.__setattr__(self, name, _share(name, getattr(self, name)))
        if self.rcpt_refuse + self.rcpt_defer > 1.0:
            raise ValueError("rcpt_refuse + rcpt_defer must not exceed 1, got %r + %r"
                             % (self.rcpt_refuse, self.rcpt_defer))
        code = self.data_reject_code
        if isinstance(code, bool) or not isinstance(code, int) or not 400 <= code <= 599:
            raise ValueError("data_reject_code must be a 4xx or 5xx code, got %r" % (code,))
        delay = float(self.delay)
        if not (math.isfinite(delay) and 0.0 <= delay <= 3600.0):
            raise ValueError("delay must be between 0 and 3600 seconds, got %r" % (self.delay,))
        object.__setattr__(self, "delay", delay)
        _count("drop_after", self.drop_after)
        _count("reply_421_at", self.reply_421_at)
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, int)):
            raise ValueError("seed must be an int or None, got %r" % (self.seed,))

    @property
    def active(self) -> bool:
        """Whether anything at all is injected (the sink skips every check if not)."""
        return bool(self.rcpt_refuse or self.rcpt_defer or self.data_reject or self.delay
                    or self.drop_after or self.drop_in_data or self.reply_421_at)

    @property
    def needs_dice(self) -> bool:
        return bool(self.rcpt_refuse or self.rcpt_defer or self.data_reject or self.drop_in_data)

    def rng(self, connection: int) -> random.Random:
        """The dice for the ``connection``-th connection (1-based)."""
        if self.seed is None:
            return random.Random()
        return random.Random("fastsmtplib-sink/%d/%d" % (self.seed, connection))

    def reject_reply(self) -> tuple:
        code = self.data_reject_code
        enh = _ENHANCED.get(code, b"4.0.0" if code < 500 else b"5.0.0")
        return (code, b"%d %s Error: message rejected (injected fault)\r\n" % (code, enh))

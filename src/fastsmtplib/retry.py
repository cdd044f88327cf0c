"""``Retry``: when a message that did not go through is handed to a server again.

A ``Retry`` is immutable.  ``increment()`` records one failed attempt and
returns a *new* ``Retry`` (the old one is unchanged, so one policy object can
be shared by every message and every thread); the new one says whether it is
``exhausted`` and how long to wait before the next attempt (``delay()``).

What may be retried (DESIGN.md §5):

``deferred``       the server said 4yz: try again later;
``not_attempted``  nothing was delivered (the connection was lost, or could
                   not be opened, before the body went out): safe to resend;
``uncertain``      the body went out and no trustworthy reply came.  It may
                   have been delivered, so it is retried only when the caller
                   says so (``retry_uncertain=True``): that may duplicate it.

Never retried: delivered, partial, refused (5yz) and failed (the client
refused the message).

The wait before attempt ``n + 1`` (after ``n`` failures) is
``min(backoff_max, backoff * backoff_factor ** (n - 1))`` with jitter:
``jitter="full"`` picks uniformly in ``[0, wait]`` (spreads a burst of
deferrals best), a float ``j`` in ``[0, 1]`` picks in ``[wait * (1 - j),
wait]`` (bounded), ``jitter=None`` or ``0`` waits exactly ``wait``.  No retry
starts once ``total`` seconds have passed since the first attempt, nor when
its wait would end after that.
"""

from __future__ import annotations

import random as _random
from dataclasses import dataclass, field, replace
from typing import Optional, Tuple, Union

__all__ = ["Retry", "RETRYABLE"]

#: Statuses retried by default (``uncertain`` only with ``retry_uncertain``).
RETRYABLE = frozenset(("deferred", "not_attempted"))


@dataclass(frozen=True)
class Retry:
    """An immutable retry policy plus the history of one message's attempts.

    Args:
        attempts: most attempts in all, the first included (1: never retry).
        backoff: the wait after the first failure, seconds.
        backoff_factor: each further failure multiplies the wait by this.
        backoff_max: the longest wait between two attempts.
        jitter: ``"full"``, a fraction in ``[0, 1]`` (bounded), or None/0.
        total: no attempt starts later than this many seconds after the
            first one (None: no cap).
        retry_uncertain: also retry a message whose body was sent but whose
            reply never came.  It may then be delivered twice.
        history: ``(status, reply)`` of each failed attempt so far (filled by
            ``increment``).
    """

    attempts: int = 3
    backoff: float = 1.0
    backoff_factor: float = 2.0
    backoff_max: float = 60.0
    jitter: Union[str, float, None] = "full"
    total: Optional[float] = 600.0
    retry_uncertain: bool = False
    history: Tuple[Tuple[str, Optional[tuple]], ...] = field(default=(), compare=False)
    #: Seconds from the first attempt to the last failure recorded.
    elapsed: float = field(default=0.0, compare=False)
    #: True once a failure was recorded that may not be retried.
    refused: bool = field(default=False, compare=False)

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError("attempts must be at least 1")
        if self.backoff < 0 or self.backoff_max < 0 or self.backoff_factor < 1:
            raise ValueError("backoff and backoff_max must be >= 0, backoff_factor >= 1")
        if self.total is not None and self.total < 0:
            raise ValueError("total must be >= 0 or None")
        j = self.jitter
        if not (j is None or j == "full" or (isinstance(j, (int, float)) and 0 <= j <= 1)):
            raise ValueError('jitter must be "full", a fraction in [0, 1], or None')

    @classmethod
    def never(cls) -> "Retry":
        """A policy that never retries."""
        return cls(attempts=1)

    def retryable(self, status: str) -> bool:
        """Whether a message that ended in ``status`` may be sent again by this policy."""
        status = str(status)
        return status in RETRYABLE or (status == "uncertain" and self.retry_uncertain)

    @property
    def failures(self) -> int:
        """Failed attempts recorded so far."""
        return len(self.history)

    @property
    def exhausted(self) -> bool:
        """No further attempt: out of attempts, out of time, or not retryable."""
        if self.refused or len(self.history) >= self.attempts:
            return True
        return self.total is not None and self.history != () and self.elapsed + self._wait() > self.total

    def increment(self, status: str, reply: Optional[tuple] = None, *, elapsed: float = 0.0) -> "Retry":
        """Record one failed attempt; return the new policy (check ``exhausted``).

        ``elapsed`` is the time since the message's first attempt.
        """
        return replace(
            self,
            history=self.history + ((str(status), reply),),
            elapsed=elapsed,
            refused=self.refused or not self.retryable(status),
        )

    def _wait(self) -> float:
        n = len(self.history)
        if n == 0:
            return 0.0
        return min(self.backoff_max, self.backoff * self.backoff_factor ** (n - 1))

    def delay(self, rng: Optional[_random.Random] = None) -> float:
        """Seconds to wait before the next attempt, jitter applied."""
        wait = self._wait()
        j = self.jitter
        if not wait or not j:
            return wait
        r = (rng or _random).random()
        if j == "full":
            return wait * r
        return wait * (1.0 - float(j) * r)

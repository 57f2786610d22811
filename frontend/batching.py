"""Batching policy: how many queries go into the next batch, and which ones.

Pure policy, no I/O: nothing here knows about sockets, the event loop or HTTP, so every
rule can be tested with a fake clock. The dispatcher asks ``BatchSizer.size`` each time a
replica has room for another batch, pops that many live queries off a ``BatchQueue``, and
reports the batch's latency back through ``BatchSizer.observe`` when the answer arrives.

Sizing is AIMD (additive increase, multiplicative decrease), like TCP's congestion window:

* a batch that took longer than the latency budget shrinks the size multiplicatively
  (``x decrease``, never below 1) -- if it was nearly full (at least ``decrease`` x the
  size): a small batch that was slow was slowed by something else (a pause of the
  process, a busy core), and cutting the size to a fraction of it would leave batches too
  small to keep up with the load, which makes every batch slower still;
* a *full* batch (as large as the current size allowed) that finished within budget grows
  it by ``increase``; a partial batch says nothing about larger sizes, so it changes nothing;
* while a backlog of at least a full batch is still waiting when such a batch returns, the
  size grows by a quarter instead (at least ``increase``): under heavy load one slow batch
  must not leave the size stuck far below what the queue needs until the SLO is lost.

The budget is a fraction of the app's SLO: the rest of the SLO is left for queueing and for
the HTTP and network hops. The latency the dispatcher reports is the batch's service time
on its replica: from when it was sent, or from when the batch ahead of it on the same
replica was answered (waiting behind another batch is queueing, not the cost of the size). A model deployed with a fixed ``batch_size > 0`` is never resized.
There is no waiting for a batch to fill: whatever is queued when a replica has room is sent.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from typing import Protocol, TypeVar

__all__ = ["BatchSizer", "BatchQueue", "Expirable", "Admission"]

Clock = Callable[[], float]


class BatchSizer:
    """AIMD batch size for one model version (or a fixed size when ``fixed > 0``).

    Runs on the dispatcher's path: ``size`` before each batch is cut, ``observe`` once per
    answered batch. Latencies are in seconds.
    """

    __slots__ = ("fixed", "budget", "increase", "decrease", "max_size", "_size", "_clock")

    def __init__(
        self,
        latency_slo_micros: int,
        *,
        fixed: int = 0,
        budget_fraction: float = 0.5,
        initial: int = 1,
        increase: float = 1.0,
        decrease: float = 0.75,
        max_size: int = 1024,
        clock: Clock = time.monotonic,
    ) -> None:
        if not 0.0 < decrease < 1.0:
            raise ValueError("decrease must be in (0, 1)")
        if increase <= 0:
            raise ValueError("increase must be positive")
        self.fixed = int(fixed) if fixed and fixed > 0 else 0
        self.budget = max(latency_slo_micros, 1) * 1e-6 * budget_fraction
        self.increase = float(increase)
        self.decrease = float(decrease)
        self.max_size = max(int(max_size), 1)
        self._size = float(min(max(initial, 1), self.max_size))
        self._clock = clock

    @property
    def size(self) -> int:
        """How many queries the next batch may hold."""
        return self.fixed or int(self._size)

    def set_slo(self, latency_slo_micros: int, budget_fraction: float = 0.5) -> None:
        """Re-derive the budget, e.g. when the app served by this model changes."""
        self.budget = max(latency_slo_micros, 1) * 1e-6 * budget_fraction

    def started(self) -> float:
        """A timestamp to hand back to ``finished`` (read from the injected clock)."""
        return self._clock()

    def finished(self, batch_size: int, started_at: float) -> None:
        """``observe`` a batch that started at ``started_at`` and is answered now."""
        self.observe(batch_size, self._clock() - started_at)

    def observe(self, batch_size: int, latency: float, backlog: int = 0) -> None:
        """Adapt to one answered batch of ``batch_size`` queries that took ``latency`` s,
        with ``backlog`` queries still waiting for a batch."""
        if self.fixed:
            return
        if latency > self.budget:
            if batch_size >= self._size * self.decrease:
                self._size = max(1.0, min(self._size, float(batch_size)) * self.decrease)
        elif batch_size >= int(self._size):
            step = self.increase
            if backlog >= batch_size:
                step = max(step, self._size * 0.25)
            self._size = min(float(self.max_size), self._size + step)


class Admission:
    """Admission control for one model version: whether a query can still be answered in
    time, from the measured service rate, and whether the queue is standing (overload).

    Two rules, both from what was measured on this model's replicas:

    * **Deadline.** A request of ``n`` queries is admitted only if, behind the ``ahead``
      queries already queued or in flight, its last query is predicted to be answered before
      its deadline: ``(ahead + n) / (replicas x rate) + batch_time``. A batch for a busy
      replica is cut only of queries that can still be answered within their deadline after
      ``batch_time`` (``cutoff``). Without measurements (a model's first batches) everything
      is admitted, and so is a request for an idle model, and an idle replica gets every
      live query: one slow batch (a pause, a cold cache) must not leave an estimate that
      refuses all work, and so measures nothing new, forever.
    * **Standing queue (CoDel's idea).** A queue that stays above ``target`` delay for a whole
      ``interval`` is no longer absorbing a burst: the model is overloaded, and every query
      admitted beyond ``target`` would only wait, so while that lasts the predicted wait must
      also stay within ``target`` (``target`` = ``target_batches`` batch times, at least
      ``min_target``). The queue so stays short, goodput stays at capacity, answers stay
      fast, and when the load stops the next query waits behind a couple of batches, not
      behind the SLO's worth of queries nobody may be waiting for. The overload ends when
      the queue is short *and* nothing was refused for an ``interval`` (a short queue kept
      short by refusing is still an overload).

    Times in seconds; the rate is queries per second per replica, an EWMA over batches.
    """

    __slots__ = (
        "alpha", "min_target", "target_batches", "interval", "batch_time", "rate",
        "overloaded", "_above_since", "_last_shed",
    )  # fmt: skip

    def __init__(
        self,
        *,
        alpha: float = 0.2,
        min_target: float = 0.005,
        target_batches: float = 2.0,
        interval: float = 0.1,
    ) -> None:
        self.alpha = alpha
        self.min_target = min_target
        self.target_batches = target_batches
        self.interval = interval
        self.batch_time = 0.0  # EWMA of a batch's service time (0: nothing measured yet)
        self.rate = 0.0  # EWMA of queries per second per replica
        self.overloaded = False
        self._above_since: float | None = None
        self._last_shed = float("-inf")

    @property
    def target(self) -> float:
        return max(self.min_target, self.target_batches * self.batch_time)

    def observe(self, batch_size: int, service_time: float) -> None:
        """One answered batch and its service time on its replica."""
        if service_time <= 0.0:
            service_time = 1e-6
        rate = batch_size / service_time
        if self.batch_time == 0.0:
            self.batch_time, self.rate = service_time, rate
        else:
            a = self.alpha
            self.batch_time += a * (service_time - self.batch_time)
            self.rate += a * (rate - self.rate)

    def dequeued(self, sojourn: float, now: float) -> None:
        """The oldest query of a batch being sent waited ``sojourn`` s in the queue."""
        if sojourn < self.target:
            self._above_since = None
            if now - self._last_shed >= self.interval:
                self.overloaded = False  # a short queue that nobody was turned away from
        elif self._above_since is None:
            self._above_since = now
        elif now - self._above_since >= self.interval:
            self.overloaded = True

    def wait(self, ahead: int, n: int, replicas: int) -> float:
        """Predicted seconds until the last of ``n`` new queries is answered (0: unknown)."""
        if self.rate <= 0.0 or replicas <= 0:
            return 0.0
        return (ahead + n) / (replicas * self.rate) + self.batch_time

    def admits(self, ahead: int, n: int, replicas: int, time_left: float, now: float) -> bool:
        """Whether ``n`` queries with ``time_left`` s to their deadline should be queued
        (``now``: when; a refusal keeps the overload state on)."""
        if ahead == 0:
            return True  # an idle model: the only way to learn that it got faster again
        wait = self.wait(ahead, n, replicas)
        if wait <= time_left and not (self.overloaded and wait > self.target + self.batch_time):
            return True
        self._last_shed = now
        return False

    def cutoff(self, now: float, idle: bool = False) -> float:
        """Queries whose deadline is before this cannot be answered in time if sent now to a
        replica (``idle``: one with nothing in flight, which gets every live query: a probe
        that keeps a stale estimate from refusing work forever)."""
        return now if idle else now + self.batch_time


class Expirable(Protocol):
    """What the queue needs from an item: a deadline and whether it was already answered."""

    deadline: float
    done: bool


T = TypeVar("T", bound=Expirable)


class BatchQueue(deque[T]):
    """FIFO of queries waiting for a replica of one model version: a deque (its length,
    truth and ``extend`` are the deque's own, C calls on the dispatcher's path).

    ``pop_batch`` cuts the next batch: up to ``n`` items that are neither answered nor past
    their deadline. Expired items it meets are returned separately so the caller can answer
    them with the default output. ``push_front`` puts the queries of a lost batch back
    ahead of everything else, in their original order.
    """

    __slots__ = ()

    push = deque.append

    def push_front(self, items: list[T]) -> None:
        self.extendleft(reversed(items))

    def pop_batch(self, n: int, cutoff: float) -> tuple[list[T], list[T], int]:
        """Up to ``n`` live items (oldest first), the expired ones met on the way (deadline
        at or before ``cutoff``), and how many answered items were discarded."""
        batch: list[T] = []
        expired: list[T] = []
        skipped = 0
        while self and len(batch) < n:
            item = self.popleft()
            if item.done:
                skipped += 1
            elif item.deadline <= cutoff:
                expired.append(item)
            else:
                batch.append(item)
        return batch, expired, skipped

    def drop_answered(self) -> int:
        """Discard answered items at the head (they pile up while no replica takes them);
        returns how many."""
        dropped = 0
        while self and self[0].done:
            self.popleft()
            dropped += 1
        return dropped

    def drain(self) -> list[T]:
        """Remove and return every unanswered item."""
        out = [item for item in self if not item.done]
        self.clear()
        return out

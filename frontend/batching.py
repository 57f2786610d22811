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
from collections.abc import Callable, Iterable
from typing import Generic, Protocol, TypeVar

__all__ = ["BatchSizer", "BatchQueue", "Expirable"]

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


class Expirable(Protocol):
    """What the queue needs from an item: a deadline and whether it was already answered."""

    deadline: float
    done: bool


T = TypeVar("T", bound=Expirable)


class BatchQueue(Generic[T]):
    """FIFO of queries waiting for a replica of one model version.

    ``pop_batch`` cuts the next batch: up to ``n`` items that are neither answered nor past
    their deadline. Expired items it meets are returned separately so the caller can answer
    them with the default output. ``push_front`` puts the queries of a lost batch back
    ahead of everything else, in their original order.
    """

    __slots__ = ("_items",)

    def __init__(self) -> None:
        self._items: deque[T] = deque()

    def __len__(self) -> int:
        return len(self._items)

    def __bool__(self) -> bool:
        return bool(self._items)

    def push(self, item: T) -> None:
        self._items.append(item)

    def extend(self, items: Iterable[T]) -> None:
        self._items.extend(items)

    def push_front(self, items: list[T]) -> None:
        self._items.extendleft(reversed(items))

    def pop_batch(self, n: int, now: float) -> tuple[list[T], list[T]]:
        """Up to ``n`` live items (oldest first), and the expired ones skipped on the way."""
        items = self._items
        batch: list[T] = []
        expired: list[T] = []
        while items and len(batch) < n:
            item = items.popleft()
            if item.done:
                continue
            if item.deadline <= now:
                expired.append(item)
            else:
                batch.append(item)
        return batch, expired

    def drop_answered(self) -> None:
        """Discard answered items at the head (they pile up while no replica takes them)."""
        items = self._items
        while items and items[0].done:
            items.popleft()

    def drain(self) -> list[T]:
        """Remove and return every unanswered item."""
        out = [item for item in self._items if not item.done]
        self._items.clear()
        return out

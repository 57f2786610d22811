"""The prediction cache: model answers by (model version, exact input bytes), bounded by bytes.

Clipper's model abstraction layer kept one; here each app that asks for one
(``set_prediction_cache``, ``cache_mb`` of its selection; off by default, as in Clipper) has
its own ``PredictionCache``, used by ``schooner.frontend.selection.Router``:

* **Key**: the model version that answered and the input exactly as it went on the wire
  (the bytes a replica would have been sent), so equal inputs of another encoding in JSON
  (``1`` and ``1.0`` for doubles) are one entry, and two versions never share one.
* **Bound**: the sum of the entries' sizes (input bytes + answer characters +
  ``ENTRY_OVERHEAD``) stays at or under ``max_bytes``; an entry larger than the whole bound is
  not kept. Eviction is LRU: a hit makes an entry the newest, the oldest goes first.
* **Invalidation**: the router empties the cache when the model versions the app's queries
  go to change (``set_model_version``, a new split), so no answer of an old version is served.
* **In flight**: N identical queries pending together make one model call (the router keeps
  the waiting ones beside the cache and answers them all with the one answer).
* Only model answers are kept, never default outputs (a shed or late query is not an answer).

Counts (hits, misses, coalesced, evictions, invalidated entries) are exported by the
frontend's metrics as ``schooner_frontend_cache_events_total{app, event}``. No I/O; runs
on the event loop.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable

__all__ = ["PredictionCache", "ENTRY_OVERHEAD"]

ENTRY_OVERHEAD = 160  # bytes an entry costs beyond its input and answer (dict slot, key tuple)


class PredictionCache:
    """LRU map (key -> answer text) whose entries' sizes sum to at most ``max_bytes``."""

    __slots__ = ("max_bytes", "bytes", "_entries", "hits", "misses", "evictions")

    def __init__(self, max_bytes: int) -> None:
        if max_bytes <= 0:
            raise ValueError("max_bytes must be positive")
        self.max_bytes = max_bytes
        self.bytes = 0
        self._entries: OrderedDict[Hashable, tuple[str, int]] = OrderedDict()
        self.hits = self.misses = self.evictions = 0

    def __len__(self) -> int:
        return len(self._entries)

    @staticmethod
    def size(key: Hashable, output: str) -> int:
        data = key[-1] if isinstance(key, tuple) and key else b""
        length = len(data) if isinstance(data, (bytes, str)) else 0
        return length + len(output) + ENTRY_OVERHEAD

    def get(self, key: Hashable) -> str | None:
        entry = self._entries.get(key)
        if entry is None:
            self.misses += 1
            return None
        self._entries.move_to_end(key)
        self.hits += 1
        return entry[0]

    def put(self, key: Hashable, output: str) -> int:
        """Keep ``output`` for ``key``; returns how many entries were evicted to make room."""
        size = self.size(key, output)
        old = self._entries.pop(key, None)
        if old is not None:
            self.bytes -= old[1]
        if size > self.max_bytes:
            return 0
        evicted = 0
        entries = self._entries
        while self.bytes + size > self.max_bytes and entries:
            _, (_, dropped) = entries.popitem(last=False)
            self.bytes -= dropped
            evicted += 1
        entries[key] = (output, size)
        self.bytes += size
        self.evictions += evicted
        return evicted

    def clear(self) -> int:
        """Drop every entry; returns how many there were."""
        n = len(self._entries)
        self._entries.clear()
        self.bytes = 0
        return n

    def describe(self) -> dict[str, int]:
        return {
            "entries": len(self._entries), "bytes": self.bytes, "max_bytes": self.max_bytes,
            "hits": self.hits, "misses": self.misses, "evictions": self.evictions,
        }  # fmt: skip

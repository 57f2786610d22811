"""The state several frontends share: ``StateStore`` replicated through Redis.

One frontend keeps its state in its own SQLite file (``StateStore.open``). Several (the
frontend pods of a Kubernetes cluster) share one Redis, and each keeps what it always had:
the whole state in memory for the request path, loaded into a private in-memory SQLite.

* **An operation log.** Every mutation ``StateStore`` makes is a list of SQL statements
  (its ``_write``); here that list is appended to a Redis list, ``<prefix>:log``, and then
  applied to the frontend's own SQLite and memory. A frontend starting (or restarting)
  replays the log from the start, so the state outlives every frontend pod; Redis keeps the
  log on its volume (append-only file), so it outlives the Redis pod too.
* **Serializable mutations.** A mutation is validated against the state as of the log's
  end: the append is a ``WATCH``/``MULTI`` transaction that only succeeds if nobody appended
  since this frontend last caught up; otherwise it catches up and validates again (up to
  ``MAX_RETRIES`` times), so two frontends adding the same app give one success and one 409.
* **Every frontend sees every change.** ``poll`` (the frontend runs it every
  ``POLL_INTERVAL_S`` on a worker thread) fetches entries appended by the others; ``apply``
  applies them on the event loop and reloads memory; the frontend then configures the
  dispatcher for models that appeared or went.
* **Query ids** are reserved with ``INCRBY`` on ``<prefix>:next_query_id``: unique across
  every frontend and restart, atomically.
* **What a selection policy learned** (saved after each feedback, far more often than the
  rest changes) is not logged: each frontend saves its own in the hash
  ``<prefix>:policy_state`` (last writer wins) and loads it at start; a mutation that resets
  an app's policy clears its entry in the same transaction as its log entry.

The password comes from ``SCHOONER_STATE_PASSWORD`` (a Kubernetes Secret), never argv.
Limits: one log entry is at most ``MAX_ENTRY_BYTES``; the log grows by one entry per
management operation (operations are rare; it is not compacted).
"""

from __future__ import annotations

import json
import logging
import random
import sqlite3
import time
from collections.abc import Callable
from typing import Any

from schooner.frontend import state as state_module
from schooner.frontend.state import Conflict, StateError, StateStore
from schooner.runtime.errors import MissingExtra

__all__ = ["RedisStateStore", "StateUnavailable", "POLL_INTERVAL_S", "parse_address"]

log = logging.getLogger(__name__)

POLL_INTERVAL_S = 0.5  # how soon a frontend sees another's change
MAX_RETRIES = 20
_BACKOFF_S = 0.005  # a retry waits up to this times its number
MAX_ENTRY_BYTES = 1024 * 1024
_TIMEOUT_S = 5.0
# StateStore's operations that write; each runs against the log's end (see the docstring)
_MUTATIONS = ("add_app", "delete_app", "set_on_overload", "set_selection", "add_model",
              "delete_model", "set_model_version", "link", "unlink")  # fmt: skip
_POLICY_RESET = "DELETE FROM policy_state WHERE app_name = ?"


class StateUnavailable(StateError):
    """The shared database does not answer; the operation was not made."""

    status = 503
    error = "state database unavailable"


class _Stale(Conflict):
    """Another frontend appended first (caught and retried by the mutation wrapper)."""


def parse_address(address: str) -> tuple[str, int]:
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"expected HOST:PORT, got {address!r}")
    return host.strip("[]"), int(port)


class RedisStateStore(StateStore):
    """``StateStore`` whose writes go through an operation log in Redis (module docstring)."""

    def __init__(self, db: sqlite3.Connection, client: Any, prefix: str) -> None:
        super().__init__(db)
        self._redis = client
        self._log_key = f"{prefix}:log"
        self._ids_key = f"{prefix}:next_query_id"
        self._policy_key = f"{prefix}:policy_state"
        self._applied = 0  # log entries applied here
        self.address = ""

    @classmethod
    def connect(cls, address: str, password: str | None = None,  # type: ignore[override]
                prefix: str = "schooner") -> RedisStateStore:  # fmt: skip
        """Connect to Redis at ``HOST:PORT`` and replay the log."""
        try:
            import redis
        except ImportError as exc:
            raise MissingExtra(
                "--state-redis needs the Redis client: pip install schooner[redis]"
            ) from exc
        host, port = parse_address(address)
        client = redis.Redis(host=host, port=port, password=password or None,
                             socket_timeout=_TIMEOUT_S, socket_connect_timeout=_TIMEOUT_S)  # fmt: skip
        db = sqlite3.connect(":memory:", isolation_level=None, check_same_thread=False)
        db.executescript(state_module._SCHEMA)
        store = cls(db, client, prefix)
        store.address = address
        try:
            start, entries = store.poll()
        except StateUnavailable as exc:
            db.close()
            raise OSError(str(exc)) from None
        store.apply(start, entries)
        learned = store._call(lambda: store._redis.hgetall(store._policy_key))
        for app, text in learned.items():
            if app.decode() in store.apps:
                store._save_locally(app.decode(), text.decode())
        return store

    def close(self) -> None:
        super().close()
        self._redis.close()

    # ------------------------------------------------------------------ catching up

    def poll(self) -> tuple[int, list[bytes]]:
        """The log entries after those applied here, and the index of the first (may run
        on a worker thread: it reads nothing ``apply`` changes but the index)."""
        start = self._applied

        def fetch() -> tuple[int, list[bytes]]:
            with self._redis.pipeline(transaction=True) as pipe:
                length, entries = pipe.llen(self._log_key).lrange(self._log_key, start, -1)\
                    .execute()
            return int(length), list(entries)

        length, entries = self._call(fetch)
        if length < start:
            raise self._lost(length)
        return start, entries

    def _lost(self, length: int) -> StateUnavailable:
        return StateUnavailable(
            f"the shared state's log at {self.address} holds {length} changes but this frontend "
            f"applied {self._applied}: the database lost data (restore it, or restart every "
            "frontend to start from what it holds)"
        )

    def apply(self, start: int, entries: list[bytes]) -> bool:
        """Apply entries fetched by ``poll`` (on the thread that owns the state); True if
        the state changed."""
        fresh = entries[self._applied - start:] if self._applied >= start else []
        if not fresh:
            return False
        with self._db:
            self._db.execute("BEGIN")
            for entry in fresh:
                for sql, args in json.loads(entry):
                    self._db.execute(sql, args)
        self._applied += len(fresh)
        self.apps.clear()
        self.models.clear()
        self._load()
        return True

    def sync(self) -> bool:
        return self.apply(*self.poll())

    # ------------------------------------------------------------------ writing

    def _write(self, *statements: tuple[str, tuple[object, ...]]) -> None:
        entry = json.dumps([[sql, list(args)] for sql, args in statements])
        if len(entry) > MAX_ENTRY_BYTES:
            raise state_module.Invalid(f"one change is at most {MAX_ENTRY_BYTES} bytes")
        import redis

        def append() -> None:
            with self._redis.pipeline() as pipe:
                pipe.watch(self._log_key)
                length = pipe.llen(self._log_key)
                if length < self._applied:
                    raise self._lost(length)
                if length != self._applied:
                    raise _Stale("the state changed on another frontend; retry")
                pipe.multi()
                pipe.rpush(self._log_key, entry)
                for sql, args in statements:
                    if sql == _POLICY_RESET:
                        pipe.hdel(self._policy_key, *args)
                pipe.execute()

        try:
            self._call(append)
        except redis.WatchError:
            raise _Stale("the state changed on another frontend; retry") from None
        super()._write(*statements)
        self._applied += 1

    def _call(self, operation: Callable[[], Any]) -> Any:
        import redis

        try:
            return operation()
        except redis.WatchError:
            raise
        except redis.RedisError as exc:
            raise StateUnavailable(
                f"the state database at {self.address} does not answer: {type(exc).__name__}"
            ) from None

    def save_policy_state(self, name: str, state: str) -> None:
        """What the app's selection policy learned: this frontend's, in the shared hash (not
        the log: see the module docstring)."""
        self.app(name)
        self._call(lambda: self._redis.hset(self._policy_key, name, state))
        self._save_locally(name, state)

    def _save_locally(self, name: str, state: str) -> None:
        StateStore._write(self, ("INSERT OR REPLACE INTO policy_state VALUES (?, ?)",
                                 (name, state)))  # fmt: skip
        # (StateStore.policy_state arrives with model selection; getattr keeps this importable
        # before it)
        getattr(self, "policy_state")[name] = state  # noqa: B009

    def reserve_query_ids(self, count: int) -> int:
        if count <= 0:
            raise ValueError("count must be positive")
        end = int(self._call(lambda: self._redis.incrby(self._ids_key, count)))
        return end - count


def _mutation(name: str) -> Callable[..., Any]:
    base = getattr(StateStore, name)

    def run(self: RedisStateStore, *args: Any, **kwargs: Any) -> Any:
        for attempt in range(MAX_RETRIES):
            self.sync()
            try:
                return base(self, *args, **kwargs)
            except _Stale:
                # another frontend wrote first: back off a little (randomly, so racing
                # writers spread out), catch up and validate again
                time.sleep(random.uniform(0, _BACKOFF_S * (attempt + 1)))
        raise Conflict(f"the state kept changing on other frontends; {name} was not made")

    run.__name__ = name
    run.__doc__ = base.__doc__
    return run


for _name in _MUTATIONS:
    if hasattr(StateStore, _name):
        setattr(RedisStateStore, _name, _mutation(_name))

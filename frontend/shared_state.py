"""The state several frontends share: ``StateStore`` replicated through an operation log.

One frontend keeps its state in its own SQLite file (``StateStore.open``). Several share
it in one of two ways, both ``SharedStateStore``s that keep what a frontend always had (the
whole state in memory for the request path) and differ only in where the log lives:

* ``RedisStateStore``: the frontend pods of a Kubernetes cluster share one Redis, and each
  replays the log into a private in-memory SQLite;
* ``SqliteSharedStateStore``: the workers of one frontend on one machine (``--workers N``)
  share the SQLite state file itself, in WAL mode (below).

What follows describes Redis; the SQLite store differs where said.

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

**The SQLite file of a frontend's workers.** The file's tables stay the state (a frontend
run with one worker, or earlier, reads the same file), and an ``oplog`` table beside them
numbers the changes (``rowid``). A mutation's validate-and-append is one ``BEGIN
IMMEDIATE`` transaction: if the log's end is not what this worker last applied it is stale
(caught up and validated again, as with Redis), else its statements and its log entry are
written together. ``poll`` (every ``SqliteSharedStateStore.poll_interval_s``, 5 ms, on the
event loop: one indexed read of a local file) finds entries past the worker's; ``apply``
reloads memory from the tables in one read transaction. Query ids: ``StateStore``'s own
``BEGIN IMMEDIATE`` reservation in the same file. Policy state: written to its table
without a log entry (last writer wins, read by the others at their next reload). Each worker
records what it has applied in the ``workers`` table, so that the worker serving the
management API can answer a change only once every live worker has it (``lagging``).
"""

from __future__ import annotations

import json
import logging
import os
import random
import sqlite3
import time
from abc import ABCMeta, abstractmethod
from collections.abc import Callable
from pathlib import Path
from typing import Any

from schooner.frontend import state as state_module
from schooner.frontend.state import Conflict, StateError, StateStore
from schooner.runtime.errors import MissingExtra

__all__ = [
    "SharedStateStore", "RedisStateStore", "SqliteSharedStateStore", "StateUnavailable",
    "POLL_INTERVAL_S", "parse_address",
]  # fmt: skip

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


def _mutation(name: str) -> Callable[..., Any]:
    base = getattr(StateStore, name)

    def run(self: Any, *args: Any, **kwargs: Any) -> Any:
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


class SharedStateStore(StateStore, metaclass=ABCMeta):
    """What both shared stores have: an operation log that ``poll`` reads past
    ``_applied`` and ``apply`` catches up with, and mutations validated against the log's
    end (retried when another process appended first). Subclasses say how."""

    poll_interval_s = POLL_INTERVAL_S  # how often the frontend polls
    poll_in_thread = True  # poll on a worker thread (it may wait on the network)

    def __init__(self, db: sqlite3.Connection) -> None:
        super().__init__(db)
        self._applied = 0  # log entries (Redis) or the last log rowid (SQLite) applied here

    @property
    def applied(self) -> int:
        return self._applied

    @abstractmethod
    def poll(self) -> tuple[int, list[bytes]]:
        """Where the log entries not applied here start, and those entries (a read only)."""

    @abstractmethod
    def apply(self, start: int, entries: list[bytes]) -> bool:
        """Apply ``entries`` (from ``poll``) here; whether anything changed."""

    def sync(self) -> bool:
        return self.apply(*self.poll())

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for name in _MUTATIONS:
            if hasattr(StateStore, name) and name not in cls.__dict__:
                setattr(cls, name, _mutation(name))


class RedisStateStore(SharedStateStore):
    """``StateStore`` whose writes go through an operation log in Redis (module docstring)."""

    def __init__(self, db: sqlite3.Connection, client: Any, prefix: str) -> None:
        super().__init__(db)
        self._redis = client
        self._log_key = f"{prefix}:log"
        self._ids_key = f"{prefix}:next_query_id"
        self._policy_key = f"{prefix}:policy_state"
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


_SHARED_SCHEMA = """
CREATE TABLE IF NOT EXISTS oplog (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    entry TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS workers (
    idx INTEGER PRIMARY KEY,
    pid INTEGER NOT NULL,
    applied INTEGER NOT NULL
);
"""
_BUSY_TIMEOUT_MS = 5000  # a writer waits this long for another's transaction


class SqliteSharedStateStore(SharedStateStore):
    """The state file shared by the workers of one frontend (module docstring)."""

    poll_interval_s = 0.005
    poll_in_thread = False

    def __init__(self, db: sqlite3.Connection, worker: int | None) -> None:
        super().__init__(db)
        self.worker = worker

    @classmethod
    def open(cls, path: str | Path, worker: int | None = None) -> SqliteSharedStateStore:  # type: ignore[override]
        """Open (creating if needed) the state file at ``path`` and load it; ``worker``:
        this process's worker number, recorded with what it has applied."""
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False,
                             timeout=_BUSY_TIMEOUT_MS / 1000)  # fmt: skip
        db.execute(f"PRAGMA busy_timeout={_BUSY_TIMEOUT_MS}")
        # Workers starting together race to switch a new file to WAL; SQLite answers the
        # loser "database is locked" at once (no busy wait for a journal-mode change), so
        # it tries again until the busy timeout has passed.
        deadline = time.monotonic() + _BUSY_TIMEOUT_MS / 1000
        while True:
            try:
                db.execute("PRAGMA journal_mode=WAL")
                break
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    db.close()
                    raise
                time.sleep(0.01)
        db.execute("PRAGMA synchronous=NORMAL")
        with db:
            db.execute("BEGIN IMMEDIATE")  # one worker creates the tables at a time
            for statement in (state_module._SCHEMA + _SHARED_SCHEMA).split(";"):
                if statement.strip():
                    db.execute(statement)
        store = cls(db, worker)
        store._reload()
        if worker is not None:
            StateStore._write(store, ("INSERT OR REPLACE INTO workers VALUES (?, ?, ?)",
                                      (worker, os.getpid(), store._applied)))  # fmt: skip
        return store

    def _reload(self) -> None:
        """Memory from the tables, and the log position they are at, in one snapshot."""
        db = self._db
        with db:
            db.execute("BEGIN")
            (last,) = db.execute("SELECT coalesce(max(id), 0) FROM oplog").fetchone()
            self.apps.clear()
            self.models.clear()
            self._load()
        self._applied = int(last)

    # ------------------------------------------------------------------ catching up

    def poll(self) -> tuple[int, list[bytes]]:
        """The log entries past this worker's position (on the event loop: a local read)."""
        rows = self._db.execute("SELECT entry FROM oplog WHERE id > ? ORDER BY id",
                                (self._applied,)).fetchall()  # fmt: skip
        return self._applied, [row[0].encode() for row in rows]

    def apply(self, start: int, entries: list[bytes]) -> bool:
        """Reload from the tables if the log moved past ``start`` (True: it changed)."""
        if not entries or start != self._applied:
            return False
        self._reload()
        self._report()
        return True

    def _report(self) -> None:
        if self.worker is not None:
            StateStore._write(self, ("UPDATE workers SET applied = ?, pid = ? WHERE idx = ?",
                                     (self._applied, os.getpid(), self.worker)))  # fmt: skip

    def lagging(self, position: int) -> list[int]:
        """The live workers that have not applied the log up to ``position`` yet."""
        rows = self._db.execute("SELECT idx, pid FROM workers WHERE applied < ?",
                                (position,)).fetchall()  # fmt: skip
        return [idx for idx, pid in rows if _alive(pid)]

    # ------------------------------------------------------------------ writing

    def _write(self, *statements: tuple[str, tuple[object, ...]]) -> None:
        entry = json.dumps([[sql, list(args)] for sql, args in statements])
        if len(entry) > MAX_ENTRY_BYTES:
            raise state_module.Invalid(f"one change is at most {MAX_ENTRY_BYTES} bytes")
        db = self._db
        with db:
            db.execute("BEGIN IMMEDIATE")
            (last,) = db.execute("SELECT coalesce(max(id), 0) FROM oplog").fetchone()
            if last != self._applied:
                raise _Stale("the state changed on another worker; retry")
            for sql, args in statements:
                db.execute(sql, args)
            cursor = db.execute("INSERT INTO oplog (entry) VALUES (?)", (entry,))
        self._applied = int(cursor.lastrowid or 0)
        self._report()

    def announce(self, notice: dict[str, Any]) -> int:
        """Append a notice for the other workers (what is not state: replicas a manager
        says are starting); returns its log position. Changes no table."""
        entry = json.dumps({"notice": notice, "worker": self.worker})
        if len(entry) > MAX_ENTRY_BYTES:
            raise state_module.Invalid(f"one notice is at most {MAX_ENTRY_BYTES} bytes")
        with self._db:
            self._db.execute("BEGIN IMMEDIATE")
            cursor = self._db.execute("INSERT INTO oplog (entry) VALUES (?)", (entry,))
        return int(cursor.lastrowid or 0)

    def notices(self, entries: list[bytes]) -> list[dict[str, Any]]:
        """The other workers' notices among polled entries."""
        found = []
        for entry in entries:
            if entry.startswith(b"{"):
                try:
                    decoded = json.loads(entry)
                except ValueError:
                    continue
                if decoded.get("worker") != self.worker and isinstance(decoded.get("notice"),
                                                                       dict):  # fmt: skip
                    found.append(decoded["notice"])
        return found

    def save_policy_state(self, name: str, state: str) -> None:
        """What the app's selection policy learned: written without a log entry (last
        writer wins; the other workers read it at their next reload)."""
        self.app(name)
        StateStore._write(self, ("INSERT OR REPLACE INTO policy_state VALUES (?, ?)",
                                 (name, state)))  # fmt: skip
        self.policy_state[name] = state


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True

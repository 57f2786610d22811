"""What the frontend must not forget: apps, models, links and current versions, in SQLite.

The whole state is small, so it lives in memory (plain dicts the request path reads with no
I/O) and every mutation is written through to the SQLite file before the management call
returns. ``StateStore.open`` loads everything at start-up, so a restarted frontend serves the
same apps at once; connected replicas are runtime state and are not stored.

Mutations raise ``StateError`` subclasses that carry the HTTP status the management API
answers with (404 unknown, 409 already exists, 400 invalid).
"""

from __future__ import annotations

import itertools
import json
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from schooner.runtime.errors import SchoonerError
from schooner.runtime.wire import InputType

__all__ = [
    "App", "Model", "StateStore", "StateError", "NotFound", "Conflict", "Invalid",
    "OVERLOAD_ANSWERS",
]  # fmt: skip

# What an app answers a query it sheds under overload with: its default output and the
# reason (Clipper's way; the default), or HTTP 503 with Retry-After.
OVERLOAD_ANSWERS = ("default", "503")


class StateError(SchoonerError):
    """A management operation that the stored state refuses. ``status`` is its HTTP code."""

    status = 400
    error = "invalid request"


class NotFound(StateError):
    status = 404
    error = "not found"


class Conflict(StateError):
    status = 409
    error = "conflict"


class Invalid(StateError):
    status = 400
    error = "invalid request"


@dataclass(slots=True)
class App:
    name: str
    input_type: InputType
    default_output: str
    latency_slo_micros: int
    linked_model: str | None = None
    on_overload: str = "default"  # one of OVERLOAD_ANSWERS
    # model selection and prediction cache (schooner.frontend.selection.normalize); None:
    # the linked model's current version answers, uncached (today's path)
    selection: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, object]:
        return {
            "name": self.name,
            "input_type": self.input_type.clipper_name,
            "default_output": self.default_output,
            "latency_slo_micros": self.latency_slo_micros,
            "linked_models": [self.linked_model] if self.linked_model else [],
            "on_overload": self.on_overload,
            "selection": self.selection,
        }

    def settings(self) -> dict[str, object]:
        """What ``app_settings`` stores for the app (everything Clipper's apps lack)."""
        settings: dict[str, object] = {"on_overload": self.on_overload}
        if self.selection is not None:
            settings["selection"] = self.selection
        return settings


@dataclass(slots=True)
class Model:
    name: str
    version: str
    input_type: InputType
    labels: list[str] = field(default_factory=list)
    container_name: str = ""
    model_data_path: str = ""
    batch_size: int = -1
    seq: int = 0  # order of addition, so "newest" survives a restart

    @property
    def key(self) -> tuple[str, str]:
        return (self.name, self.version)

    def to_dict(self, is_current: bool) -> dict[str, object]:
        return {
            "model_name": self.name,
            "model_version": self.version,
            "is_current_version": is_current,
            "input_type": self.input_type.clipper_name,
            "labels": list(self.labels),
            "container_name": self.container_name,
            "model_data_path": self.model_data_path,
            "batch_size": self.batch_size,
        }


_SCHEMA = """
CREATE TABLE IF NOT EXISTS apps (
    name TEXT PRIMARY KEY,
    input_type INTEGER NOT NULL,
    default_output TEXT NOT NULL,
    latency_slo_micros INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS models (
    name TEXT NOT NULL,
    version TEXT NOT NULL,
    input_type INTEGER NOT NULL,
    labels TEXT NOT NULL,
    container_name TEXT NOT NULL,
    model_data_path TEXT NOT NULL,
    batch_size INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    PRIMARY KEY (name, version)
);
CREATE TABLE IF NOT EXISTS current_versions (
    model_name TEXT PRIMARY KEY,
    version TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS links (
    app_name TEXT PRIMARY KEY,
    model_name TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS app_settings (
    app_name TEXT PRIMARY KEY,
    settings TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS policy_state (
    app_name TEXT PRIMARY KEY,
    state TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
"""


class StateStore:
    """In-memory state with SQLite write-through. Used from the event loop thread only."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db
        self.apps: dict[str, App] = {}
        self.models: dict[tuple[str, str], Model] = {}
        self.current: dict[str, str] = {}  # model name -> current version
        self.policy_state: dict[str, str] = {}  # app -> its selection policy's state (JSON)
        self._seq = itertools.count(1)

    # ----------------------------------------------------------------- lifecycle

    @classmethod
    def open(cls, path: str | Path) -> StateStore:
        """Open (creating if needed) the database at ``path`` and load everything."""
        if str(path) != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.executescript(_SCHEMA)
        store = cls(db)
        store._load()
        return store

    def close(self) -> None:
        self._db.close()

    def _load(self) -> None:
        for name, it, default, slo in self._db.execute("SELECT * FROM apps"):
            self.apps[name] = App(name, InputType(it), default, int(slo))
        max_seq = 0
        for row in self._db.execute("SELECT * FROM models ORDER BY seq"):
            name, version, it, labels, cname, path, bs, seq = row
            model = Model(name, version, InputType(it), json.loads(labels), cname, path, bs, seq)
            self.models[model.key] = model
            max_seq = max(max_seq, seq)
        self._seq = itertools.count(max_seq + 1)
        self.current = dict(self._db.execute("SELECT model_name, version FROM current_versions"))
        for app_name, model_name in self._db.execute("SELECT app_name, model_name FROM links"):
            if app_name in self.apps:
                self.apps[app_name].linked_model = model_name
        for app_name, settings in self._db.execute("SELECT app_name, settings FROM app_settings"):
            if app_name in self.apps:
                stored = json.loads(settings)
                on_overload = stored.get("on_overload", "default")
                if on_overload in OVERLOAD_ANSWERS:
                    self.apps[app_name].on_overload = on_overload
                selection = stored.get("selection")
                if isinstance(selection, dict):
                    self.apps[app_name].selection = selection
        self.policy_state = dict(self._db.execute("SELECT app_name, state FROM policy_state"))

    def _write(self, *statements: tuple[str, tuple[object, ...]]) -> None:
        with self._db:
            self._db.execute("BEGIN")
            for sql, args in statements:
                self._db.execute(sql, args)

    # ----------------------------------------------------------------- apps

    def app(self, name: str) -> App:
        try:
            return self.apps[name]
        except KeyError:
            raise NotFound(f"no application named {name!r}") from None

    def add_app(self, app: App) -> None:
        if not app.name or "/" in app.name:
            raise Invalid(f"invalid application name {app.name!r}")
        if app.latency_slo_micros <= 0:
            raise Invalid("latency_slo_micros must be a positive integer")
        if app.on_overload not in OVERLOAD_ANSWERS:
            raise Invalid(f"on_overload must be one of {', '.join(OVERLOAD_ANSWERS)}")
        if app.name in self.apps:
            raise Conflict(f"application {app.name!r} already exists")
        self._write(
            (
                "INSERT INTO apps VALUES (?, ?, ?, ?)",
                (app.name, int(app.input_type), app.default_output, app.latency_slo_micros),
            ),
            (
                "INSERT OR REPLACE INTO app_settings VALUES (?, ?)",
                (app.name, json.dumps(app.settings())),
            ),
        )
        app.linked_model = None
        self.apps[app.name] = app

    def delete_app(self, name: str) -> None:
        self.app(name)
        self._write(
            ("DELETE FROM apps WHERE name = ?", (name,)),
            ("DELETE FROM links WHERE app_name = ?", (name,)),
            ("DELETE FROM app_settings WHERE app_name = ?", (name,)),
            ("DELETE FROM policy_state WHERE app_name = ?", (name,)),
        )
        del self.apps[name]
        self.policy_state.pop(name, None)

    def set_on_overload(self, name: str, on_overload: str) -> None:
        """What the app answers a query it sheds under overload with (OVERLOAD_ANSWERS)."""
        app = self.app(name)
        if on_overload not in OVERLOAD_ANSWERS:
            raise Invalid(f"on_overload must be one of {', '.join(OVERLOAD_ANSWERS)}")
        settings = app.settings() | {"on_overload": on_overload}
        self._write(
            ("INSERT OR REPLACE INTO app_settings VALUES (?, ?)", (name, json.dumps(settings)))
        )
        app.on_overload = on_overload

    def set_selection(self, name: str, selection: dict[str, Any] | None) -> None:
        """The app's model selection and cache (checked by ``selection.normalize`` first);
        every model it names must exist and take the app's input type. A new policy or new
        members start the policy's learning over (its state is dropped)."""
        app = self.app(name)
        named = [m for m, _ in selection["models"]] if selection else []
        if selection and selection.get("shadow"):
            named.append(selection["shadow"]["model"])
        for member in named:
            model_name, sep, version = member.partition(":")
            found = [self.model(model_name, version)] if sep else self.versions(model_name)
            if not found:
                raise NotFound(f"no model named {model_name!r}")
            if found[-1].input_type != app.input_type:
                raise Invalid(
                    f"app {name!r} takes {app.input_type.clipper_name} but model "
                    f"{member} takes {found[-1].input_type.clipper_name}"
                )
        old = app.selection or {}
        new = selection or {}
        learning_kept = (old.get("policy"), old.get("models")) == (new.get("policy"),
                                                                   new.get("models"))  # fmt: skip
        settings = app.settings() | {"selection": selection}
        writes: list[tuple[str, tuple[object, ...]]] = [
            ("INSERT OR REPLACE INTO app_settings VALUES (?, ?)", (name, json.dumps(settings)))
        ]
        if not learning_kept:
            writes.append(("DELETE FROM policy_state WHERE app_name = ?", (name,)))
        self._write(*writes)
        app.selection = selection
        if not learning_kept:
            self.policy_state.pop(name, None)

    def save_policy_state(self, name: str, state: str) -> None:
        """What the app's selection policy has learned (JSON), saved after each feedback."""
        self.app(name)
        self._write(("INSERT OR REPLACE INTO policy_state VALUES (?, ?)", (name, state)))
        self.policy_state[name] = state

    # ----------------------------------------------------------------- query ids

    def reserve_query_ids(self, count: int) -> int:
        """Reserve ``count`` consecutive query ids, never handed out before in this state's
        life (frontend restarts included); returns the first. Callers reserve large blocks
        (a write per block), so ids are unique but not dense across restarts."""
        if count <= 0:
            raise ValueError("count must be positive")
        with self._db:
            self._db.execute("BEGIN IMMEDIATE")
            row = self._db.execute("SELECT value FROM meta WHERE key = 'next_query_id'").fetchone()
            first = int(row[0]) if row else 0
            self._db.execute(
                "INSERT OR REPLACE INTO meta VALUES ('next_query_id', ?)", (first + count,)
            )
        return first

    # ----------------------------------------------------------------- models

    def model(self, name: str, version: str) -> Model:
        try:
            return self.models[(name, version)]
        except KeyError:
            raise NotFound(f"no model {name}:{version}") from None

    def versions(self, name: str) -> list[Model]:
        """Every version of model ``name``, oldest first."""
        return sorted((m for m in self.models.values() if m.name == name), key=lambda m: m.seq)

    def add_model(self, model: Model) -> None:
        """Add a version; it becomes the model's current version."""
        if not model.name or not model.version or ":" in model.name:
            raise Invalid("model_name and model_version must be non-empty (no ':' in the name)")
        if model.key in self.models:
            raise Conflict(f"model {model.name}:{model.version} already exists")
        for app in self.apps.values():
            if app.linked_model == model.name and app.input_type != model.input_type:
                raise Invalid(
                    f"model {model.name} takes {model.input_type.clipper_name} but the linked "
                    f"app {app.name!r} sends {app.input_type.clipper_name}"
                )
        model.seq = next(self._seq)
        self._write(
            (
                "INSERT INTO models VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    model.name, model.version, int(model.input_type), json.dumps(model.labels),
                    model.container_name, model.model_data_path, model.batch_size, model.seq,
                ),
            ),  # fmt: skip
            (
                "INSERT OR REPLACE INTO current_versions VALUES (?, ?)",
                (model.name, model.version),
            ),
        )
        self.models[model.key] = model
        self.current[model.name] = model.version

    def delete_model(self, name: str, version: str) -> None:
        """Remove a version; if it was current, the newest remaining one becomes current."""
        self.model(name, version)
        remaining = [m for m in self.versions(name) if m.version != version]
        writes: list[tuple[str, tuple[object, ...]]] = [
            ("DELETE FROM models WHERE name = ? AND version = ?", (name, version))
        ]
        new_current = self.current.get(name)
        if new_current == version:
            new_current = remaining[-1].version if remaining else None
            if new_current is None:
                writes.append(("DELETE FROM current_versions WHERE model_name = ?", (name,)))
            else:
                writes.append(
                    ("INSERT OR REPLACE INTO current_versions VALUES (?, ?)", (name, new_current))
                )
        self._write(*writes)
        del self.models[(name, version)]
        if new_current is None:
            self.current.pop(name, None)
        else:
            self.current[name] = new_current

    def set_model_version(self, name: str, version: str) -> None:
        """Make ``version`` current: all the traffic of the apps linked to the model goes to
        it, so their selection policies go back to "fixed" (shadow and cache are kept)."""
        self.model(name, version)
        writes: list[tuple[str, tuple[object, ...]]] = [
            ("INSERT OR REPLACE INTO current_versions VALUES (?, ?)", (name, version))
        ]
        reset: list[tuple[App, dict[str, Any] | None]] = []
        for app in self.apps.values():
            sel = app.selection
            if app.linked_model == name and sel is not None and sel.get("policy") != "fixed":
                kept = sel | {"policy": "fixed", "models": [], "sticky_field": None}
                fixed = kept if kept.get("shadow") or kept.get("cache_mb") else None
                reset.append((app, fixed))
                settings = app.settings() | {"selection": fixed}
                writes.append(("INSERT OR REPLACE INTO app_settings VALUES (?, ?)",
                               (app.name, json.dumps(settings))))  # fmt: skip
                writes.append(("DELETE FROM policy_state WHERE app_name = ?", (app.name,)))
        self._write(*writes)
        self.current[name] = version
        for app, fixed in reset:
            app.selection = fixed
            self.policy_state.pop(app.name, None)

    def current_model(self, name: str) -> Model | None:
        version = self.current.get(name)
        return None if version is None else self.models.get((name, version))

    # ----------------------------------------------------------------- links

    def link(self, app_name: str, model_name: str) -> None:
        """Link one model to an app (one per app, as in Clipper); input types must match."""
        app = self.app(app_name)
        versions = self.versions(model_name)
        if not versions:
            raise NotFound(f"no model named {model_name!r}")
        if app.linked_model == model_name:
            return
        if app.linked_model is not None:
            raise Conflict(
                f"app {app_name!r} is already linked to model {app.linked_model!r}; "
                "an app serves one model"
            )
        model = self.current_model(model_name) or versions[-1]
        if model.input_type != app.input_type:
            raise Invalid(
                f"app {app_name!r} takes {app.input_type.clipper_name} but model "
                f"{model_name} takes {model.input_type.clipper_name}"
            )
        self._write(("INSERT OR REPLACE INTO links VALUES (?, ?)", (app_name, model_name)))
        app.linked_model = model_name

    def unlink(self, app_name: str, model_name: str) -> None:
        app = self.app(app_name)
        if app.linked_model != model_name:
            raise NotFound(f"model {model_name!r} is not linked to app {app_name!r}")
        self._write(("DELETE FROM links WHERE app_name = ?", (app_name,)))
        app.linked_model = None

"""The management REST API (``/admin/...``), served on its own port (localhost by default).

Each handler reads a JSON object, applies one change to the ``StateStore`` (written through
to SQLite before the answer) and tells the dispatcher what it needs to know (batch sizes).
Failures answer ``{"error", "cause"}`` with 400, 404 or 409. Runs on the event loop; every
operation is a few dict updates and one small SQLite transaction.

Credential: every route but the health checks (``GET /health``, ``GET /admin/ping``) needs
``Authorization: Bearer <token>`` with the frontend's admin token (compared in constant
time); without it they answer 401, naming no secret. ``allow_anonymous`` (the frontend's
``--allow-anonymous-admin``, for Clipper's own admin client, which cannot send a token)
lets a caller without the token in too, with one exception: artifact paths
(``model_data_path``) are left out of what an anonymous caller is told.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable
from typing import Any

import orjson

from schooner.frontend.dispatch import Dispatcher
from schooner.frontend.http import Reply, Request, Router, json_error
from schooner.frontend.metrics import CONTENT_TYPE, FrontendMetrics
from schooner.frontend.selection import DEFAULTS, SelectionError, normalize
from schooner.frontend.state import App, Invalid, Model, StateError, StateStore
from schooner.runtime.wire import InputType

__all__ = ["ManagementApi"]

_OK = b'{"ok":true}'
_UNAUTHORIZED = (
    401,
    orjson.dumps({"error": "unauthorized", "cause": "this management API needs its admin token "
                  "(Authorization: Bearer <token>); ClipperConnection and the schooner CLI "
                  "send it when they can read the cluster's admin.token"}),  # fmt: skip
    b"application/json",
    b"WWW-Authenticate: Bearer\r\n",
)
Body = dict[str, Any]
MAX_EXPECT_S = 3600  # the longest a manager may announce replicas as starting


def _field(body: Body, name: str, kind: type | tuple[type, ...], *, default: Any = ...) -> Any:
    if name not in body or body[name] is None:
        if default is ...:
            raise Invalid(f"missing field {name!r}")
        return default
    value = body[name]
    if kind is str and isinstance(value, int) and not isinstance(value, bool):
        value = str(value)  # versions are often sent as numbers
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        names = kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)
        raise Invalid(f"field {name!r} must be of type {names}")
    return value


def _input_type(body: Body) -> InputType:
    value = _field(body, "input_type", (str, int))
    try:
        return InputType.parse(value)
    except ValueError as exc:
        raise Invalid(str(exc)) from None


def _one_model_name(body: Body) -> str:
    names = _field(body, "model_names", list)
    if len(names) != 1 or not isinstance(names[0], str):
        raise Invalid("'model_names' must list exactly one model name (one model per app)")
    return str(names[0])


class ManagementApi:
    """Handlers of the management port. ``routes`` fills a router with them."""

    def __init__(
        self,
        state: StateStore,
        dispatcher: Dispatcher,
        metrics: FrontendMetrics,
        *,
        token: bytes | None = None,
        allow_anonymous: bool = False,
    ):
        self._state = state
        self._dispatcher = dispatcher
        self._metrics = metrics
        self._expected = b"Bearer " + token if token else None
        self._allow_anonymous = allow_anonymous or token is None

    def _authorized(self, request: Request) -> bool:
        expected, sent = self._expected, request.authorization
        return expected is not None and sent is not None and hmac.compare_digest(sent, expected)

    def _guard(self, handler: Callable[[Request, Reply], None]) -> Callable[[Request, Reply], None]:
        def guarded(request: Request, reply: Reply) -> None:
            if self._allow_anonymous or self._authorized(request):
                handler(request, reply)
            else:
                reply(*_UNAUTHORIZED)

        return guarded

    def routes(self, router: Router) -> Router:
        post: dict[str, Callable[[Body], object]] = {
            "add_app": self.add_app,
            "delete_app": self.delete_app,
            "add_model": self.add_model,
            "delete_model": self.delete_model,
            "add_model_links": self.add_model_links,
            "delete_model_links": self.delete_model_links,
            "set_model_version": self.set_model_version,
            "get_all_applications": self.get_all_applications,
            "get_application": self.get_application,
            "get_all_models": self.get_all_models,
            "get_model": self.get_model,
            "get_linked_models": self.get_linked_models,
            "get_all_containers": self.get_all_containers,
            "set_app_on_overload": self.set_app_on_overload,
            "expect_replicas": self.expect_replicas,
            "set_traffic_split": self.set_traffic_split,
            "set_shadow": self.set_shadow,
            "set_selection_policy": self.set_selection_policy,
            "set_prediction_cache": self.set_prediction_cache,
        }
        for name, operation in post.items():
            router.add("POST", f"/admin/{name}", self._guard(self._json_handler(operation)))
        router.add("GET", "/admin/ping", lambda request, reply: reply(200, _OK))
        router.add("GET", "/health", lambda request, reply: reply(200, _OK))
        router.add(
            "GET", "/metrics",
            self._guard(lambda request, reply: reply(200, self._metrics.render(), CONTENT_TYPE)),
        )  # fmt: skip
        return router

    def _json_handler(self, operation: Callable[[Body], object]) -> Callable[[Request, Reply], None]:
        def handle(request: Request, reply: Reply) -> None:
            try:
                body = orjson.loads(request.body) if request.body.strip() else {}
            except orjson.JSONDecodeError as exc:
                reply(*json_error(400, "invalid JSON", f"the body is not valid JSON: {exc}"))
                return
            if not isinstance(body, dict):
                reply(*json_error(400, "invalid request", "the body must be a JSON object"))
                return
            try:
                result = operation(body)
            except StateError as exc:
                reply(*json_error(exc.status, exc.error, str(exc)))
                return
            if result is not None and not self._authorized(request):
                result = _without_paths(result)
            reply(200, _OK if result is None else orjson.dumps(result))

        return handle

    # ----------------------------------------------------------------- apps

    def add_app(self, body: Body) -> None:
        slo = _field(body, "latency_slo_micros", int)
        default = _field(body, "default_output", str, default="None")
        app = App(_field(body, "name", str), _input_type(body), default, slo,
                  on_overload=_field(body, "on_overload", str, default="default"))  # fmt: skip
        self._state.add_app(app)

    def set_app_on_overload(self, body: Body) -> None:
        """``{"name", "on_overload": "default" | "503"}``: how the app answers what it sheds."""
        self._state.set_on_overload(_field(body, "name", str), _field(body, "on_overload", str))

    def delete_app(self, body: Body) -> None:
        self._state.delete_app(_field(body, "name", str))

    def get_all_applications(self, body: Body) -> list[object]:
        if _field(body, "verbose", bool, default=False):
            return [app.to_dict() for app in self._state.apps.values()]
        return list(self._state.apps)

    def get_application(self, body: Body) -> dict[str, object]:
        app = self._state.app(_field(body, "name", str))
        info = app.to_dict()
        learned = self._state.policy_state.get(app.name)
        if learned is not None:
            info["policy_state"] = orjson.loads(learned)
        return info

    # ----------------------------------------------------------------- selection

    def _select(self, name: str, changes: dict[str, Any]) -> None:
        """Apply ``changes`` to the app's selection (schooner.frontend.selection)."""
        app = self._state.app(name)
        current = dict(app.selection) if app.selection is not None else dict(DEFAULTS)
        try:
            selection = normalize(current | changes)
        except SelectionError as exc:
            raise Invalid(str(exc)) from None
        self._state.set_selection(name, selection)

    def set_traffic_split(self, body: Body) -> None:
        """``{"name", "split": {"model:version" | "model": weight, ...}, "sticky_field"}``:
        the app's queries go to those members in proportion to the weights; a request with
        ``sticky_field`` set keeps its member. One member: all traffic to it."""
        split = _field(body, "split", dict)
        changes: dict[str, Any] = {"policy": "split", "models": split}
        if "sticky_field" in body:
            changes["sticky_field"] = body["sticky_field"]
        self._select(_field(body, "name", str), changes)

    def set_shadow(self, body: Body) -> None:
        """``{"name", "model": "model:version" | null, "fraction": 0..1}``: mirror that
        fraction of the app's queries to ``model`` (null: stop); answers are compared only."""
        model = _field(body, "model", str, default=None)
        fraction = _field(body, "fraction", (int, float), default=1.0)
        shadow = None if model is None else {"model": model, "fraction": fraction}
        self._select(_field(body, "name", str), {"shadow": shadow})

    def set_selection_policy(self, body: Body) -> None:
        """``{"name", "policy", "models"?, "epsilon"?, "gamma"?, "combine"?, "straggler"?}``:
        fixed, split, epsilon_greedy, exp3 or ensemble over the members (those given, else
        the app's current ones)."""
        changes: dict[str, Any] = {"policy": _field(body, "policy", str)}
        for key in ("models", "epsilon", "gamma", "combine", "straggler", "sticky_field"):
            if key in body:
                changes[key] = body[key]
        if changes["policy"] == "fixed" and "models" not in body:
            changes["models"] = []
        self._select(_field(body, "name", str), changes)

    def set_prediction_cache(self, body: Body) -> None:
        """``{"name", "size_mb"}``: the app's prediction cache, at most that many MB (0: off)."""
        size = _field(body, "size_mb", (int, float))
        self._select(_field(body, "name", str), {"cache_mb": size})

    # ----------------------------------------------------------------- models

    def add_model(self, body: Body) -> None:
        labels = _field(body, "labels", list, default=[])
        model = Model(
            name=_field(body, "model_name", str),
            version=_field(body, "model_version", str),
            input_type=_input_type(body),
            labels=[str(label) for label in labels],
            container_name=_field(body, "container_name", str, default=""),
            model_data_path=_field(body, "model_data_path", str, default=""),
            batch_size=_field(body, "batch_size", int, default=-1),
        )
        self._state.add_model(model)
        self._dispatcher.configure_model(model.key, model.batch_size)

    def delete_model(self, body: Body) -> None:
        name = _field(body, "model_name", str)
        version = _field(body, "model_version", str)
        self._state.delete_model(name, version)
        self._dispatcher.configure_model((name, version), -1)

    def set_model_version(self, body: Body) -> None:
        self._state.set_model_version(
            _field(body, "model_name", str), _field(body, "model_version", str)
        )

    def get_all_models(self, body: Body) -> list[object]:
        state = self._state
        models = sorted(state.models.values(), key=lambda m: m.seq)
        if _field(body, "verbose", bool, default=False):
            return [m.to_dict(state.current.get(m.name) == m.version) for m in models]
        return [f"{m.name}:{m.version}" for m in models]

    def get_model(self, body: Body) -> dict[str, object]:
        name, version = _field(body, "model_name", str), _field(body, "model_version", str)
        model = self._state.model(name, version)
        return model.to_dict(self._state.current.get(model.name) == model.version)

    # ----------------------------------------------------------------- links

    def add_model_links(self, body: Body) -> None:
        self._state.link(_field(body, "app_name", str), _one_model_name(body))

    def delete_model_links(self, body: Body) -> None:
        app_name = _field(body, "app_name", str)
        for name in _field(body, "model_names", list):
            self._state.unlink(app_name, str(name))

    def get_linked_models(self, body: Body) -> list[str]:
        app = self._state.app(_field(body, "app_name", str))
        return [app.linked_model] if app.linked_model else []

    # ----------------------------------------------------------------- replicas

    def expect_replicas(self, body: Body) -> None:
        """``{"model_name", "model_version", "seconds"}``: a manager is starting replicas of
        this version, so its queries wait for them (up to their SLO) for that long instead of
        being answered "no replica" at once; ``seconds`` 0 says they are not coming."""
        name = _field(body, "model_name", str)
        version = _field(body, "model_version", str)
        seconds = _field(body, "seconds", (int, float))
        if not 0 <= seconds <= MAX_EXPECT_S:
            raise Invalid(f"seconds must be between 0 and {MAX_EXPECT_S}")
        self._state.model(name, version)
        self._dispatcher.expect_replicas((name, version), float(seconds))

    def get_all_containers(self, body: Body) -> list[object]:
        replicas = list(self._dispatcher.replicas.values())
        if _field(body, "verbose", bool, default=False):
            return [r.describe() for r in replicas]
        return [f"{r.queue.label}:{r.replica_id}" for r in replicas]


def _without_paths(result: object) -> object:
    """What an anonymous caller may see: answers without artifact paths."""
    if isinstance(result, dict):
        return {k: v for k, v in result.items() if k != "model_data_path"}
    if isinstance(result, list):
        return [_without_paths(item) for item in result]
    return result

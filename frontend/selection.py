"""The model selection layer: which model versions answer an app's query, and how.

Clipper's paper puts a selection layer above the models: a policy chooses among (or
combines) the models of an app per query and learns from feedback. Here an app's
*selection* (a JSON object kept with the app in the state store, ``normalize`` checks it)
names its members and a policy:

================== ============================================================================
policy             what a query of the app gets
================== ============================================================================
``fixed``          the linked model's current version (today's path; used with a cache or a
                   shadow only)
``split``          one member, by weight: exact proportions (smooth weighted round robin),
                   or, when the request carries the app's ``sticky_field``, the member its
                   hash falls on
``epsilon_greedy`` the member with the best mean reward, a random one with probability
                   ``epsilon``; rewards come from ``POST /<app>/update`` feedback
``exp3``           Exp3 (exponential weights for exploration and exploitation, ``gamma``)
``ensemble``       every member; numeric answers averaged (``combine`` "mean", element-wise
                   for lists) or the most frequent answer (``combine`` "vote"); a member
                   that has not answered when ``straggler`` x the latency SLO has passed is
                   left out
================== ============================================================================

Settings of a selection (``normalize``; limits in capitals below):

* ``models``: ``[[member, weight], ...]`` or ``{member: weight}``; a member is ``name:version``
  or ``name`` (that model's current version); at most ``MAX_MEMBERS``; weights > 0.
* ``sticky_field``: a field of Clipper's JSON request (or a ``parameters`` entry of an OIP
  request, REST or gRPC) whose value keeps a user on one member of a split.
* ``shadow``: ``{"model": member, "fraction": f}``: a copy of that fraction of the queries
  goes to ``model``; its answers are discarded and compared with the primary's
  (``schooner_frontend_shadow_comparisons``). A shadow copy is best effort, shed first: it
  goes through the shadow's own admission control, and is not sent at all (counted as
  ``skipped``) while more than ``SHADOW_MAX_WAITING`` queries wait (queued, not in flight)
  for the shadow, or while the primary is overloaded (its admission control holds a
  standing queue down); it never holds the primary's answer back.
* ``cache_mb``: the app's prediction cache (``schooner.frontend.cache``), 0 (off, the
  default) to ``MAX_CACHE_MB``.

Feedback (``POST /<app>/update {"input": ..., "label": ...}``) is scored against the answer
the chosen member gave for that same input: the last ``RECENT_ANSWERS`` inputs a bandit
answered are remembered (by a 16-byte digest of their bytes, with answers of at most
``MAX_REMEMBERED`` characters: a few MB per app at most); feedback for an input not among
them is counted as unmatched and changes nothing (it is not re-queried). The reward is 1
when the answer equals the label (numbers within 1e-9, relative) and 0 otherwise. The
policy's state is saved with the app after each scored feedback, so it survives a restart.

The policies (``WeightedSplit``, ``EpsilonGreedy``, ``Exp3``, ``combine``, ``reward``) are
pure: no I/O, the random generator injected. ``Router`` joins them to the dispatcher: it
runs on the event loop and creates the queries the members (and the shadow, and the
cache's single model call for identical inputs) are asked with; their app label in the
metrics is ``<app>/member``, ``<app>/shadow`` or ``<app>/cached``.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
from collections import Counter, OrderedDict
from collections.abc import Callable, Sequence
from typing import Any

import orjson

from schooner.frontend.cache import PredictionCache
from schooner.frontend.dispatch import NO_MODEL, Dispatcher, Query
from schooner.frontend.metrics import FrontendMetrics

__all__ = [
    "POLICIES", "COMBINERS", "ROUTED", "MAX_MEMBERS", "MAX_CACHE_MB", "RECENT_ANSWERS",
    "MAX_REMEMBERED", "SHADOW_MAX_WAITING", "SelectionError", "normalize", "WeightedSplit",
    "EpsilonGreedy", "Exp3", "combine", "reward", "Router",
]  # fmt: skip

POLICIES = ("fixed", "split", "epsilon_greedy", "exp3", "ensemble")
BANDITS = ("epsilon_greedy", "exp3")
COMBINERS = ("mean", "vote")
MAX_MEMBERS = 16
MAX_CACHE_MB = 65536
MAX_FIELD = 256  # characters of a sticky field's name
MAX_STICKY_BYTES = 1024  # of a sticky value that is hashed (longer ones: their prefix)
RECENT_ANSWERS = 10_000  # inputs a bandit remembers the answer of, for feedback
MAX_REMEMBERED = 256  # characters of an answer remembered for feedback (longer: not)
SHADOW_MAX_WAITING = 64  # copies go only while at most this many wait for the shadow
DEFAULTS: dict[str, Any] = {
    "policy": "fixed", "models": [], "sticky_field": None, "epsilon": 0.1, "gamma": 0.1,
    "combine": "mean", "straggler": 0.8, "shadow": None, "cache_mb": 0,
}  # fmt: skip

# The model key a query of a routed app is handed to the dispatch with: "ask the Router".
ROUTED: tuple[str, str] = ("", "")


class SelectionError(ValueError):
    """A selection setting that ``normalize`` refuses (the management API answers 400)."""


# --------------------------------------------------------------------------- settings


def _number(value: Any, name: str, low: float, high: float) -> float:
    if type(value) not in (int, float) or not low <= value <= high:
        raise SelectionError(f"{name!r} must be a number from {low:g} to {high:g}")
    return float(value)


def _member(value: Any) -> str:
    if type(value) is not str or not value or len(value) > 2 * MAX_FIELD:
        raise SelectionError("a member must be 'model' or 'model:version' (a short string)")
    name, _, version = value.partition(":")
    if not name or (":" in value and not version):
        raise SelectionError(f"a member must be 'model' or 'model:version', not {value[:64]!r}")
    return value


def _models(value: Any) -> list[list[Any]]:
    pairs = list(value.items()) if isinstance(value, dict) else value
    if not isinstance(pairs, list):
        raise SelectionError("'models' must map members to weights ({member: weight})")
    if len(pairs) > MAX_MEMBERS:
        raise SelectionError(f"at most {MAX_MEMBERS} members")
    out: list[list[Any]] = []
    for pair in pairs:
        if isinstance(pair, str):
            pair = [pair, 1]
        if not isinstance(pair, (list, tuple)) or len(pair) != 2:
            raise SelectionError("each member is [member, weight]")
        member = _member(pair[0])
        weight = _number(pair[1], f"weight of {member}", 0, 1e9)
        if weight <= 0:
            raise SelectionError(f"the weight of {member} must be positive")
        if any(m == member for m, _ in out):
            raise SelectionError(f"member {member} is named twice")
        out.append([member, weight])
    return out


def normalize(settings: dict[str, Any]) -> dict[str, Any] | None:
    """A selection with every setting present and checked (SelectionError if one is bad);
    None when it asks for nothing beyond today's path (fixed, no shadow, no cache)."""
    unknown = set(settings) - set(DEFAULTS)
    if unknown:
        raise SelectionError(f"unknown selection setting {sorted(unknown)[0][:64]!r}")
    s = DEFAULTS | settings
    if s["policy"] not in POLICIES:
        raise SelectionError(f"'policy' must be one of {', '.join(POLICIES)}")
    s["models"] = _models(s["models"])
    if s["policy"] != "fixed" and not s["models"]:
        raise SelectionError(f"policy {s['policy']!r} needs members ('models')")
    if s["policy"] in BANDITS + ("ensemble",) and len(s["models"]) < 2:
        raise SelectionError(f"policy {s['policy']!r} needs at least two members")
    field = s["sticky_field"]
    if field is not None and (type(field) is not str or not 0 < len(field) <= MAX_FIELD):
        raise SelectionError(f"'sticky_field' must be a field name of 1 to {MAX_FIELD} characters")
    s["epsilon"] = _number(s["epsilon"], "epsilon", 0, 1)
    s["gamma"] = _number(s["gamma"], "gamma", 1e-6, 1)
    s["straggler"] = _number(s["straggler"], "straggler", 0.05, 1)
    if s["combine"] not in COMBINERS:
        raise SelectionError(f"'combine' must be one of {', '.join(COMBINERS)}")
    shadow = s["shadow"]
    if shadow is not None:
        if not isinstance(shadow, dict) or set(shadow) - {"model", "fraction"}:
            raise SelectionError("'shadow' must be {\"model\": member, \"fraction\": f}")
        fraction = _number(shadow.get("fraction", 1.0), "fraction", 0, 1)
        s["shadow"] = {"model": _member(shadow.get("model")), "fraction": fraction}
    cache_mb = s["cache_mb"]
    s["cache_mb"] = _number(cache_mb, "cache_mb", 0, MAX_CACHE_MB)
    if s["policy"] == "fixed" and s["shadow"] is None and s["cache_mb"] == 0:
        return None
    return s


def members(selection: dict[str, Any] | None) -> list[str]:
    """Every model a selection names (members and shadow), for the state's checks."""
    if selection is None:
        return []
    named = [m for m, _ in selection["models"]]
    if selection["shadow"] is not None:
        named.append(selection["shadow"]["model"])
    return named


# --------------------------------------------------------------------------- policies


def sticky_point(value: object) -> float:
    """Where a sticky key falls in [0, 1), the same on every frontend and restart."""
    raw = value if isinstance(value, bytes) else str(value).encode("utf-8", "surrogatepass")
    digest = hashlib.blake2b(raw[:MAX_STICKY_BYTES], digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2.0**64


class WeightedSplit:
    """Members by weight. ``pick()`` is smooth weighted round robin (nginx's): over any
    ``sum(weights)`` consecutive picks of integer weights each member is picked exactly its
    weight's times, interleaved. ``pick_sticky(key)``: the member whose share of [0, 1)
    the key's hash falls in (so a key keeps its member while the weights stay)."""

    __slots__ = ("weights", "total", "_current", "_bounds")

    def __init__(self, weights: Sequence[float]) -> None:
        if not weights or min(weights) <= 0:
            raise ValueError("weights must be positive")
        self.weights = list(weights)
        self.total = sum(self.weights)
        self._current = [0.0] * len(self.weights)
        acc, bounds = 0.0, []
        for w in self.weights:
            acc += w
            bounds.append(acc / self.total)
        bounds[-1] = 1.0
        self._bounds = bounds

    def pick(self) -> int:
        current = self._current
        best = 0
        for i, w in enumerate(self.weights):
            current[i] += w
            if current[i] > current[best]:
                best = i
        current[best] -= self.total
        return best

    def pick_sticky(self, key: object) -> int:
        point = sticky_point(key)
        for i, bound in enumerate(self._bounds):
            if point < bound:
                return i
        return len(self._bounds) - 1


class EpsilonGreedy:
    """Epsilon-greedy: each untried member once, then the best mean reward, except with
    probability ``epsilon`` a uniformly random member."""

    __slots__ = ("epsilon", "counts", "sums", "_rng")

    def __init__(self, n: int, epsilon: float, rng: random.Random) -> None:
        self.epsilon = epsilon
        self.counts = [0] * n
        self.sums = [0.0] * n
        self._rng = rng

    def pick(self) -> tuple[int, float]:
        """(member, the probability it had of being picked)."""
        n = len(self.counts)
        for i, c in enumerate(self.counts):
            if c == 0:
                return i, 1.0
        best = max(range(n), key=lambda i: self.sums[i] / self.counts[i])
        if self._rng.random() < self.epsilon:
            return self._rng.randrange(n), self.epsilon / n
        return best, 1.0 - self.epsilon + self.epsilon / n

    def update(self, arm: int, reward: float, prob: float) -> None:
        self.counts[arm] += 1
        self.sums[arm] += reward

    def state(self) -> dict[str, Any]:
        return {"counts": self.counts, "sums": self.sums}

    def load(self, state: dict[str, Any]) -> None:
        counts, sums = state.get("counts"), state.get("sums")
        if isinstance(counts, list) and isinstance(sums, list) and len(counts) == len(
            self.counts
        ) == len(sums):
            self.counts = [int(c) for c in counts]
            self.sums = [float(s) for s in sums]


class Exp3:
    """Exp3 (Auer et al.): probabilities ``(1 - gamma) * w_i / sum(w) + gamma / K``; a reward
    ``r`` of member ``i``, picked with probability ``p``, multiplies ``w_i`` by
    ``exp(gamma * r / (p * K))``. Weights are kept as logarithms (no overflow)."""

    __slots__ = ("gamma", "log_weights", "_rng")

    def __init__(self, n: int, gamma: float, rng: random.Random) -> None:
        self.gamma = gamma
        self.log_weights = [0.0] * n
        self._rng = rng

    def probabilities(self) -> list[float]:
        top = max(self.log_weights)
        w = [math.exp(lw - top) for lw in self.log_weights]
        total, k = sum(w), len(w)
        return [(1 - self.gamma) * x / total + self.gamma / k for x in w]

    def pick(self) -> tuple[int, float]:
        probs = self.probabilities()
        point, acc = self._rng.random(), 0.0
        for i, p in enumerate(probs):
            acc += p
            if point < acc:
                return i, p
        return len(probs) - 1, probs[-1]

    def update(self, arm: int, reward: float, prob: float) -> None:
        k = len(self.log_weights)
        self.log_weights[arm] += self.gamma * reward / (max(prob, 1e-9) * k)
        top = max(self.log_weights)
        if top > 500 or min(self.log_weights) < top - 700:
            # only differences matter, and one beyond exp(-700) is nothing: keep them small
            self.log_weights = [max(lw - top, -700.0) for lw in self.log_weights]

    def state(self) -> dict[str, Any]:
        return {"log_weights": self.log_weights}

    def load(self, state: dict[str, Any]) -> None:
        lw = state.get("log_weights")
        if isinstance(lw, list) and len(lw) == len(self.log_weights):
            self.log_weights = [float(x) for x in lw]


Bandit = EpsilonGreedy | Exp3


def _numeric(value: object) -> bool:
    return type(value) in (int, float)


def combine(outputs: Sequence[str], how: str) -> str:
    """One answer from the members' answers (texts, in member order; at least one).

    "mean": numbers averaged, lists of numbers of one length averaged element-wise;
    anything else (or "vote"): the most frequent text, ties to the earliest member."""
    if not outputs:
        raise ValueError("nothing to combine")
    if how == "mean":
        try:
            values = [orjson.loads(o) for o in outputs]
        except orjson.JSONDecodeError:
            values = []
        if values and all(_numeric(v) for v in values):
            return orjson.dumps(sum(values) / len(values)).decode()
        if values and all(type(v) is list and v and all(_numeric(x) for x in v) for v in values):
            width = len(values[0])
            if all(len(v) == width for v in values):
                mean = [sum(v[i] for v in values) / len(values) for i in range(width)]
                return orjson.dumps(mean).decode()
    counts = Counter(outputs)
    top = max(counts.values())
    return next(o for o in outputs if counts[o] == top)


def reward(output: str, label: object) -> float:
    """1.0 when the model's answer equals the label (numbers within 1e-9, relative), else 0."""
    try:
        value: object = orjson.loads(output)
    except orjson.JSONDecodeError:
        value = output
    if _numeric(value) and _numeric(label):
        a, b = float(value), float(label)  # type: ignore[arg-type]
        return 1.0 if abs(a - b) <= 1e-9 * max(1.0, abs(b)) else 0.0
    if value == label or output == label:
        return 1.0
    return 0.0


def digest(data: bytes) -> bytes:
    return hashlib.blake2b(data, digest_size=16).digest()


# --------------------------------------------------------------------------- the router


class _Shadowed:
    """A primary query and its shadow copy: compared when both are answered."""

    __slots__ = ("primary", "shadow", "count", "client")

    def __init__(self, client: Callable[[Query], None], count: Callable[[str], None]) -> None:
        self.primary: Query | None = None
        self.shadow: Query | None = None
        self.client = client  # the primary's own on_done (the client's answer)
        self.count = count

    def primary_done(self, q: Query) -> None:
        try:
            self.client(q)  # the client's answer first
        finally:
            self.primary = q
            self.done()

    def shadow_done(self, s: Query) -> None:
        self.shadow = s
        self.done()

    def done(self) -> None:
        p, s = self.primary, self.shadow
        if p is None or s is None:
            return
        if p.explanation is not None:
            self.count("primary_default")
        elif s.explanation is not None:
            self.count("shadow_default")
        elif p.output == s.output:
            self.count("agree")
        else:
            self.count("disagree")


class _Gathered:
    """The members' answers to one query of an ensemble."""

    __slots__ = ("query", "left", "outputs", "first_reason", "first_explanation")

    def __init__(self, query: Query, n: int) -> None:
        self.query = query
        self.left = n
        self.outputs: list[tuple[int, str]] = []
        self.first_reason: str | None = None
        self.first_explanation: str | None = None


class Router:
    """One app's selection at run time (the module docstring says what it does)."""

    def __init__(
        self,
        app: str,
        selection: dict[str, Any],
        current: Callable[[str], str | None],
        dispatcher: Dispatcher,
        metrics: FrontendMetrics,
        *,
        policy_state: str | None = None,
        save_state: Callable[[str], None] = lambda text: None,
        rng: random.Random | None = None,
        linked: Callable[[], str | None] = lambda: None,
    ) -> None:
        self.app = app
        self.selection = selection
        self._current = current  # model name -> its current version
        self._linked = linked  # the app's linked model now
        self._dispatcher = dispatcher
        self._metrics = metrics
        self._save_state = save_state
        self._rng = rng or random.Random()
        self.policy = selection["policy"]
        self.members = [m for m, _ in selection["models"]]
        self.split = WeightedSplit([w for _, w in selection["models"]]) if self.members else None
        self.bandit: Bandit | None = None
        if self.policy == "epsilon_greedy":
            self.bandit = EpsilonGreedy(len(self.members), selection["epsilon"], self._rng)
        elif self.policy == "exp3":
            self.bandit = Exp3(len(self.members), selection["gamma"], self._rng)
        if self.bandit is not None and policy_state:
            try:
                loaded = json.loads(policy_state)
            except ValueError:
                loaded = None
            if isinstance(loaded, dict):
                self.bandit.load(loaded)
        # digest of an input -> (member, probability it had, answer)
        self.recent: OrderedDict[bytes, tuple[int, float, str]] = OrderedDict()
        mb = selection["cache_mb"]
        self.cache = PredictionCache(int(mb * 1024 * 1024)) if mb > 0 else None
        self._pending: dict[tuple[tuple[str, str], bytes], list[Query]] = {}
        self._keys: list[tuple[str, str] | None] = []
        shadow = selection["shadow"]
        self.shadow = shadow["model"] if shadow else None
        self.shadow_fraction = shadow["fraction"] if shadow else 0.0
        self._shadow_credit = 0.0
        self.sticky_field: str | None = selection["sticky_field"]

    # ----------------------------------------------------------------- members

    def resolve(self, member: str) -> tuple[str, str] | None:
        name, sep, version = member.partition(":")
        if sep:
            return (name, version)
        current = self._current(name)
        return None if current is None else (name, current)

    def keys(self) -> list[tuple[str, str] | None]:
        """The model versions the members stand for now (the linked model's for "fixed");
        the cache is emptied when they change (a version change invalidates it)."""
        if self.members:
            keys = [self.resolve(m) for m in self.members]
        else:
            linked = self._linked()
            keys = [None if linked is None else self.resolve(linked)]
        if keys != self._keys:
            self._keys = keys
            if self.cache is not None:
                evicted = self.cache.clear()
                if evicted:
                    self._metrics.cache_event(self.app, "invalidated", evicted)
        return keys

    # ----------------------------------------------------------------- queries in

    def dispatch(self, queries: list[Query], slo_micros: int, sticky: object = None) -> None:
        """Route one request's queries (all to one member, or each to every member)."""
        keys = self.keys()
        if self.policy == "ensemble":
            shadowed = self._shadow_pairs(queries, None)  # compared with the combination
            self._ensemble(queries, keys, slo_micros)
            if shadowed:
                self._send_shadow(shadowed, slo_micros)
            return
        arm, prob = 0, 1.0
        if self.bandit is not None:
            arm, prob = self.bandit.pick()
        elif self.split is not None:
            arm = self.split.pick() if sticky is None else self.split.pick_sticky(sticky)
        key = keys[arm]
        if key is None:
            self._no_model(queries, self.members[arm] if self.members else None)
            return
        if self.bandit is not None:
            for q in queries:
                q.on_done = self._remembering(q.on_done, arm, prob)
        shadowed = self._shadow_pairs(queries, key)
        self.call(queries, key, slo_micros)
        if shadowed:
            self._send_shadow(shadowed, slo_micros)

    def _no_model(self, queries: list[Query], member: str | None) -> None:
        explanation = (
            f"no model is linked to app {self.app!r}" if member is None
            else f"member {member} of app {self.app!r} has no version"
        )  # fmt: skip
        for q in queries:
            self._dispatcher.answer_default(q, NO_MODEL, explanation)

    def call(self, queries: list[Query], key: tuple[str, str], slo_micros: int) -> None:
        """Ask model version ``key``, through the cache when the app has one: a cached
        answer at once, one model call for identical inputs that are pending together."""
        cache = self.cache
        if cache is None:
            self._dispatcher.submit(queries, key, slo_micros)
            return
        asks: list[Query] = []
        pending = self._pending
        hits = coalesced = 0
        for q in queries:
            ck = (key, q.data)
            output = cache.get(ck)
            if output is not None:
                hits += 1
                self._dispatcher.answer(q, output)
                continue
            waiting = pending.get(ck)
            if waiting is not None:
                coalesced += 1
                waiting.append(q)
                continue
            pending[ck] = [q]
            asks.append(Query(q.id, self.app + "/cached", q.data, q.arrival, slo_micros,
                              self._answered_for(ck)))  # fmt: skip
            asks[-1].deadline = q.deadline
        m = self._metrics
        if hits:
            m.cache_event(self.app, "hit", hits)
        if coalesced:
            m.cache_event(self.app, "coalesced", coalesced)
        if asks:
            m.cache_event(self.app, "miss", len(asks))
            self._dispatcher.submit(asks, key, slo_micros)

    def _answered_for(self, ck: tuple[tuple[str, str], bytes]) -> Callable[[Query], None]:
        def answered(ask: Query) -> None:
            waiting = self._pending.pop(ck, [])
            d = self._dispatcher
            if ask.explanation is None and ask.output is not None:
                assert self.cache is not None
                if self._keys and ck[0] in self._keys:  # not for a version gone meanwhile
                    evicted = self.cache.put(ck, ask.output)
                    if evicted:
                        self._metrics.cache_event(self.app, "evict", evicted)
                for q in waiting:
                    d.answer(q, ask.output)
            else:
                for q in waiting:
                    q.model = ask.model
                    d.answer_default(q, ask.reason or "", ask.explanation or "")

        return answered

    # ----------------------------------------------------------------- feedback

    def _remembering(
        self, on_done: Callable[[Query], None], arm: int, prob: float
    ) -> Callable[[Query], None]:
        def done(q: Query) -> None:
            if q.explanation is None and q.output is not None and len(q.output) <= MAX_REMEMBERED:
                recent = self.recent
                d = digest(q.data)
                recent[d] = (arm, prob, q.output)
                recent.move_to_end(d)
                if len(recent) > RECENT_ANSWERS:
                    recent.popitem(last=False)
            on_done(q)

        return done

    def feedback(self, data: bytes, label: object) -> dict[str, Any]:
        """Score the answer given for input ``data`` against ``label`` and update the policy."""
        if self.bandit is None:
            self._metrics.feedback(self.app, "no_policy")
            return {"scored": False, "cause": f"app {self.app!r} has no learning policy"}
        seen = self.recent.get(digest(data))
        if seen is None:
            self._metrics.feedback(self.app, "unmatched")
            return {"scored": False, "cause": "no recent answer for this input"}
        arm, prob, output = seen
        r = reward(output, label)
        self.bandit.update(arm, r, prob)
        self._save_state(json.dumps(self.bandit.state()))
        self._metrics.feedback(self.app, "scored")
        return {"scored": True, "model": self.members[arm], "reward": r}

    # ----------------------------------------------------------------- shadow

    def _shadow_pairs(
        self, queries: list[Query], primary: tuple[str, str] | None
    ) -> tuple[tuple[str, str], list[Query]] | None:
        """The shadow's key and copies of the queries it gets (their primaries are watched:
        each pair is compared when both are answered); None when none are sent."""
        if self.shadow is None:
            return None
        self._shadow_credit += self.shadow_fraction * len(queries)
        take = min(len(queries), int(self._shadow_credit))
        if take == 0:
            return None
        self._shadow_credit -= take
        key = self.resolve(self.shadow)
        queues = self._dispatcher.queues
        mq = queues.get(key) if key is not None else None
        busy = queues.get(primary) if primary is not None else None
        if (key is None or key == primary or (mq is not None and mq.waiting > SHADOW_MAX_WAITING)
                or (busy is not None and busy.admission.overloaded)):  # fmt: skip
            self._metrics.shadow(self.app, "skipped", take)
            return None
        copies = []
        label, count = self.app + "/shadow", self._count_shadow
        for q in queries[:take]:
            pair = _Shadowed(q.on_done, count)
            q.on_done = pair.primary_done
            copies.append(Query(q.id, label, q.data, q.arrival, q.slo_micros, pair.shadow_done))
        return key, copies

    def _count_shadow(self, outcome: str) -> None:
        self._metrics.shadow(self.app, outcome, 1)

    def _send_shadow(self, shadowed: tuple[tuple[str, str], list[Query]], slo_micros: int) -> None:
        self._dispatcher.submit(shadowed[1], shadowed[0], slo_micros)

    # ----------------------------------------------------------------- ensemble

    def _ensemble(
        self, queries: list[Query], keys: list[tuple[str, str] | None], slo_micros: int
    ) -> None:
        live = [(i, k) for i, k in enumerate(keys) if k is not None]
        if not live:
            self._no_model(queries, self.members[0])
            return
        gathered = [_Gathered(q, len(live)) for q in queries]
        member_slo = max(1, int(slo_micros * self.selection["straggler"]))
        for i, key in live:
            asks = [
                Query(g.query.id, self.app + "/member", g.query.data, g.query.arrival,
                      member_slo, self._member_done(g, i))
                for g in gathered
            ]  # fmt: skip
            self.call(asks, key, member_slo)

    def _member_done(self, g: _Gathered, member: int) -> Callable[[Query], None]:
        def done(ask: Query) -> None:
            if ask.explanation is None and ask.output is not None:
                g.outputs.append((member, ask.output))
            elif g.first_reason is None:
                g.first_reason, g.first_explanation = ask.reason, ask.explanation
            g.left -= 1
            if g.left == 0:
                self._ensemble_answer(g)

        return done

    def _ensemble_answer(self, g: _Gathered) -> None:
        q = g.query
        if g.outputs:
            outputs = [o for _, o in sorted(g.outputs)]
            self._dispatcher.answer(q, combine(outputs, self.selection["combine"]))
        else:
            self._dispatcher.answer_default(
                q, g.first_reason or "", f"no member of the ensemble answered: "
                f"{g.first_explanation or 'no answer'}",
            )  # fmt: skip

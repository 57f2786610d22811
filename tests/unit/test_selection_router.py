"""The Router against a real Dispatcher on a fake clock: replicas registered as the RPC
endpoint would, answering only when a test says so. What reaches which model, when the
client is answered, and what admission control does to shadow and ensemble queries."""

from __future__ import annotations

import random
import struct
from collections.abc import Sequence
from typing import Any

from conftest import FakeClock as Clock

from schooner.frontend.dispatch import NO_MODEL, SHED, SLO_MISSED, Dispatcher, Query
from schooner.frontend.metrics import FrontendMetrics
from schooner.frontend.selection import SHADOW_MAX_WAITING, Router, normalize
from schooner.runtime import wire
from schooner.runtime.wire import InputType, NewContainer, PredictResponse

SLO = 1_000_000


class Harness:
    def __init__(self, selection: dict[str, Any], versions: dict[str, str] | None = None) -> None:
        self.clock = Clock()
        self.metrics = FrontendMetrics()
        self.sent: dict[bytes, list[int]] = {}  # replica identity -> batch sizes
        self.dispatcher = Dispatcher(self._send, self.metrics, clock=self.clock)
        self.current = dict(versions or {})
        sel = normalize(selection)
        assert sel is not None
        self.router = Router("app", sel, self.current.get, self.dispatcher, self.metrics,
                             rng=random.Random(0), linked=lambda: "m")  # fmt: skip
        self.answered: list[Query] = []
        self._ids = 0

    def _send(self, identity: bytes, frames: Sequence[Any]) -> bool:
        request = wire.decode_from_frontend([bytes(f) for f in frames])
        assert isinstance(request, wire.PredictRequest)
        self.sent.setdefault(identity, []).append(len(request.sizes))
        return True

    def replica(self, name: str, version: str) -> bytes:
        identity = f"{name}:{version}".encode()
        info = NewContainer(name, version, InputType.DOUBLES, wire.CAP_PACKED)
        self.dispatcher.add_replica(identity, info)
        return identity

    def ask(self, n: int = 1, data: bytes = b"\0" * 8, sticky: object = None) -> list[Query]:
        qs = []
        for _ in range(n):
            qs.append(Query(self._ids, "app", data, self.clock.now, SLO, self.answered.append))
            self._ids += 1
        self.router.dispatch(qs, SLO, sticky)
        return qs

    def respond(self, identity: bytes, output: str) -> int:
        """The replica answers the oldest batch it holds with ``output`` for each query."""
        replica = self.dispatcher.replicas[identity]
        msg_id = min(replica.inflight)
        n = len(replica.inflight[msg_id].queries)
        text = output.encode()
        self.dispatcher.on_response(
            identity, PredictResponse(struct.pack("<I", msg_id), (len(text),) * n, [text] * n)
        )
        return n

    def drain(self, identity: bytes, output: str) -> int:
        """The replica answers everything it holds and is then sent; returns how many."""
        n = 0
        while self.dispatcher.replicas[identity].inflight:
            n += self.respond(identity, output)
        return n

    def counter(self, name: str, **labels: str) -> float:
        value = self.metrics.registry.get_sample_value(name, labels)
        return value or 0.0


def test_an_ensemble_answers_at_the_straggler_deadline_with_what_arrived() -> None:
    h = Harness({"policy": "ensemble", "models": ["a:1", "b:1", "c:1"], "straggler": 0.5})
    a, b, c = h.replica("a", "1"), h.replica("b", "1"), h.replica("c", "1")
    (q,) = h.ask()
    assert [len(h.sent[r]) for r in (a, b, c)] == [1, 1, 1]  # each member asked once
    h.respond(a, "1")
    h.respond(b, "4")
    assert not q.done  # c has not answered, and there is time left
    h.clock.now += 0.49
    h.dispatcher.sweep()
    assert not q.done
    h.clock.now += 0.02  # past half the SLO: c's query expires, the ensemble answers
    h.dispatcher.sweep()
    assert q.done and q.output == "2.5" and q.explanation is None
    assert h.answered == [q]
    h.respond(c, "100")  # late: changes nothing
    assert q.output == "2.5"
    # c now takes half a second a batch: with a query of its own ahead (or none), its
    # admission control refuses the next member query at once (it counts against c's
    # queue), and the others answer without waiting for c
    h.ask()
    (q3,) = h.ask()
    h.drain(a, "1")
    h.drain(b, "2")
    assert q3.done and q3.output == "1.5"


def test_an_ensemble_with_no_answer_gets_the_default_and_why() -> None:
    h = Harness({"policy": "ensemble", "models": ["a:1", "b:1"], "straggler": 0.5})
    h.replica("a", "1")
    h.replica("b", "1")
    (q,) = h.ask()
    h.clock.now += 0.6
    h.dispatcher.sweep()
    assert q.done and q.reason == SLO_MISSED
    assert q.explanation is not None and q.explanation.startswith("no member of the ensemble")


def test_a_shadow_copy_waits_in_its_own_queue_and_is_shed_first() -> None:
    h = Harness({"shadow": {"model": "m:2"}}, {"m": "1"})
    primary, shadow = h.replica("m", "1"), h.replica("m", "2")
    qs = h.ask(4)
    assert h.sent[primary] and h.sent[shadow]  # the copies went to the shadow's replica
    while h.dispatcher.replicas[primary].inflight:
        h.respond(primary, "1")
    assert all(q.done and q.output == "1" for q in qs)  # the shadow has not answered yet
    while h.dispatcher.replicas[shadow].inflight:
        h.respond(shadow, "2")
    assert h.counter("schooner_frontend_shadow_comparisons_total", app="app",
                     outcome="disagree") == 4  # fmt: skip
    # a shadow whose replica is behind gets no more copies than SHADOW_MAX_WAITING waiting:
    # the primary is not affected, and nothing more piles up behind the shadow
    shadow_queue = h.dispatcher.queues[("m", "2")]
    answered = 0
    for _ in range(200):
        (q,) = h.ask()
        h.drain(primary, "1")
        answered += q.done and q.output == "1"
        assert shadow_queue.waiting <= SHADOW_MAX_WAITING + 1
    skipped = h.counter("schooner_frontend_shadow_comparisons_total", app="app",
                        outcome="skipped")  # fmt: skip
    assert answered == 200 and 200 - SHADOW_MAX_WAITING - 10 <= skipped < 200
    # an overloaded primary (its admission control holding a standing queue down) gets no
    # shadow copies either
    h.drain(shadow, "1")
    h.dispatcher.queues[("m", "1")].admission.overloaded = True
    h.ask()
    after = h.counter("schooner_frontend_shadow_comparisons_total", app="app", outcome="skipped")
    assert after == skipped + 1


def test_a_sampled_shadow_takes_exactly_its_fraction() -> None:
    h = Harness({"shadow": {"model": "m:2", "fraction": 0.25}}, {"m": "1"})
    primary, shadow = h.replica("m", "1"), h.replica("m", "2")
    n = 0
    for _ in range(40):
        h.ask()
        h.drain(primary, "1")
        n += h.drain(shadow, "1")
    assert n == 10


def test_a_split_follows_the_weights_and_the_current_version() -> None:
    h = Harness({"policy": "split", "models": {"m": 3, "other:1": 1}}, {"m": "1"})
    one, other = h.replica("m", "1"), h.replica("other", "1")
    two = h.replica("m", "2")
    counts = {one: 0, other: 0, two: 0}

    def ask_and_drain() -> None:
        h.ask()
        for r in counts:
            counts[r] += h.drain(r, "1")

    for _ in range(8):
        ask_and_drain()
    assert counts == {one: 6, other: 2, two: 0}
    h.current["m"] = "2"  # "m" is the model's current version, whichever it is now
    for _ in range(4):
        ask_and_drain()
    assert counts == {one: 6, other: 3, two: 3}
    del h.current["m"]
    qs = h.ask(4)
    assert {q.reason for q in qs if q.done} == {NO_MODEL}


def test_the_cache_answers_coalesces_and_forgets_an_old_version() -> None:
    h = Harness({"cache_mb": 1}, {"m": "1"})
    r1 = h.replica("m", "1")
    first = h.ask(1, b"x" * 8)
    same = h.ask(3, b"x" * 8)  # pending together with the first: no second model call
    assert sum(h.sent[r1]) == 1
    assert h.respond(r1, "7") == 1
    assert [q.output for q in first + same] == ["7"] * 4
    hit = h.ask(1, b"x" * 8)
    assert hit[0].done and hit[0].output == "7" and sum(h.sent[r1]) == 1
    h.current["m"] = "2"
    r2 = h.replica("m", "2")
    fresh = h.ask(1, b"x" * 8)
    assert not fresh[0].done and sum(h.sent[r2]) == 1  # version 2 is asked, not the cache
    h.respond(r2, "8")
    assert fresh[0].output == "8"
    assert h.counter("schooner_frontend_cache_events_total", app="app", event="invalidated") == 1
    assert h.counter("schooner_frontend_cache_events_total", app="app", event="coalesced") == 3


def test_queries_waiting_on_a_shed_one_are_shed_with_it() -> None:
    h = Harness({"cache_mb": 1}, {"m": "1"})
    r = h.replica("m", "1")
    # teach admission a slow service rate: a batch of one takes the whole SLO
    h.ask(1, b"a" * 8)
    h.clock.now += 1.0
    h.respond(r, "1")
    h.ask(1, b"b" * 8)  # in flight (or itself refused)
    late = h.ask(3, b"z" * 8)  # one model call for the three, refused: all three are shed
    assert all(q.done and q.reason == SHED for q in late)
    assert all(q.explanation and q.explanation.startswith("overloaded") for q in late)
    assert len(h.sent[r]) <= 2


def test_an_ensembles_shadow_is_compared_with_the_combined_answer() -> None:
    h = Harness({"policy": "ensemble", "models": ["a:1", "b:1"], "shadow": {"model": "s:1"}})
    a, b, s = h.replica("a", "1"), h.replica("b", "1"), h.replica("s", "1")
    (q,) = h.ask()
    h.respond(s, "2.0")  # the shadow first: nothing is compared before the primary is in
    assert not q.done
    h.respond(a, "1")
    h.respond(b, "3")
    assert q.output == "2.0"
    assert h.counter("schooner_frontend_shadow_comparisons_total", app="app",
                     outcome="agree") == 1  # fmt: skip

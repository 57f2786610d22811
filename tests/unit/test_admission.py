"""Admission control: what the dispatcher refuses, drops or keeps, on a fake clock.

A real Dispatcher with a recording ``send`` and replicas registered as the RPC endpoint
would; the model "answers" when a test calls ``respond``. The policy (``Admission``) is also
tested alone.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import Any

import pytest
from conftest import FakeClock as Clock

from schooner.frontend.batching import Admission
from schooner.frontend.dispatch import NO_REPLICA, SHED, SLO_MISSED, Dispatcher, Query
from schooner.frontend.metrics import FrontendMetrics
from schooner.runtime import wire
from schooner.runtime.wire import InputType, NewContainer, PredictResponse

KEY = ("m", "1")
SLO = 1_000_000  # 1 s


class Harness:
    """A dispatcher, one packed replica, and the batches it was sent."""

    def __init__(self, **options: Any) -> None:
        self.clock = Clock()
        self.sent: list[tuple[int, int]] = []  # (msg_id, batch size)
        self.answered: list[Query] = []
        self.metrics = FrontendMetrics()
        self.dispatcher = Dispatcher(self._send, self.metrics, clock=self.clock, **options)
        self._ids = 0

    def _send(self, identity: bytes, frames: Sequence[Any]) -> bool:
        request = wire.decode_from_frontend([bytes(f) for f in frames])
        assert isinstance(request, wire.PredictRequest)
        self.sent.append((request.id, len(request.sizes)))
        return True

    def replica(self, identity: bytes = b"r") -> None:
        info = NewContainer(KEY[0], KEY[1], InputType.DOUBLES, wire.CAP_PACKED)
        self.dispatcher.add_replica(identity, info)

    def submit(self, n: int = 1, slo: int = SLO) -> list[Query]:
        qs = []
        for _ in range(n):
            qs.append(Query(self._ids, "app", b"\0" * 8, self.clock.now, slo, self.answered.append))
            self._ids += 1
        self.dispatcher.submit(qs, KEY, slo)
        return qs

    def respond(self, identity: bytes = b"r") -> None:
        """The replica answers the oldest batch it holds."""
        replica = self.dispatcher.replicas[identity]
        msg_id = min(replica.inflight)
        n = len(replica.inflight[msg_id].queries)
        response = PredictResponse(struct.pack("<I", msg_id), (1,) * n, [b"1"] * n)
        self.dispatcher.on_response(identity, response)


def test_the_policy_alone() -> None:
    a = Admission(target_batches=2.0, interval=0.1)
    assert a.admits(10**6, 1, 1, 0.001, 0.0)  # nothing measured: everything goes in
    a.observe(1, 0.05)  # 20 queries/s, 50 ms a batch
    assert a.wait(0, 1, 1) == pytest.approx(0.1)
    assert a.admits(18, 1, 1, 1.0, 0.0)  # (18 + 1) / 20 + 0.05 = 1.0 s
    assert not a.admits(19, 1, 1, 1.0, 0.0)
    assert a.admits(36, 1, 2, 1.0, 0.0)  # two replicas drain twice as fast
    # a queue standing above the target (100 ms) for a whole interval is an overload
    a.dequeued(0.5, 1.0)
    assert not a.overloaded
    a.dequeued(0.5, 1.11)
    assert a.overloaded
    assert not a.admits(4, 1, 1, 10.0, 1.12)  # 250 ms of wait is over the target now
    assert a.admits(1, 1, 1, 10.0, 1.12)
    a.dequeued(0.0, 1.15)  # short, but something was refused within the interval
    assert a.overloaded
    a.dequeued(0.0, 1.3)
    assert not a.overloaded
    assert a.cutoff(5.0) == pytest.approx(5.05)
    assert a.cutoff(5.0, idle=True) == 5.0
    assert a.admits(0, 1, 1, 0.001, 2.0)  # an idle model takes a request, whatever it costs


def test_no_replica_answers_at_once_unless_replicas_are_expected() -> None:
    h = Harness(replica_grace_s=10.0)
    (q,) = h.submit()
    assert q.done and q.reason == NO_REPLICA and "no replica of model m:1" in q.explanation
    h.dispatcher.expect_replicas(KEY, 5.0)
    (q,) = h.submit()
    assert not q.done  # waits for the replica that is starting
    h.replica()
    assert h.sent == [(h.sent[0][0], 1)]
    h.respond()
    assert q.output == "1"
    # losing the last replica: its restart is expected for the grace period
    h.dispatcher.remove_replica(b"r", "test")
    (q,) = h.submit()
    assert not q.done
    h.clock.now += 11.0
    h.dispatcher.sweep()
    assert q.done and q.reason == NO_REPLICA
    (q,) = h.submit()
    assert q.done and q.reason == NO_REPLICA  # grace over: at once


def test_requests_that_cannot_make_their_deadline_are_shed_whole_and_at_once() -> None:
    h = Harness(inflight_per_replica=1)
    h.replica()
    h.submit()
    h.clock.now += 0.1
    h.respond()  # measured: 10 queries/s, 100 ms a batch
    accepted = [h.submit() for _ in range(8)]  # 1 in flight + 7 queued: ~0.9 s of work
    assert not any(q.done for qs in accepted for q in qs)
    shed = h.submit(3)  # would finish ~1.2 s from now, past its 1 s SLO
    assert all(q.done and q.reason == SHED for q in shed)
    assert "overloaded: model m:1 would answer in about" in (shed[0].explanation or "")
    assert h.dispatcher.retry_after(KEY) == 1
    shed_count = h.metrics.render().decode()
    assert 'reason="shed"' in shed_count


def test_a_standing_queue_is_kept_short_and_nothing_expired_is_sent() -> None:
    h = Harness(inflight_per_replica=1)
    h.dispatcher.configure_model(KEY, 1)  # batches of one, 50 ms each: 20 queries/s
    h.replica()
    h.submit()
    h.clock.now += 0.05
    h.respond()  # 20 queries/s, 50 ms a batch: the target delay is 100 ms
    answered_in_time = 0
    shed = 0
    for _ in range(100):  # 10x overload for 5 s: 10 requests every 50 ms
        for _ in range(10):
            (q,) = h.submit()
            shed += q.reason == SHED
        h.clock.now += 0.05
        h.respond()
        h.dispatcher.sweep()
    answered_in_time = sum(
        1 for q in h.answered if q.output is not None and q.deadline >= q.arrival
    )
    served = [q for q in h.answered if q.output is not None]
    assert len(served) >= 90  # the replica answered a batch every 50 ms: ~capacity
    assert answered_in_time == len(served)
    assert h.dispatcher.queues[KEY].admission.overloaded
    # every batch sent was answered with a real output: no work for expired queries
    assert sum(n for _, n in h.sent) == len(served) + 1  # + the one still in flight
    assert shed >= 850
    # the queue is short: the first query after the load is answered within 2 batches
    h.clock.now += 0.05
    (last,) = h.submit()
    for _ in range(3):
        if last.done:
            break
        h.clock.now += 0.05
        h.respond()
    assert last.output == "1"
    assert not any(q.reason == SLO_MISSED for q in h.answered)


def test_cancelled_queries_are_never_sent_and_free_their_place() -> None:
    h = Harness(inflight_per_replica=1, max_queued=3)
    h.dispatcher.configure_model(KEY, 1)
    h.replica()
    (first,) = h.submit()  # in flight
    waiting = [h.submit()[0] for _ in range(3)]
    (over,) = h.submit()
    assert over.reason == SHED and "at most 3" in (over.explanation or "")
    h.dispatcher.cancel(waiting[:2])
    assert h.dispatcher.queues[KEY].waiting == 1
    (again,) = h.submit()
    assert not again.done  # the cancelled ones no longer count
    h.respond()
    assert h.sent[-1][1] == 1  # the next batch skipped the two cancelled queries
    h.respond()
    h.respond()
    assert waiting[2].output == "1" and again.output == "1"
    assert waiting[0].output is None and waiting[0].explanation is None  # never answered
    assert "schooner_frontend_cancelled_queries_total 2.0" in h.metrics.render().decode()


def test_the_queue_bound_holds_while_replicas_are_expected() -> None:
    # No replica yet (a restart, a deploy): queries wait for one, but at most max_queued.
    h = Harness(max_queued=3)
    h.dispatcher.configure_model(KEY, 8)
    h.dispatcher.expect_replicas(KEY, 10.0)
    waiting = h.submit(3)
    assert not any(q.done for q in waiting)
    (over,) = h.submit()
    assert over.reason == SHED and "at most 3" in (over.explanation or "")
    h.replica()  # the replica comes: the three that waited go, in one batch
    assert [n for _, n in h.sent] == [3]


def test_one_slow_batch_does_not_leave_an_estimate_that_refuses_everything() -> None:
    h = Harness(inflight_per_replica=1)
    h.dispatcher.configure_model(KEY, 1)
    h.replica()
    h.submit(slo=200_000)
    h.clock.now += 5.0  # a batch held for 5 s (a pause): the estimate says 5 s a batch
    h.respond()
    probe = h.submit(slo=200_000)  # the model is idle: the query goes, it is not shed
    assert not probe[0].done and len(h.sent) == 2
    for _ in range(20):  # the model is fast again: the estimate follows
        h.clock.now += 0.01
        h.respond()
        h.submit(slo=200_000)
    assert not any(q.reason == SHED for q in h.answered[-10:])
    assert h.dispatcher.queues[KEY].admission.batch_time < 0.2

"""What the dispatcher tells the batch sizer (each batch's service time on its replica), and when
a busy replica gets a further batch."""

from __future__ import annotations

import struct

import pytest
from conftest import FakeClock as Clock

from schooner.frontend.dispatch import Dispatcher, Query
from schooner.frontend.metrics import FrontendMetrics
from schooner.runtime import wire
from schooner.runtime.wire import InputType, NewContainer, PredictResponse


class RecordingSizer:
    """Stands in for the BatchSizer: records what ``observe`` is told."""

    size = 4
    fixed = 0

    def __init__(self) -> None:
        self.seen: list[tuple[int, float]] = []

    def observe(self, batch_size: int, latency: float, backlog: int = 0) -> None:
        self.seen.append((batch_size, round(latency, 6)))

    def set_slo(self, slo: int) -> None:
        pass


def test_waiting_behind_another_batch_is_not_service_time() -> None:
    clock = Clock()
    sent: list[int] = []

    def send(identity: bytes, frames) -> bool:
        sent.append(struct.unpack("<I", bytes(frames[3]))[0])  # the msg_id frame
        return True

    dispatcher = Dispatcher(send, FrontendMetrics(), inflight_per_replica=2, clock=clock,
                            pipeline_partial=True)  # fmt: skip
    key = ("m", "1")
    mq = dispatcher.queue(key, 1_000_000)
    sizer = mq.sizer = RecordingSizer()  # type: ignore[assignment]
    dispatcher.add_replica(b"r", NewContainer("m", "1", InputType.DOUBLES, wire.CAP_PACKED))
    answered: list[Query] = []

    def submit(n: int) -> None:
        qs = [Query(i, "app", b"\0" * 8, clock.now, 1_000_000, answered.append) for i in range(n)]
        dispatcher.submit(qs, key, 1_000_000)

    submit(2)  # t=100.000: batch 1 (2 queries) goes at once
    clock.now += 0.001
    submit(3)  # t=100.001: batch 2 (3 queries) goes to the replica's second slot
    assert len(sent) == 2

    def respond(msg_id: int, n: int) -> None:
        dispatcher.on_response(b"r", PredictResponse(struct.pack("<I", msg_id), (1,) * n,
                                                     payload=b"1" * n, status=bytes(n)))  # fmt: skip

    clock.now = 100.004
    respond(sent[0], 2)  # 4 ms after it was sent
    clock.now = 100.006
    respond(sent[1], 3)  # sent at 100.001 but behind batch 1 until 100.004: 2 ms of its own
    assert sizer.seen == [(2, 0.004), (3, 0.002)]
    clock.now = 100.010
    submit(1)
    clock.now = 100.011
    respond(sent[2], 1)  # an idle replica: from when it was sent
    assert sizer.seen[-1] == (1, 0.001)
    assert len(answered) == 6


def test_a_deferred_pump_sends_what_arrived_together_as_one_batch() -> None:
    """With ``defer`` set (the server sets the loop's call_soon), queries submitted in one
    loop iteration leave in one batch when the deferred pump runs, not one batch each."""
    clock = Clock()
    sizes: list[int] = []

    def send(identity: bytes, frames) -> bool:
        # the packed header: input type, then the number of inputs (u64s)
        sizes.append(struct.unpack_from("<Q", bytes(frames[5]), 8)[0])
        return True

    scheduled: list = []
    dispatcher = Dispatcher(send, FrontendMetrics(), inflight_per_replica=2, clock=clock,
                            pipeline_partial=True)  # the second, partial batch goes too  # fmt: skip
    dispatcher.defer = scheduled.append
    key = ("m", "1")
    dispatcher.queue(key, 1_000_000).sizer.fixed = 32
    dispatcher.add_replica(b"r", NewContainer("m", "1", InputType.DOUBLES, wire.CAP_PACKED))
    answered: list[Query] = []
    for i in range(5):  # five requests of one query each, read in one iteration
        q = Query(i, "app", b"\0" * 8, clock.now, 1_000_000, answered.append)
        dispatcher.submit([q], key, 1_000_000)
    assert sizes == [] and len(scheduled) == 1  # one pump scheduled, nothing sent yet
    scheduled.pop()()
    assert sizes == [5]
    q = Query(9, "app", b"\0" * 8, clock.now, 1_000_000, answered.append)
    dispatcher.submit([q], key, 1_000_000)  # the next iteration schedules a pump again
    assert len(scheduled) == 1
    scheduled.pop()()
    assert sizes == [5, 1]


@pytest.mark.parametrize("partial", [False, True])
def test_a_busy_replica_gets_a_further_batch_only_when_it_is_full(partial: bool) -> None:
    """The first batch on a replica goes at once, whatever its size; while it is in flight
    a second one goes only when a full batch waits (``pipeline_partial``: at once too)."""
    clock = Clock()
    sizes: list[int] = []

    def send(identity: bytes, frames) -> bool:
        sizes.append(struct.unpack_from("<Q", bytes(frames[5]), 8)[0])
        return True

    dispatcher = Dispatcher(send, FrontendMetrics(), inflight_per_replica=2, clock=clock,
                            pipeline_partial=partial)  # fmt: skip
    key = ("m", "1")
    dispatcher.configure_model(key, 4)
    replica = dispatcher.add_replica(b"r", NewContainer("m", "1", InputType.DOUBLES,
                                                        wire.CAP_PACKED))  # fmt: skip
    answered: list[Query] = []
    ids = iter(range(100))

    def submit(n: int) -> None:
        qs = [Query(next(ids), "app", b"\0" * 8, clock.now, 1_000_000, answered.append)
              for _ in range(n)]  # fmt: skip
        dispatcher.submit(qs, key, 1_000_000)

    submit(1)
    assert sizes == [1]  # an idle replica: at once
    submit(3)
    assert sizes == ([1, 3] if partial else [1])  # three of four wait for the first batch
    if not partial:
        submit(2)
        assert sizes == [1, 4]  # a full batch goes to the second slot; one waits
        first, second = list(replica.inflight)
        dispatcher.on_response(b"r", PredictResponse(struct.pack("<I", first), (1,),
                                                     payload=b"1", status=bytes(1)))  # fmt: skip
        assert sizes == [1, 4]  # the full batch is still in flight: one alone still waits
        dispatcher.on_response(b"r", PredictResponse(struct.pack("<I", second), (1,) * 4,
                                                     payload=b"1" * 4, status=bytes(4)))  # fmt: skip
        assert sizes == [1, 4, 1]  # an idle replica again: what waited goes
        assert len(answered) == 5


def test_the_frontend_flag_turns_partial_batches_on() -> None:
    from schooner.frontend.__main__ import parse_args

    assert parse_args(["--state-db", "/tmp/none.db"])[0].pipeline_partial is False
    config, _ = parse_args(["--state-db", "/tmp/none.db", "--pipeline-partial-batches"])
    assert config.pipeline_partial is True

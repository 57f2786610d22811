"""Batching policy with an injected clock: AIMD sizing and the batch queue."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from schooner.frontend.batching import BatchQueue, BatchSizer


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


SLO = 10_000  # 10 ms -> 5 ms budget at the default fraction of 0.5


def test_grows_while_full_batches_finish_within_budget() -> None:
    clock = FakeClock()
    sizer = BatchSizer(SLO, clock=clock)
    assert sizer.size == 1
    for expected in range(2, 12):
        started = sizer.started()
        clock.now += 0.001
        sizer.finished(sizer.size, started)
        assert sizer.size == expected


def test_partial_batches_do_not_grow_the_size() -> None:
    sizer = BatchSizer(SLO, initial=8)
    for _ in range(10):
        sizer.observe(3, 0.001)
    assert sizer.size == 8


def test_a_slow_batch_shrinks_multiplicatively_but_never_below_one() -> None:
    clock = FakeClock()
    sizer = BatchSizer(SLO, initial=40, clock=clock)
    started = sizer.started()
    clock.now += 0.006  # over the 5 ms budget
    sizer.finished(40, started)
    assert sizer.size == 30
    for _ in range(30):
        sizer.observe(sizer.size, 1.0)
    assert sizer.size == 1


def test_a_backlog_makes_the_size_recover_faster() -> None:
    with_backlog, without = BatchSizer(SLO, initial=8), BatchSizer(SLO, initial=8)
    for _ in range(4):
        with_backlog.observe(with_backlog.size, 0.001, backlog=100)
        without.observe(without.size, 0.001, backlog=0)
    assert without.size == 12  # +1 per full batch
    assert with_backlog.size == 19  # +25% per full batch: 8 -> 10 -> 12.5 -> 15.6 -> 19.5
    slow = BatchSizer(SLO, initial=8)
    slow.observe(8, 0.006, backlog=100)  # over budget: a backlog never stops the decrease
    assert slow.size == 6


def test_only_a_slow_nearly_full_batch_shrinks_the_size() -> None:
    sizer = BatchSizer(SLO, initial=40)
    sizer.observe(10, 0.006)  # slow, but a quarter of the size: not the size's fault
    assert sizer.size == 40
    sizer.observe(30, 0.006)  # slow at 3/4 of the size: shrink below what was slow
    assert sizer.size == 22  # 30 * 0.75


def test_size_is_capped() -> None:
    sizer = BatchSizer(SLO, initial=7, max_size=8)
    for _ in range(5):
        sizer.observe(sizer.size, 0.0)
    assert sizer.size == 8


def test_fixed_batch_size_never_changes() -> None:
    sizer = BatchSizer(SLO, fixed=16)
    sizer.observe(16, 10.0)
    sizer.observe(16, 0.0)
    assert sizer.size == 16
    assert BatchSizer(SLO, fixed=-1).size == 1  # -1 means adaptive


def test_invalid_parameters() -> None:
    with pytest.raises(ValueError):
        BatchSizer(SLO, decrease=1.5)
    with pytest.raises(ValueError):
        BatchSizer(SLO, increase=0)


@dataclass
class Item:
    name: str
    deadline: float
    done: bool = False


def test_queue_pops_up_to_n_live_items_and_reports_expired_ones() -> None:
    q: BatchQueue[Item] = BatchQueue()
    items = [Item("a", 5), Item("b", 20), Item("c", 20, done=True), Item("d", 20), Item("e", 20)]
    for it in items:
        q.push(it)
    batch, expired, skipped = q.pop_batch(2, cutoff=10)
    assert [i.name for i in batch] == ["b", "d"]
    assert [i.name for i in expired] == ["a"]
    assert skipped == 1  # c, answered already
    batch, expired, skipped = q.pop_batch(10, cutoff=10)
    assert [i.name for i in batch] == ["e"] and not expired and not skipped
    assert not q
    assert q.pop_batch(4, cutoff=10) == ([], [], 0)  # empty: nothing to wait for


def test_whatever_is_queued_goes_at_once() -> None:
    q: BatchQueue[Item] = BatchQueue()
    q.push(Item("only", 50))
    batch, _, _ = q.pop_batch(64, cutoff=0)
    assert [i.name for i in batch] == ["only"]


def test_push_front_keeps_order_and_drop_answered() -> None:
    q: BatchQueue[Item] = BatchQueue()
    q.push(Item("later", 9))
    q.push_front([Item("x", 9), Item("y", 9)])
    assert [i.name for i in q.pop_batch(3, cutoff=0)[0]] == ["x", "y", "later"]
    q.extend([Item("p", 1, done=True), Item("q", 1, done=True), Item("r", 1)])
    assert q.drop_answered() == 2
    assert len(q) == 1
    assert [i.name for i in q.drain()] == ["r"]

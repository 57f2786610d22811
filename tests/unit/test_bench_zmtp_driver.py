"""The hot path's raw ZMTP driver (``benchmarks.zmtp_driver.RawRouter``) against real peers:
Schooner's own DEALER channel in a thread, and the real container and echo processes."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from benchmarks import hot_path as hp
from benchmarks.zmtp_driver import IDENTITY, RawRouter
from schooner.frameworks import closure
from schooner.runtime import wire
from schooner.runtime.transport import ZmtpChannel

REQUEST = [b"", b"request", b"x" * 300]  # a long frame too
ANSWER = [b"", b"answer"]


class Peer(threading.Thread):
    """A DEALER that answers every request with ANSWER; a heartbeat after the
    ``heartbeat_after``-th answer, garbage instead of the ``garbage_at``-th."""

    def __init__(self, port: int, heartbeat_after: int = 0, garbage_at: int = 0) -> None:
        super().__init__(daemon=True)
        self.port, self.heartbeat_after, self.garbage_at = port, heartbeat_after, garbage_at
        self.requests = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        channel = ZmtpChannel("127.0.0.1", self.port, timeout=5.0)
        try:
            channel.send([b"", b"hello"])
            while True:
                frames = channel.recv()
                if [bytes(f) for f in frames] == [b"", b"stop"]:
                    break
                self.requests += 1
                if self.requests == self.garbage_at:
                    channel.send([b"", b"garbage"])
                    continue
                channel.send(ANSWER)
                if self.requests == self.heartbeat_after:
                    channel.send(wire.encode_heartbeat())
        except BaseException as exc:  # seen by the test
            self.error = exc
        finally:
            channel.close()


def _connect(heartbeat_after: int = 0, garbage_at: int = 0) -> tuple[RawRouter, Peer]:
    router = RawRouter(timeout_s=10)
    peer = Peer(router.port, heartbeat_after, garbage_at)
    peer.start()
    assert router.poll(10_000)
    assert router.recv_multipart() == [IDENTITY, b"", b"hello"]
    return router, peer


def test_every_request_is_answered_and_a_heartbeat_between_answers_is_skipped() -> None:
    router, peer = _connect(heartbeat_after=3)
    try:
        assert router.drive(REQUEST, inflight=4, count=50) > 0
        assert router.drive(REQUEST, inflight=1, count=7) > 0
        router.send_multipart([IDENTITY, b"", b"stop"])
        peer.join(10)
        assert peer.error is None
        assert peer.requests == 1 + 50 + 1 + 7  # each drive learns the answer from one first
    finally:
        router.close()


def test_an_answer_that_is_not_the_answer_stops_the_run() -> None:
    router, peer = _connect(garbage_at=5)
    try:
        with pytest.raises(RuntimeError, match="unexpected bytes"):
            router.drive(REQUEST, inflight=2, count=20)
    finally:
        router.close()
        peer.join(10)


def test_nothing_connecting_is_a_false_poll() -> None:
    router = RawRouter()
    try:
        assert router.poll(50) is False
    finally:
        router.close()


@pytest.mark.parametrize("server", ["echo", "schooner"])
def test_the_real_servers_on_the_plain_path_rows(tmp_path: Path, server: str) -> None:
    artifact = closure.save(hp.noop, tmp_path / "noop")
    for batch, inflight in hp.PLAIN_PATH:
        row = hp.measure(server, "plain", hp.Payload(batch), inflight, 60, 1, artifact, None,
                         driver="zmtp")  # fmt: skip
        assert row.batches_per_s > 0 and row.batch == batch and row.cpu_us_per_input > 0

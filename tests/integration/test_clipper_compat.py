"""Clipper RPC v3 compatibility, both ways, against independent peers (``v3_peers``).

* A Schooner container (``python -m schooner.runtime`` serving a closure artifact) is
  driven by a minimal plain-v3 frontend: it must register, answer plain v3 requests, never
  send an extension to a peer that did not ask for it, and keep serving after malformed
  messages, a wrong RPC version and a closure that raises.
* The Schooner frontend (``python -m schooner.frontend``) drives a minimal plain-v3
  container: apps, models and links go through the management API, queries through
  ``POST /<app>/predict``; garbage and foreign-version containers must not disturb it.

Real processes and sockets; every wait is bounded.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import ContainerProcess, FrontendProcess, StartContainer, StartFrontend, get_json
from v3_peers import (
    INPUT_DOUBLES,
    INPUT_STRINGS,
    MiniContainer,
    MiniFrontend,
    Registration,
    pack_values,
    u32,
    u64,
)

pytestmark = pytest.mark.slow

POISON = -999.0  # an input containing this value makes the doubles model raise


# --------------------------------------------------------------------------- models
# Built inside functions so that cloudpickle stores them by value in the artifact.


def make_doubles_model() -> Callable[[Any], list[str]]:
    def predict(inputs: Any) -> list[str]:
        arrays = [np.asarray(x, dtype=np.float64) for x in inputs]
        if any((a == POISON).any() for a in arrays):
            raise ValueError("poisoned batch")
        return [repr(float(a.sum())) for a in arrays]

    return predict


def make_strings_model() -> Callable[[Any], list[str]]:
    def predict(inputs: Any) -> list[str]:
        texts = [x.decode("utf-8") if isinstance(x, bytes) else str(x) for x in inputs]
        return [f"{len(t)}:{t[::-1]}" for t in texts]

    return predict


# --------------------------------------------------------------------------- helpers


@pytest.fixture
def mini_frontend() -> Iterator[MiniFrontend]:
    with MiniFrontend() as frontend:
        yield frontend


def doubles(*values: float) -> bytes:
    return pack_values(INPUT_DOUBLES, values)


def serve(
    frontend: MiniFrontend,
    start_container: StartContainer,
    artifact: Path,
    *,
    input_type: str = "doubles",
    model_name: str = "sum",
    env: dict[str, str] | None = None,
) -> tuple[ContainerProcess, Registration]:
    """Start a Schooner container against the mini frontend; wait for its NewContainer."""
    container = start_container(
        artifact, rpc_port=frontend.port, model_name=model_name, input_type=input_type,
        wait_ready=False, env=env,
    )  # fmt: skip

    def registered() -> bool:
        frontend.pump(0.1)
        return bool(frontend.registrations)

    container.process.wait_until(registered, timeout=60, interval=0, what="NewContainer")
    return container, frontend.registrations[-1]


def ask(
    frontend: MiniFrontend,
    container: ContainerProcess,
    reg: Registration,
    input_type: int,
    inputs: list[bytes],
    timeout: float = 20.0,
) -> list[str]:
    """One plain v3 request; on time-out the container's log tail is in the failure."""
    try:
        return frontend.predict_texts(reg.identity, input_type, inputs, timeout)
    except TimeoutError as exc:
        raise AssertionError(f"{exc}\n{container.process.describe()}") from None


def assert_plain_v3_only(frontend: MiniFrontend) -> None:
    assert frontend.violations == [], "the container sent non-v3 traffic to a plain frontend"


# --------------------------------------------------------------------------- the reference peers


def test_reference_peers_agree_with_each_other() -> None:
    """The two minimal peers, alone: proves the harness before it judges Schooner."""
    with MiniFrontend() as frontend, MiniContainer(port=frontend.port, name="ref") as container:
        reg = frontend.wait_for_registration(timeout=10)
        assert (reg.name, reg.version, reg.input_type, reg.version_frame) == ("ref", "1", 3, u32(3))
        texts = frontend.predict_texts(
            reg.identity, INPUT_DOUBLES, [doubles(1, 2), doubles(0.5)], timeout=10
        )
        assert texts == ["3.0", "0.5"]
        frontend.pump_until(container.registered.is_set, 10, "a keep-alive")
    assert frontend.violations == [] and container.violations == []


# --------------------------------------------------------------------------- a. Schooner container


def test_container_registers_with_a_plain_v3_frontend(
    mini_frontend: MiniFrontend, start_container: StartContainer, closure_artifact: Any
) -> None:
    container, reg = serve(mini_frontend, start_container, closure_artifact(make_doubles_model()))
    assert (reg.name, reg.version, reg.input_type) == ("sum", "1", INPUT_DOUBLES)
    # Clipper reads the first u32 of the last frame: it must be 3 (Schooner may append caps).
    assert len(reg.version_frame) in (4, 8)
    assert reg.version_frame[:4] == b"\x03\x00\x00\x00"
    # Registered: it keeps heartbeating, gets keep-alives, and does not register again.
    beats = mini_frontend.heartbeats
    mini_frontend.pump(2.0)
    assert mini_frontend.heartbeats > beats, "no heartbeat while idle"
    assert len(mini_frontend.registrations) == 1
    assert container.process.alive
    assert_plain_v3_only(mini_frontend)
    assert container.process.stop() == 0, container.process.describe()


# The container can receive frames with or without copying them; both must speak v3.
ZERO_COPY = pytest.mark.parametrize("zero_copy", ["0", "1"], ids=["copy", "zero-copy"])


@ZERO_COPY
def test_container_answers_plain_doubles_batches(
    mini_frontend: MiniFrontend,
    start_container: StartContainer,
    closure_artifact: Any,
    zero_copy: str,
) -> None:
    artifact = closure_artifact(make_doubles_model())
    env = {"SCHOONER_ZERO_COPY": zero_copy}
    container, reg = serve(mini_frontend, start_container, artifact, env=env)
    # a batch of one
    assert [float(t) for t in ask(mini_frontend, container, reg, 3, [doubles(1, 2, 3.5)])] == [6.5]
    # several inputs of different lengths, one of them a single element
    batch = [(1.0, 2.0), (0.25,), (-1.5, 1.5, 10.0, 0.125), tuple(np.linspace(0, 1, 101))]
    texts = ask(mini_frontend, container, reg, 3, [doubles(*b) for b in batch])
    assert len(texts) == len(batch)
    assert [float(t) for t in texts] == pytest.approx([sum(b) for b in batch])
    # a bigger batch, values checked one by one
    rng = np.random.default_rng(7)
    big = [tuple(rng.normal(size=int(n))) for n in rng.integers(1, 20, size=64)]
    texts = ask(mini_frontend, container, reg, 3, [doubles(*b) for b in big])
    assert [float(t) for t in texts] == pytest.approx([sum(b) for b in big])
    assert len(mini_frontend.registrations) == 1
    assert_plain_v3_only(mini_frontend)


def test_container_answers_plain_strings_batches(
    mini_frontend: MiniFrontend, start_container: StartContainer, closure_artifact: Any
) -> None:
    artifact = closure_artifact(make_strings_model())
    container, reg = serve(mini_frontend, start_container, artifact, input_type="strings")
    assert reg.input_type == INPUT_STRINGS
    assert ask(mini_frontend, container, reg, INPUT_STRINGS, [b"abc"]) == ["3:cba"]
    words = ["héllo", "ok", "a b c", "日本語"]
    texts = ask(mini_frontend, container, reg, INPUT_STRINGS, [w.encode("utf-8") for w in words])
    assert texts == [f"{len(w)}:{w[::-1]}" for w in words]
    assert_plain_v3_only(mini_frontend)


def test_container_answers_an_empty_string_input(
    mini_frontend: MiniFrontend, start_container: StartContainer, closure_artifact: Any
) -> None:
    artifact = closure_artifact(make_strings_model())
    container, reg = serve(mini_frontend, start_container, artifact, input_type="strings")
    texts = ask(mini_frontend, container, reg, INPUT_STRINGS, [b"", b"x"])
    assert texts == ["0:", "1:x"]


def _malformed_requests(frontend: MiniFrontend) -> dict[str, list[bytes]]:
    good = frontend.request_frames(900, INPUT_DOUBLES, [doubles(1.0), doubles(2.0, 3.0)])
    return {
        "only the delimiter": [b""],
        "no delimiter": [b"garbage", b"more garbage"],
        "delimiter and version only": [b"", u32(3)],
        "unknown message type": [b"", u32(3), u32(9), u32(0)],
        "heartbeat reply with a 2-byte type": [b"", u32(3), u32(2), b"\x00\x00"],
        "request cut after the request type": good[:5],
        "header size mismatch": [*good[:5], u64(len(good[6]) + 8), *good[6:]],
        "header N mismatch": [*good[:6], struct.pack("<4Q", 3, 3, 8, 16), *good[7:]],
        "unknown input type": [*good[:6], struct.pack("<4Q", 9, 2, 8, 16), *good[7:]],
        "missing input frame": good[:-1],
        "extra input frame": [*good, doubles(4.0)],
        "input size mismatch": [*good[:7], doubles(1.0, 1.0), doubles(2.0, 3.0)],
        "feedback request": [*good[:4], u32(1), *good[5:]],
        "message id of 2 bytes": [*good[:3], b"\x01\x00", *good[4:]],
    }


@ZERO_COPY
def test_container_keeps_serving_after_malformed_frames(
    mini_frontend: MiniFrontend,
    start_container: StartContainer,
    closure_artifact: Any,
    zero_copy: str,
) -> None:
    artifact = closure_artifact(make_doubles_model())
    env = {"SCHOONER_ZERO_COPY": zero_copy}
    container, reg = serve(mini_frontend, start_container, artifact, env=env)
    assert ask(mini_frontend, container, reg, 3, [doubles(1.0)]) == ["1.0"]
    for name, frames in _malformed_requests(mini_frontend).items():
        mini_frontend.send_raw(reg.identity, frames)
        mini_frontend.pump(0.05)
        died = f"container died on {name!r}\n{container.process.describe()}"
        assert container.process.alive, died
        # the same session still serves after each one
        texts = ask(mini_frontend, container, reg, 3, [doubles(2.0, 2.5)])
        assert texts == ["4.5"], f"after {name!r}"
    assert len(mini_frontend.registrations) == 1, "the container re-registered"
    assert_plain_v3_only(mini_frontend)


def test_container_keeps_serving_after_a_wrong_rpc_version(
    mini_frontend: MiniFrontend, start_container: StartContainer, closure_artifact: Any
) -> None:
    container, reg = serve(mini_frontend, start_container, closure_artifact(make_doubles_model()))
    request = mini_frontend.request_frames(777, INPUT_DOUBLES, [doubles(5.0)])
    for version in (2, 4, 0xFFFFFFFF):
        mini_frontend.send_raw(reg.identity, [b"", u32(version), *request[2:]])
        mini_frontend.send_raw(reg.identity, [b"", u32(version), u32(2), u32(0)])  # heartbeat reply
    mini_frontend.pump(0.3)
    assert container.process.alive, container.process.describe()
    assert ask(mini_frontend, container, reg, 3, [doubles(0.5, 0.25)]) == ["0.75"]
    assert len(mini_frontend.registrations) == 1, "the container re-registered"
    assert_plain_v3_only(mini_frontend)


def test_container_answers_errors_when_the_closure_raises(
    mini_frontend: MiniFrontend, start_container: StartContainer, closure_artifact: Any
) -> None:
    container, reg = serve(mini_frontend, start_container, closure_artifact(make_doubles_model()))
    poisoned = [doubles(1.0), doubles(POISON, 1.0), doubles(3.0)]
    texts = ask(mini_frontend, container, reg, 3, poisoned)
    assert len(texts) == 3, "N inputs must get N outputs, even for a failed batch"
    for text in texts:
        error = json.loads(text)  # a JSON error object, valid v3 text for a plain frontend
        assert isinstance(error, dict) and error, text
    # the same container keeps serving, in the same session
    texts = ask(mini_frontend, container, reg, 3, [doubles(1.0, 2.0), doubles(4.0)])
    assert texts == ["3.0", "4.0"]
    assert ask(mini_frontend, container, reg, 3, [doubles(POISON)])[0].startswith("{")
    assert ask(mini_frontend, container, reg, 3, [doubles(7.0)]) == ["7.0"]
    assert container.process.alive
    assert len(mini_frontend.registrations) == 1
    assert_plain_v3_only(mini_frontend)


# --------------------------------------------------------------------------- b. Schooner frontend

SLO_MICROS = 20_000_000  # generous: these tests are about the protocol, not latency


def deploy(
    frontend: FrontendProcess,
    *,
    app: str,
    model: str,
    input_type: str = "doubles",
    version: str = "1",
) -> None:
    """Create an app and a model version and link them, through the management API."""
    assert frontend.admin(
        "add_app",
        {"name": app, "input_type": input_type, "default_output": "no answer",
         "latency_slo_micros": SLO_MICROS},
    ) == {"ok": True}  # fmt: skip
    frontend.admin(
        "add_model",
        {"model_name": model, "model_version": version, "labels": ["v3-compat"],
         "input_type": input_type, "container_name": "clipper/v3-mini-container",
         "model_data_path": "/tmp/none", "batch_size": -1},
    )  # fmt: skip
    frontend.admin("add_model_links", {"app_name": app, "model_names": [model]})
    assert frontend.admin("get_linked_models", {"app_name": app}) == [model]


def predict_ok(frontend: FrontendProcess, app: str, body: dict[str, Any]) -> dict[str, Any]:
    status, answer = frontend.predict(app, body)
    assert status == 200, f"{status} {answer!r}\n{frontend.process.describe()}"
    assert isinstance(answer, dict), answer
    return answer


def assert_served(answer: dict[str, Any], expected: Any) -> None:
    assert answer.get("default") is False, answer
    assert isinstance(answer.get("query_id"), int), answer
    if isinstance(expected, float):
        assert answer["output"] == pytest.approx(expected), answer
    else:
        assert answer["output"] == expected, answer


@pytest.fixture
def frontend(start_frontend: StartFrontend) -> FrontendProcess:
    return start_frontend()


def test_frontend_serves_a_plain_v3_container(frontend: FrontendProcess) -> None:
    deploy(frontend, app="sum-app", model="mini-sum")
    with MiniContainer(port=frontend.rpc_port, name="mini-sum", version="1") as mini:
        mini.wait_registered(timeout=20)
        replica = frontend.wait_for_replica("mini-sum", "1", timeout=20)
        assert replica["capabilities"] == 0, replica
        assert replica["input_type"] in ("doubles", INPUT_DOUBLES), replica

        assert_served(predict_ok(frontend, "sum-app", {"input": [1.0, 2.0, 3.5]}), 6.5)
        assert_served(predict_ok(frontend, "sum-app", {"input": [7]}), 7.0)
        batch = predict_ok(frontend, "sum-app", {"input_batch": [[1, 2], [3.0], [0.5, 0.25]]})
        answers = batch["batch_predictions"]
        assert len(answers) == 3, batch
        for answer, expected in zip(answers, [3.0, 3.0, 0.75]):
            assert_served(answer, expected)
        assert_served(predict_ok(frontend, "sum-app", {"input_batch": [[2.5, 2.5]]}), 5.0)
        assert_served(predict_ok(frontend, "sum-app", {"input": [4.0], "version": "1"}), 4.0)

        assert mini.requests_served >= 1
        assert sum(mini.batch_sizes) == 7, mini.batch_sizes  # every query reached the container
    assert mini.violations == [], "the frontend sent non-v3 traffic to a plain container"
    assert frontend.process.alive
    assert frontend.process.stop() == 0, frontend.process.describe()


def test_frontend_serves_a_plain_v3_strings_container(frontend: FrontendProcess) -> None:
    deploy(frontend, app="echo-app", model="mini-echo", input_type="strings")
    with MiniContainer(
        port=frontend.rpc_port, name="mini-echo", version="1", input_type=INPUT_STRINGS
    ) as mini:
        mini.wait_registered(timeout=20)
        frontend.wait_for_replica("mini-echo", "1", timeout=20)
        # "olléh" is not JSON, so it comes back as a string
        assert_served(predict_ok(frontend, "echo-app", {"input": "héllo"}), "olléh")
        # "54321" parses as JSON: the frontend embeds the number
        assert_served(predict_ok(frontend, "echo-app", {"input": "12345"}), 54321)
        batch = predict_ok(frontend, "echo-app", {"input_batch": ["ab", "c"]})
        assert [a["output"] for a in batch["batch_predictions"]] == ["ba", "c"]
    assert mini.violations == []


def _garbage_from_a_container() -> list[list[bytes]]:
    header = struct.pack("<2Q", 1, 3)
    return [
        [b""],
        [b"not-a-delimiter", u32(2)],
        [b"", u32(7), b"junk"],
        [b"", b"\x02\x00"],
        [b"", u32(1), b"\x01\x02"],  # truncated response
        [b"", u32(1), u32(4242), u64(99), header, b"abc"],  # header size mismatch
        [b"", u32(1), u32(4242), u64(len(header)), header, b"abc"],  # answer to no request
        [b"", u32(1), u32(4243), u64(16), header],  # output frame missing
        [b"", u32(0), b"mini-sum", b"1"],  # truncated NewContainer
        [b"", u32(0), b"mini-sum", b"1", b"nine", u32(3)],  # input type not a number
    ]


def test_frontend_keeps_serving_after_garbage_and_foreign_versions(
    frontend: FrontendProcess,
) -> None:
    deploy(frontend, app="sum-app", model="mini-sum")
    with MiniContainer(port=frontend.rpc_port, name="mini-sum", version="1") as mini:
        mini.wait_registered(timeout=20)
        frontend.wait_for_replica("mini-sum", "1", timeout=20)
        assert_served(predict_ok(frontend, "sum-app", {"input": [1.0, 1.0]}), 2.0)

        for frames in _garbage_from_a_container():
            mini.send_raw(frames)
        # Two foreign containers of the same model: RPC version 2, and no version frame.
        with MiniContainer(
            port=frontend.rpc_port, name="mini-sum", version="1", rpc_version=2
        ) as v2, MiniContainer(
            port=frontend.rpc_port, name="mini-sum", version="1", send_version_frame=False
        ) as unversioned:
            for foreign in (v2, unversioned):
                # still asked for metadata after its NewContainer = not registered
                frontend.process.wait_until(
                    lambda f=foreign: f.new_containers_sent >= 2 and f.metadata_requests >= 2,
                    timeout=20,
                    what="a second metadata request to a foreign container",
                )
                assert foreign.keep_alives == 0, "a foreign-version container got registered"
            # the plain container is (again) registered and serves every query
            mini.wait_registered(timeout=20)
            frontend.wait_for_replica("mini-sum", "1", timeout=20)
            replicas = [c for c in frontend.containers() if c.get("model_name") == "mini-sum"]
            assert len(replicas) == 1, replicas
            for i in range(5):
                assert_served(predict_ok(frontend, "sum-app", {"input": [float(i), 0.5]}), i + 0.5)
            assert v2.requests_served == 0 and unversioned.requests_served == 0
        assert frontend.process.alive, frontend.process.describe()
        assert get_json(frontend.query_url + "/health")[0] == 200
        assert_served(predict_ok(frontend, "sum-app", {"input": [9.0]}), 9.0)
    assert mini.violations == []

"""The control protocol, and the supervisor answering it over a real unix socket."""

from __future__ import annotations

import os
import stat
import sys
import threading
import time
from pathlib import Path

import pytest

from schooner.admin.managers.local import control
from schooner.admin.managers.local.layout import ClusterLayout, ClusterSettings
from schooner.admin.managers.local.restart import RestartPolicy
from schooner.admin.managers.local.supervisor import Supervisor, _bind_control_socket
from schooner.runtime.errors import ClipperException


def test_messages_round_trip():
    message = {"op": "scale", "num_replicas": 2, "models": {"m": ["1"]}}
    assert control.decode_message(control.encode_message(message)) == message


@pytest.mark.parametrize("data", [b"", b"not json", b"[1, 2]", b"\xff\xfe"])
def test_malformed_messages_are_refused(data):
    with pytest.raises(control.ControlError, match="malformed"):
        control.decode_message(data)


def test_result_of_reply():
    assert control.result_of(control.ok_reply({"a": 1})) == {"a": 1}
    with pytest.raises(control.ControlError, match="because"):
        control.result_of(control.error_reply("because"))
    assert issubclass(control.ControlError, ClipperException)


def test_request_without_a_supervisor_says_so(tmp_path):
    with pytest.raises(control.ControlError, match="no supervisor listens"):
        control.request(tmp_path / "control.sock", "ping", timeout=1.0)


@pytest.fixture
def fake_runtime(tmp_path: Path) -> str:
    """An executable standing in for a replica's python: it logs its env and sleeps."""
    script = tmp_path / "fake-python"
    script.write_text(
        "#!/bin/sh\n"
        'echo "model=$CLIPPER_MODEL_NAME:$CLIPPER_MODEL_VERSION port=$CLIPPER_PORT '
        'path=$CLIPPER_MODEL_PATH batch=${SCHOONER_MAX_BATCH_SIZE:-none} '
        'metrics=$SCHOONER_METRICS_PORT args=$*"\n'
        'printf "ready\\nmetrics_port=4242\\n" > "$SCHOONER_READY_FILE"\n'
        "exec sleep 60\n"
    )
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return str(script)


@pytest.fixture
def supervisor(tmp_path: Path):
    # A deep directory: the socket path is longer than sun_path allows.
    layout = ClusterLayout(tmp_path / ("d" * 60) / ("e" * 60) / "cluster")
    layout.create()
    settings = ClusterSettings(cluster_name="cluster", rpc_port=7123)
    sup = Supervisor(layout, settings, policy=RestartPolicy(initial_delay_s=0.05),
                     grace_s=2.0, frontend_argv=[sys.executable, "-c",
                                                 "import time; time.sleep(60)"])
    listener = _bind_control_socket(layout)
    thread = threading.Thread(target=sup.serve_forever, args=(listener,), daemon=True)
    thread.start()
    yield sup
    if not sup.finished:
        control.request(layout.control_socket, "shutdown", grace_s=1.0)
    thread.join(timeout=15)
    listener.close()
    assert not thread.is_alive()


def _ask(sup: Supervisor, op: str, **kwargs):
    return control.request(sup.layout.control_socket, op, timeout=10.0, **kwargs)


def _scale(sup, python, n, version="1", batch_size=-1):
    return _ask(sup, "scale", model_name="m", model_version=version, input_type="doubles",
                model_path="/art/m/1", num_replicas=n, batch_size=batch_size, python=python)


def _wait(predicate, seconds=10.0):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def test_supervisor_answers_ping_and_status(supervisor):
    assert len(str(supervisor.layout.control_socket)) > 108
    assert _ask(supervisor, "ping")["pid"] == os.getpid()
    status = _ask(supervisor, "status")
    assert status["frontend"]["state"] == "running"
    assert status["replicas"] == []


def test_unknown_and_bad_requests_are_refused(supervisor):
    with pytest.raises(control.ControlError, match="unknown operation"):
        _ask(supervisor, "explode")
    with pytest.raises(control.ControlError, match="bad scale request"):
        _ask(supervisor, "scale", model_name="m")


def test_scale_up_and_down_with_replica_environment(supervisor, fake_runtime):
    replicas = _scale(supervisor, fake_runtime, 2, batch_size=8)["replicas"]
    assert [r["slot"] for r in replicas] == [0, 1]
    log = Path(replicas[0]["log_path"])
    assert _wait(lambda: "model=" in log.read_text())
    line = log.read_text()
    assert "model=m:1 port=7123 path=/art/m/1 batch=8" in line
    assert "args=-m schooner.runtime" in line
    assert "metrics=0 " in line  # asked for any port: it reports the one it bound
    assert _wait(lambda: _ask(supervisor, "status")["replicas"][0]["metrics_port"] == 4242)

    replicas = _scale(supervisor, fake_runtime, 1)["replicas"]
    assert [r["slot"] for r in replicas] == [0]
    assert _wait(lambda: len(_ask(supervisor, "status")["replicas"]) == 1)


def test_killed_replica_is_restarted(supervisor, fake_runtime):
    pid = _scale(supervisor, fake_runtime, 1)["replicas"][0]["pid"]
    os.kill(pid, 9)

    def restarted():
        r = _ask(supervisor, "status")["replicas"][0]
        return r["restarts"] == 1 and r["pid"] != pid and r["state"] == "running"

    assert _wait(restarted)
    assert _ask(supervisor, "status")["replicas"][0]["last_exit_code"] == -9


def test_stop_models_and_shutdown_leave_no_process(supervisor, fake_runtime):
    pids = [r["pid"] for r in _scale(supervisor, fake_runtime, 2)["replicas"]]
    pids += [r["pid"] for r in _scale(supervisor, fake_runtime, 1, version="2")["replicas"]]
    assert _ask(supervisor, "stop_models", models={"m": ["1"]}) == {"stopped": 2}
    assert _wait(lambda: [r["model_version"] for r in _ask(supervisor, "status")["replicas"]]
                 == ["2"])
    frontend_pid = _ask(supervisor, "status")["frontend"]["pid"]
    _ask(supervisor, "shutdown", grace_s=1.0)
    with pytest.raises(control.ControlError, match="shutting down"):
        _scale(supervisor, fake_runtime, 1)
    assert _wait(lambda: supervisor.finished)
    for pid in pids + [frontend_pid]:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)

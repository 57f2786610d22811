"""A real local cluster: supervisor, frontend and replicas as processes (marked slow)."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

requests = pytest.importorskip("requests")

from conftest import local_cluster  # noqa: E402

from schooner.admin import ClipperConnection, ClipperException, LocalContainerManager  # noqa: E402
from schooner.admin.deployers import python as python_deployer  # noqa: E402
from schooner.admin.managers.local.processes import free_port, is_alive  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]


def add_one(xs):
    return [str(float(sum(x)) + 1.0) for x in xs]


@pytest.fixture
def cluster(tmp_path, monkeypatch):
    monkeypatch.setenv("SCHOONER_HOME", str(tmp_path / "home"))
    with local_cluster("itest", deploy_timeout_s=60.0, grace_s=3.0) as conn:
        yield conn


def _predict(conn: ClipperConnection, app: str, x: list[float]) -> dict:
    r = requests.post(f"http://{conn.get_query_addr()}/{app}/predict", json={"input": x},
                      timeout=10)
    assert r.status_code == 200, r.text
    return r.json()


def _cluster_pids(manager: LocalContainerManager) -> list[int]:
    status = manager.status()
    pids = [status["pid"], status["frontend"]["pid"]]
    return pids + [r["pid"] for r in status["replicas"] if r["pid"]]


def _wait(predicate, seconds: float = 30.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return False


def test_endpoint_scale_crash_and_stop(cluster):
    conn = cluster
    manager = conn.cm
    assert isinstance(manager, LocalContainerManager)
    python_deployer.create_endpoint(conn, "adder", "doubles", add_one, slo_micros=5_000_000)

    answer = _predict(conn, "adder", [1.0, 2.0])
    assert answer["default"] is False and answer["output"] == 4.0
    assert conn.get_linked_models("adder") == ["adder"]
    assert conn.get_app_info("adder")["input_type"] == "doubles"
    assert conn.get_app_info("nope") is None
    assert conn.get_model_info("adder", 1)["model_data_path"].endswith("artifacts/adder/1")

    conn.set_num_replicas("adder", 2)
    assert conn.get_num_replicas("adder") == 2
    assert len([r for r in conn.get_all_model_replicas(verbose=True)
                if r["model_name"] == "adder"]) >= 2
    conn.set_num_replicas("adder", 1)
    assert conn.get_num_replicas("adder") == 1

    # A replica killed with SIGKILL is replaced; queries keep getting answers.
    victim = manager.status()["replicas"][0]
    os.kill(victim["pid"], signal.SIGKILL)
    deadline = time.monotonic() + 30
    answered = 0
    while time.monotonic() < deadline:
        replica = manager.status()["replicas"][0]
        if replica["restarts"] == 1 and replica["state"] == "running":
            break
        time.sleep(0.2)
    assert replica["restarts"] == 1 and replica["pid"] != victim["pid"]
    assert _wait(lambda: _predict(conn, "adder", [5.0])["default"] is False)
    for _ in range(5):
        answer = _predict(conn, "adder", [5.0])
        answered += answer["default"] is False
    assert answered == 5

    logs = conn.get_clipper_logs(str(Path(manager.layout.root) / "copied"))
    assert any(p.endswith("itest-frontend.log") for p in logs)

    pids = _cluster_pids(manager)
    conn.stop_all()
    assert not [pid for pid in pids if is_alive(pid)]
    assert not manager.layout.control_socket.exists()
    with pytest.raises(ClipperException, match="not connected"):
        conn.get_all_apps()


def test_a_replica_that_cannot_load_fails_deploy_with_its_log(cluster, tmp_path):
    conn = cluster
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "schooner.json").write_text("{not json")
    with pytest.raises(ClipperException, match="exited with code") as info:
        conn.build_and_deploy_model("broken", 1, "doubles", str(broken), "default")
    assert "last lines of" in str(info.value)
    assert conn.get_model_info("broken", 1) is None
    assert conn.get_num_replicas("broken", 1) == 0


def test_connect_from_another_handle_and_second_cluster_side_by_side(cluster, tmp_path):
    first = cluster.cm
    again = ClipperConnection(LocalContainerManager("itest"))
    again.connect()
    assert again.get_query_addr() == first.get_query_addr()

    other = ClipperConnection(LocalContainerManager(
        "second", clipper_query_port=free_port(), clipper_management_port=free_port(),
        clipper_rpc_port=free_port(), grace_s=3.0))
    try:
        other.start_clipper()
        other.register_application("x", "doubles", "None", 100000)
        assert other.get_all_apps() == ["x"]
        assert cluster.get_all_apps() == []
    finally:
        other.stop_all()


def test_start_fails_with_the_frontend_log_when_it_dies(tmp_path, monkeypatch):
    monkeypatch.setenv("SCHOONER_HOME", str(tmp_path / "home"))
    manager = LocalContainerManager(
        "dies", clipper_query_port=free_port(), clipper_management_port=free_port(),
        clipper_rpc_port=free_port(), grace_s=2.0)
    # An unwritable state db path makes the frontend exit at start-up.
    manager.layout.create()
    manager.layout.state_db.mkdir()
    conn = ClipperConnection(manager)
    try:
        with pytest.raises(ClipperException, match="frontend exited with code"):
            conn.start_clipper()
        assert not manager.is_running()
    finally:
        conn.stop_all()


def test_stop_all_removes_the_cluster_so_the_same_script_runs_again(tmp_path, monkeypatch):
    """Clipper's stop_all removes the whole cluster: a script that ends with it runs again."""
    monkeypatch.setenv("SCHOONER_HOME", str(tmp_path / "home"))
    for _ in range(2):
        with local_cluster("rerun", grace_s=3.0) as conn:
            assert conn.get_all_apps() == []
            python_deployer.create_endpoint(conn, "adder", "doubles", add_one)
            assert _predict(conn, "adder", [1.0])["output"] == 2.0
            root = Path(conn.cm.layout.root)
        assert not root.exists()


def test_a_crashed_cluster_keeps_its_state_and_a_running_one_refuses_a_second_start(
    tmp_path, monkeypatch, caplog
):
    monkeypatch.setenv("SCHOONER_HOME", str(tmp_path / "home"))
    with local_cluster("crashy", grace_s=3.0) as conn:
        conn.register_application("kept", "doubles", "None", 100000)
        same = ClipperConnection(LocalContainerManager("crashy"))
        with pytest.raises(ClipperException, match="already running"):
            same.start_clipper()
        # The whole cluster dies at once (kill -9 of every process, as a reboot would).
        manager = conn.cm
        pids = _cluster_pids(manager)
        for pid in pids:
            os.kill(pid, signal.SIGKILL)
        assert _wait(lambda: not [pid for pid in pids if is_alive(pid)])
        assert not manager.is_running()
        caplog.set_level("WARNING", logger="schooner.admin.managers.local")
        conn.start_clipper()
        assert conn.get_all_apps() == ["kept"]
        assert "was not stopped with stop_all()" in caplog.text
    assert not Path(manager.layout.root).exists()


def test_schooner_stop_removes_what_a_crashed_run_left(tmp_path, monkeypatch, capsys):
    from schooner.admin import cli

    monkeypatch.setenv("SCHOONER_HOME", str(tmp_path / "home"))
    manager = LocalContainerManager("leftover")
    manager.layout.create()
    manager.layout.state_db.write_bytes(b"")  # what a killed frontend leaves
    assert cli.main(["stop", "--cluster", "leftover"]) == 0
    assert "was not running; removed what it left in" in capsys.readouterr().out
    assert not Path(manager.layout.root).exists()

"""LocalContainerManager and the CLI without a running frontend."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from schooner.admin import ClipperConnection, ClipperException, LocalContainerManager, cli
from schooner.admin.managers.local.layout import ClusterSettings, cluster_layout
from schooner.admin.managers.local.processes import is_alive, log_tail, port_in_use


@pytest.fixture(autouse=True)
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("SCHOONER_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def test_layout_follows_schooner_home(home):
    layout = LocalContainerManager("c1").layout
    assert layout.root == home / "clusters" / "c1"
    assert layout.replica_log("m", "1", 0).name == "replica-m-1-0.log"
    with pytest.raises(ClipperException, match="invalid cluster name"):
        cluster_layout("../etc")


def test_settings_round_trip():
    s = ClusterSettings("c", query_port=1, management_port=2, rpc_port=3)
    assert ClusterSettings.from_json(s.to_json()) == s


def test_build_model_copies_and_records_packages(tmp_path):
    source = tmp_path / "src"
    (source / "sub").mkdir(parents=True)
    (source / "sub" / "w.bin").write_bytes(b"w")
    (source / "requirements.txt").write_text("numpy\n")
    manager = LocalContainerManager("c1")
    conn = ClipperConnection(manager)
    image = conn.build_model("m", 1, str(source), "default", container_registry="reg.io",
                             pkgs_to_install=["numpy", "scipy"])
    assert image == str(manager.layout.artifacts / "m" / "1")
    assert (manager.layout.artifacts / "m" / "1" / "sub" / "w.bin").read_bytes() == b"w"
    assert (manager.layout.artifacts / "m" / "1" / "requirements.txt").read_text() == \
        "numpy\nscipy\n"
    # Rebuilding a version that no replica runs replaces it.
    (source / "sub" / "w.bin").write_bytes(b"v2")
    conn.build_model("m", "1", str(source), "default")
    assert (manager.layout.artifacts / "m" / "1" / "sub" / "w.bin").read_bytes() == b"v2"


def test_build_model_refuses_a_missing_directory(tmp_path):
    with pytest.raises(ClipperException, match="not a directory"):
        LocalContainerManager("c1").build_model("m", "1", str(tmp_path / "nope"), "default")


def test_connect_without_a_cluster_explains_how_to_start_one():
    with pytest.raises(ClipperException, match="no cluster 'c1' is running.*schooner start"):
        ClipperConnection(LocalContainerManager("c1")).connect()


def test_stop_all_without_a_cluster_does_nothing():
    ClipperConnection(LocalContainerManager("c1")).stop_all()


def test_start_refuses_busy_ports():
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        manager = LocalContainerManager("c1", clipper_query_port=port)
        with pytest.raises(ClipperException, match=f"port\\(s\\) \\[{port}\\] already in use"):
            manager.start_clipper()


def test_deploy_needs_an_artifact_directory(tmp_path):
    with pytest.raises(ClipperException, match="not an artifact directory"):
        LocalContainerManager("c1").deploy_model("m", "1", "doubles", "docker.io/m:1")


def test_process_helpers(tmp_path):
    import os
    assert is_alive(os.getpid())
    assert not is_alive(0)
    log = tmp_path / "x.log"
    log.write_text("".join(f"line {i}\n" for i in range(100)))
    assert log_tail(log, 2) == "line 98\nline 99"
    assert "no log" in log_tail(tmp_path / "missing.log")


def test_a_dead_supervisors_pid_file_is_not_the_new_supervisor_exiting():
    # A crashed cluster leaves its supervisor's pid file behind; start_clipper launches a new
    # supervisor, which overwrites it a moment later. Until then the old, dead pid must not
    # read as "the supervisor exited" (a CI failure of the crashed-cluster test).
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    manager = LocalContainerManager("c1", start_timeout_s=0.5)
    manager.layout.create()
    manager.layout.pid_file.write_text(f"{dead.pid}\n")
    with pytest.raises(ClipperException, match="supervisor of cluster 'c1' exited"):
        manager._wait_for_frontend()  # no stale pid given: a dead pid is a dead supervisor
    with pytest.raises(ClipperException, match="did not answer /admin/ping within"):
        manager._wait_for_frontend(stale_pid=dead.pid)  # waits for the new one instead


_LEADER_EXITS_FIRST = """
import ctypes, socket, sys, threading, time
s = socket.socket(); s.bind(("127.0.0.1", 0)); s.listen(); print(s.getsockname()[1], flush=True)
threading.Thread(target=sys.stdin.read).start()  # runs until the test closes stdin
ctypes.CDLL(None).pthread_exit(None)  # the first thread ends; the process lives on
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_a_process_whose_first_thread_exited_is_alive_until_its_other_threads_are_gone():
    """Its first thread shows as a zombie while another still holds its files (here a
    listening socket, as a frontend killed with SIGKILL can for a moment): not gone yet."""
    proc = subprocess.Popen([sys.executable, "-c", _LEADER_EXITS_FIRST], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        port = int(proc.stdout.readline())
        deadline = time.monotonic() + 10
        while "Z" not in Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()[:1]:
            assert time.monotonic() < deadline, "the first thread did not exit"
            time.sleep(0.01)
        assert is_alive(proc.pid) and port_in_use(port)
    finally:
        proc.stdin.close()  # the other thread returns: the process exits
        proc.wait(timeout=10)
        proc.stdout.close()
    assert not is_alive(proc.pid) and not port_in_use(port)


def test_cli_status_of_a_stopped_cluster(capsys):
    assert cli.main(["status", "--cluster", "x"]) == 1
    assert "no cluster 'x' is running; start it with: schooner start --cluster x" in \
        capsys.readouterr().err
    assert cli.main(["stop"]) == 0
    assert "no cluster 'default-cluster' is running; nothing to stop" in capsys.readouterr().out


def test_cli_logs(capsys):
    layout = LocalContainerManager("c1").layout
    layout.create()
    (layout.logs / "frontend.log").write_text("frontend ready\n")
    (layout.logs / "replica-m-1-0.log").write_text("replica zero\n")
    (layout.logs / "replica-m-1-1.log").write_text("replica one\n")
    assert cli.main(["logs", "--cluster", "c1", "frontend"]) == 0
    assert capsys.readouterr().out == "frontend ready\n"
    assert cli.main(["logs", "--cluster", "c1", "m:1"]) == 0
    out = capsys.readouterr().out
    assert "replica zero" in out and "replica one" in out and "frontend" not in out
    assert cli.main(["logs", "--cluster", "c1", "m:1:1"]) == 0
    assert capsys.readouterr().out == "replica one\n"
    assert cli.main(["logs", "--cluster", "c1", "other"]) == 1


def test_cli_parser():
    args = cli.build_parser().parse_args(["start", "--cluster", "b", "--rpc-port", "7001"])
    assert (args.cluster, args.query_port, args.rpc_port) == ("b", 1337, 7001)

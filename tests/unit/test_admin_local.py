"""LocalContainerManager and the CLI without a running frontend."""

from __future__ import annotations

import socket

import pytest

from schooner.admin import ClipperConnection, ClipperException, LocalContainerManager, cli
from schooner.admin.managers.local.layout import ClusterSettings, cluster_layout
from schooner.admin.managers.local.processes import is_alive, log_tail


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

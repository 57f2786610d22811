"""A frontend run as two worker processes (``--workers 2``): real processes throughout.

The workers share the query port (SO_REUSEPORT) and the state file; a replica given both
workers' sockets serves both. Queries go over fresh connections, so that both workers get
some; what each answered is read from /metrics (``schooner_frontend_worker_predictions``).
"""

from __future__ import annotations

import os
import re
import signal
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

requests = pytest.importorskip("requests")

from conftest import free_ports_in_a_row, local_cluster  # noqa: E402

from schooner.frontend.workers import metrics_folder  # noqa: E402
from schooner.runtime.config import ContainerConfig, worker_endpoints  # noqa: E402
from schooner.runtime.frontends import _Coalescing, _join  # noqa: E402
from schooner.runtime.metrics import ContainerMetrics  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]


def _fresh(url: str, body: Any, timeout: float = 10.0) -> tuple[int, Any]:
    """POST on a new connection (closed after), so SO_REUSEPORT may pick either worker."""
    r = requests.post(url, json=body, timeout=timeout, headers={"Connection": "close"})
    try:
        return r.status_code, r.json()
    except ValueError:
        return r.status_code, r.text


def _worker_counts(frontend: Any) -> dict[str, float]:
    text = requests.get(frontend.query_url + "/metrics", timeout=5).text
    return {m.group(1): float(m.group(2)) for m in re.finditer(
        r'^schooner_frontend_worker_predictions_total\{worker="(\d+)"\} (\S+)$', text, re.M)}


def _worker_pids(log: str) -> dict[int, list[int]]:
    pids: dict[int, list[int]] = {}
    for index, pid in re.findall(r"worker (\d+) started \(pid (\d+)\)", log):
        pids.setdefault(int(index), []).append(int(pid))
    return pids


def _all_answered(frontend: Any, app: str, n: int, expect: float) -> list[int]:
    """``n`` queries over fresh connections, each answered by the model; their query ids."""
    ids = []
    for i in range(n):
        status, answer = _fresh(f"{frontend.query_url}/{app}/predict", {"input": [float(i), 1.0]})
        assert status == 200, answer
        assert answer["default"] is False, answer
        assert answer["output"] == i + 1.0 + expect, answer
        ids.append(answer["query_id"])
    return ids


@pytest.fixture
def two_workers(start_frontend, start_container, closure_artifact, tmp_path):
    rpc = free_ports_in_a_row(2)  # (the last --rpc-port given wins)
    # what an earlier run with more workers published: not counted as this run's
    state_db = tmp_path / "workers-state.db"
    stale = metrics_folder(str(state_db))
    stale.mkdir()
    (stale / "worker-5.prom").write_text(
        "# TYPE schooner_frontend_predictions_total counter\n"
        'schooner_frontend_predictions_total{app="sum"} 1000.0\n'
        "# TYPE schooner_frontend_replicas gauge\n"
        'schooner_frontend_replicas{model="sum:1"} 9.0\n')
    frontend = start_frontend(extra_args=["--workers", "2", "--allow-unauthenticated-containers",
                                          "--rpc-port", str(rpc)], local_socket=True,
                              state_db=state_db)  # fmt: skip
    frontend.rpc_port = rpc
    frontend.process.wait_until(  # worker 0 serves the management port
        lambda: all(f"frontend ready (worker {i})" in frontend.process.log() for i in (0, 1)),
        timeout=30, what="both workers ready")

    def plus(k):
        def model(xs):
            return [str(float(sum(x)) + k) for x in xs]
        return model

    frontend.admin("add_app", {"name": "sum", "input_type": "doubles", "default_output": "d",
                               "latency_slo_micros": 5_000_000})
    frontend.admin("add_model", {"model_name": "sum", "model_version": "1",
                                 "input_type": "doubles", "batch_size": -1})
    frontend.admin("add_model_links", {"app_name": "sum", "model_names": ["sum"]})
    endpoints = ",".join(worker_endpoints(2, "127.0.0.1", frontend.rpc_port,
                                          frontend.rpc_socket))
    start_container(closure_artifact(plus(0.0), "v1"), rpc_port=frontend.rpc_port,
                    model_name="sum", model_version="1",
                    env={"SCHOONER_FRONTEND_ENDPOINTS": endpoints})
    # both workers reach the replica: every one of 20 fresh connections is answered by it
    frontend.process.wait_until(
        lambda: all(_fresh(f"{frontend.query_url}/sum/predict", {"input": [1.0]})[1]
                    .get("default") is False for _ in range(20)) or None,
        timeout=30, interval=0.2, what="the replica on both workers")
    frontend.plus = plus  # type: ignore[attr-defined]
    frontend.endpoints = endpoints  # type: ignore[attr-defined]
    return frontend


def test_both_workers_answer_with_unique_ids(two_workers):
    frontend = two_workers
    ids = _all_answered(frontend, "sum", 200, 0.0)
    assert len(set(ids)) == len(ids)
    time.sleep(1.5)  # each worker publishes its metrics every second
    counts = _worker_counts(frontend)
    assert set(counts) == {"0", "1"}, counts
    assert counts["0"] > 0 and counts["1"] > 0, counts
    assert sum(counts.values()) >= 200
    # the merged /metrics counts every worker's queries under the usual names too
    text = requests.get(frontend.query_url + "/metrics", timeout=5).text
    answered = sum(float(v) for v in re.findall(
        r'^schooner_frontend_predictions_total\{app="sum"\} (\S+)$', text, re.M))
    assert answered == sum(counts.values())
    # one replica, connected to both workers, is one replica (a gauge is not summed)
    assert re.findall(r'^schooner_frontend_replicas\{model="sum:1"\} (\S+)$', text, re.M) == ["1"]


def test_a_management_change_is_on_every_worker_when_answered(two_workers, start_container,
                                                             closure_artifact):
    frontend = two_workers
    # a new app linked to the model: the very next queries, on either worker, find it
    frontend.admin("add_app", {"name": "again", "input_type": "doubles", "default_output": "d",
                               "latency_slo_micros": 5_000_000})
    frontend.admin("add_model_links", {"app_name": "again", "model_names": ["sum"]})
    _all_answered(frontend, "again", 30, 0.0)
    # a new version made current: every worker sends its queries there at once
    frontend.admin("add_model", {"model_name": "sum", "model_version": "2",
                                 "input_type": "doubles", "batch_size": -1})
    start_container(closure_artifact(frontend.plus(100.0), "v2"), rpc_port=frontend.rpc_port,
                    model_name="sum", model_version="2",
                    env={"SCHOONER_FRONTEND_ENDPOINTS": frontend.endpoints})
    _all_answered(frontend, "sum", 30, 100.0)
    frontend.admin("set_model_version", {"model_name": "sum", "model_version": "1"})
    _all_answered(frontend, "sum", 30, 0.0)
    # replicas announced as not coming (expect_replicas 0): every worker answers at once
    # (without the notice, the other worker would hold the queries for their SLO, 3 s)
    frontend.admin("add_app", {"name": "pending", "input_type": "doubles", "default_output": "d",
                               "latency_slo_micros": 3_000_000})
    frontend.admin("add_model", {"model_name": "later", "model_version": "1",
                                 "input_type": "doubles", "batch_size": -1})
    frontend.admin("add_model_links", {"app_name": "pending", "model_names": ["later"]})
    frontend.admin("expect_replicas", {"model_name": "later", "model_version": "1",
                                       "seconds": 0})
    for _ in range(20):
        started = time.monotonic()
        status, answer = _fresh(f"{frontend.query_url}/pending/predict", {"input": [1.0]})
        assert status == 200 and answer["default"] is True, answer
        assert time.monotonic() - started < 1.5, answer
    frontend.admin("delete_app", {"name": "again"})
    for _ in range(20):
        status, _answer = _fresh(f"{frontend.query_url}/again/predict", {"input": [1.0]})
        assert status == 404


def test_a_killed_worker_is_restarted_and_sigterm_stops_all(two_workers):
    frontend = two_workers
    pids = _worker_pids(frontend.process.log())
    assert set(pids) == {0, 1}
    victim = pids[1][-1]
    os.kill(victim, signal.SIGKILL)
    frontend.process.wait_until(lambda: len(_worker_pids(frontend.process.log()).get(1, [])) > 1,
                                timeout=30, what="worker 1 restarted")
    frontend.process.wait_until(lambda: "frontend ready (worker 1)" in
                                frontend.process.log().split(f"pid {victim}")[-1] or None,
                                timeout=30, what="the new worker 1 ready")
    # the port keeps serving, and the restarted worker gets its replica session back
    deadline = time.monotonic() + 30
    while True:
        answers = [_fresh(f"{frontend.query_url}/sum/predict", {"input": [1.0]}) for _ in range(20)]
        if all(s == 200 and a["default"] is False for s, a in answers):
            break
        assert time.monotonic() < deadline, answers
        time.sleep(0.2)
    _all_answered(frontend, "sum", 50, 0.0)
    workers = [p[-1] for p in _worker_pids(frontend.process.log()).values()]
    assert frontend.process.stop() == 0
    for pid in workers:
        assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(
            f"/proc/{pid}/status").read_text().lower()


def test_local_manager_runs_two_workers(tmp_path, monkeypatch):
    from schooner.admin.deployers import python as python_deployer

    monkeypatch.setenv("SCHOONER_HOME", str(tmp_path / "home"))

    def add_one(xs):
        return [str(float(sum(x)) + 1.0) for x in xs]

    with local_cluster("workers", deploy_timeout_s=60.0, grace_s=3.0,
                       frontend_workers=2) as conn:
        python_deployer.create_endpoint(conn, "adder", "doubles", add_one,
                                        slo_micros=5_000_000)
        query = f"http://{conn.get_query_addr()}"
        deadline = time.monotonic() + 30
        while not all(_fresh(f"{query}/adder/predict", {"input": [1.0]})[1]["default"] is False
                      for _ in range(20)):
            assert time.monotonic() < deadline, "the replica did not reach both workers"
            time.sleep(0.2)
        # the Python client's register + link, then queries on fresh connections at once
        conn.register_application("more", "doubles", "d", 5_000_000)
        conn.link_model_to_app("more", "adder")
        for i in range(30):
            status, answer = _fresh(f"{query}/more/predict", {"input": [float(i)]})
            assert status == 200 and answer["default"] is False, answer
            assert answer["output"] == i + 1.0


# ----------------------------------------------------------------- coalescing in the replica


class _Recording:
    """A framework that records each batch's size; the first call waits to be released."""

    def __init__(self) -> None:
        self.sizes: list[int] = []
        self.entered = threading.Event()
        self.release = threading.Event()
        self.fail_joined = False

    def predict(self, batch: Any) -> list[str]:
        if not self.sizes:
            self.entered.set()
            self.release.wait(10)
        self.sizes.append(len(batch))
        if self.fail_joined and len(batch) > 2:
            raise ValueError("joined")
        return [str(float(np.sum(x))) for x in batch]


def _coalesced(limit: int, fail_joined: bool = False) -> tuple[_Recording, list[Any]]:
    framework = _Recording()
    framework.fail_joined = fail_joined
    metrics = ContainerMetrics("m", "1")
    shared = _Coalescing(framework, limit, metrics)  # type: ignore[arg-type]
    results: list[Any] = [None] * 4

    def call(i: int, batch: Any) -> None:
        try:
            results[i] = list(shared.predict(batch))
        except Exception as exc:
            results[i] = exc

    first = threading.Thread(target=call, args=(0, np.ones((1, 2))))
    first.start()
    assert framework.entered.wait(5)
    others = [threading.Thread(target=call, args=(i, np.full((2, 2), float(i))))
              for i in (1, 2, 3)]
    for t in others:
        t.start()
    deadline = time.monotonic() + 5
    while len(shared._queue) < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    framework.release.set()
    for t in [first, *others]:
        t.join(10)
    assert metrics.batch_size.count == len(framework.sizes)
    return framework, results


def test_sessions_batches_are_coalesced_up_to_the_limit():
    framework, results = _coalesced(limit=4)
    # the three batches that waited: two fit in one call of 4, the third goes alone
    assert framework.sizes == [1, 4, 2]
    assert results[0] == ["2.0"]
    for i in (1, 2, 3):
        assert results[i] == [str(2.0 * i)] * 2
    framework, _ = _coalesced(limit=0)
    assert framework.sizes == [1, 6]


def test_a_coalesced_call_that_raises_is_predicted_batch_by_batch():
    framework, results = _coalesced(limit=0, fail_joined=True)
    assert framework.sizes == [1, 6, 2, 2, 2]
    for i in (1, 2, 3):
        assert results[i] == [str(2.0 * i)] * 2


def test_a_join_that_fails_leaves_no_session_waiting(monkeypatch):
    """Joining the batches itself raises (a MemoryError on a large concatenate, say): every
    session still gets its own batch's answer, predicted alone."""
    import schooner.runtime.frontends as frontends

    def broken(batches):
        raise MemoryError("joining")

    monkeypatch.setattr(frontends, "_join", broken)
    framework, results = _coalesced(limit=0)
    assert framework.sizes == [1, 2, 2, 2]
    assert results[0] == ["2.0"]
    for i in (1, 2, 3):
        assert results[i] == [str(2.0 * i)] * 2


def test_join_keeps_the_batch_forms():
    assert _join([np.ones((1, 3)), np.zeros((2, 3))]).shape == (3, 3)
    mixed = _join([np.ones((1, 3)), np.ones((1, 2))])
    assert isinstance(mixed, list) and [len(x) for x in mixed] == [3, 2]
    assert _join([["a"], ["b", "c"]]) == ["a", "b", "c"]


def test_endpoints_variable():
    env = {"CLIPPER_MODEL_NAME": "m", "CLIPPER_MODEL_VERSION": "1",
           "SCHOONER_FRONTEND_ENDPOINTS": "unix:@a, unix:@a.w1,127.0.0.1:7001"}
    config = ContainerConfig.from_env(env)
    assert config.every_frontend
    assert config.frontend_endpoints == ("unix:@a", "unix:@a.w1", "127.0.0.1:7001")
    assert ContainerConfig.from_env(config.to_env()) == config
    with pytest.raises(Exception, match="SCHOONER_FRONTEND_ENDPOINTS"):
        ContainerConfig.from_env(env | {"SCHOONER_FRONTEND_ENDPOINTS": "nohostport"})


def test_a_busy_sessions_batch_is_waited_for(monkeypatch):
    import schooner.runtime.frontends as frontends

    monkeypatch.setattr(frontends, "BUSY_S", 10.0)  # a session seen once stays busy here
    framework = _Recording()
    framework.release.set()
    shared = _Coalescing(framework, 0, ContainerMetrics("m", "1"), wait_s=5.0)  # type: ignore[arg-type]
    answers: list[Any] = []

    def session(delays: list[float]) -> None:
        for delay in delays:
            time.sleep(delay)
            answers.append(list(shared.predict(np.ones((1, 2)))))

    # a: alone at 0 (nobody else busy yet), again at 0.6; b at 0.2 sees a busy and waits
    # for a's next batch: one call of 2, well before the 5 s limit
    threads = [threading.Thread(target=session, args=(d,)) for d in ([0.0, 0.6], [0.2])]
    started = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert answers == [["2.0"]] * 3
    assert framework.sizes == [1, 2]
    assert time.monotonic() - started < 3.0


def test_a_lone_session_does_not_wait():
    framework = _Recording()
    framework.release.set()
    shared = _Coalescing(framework, 0, ContainerMetrics("m", "1"), wait_s=5.0)  # type: ignore[arg-type]
    started = time.monotonic()
    for _ in range(3):
        assert list(shared.predict(np.ones((1, 2)))) == ["2.0"]
    assert time.monotonic() - started < 1.0


# ----------------------------------------------------------------- the shared state file


def _race(path: str, worker: int, names: list[str], barrier: Any, out: Any) -> None:
    from schooner.frontend.shared_state import SqliteSharedStateStore
    from schooner.frontend.state import App, StateError
    from schooner.runtime.wire import InputType

    store = SqliteSharedStateStore.open(path, worker)
    barrier.wait(10)
    for name in names:
        try:
            store.add_app(App(name, InputType.DOUBLES, "d", 1000))
            out.put((worker, name, 200))
        except StateError as exc:
            out.put((worker, name, exc.status))
    out.put((worker, "ids", store.reserve_query_ids(1000)))
    store.close()


def test_workers_racing_on_the_state_file(tmp_path):
    """Processes adding apps at once through one file: every name is made exactly once
    (the loser gets 409), each sees them all after catching up, query ids never overlap."""
    import multiprocessing

    from schooner.frontend.shared_state import SqliteSharedStateStore

    path = str(tmp_path / "state.db")
    ctx = multiprocessing.get_context("fork")
    barrier, out = ctx.Barrier(3), ctx.Queue()
    shared = [f"app{i}" for i in range(20)]
    procs = [ctx.Process(target=_race, args=(path, w, shared + [f"own{w}"], barrier, out))
             for w in range(3)]
    for p in procs:
        p.start()
    results = [out.get(timeout=60) for _ in range(3 * 22)]
    for p in procs:
        p.join(30)
        assert p.exitcode == 0
    made = [(w, name) for w, name, status in results if name != "ids" and status == 200]
    refused = [name for w, name, status in results if name != "ids" and status == 409]
    assert sorted(name for _, name in made) == sorted(shared + ["own0", "own1", "own2"])
    assert sorted(refused) == sorted(shared * 2)
    firsts = sorted(first for w, name, first in results if name == "ids")
    assert all(b - a >= 1000 for a, b in zip(firsts, firsts[1:]))
    reader = SqliteSharedStateStore.open(path, 9)
    assert set(reader.apps) == set(shared) | {"own0", "own1", "own2"}
    # the racing workers have exited: nobody is waited for
    assert reader.lagging(reader.applied + 1) == [9]
    reader.close()


def test_several_workers_refuse_a_kernel_picked_rpc_port(capsys):
    from schooner.frontend.__main__ import parse_args

    with pytest.raises(SystemExit) as exited:
        parse_args(["--workers", "2", "--rpc-port", "0", "--state-db", "/tmp/none.db"])
    assert exited.value.code == 2
    assert "need a fixed --rpc-port" in capsys.readouterr().err
    config, _ = parse_args(["--workers", "2", "--rpc-port", "7100", "--state-db", "/tmp/none.db"])
    assert config.workers == 2 and config.rpc_port == 7100


def _open_at_once(path: str, worker: int, barrier: Any, out: Any) -> None:
    from schooner.frontend.shared_state import SqliteSharedStateStore

    barrier.wait(10)
    try:
        SqliteSharedStateStore.open(path, worker).close()
        out.put("ok")
    except Exception as exc:
        out.put(repr(exc))


def test_workers_opening_a_new_state_file_at_once_all_start(tmp_path):
    """Workers started together race to switch a new file to WAL; none of them may fail
    ("database is locked" stopped a frontend at start)."""
    import multiprocessing

    ctx = multiprocessing.get_context("fork")
    for attempt in range(5):
        path = str(tmp_path / f"state{attempt}.db")
        barrier, out = ctx.Barrier(6), ctx.Queue()
        procs = [ctx.Process(target=_open_at_once, args=(path, w, barrier, out)) for w in range(6)]
        for p in procs:
            p.start()
        results = [out.get(timeout=60) for _ in procs]
        for p in procs:
            p.join(30)
        assert results == ["ok"] * 6

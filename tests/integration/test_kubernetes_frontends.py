"""Several frontends sharing one Redis, and one replica serving all of them (real processes).

What a Kubernetes cluster with two frontend pods runs, on 127.0.0.1 and 127.0.0.2 (the same
RPC port on two addresses, as two pods have), with the credentials its Secret hands out:
apps and models made through one frontend are served by the other, the replica registers
with both, and a frontend that is lost comes back with the whole state.
"""

from __future__ import annotations

import shutil
import sys
import threading
from pathlib import Path

import pytest
from conftest import free_port, post_json, wait_until

from schooner.frontend.shared_state import RedisStateStore, StateUnavailable
from schooner.frontend.state import App, Conflict, Model
from schooner.runtime.wire import InputType

pytest.importorskip("redis")

TOKEN = "admin-token-for-tests"
SECRET = "rpc-secret-for-tests"
PASSWORD = "redis-password-for-tests"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
D = InputType.DOUBLES


@pytest.fixture
def redis_address(redis_server):
    return redis_server[0]


@pytest.fixture
def redis_server(spawn, tmp_path):
    """(HOST:PORT, the redis-server process)."""
    server = shutil.which("redis-server")
    if server is None:
        pytest.skip("redis-server is not installed (.ci/run installs it)")
    port = free_port()
    config = tmp_path / "redis.conf"  # the password in a file, as the pod's Secret mounts it
    config.write_text(f"port {port}\nbind 127.0.0.1\nrequirepass {PASSWORD}\nsave \"\"\n"
                      f"appendonly no\ndir {tmp_path}\n")  # fmt: skip
    proc = spawn("redis", [server, str(config)])
    import redis

    client = redis.Redis(port=port, password=PASSWORD, socket_timeout=2)
    proc.wait_until(lambda: client.ping(), timeout=20, what="redis answers",
                    ignore=(OSError, redis.RedisError))  # fmt: skip
    client.close()
    return f"127.0.0.1:{port}", proc


def store(address: str, prefix: str = "test") -> RedisStateStore:
    return RedisStateStore.connect(address, PASSWORD, prefix)


def test_stores_see_each_others_changes_and_mutations_serialize(redis_address):
    a, b = store(redis_address), store(redis_address)
    try:
        a.add_app(App("sum", D, "0", 100_000))
        a.add_model(Model("sum", "1", D))
        assert b.sync() and "sum" in b.apps and b.current == {"sum": "1"}
        # b has not caught up with this one; its link validates against the log's end
        a.add_model(Model("sum", "2", D))
        b.link("sum", "sum")
        assert a.sync() and a.apps["sum"].linked_model == "sum"
        assert [m.version for m in b.versions("sum")] == ["1", "2"]
        # the same app made on both: one succeeds, one is told it exists
        a.add_app(App("dup", D, "0", 1000))
        with pytest.raises(Conflict, match="already exists"):
            b.add_app(App("dup", D, "0", 1000))
        # a third store (a frontend restarted) replays everything
        c = store(redis_address)
        assert set(c.apps) == {"sum", "dup"} and c.current == {"sum": "2"}
        assert c.apps["sum"].linked_model == "sum"
        c.close()
        # another cluster (prefix) in the same Redis sees none of it
        other = store(redis_address, prefix="other")
        assert other.apps == {}
        other.close()
    finally:
        a.close()
        b.close()


def test_racing_writers_lose_nothing(redis_address):
    stores = [store(redis_address) for _ in range(4)]
    errors: list[BaseException] = []

    def add(s: RedisStateStore, i: int) -> None:
        try:
            for n in range(10):
                s.add_app(App(f"app-{i}-{n}", D, "0", 1000))
        except BaseException as exc:  # noqa: BLE001 (reported below)
            errors.append(exc)

    threads = [threading.Thread(target=add, args=(s, i)) for i, s in enumerate(stores)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    check = store(redis_address)
    assert len(check.apps) == 40
    for s in [*stores, check]:
        s.close()


def test_learned_policy_state_is_shared_but_not_logged(redis_address):
    a = store(redis_address)
    a.add_app(App("sel", D, "0", 1000))
    for n in range(50):  # saved after each feedback: must not grow the log
        a.save_policy_state("sel", f'{{"n": {n}}}')
    assert a._redis.llen(a._log_key) == 1
    b = store(redis_address)  # a frontend starting loads what was learned
    assert b.policy_state == {"sel": '{"n": 49}'}
    b.delete_app("sel")  # a mutation that drops the state drops the shared entry with it
    c = store(redis_address)
    assert c.policy_state == {} and a._redis.hlen(a._policy_key) == 0
    for s in (a, b, c):
        s.close()


def test_a_database_that_lost_its_data_is_said_so(redis_address):
    a = store(redis_address)
    a.add_app(App("kept", D, "0", 1000))
    a._redis.flushall()  # a Redis without its volume, restarted
    with pytest.raises(StateUnavailable, match="lost data"):
        a.add_app(App("new", D, "0", 1000))
    with pytest.raises(StateUnavailable, match="holds 0 changes but this frontend applied 1"):
        a.poll()
    assert set(a.apps) == {"kept"}
    a.close()


def test_query_ids_are_unique_across_frontends(redis_address):
    a, b = store(redis_address), store(redis_address)
    blocks = [a.reserve_query_ids(1000), b.reserve_query_ids(1000), a.reserve_query_ids(5)]
    assert blocks == [0, 1000, 2000]
    a.close()
    b.close()


def test_an_unreachable_database_is_a_503_not_a_hang(redis_server):
    address, proc = redis_server
    s = store(address)
    s.add_app(App("kept", D, "0", 1000))
    proc.stop()
    with pytest.raises(StateUnavailable) as err:
        s.add_app(App("x", D, "0", 1000))
    assert err.value.status == 503 and PASSWORD not in str(err.value)
    assert set(s.apps) == {"kept"}  # what it had is still served
    s.close()


# --------------------------------------------------------------------------- real processes


def start_frontend(spawn, tmp_path: Path, name: str, host: str, rpc_port: int,
                   redis_address: str) -> dict:  # fmt: skip
    query, management = free_port(), free_port()
    argv = [sys.executable, "-m", "schooner.frontend",
            "--query-host", host, "--query-port", str(query),
            "--management-host", host, "--management-port", str(management),
            "--rpc-host", host, "--rpc-port", str(rpc_port),
            "--state-redis", redis_address, "--state-prefix", "schooner:test",
            "--replica-timeout", "3", "--log-level", "DEBUG"]  # fmt: skip
    env = {"SCHOONER_STATE_PASSWORD": PASSWORD, "SCHOONER_ADMIN_TOKEN": TOKEN,
           "SCHOONER_RPC_SECRET": SECRET}  # fmt: skip
    proc = spawn(name, argv, env=env)
    proc.wait_for_log("frontend ready", timeout=30)
    return {"proc": proc, "query": f"http://{host}:{query}",
            "admin": f"http://{host}:{management}/admin"}  # fmt: skip


def admin(frontend: dict, path: str, body: dict) -> object:
    status, answer = post_json(f"{frontend['admin']}/{path}", body, headers=AUTH)
    assert status == 200, (path, status, answer)
    return answer


def connected(frontend: dict) -> int:
    status, answer = post_json(f"{frontend['admin']}/get_all_containers", {"verbose": True},
                               headers=AUTH)  # fmt: skip
    return sum(1 for c in answer if c["model_name"] == "sum") if status == 200 else 0


def test_two_frontends_share_the_state_and_one_replica(
    spawn, tmp_path, redis_address, closure_artifact
):
    rpc_port = free_port()
    a = start_frontend(spawn, tmp_path, "frontend-a", "127.0.0.1", rpc_port, redis_address)
    b = start_frontend(spawn, tmp_path, "frontend-b", "127.0.0.2", rpc_port, redis_address)

    # everything is made through frontend a's management API
    admin(a, "add_app", {"name": "sum", "input_type": "doubles", "default_output": "-1",
                         "latency_slo_micros": 5_000_000})  # fmt: skip
    admin(a, "add_model", {"model_name": "sum", "model_version": "1", "input_type": "doubles"})
    admin(a, "add_model_links", {"app_name": "sum", "model_names": ["sum"]})
    wait_until(lambda: post_json(f"{b['admin']}/get_linked_models", {"app_name": "sum"},
                                 headers=AUTH) == (200, ["sum"]),
               timeout=20, what="frontend b sees a's app and link")  # fmt: skip

    def double_sum(xs):
        return [str(2 * sum(x)) for x in xs]

    replica = spawn("replica", [sys.executable, "-m", "schooner.runtime"], env={
        "CLIPPER_MODEL_NAME": "sum", "CLIPPER_MODEL_VERSION": "1",
        "CLIPPER_IP": "127.0.0.1,127.0.0.2", "CLIPPER_PORT": rpc_port,
        "SCHOONER_EVERY_FRONTEND": "1", "SCHOONER_RPC_SECRET": SECRET,
        "CLIPPER_MODEL_PATH": str(closure_artifact(double_sum)),
        "SCHOONER_READY_FILE": str(tmp_path / "replica.ready"),
        "SCHOONER_HEARTBEAT_INTERVAL": "0.5", "SCHOONER_LOG_LEVEL": "DEBUG",
    })  # fmt: skip
    for frontend in (a, b):
        replica.wait_until(lambda f=frontend: connected(f) == 1, timeout=60,
                           what=f"the replica registered with {frontend['query']}")  # fmt: skip
    for frontend, x in ((a, 1.0), (b, 2.0), (a, 3.0), (b, 4.0)):
        status, answer = post_json(f"{frontend['query']}/sum/predict", {"input": [x, x]})
        assert status == 200 and answer["default"] is False, answer
        assert float(answer["output"]) == 4 * x

    # frontend a is lost; b keeps serving; a comes back with the whole state and the replica
    a["proc"].stop()
    status, answer = post_json(f"{b['query']}/sum/predict", {"input": [5.0]})
    assert status == 200 and float(answer["output"]) == 10.0
    admin(b, "add_app", {"name": "made-on-b", "input_type": "doubles",
                         "latency_slo_micros": 100_000})  # fmt: skip
    a2 = start_frontend(spawn, tmp_path, "frontend-a2", "127.0.0.1", rpc_port, redis_address)
    names = {app["name"] for app in admin(a2, "get_all_applications", {"verbose": True})}
    assert names == {"sum", "made-on-b"}
    replica.wait_until(lambda: connected(a2) == 1, timeout=60,
                       what="the replica registered with the restarted frontend")  # fmt: skip
    status, answer = post_json(f"{a2['query']}/sum/predict", {"input": [6.0]})
    assert status == 200 and float(answer["output"]) == 12.0
    assert "frontend 127.0.0.1 is gone" not in replica.log()  # the address stayed; ZeroMQ

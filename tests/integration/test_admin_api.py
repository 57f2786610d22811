"""``ClipperConnection``'s model and application operations against a real cluster.

One local cluster (supervisor, frontend, replicas as processes) serves the whole module;
each test works on apps and models of its own names. Every operation is checked by its
effect, seen through the real management API and through real queries, never through a
fake of the frontend (tests/unit/test_admin_connection.py covers the client side alone).
"""

from __future__ import annotations

import pytest

requests = pytest.importorskip("requests")

from conftest import local_cluster, wait_until  # noqa: E402
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from schooner.admin import ClipperConnection, ClipperException  # noqa: E402
from schooner.admin.deployers import python as python_deployer  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

SLO = 5_000_000  # generous: these tests are about the admin operations, not latency
NO_CONTAINER = "NO_CONTAINER"  # Clipper's image name for a model registered without one


@pytest.fixture(scope="module")
def conn(tmp_path_factory: pytest.TempPathFactory):
    with local_cluster("admin-api", home=tmp_path_factory.mktemp("home"),
                       deploy_timeout_s=120.0, grace_s=3.0) as connection:  # fmt: skip
        yield connection


def predict(conn: ClipperConnection, app: str, body: dict) -> tuple[int, dict]:
    r = requests.post(f"http://{conn.get_query_addr()}/{app}/predict", json=body, timeout=30)
    return r.status_code, r.json()


def answer(conn: ClipperConnection, app: str, x: float, **extra: object) -> dict:
    status, body = predict(conn, app, {"input": [x], **extra})
    assert status == 200, body
    return body


def tagged(tag: str):
    """A closure answering ``"<tag>:<first value>"`` (defined here, stored by value)."""

    def model(xs):
        return [f"{tag}:{float(x[0])}" for x in xs]

    return model


def replicas_of(conn: ClipperConnection, name: str) -> list[str]:
    """The versions of ``name`` with a replica connected to the frontend, sorted."""
    return sorted(str(r["model_version"]) for r in conn.get_all_model_replicas(verbose=True)
                  if r["model_name"] == name)  # fmt: skip


def wait_for_replicas(conn: ClipperConnection, name: str, versions: list[str]) -> None:
    wait_until(lambda: replicas_of(conn, name) == versions, timeout=30,
               what=f"the frontend to list replicas {versions} of {name}")  # fmt: skip


def test_register_model_then_a_container_started_by_hand_serves(conn, start_container,
                                                                closure_artifact):  # fmt: skip
    conn.register_application("by-hand", "doubles", '"none yet"', SLO)
    conn.register_model("by-hand", 1, "doubles", labels=["manual"], batch_size=4)
    info = conn.get_model_info("by-hand", "1")
    assert info is not None
    assert (info["container_name"], info["labels"], info["batch_size"], info["input_type"],
            info["is_current_version"]) == (NO_CONTAINER, ["manual"], 4, "doubles", True)  # fmt: skip
    conn.link_model_to_app("by-hand", "by-hand")
    body = answer(conn, "by-hand", 1.0)  # registered, linked, but nothing runs it yet
    assert (body["default"], body["output"]) == (True, "none yet")
    assert body["default_explanation"] == "no replica of model by-hand:1 is connected"
    assert conn.get_num_replicas("by-hand", 1) == 0  # the manager runs none of it

    # A container started by hand proves it belongs to the cluster with the cluster's secret.
    start_container(closure_artifact(tagged("hand")), rpc_port=conn.cm.settings.rpc_port,
                    model_name="by-hand", model_version="1",
                    env={"SCHOONER_RPC_SECRET_FILE": str(conn.cm.layout.rpc_secret_file)})  # fmt: skip
    wait_for_replicas(conn, "by-hand", ["1"])
    body = answer(conn, "by-hand", 2.0)
    assert (body["default"], body["output"]) == (False, "hand:2.0")
    assert conn.get_num_replicas("by-hand", 1) == 0  # still not the manager's
    with pytest.raises(ClipperException, match="registered without an image"):
        conn.set_num_replicas("by-hand", 2)
    with pytest.raises(ClipperException, match="already exists"):
        conn.register_model("by-hand", 1, "doubles")


def test_stop_inactive_model_versions_keeps_the_current_one_serving(conn):
    python_deployer.create_endpoint(conn, "rolling", "doubles", tagged("v1"), version=1,
                                    slo_micros=SLO)  # fmt: skip
    python_deployer.deploy_python_closure(conn, "rolling", 2, "doubles", tagged("v2"))
    python_deployer.deploy_python_closure(conn, "rolling", 3, "doubles", tagged("v3"))
    conn.set_model_version("rolling", 2)  # the current one is not the newest
    assert replicas_of(conn, "rolling") == ["1", "2", "3"]
    assert answer(conn, "rolling", 1.0)["output"] == "v2:1.0"
    assert answer(conn, "rolling", 1.0, version="1")["output"] == "v1:1.0"

    conn.stop_inactive_model_versions(["rolling"])
    assert [conn.get_num_replicas("rolling", v) for v in (1, 2, 3)] == [0, 1, 0]
    wait_for_replicas(conn, "rolling", ["2"])
    body = answer(conn, "rolling", 3.0)
    assert (body["default"], body["output"]) == (False, "v2:3.0")
    body = answer(conn, "rolling", 3.0, version="3")
    assert body["default"] is True
    assert body["default_explanation"] == "no replica of model rolling:3 is connected"
    # Stopped, not removed: every version is still registered, the current one unchanged.
    assert [m for m in conn.get_all_models() if m.startswith("rolling:")] == [
        "rolling:1", "rolling:2", "rolling:3"]  # fmt: skip
    assert conn.get_current_model_version("rolling") == "2"


def test_stop_models_stops_every_version_of_those_models_only(conn):
    python_deployer.create_endpoint(conn, "halted", "doubles", tagged("h1"), version=1,
                                    slo_micros=SLO, default_output='"halted"')  # fmt: skip
    python_deployer.deploy_python_closure(conn, "halted", 2, "doubles", tagged("h2"))
    python_deployer.create_endpoint(conn, "bystander", "doubles", tagged("b"), slo_micros=SLO)
    assert replicas_of(conn, "halted") == ["1", "2"]

    conn.stop_models(["halted"])
    assert [conn.get_num_replicas("halted", v) for v in (1, 2)] == [0, 0]
    wait_for_replicas(conn, "halted", [])
    body = answer(conn, "halted", 1.0)
    assert (body["default"], body["output"]) == (True, "halted")
    assert body["default_explanation"] == "no replica of model halted:2 is connected"
    assert conn.get_model_info("halted", 1) is not None  # still registered
    assert conn.get_model_info("halted", 2) is not None
    assert conn.get_linked_models("halted") == ["halted"]
    # Another model's replica is untouched.
    assert conn.get_num_replicas("bystander", 1) == 1 and replicas_of(conn, "bystander") == ["1"]
    assert answer(conn, "bystander", 5.0)["output"] == "b:5.0"


def test_get_metric_addr_serves_this_frontends_prometheus_metrics(conn):
    conn.register_application("metered", "doubles", "0", SLO)  # no model: answered by default
    for x in (1.0, 2.0, 3.0):
        assert answer(conn, "metered", x)["default"] is True
    r = requests.get(f"http://{conn.get_metric_addr()}/metrics", timeout=10)
    assert r.status_code == 200 and r.headers["Content-Type"].startswith("text/plain")
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(r.text)
        for s in family.samples
    }
    key = ("schooner_frontend_default_outputs_total", (("app", "metered"), ("reason", "no_model")))
    assert samples[key] == 3.0
    assert samples[("schooner_frontend_predictions_total", (("app", "metered"),))] == 3.0


def test_delete_application_removes_its_endpoint_and_links_only(conn):
    python_deployer.create_endpoint(conn, "short-lived", "doubles", tagged("s"), slo_micros=SLO)
    assert answer(conn, "short-lived", 1.0)["output"] == "s:1.0"

    conn.delete_application("short-lived")
    status, body = predict(conn, "short-lived", {"input": [1.0]})
    assert status == 404 and body["cause"] == "no application named 'short-lived'"
    assert conn.get_app_info("short-lived") is None
    assert "short-lived" not in conn.get_all_apps()
    with pytest.raises(ClipperException, match="no application named"):
        conn.delete_application("short-lived")
    # The model and its replica stay; the link went with the app.
    assert conn.get_model_info("short-lived", 1) is not None
    assert replicas_of(conn, "short-lived") == ["1"]
    conn.register_application("short-lived", "doubles", "-1", SLO)
    assert conn.get_linked_models("short-lived") == []
    assert answer(conn, "short-lived", 2.0)["default"] is True
    conn.link_model_to_app("short-lived", "short-lived")
    assert answer(conn, "short-lived", 2.0)["output"] == "s:2.0"


def test_unlink_model_from_app_answers_the_default_until_linked_again(conn):
    python_deployer.create_endpoint(conn, "loose", "doubles", tagged("l"), slo_micros=SLO,
                                    default_output='"unlinked"')  # fmt: skip
    assert answer(conn, "loose", 1.0)["output"] == "l:1.0"

    conn.unlink_model_from_app("loose", "loose")
    assert conn.get_linked_models("loose") == []
    assert conn.get_app_info("loose")["linked_models"] == []
    body = answer(conn, "loose", 1.0)
    assert (body["default"], body["output"]) == (True, "unlinked")
    assert body["default_explanation"] == "no model is linked to app 'loose'"
    with pytest.raises(ClipperException, match="is not linked"):
        conn.unlink_model_from_app("loose", "loose")
    assert replicas_of(conn, "loose") == ["1"]  # the model keeps running, unlinked

    conn.link_model_to_app("loose", "loose")
    body = answer(conn, "loose", 4.0)
    assert (body["default"], body["output"]) == (False, "l:4.0")

"""A local cluster shared by the tests of one framework module, and how to query it.

Each framework test builds a tiny model in the test process, deploys it with that
framework's deployer through the local manager, queries it over HTTP and compares the
answers with the same model's predictions computed here.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import requests

from schooner.admin import ClipperConnection, LocalContainerManager
from schooner.admin.processes import free_port


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClipperConnection]:
    """One running cluster (supervisor, frontend) per test module; stopped at the end.

    ``SCHOONER_HOME`` points into the module's temporary directory, except for the
    environments cache (``SCHOONER_ENVS``), which is shared by every test run on this
    machine so that an environment is built once.
    """
    home = tmp_path_factory.mktemp("home")
    manager = LocalContainerManager(
        cluster_name="frameworks",
        clipper_query_port=free_port(),
        clipper_management_port=free_port(),
        clipper_rpc_port=free_port(),
        schooner_home=home,
        deploy_timeout_s=240.0,
        grace_s=5.0,
    )
    conn = ClipperConnection(manager)
    try:
        conn.start_clipper()
        yield conn
    finally:
        conn.stop_all()


def predict(conn: ClipperConnection, app: str, body: dict[str, Any], timeout: float = 60) -> Any:
    """POST /<app>/predict; asserts a served (non-default) answer and returns the body."""
    r = requests.post(f"http://{conn.get_query_addr()}/{app}/predict", json=body, timeout=timeout)
    assert r.status_code == 200, r.text
    answer = r.json()
    for a in answer.get("batch_predictions", [answer]):
        assert a["default"] is False, a
    return answer


def outputs(answer: dict[str, Any]) -> list[Any]:
    """The outputs of a predict answer, single or batch, as a list."""
    return [a["output"] for a in answer.get("batch_predictions", [answer])]

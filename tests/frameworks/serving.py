"""How framework tests query what they deployed (the ``cluster`` fixture is in tests/conftest.py)."""

from __future__ import annotations

from typing import Any

import requests

from schooner.admin import ClipperConnection


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

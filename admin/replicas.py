"""The wait every manager does after starting replicas: until they connected, or one failed.

A manager knows how its replicas run (processes, containers, pods); the frontend knows which
have connected. ``wait_for_replicas`` joins the two: it returns once ``count`` replicas of a
model version are connected to the frontend, and raises as soon as the manager reports a
replica that died while starting (with its log), or when the time is up.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from schooner.admin.management import ManagementClient
from schooner.runtime.errors import ClipperException

__all__ = ["connected_replicas", "wait_for_replicas"]

_POLL_S = 0.05


def connected_replicas(management: ManagementClient, name: str, version: str) -> int:
    """How many replicas of ``name:version`` are connected to the frontend now."""
    connected = management.post("/admin/get_all_containers", {"verbose": True})
    return sum(
        1 for c in connected
        if c.get("model_name") == name and str(c.get("model_version")) == version
    )


def wait_for_replicas(
    management: ManagementClient,
    name: str,
    version: str,
    count: int,
    timeout_s: float,
    failure: Callable[[], str | None],
    logs: Callable[[], str],
) -> None:
    """Return once ``count`` replicas of ``name:version`` are connected. ``failure()`` says
    why a replica died while starting (None while none did); ``logs()`` what to quote when
    ``timeout_s`` passes first."""
    deadline = time.monotonic() + timeout_s
    while True:
        n = connected_replicas(management, name, version)
        if n >= count:
            return
        why = failure()
        if why is not None:
            raise ClipperException(why)
        if time.monotonic() >= deadline:
            raise ClipperException(
                f"only {n} of {count} replicas of {name}:{version} connected to the "
                f"frontend within {timeout_s:.0f}s\n{logs()}"
            )
        time.sleep(_POLL_S)  # a cheap local query; the deploy returns promptly

"""HTTP client for the frontend's management API (JSON over stdlib ``urllib``).

This is the one boundary where HTTP failures become ``ClipperException``: a refused
connection, a timeout, or an error answer (whose ``error`` and ``cause`` fields are kept
in the message and on the exception as ``status``, ``error`` and ``cause``).

``token`` is the management API's credential (``Authorization: Bearer``); it is never part of
an error message or a log line.
"""

from __future__ import annotations

import json
import logging
import urllib.error
import urllib.request
from typing import Any

from schooner.runtime.errors import ClipperException

__all__ = ["ManagementClient", "ManagementError"]

logger = logging.getLogger(__name__)


class ManagementError(ClipperException):
    """The management API answered with an error status."""

    def __init__(self, path: str, status: int, error: str, cause: str) -> None:
        self.path, self.status, self.error, self.cause = path, status, error, cause
        detail = f"{error}: {cause}" if cause else error
        super().__init__(f"{path} failed with HTTP {status}: {detail}")


class ManagementClient:
    """Calls on one frontend's management API at ``http://<address>``."""

    def __init__(self, address: str, timeout: float = 30.0, token: str | None = None) -> None:
        self.address = address
        self.timeout = timeout
        self._headers = {"Authorization": f"Bearer {token}"} if token else {}

    def url(self, path: str) -> str:
        return f"http://{self.address}{path}"

    def post(self, path: str, body: dict[str, Any], timeout: float | None = None) -> Any:
        """POST ``body`` as JSON to ``path``; returns the decoded JSON answer."""
        data = json.dumps(body).encode("utf-8")
        req = urllib.request.Request(
            self.url(path), data=data, method="POST",
            headers={"Content-Type": "application/json", "Accept": "application/json",
                     **self._headers},
        )
        return self._send(path, req, timeout)

    def get(self, path: str, timeout: float | None = None) -> Any:
        """GET ``path``; returns the decoded JSON answer."""
        req = urllib.request.Request(
            self.url(path), headers={"Accept": "application/json", **self._headers}
        )
        return self._send(path, req, timeout)

    def ping(self, timeout: float = 2.0) -> bool:
        """True if the management API answers ``GET /admin/ping``."""
        try:
            self.get("/admin/ping", timeout=timeout)
        except ClipperException:
            return False
        return True

    def _send(self, path: str, req: urllib.request.Request, timeout: float | None) -> Any:
        try:
            with urllib.request.urlopen(req, timeout=timeout or self.timeout) as response:
                payload = response.read()
        except urllib.error.HTTPError as exc:
            with exc:
                raise _management_error(path, exc.code, exc.read()) from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise ClipperException(
                f"cannot reach the management API at {self.address} ({path}): {reason}"
            ) from exc
        logger.debug("%s -> %s", path, payload[:200])
        if not payload:
            return None
        try:
            return json.loads(payload)
        except ValueError as exc:
            raise ClipperException(f"{path} answered with invalid JSON: {payload[:200]!r}") from exc


def _management_error(path: str, status: int, payload: bytes) -> ManagementError:
    text = payload.decode("utf-8", "replace")
    try:
        body = json.loads(text)
    except ValueError:
        body = None
    if isinstance(body, dict):
        return ManagementError(path, status, str(body.get("error", "")), str(body.get("cause", "")))
    return ManagementError(path, status, text.strip()[:500] or "no details", "")

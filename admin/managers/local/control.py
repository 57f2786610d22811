"""The supervisor's control channel: one JSON request and one JSON reply per connection.

The channel is a unix socket in the cluster directory (``control.sock``), so only users
who can read that directory can drive the cluster. A client connects, writes one JSON
object ``{"op": <name>, ...arguments}``, shuts its write side, and reads one JSON object
back before the server closes: ``{"ok": true, "result": ...}`` or
``{"ok": false, "error": "<why>"}``.

Operations (served by ``schooner.admin.managers.local.supervisor``):

* ``ping`` -> ``{"pid": int}``
* ``status`` -> ``{"pid", "frontend": child, "replicas": [child, ...]}``, where a child is
  ``{"name", "kind", "pid", "state", "restarts", "last_exit_code", "log_path", ...}``
* ``scale`` ``{"model_name", "model_version", "input_type", "model_path", "num_replicas",
  "batch_size", "python", "device"}`` -> ``{"replicas": [child, ...]}`` (adds or removes
  replicas)
* ``stop_models`` ``{"models": {name: [version, ...]}}`` -> ``{"stopped": int}``
* ``stop_all_replicas`` -> ``{"stopped": int}``
* ``shutdown`` ``{"grace_s": float}`` -> ``{"pid": int}``; replicas, then the frontend,
  then the supervisor exit.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from schooner.runtime.errors import ClipperException

__all__ = [
    "MAX_MESSAGE_BYTES",
    "ControlError",
    "encode_message",
    "decode_message",
    "ok_reply",
    "error_reply",
    "result_of",
    "request",
    "socket_address",
    "read_message",
]

MAX_MESSAGE_BYTES = 1 << 20
# sun_path holds 108 bytes on Linux; longer paths are reached through a directory fd.
_MAX_SUN_PATH = 100


class ControlError(ClipperException):
    """The control channel could not be used, or the supervisor refused a request."""


def encode_message(message: dict[str, Any]) -> bytes:
    """One request or reply as bytes on the socket."""
    return json.dumps(message, separators=(",", ":")).encode("utf-8")


def decode_message(data: bytes) -> dict[str, Any]:
    """Parse one request or reply; raises ControlError on anything but a JSON object."""
    try:
        message = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise ControlError(f"malformed control message: {exc}") from exc
    if not isinstance(message, dict):
        raise ControlError("malformed control message: not a JSON object")
    return message


def ok_reply(result: Any) -> dict[str, Any]:
    return {"ok": True, "result": result}


def error_reply(error: str) -> dict[str, Any]:
    return {"ok": False, "error": error}


def result_of(reply: dict[str, Any]) -> Any:
    """The result of a reply, or ControlError carrying the supervisor's reason."""
    if reply.get("ok") is True:
        return reply.get("result")
    raise ControlError(f"supervisor refused the request: {reply.get('error', 'no reason given')}")


def read_message(sock: socket.socket) -> bytes:
    """Read until the peer shuts its write side; refuses more than MAX_MESSAGE_BYTES."""
    chunks: list[bytes] = []
    size = 0
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            return b"".join(chunks)
        size += len(chunk)
        if size > MAX_MESSAGE_BYTES:
            raise ControlError(f"control message larger than {MAX_MESSAGE_BYTES} bytes")
        chunks.append(chunk)


@contextlib.contextmanager
def socket_address(path: Path) -> Iterator[str]:
    """An address for ``path`` that fits in ``sun_path``, valid inside the ``with`` block.

    Long paths (pytest's tmp_path easily makes them) are reached through
    ``/proc/self/fd/<dirfd>/<name>``, which the kernel resolves like the real path.
    """
    if len(os.fsencode(path)) <= _MAX_SUN_PATH:
        yield os.fspath(path)
        return
    dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        yield f"/proc/self/fd/{dir_fd}/{path.name}"
    finally:
        os.close(dir_fd)


def request(path: Path, op: str, timeout: float = 30.0, **arguments: Any) -> Any:
    """Send one request to the supervisor listening on ``path``; returns its result.

    Raises ControlError if nothing listens there, the exchange times out, or the
    supervisor answers with an error.
    """
    message = encode_message({"op": op, **arguments})
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            with socket_address(path) as address:
                sock.connect(address)
            sock.sendall(message)
            sock.shutdown(socket.SHUT_WR)
            data = read_message(sock)
    except (FileNotFoundError, ConnectionRefusedError) as exc:
        raise ControlError(f"no supervisor listens on {path}") from exc
    except OSError as exc:
        raise ControlError(f"control request {op!r} to {path} failed: {exc}") from exc
    if not data:
        raise ControlError(f"the supervisor closed the control channel without answering {op!r}")
    return result_of(decode_message(data))

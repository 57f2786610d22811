"""Container configuration, read once from the environment at start-up.

Clipper's names are kept so that Clipper's managers and manifests work unchanged; what
Clipper lacks is under ``SCHOONER_*``. Every problem is reported at once in a
:class:`~schooner.runtime.errors.ConfigError`. Nothing else in the container reads
``os.environ``.

=============================  ===========================  ==================================
variable                       default                      meaning
=============================  ===========================  ==================================
CLIPPER_MODEL_NAME             (required)                   model name it registers as
CLIPPER_MODEL_VERSION          (required)                   model version (a string)
CLIPPER_IP                     127.0.0.1                    frontend host
CLIPPER_PORT                   7000                         frontend RPC port
CLIPPER_INPUT_TYPE             doubles                      bytes/ints/floats/doubles/strings
CLIPPER_MODEL_PATH             /model                       artifact directory
SCHOONER_DEVICE                cpu                          cpu, cuda or cuda:N
SCHOONER_MAX_BATCH_SIZE        0                            inputs per predict call, 0 = any
SCHOONER_METRICS_PORT          (unset: no HTTP server)      /metrics and /health; 0 = any port
SCHOONER_METRICS_HOST          0.0.0.0                      address the HTTP server binds
SCHOONER_READY_FILE            /model_is_ready.check        written once the model is loaded
SCHOONER_HEARTBEAT_INTERVAL    5                            seconds between idle heartbeats
SCHOONER_SESSION_TIMEOUT       30                           silence (s) before reconnecting
SCHOONER_FRAMEWORK             (from the artifact)          override the manifest's framework
SCHOONER_ZERO_COPY             0                            receive frames without copying
                                                            (pays off for inputs of ~64 KB+)
SCHOONER_RPC_SOCKET            (unset: ZeroMQ to CLIPPER_*) the frontend's local Unix socket
                                                            (``@name``: abstract namespace);
                                                            replaces CLIPPER_IP/CLIPPER_PORT
SCHOONER_LOG_LEVEL             INFO                         logging level
=============================  ===========================  ==================================
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from schooner.runtime.errors import ConfigError
from schooner.runtime.wire import InputType

__all__ = ["ContainerConfig"]

T = TypeVar("T")
_DEFAULT_READY_FILE: Path | None = Path("/model_is_ready.check")
_DEVICE = re.compile(r"^(cpu|cuda(:\d+)?)$")


@dataclass(frozen=True)
class ContainerConfig:
    model_name: str
    model_version: str
    frontend_host: str = "127.0.0.1"
    frontend_port: int = 7000
    input_type: InputType = InputType.DOUBLES
    model_path: Path = Path("/model")
    device: str = "cpu"
    max_batch_size: int = 0
    metrics_port: int | None = None
    metrics_host: str = "0.0.0.0"
    ready_file: Path | None = Path("/model_is_ready.check")
    heartbeat_interval: float = 5.0
    session_timeout: float = 30.0
    framework: str | None = None
    zero_copy: bool = False
    rpc_socket: str | None = None
    log_level: str = "INFO"

    @property
    def frontend_address(self) -> str:
        """Where the frontend is: its Unix socket if one is given, else its ZeroMQ port."""
        if self.rpc_socket is not None:
            return f"unix:{self.rpc_socket}"
        return f"tcp://{self.frontend_host}:{self.frontend_port}"

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> ContainerConfig:
        """Parse ``env`` (normally ``os.environ``); raise ConfigError listing every problem."""
        problems: list[str] = []

        def get(name: str, parse: Callable[[str], T], default: T) -> T:
            raw = env.get(name)
            if raw is None or raw.strip() == "":
                return default
            try:
                return parse(raw.strip())
            except (ValueError, TypeError) as exc:
                problems.append(f"{name}={raw!r}: {exc}")
                return default

        def required(name: str) -> str:
            raw = env.get(name, "").strip()
            if not raw:
                problems.append(f"{name} is required")
            return raw

        name = required("CLIPPER_MODEL_NAME")
        version = required("CLIPPER_MODEL_VERSION")
        config = cls(
            model_name=name,
            model_version=version,
            frontend_host=get("CLIPPER_IP", str, "127.0.0.1"),
            frontend_port=get("CLIPPER_PORT", _port, 7000),
            input_type=get("CLIPPER_INPUT_TYPE", InputType.parse, InputType.DOUBLES),
            model_path=get("CLIPPER_MODEL_PATH", Path, Path("/model")),
            device=get("SCHOONER_DEVICE", _device, "cpu"),
            max_batch_size=get("SCHOONER_MAX_BATCH_SIZE", _non_negative_int, 0),
            metrics_port=get("SCHOONER_METRICS_PORT", _metrics_port, None),
            metrics_host=get("SCHOONER_METRICS_HOST", str, "0.0.0.0"),
            ready_file=get("SCHOONER_READY_FILE", _optional_path, _DEFAULT_READY_FILE),
            heartbeat_interval=get("SCHOONER_HEARTBEAT_INTERVAL", _positive_float, 5.0),
            session_timeout=get("SCHOONER_SESSION_TIMEOUT", _positive_float, 30.0),
            framework=get("SCHOONER_FRAMEWORK", str, None),
            zero_copy=get("SCHOONER_ZERO_COPY", _bool, False),
            rpc_socket=get("SCHOONER_RPC_SOCKET", _socket_path, None),
            log_level=get("SCHOONER_LOG_LEVEL", _log_level, "INFO"),
        )
        if config.session_timeout <= config.heartbeat_interval:
            problems.append(
                f"SCHOONER_SESSION_TIMEOUT ({config.session_timeout}) must exceed "
                f"SCHOONER_HEARTBEAT_INTERVAL ({config.heartbeat_interval})"
            )
        if problems:
            raise ConfigError(problems)
        return config


def _socket_path(raw: str) -> str:
    limit = 107  # sun_path holds 108 bytes, the terminating NUL (or the abstract prefix) included
    if len(raw.encode()) > limit:
        raise ValueError(f"a Unix socket address is at most {limit} bytes")
    return raw


def _port(raw: str) -> int:
    port = int(raw)
    if not 0 < port < 65536:
        raise ValueError("a port is between 1 and 65535")
    return port


def _metrics_port(raw: str) -> int:
    port = int(raw)
    if not 0 <= port < 65536:
        raise ValueError("a port is between 0 (any free port) and 65535")
    return port


def _device(raw: str) -> str:
    value = raw.lower()
    if not _DEVICE.match(value):
        raise ValueError("expected cpu, cuda or cuda:N")
    return value


def _non_negative_int(raw: str) -> int:
    value = int(raw)
    if value < 0:
        raise ValueError("must be 0 or more")
    return value


def _positive_float(raw: str) -> float:
    value = float(raw)
    if not value > 0:
        raise ValueError("must be a positive number of seconds")
    return value


def _optional_path(raw: str) -> Path | None:
    return None if raw.lower() in ("none", "off", "-") else Path(raw)


def _bool(raw: str) -> bool:
    value = raw.lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ValueError("expected 1/0, true/false, yes/no or on/off")


def _log_level(raw: str) -> str:
    level = raw.upper()
    if not isinstance(logging.getLevelName(level), int):
        raise ValueError("expected DEBUG, INFO, WARNING, ERROR or CRITICAL")
    return level

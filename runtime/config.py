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
SCHOONER_METRICS_HOST          127.0.0.1                    address the HTTP server binds
                                                            (0.0.0.0 to scrape from elsewhere)
SCHOONER_READY_FILE            /model_is_ready.check        written once the model is loaded
SCHOONER_HEARTBEAT_INTERVAL    5                            seconds between idle heartbeats
SCHOONER_SESSION_TIMEOUT       30                           silence (s) before reconnecting;
                                                            also how long a send may block
SCHOONER_FRAMEWORK             (from the artifact)          override the manifest's framework
SCHOONER_ZERO_COPY             0                            ignored: large frames are never copied
SCHOONER_RPC_SOCKET            (unset: ZMTP to CLIPPER_*)   the frontend's local Unix socket
                                                            (``@name``: abstract namespace);
                                                            replaces CLIPPER_IP/CLIPPER_PORT
SCHOONER_LOG_LEVEL             INFO                         logging level
SCHOONER_RPC_SECRET            (unset)                      the cluster's secret: the
                                                            container proves it holds it when
                                                            it registers (never sent itself)
SCHOONER_RPC_SECRET_FILE       (unset)                      a file holding that secret (read
                                                            at start-up; wins over the above)
SCHOONER_RPC_MAX_MESSAGE_BYTES 268435456 (256 MiB)          bytes one message from the
                                                            frontend may hold (larger: dropped)
SCHOONER_RPC_MAX_FRAMES        65536                        frames one message may hold
SCHOONER_EVERY_FRONTEND        0                            1: CLIPPER_IP names every frontend
                                                            (a headless Service, or hosts
                                                            separated by commas); serve each
                                                            address they resolve to, one
                                                            session each (runtime.frontends)
SCHOONER_FRONTEND_ENDPOINTS    (unset)                      every endpoint to serve, separated
                                                            by commas: ``unix:PATH`` (or
                                                            ``unix:@name``) or ``HOST:PORT``
                                                            (ZeroMQ); one session each, e.g.
                                                            each worker of a frontend run with
                                                            ``--workers N``; implies
                                                            SCHOONER_EVERY_FRONTEND=1
SCHOONER_BUSY_POLL_US          0                            microseconds the container keeps
                                                            checking for the next request,
                                                            yielding the CPU, before it sleeps
                                                            in the kernel (0: sleeps at once;
                                                            at most 10000); see transport
SCHOONER_KEEP_FREED_BYTES      67108864 (64 MiB)            freed heap the allocator keeps for
                                                            the next batch instead of giving it
                                                            back (glibc; large inputs are not
                                                            page-faulted in again per batch);
                                                            given back when idle; 0: glibc's
                                                            defaults (runtime.memory)
SCHOONER_COALESCE_WAIT         0.0005                       with several sessions: seconds
                                                            a predict waits for the batches
                                                            of the other busy sessions (those
                                                            that brought one in the last
                                                            5 ms) to join it; 0: never waits
=============================  ===========================  ==================================

A frontend run with ``--workers N`` has one RPC endpoint per worker: ``worker_rpc_socket``
and ``worker_rpc_port`` name worker ``i``'s (worker 0's are the frontend's own), and
``worker_endpoints`` lists them all in the form SCHOONER_FRONTEND_ENDPOINTS takes.

The secret's variables are defined here once (``RPC_SECRET_ENV``, ``RPC_SECRET_FILE_ENV``):
the local manager hands its replicas the file, Docker an ``--env-file``, Kubernetes a
Secret. The secret never appears in a log line, an error, ``repr`` or a command line.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from schooner.runtime.errors import ConfigError
from schooner.runtime.wire import (
    DEFAULT_MAX_FRAMES,
    DEFAULT_MAX_MESSAGE_BYTES,
    MAX_NAME_BYTES,
    InputType,
    Limits,
    excerpt,
)

__all__ = [
    "ContainerConfig",
    "DEFAULT_QUERY_PORT",
    "DEFAULT_MANAGEMENT_PORT",
    "DEFAULT_RPC_PORT",
    "EXIT_CONFIG",
    "EXIT_ARTIFACT",
    "UNIX_SOCKET_PATH_LIMIT",
    "RPC_SECRET_ENV",
    "RPC_SECRET_FILE_ENV",
    "read_secret_file",
    "create_secret_file",
    "ADMIN_TOKEN_ENV",
    "ADMIN_TOKEN_FILE",
    "worker_rpc_socket",
    "worker_rpc_port",
    "default_frontend_workers",
    "MAX_FRONTEND_WORKERS",
    "worker_endpoints",
    "parse_endpoint",
    "MAX_ENDPOINTS",
]

# The cluster secret a replica proves it holds when it registers (and the frontend checks):
# one value, or a file holding it. Every manager and the frontend use these names.
RPC_SECRET_ENV = "SCHOONER_RPC_SECRET"
RPC_SECRET_FILE_ENV = "SCHOONER_RPC_SECRET_FILE"
_SECRET_FILE_LIMIT = 4096
# The management API's token: a value (a Kubernetes Secret, a Docker env file) or the file a
# frontend keeps beside its state database, which ClipperConnection and the CLI read.
ADMIN_TOKEN_ENV = "SCHOONER_ADMIN_TOKEN"
ADMIN_TOKEN_FILE = "admin.token"

# A cluster's well-known ports (Clipper's): the query API, the management API, and the RPC
# port containers register on. Every manager, the CLI and the container default to these.
DEFAULT_QUERY_PORT = 1337
DEFAULT_MANAGEMENT_PORT = 1338
DEFAULT_RPC_PORT = 7000

# The container's exit codes besides 0: restarting will not fix either, so supervisors back
# off (the local supervisor's RestartPolicy) and deploys report them.
EXIT_CONFIG = 2  # bad configuration: a variable, a port that cannot be bound, a socket
EXIT_ARTIFACT = 3  # the artifact or its framework cannot be loaded

# sun_path holds 108 bytes, the terminating NUL (or the abstract namespace's prefix) included.
UNIX_SOCKET_PATH_LIMIT = 107

_DEVICE = re.compile(r"^(cpu|cuda(:\d+)?)$")


@dataclass(frozen=True)
class ContainerConfig:
    """What one replica is told: ``from_env`` parses it, ``to_env`` writes it (the replica
    contract every container manager starts a replica with)."""

    model_name: str
    model_version: str
    frontend_host: str = "127.0.0.1"
    frontend_port: int = DEFAULT_RPC_PORT
    input_type: InputType = InputType.DOUBLES
    model_path: Path = Path("/model")
    device: str = "cpu"
    max_batch_size: int = 0
    metrics_port: int | None = None
    metrics_host: str = "127.0.0.1"
    ready_file: Path | None = Path("/model_is_ready.check")
    heartbeat_interval: float = 5.0
    session_timeout: float = 30.0
    framework: str | None = None
    zero_copy: bool = False  # SCHOONER_ZERO_COPY: accepted, no effect (large frames: no copy)
    rpc_socket: str | None = None
    log_level: str = "INFO"
    rpc_secret: str | None = dataclasses.field(default=None, repr=False)
    rpc_secret_file: Path | None = None
    rpc_max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    rpc_max_frames: int = DEFAULT_MAX_FRAMES
    every_frontend: bool = False
    frontend_endpoints: tuple[str, ...] = ()
    coalesce_wait_s: float = 0.0005
    keep_freed_bytes: int = 64 << 20
    busy_poll_us: int = 0

    @property
    def limits(self) -> Limits:
        return Limits(self.rpc_max_frames, self.rpc_max_message_bytes)

    def secret(self) -> bytes | None:
        """The cluster secret (from its file, else the variable), or None."""
        if self.rpc_secret_file is not None:
            return read_secret_file(self.rpc_secret_file)
        return self.rpc_secret.encode() if self.rpc_secret else None

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
        values: dict[str, Any] = {}
        for name, (field, parse) in _VARIABLES.items():
            raw = env.get(name)
            if raw is None or raw.strip() == "":
                if field in _REQUIRED:
                    problems.append(f"{name} is required")
                    values[field] = ""
                continue
            try:
                values[field] = parse(raw.strip())
            except (ValueError, TypeError) as exc:
                shown = "(not shown)" if name == RPC_SECRET_ENV else excerpt(raw)
                problems.append(f"{name}={shown}: {exc}")
                if field in _REQUIRED:
                    values[field] = ""
        config = cls(**values)
        if config.frontend_endpoints and not config.every_frontend:
            config = dataclasses.replace(config, every_frontend=True)
        if config.session_timeout <= config.heartbeat_interval:
            problems.append(
                f"SCHOONER_SESSION_TIMEOUT ({config.session_timeout}) must exceed "
                f"SCHOONER_HEARTBEAT_INTERVAL ({config.heartbeat_interval})"
            )
        if config.rpc_secret_file is not None:
            try:
                read_secret_file(config.rpc_secret_file)
            except ValueError as exc:
                problems.append(f"{RPC_SECRET_FILE_ENV}: {exc}")
        if problems:
            raise ConfigError(problems)
        return config

    def to_env(self) -> dict[str, str]:
        """The variables that make ``from_env`` return this config: the model's name and
        version, and every other setting that is not its default. Managers start replicas
        with these (a process's environment, ``docker run -e``, a pod's ``env``)."""
        env = {}
        for name, (field, _parse) in _VARIABLES.items():
            value = getattr(self, field)
            if field in _REQUIRED or value != _DEFAULTS[field]:
                env[name] = _format(value)
        return env


def _format(value: object) -> str:
    if isinstance(value, tuple):
        return ",".join(value)
    if isinstance(value, InputType):
        return value.clipper_name
    if isinstance(value, bool):
        return "1" if value else "0"
    if value is None:
        return "none"  # only the ready file is optional and not off by default
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return str(value)


def read_secret_file(path: Path) -> bytes:
    """A secret kept in a file (surrounding whitespace dropped). ValueError, naming the file
    and never its content, when it cannot be used."""
    try:
        with open(path, "rb") as f:
            data = f.read(_SECRET_FILE_LIMIT + 1).strip()
    except OSError as exc:
        raise ValueError(f"cannot read {path}: {exc.strerror or exc}") from None
    if not data or len(data) > _SECRET_FILE_LIMIT:
        raise ValueError(f"{path} must hold 1 to {_SECRET_FILE_LIMIT} bytes")
    return data


def create_secret_file(path: Path) -> bytes:
    """The secret in ``path``; a fresh random one (256 bits, hex) written there first,
    owner-only (0600), if the file does not exist yet."""
    import secrets

    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return read_secret_file(path)
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_hex(32) + "\n")
    return read_secret_file(path)


MAX_ENDPOINTS = 64  # endpoints one replica serves at most (runtime.frontends.MAX_FRONTENDS)


MAX_FRONTEND_WORKERS = 64


def default_frontend_workers(workers: int = 0) -> int:
    """``workers``, or for 0 the default: half the cores this process may run on
    (``os.sched_getaffinity``; the other half left to replicas and load), 1 to
    MAX_FRONTEND_WORKERS."""
    if workers:
        return workers
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    return max(1, min(MAX_FRONTEND_WORKERS, cores // 2))


def worker_rpc_socket(base: str, index: int) -> str:
    """The local Unix socket of worker ``index`` of a frontend whose socket is ``base``."""
    return base if index == 0 else f"{base}.w{index}"


def worker_rpc_port(base: int, index: int) -> int:
    """The RPC port of worker ``index`` of a frontend whose RPC port is ``base`` (0: any)."""
    return base + index if base else 0


def worker_endpoints(workers: int, host: str, port: int, socket: str | None) -> tuple[str, ...]:
    """Every worker's endpoint as SCHOONER_FRONTEND_ENDPOINTS lists them: its Unix socket
    when the frontend serves one, else its ZeroMQ port."""
    if socket is not None:
        return tuple(f"unix:{worker_rpc_socket(socket, i)}" for i in range(workers))
    return tuple(f"{host}:{worker_rpc_port(port, i)}" for i in range(workers))


def parse_endpoint(endpoint: str) -> tuple[str | None, str, int]:
    """``unix:PATH`` -> (PATH, "", 0); ``HOST:PORT`` -> (None, HOST, PORT); ValueError else."""
    if endpoint.startswith("unix:"):
        return (_socket_path(_nonempty(endpoint[5:])), "", 0)
    host, sep, port = endpoint.rpartition(":")
    if not sep or not host:
        raise ValueError(f"{endpoint!r} is neither unix:PATH nor HOST:PORT")
    return (None, host.strip("[]"), _port(port))


def _nonempty(raw: str) -> str:
    if not raw:
        raise ValueError("an empty socket path")
    return raw


def _endpoints(raw: str) -> tuple[str, ...]:
    found = tuple(dict.fromkeys(e.strip() for e in raw.split(",") if e.strip()))
    if not found:
        raise ValueError("names no endpoint")
    if len(found) > MAX_ENDPOINTS:
        raise ValueError(f"at most {MAX_ENDPOINTS} endpoints")
    for endpoint in found:
        parse_endpoint(endpoint)
    return found


def _secret(raw: str) -> str:
    if len(raw.encode()) > _SECRET_FILE_LIMIT:
        raise ValueError(f"at most {_SECRET_FILE_LIMIT} bytes")
    return raw


def _limit(minimum: int) -> Callable[[str], int]:
    def parse(raw: str) -> int:
        value = int(raw)
        if value < minimum:
            raise ValueError(f"must be at least {minimum}")
        return value

    return parse


def _name(raw: str) -> str:
    if len(raw.encode()) > MAX_NAME_BYTES:
        raise ValueError(f"at most {MAX_NAME_BYTES} bytes (the RPC limit)")
    return raw


def _socket_path(raw: str) -> str:
    if len(raw.encode()) > UNIX_SOCKET_PATH_LIMIT:
        raise ValueError(f"a Unix socket address is at most {UNIX_SOCKET_PATH_LIMIT} bytes")
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


def _wait_seconds(raw: str) -> float:
    value = float(raw)
    if not 0 <= value <= 0.1:
        raise ValueError("must be between 0 and 0.1 seconds")
    return value


def _int_up_to(highest: int, shown: str) -> Callable[[str], int]:
    """A parser of whole numbers from 0 to ``highest`` (``shown`` in the error)."""

    def parse(raw: str) -> int:
        value = int(raw)
        if not 0 <= value <= highest:
            raise ValueError(f"must be between 0 and {shown}")
        return value

    return parse


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


# Every variable a container reads, in one table: its name, the field it sets, its parser.
_VARIABLES: dict[str, tuple[str, Callable[[str], Any]]] = {
    "CLIPPER_MODEL_NAME": ("model_name", _name),
    "CLIPPER_MODEL_VERSION": ("model_version", _name),
    "CLIPPER_IP": ("frontend_host", str),
    "CLIPPER_PORT": ("frontend_port", _port),
    "CLIPPER_INPUT_TYPE": ("input_type", InputType.parse),
    "CLIPPER_MODEL_PATH": ("model_path", Path),
    "SCHOONER_DEVICE": ("device", _device),
    "SCHOONER_MAX_BATCH_SIZE": ("max_batch_size", _non_negative_int),
    "SCHOONER_METRICS_PORT": ("metrics_port", _metrics_port),
    "SCHOONER_METRICS_HOST": ("metrics_host", str),
    "SCHOONER_READY_FILE": ("ready_file", _optional_path),
    "SCHOONER_HEARTBEAT_INTERVAL": ("heartbeat_interval", _positive_float),
    "SCHOONER_SESSION_TIMEOUT": ("session_timeout", _positive_float),
    "SCHOONER_FRAMEWORK": ("framework", str),
    "SCHOONER_ZERO_COPY": ("zero_copy", _bool),
    "SCHOONER_RPC_SOCKET": ("rpc_socket", _socket_path),
    "SCHOONER_LOG_LEVEL": ("log_level", _log_level),
    RPC_SECRET_ENV: ("rpc_secret", _secret),
    RPC_SECRET_FILE_ENV: ("rpc_secret_file", Path),
    "SCHOONER_RPC_MAX_MESSAGE_BYTES": ("rpc_max_message_bytes", _limit(1024)),
    "SCHOONER_RPC_MAX_FRAMES": ("rpc_max_frames", _limit(8)),
    "SCHOONER_EVERY_FRONTEND": ("every_frontend", _bool),
    "SCHOONER_FRONTEND_ENDPOINTS": ("frontend_endpoints", _endpoints),
    "SCHOONER_COALESCE_WAIT": ("coalesce_wait_s", _wait_seconds),
    "SCHOONER_KEEP_FREED_BYTES": ("keep_freed_bytes", _int_up_to(1 << 30, "1073741824 (1 GiB)")),
    "SCHOONER_BUSY_POLL_US": ("busy_poll_us", _int_up_to(10_000, "10000 microseconds")),
}
_REQUIRED = frozenset({"model_name", "model_version"})
_DEFAULTS = {f.name: f.default for f in dataclasses.fields(ContainerConfig)}

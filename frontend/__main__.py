"""``python -m schooner.frontend`` / ``schooner-frontend``: run the query frontend.

Exits 0 after SIGTERM or SIGINT, 2 on a bad command line (argparse), 1 if it cannot start
(e.g. a port is taken).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Sequence

from schooner.frontend import credentials, http
from schooner.frontend.server import FrontendConfig, run_until_signal
from schooner.runtime.errors import ConfigError, MissingExtra

__all__ = ["main", "parse_args"]

log = logging.getLogger("schooner.frontend")


def parse_args(argv: Sequence[str] | None = None) -> tuple[FrontendConfig, str]:
    """The command line as a frozen config, and the log level."""
    p = argparse.ArgumentParser(
        prog="schooner-frontend", description="Schooner query frontend (Clipper-compatible)."
    )
    p.add_argument("--query-host", default="0.0.0.0")
    p.add_argument("--query-port", type=int, default=1337)
    p.add_argument("--management-host", default="127.0.0.1")
    p.add_argument("--management-port", type=int, default=1338)
    p.add_argument("--rpc-host", default="127.0.0.1",
                   help="address containers connect to (0.0.0.0 for containers on other "
                   "machines: then give them the cluster secret)")  # fmt: skip
    p.add_argument("--rpc-port", type=int, default=7000)
    p.add_argument(
        "--rpc-socket",
        default=None,
        help="also serve containers on this machine on a Unix socket (a path, or @name for "
        "the abstract namespace); a container given it as SCHOONER_RPC_SOCKET uses it",
    )
    p.add_argument("--grpc-host", default="127.0.0.1")
    p.add_argument(
        "--grpc-port", type=int, default=None,
        help="serve the Open Inference Protocol over gRPC on this port too (off by default; "
        "needs the grpc extra)",
    )  # fmt: skip
    p.add_argument("--state-db", default="schooner-state.db", help="SQLite file of the state")
    p.add_argument(
        "--state-redis", default=None, metavar="HOST:PORT",
        help="share the state with other frontends in this Redis instead of --state-db (its "
        "password, if any, from SCHOONER_STATE_PASSWORD; needs the redis extra)",
    )  # fmt: skip
    p.add_argument("--state-prefix", default="schooner",
                   help="prefix of the state's keys in --state-redis (one per cluster)")
    p.add_argument("--inflight-per-replica", type=int, default=2,
                   help="batches in flight per replica: the first of any size, the others only "
                   "when full (see --pipeline-partial-batches)")  # fmt: skip
    p.add_argument("--pipeline-partial-batches", action="store_true",
                   help="send a replica that is busy a further batch also when it is not full "
                   "(hides a slow link to remote replicas at moderate load; on a machine whose "
                   "cores the replicas share, it only splits the queue into smaller batches)")  # fmt: skip
    p.add_argument("--max-body-bytes", type=int, default=16 * 1024 * 1024)
    p.add_argument(
        "--replica-timeout",
        type=float,
        default=30.0,
        help="seconds of silence after which a container is dropped",
    )
    p.add_argument(
        "--max-queued-per-model", type=int, default=100_000,
        help="queries that may wait for one model version; more are shed at once",
    )  # fmt: skip
    p.add_argument(
        "--replica-grace", type=float, default=10.0,
        help="seconds a model without replicas keeps its queries (up to their SLO) after the "
        "frontend starts or its last replica was lost; otherwise it answers 'no replica' at once",
    )  # fmt: skip
    p.add_argument(
        "--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]
    )
    p.add_argument(
        "--workers", type=int, default=1,
        help="processes serving queries, sharing the query port and the state file (0: half "
        "the cores this process may use, at least 1; see schooner.frontend.workers). Each "
        "replica must then serve every worker (SCHOONER_FRONTEND_ENDPOINTS), as the local "
        "manager sets it up; so 1, the default, for replicas that name one RPC address",
    )  # fmt: skip
    p.add_argument(
        "--max-inputs-per-request", type=int, default=10_000,
        help="inputs of one request (Clipper's input_batch, an OIP tensor's rows); more: 413",
    )  # fmt: skip
    http.add_arguments(p)
    credentials.add_arguments(p)
    a = p.parse_args(argv)
    problems: list[str] = []
    security = credentials.from_arguments(a, problems)
    http_limits = http.from_arguments(a, problems)
    from schooner.frontend.workers import MAX_WORKERS, resolve_workers
    from schooner.runtime.config import UNIX_SOCKET_PATH_LIMIT, worker_rpc_socket

    if not 0 <= a.workers <= MAX_WORKERS:
        problems.append(f"--workers must be between 0 (one per two cores) and {MAX_WORKERS}")
    workers = resolve_workers(a.workers) if 0 <= a.workers <= MAX_WORKERS else 1
    if workers > 1 and a.state_redis is None and a.state_db == ":memory:":
        problems.append("--workers above 1 share the state in a file: --state-db cannot be "
                        ":memory:")  # fmt: skip
    if workers > 1 and a.rpc_socket is not None and len(
            worker_rpc_socket(a.rpc_socket, workers - 1).encode()) > UNIX_SOCKET_PATH_LIMIT:
        problems.append(f"--rpc-socket with {workers} workers: worker sockets add a suffix "
                        f"(.wN), so the path must be shorter")  # fmt: skip
    if workers > 1 and a.rpc_port == 0:
        problems.append("--workers above 1 need a fixed --rpc-port (worker i takes port + i, "
                        "the address every replica must be given): 0 picks none")  # fmt: skip
    if a.max_inputs_per_request < 1:
        problems.append("--max-inputs-per-request must be at least 1")
    if a.state_redis is not None:
        from schooner.frontend.shared_state import parse_address

        try:
            parse_address(a.state_redis)
        except ValueError as exc:
            problems.append(f"--state-redis: {exc}")
    if a.inflight_per_replica < 1:
        problems.append("--inflight-per-replica must be at least 1")
    if a.max_body_bytes < 1:
        problems.append("--max-body-bytes must be positive")
    if a.replica_timeout <= 0:
        problems.append("--replica-timeout must be positive")
    if a.max_queued_per_model < 1:
        problems.append("--max-queued-per-model must be at least 1")
    if a.replica_grace < 0:
        problems.append("--replica-grace must not be negative")
    if a.rpc_socket is not None and not 0 < len(a.rpc_socket.encode()) <= 107:
        problems.append("--rpc-socket must be 1 to 107 bytes (the limit of a Unix socket address)")
    if problems:
        p.error("; ".join(problems))
    config = FrontendConfig(
        query_host=a.query_host,
        query_port=a.query_port,
        management_host=a.management_host,
        management_port=a.management_port,
        rpc_host=a.rpc_host,
        rpc_port=a.rpc_port,
        rpc_socket=a.rpc_socket,
        grpc_host=a.grpc_host,
        grpc_port=a.grpc_port,
        state_db=a.state_db,
        state_redis=a.state_redis,
        state_prefix=a.state_prefix,
        state_password=os.environ.get("SCHOONER_STATE_PASSWORD") or None,
        inflight_per_replica=a.inflight_per_replica,
        pipeline_partial=a.pipeline_partial_batches,
        max_body_bytes=a.max_body_bytes,
        replica_timeout_s=a.replica_timeout,
        max_queued_per_model=a.max_queued_per_model,
        replica_grace_s=a.replica_grace,
        max_inputs_per_request=a.max_inputs_per_request,
        workers=workers,
        **http_limits,
        **security,
    )
    return config, a.log_level


def main(argv: Sequence[str] | None = None) -> int:
    config, level = parse_args(argv)
    logging.basicConfig(
        level=level, stream=sys.stderr,
        format="%(asctime)s %(levelname)s " + ("%(process)d " if config.workers > 1 else "")
        + "%(name)s: %(message)s",
    )  # fmt: skip
    if config.workers > 1:
        from schooner.frontend.workers import run_workers

        try:
            return run_workers(config, _run_one)
        except (OSError, ConfigError) as exc:
            log.error("the frontend cannot start: %s", exc)
            return 1
    return _run_one(config)


def _run_one(config: FrontendConfig) -> int:
    """One frontend process, until SIGTERM or SIGINT: the exit code."""
    try:
        import uvloop
    except ImportError:
        runner = asyncio.run
    else:
        runner = uvloop.run
    try:
        runner(run_until_signal(config))
    except (OSError, MissingExtra, ConfigError) as exc:
        log.error("the frontend cannot start: %s", exc)
        return 1
    except Exception as exc:  # a ZMQError on bind, an unreadable state file
        log.error("the frontend stopped: %s", exc, exc_info=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

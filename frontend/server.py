"""The frontend process assembled: state, dispatcher, RPC endpoint, two HTTP servers.

``Frontend.run`` is the whole life of the process: load the state, bind the ROUTER (and
the local Unix socket for containers on this machine, when configured), the management
port and the query port, log "frontend ready", then serve until ``stop`` is called
(SIGTERM or SIGINT in ``run_until_signal``), and close everything in reverse order.

With ``workers`` above 1, ``run_until_signal`` runs that many of these processes under a
parent (``schooner.frontend.workers``, which says what they share and how); each is a
``Frontend`` with ``worker_index`` set: the state file shared through
``SqliteSharedStateStore``, the query port bound with SO_REUSEPORT, its own RPC port and
socket (``runtime.config.worker_rpc_port``/``worker_rpc_socket``), and the management and
gRPC ports on worker 0 only.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from dataclasses import dataclass, field, replace
from typing import Any

import zmq

from schooner.frontend import credentials, http
from schooner.frontend.dispatch import Dispatcher
from schooner.frontend.management_api import ManagementApi
from schooner.frontend.metrics import FrontendMetrics
from schooner.frontend.oip import OipApi
from schooner.frontend.query_api import QueryApi
from schooner.frontend.rpc import LocalEndpoint, RpcEndpoint, RpcSecurity
from schooner.frontend.state import StateStore
from schooner.runtime.config import worker_rpc_port, worker_rpc_socket
from schooner.runtime.memory import settle_gc
from schooner.runtime.wire import DEFAULT_MAX_FRAMES, DEFAULT_MAX_MESSAGE_BYTES, Limits

__all__ = ["FrontendConfig", "Frontend"]

log = logging.getLogger(__name__)

SWEEP_INTERVAL_S = 0.002  # deadline sweep period while queries are pending
HOUSEKEEPING_S = 10.0  # replica silence check and stale in-flight batches
@dataclass(frozen=True)
class FrontendConfig:
    query_host: str = "0.0.0.0"
    query_port: int = 1337
    management_host: str = "127.0.0.1"
    management_port: int = 1338
    rpc_host: str = "127.0.0.1"
    rpc_port: int = 7000
    rpc_socket: str | None = None  # a Unix socket for local containers (``@name``: abstract)
    grpc_host: str = "127.0.0.1"
    grpc_port: int | None = None  # the OIP's gRPC service; None: not served
    state_db: str = "schooner-state.db"
    # several frontends: the Redis (HOST:PORT) they share, their keys' prefix, its password
    state_redis: str | None = None
    state_prefix: str = "schooner"
    state_password: str | None = field(default=None, repr=False)
    inflight_per_replica: int = 2
    pipeline_partial: bool = False  # a busy replica's next batch also when not full
    max_body_bytes: int = 16 * 1024 * 1024
    replica_timeout_s: float = 30.0
    # Security (docs: README "Security"): the cluster secret containers prove they hold, and
    # the management API's token; None turns each check off.
    rpc_secret: bytes | None = field(default=None, repr=False)
    allow_unauthenticated_containers: bool = False
    admin_token: bytes | None = field(default=None, repr=False)
    admin_token_file: str | None = None  # read, or made, at start when admin_token is None
    allow_anonymous_admin: bool = False
    rpc_max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    rpc_max_frames: int = DEFAULT_MAX_FRAMES
    max_queued_per_model: int = 100_000  # queries waiting per model version; more are shed
    replica_grace_s: float = 10.0  # after start-up or a replica's loss, wait for replicas
    # HTTP limits of both ports (the table in schooner.frontend.http; README "Limits"); its
    # max_body_bytes is the field above, and its max_connections the query port's (0: the
    # open-file limit, raised to the hard limit at start, less the other ports' reserve)
    http_limits: http.HttpLimits = http.HttpLimits()
    management_max_connections: int = 256
    max_inputs_per_request: int = 10_000  # inputs of one Clipper or OIP request (else 413)
    # processes serving queries (schooner.frontend.workers): 0 picks default_workers()
    workers: int = 1
    worker_index: int | None = None  # set by the parent in each worker's copy

    @property
    def worker_rpc_port(self) -> int:
        return worker_rpc_port(self.rpc_port, self.worker_index or 0)

    @property
    def worker_rpc_socket(self) -> str | None:
        if self.rpc_socket is None:
            return None
        return worker_rpc_socket(self.rpc_socket, self.worker_index or 0)


class Frontend:
    """One frontend. Build it, then ``await run()`` (from inside the event loop)."""

    def __init__(self, config: FrontendConfig) -> None:
        self.config = config
        self.worker = config.worker_index
        if self.worker is None:
            self.metrics = FrontendMetrics()
        else:
            from schooner.frontend.workers import WorkerMetrics, metrics_folder

            self.metrics = WorkerMetrics(self.worker, metrics_folder(config.state_db))
        self.state: StateStore | None = None
        self.dispatcher: Dispatcher | None = None
        self.rpc: RpcEndpoint | None = None
        self.local: LocalEndpoint | None = None
        self._context: zmq.Context[Any] | None = None
        self._servers: list[asyncio.Server] = []
        self._grpc: Any = None
        self._ready = False
        self._stopped = asyncio.Event()
        self._sweep: asyncio.TimerHandle | None = None
        self._housekeeping: asyncio.TimerHandle | None = None
        self._publish: asyncio.TimerHandle | None = None
        self._state_poll: asyncio.Future[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.ports: dict[str, int] = {}

    def stop(self) -> None:
        """Ask ``run`` to shut down (safe to call from a signal handler on the loop)."""
        self._stopped.set()

    async def run(self) -> None:
        """Start, serve until ``stop``, then close everything."""
        try:
            await self.start()
            await self._stopped.wait()
        finally:
            await self.close()

    async def start(self) -> None:
        cfg = self.config
        loop = self._loop = asyncio.get_running_loop()
        if cfg.state_redis is not None:
            from schooner.frontend.shared_state import RedisStateStore

            self.state = RedisStateStore.connect(cfg.state_redis, cfg.state_password,
                                                 cfg.state_prefix)  # fmt: skip
        elif self.worker is not None:
            from schooner.frontend.shared_state import SqliteSharedStateStore

            self.state = SqliteSharedStateStore.open(cfg.state_db, self.worker)
        else:
            self.state = StateStore.open(cfg.state_db)
        serves_management = not self.worker  # None (one process) or worker 0
        self._context = zmq.Context()
        security = RpcSecurity(cfg.rpc_secret, cfg.allow_unauthenticated_containers,
                               Limits(cfg.rpc_max_frames, cfg.rpc_max_message_bytes))  # fmt: skip
        if cfg.rpc_secret is None:
            log.warning("no RPC secret configured: any process that reaches the RPC port can "
                        "register as a model replica (see --rpc-secret-file)")  # fmt: skip
        self.rpc = RpcEndpoint(
            self._context, self._dispatcher_events(), silence_timeout=cfg.replica_timeout_s,
            security=security,
        )  # fmt: skip
        self.ports["rpc"] = self.rpc.bind(cfg.rpc_host, cfg.worker_rpc_port)
        self.rpc.start(loop)
        if cfg.worker_rpc_socket is not None:
            self.local = LocalEndpoint(
                self._require_dispatcher(), silence_timeout=cfg.replica_timeout_s,
                security=security,
            )  # fmt: skip
            await self.local.start(loop, cfg.worker_rpc_socket)

        management = ManagementApi(self.state, self._require_dispatcher(), self.metrics,
                                   token=credentials.admin_token(cfg.admin_token,
                                                                 cfg.admin_token_file),
                                   allow_anonymous=cfg.allow_anonymous_admin)  # fmt: skip
        queries = QueryApi(self.state, self._require_dispatcher(), self.metrics, self.is_ready,
                           max_inputs=cfg.max_inputs_per_request)  # fmt: skip
        oip = OipApi(self.state, self._require_dispatcher(), queries, self.is_ready,
                     _schooner_version())  # fmt: skip
        max_body = cfg.max_body_bytes
        query_limits, mgmt_limits = _listener_limits(cfg)
        if serves_management:
            mgmt_server = await http.serve(
                management.routes(self._management_router()), cfg.management_host,
                cfg.management_port, max_body_bytes=max_body, limits=mgmt_limits,
                name="management port",
            )  # fmt: skip
            self._servers.append(mgmt_server)
            self.ports["management"] = mgmt_server.sockets[0].getsockname()[1]
        query_server = await http.serve(
            oip.routes(queries.routes(http.Router())), cfg.query_host, cfg.query_port,
            max_body_bytes=max_body, limits=query_limits, reserved=HEALTH_PATHS,
            name="query port", reuse_port=self.worker is not None,
        )  # fmt: skip
        self._servers.append(query_server)
        self.ports["query"] = query_server.sockets[0].getsockname()[1]
        if cfg.grpc_port is not None and serves_management:
            from schooner.frontend.oip_grpc import GrpcServer  # grpcio only when asked for

            self._grpc = GrpcServer(oip, self.state, _schooner_version(), cfg.grpc_host,
                                    cfg.grpc_port, max_message_bytes=cfg.max_body_bytes,
                                    max_metadata_bytes=cfg.http_limits.max_header_bytes,
                                    idle_timeout_s=cfg.http_limits.idle_timeout_s)  # fmt: skip
            self.ports["grpc"] = await self._grpc.start()
        self._housekeeping = loop.call_later(HOUSEKEEPING_S, self._housekeep)
        if cfg.state_redis is not None or self.worker is not None:
            self._state_poll = asyncio.ensure_future(self._follow_shared_state())
        if self.worker is not None:
            self._publish_metrics()
        self._ready = True
        settle_gc()
        log.info(
            "frontend ready%s: query port %d, management port %s, rpc port %d%s%s, state %s "
            "(%d apps, %d models)",
            "" if self.worker is None else f" (worker {self.worker})",
            self.ports["query"], self.ports.get("management", "(worker 0's)"), self.ports["rpc"],
            f" and socket {cfg.worker_rpc_socket}" if cfg.rpc_socket else "",
            f", grpc port {self.ports['grpc']}" if "grpc" in self.ports else "",
            f"shared in redis {cfg.state_redis}" if cfg.state_redis else cfg.state_db,
            len(self.state.apps), len(self.state.models),
        )  # fmt: skip

    def _dispatcher_events(self) -> Dispatcher:
        """Create the dispatcher; it sends through the RPC endpoint created right after."""
        assert self.state is not None and self._loop is not None

        def send(identity: bytes, frames: Any) -> bool:
            local = self.local
            if local is not None and local.owns(identity):
                return local.send(identity, frames)
            assert self.rpc is not None
            return self.rpc.send(identity, frames)

        def unreachable(identity: bytes) -> None:
            for endpoint in (self.local, self.rpc):
                if endpoint is not None and endpoint.owns(identity):
                    endpoint.unregister(identity)

        cfg = self.config
        dispatcher = Dispatcher(
            send, self.metrics, inflight_per_replica=cfg.inflight_per_replica,
            pipeline_partial=cfg.pipeline_partial,
            max_queued=cfg.max_queued_per_model, replica_grace_s=cfg.replica_grace_s,
        )  # fmt: skip
        dispatcher.on_pending = self._arm_sweep
        dispatcher.defer = self._loop.call_soon
        dispatcher.on_unreachable = unreachable
        for model in self.state.models.values():
            dispatcher.configure_model(model.key, model.batch_size)
            # replicas of a restarted frontend reconnect within their session timeout
            dispatcher.expect_replicas(model.key, cfg.replica_grace_s)
        self.dispatcher = dispatcher
        return dispatcher

    def _management_router(self) -> http.Router:
        """Worker 0's answers to changes wait for the other workers (workers module)."""
        from schooner.frontend.shared_state import SqliteSharedStateStore

        if isinstance(self.state, SqliteSharedStateStore):
            from schooner.frontend.workers import ChangesReachEveryWorker

            return ChangesReachEveryWorker(self.state)
        return http.Router()

    def _publish_metrics(self) -> None:
        from schooner.frontend.workers import PUBLISH_S, WorkerMetrics

        assert self._loop is not None and isinstance(self.metrics, WorkerMetrics)
        self._publish = self._loop.call_later(PUBLISH_S, self._publish_metrics)
        self.metrics.publish()

    def _require_dispatcher(self) -> Dispatcher:
        assert self.dispatcher is not None
        return self.dispatcher

    def is_ready(self) -> bool:
        return self._ready

    # ----------------------------------------------------------------- timers

    def _arm_sweep(self) -> None:
        """Make sure the deadline sweep runs while queries are pending (one timer at a time)."""
        if self._sweep is None and self._loop is not None:
            self._sweep = self._loop.call_later(SWEEP_INTERVAL_S, self._run_sweep)

    def _run_sweep(self) -> None:
        self._sweep = None
        dispatcher = self._require_dispatcher()
        try:
            dispatcher.sweep()
        except Exception:
            log.exception("deadline sweep failed")
        if dispatcher.has_pending:
            self._arm_sweep()

    def _housekeep(self) -> None:
        assert self._loop is not None and self.rpc is not None
        self._housekeeping = self._loop.call_later(HOUSEKEEPING_S, self._housekeep)
        try:
            self.rpc.check_silence()
            if self.local is not None:
                self.local.check_silence()
            self._require_dispatcher().reap_stale_batches()
        except Exception:
            log.exception("housekeeping failed")

    async def _follow_shared_state(self) -> None:
        """Apply the changes other frontends (or workers) make to the shared state
        (shared_state); a model that appears waits for replicas as at start-up."""
        from schooner.frontend.shared_state import SharedStateStore, SqliteSharedStateStore

        assert isinstance(self.state, SharedStateStore) and self._loop is not None
        state, dispatcher, down = self.state, self._require_dispatcher(), False
        grace, stuck = self.config.replica_grace_s, False
        while True:
            await asyncio.sleep(state.poll_interval_s)
            before = set(state.models)
            try:
                if state.poll_in_thread:
                    fetched = await self._loop.run_in_executor(None, state.poll)
                else:
                    fetched = state.poll()
            except Exception as exc:  # StateUnavailable: serve from memory meanwhile
                if not down:
                    log.warning("%s; serving the state as last seen", exc)
                down = True
                continue
            if down:
                log.info("the state database answers again")
                down = False
            try:
                if isinstance(state, SqliteSharedStateStore):
                    self._apply_notices(state.notices(fetched[1]))
                changed = state.apply(*fetched)
            except Exception as exc:  # the file is busy past its timeout: next poll retries
                if not stuck:
                    log.warning("cannot apply the shared state's changes yet: %s", exc,
                                exc_info=True)  # fmt: skip
                stuck = True
                continue
            if stuck:
                log.info("the shared state's changes apply again")
                stuck = False
            if changed:
                for key in before - set(state.models):
                    dispatcher.configure_model(key, -1)
                for model in state.models.values():
                    dispatcher.configure_model(model.key, model.batch_size)
                    if model.key not in before and self.worker is not None:
                        dispatcher.expect_replicas(model.key, grace)

    def _apply_notices(self, notices: list[dict[str, Any]]) -> None:
        """What worker 0 was told that is not state: replicas starting (workers module)."""
        dispatcher = self._require_dispatcher()
        for notice in notices:
            try:
                if notice.get("kind") == "expect_replicas":
                    left = float(notice["seconds"]) - max(0.0, time.time() - float(notice["at"]))
                    key = (str(notice["model_name"]), str(notice["model_version"]))
                    dispatcher.expect_replicas(key, max(0.0, left))
            except (KeyError, TypeError, ValueError) as exc:
                log.warning("ignored a notice from another worker (%s): %r", exc, notice)

    # ----------------------------------------------------------------- shutdown

    async def close(self) -> None:
        self._ready = False
        if self._state_poll is not None:
            self._state_poll.cancel()
            self._state_poll = None
        for timer in (self._sweep, self._housekeeping, self._publish):
            if timer is not None:
                timer.cancel()
        if self._grpc is not None:
            await self._grpc.stop()
            self._grpc = None
        for server in self._servers:
            server.close()
        for server in self._servers:
            try:
                await asyncio.wait_for(server.wait_closed(), 1.0)
            except TimeoutError:
                pass  # idle keep-alive connections; the process is exiting anyway
        self._servers.clear()
        if self.local is not None:
            self.local.close()
            self.local = None
        if self.rpc is not None:
            self.rpc.close()
            self.rpc = None
        if self._context is not None:
            self._context.term()
            self._context = None
        if self.state is not None:
            self.state.close()
            self.state = None
        log.info("frontend stopped")


# Paths a query-port connection past --max-connections may still ask (load balancers' checks).
HEALTH_PATHS = ("/health", "/ready", "/v2/health/live", "/v2/health/ready")
FD_RESERVE = 1024  # open files kept for the RPC port, replicas, the state file and logs


def _listener_limits(cfg: FrontendConfig) -> tuple[http.HttpLimits, http.HttpLimits]:
    """The query port's and the management port's limits. With no --max-connections, the
    query port may use the open files (soft limit, raised to the hard one) that neither
    the management port nor ``FD_RESERVE`` keeps."""
    limits = cfg.http_limits
    query = limits.max_connections
    soft = http.raise_fd_limit()
    if not query:
        spare = soft - min(FD_RESERVE, soft // 4) - cfg.management_max_connections
        query = max(16, spare - 2 * limits.reserve_connections)
    log.info("connection limits: query port %d (+%d for health checks), management port %d",
             query, limits.reserve_connections, cfg.management_max_connections)  # fmt: skip
    return (replace(limits, max_connections=query),
            replace(limits, max_connections=cfg.management_max_connections))  # fmt: skip


def _schooner_version() -> str:
    from importlib import metadata

    try:
        return metadata.version("schooner")
    except metadata.PackageNotFoundError:
        return "unknown"


async def run_until_signal(config: FrontendConfig) -> None:
    """Run one frontend process until SIGTERM or SIGINT (a worker's, or the console entry
    point's, body; ``__main__`` runs ``workers.run_workers`` instead for several)."""
    frontend = Frontend(config)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, frontend.stop)
    await frontend.run()

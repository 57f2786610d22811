"""The supervisor process of a local cluster: keeps the frontend and the replicas running.

``python -m schooner.admin.managers.local.supervisor --cluster-dir DIR`` is started by
``LocalContainerManager.start_clipper`` in a session of its own and detaches (forks once
more), so the cluster outlives the Python session that started it, as Clipper's Docker
containers do. It then

* starts the frontend (``python -m schooner.frontend`` with the ports from ``cluster.json``
  and ``--state-db``) and restarts it when it exits;
* starts, scales, restarts and stops model replicas (``python -m schooner.runtime``) as the
  control channel (``schooner.admin.managers.local.control``) asks, each logging to its own file;
* on ``shutdown`` or SIGTERM stops the replicas, then the frontend (SIGTERM, SIGKILL after
  the grace period), removes its socket and pid file, and exits 0.
"""

from __future__ import annotations

import argparse
import logging
import os
import selectors
import signal
import socket
import sys
import time
from dataclasses import replace
from pathlib import Path
from types import FrameType
from typing import Any

from schooner.admin.managers.local import control
from schooner.admin.managers.local.children import Child, ChildSpec
from schooner.admin.managers.local.layout import ClusterLayout, ClusterSettings
from schooner.admin.managers.local.processes import is_alive
from schooner.admin.managers.local.restart import RestartPolicy
from schooner.runtime.config import ContainerConfig, default_frontend_workers, worker_endpoints
from schooner.runtime.errors import ClipperException
from schooner.runtime.wire import InputType

__all__ = ["Supervisor", "main"]

logger = logging.getLogger(__name__)

FRONTEND = "frontend"
_TICK_S = 0.1


def _workers_in(argv: list[str]) -> int:
    """The ``--workers`` a frontend command line asks for (1 without it, or for 0: the
    default on this machine)."""
    for flag, value in zip(argv, argv[1:]):
        if flag == "--workers" and value.isdigit():
            return default_frontend_workers(int(value))
    return 1


def replica_name(model_name: str, model_version: str, slot: int) -> str:
    return f"{model_name}:{model_version}:{slot}"


class Supervisor:
    """The children of one cluster and the control requests that change them.

    ``handle`` answers one control request; ``tick`` advances every child (reap, restart,
    escalate stops); ``serve_forever`` joins them to the control socket.
    """

    def __init__(
        self,
        layout: ClusterLayout,
        settings: ClusterSettings,
        policy: RestartPolicy | None = None,
        grace_s: float = 10.0,
        python: str = sys.executable,
        frontend_argv: list[str] | None = None,
    ) -> None:
        self.layout = layout
        self.settings = settings
        self.policy = policy or RestartPolicy()
        self.grace_s = grace_s
        self.python = python
        self.children: dict[str, Child] = {}
        self.shutting_down = False
        self.frontend_workers = default_frontend_workers(settings.frontend_workers)
        argv = frontend_argv if frontend_argv is not None else self._frontend_argv()
        if frontend_argv is not None:  # what the given command line asks for, else one
            self.frontend_workers = _workers_in(argv)
        # Replicas use the local socket only when the frontend listens on it.
        self._frontend_serves_socket = "--rpc-socket" in argv
        self.children[FRONTEND] = Child(
            ChildSpec(FRONTEND, FRONTEND, argv, layout.frontend_log), self.policy
        )

    # ------------------------------------------------------------------ specs

    def _frontend_argv(self) -> list[str]:
        s = self.settings
        return [
            self.python, "-m", "schooner.frontend",
            "--query-host", s.query_host, "--query-port", str(s.query_port),
            "--management-host", s.management_host, "--management-port", str(s.management_port),
            "--rpc-host", s.rpc_host, "--rpc-port", str(s.rpc_port),
            "--state-db", os.fspath(self.layout.state_db),
            "--rpc-secret-file", os.fspath(self.layout.rpc_secret_file),
            "--admin-token-file", os.fspath(self.layout.admin_token_file),
            *(["--rpc-socket", self.layout.rpc_socket] if self.layout.rpc_socket else []),
            "--workers", str(self.frontend_workers),
        ]

    def _replica_spec(
        self, model_name: str, model_version: str, slot: int, request: dict[str, Any]
    ) -> ChildSpec:
        ready_file = self.layout.ready_file(model_name, model_version, slot)
        batch_size = int(request.get("batch_size", -1))
        config = ContainerConfig(
            model_name=model_name,
            model_version=model_version,
            frontend_port=self.settings.rpc_port,
            input_type=InputType.parse(str(request["input_type"])),
            model_path=Path(str(request["model_path"])),
            device=str(request.get("device") or "cpu"),
            max_batch_size=max(0, batch_size),
            ready_file=ready_file,
            rpc_secret_file=self.layout.rpc_secret_file,
            rpc_socket=(
                self.layout.rpc_socket
                if self.layout.rpc_socket and self._frontend_serves_socket else None
            ),
        )
        if self.frontend_workers > 1:  # a session with every worker (runtime.frontends)
            config = replace(config, rpc_socket=None, every_frontend=True,
                             frontend_endpoints=worker_endpoints(
                                 self.frontend_workers, config.frontend_host,
                                 config.frontend_port, config.rpc_socket))  # fmt: skip

        def environment() -> dict[str, str]:
            # Port 0: the replica binds any free port and reports it in its ready file.
            return replace(config, metrics_port=0).to_env()

        python = request.get("python") or self.python
        return ChildSpec(
            name=replica_name(model_name, model_version, slot),
            kind="replica",
            argv=[python, "-m", "schooner.runtime"],
            log_path=self.layout.replica_log(model_name, model_version, slot),
            environment=environment,
            ready_file=ready_file,
            details={
                "model_name": model_name,
                "model_version": model_version,
                "slot": slot,
                "ready_file": os.fspath(ready_file),
                "model_path": str(request["model_path"]),
            },
        )

    # ------------------------------------------------------------------ queries

    def replicas(self, model_name: str | None = None, model_version: str | None = None) -> list[Child]:
        """Replicas still wanted (not being stopped), optionally of one model (version)."""
        found = []
        for child in self.children.values():
            if child.spec.kind != "replica" or not child.wanted:
                continue
            d = child.spec.details
            if model_name is not None and d["model_name"] != model_name:
                continue
            if model_version is not None and d["model_version"] != model_version:
                continue
            found.append(child)
        return sorted(found, key=lambda c: c.spec.details["slot"])

    def status(self) -> dict[str, Any]:
        replicas = [c for c in self.children.values() if c.spec.kind == "replica"]
        return {
            "pid": os.getpid(),
            "shutting_down": self.shutting_down,
            "frontend": self.children[FRONTEND].info() if FRONTEND in self.children else None,
            "replicas": [c.info() for c in sorted(replicas, key=lambda c: c.name)],
        }

    # ------------------------------------------------------------------ requests

    def handle(self, message: dict[str, Any]) -> dict[str, Any]:
        """Answer one control request (see ``schooner.admin.managers.local.control`` for the operations)."""
        op = message.get("op")
        try:
            if op == "ping":
                return control.ok_reply({"pid": os.getpid()})
            if op == "status":
                return control.ok_reply(self.status())
            if self.shutting_down:
                return control.error_reply("the cluster is shutting down")
            if op == "scale":
                return control.ok_reply(self.scale(message))
            if op == "stop_models":
                models = message.get("models")
                if not isinstance(models, dict):
                    return control.error_reply("stop_models needs {'models': {name: [versions]}}")
                return control.ok_reply({"stopped": self.stop_models(models)})
            if op == "stop_all_replicas":
                return control.ok_reply({"stopped": self.stop_children(self.replicas())})
            if op == "shutdown":
                self.begin_shutdown(float(message.get("grace_s", self.grace_s)))
                return control.ok_reply({"pid": os.getpid()})
        except (KeyError, TypeError, ValueError) as exc:
            return control.error_reply(f"bad {op} request: {exc!r}")
        return control.error_reply(f"unknown operation {op!r}")

    def scale(self, message: dict[str, Any]) -> dict[str, Any]:
        """Run exactly ``num_replicas`` replicas of one model version (adds or stops some)."""
        name, version = str(message["model_name"]), str(message["model_version"])
        wanted = int(message["num_replicas"])
        if wanted < 0:
            raise ValueError("num_replicas must be >= 0")
        current = self.replicas(name, version)
        now = time.monotonic()
        if len(current) > wanted:
            self.stop_children(current[wanted:])
        used = {c.spec.details["slot"] for c in current}
        slot = 0
        while len(self.replicas(name, version)) < wanted:
            while slot in used or replica_name(name, version, slot) in self.children:
                slot += 1
            child = Child(self._replica_spec(name, version, slot, message), self.policy)
            self.children[child.name] = child
            child.start(now)
            used.add(slot)
        return {"replicas": [c.info() for c in self.replicas(name, version)]}

    def stop_models(self, models: dict[str, list[str]]) -> int:
        doomed = [
            child
            for name, versions in models.items()
            for version in versions
            for child in self.replicas(str(name), str(version))
        ]
        return self.stop_children(doomed)

    def stop_children(self, children: list[Child]) -> int:
        now = time.monotonic()
        for child in children:
            child.request_stop(now, self.grace_s)
        return len(children)

    def begin_shutdown(self, grace_s: float | None = None) -> None:
        """Stop replicas first; ``tick`` stops the frontend once they are gone."""
        if grace_s is not None:
            self.grace_s = grace_s
        if not self.shutting_down:
            logger.info("shutting down: stopping replicas, then the frontend")
        self.shutting_down = True
        self.stop_children(self.replicas())

    # ------------------------------------------------------------------ the loop

    def tick(self, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        for child in list(self.children.values()):
            child.tick(now)
            if not child.wanted and not child.running and child.spec.kind == "replica":
                del self.children[child.name]
        if self.shutting_down:
            replicas_left = any(c.spec.kind == "replica" for c in self.children.values())
            frontend = self.children.get(FRONTEND)
            if not replicas_left and frontend is not None and frontend.wanted:
                frontend.request_stop(now, self.grace_s)

    @property
    def finished(self) -> bool:
        return self.shutting_down and not any(c.running for c in self.children.values())

    def kill_all(self) -> None:
        for child in self.children.values():
            child.kill()

    def serve_forever(self, listener: socket.socket) -> None:
        """Answer control requests and tick the children until shutdown completes."""
        listener.setblocking(False)
        with selectors.DefaultSelector() as selector:
            selector.register(listener, selectors.EVENT_READ)
            while not self.finished:
                for _key, _events in selector.select(timeout=_TICK_S):
                    self._answer(listener)
                self.tick()

    def _answer(self, listener: socket.socket) -> None:
        try:
            conn, _addr = listener.accept()
        except BlockingIOError:
            return
        with conn:
            conn.setblocking(True)
            conn.settimeout(5.0)
            try:
                reply = self.handle(control.decode_message(control.read_message(conn)))
            except ClipperException as exc:
                reply = control.error_reply(str(exc))
            except OSError as exc:
                logger.warning("control connection failed: %s", exc)
                return
            try:
                conn.sendall(control.encode_message(reply))
            except OSError as exc:
                logger.warning("could not answer a control request: %s", exc)


def _bind_control_socket(layout: ClusterLayout) -> socket.socket:
    """Bind the control socket, replacing a stale one; refuse if a supervisor answers there."""
    path = layout.control_socket
    if path.exists():
        try:
            control.request(path, "ping", timeout=2.0)
        except control.ControlError:
            path.unlink(missing_ok=True)
        else:
            raise ClipperException(f"a supervisor already runs cluster {layout.root}")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old_umask = os.umask(0o077)
    try:
        with control.socket_address(path) as address:
            listener.bind(address)
    finally:
        os.umask(old_umask)
    listener.listen(16)
    return listener


def run(layout: ClusterLayout, grace_s: float) -> int:
    """Run the supervisor of ``layout`` in this process until it is shut down."""
    settings = layout.read_settings()
    listener = _bind_control_socket(layout)
    supervisor = Supervisor(layout, settings, grace_s=grace_s)

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        logger.info("received signal %d", signum)
        supervisor.begin_shutdown()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    layout.pid_file.write_text(f"{os.getpid()}\n")
    logger.info("supervisor of cluster %s running (pid %d)", layout.name, os.getpid())
    try:
        supervisor.serve_forever(listener)
    finally:
        supervisor.kill_all()
        listener.close()
        layout.control_socket.unlink(missing_ok=True)
        if layout.read_pid() == os.getpid():
            layout.pid_file.unlink(missing_ok=True)
        logger.info("supervisor of cluster %s stopped", layout.name)
    return 0


def _detach() -> None:
    """Fork once more so the cluster is nobody's child (the launcher reaps the parent).

    The remaining process leads a new session and process group, which its children
    join: the local manager's last resort is to SIGKILL that whole group.
    """
    if os.fork() > 0:
        os._exit(0)
    os.setsid()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m schooner.admin.managers.local.supervisor",
        description="Supervise the frontend and model replicas of one local Schooner cluster.",
    )
    parser.add_argument("--cluster-dir", required=True, type=Path)
    parser.add_argument("--grace-s", type=float, default=10.0,
                        help="seconds between SIGTERM and SIGKILL when stopping a child")
    parser.add_argument("--foreground", action="store_true", help="do not detach")
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    layout = ClusterLayout(args.cluster_dir.resolve())
    if not layout.settings_file.exists():
        logger.error("no cluster.json in %s", layout.root)
        return 2
    pid = layout.read_pid()
    if pid is not None and pid != os.getpid() and is_alive(pid):
        try:
            control.request(layout.control_socket, "ping", timeout=2.0)
        except control.ControlError:
            pass
        else:
            logger.error("cluster %s already has a supervisor (pid %d)", layout.name, pid)
            return 1
    if not args.foreground:
        _detach()
    os.chdir(layout.root)
    try:
        return run(layout, args.grace_s)
    except ClipperException as exc:
        logger.error("%s", exc)
        return 1


if __name__ == "__main__":
    sys.exit(main())

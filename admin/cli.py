"""The ``schooner`` command: start, stop and inspect a local cluster.

    schooner start  [--cluster NAME] [--query-port N] [--management-port N] [--rpc-port N]
    schooner stop   [--cluster NAME]
    schooner status [--cluster NAME]
    schooner logs   [--cluster NAME] [--follow] [-n LINES] [COMPONENT]
    schooner split  APP MODEL[:VERSION]=WEIGHT ... [--sticky-field FIELD] [--cluster NAME]
    schooner shadow APP [MODEL:VERSION] [--fraction F]      (no model: stop shadowing)
    schooner policy APP fixed|split|epsilon_greedy|exp3|ensemble [--model M ...]
                    [--epsilon E] [--gamma G] [--combine mean|vote] [--straggler S]
    schooner cache  APP SIZE_MB                             (0: off)
    schooner images build NAME [--python-base REF] [--wheel PATH ...]
    schooner render kubernetes [--cluster NAME] [--namespace NS] [--create-namespace]
                    [--frontend-replicas N] [--frontend-image REF] [--redis-ip HOST]
                    [--redis-port N] [--service-type query|management|rpc=TYPE ...]
                    [--model NAME VERSION IMAGE ...] [--input-type T] [--replicas N]
                    [--without-secret]

COMPONENT is ``supervisor``, ``frontend``, or a replica (``model``, ``model:version`` or
``model:version:slot``). Clusters live under ``$SCHOONER_HOME`` (default ``~/.schooner``).
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path
from typing import Any, TextIO

from schooner.admin.connection import ClipperConnection
from schooner.admin.managers.local import DEFAULT_CLUSTER, LocalContainerManager
from schooner.admin.managers.local.processes import log_tail
from schooner.runtime.config import DEFAULT_MANAGEMENT_PORT, DEFAULT_QUERY_PORT, DEFAULT_RPC_PORT
from schooner.runtime.errors import ClipperException

__all__ = ["main", "build_parser"]

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="schooner", description="Start, stop and inspect a local Schooner cluster."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help, description=help)
        sub.add_argument("--cluster", default=DEFAULT_CLUSTER, help="cluster name")
        return sub

    start = command("start", "start a local cluster (frontend under a supervisor)")
    start.add_argument("--query-port", type=int, default=DEFAULT_QUERY_PORT)
    start.add_argument("--management-port", type=int, default=DEFAULT_MANAGEMENT_PORT)
    start.add_argument("--rpc-port", type=int, default=DEFAULT_RPC_PORT)
    command("stop", "stop every process of a local cluster")
    command("status", "show the frontend, apps, models and replicas of a cluster")
    logs = command("logs", "print a component's log")
    logs.add_argument("component", nargs="?", default=None,
                      help="supervisor, frontend, or a replica (model[:version[:slot]])")
    logs.add_argument("--follow", "-f", action="store_true", help="keep printing new lines")
    logs.add_argument("-n", "--lines", type=int, default=50, help="lines to show first")
    split = command("split", "split an app's queries among model versions by weight")
    split.add_argument("app")
    split.add_argument("members", nargs="+", metavar="MODEL[:VERSION]=WEIGHT")
    split.add_argument("--sticky-field", default=None,
                       help="a request field whose value keeps a user on one member")
    shadow = command("shadow", "mirror an app's queries to a model version (answers compared)")
    shadow.add_argument("app")
    shadow.add_argument("model", nargs="?", default=None, help="MODEL:VERSION; none: stop")
    shadow.add_argument("--fraction", type=float, default=1.0, help="of the queries, 0..1")
    policy = command("policy", "choose how an app's members answer (and learn from feedback)")
    policy.add_argument("app")
    policy.add_argument("policy", choices=["fixed", "split", "epsilon_greedy", "exp3", "ensemble"])
    policy.add_argument("--model", action="append", default=None, dest="models",
                        metavar="MODEL[:VERSION][=WEIGHT]", help="a member (default: the app's)")
    for name, kind in (("--epsilon", float), ("--gamma", float), ("--straggler", float)):
        policy.add_argument(name, type=kind, default=None)
    policy.add_argument("--combine", choices=["mean", "vote"], default=None)
    cache = command("cache", "give an app a prediction cache of SIZE_MB megabytes (0: off)")
    cache.add_argument("app")
    cache.add_argument("size_mb", type=float)
    images = commands.add_parser("images", help="build Schooner's images on a Docker engine")
    image_commands = images.add_subparsers(dest="images_command", required=True, metavar="ACTION")
    build = image_commands.add_parser(
        "build", help="build a base image (base_images/NAME), or reuse it if it is built"
    )
    build.add_argument("name", help="python, pytorch, onnx, tensorflow, pyspark, mxnet, frontend")
    build.add_argument("--python-base", default=None,
                       help="the image to start FROM (default: the local Debian base if the "
                            "engine has it, else python:3.11-slim-bookworm)")
    build.add_argument("--wheel", action="append", default=[], type=Path,
                       help="a local wheel pip prefers (e.g. a CPU build of torch)")
    render = commands.add_parser(
        "render", help="print a cluster's Kubernetes objects as YAML (for kubectl apply)",
        description="print the objects KubernetesContainerManager would create, as YAML",
    )  # fmt: skip
    render.add_argument("target", choices=["kubernetes"])
    render.add_argument("--cluster", default="default-cluster", help="cluster name")
    render.add_argument("--namespace", default="default")
    render.add_argument("--create-namespace", action="store_true")
    render.add_argument("--frontend-replicas", type=int, default=1)
    render.add_argument("--frontend-image", default=None)
    render.add_argument("--redis-ip", default=None, help="a Redis of your own the frontends share")
    render.add_argument("--redis-port", type=int, default=6379)
    render.add_argument("--service-type", action="append", default=[], metavar="WHICH=TYPE",
                        help="query, management or rpc = ClusterIP, NodePort or LoadBalancer")
    render.add_argument("--model", nargs=3, action="append", default=[],
                        metavar=("NAME", "VERSION", "IMAGE"), help="a model version to run")
    render.add_argument("--input-type", default="doubles", help="the models' input type")
    render.add_argument("--replicas", type=int, default=1, help="pods per model version")
    render.add_argument("--without-secret", action="store_true",
                        help="leave the credentials Secret out (you create it; its keys are "
                        "container-secret, management-token, state-password)")  # fmt: skip
    return parser


def _render(args: argparse.Namespace, out: TextIO) -> int:
    """The objects as YAML; the Secret's values are new random ones (unless left out)."""
    import secrets

    from schooner.admin.managers import kubernetes_manifests as k8s

    try:
        import yaml
    except ImportError:
        sys.stderr.write("error: rendering needs PyYAML: pip install schooner[kubernetes]\n")
        return 1
    types = dict(item.partition("=")[::2] for item in args.service_type)
    spec = k8s.ClusterSpec(
        cluster_name=args.cluster, namespace=args.namespace,
        num_frontend_replicas=args.frontend_replicas,
        frontend_image=args.frontend_image or k8s.DEFAULT_FRONTEND_IMAGE,
        service_types={**k8s.DEFAULT_SERVICE_TYPES, **types}, redis_ip=args.redis_ip,
        redis_port=args.redis_port,
    )  # fmt: skip
    values = {key: secrets.token_urlsafe(32) for key in k8s.SECRET_KEYS}
    objects = k8s.cluster_objects(spec, values, create_namespace=args.create_namespace)
    if args.without_secret:
        objects = [o for o in objects if o["kind"] != "Secret"]
    for name, version, image in args.model:
        objects.append(k8s.model_deployment(spec, k8s.ModelSpec(
            name, version, args.input_type, image, num_replicas=args.replicas)))  # fmt: skip
    class Plain(yaml.SafeDumper):  # every object written out in full, as a reviewer reads it
        def ignore_aliases(self, data: Any) -> bool:
            return True

    out.write(yaml.dump_all(objects, Dumper=Plain, sort_keys=False))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    out = sys.stdout
    try:
        if args.command == "start":
            return _start(args, out)
        if args.command == "images":
            return _build_image(args, out)
        if args.command == "render":
            return _render(args, out)
        manager = LocalContainerManager(cluster_name=args.cluster)
        if args.command == "logs":
            return _logs(manager, args.component, args.lines, args.follow, out)
        if args.command == "stop":
            running, left = manager.is_running(), manager.layout.root.exists()
            if running:
                manager.connect()
            manager.stop_all()  # also removes what a crashed run left behind
            if running:
                out.write(f"cluster {args.cluster!r} stopped; its state is removed\n")
            elif left:
                out.write(f"cluster {args.cluster!r} was not running; removed what it left "
                          f"in {manager.layout.root}\n")
            else:
                out.write(f"no cluster {args.cluster!r} is running; nothing to stop\n")
            return 0
        if not manager.is_running():
            sys.stderr.write(
                f"no cluster {args.cluster!r} is running; start it with: "
                f"schooner start{_cluster_flag(args.cluster)}\n"
            )
            return 1
        if args.command in SELECTION_VERBS:
            method, call_args, kwargs = selection_call(args)
            conn = ClipperConnection(manager)
            conn.connect()
            getattr(conn, method)(*call_args, **kwargs)
            out.write(f"{args.command} of app {args.app!r} set\n")
            return 0
        return _status(manager, out)
    except ClipperException as exc:
        sys.stderr.write(f"error: {exc}\n")
        return 1
    except KeyboardInterrupt:
        return 130


SELECTION_VERBS = ("split", "shadow", "policy", "cache")


def _weighted(members: list[str]) -> dict[str, float]:
    weights = {}
    for item in members:
        name, sep, weight = item.rpartition("=")
        try:
            weights[name if sep else weight] = float(weight) if sep else 1.0
        except ValueError:
            raise ClipperException(f"expected MODEL[:VERSION]=WEIGHT, got {item!r}") from None
    return weights


def selection_call(args: argparse.Namespace) -> tuple[str, list[Any], dict[str, Any]]:
    """The ClipperConnection call a selection verb makes: (method, args, keyword args)."""
    if args.command == "split":
        return "set_traffic_split", [args.app, _weighted(args.members)], {
            "sticky_field": args.sticky_field}  # fmt: skip
    if args.command == "shadow":
        return "set_shadow", [args.app, args.model], {"fraction": args.fraction}
    if args.command == "cache":
        return "set_prediction_cache", [args.app, args.size_mb], {}
    settings = {k: getattr(args, k) for k in ("epsilon", "gamma", "straggler", "combine")
                if getattr(args, k) is not None}  # fmt: skip
    models = _weighted(args.models) if args.models else None
    return "set_selection_policy", [args.app, args.policy, models], settings


def _cluster_flag(cluster: str) -> str:
    return "" if cluster == DEFAULT_CLUSTER else f" --cluster {cluster}"


def _start(args: argparse.Namespace, out: TextIO) -> int:
    manager = LocalContainerManager(
        cluster_name=args.cluster,
        clipper_query_port=args.query_port,
        clipper_management_port=args.management_port,
        clipper_rpc_port=args.rpc_port,
    )
    ClipperConnection(manager).start_clipper()
    out.write(
        f"cluster {args.cluster!r} started\n"
        f"  queries:    http://{manager.get_query_addr()}/<app>/predict\n"
        f"  management: http://{manager.get_admin_addr()}\n"
        f"  files:      {manager.layout.root}\n"
        f"stop it with: schooner stop{_cluster_flag(args.cluster)}\n"
    )
    return 0


def _build_image(args: argparse.Namespace, out: TextIO) -> int:
    from schooner.admin import images
    from schooner.admin.engine import Engine

    logging.getLogger("schooner.admin.images").setLevel(logging.INFO)
    engine = Engine()
    python = images.python_base(engine, args.python_base)
    out.write(f"{images.ensure_base_image(engine, args.name, python, args.wheel)}\n")
    return 0


def _status(manager: LocalContainerManager, out: TextIO) -> int:
    status = manager.status()
    frontend = status["frontend"]
    out.write(f"cluster {manager.cluster_name!r} (supervisor pid {status['pid']}) "
              f"in {manager.layout.root}\n")
    conn = ClipperConnection(manager)
    try:
        conn.connect()
    except ClipperException as exc:
        out.write(f"frontend: DOWN ({frontend['state']}, restarts {frontend['restarts']}, "
                  f"last exit code {frontend['last_exit_code']})\n  {exc}\n")
        return 1
    out.write(f"frontend: up, queries at http://{manager.get_query_addr()} "
              f"(pid {frontend['pid']}, restarts {frontend['restarts']})\n")
    apps = conn.get_all_apps(verbose=True)
    out.write(f"apps ({len(apps)}):\n")
    for app in apps:
        linked = ", ".join(app.get("linked_models") or []) or "no model linked"
        out.write(f"  {app['name']}  [{app['input_type']}]  -> {linked}\n")
    models = conn.get_all_models(verbose=True)
    out.write(f"models ({len(models)}):\n")
    for model in models:
        current = "  (current)" if model.get("is_current_version") else ""
        out.write(f"  {model['model_name']}:{model['model_version']}{current}\n")
    replicas = status["replicas"]
    out.write(f"replicas ({len(replicas)}):\n")
    for r in replicas:
        out.write(_replica_line(r))
    return 0


def _replica_line(r: dict[str, Any]) -> str:
    exit_code = "-" if r["last_exit_code"] is None else r["last_exit_code"]
    line = (f"  {r['name']}  {r['state']}  pid {r['pid'] or '-'}  restarts {r['restarts']}  "
            f"last exit {exit_code}  log {r['log_path']}\n")
    if r["state"] == "config-error":
        line += "    configuration or artifact error: see the end of its log\n"
    return line


def _log_files(manager: LocalContainerManager, component: str | None) -> list[Path]:
    logs = manager.layout.logs
    if component is None:
        return sorted(logs.glob("*.log"))
    if component in ("supervisor", "frontend"):
        return [logs / f"{component}.log"]
    prefix = component.replace(":", "-")
    exact = sorted(logs.glob(f"replica-{prefix}.log"))
    return exact or sorted(logs.glob(f"replica-{prefix}-*.log"))


def _logs(
    manager: LocalContainerManager, component: str | None, lines: int, follow: bool,
    out: TextIO,
) -> int:
    files = [f for f in _log_files(manager, component) if f.exists()]
    if not files:
        what = f"for {component!r} " if component else ""
        sys.stderr.write(f"no logs {what}in cluster {manager.cluster_name!r} "
                         f"({manager.layout.logs})\n")
        return 1
    for path in files:
        if len(files) > 1:
            out.write(f"==> {path.name} <==\n")
        out.write(log_tail(path, lines) + "\n")
    if follow:
        _follow(files, out)
    return 0


def _follow(files: list[Path], out: TextIO) -> None:
    """Print lines appended to ``files`` until interrupted (Ctrl-C)."""
    offsets = {path: path.stat().st_size for path in files}
    last = files[-1]
    while True:
        for path in files:
            size = path.stat().st_size if path.exists() else 0
            if size < offsets[path]:
                offsets[path] = 0
            if size > offsets[path]:
                with open(path, "rb") as f:
                    f.seek(offsets[path])
                    data = f.read()
                offsets[path] += len(data)
                if len(files) > 1 and path != last:
                    out.write(f"==> {path.name} <==\n")
                    last = path
                out.write(data.decode("utf-8", "replace"))
                out.flush()
        time.sleep(0.25)


if __name__ == "__main__":
    sys.exit(main())

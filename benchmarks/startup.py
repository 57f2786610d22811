"""Start-up and memory: from the deploy call to the first answer, and the resident memory
of an idle container, for a closure and for every framework with a benchmark model.

A local cluster (``LocalContainerManager``, its supervisor and frontend started on the
server cpu) is started once. Then, for each model, ``--repeats`` times under a fresh model
name: register an app, call ``build_and_deploy_model`` (copy the artifact, pick its Python
environment, start one replica and wait until it connected), link the app, and query it
until a real (not default) answer comes back; the clock runs from the deploy call to that
answer. One second later, the replica's resident memory (VmRSS summed over its process
tree, so a JVM under PySpark counts) is read, and the replica is stopped.

Models: ``closure`` (the no-op closure of ``benchmarks.models``) and each module of
``benchmarks/framework_models`` whose framework is installed (its ``make_artifact``).
Environments that the local manager builds (MXNet's) are built once, before the clock
starts, so the table shows start-up, not installation.

    python -m benchmarks startup                  # every framework available here
    python -m benchmarks startup --only closure   # just the closure
    python -m benchmarks startup --smoke          # the closure, once (CI)
"""

from __future__ import annotations

import argparse
import base64
import importlib
import logging
import os
import pkgutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks import framework_models, models
from benchmarks.harness import (
    Placement,
    add_common_args,
    free_port,
    header,
    markdown_table,
    median,
    placement_from,
    post_json,
    rss_bytes,
    tree_pids,
    write_json,
)  # fmt: skip

__all__ = ["main"]

log = logging.getLogger(__name__)


@dataclass
class Row:
    model: str
    framework: str
    deploy_to_answer_s: float
    deploy_call_s: float
    idle_rss_mb: float
    runs: list[dict[str, float]] = field(default_factory=list)
    python: str = ""


@dataclass
class Candidate:
    name: str
    artifact: Path
    input_type: str
    sample: Any  # one input, as JSON


def _json_input(value: Any, input_type: str) -> Any:
    if input_type in ("strings", "s"):
        return str(value)
    if input_type in ("bytes", "b"):
        return base64.b64encode(bytes(value)).decode()
    return [x.item() if hasattr(x, "item") else x for x in value]


def candidates(only: set[str] | None, tmp: Path) -> tuple[list[Candidate], list[str]]:
    """The closure, then each framework model whose artifact can be made here."""
    from schooner.frameworks import closure

    found, skipped = [], []
    if only is None or "closure" in only:
        artifact = closure.save(models.build("noop"), tmp / "closure-noop")
        found.append(Candidate("closure", artifact, "floats", [0.5] * models.FEATURES))
    for info in sorted(pkgutil.iter_modules(framework_models.__path__), key=lambda m: m.name):
        name = f"{info.name}-model"
        if only is not None and name not in only and info.name not in only - {"closure"}:
            continue
        try:
            module = importlib.import_module(f"benchmarks.framework_models.{info.name}")
            artifact, input_type, make_batch = module.make_artifact(tmp / name)
            sample = _json_input(make_batch(1)[0], input_type)
        except Exception as exc:  # a framework not installed here: say so, go on
            skipped.append(f"{info.name} ({type(exc).__name__}: {str(exc)[:80]})")
            continue
        found.append(Candidate(name, Path(artifact), input_type, sample))
    return found, skipped


def _framework_of(artifact: Path) -> str:
    from schooner.frameworks.artifact import read_manifest

    return str(read_manifest(artifact).get("framework", "?"))


def first_answer(query_url: str, sample: Any, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            answer = post_json(query_url, {"input": sample}, timeout=timeout_s)
            if isinstance(answer, dict) and answer.get("default") is False:
                return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"{query_url}: no real answer within {timeout_s:g} s")
        time.sleep(0.005)


def measure(conn: Any, manager: Any, cand: Candidate, name: str, idle_s: float,
            timeout_s: float) -> dict[str, float]:  # fmt: skip
    conn.register_application(name, cand.input_type, "null", 10_000_000)
    start = time.perf_counter()
    conn.build_and_deploy_model(name, "1", cand.input_type, str(cand.artifact), "default")
    deployed = time.perf_counter() - start
    conn.link_model_to_app(name, name)
    first_answer(f"http://{conn.get_query_addr()}/{name}/predict", cand.sample, timeout_s)
    answered = time.perf_counter() - start
    time.sleep(idle_s)
    replicas = [r for r in manager.status()["replicas"] if r["model_name"] == name]
    rss = sum(rss_bytes(pid) for r in replicas if r.get("pid") for pid in tree_pids(r["pid"]))
    conn.stop_versioned_models({name: ["1"]})
    conn.delete_application(name)
    return {"deploy_to_answer_s": answered, "deploy_call_s": deployed, "idle_rss_mb": rss / 2**20}


def _prepare_environment(conn: Any, cand: Candidate) -> str:
    """Build (once) the environment the replicas of this artifact run in; its python."""
    from schooner.admin.managers.local import environments
    from schooner.frameworks.artifact import open_artifact
    from schooner.frameworks.registry import resolve

    framework = resolve(open_artifact(cand.artifact).framework)
    requirements = (cand.artifact / "requirements.txt").read_text().split()
    return environments.resolve(framework.base_image, requirements, needs=framework.requires).python


def run(cands: list[Candidate], repeats: int, placement: Placement, tmp: Path,
        idle_s: float, timeout_s: float) -> list[Row]:  # fmt: skip
    from schooner.admin import ClipperConnection, LocalContainerManager

    manager = LocalContainerManager(
        cluster_name=f"bench-startup-{os.getpid()}", clipper_query_port=free_port(),
        clipper_management_port=free_port(), clipper_rpc_port=free_port(),
        schooner_home=tmp / "home", query_host="127.0.0.1",
    )  # fmt: skip
    conn = ClipperConnection(manager)
    if placement.server_cpu is not None:  # the supervisor and its children inherit this
        os.sched_setaffinity(0, {placement.server_cpu})
    try:
        conn.start_clipper()
    finally:
        placement.pin_self()
    rows = []
    try:
        for cand in cands:
            python = _prepare_environment(conn, cand)
            runs = [measure(conn, manager, cand, f"{cand.name.replace('_', '-')}-{i}", idle_s,
                            timeout_s) for i in range(repeats)]  # fmt: skip
            rows.append(Row(cand.name, _framework_of(cand.artifact),
                            median([r["deploy_to_answer_s"] for r in runs]),
                            median([r["deploy_call_s"] for r in runs]),
                            median([r["idle_rss_mb"] for r in runs]), runs, python))  # fmt: skip
    finally:
        conn.stop_all()
    return rows


def table(rows: list[Row]) -> str:
    return markdown_table(
        ["model", "framework", "deploy call to first answer s", "deploy call returns s",
         "idle container RSS MB"],
        [[r.model, r.framework, f"{r.deploy_to_answer_s:.2f}", f"{r.deploy_call_s:.2f}",
          f"{r.idle_rss_mb:.0f}"] for r in rows], "llrrr")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks startup",
                                     description=__doc__.split("\n\n")[0])  # fmt: skip
    add_common_args(parser)
    parser.add_argument("--only", help="comma-separated: closure and/or framework names")
    parser.add_argument("--idle", type=float, default=1.0, help="seconds idle before the RSS")
    parser.add_argument("--timeout", type=float, default=300.0, help="per deploy")
    args = parser.parse_args(argv)
    only = set(args.only.split(",")) if args.only else None
    if args.smoke:
        args.repeats, only = 1, {"closure"}
    placement = placement_from(args)
    placement.pin_self()
    with tempfile.TemporaryDirectory(prefix="schooner-startup-") as tmp_name:
        tmp = Path(tmp_name)
        cands, skipped = candidates(only, tmp)
        rows = run(cands, args.repeats, placement, tmp, args.idle, args.timeout)
    detail = (f"local manager; median of {args.repeats} deploys per model, each under a new "
              f"name; RSS after {args.idle:g} s idle")  # fmt: skip
    print(header("start-up and memory", placement, detail))
    if skipped:
        print(f"# not available here: {'; '.join(skipped)}")
    print(table(rows))
    for r in rows:
        if r.model == "closure":
            t_ok, m_ok = r.deploy_to_answer_s <= 2.0, r.idle_rss_mb < 80
            print(f"- closure: deploy call to first answer {r.deploy_to_answer_s:.2f} s "
                  f"(target <= 2 s: {'met' if t_ok else 'MISSED'}); idle container "
                  f"{r.idle_rss_mb:.0f} MB (target < 80 MB: {'met' if m_ok else 'MISSED'})")  # fmt: skip
    write_json(args.json, {"suite": "startup", "rows": rows, "skipped": skipped})
    return 0


if __name__ == "__main__":
    sys.exit(main())

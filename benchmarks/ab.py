"""Before and after: another revision and this checkout, interleaved.

On a shared VM, two runs of the same build minutes apart differ by as much as a change is
worth, so a before/after measured as two separate runs says little. ``ab`` exports the base
revision (``git archive``) into a temporary folder, starts it from there (the ``schooner``
namespace mapped onto that tree through ``PYTHONPATH``; the installed dependencies are this
checkout's) and this checkout in turn, round after round. Each side's rounds give its
median; B/A is this checkout over the base. The base's optional C extensions are built in
its exported tree, as ``pip install -e .`` builds this checkout's, and the header says
whether each side has its own (the container's ``schooner.runtime._wirefast``; on the e2e
path the frontend's ``schooner.frontend._fastpath`` too): a side without one runs the same
steps in Python. Two paths:

* ``--path container`` (the default): the container alone, driven the way the hot path's
  plain-path rows are (``benchmarks.zmtp_driver``: batch 1 with 1 in flight, batch 64 with
  4 in flight, pinned like ``hotpath``);
* ``--path e2e``: the whole server, frontend and container, started as ``benchmarks e2e``
  starts Schooner (``--model``, batch 32, talking over the local socket, on the server
  cpu) and driven by ``wrk`` (one thread on the load cpu) at ``--connections`` for
  ``--seconds`` after a one-second warm-up: requests per second and the server's CPU per
  request (both process trees), the frontend's changes included.
"""

from __future__ import annotations

import argparse
import configparser
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from benchmarks import e2e, models, systems
from benchmarks import hot_path as hp
from benchmarks.harness import (
    Placement,
    add_common_args,
    header,
    markdown_table,
    median,
    placement_from,
    repo_root,
    write_json,
)
from benchmarks.peers import forms
from schooner.frameworks import closure

CASES = hp.PLAIN_PATH  # (batch, in flight)


@dataclass
class ServerRound:
    """One turn of one side on the e2e path."""

    side: str
    round: int
    requests_per_s: float
    cpu_us_per_request: float
    p50_ms: float
    errors: int  # failed requests (wrk's non-2xx and socket errors; the Python loader's defaults too)


@dataclass
class Round:
    side: str  # "A" (the base revision) or "B" (this checkout)
    batch: int
    inflight: int
    round: int
    batches_per_s: float
    cpu_us_per_input: float


def export_revision(rev: str, folder: Path, repo: str | None = None) -> Path:
    """The tree of ``rev`` under ``folder``; returns the folder to put on PYTHONPATH (its
    ``schooner/<package>`` are links into that tree). Raises RuntimeError naming what
    git said when ``rev`` is not a revision of the repository."""
    repo = repo or repo_root()
    tree, path = folder / "tree", folder / "path"
    tree.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", repo, "archive", "--format=tar", rev],
                             capture_output=True)  # fmt: skip
    if archive.returncode != 0:
        raise RuntimeError(f"git archive {rev}: {archive.stderr.decode(errors='replace').strip()}")
    subprocess.run(["tar", "-x", "-C", str(tree)], input=archive.stdout, check=True)
    # its optional C extensions, in place (one that fails to build is left out, as pip would)
    subprocess.run([sys.executable, "setup.py", "-q", "build_ext", "--inplace"], cwd=tree,
                   capture_output=True)  # fmt: skip
    (path / "schooner").mkdir(parents=True)
    for package, directory in package_dirs(tree).items():
        (path / "schooner" / package).symlink_to(tree / directory)
    return path


def package_dirs(tree: Path) -> dict[str, str]:
    """The ``schooner`` namespace's packages and the folders they are, as ``tree``'s own
    ``setup.cfg`` maps them (``package_dir``)."""
    config = configparser.ConfigParser()
    config.read(tree / "setup.cfg")
    pairs = (line.split("=", 1) for line in config["options"]["package_dir"].split("\n") if "=" in line)
    return {name.strip().removeprefix("schooner."): folder.strip() for name, folder in pairs}


def _printed(pythonpath: Path | None, code: str) -> str:
    """What ``code`` prints in a fresh interpreter with that PYTHONPATH (None: this checkout's)."""
    env = dict(os.environ)
    if pythonpath is not None:
        env["PYTHONPATH"] = str(pythonpath)
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=repo_root(),
                         capture_output=True, text=True, check=True)  # fmt: skip
    return out.stdout.strip()


def resolves_to(pythonpath: Path | None, package: str = "runtime") -> str:
    """Where ``schooner.<package>`` is imported from with that PYTHONPATH (a check that each
    side runs the code it names)."""
    code = f"import schooner.{package} as p; print(p.__file__)"
    return str(Path(_printed(pythonpath, code)).parent)


def extension_of(pythonpath: Path | None, package: str = "runtime", module: str = "_wirefast") -> str:
    """A C extension (the container's by default; the frontend's is ``frontend``,
    ``_fastpath``) with that PYTHONPATH: "built" (in the side's own tree), "none", or where
    it was imported from instead (a base whose extension did not build may be handed this
    checkout's by the editable install's finder)."""
    return _printed(pythonpath, f"import os, schooner.{package} as r\n"
                    f"try:\n    import schooner.{package}.{module} as w\n"
                    "except ImportError:\n    print('none')\n"
                    "else:\n    d = os.path.dirname\n"
                    "    print('built' if d(w.__file__) == d(r.__file__) else 'from ' + d(w.__file__))")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks ab",
                                     description=__doc__.split("\n\n")[0])  # fmt: skip
    add_common_args(parser, repeats=1)
    parser.add_argument("--base", required=True, help="the revision to compare with (A)")
    parser.add_argument("--rounds", type=int, default=6, help="turns each side takes")
    parser.add_argument("--count", type=int, default=8000,
                        help="container path: requests per turn at batch 1 (batch 64: 1/8 of "
                             "them)")  # fmt: skip
    parser.add_argument("--path", choices=("container", "e2e"), default="container",
                        help="the container alone, or the whole server under wrk")  # fmt: skip
    parser.add_argument("--model", choices=models.MODELS, default="noop", help="e2e path's model")
    parser.add_argument("--connections", type=int, default=64, help="e2e path's wrk connections")
    parser.add_argument("--seconds", type=float, default=5.0, help="e2e path: seconds per turn")
    parser.add_argument("--loader", choices=["auto", "wrk", "python"], default="auto",
                        help="e2e path: wrk, or the closed-loop Python fallback (smoke runs "
                             "only)")  # fmt: skip
    args = parser.parse_args(argv)
    if args.smoke:
        args.rounds, args.count, args.seconds = 2, 200, 1.0
    loader = args.loader
    if loader == "auto":
        loader = "wrk" if shutil.which("wrk") else "python"
    if args.path == "e2e" and loader == "python" and not args.smoke:
        parser.error("the e2e path needs wrk (apt-get install -y wrk); the Python loader is "
                     "for --smoke")  # fmt: skip
    placement = placement_from(args)
    placement.pin_self()
    with tempfile.TemporaryDirectory() as tmp:
        base_path = export_revision(args.base, Path(tmp) / "base")
        sides = {"A": base_path, "B": None}
        where = {side: resolves_to(path) for side, path in sides.items()}
        if where["A"] == where["B"]:
            raise RuntimeError(f"both sides import schooner.runtime from {where['A']}")
        front = {side: resolves_to(path, "frontend") for side, path in sides.items()}
        if args.path == "e2e" and front["A"] == front["B"]:
            raise RuntimeError(f"both sides import schooner.frontend from {front['A']}")
        built = {side: extension_of(path) for side, path in sides.items()}
        sides_text = (f"A: {args.base} (from {where['A']}), B: this checkout (from "
                      f"{where['B']}); container C extension: A {built['A']}, B {built['B']}")  # fmt: skip
        if args.path == "e2e":
            fast = {side: extension_of(path, "frontend", "_fastpath") for side, path in sides.items()}
            results = server_rounds(sides, args, loader, placement, Path(tmp))
            write_json(args.json, results)
            print(header("before and after: the whole server, A and B interleaved", placement,
                         f"{sides_text}; frontend from {front['A']} (A) and {front['B']} (B), "
                         f"its C extension: A {fast['A']}, B {fast['B']}; {args.rounds} rounds; "
                         f"{args.model}, {args.connections} connections, {args.seconds:g} s "
                         f"per turn ({loader})"))  # fmt: skip
            print(server_table(results))
            failed = {s: sum(r.errors for r in results if r.side == s) for s in ("A", "B")}
            if any(failed.values()):  # wrk counts failed requests as requests: say so, loudly
                print(f"- errors: A {failed['A']}, B {failed['B']}: the rates include "
                      "failed requests, so B / A says little")  # fmt: skip
                return 1
            return 0
        rounds = container_rounds(sides, args, placement, Path(tmp))
    write_json(args.json, rounds)
    print(header("before and after: the container, A and B interleaved", placement,
                 f"{sides_text}; {args.rounds} rounds, {args.count} requests per turn at "
                 "batch 1"))  # fmt: skip
    print(table(rounds))
    return 0


def _env(path: Path | None) -> dict[str, str] | None:
    return {"PYTHONPATH": str(path)} if path is not None else None


def container_rounds(sides: dict[str, Path | None], args: argparse.Namespace,
                     placement: Placement, tmp: Path) -> list[Round]:  # fmt: skip
    results: list[Round] = []
    artifact = closure.save(hp.noop, tmp / "noop")
    for n in range(1, args.rounds + 1):
        for batch, inflight in CASES:
            count = max(args.count // max(batch // 8, 1), 50)
            for side, path in sides.items():
                row = hp.measure("schooner", "plain", hp.Payload(batch), inflight, count, 1,
                                 artifact, placement.server_cpu, driver="zmtp",
                                 extra_env=_env(path))  # fmt: skip
                results.append(Round(side, batch, inflight, n, row.batches_per_s,
                                     row.cpu_us_per_input))  # fmt: skip
    return results


def server_rounds(sides: dict[str, Path | None], args: argparse.Namespace, loader: str,
                  placement: Placement, tmp: Path) -> list[ServerRound]:  # fmt: skip
    """Each side's whole server, started afresh for each turn, as ``benchmarks e2e`` starts
    and measures Schooner (its defaults: batch 32, the local socket, an SLO of 1 s)."""
    artifact = closure.save(models.build(args.model), tmp / f"{args.model}-artifact")
    body = forms.body("clipper")
    load: e2e.Loader
    if loader == "wrk":
        load, load_arg = e2e.load_wrk, e2e.wrk_script(tmp, "ab", body, {"Content-Type": "application/json"})
    else:
        load, load_arg = e2e.load_python, tmp / "ab-body.json"
        load_arg.write_bytes(body)
    results: list[ServerRound] = []
    for n in range(1, args.rounds + 1):
        for side, path in sides.items():
            running = systems.start_schooner(args.model, artifact, tmp, placement.server_cpu,
                                             batch_size=32, slo_micros=1_000_000,
                                             env=_env(path))  # fmt: skip
            try:
                (cell,) = e2e.measure(running, args.model, [args.connections], args.seconds, 1,
                                      placement, load, load_arg)  # fmt: skip
            finally:
                running.stop()
            results.append(ServerRound(side, n, cell.requests_per_s, cell.cpu_us_per_request,
                                       cell.p50_ms, cell.errors))  # fmt: skip
    return results


def server_table(results: list[ServerRound]) -> str:
    """Each side's median req/s, server CPU per request and p50, B over A, and errors."""
    cell = {side: [r for r in results if r.side == side] for side in ("A", "B")}
    if not cell["A"] or not cell["B"]:
        return "(no rounds)"

    def ratio(b: float, a: float) -> str:
        return f"{b / a:.2f}x" if a else "—"

    rate = {s: median([r.requests_per_s for r in rs]) for s, rs in cell.items()}
    cpu = {s: median([r.cpu_us_per_request for r in rs]) for s, rs in cell.items()}
    p50 = {s: median([r.p50_ms for r in rs]) for s, rs in cell.items()}
    spread = {s: f"{min(r.requests_per_s for r in rs):,.0f}-{max(r.requests_per_s for r in rs):,.0f}"
              for s, rs in cell.items()}  # fmt: skip
    errors = {s: sum(r.errors for r in rs) for s, rs in cell.items()}
    return markdown_table(
        ["rounds", "A req/s", "B req/s", "B / A", "A range", "B range", "A µs CPU/req",
         "B µs CPU/req", "B / A CPU", "A p50 ms", "B p50 ms", "errors A/B"],
        [[len(cell["A"]), f"{rate['A']:,.0f}", f"{rate['B']:,.0f}", ratio(rate["B"], rate["A"]),
          spread["A"], spread["B"], f"{cpu['A']:.1f}", f"{cpu['B']:.1f}", ratio(cpu["B"], cpu["A"]),
          f"{p50['A']:.2f}", f"{p50['B']:.2f}", f"{errors['A']}/{errors['B']}"]],
        "rrrrrrrrrrrr",
    )  # fmt: skip


def table(results: list[Round]) -> str:
    """One line per case: each side's median batches/s and CPU per input, and B over A."""
    rows = []
    for batch, inflight in CASES:
        cell = {side: [r for r in results if (r.side, r.batch, r.inflight) == (side, batch, inflight)]
                for side in ("A", "B")}  # fmt: skip
        if not cell["A"] or not cell["B"]:
            continue
        rate = {s: median([r.batches_per_s for r in rs]) for s, rs in cell.items()}
        cpu = {s: median([r.cpu_us_per_input for r in rs]) for s, rs in cell.items()}
        rows.append([batch, inflight, len(cell["A"]), f"{rate['A']:,.0f}", f"{rate['B']:,.0f}",
                     f"{rate['B'] / rate['A']:.2f}x", f"{cpu['A']:.1f}", f"{cpu['B']:.1f}",
                     f"{cpu['B'] / cpu['A']:.2f}x" if cpu["A"] else "—"])  # fmt: skip
    return markdown_table(["batch", "in flight", "rounds", "A batches/s", "B batches/s", "B / A",
                           "A µs CPU/input", "B µs CPU/input", "B / A CPU"], rows,
                          "rrrrrrrrr")  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())

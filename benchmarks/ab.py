"""Before and after: the container of another revision and of this checkout, interleaved.

On a shared VM, two runs of the same build minutes apart differ by as much as a change is
worth, so a before/after measured as two separate runs says little. ``ab`` exports the base
revision (``git archive``) into a temporary folder, starts its container from there (the
``schooner`` namespace mapped onto that tree through ``PYTHONPATH``; the installed
dependencies are this checkout's) and this checkout's container in turn, round after round,
each driven the way the hot path's plain-path rows are (``benchmarks.zmtp_driver``: batch 1
with 1 in flight, batch 64 with 4 in flight, pinned like ``hotpath``). Each side's rounds
give its median; B/A is this checkout over the base. Only the container is compared. The
base's optional C extensions are built in its exported tree, as ``pip install -e .`` builds
this checkout's, and the header says whether each side's container has its own
(``schooner.runtime._wirefast``): a side without it runs the same steps in Python.
"""

from __future__ import annotations

import argparse
import configparser
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from benchmarks import hot_path as hp
from benchmarks.harness import (
    add_common_args,
    header,
    markdown_table,
    median,
    placement_from,
    repo_root,
    write_json,
)
from schooner.frameworks import closure

CASES = hp.PLAIN_PATH  # (batch, in flight)


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


def resolves_to(pythonpath: Path | None) -> str:
    """Where ``schooner.runtime`` is imported from with that PYTHONPATH (a check that each
    side runs the code it names)."""
    return str(Path(_printed(pythonpath, "import schooner.runtime as r; print(r.__file__)")).parent)


def extension_of(pythonpath: Path | None) -> str:
    """The container's C extension with that PYTHONPATH: "built" (in the side's own tree),
    "none", or where it was imported from instead (a base whose extension did not build may
    be handed this checkout's by the editable install's finder)."""
    return _printed(pythonpath, "import os, schooner.runtime as r\n"
                    "try:\n    import schooner.runtime._wirefast as w\n"
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
                        help="requests per turn at batch 1 (batch 64: 1/8 of them)")  # fmt: skip
    args = parser.parse_args(argv)
    if args.smoke:
        args.rounds, args.count = 2, 200
    placement = placement_from(args)
    placement.pin_self()
    results: list[Round] = []
    with tempfile.TemporaryDirectory() as tmp:
        base_path = export_revision(args.base, Path(tmp) / "base")
        sides = {"A": base_path, "B": None}
        where = {side: resolves_to(path) for side, path in sides.items()}
        if where["A"] == where["B"]:
            raise RuntimeError(f"both sides import schooner.runtime from {where['A']}")
        built = {side: extension_of(path) for side, path in sides.items()}
        artifact = closure.save(hp.noop, Path(tmp) / "noop")
        for n in range(1, args.rounds + 1):
            for batch, inflight in CASES:
                count = max(args.count // max(batch // 8, 1), 50)
                for side, path in sides.items():
                    env = {"PYTHONPATH": str(path)} if path is not None else None
                    row = hp.measure("schooner", "plain", hp.Payload(batch), inflight, count, 1,
                                     artifact, placement.server_cpu, driver="zmtp",
                                     extra_env=env)  # fmt: skip
                    results.append(Round(side, batch, inflight, n, row.batches_per_s,
                                         row.cpu_us_per_input))  # fmt: skip
    detail = (f"A: {args.base} (from {where['A']}), B: this checkout (from {where['B']}); "
              f"container C extension: A {built['A']}, B {built['B']}; "
              f"{args.rounds} rounds, {args.count} requests per turn at batch 1")  # fmt: skip
    print(header("before and after: the container, A and B interleaved", placement, detail))
    print(table(results))
    write_json(args.json, results)
    return 0


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

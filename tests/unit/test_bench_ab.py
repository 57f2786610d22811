"""benchmarks ab: the base revision's tree is what the A side imports."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import ab
from benchmarks.harness import repo_root

pytestmark = pytest.mark.skipif(
    subprocess.run(["git", "-C", repo_root(), "rev-parse", "HEAD"], capture_output=True).returncode != 0,
    reason="needs the repository's git history",
)


def test_a_revision_is_exported_and_imported_from_its_own_tree(tmp_path: Path) -> None:
    path = ab.export_revision("HEAD", tmp_path / "base")
    assert (path / "schooner" / "runtime" / "container.py").is_file()
    assert ab.package_dirs(tmp_path / "base" / "tree") == {
        "runtime": "runtime", "frameworks": "frameworks", "frontend": "frontend",
        "admin": "admin", "base_images": "base_images"}  # setup.cfg's package_dir
    where = ab.resolves_to(path)
    assert Path(where).resolve() == (tmp_path / "base" / "tree" / "runtime").resolve()
    assert Path(ab.resolves_to(None)).resolve() == (Path(repo_root()) / "runtime").resolve()
    # its C extension was built there as this checkout's was (the same source, the same compiler)
    assert ab.extension_of(path) == ab.extension_of(None) in ("built", "none")
    # and the exported container starts from there: its module names the tree
    env = {**os.environ, "PYTHONPATH": str(path)}
    out = subprocess.run([sys.executable, "-c", "import schooner.runtime.container as c; print(c.__file__)"],
                         env=env, cwd=repo_root(), capture_output=True, text=True, check=True)  # fmt: skip
    assert out.stdout.strip().startswith(str(path))


def test_a_base_without_its_own_extension_is_not_reported_as_built(tmp_path: Path) -> None:
    # A revision from before runtime/_wirefast.c (or one whose extension did not build):
    # the editable install's finder may still hand it this checkout's extension, and the
    # header must not call that the base's own.
    path = ab.export_revision("HEAD", tmp_path / "base")
    for built in (tmp_path / "base" / "tree").rglob("_wirefast*"):
        built.unlink()
    state = ab.extension_of(path)
    assert state == "none" or state.startswith("from "), state


def test_an_unknown_revision_says_what_git_said(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="git archive no-such-revision"):
        ab.export_revision("no-such-revision", tmp_path / "base")


def test_table_reads_medians_and_ratios() -> None:
    rounds = [ab.Round(side, 1, 1, n, rate, cpu) for n, (side, rate, cpu) in enumerate(
        [("A", 100.0, 10.0), ("B", 150.0, 8.0), ("A", 120.0, 12.0), ("B", 130.0, 6.0),
         ("A", 110.0, 11.0), ("B", 140.0, 7.0)])]  # fmt: skip
    text = ab.table(rounds)
    assert "| 1 | 1 | 3 | 110 | 140 | 1.27x | 11.0 | 7.0 | 0.64x |" in text
    assert "| 64 |" not in text  # a case without rounds is left out


def test_the_frontend_extension_is_probed_in_its_own_tree(tmp_path: Path) -> None:
    # the e2e path's header names the frontend's extension too: built in the base's tree,
    # and not called the base's own once it is gone from there
    path = ab.export_revision("HEAD", tmp_path / "base")
    assert ab.extension_of(path, "frontend", "_fastpath") == ab.extension_of(None, "frontend", "_fastpath")
    for built in (tmp_path / "base" / "tree" / "frontend").glob("_fastpath*.so"):
        built.unlink()
    state = ab.extension_of(path, "frontend", "_fastpath")
    assert state == "none" or state.startswith("from "), state


def test_server_table_reads_medians_ranges_and_ratios() -> None:
    rounds = [ab.ServerRound(side, n, rate, cpu, p50, errors) for n, (side, rate, cpu, p50, errors)
              in enumerate([("A", 30000.0, 30.0, 1.5, 0), ("B", 36000.0, 25.0, 1.2, 2),
                            ("A", 32000.0, 28.0, 1.4, 0), ("B", 33000.0, 27.0, 1.3, 0),
                            ("A", 31000.0, 29.0, 1.6, 0), ("B", 34000.0, 26.0, 1.1, 1)])]  # fmt: skip
    text = ab.server_table(rounds)
    assert ("| 3 | 31,000 | 34,000 | 1.10x | 30,000-32,000 | 33,000-36,000 | 29.0 | 26.0 | "
            "0.90x | 1.50 | 1.20 | 0/3 |") in text  # fmt: skip
    assert ab.server_table(rounds[:1]) == "(no rounds)"  # one side only: nothing to compare
    # a side that answered nothing: no ratio to divide by zero, and the other cells still print
    dead = [ab.ServerRound("A", 1, 0.0, 0.0, 0.0, 9), ab.ServerRound("B", 1, 100.0, 10.0, 1.0, 0)]
    assert "| 1 | 0 | 100 | — |" in ab.server_table(dead) and "| 9/0 |" in ab.server_table(dead)

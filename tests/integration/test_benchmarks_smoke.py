"""The benchmark suites' smoke modes, so that they cannot rot.

What a smoke run measures says nothing here (this machine is noisy; speed belongs in the
benchmarks' own reports): the tests check that every suite runs, writes the rows it
should, and prints what it computed from them.
"""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]


def table_rows(stdout: str) -> list[list[str]]:
    """The body rows of the Markdown tables in a suite's output, as lists of cells."""
    rows = []
    for line in stdout.splitlines():
        if line.startswith("| ") and line.endswith(" |"):
            rows.append([cell.strip() for cell in line[2:-2].split(" | ")])
    return rows


def test_hot_path_smoke(tmp_path):
    out = tmp_path / "hot.json"
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.hot_path", "--smoke", "--no-pin", "--json", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "| schooner | packed | 64 | 8 |" in result.stdout
    rows = json.loads(out.read_text())
    assert {(r["server"], r["framing"]) for r in rows} == {
        ("echo", "plain"), ("echo", "packed"), ("schooner", "plain"), ("schooner", "packed")}
    assert all(r["inputs_per_s"] > 0 for r in rows)
    assert all(r["inputs_per_s"] == pytest.approx(r["batches_per_s"] * r["batch"]) for r in rows)
    # The main table's "vs echo (same frames)" column: each schooner row over its echo row.
    printed = {tuple(cells[:4]): cells for cells in table_rows(result.stdout) if len(cells) == 8}
    small = [r for r in rows if r["input_bytes"] < 600 * 1024]  # the 600 KB rows: another table
    echo = {(r["framing"], r["batch"], r["inflight"]): r for r in small if r["server"] == "echo"}
    for r in small:
        if r["server"] == "schooner":
            base = echo[(r["framing"], r["batch"], r["inflight"])]
            cells = printed[("schooner", r["framing"], str(r["batch"]), str(r["inflight"]))]
            assert cells[6] == f"{r['batches_per_s'] / base['batches_per_s']:.2f}", cells


@pytest.mark.timeout(1200)
def test_frameworks_smoke(tmp_path):
    """Every framework with a benchmark model: container and in-process both answer."""
    out = tmp_path / "frameworks.json"
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.frameworks", "--smoke", "--no-pin", "--json", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=1200,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    rows = json.loads(out.read_text())
    names = {p.stem for p in (ROOT / "benchmarks" / "framework_models").glob("*.py")} - {"__init__"}
    assert {r["framework"] for r in rows} == names
    assert all(r["in_process_inputs_per_s"] > 0 and r["container_inputs_per_s"] > 0 for r in rows)


def _run_suite(*args: str, timeout: int = 600) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([sys.executable, "-m", "benchmarks", *args], cwd=ROOT,
                            capture_output=True, text=True, timeout=timeout)  # fmt: skip
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    return result


def test_entry_point_names_every_suite():
    result = subprocess.run([sys.executable, "-m", "benchmarks", "--help"], cwd=ROOT,
                            capture_output=True, text=True, timeout=60)  # fmt: skip
    assert result.returncode == 0
    for suite in ("hotpath", "e2e", "adaptive", "startup", "frameworks", "oip", "reliability",
                  "selection", "workers", "ab"):
        assert f"``{suite}``" in result.stderr
    unknown = subprocess.run([sys.executable, "-m", "benchmarks", "nope"], cwd=ROOT,
                             capture_output=True, text=True, timeout=60)  # fmt: skip
    assert unknown.returncode == 2 and "unknown suite" in unknown.stderr


@pytest.mark.timeout(600)
def test_e2e_smoke(tmp_path):
    """Floor and Schooner (on its local socket and on ZeroMQ) over HTTP (wrk if installed,
    else the Python loader)."""
    pytest.importorskip("torch")
    out = tmp_path / "e2e.json"
    result = _run_suite("e2e", "--smoke", "--no-pin", "--models", "noop,mlp", "--json", str(out))
    assert "| noop | 64 | schooner |" in result.stdout
    assert "| noop | 64 | schooner-zmq |" in result.stdout
    cells = json.loads(out.read_text())["cells"]
    assert {(c["model"], c["system"], c["concurrency"]) for c in cells} == {
        (m, s, c) for m in ("noop", "mlp") for s in ("floor", "schooner", "schooner-zmq")
        for c in (1, 16, 64)}  # fmt: skip
    assert all(c["requests_per_s"] > 0 and c["errors"] == 0 for c in cells)


@pytest.mark.timeout(600)
def test_oip_smoke(tmp_path):
    """Schooner's Clipper path next to its OIP paths (gRPC always; REST JSON and binary where
    wrk is installed), each answering without errors, with a CPU ratio against Clipper's."""
    import shutil

    pytest.importorskip("grpc")
    out = tmp_path / "oip.json"
    result = _run_suite("oip", "--smoke", "--no-pin", "--models", "noop", "--concurrency", "1,16",
                        "--json", str(out))  # fmt: skip
    cells = json.loads(out.read_text())["cells"]
    paths = ["clipper", "oip-json", "oip-binary", "oip-grpc"] if shutil.which("wrk") else [
        "clipper", "oip-grpc"]  # fmt: skip
    assert {(c["system"], c["concurrency"]) for c in cells} == {
        (p, c) for p in paths for c in (1, 16)}  # fmt: skip
    assert all(c["requests_per_s"] > 0 and c["errors"] == 0 for c in cells)
    rows = {(r[2], r[1]): r for r in table_rows(result.stdout) if r[0] == "noop"}
    cpu = {(c["system"], c["concurrency"]): c["cpu_us_per_request"] for c in cells}
    for path in paths[1:]:
        assert rows[(path, "16")][8] == f"{cpu[(path, 16)] / cpu[('clipper', 16)]:.2f}"


@pytest.mark.timeout(600)
def test_e2e_python_loader_smoke(tmp_path):
    """The closed-loop fallback that smoke runs use where wrk is not installed."""
    out = tmp_path / "e2e.json"
    _run_suite("e2e", "--smoke", "--no-pin", "--loader", "python", "--models", "noop",
               "--systems", "floor,schooner", "--concurrency", "1,16", "--json", str(out))  # fmt: skip
    cells = json.loads(out.read_text())["cells"]
    assert len(cells) == 4 and all(c["requests_per_s"] > 0 and c["errors"] == 0 for c in cells)


@pytest.mark.timeout(600)
def test_adaptive_smoke(tmp_path):
    pytest.importorskip("torch")
    out = tmp_path / "adaptive.json"
    result = _run_suite("adaptive", "--smoke", "--no-pin", "--models", "mlp", "--json", str(out))
    assert "| mlp | adaptive |" in result.stdout
    rows = json.loads(out.read_text())["rows"]
    assert [r["policy"] for r in rows] == ["adaptive", "batch 1", "batch 32"]
    assert all(r["steps"] and r["steps"][0]["throughput"] > 0 for r in rows)


@pytest.mark.timeout(600)
def test_startup_smoke(tmp_path):
    out = tmp_path / "startup.json"
    result = _run_suite("startup", "--smoke", "--no-pin", "--json", str(out))
    (row,) = json.loads(out.read_text())["rows"]
    assert (row["model"], row["framework"]) == ("closure", "closure")
    (run,) = row["runs"]  # --smoke: one deploy, so the medians are that deploy's figures
    assert {k: row[k] for k in run} == run
    # Both times run from the same deploy call; the first answer comes after it returned.
    assert 0 < run["deploy_call_s"] <= run["deploy_to_answer_s"]
    assert row["idle_rss_mb"] > 5  # a live replica's memory was read
    # The table and the summary line print those figures, and the verdicts follow them.
    t, d, m = row["deploy_to_answer_s"], row["deploy_call_s"], row["idle_rss_mb"]
    assert ["closure", "closure", f"{t:.2f}", f"{d:.2f}", f"{m:.0f}"] in table_rows(result.stdout)
    summary = re.search(r"^- closure: deploy call to first answer (\S+) s \(target <= 2 s: "
                        r"(met|MISSED)\); idle container (\d+) MB \(target < 80 MB: (met|MISSED)\)$",
                        result.stdout, re.MULTILINE)  # fmt: skip
    assert summary, result.stdout
    assert summary.groups() == (f"{t:.2f}", "met" if t <= 2.0 else "MISSED", f"{m:.0f}",
                                "met" if m < 80 else "MISSED")  # fmt: skip


@pytest.mark.timeout(600)
def test_ab_smoke(tmp_path):
    """``benchmarks ab`` against this checkout's own HEAD: both sides start, answer and are
    reported, each imported from its own tree."""
    out = tmp_path / "ab.json"
    result = _run_suite("ab", "--smoke", "--no-pin", "--base", "HEAD", "--json", str(out))
    assert "A: HEAD (from " in result.stdout and "/base/path/schooner/runtime)" in result.stdout
    # the same source on both sides: both containers have the C extension, or neither
    assert ("container C extension: A built, B built" in result.stdout
            or "container C extension: A none, B none" in result.stdout), result.stdout  # fmt: skip
    rows = json.loads(out.read_text())
    assert {(r["side"], r["batch"], r["inflight"]) for r in rows} == {
        (side, batch, inflight) for side in "AB" for batch, inflight in ((1, 1), (64, 4))}
    assert all(r["batches_per_s"] > 0 for r in rows) and len(rows) == 8  # 2 rounds
    assert [c[:3] for c in table_rows(result.stdout)][1:] == [["1", "1", "2"], ["64", "4", "2"]]


@pytest.mark.timeout(600)
def test_ab_e2e_smoke(tmp_path):
    """``benchmarks ab --path e2e``: both sides' whole servers start, answer under load and
    are reported, with both sides' frontend extensions named."""
    out = tmp_path / "ab-e2e.json"
    result = _run_suite("ab", "--smoke", "--no-pin", "--base", "HEAD", "--path", "e2e",
                        "--json", str(out))  # fmt: skip
    assert "A: HEAD (from " in result.stdout and "/base/path/schooner/runtime)" in result.stdout
    assert "/base/path/schooner/frontend (A)" in result.stdout  # A's frontend is the base's
    assert ("its C extension: A built, B built" in result.stdout
            or "its C extension: A none, B none" in result.stdout), result.stdout  # fmt: skip
    rows = json.loads(out.read_text())
    assert [(r["side"], r["round"]) for r in rows] == [("A", 1), ("B", 1), ("A", 2), ("B", 2)]
    assert all(r["requests_per_s"] > 0 and r["cpu_us_per_request"] > 0 for r in rows)
    assert all(r["errors"] == 0 for r in rows)
    assert table_rows(result.stdout)[1][0] == "2"  # one line: 2 rounds a side


@pytest.mark.timeout(600)
def test_hotpath_entry_point_smoke(tmp_path):
    """``python -m benchmarks hotpath`` is the same suite, with the 600 KB tensor rows."""
    out = tmp_path / "hot.json"
    result = _run_suite("hotpath", "--smoke", "--no-pin", "--batches", "8", "--inflight", "1",
                        "--json", str(out))  # fmt: skip
    assert "| schooner | packed | 1 | 600 |" in result.stdout
    rows = json.loads(out.read_text())
    assert {r["batch"] for r in rows} == {8, 1} and all(r["gb_per_s"] > 0 for r in rows)


@pytest.mark.timeout(600)
def test_reliability_smoke(tmp_path):
    """Every reliability scenario runs against a real local cluster and prints its row; what
    overload and the largest requests must never do (fail a request, stall forever) holds."""
    out = tmp_path / "reliability.json"
    result = _run_suite("reliability", "--smoke", "--json", str(out))
    rows = {r["scenario"]: r for r in json.loads(out.read_text())}
    assert {"overload 2x", "overload 10x", "replica kill -9 at 0.5x",
            "frontend kill -9 at 0.5x"} <= set(rows)  # fmt: skip
    assert any(s.startswith("replica SIGSTOP") for s in rows)
    for factor in ("2x", "10x"):
        row = rows[f"overload {factor}"]
        assert row["failed"] == 0 and row["shed"] > 0
    assert rows["replica kill -9 at 0.5x"]["failed"] == 0
    largest = [r for s, r in rows.items() if s.startswith("largest request")]
    assert [r["status"] for r in largest] == [200, 414]
    assert "| overload 10x |" in result.stdout


@pytest.mark.timeout(600)
def test_selection_smoke(tmp_path):
    """``python -m benchmarks selection``: every setting (fixed, split, shadow, cache hit and
    miss) runs against a real frontend and three replicas, answers without errors or default
    outputs, and the table and the JSON say the same."""
    out = tmp_path / "selection.json"
    result = _run_suite("selection", "--smoke", "--no-pin", "--json", str(out))
    results = json.loads(out.read_text())
    rows = {r["scenario"]: r for r in results if "connections" in r}  # the wrk rows
    assert set(rows) == {"fixed", "split 90/10", "shadow 100%", "cache hit", "cache miss"}
    in_process = {r["scenario"] for r in results if "connections" not in r}
    assert in_process == set(rows)
    for row in rows.values():
        assert row["errors"] == 0 and row["defaults"] == 0 and row["requests_per_s"] > 0
        assert [row["scenario"], "16", f"{row['requests_per_s']:,.0f}"] == [
            c for c in table_rows(result.stdout) if c[0] == row["scenario"]][0][:3]  # fmt: skip
    assert "selection" in subprocess.run([sys.executable, "-m", "benchmarks", "--help"],
                                         cwd=ROOT, capture_output=True, text=True).stderr
    assert re.search(r"^- 16 connections: a cache hit answers \S+x the req/s of a miss",
                     result.stdout, re.MULTILINE)  # fmt: skip


def test_workers_smoke(tmp_path):
    """``python -m benchmarks workers``: 1 and 2 frontend workers each answer the load with
    no errors, the model saw batches, and the table and the JSON say the same."""
    out = tmp_path / "workers.json"
    result = _run_suite("workers", "--smoke", "--json", str(out))
    rows = {r["workers"]: r for r in json.loads(out.read_text())}
    assert set(rows) == {1, 2}
    for n, row in rows.items():
        assert row["errors"] == 0 and row["requests_per_s"] > 0
        assert row["model_batch"] >= 1 and row["frontend_batch"] >= 1
        assert [c for c in table_rows(result.stdout) if c[0] == str(n)][0][2] == \
            f"{row['requests_per_s']:,.0f}"  # fmt: skip
    assert "the load generator share these" in result.stdout

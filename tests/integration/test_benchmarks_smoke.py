"""The benchmark suites' smoke modes, so that they cannot rot."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]


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

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

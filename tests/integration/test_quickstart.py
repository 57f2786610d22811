"""The README's first command: examples/quickstart.py, run twice in a row on one machine."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from schooner.admin.managers.local.processes import port_in_use

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

ROOT = Path(__file__).resolve().parents[2]


def test_the_quickstart_runs_twice_in_a_row(tmp_path):
    busy = [p for p in (1337, 1338, 7000) if port_in_use(p)]
    assert not busy, f"the quickstart uses Clipper's default ports; {busy} are taken here"
    env = {**os.environ, "SCHOONER_HOME": str(tmp_path / "home")}
    for run in (1, 2):
        done = subprocess.run(
            [sys.executable, str(ROOT / "examples" / "quickstart.py")], env=env, cwd=tmp_path,
            capture_output=True, text=True, timeout=180,
        )
        assert done.returncode == 0, f"run {run}:\n{done.stdout}\n{done.stderr}"
        assert "'output': 3.0" in done.stdout and "'default': False" in done.stdout
    assert not (tmp_path / "home" / "clusters" / "default-cluster").exists()

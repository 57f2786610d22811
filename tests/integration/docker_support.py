"""What the docker-marked tests share: the engine fixture, and the local CPU wheel of torch.

The engine is whatever ``docker`` reaches (``.ci/run`` starts one); without one the
docker-marked tests are skipped, saying so. PyPI's torch==2.13.0 is the CUDA build, so the
pytorch image is built with the machine's CPU wheel (pip's find-links, /opt/wheels here).
"""

from __future__ import annotations

from pathlib import Path

import pytest

TORCH_CPU_WHEELS = sorted(Path("/opt/wheels").glob("torch-*+cpu-*.whl"))


@pytest.fixture(scope="session")
def engine():
    from schooner.admin.engine import Engine

    engine = Engine()
    if not engine.available():
        pytest.skip("no Docker engine is running (start dockerd; .ci/run does)")
    return engine

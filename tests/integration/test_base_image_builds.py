"""Every image in base_images/ builds for real on a Docker engine, and its container starts as
the non-root user with its framework and Schooner's C extensions importable (marked docker;
skipped only without an engine). Sizes are written to the test's report (``-rA`` shows them) as ``image_size_mb``.
"""

from __future__ import annotations

import json

import pytest

from schooner import base_images
from schooner.admin import images
from tests.integration import docker_support

pytestmark = [pytest.mark.docker, pytest.mark.slow, pytest.mark.timeout(3600)]

WHEELS = docker_support.TORCH_CPU_WHEELS

# What each image must import: the framework module of Schooner and its library.
IMPORTS = {
    "python": "import schooner.frameworks.closure, numpy",
    "pytorch": "import schooner.frameworks.pytorch, torch; assert not torch.version.cuda",
    "onnx": "import schooner.frameworks.onnx, onnxruntime",
    "tensorflow": "import schooner.frameworks.tensorflow, tensorflow",
    "pyspark": "import schooner.frameworks.pyspark, pyspark, shutil; assert shutil.which('java')",
    "mxnet": "import schooner.frameworks.mxnet, mxnet, numpy; assert numpy.__version__ < '1.24'",
    "frontend": "import schooner.frontend.server, httptools, orjson, uvloop",
}


engine = docker_support.engine  # the fixture


def test_every_image_is_listed_here():
    assert sorted(IMPORTS) == base_images.names()


@pytest.mark.parametrize("name", list(IMPORTS))
def test_the_image_builds_and_starts_as_a_non_root_user(engine, name, record_property):
    if name == "pytorch" and not WHEELS:
        pytest.fail("no CPU wheel of torch in /opt/wheels: CI must not pull PyPI's CUDA build")
    ref = images.ensure_base_image(engine, name, images.python_base(engine), WHEELS)
    (found,) = engine.inspect("image", [ref])
    assert found["Config"]["User"] == "10001"
    assert found["Config"]["Healthcheck"]["Test"]
    record_property("image_size_mb", round(found["Size"] / 1e6))
    # Every image serves with Schooner's C extensions, compiled in its build stage
    # (base_images/c_extensions.sh), like an install on a host with a compiler
    extensions = "import schooner.frontend._fastpath, schooner.runtime._wirefast"
    out = engine.run(["run", "--rm", "--entrypoint", "python3", ref, "-c",
                      f"{IMPORTS[name]}; {extensions}; "
                      "import os, json; print(json.dumps(os.getuid()))"],
                     timeout=300)  # fmt: skip
    assert json.loads(out.strip().splitlines()[-1]) == 10001
    leftovers = "test ! -e /opt/wheels && test ! -e /home/schooner/.cache/pip && ! command -v gcc"
    engine.run(["run", "--rm", "--entrypoint", "sh", ref, "-c", leftovers])  # fails if any is there

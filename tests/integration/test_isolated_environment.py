"""An isolated environment built for real from a base image's requirements."""

import os
import subprocess

import pytest

from schooner import base_images
from schooner.admin.managers.local import environments

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]


def test_isolated_environment_has_the_pins_and_this_schooner(tmp_path, monkeypatch):
    monkeypatch.setenv("SCHOONER_ENVS", str(tmp_path / "envs"))
    env = environments.resolve("python", ["six==1.16.0"], mode="isolated")
    assert env.isolated and env.python.startswith(str(tmp_path / "envs"))
    code = ("import numpy, six, schooner.runtime.container as c, schooner.frameworks.closure; "
            "print(numpy.__version__, six.__version__, c.__file__)")  # fmt: skip
    out = subprocess.run([env.python, "-c", code], capture_output=True, text=True, check=True)
    numpy_pin = next(r for r in base_images.requirements("python") if r.startswith("numpy=="))
    numpy_version, six_version, container_file = out.stdout.split()
    assert numpy_version == numpy_pin.split("==")[1] and six_version == "1.16.0"
    import schooner.runtime.container

    # the very code this process runs (through a link), not a copy of it
    assert os.path.realpath(container_file) == os.path.realpath(schooner.runtime.container.__file__)
    again = environments.resolve("python", ["six==1.16.0"], mode="isolated")
    assert again.python == env.python  # built once, then cached

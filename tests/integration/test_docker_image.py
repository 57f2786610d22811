"""A base image built for real and serving a model (needs a Docker engine: marked docker).

Builds the local Debian base (base_images/debian/build.sh, debootstrap) if it is missing,
then base image "python" (from the build context Schooner writes, schooner.admin.images),
then runs it with a closure artifact mounted at /model against
a frontend started by the test on the host network, and queries it over HTTP.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

pytestmark = [pytest.mark.docker, pytest.mark.slow, pytest.mark.timeout(1800)]

ROOT = Path(__file__).resolve().parents[2]
BASE = "schooner/debian-python:3.11"


def _docker_ready() -> bool:
    if shutil.which("docker") is None:
        return False
    return subprocess.run(["docker", "info"], capture_output=True).returncode == 0


@pytest.fixture(scope="module")
def image() -> str:
    if not _docker_ready():
        pytest.skip("no Docker engine is running")
    if subprocess.run(["docker", "image", "inspect", BASE], capture_output=True).returncode != 0:
        # the host's CA bundle, so that pip in the image trusts what the host trusts
        env = dict(os.environ, CA_BUNDLE=os.environ.get("SSL_CERT_FILE", ""))
        subprocess.run([str(ROOT / "base_images/debian/build.sh"), BASE], check=True, env=env)
    from schooner.admin import images
    from schooner.admin.engine import Engine

    return images.ensure_base_image(Engine(), "python", BASE)


def test_python_base_image_serves_a_closure(image, start_frontend, closure_artifact):
    fe = start_frontend()
    artifact = closure_artifact(lambda xs: [str(float(sum(x)) * 2) for x in xs])
    fe.admin("add_app", {"name": "app", "input_type": "doubles", "default_output": "-1",
                         "latency_slo_micros": 5_000_000})  # fmt: skip
    fe.admin("add_model", {"model_name": "m", "model_version": "1", "labels": [],
                           "input_type": "doubles", "container_name": image,
                           "model_data_path": str(artifact), "batch_size": -1})  # fmt: skip
    fe.admin("add_model_links", {"app_name": "app", "model_names": ["m"]})
    run = subprocess.run(
        # as the user owning the bind-mounted artifact (the image's own user is 10001)
        ["docker", "run", "-d", "--rm", "--network", "host", "-v", f"{artifact}:/model:ro",
         "--user", str(os.getuid()),
         "-e", "CLIPPER_MODEL_NAME=m", "-e", "CLIPPER_MODEL_VERSION=1",
         "-e", f"CLIPPER_PORT={fe.rpc_port}", image],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    container = run.stdout.strip()
    try:
        fe.wait_for_replica("m", "1", timeout=120)
        status, body = fe.predict("app", {"input": [1.0, 2.0]})
        assert status == 200 and body["output"] == 6.0 and body["default"] is False
        health = subprocess.run(["docker", "exec", container, "test", "-f", "/tmp/model_is_ready.check"])
        assert health.returncode == 0
    finally:
        subprocess.run(["docker", "rm", "-f", container], capture_output=True)

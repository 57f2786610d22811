"""Every base image: a Dockerfile that hadolint accepts and exactly pinned requirements."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from schooner import base_images

NAMES = base_images.names()


def _hadolint() -> str:
    found = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    if not Path(found).exists():
        pytest.fail("hadolint is part of the test extra: pip install -e '.[test]'")
    return found


@pytest.mark.parametrize("name", NAMES)
def test_dockerfile_passes_hadolint(name):
    result = subprocess.run([_hadolint(), str(base_images.dockerfile(name))],
                            capture_output=True, text=True)  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("name", NAMES)
def test_requirements_are_pinned_and_include_the_runtime(name):
    reqs = [Requirement(line) for line in base_images.requirements(name)]
    loose = [str(r) for r in reqs if [s.operator for s in r.specifier] != ["=="]]
    assert not loose, f"base image {name} must pin exact versions: {loose}"
    names = {r.name.lower() for r in reqs}
    assert {"pyzmq", "cloudpickle", "prometheus-client", "numpy"} <= names


@pytest.mark.parametrize("name", base_images.model_images())
def test_dockerfile_runs_the_container_and_checks_readiness(name):
    text = base_images.dockerfile(name).read_text()
    assert 'ENTRYPOINT ["python3", "-m", "schooner.runtime"]' in text
    assert "/model_is_ready.check" in text
    assert f"base_images/{name}/requirements.txt" in text


@pytest.mark.parametrize("name", NAMES)
def test_images_run_as_a_non_root_user_and_keep_no_build_leftovers(name):
    text = base_images.dockerfile(name).read_text()
    assert text.rstrip().splitlines().count("USER 10001") == 1
    assert "AS build" in text and "COPY --from=build /opt/venv /opt/venv" in text
    assert "HEALTHCHECK" in text


def test_the_frontend_image_runs_the_frontend_with_its_state_on_a_volume():
    text = base_images.dockerfile(base_images.FRONTEND).read_text()
    assert '"schooner.frontend"' in text and '"/home/schooner/state/state.db"' in text
    assert 'VOLUME ["/home/schooner/state"]' in text


def test_every_framework_has_its_base_image():
    from schooner.frameworks import registry

    for framework in registry.BUILTIN:
        image = registry.resolve(framework).base_image
        assert image in NAMES, f"{framework} names base image {image!r}, which does not exist"

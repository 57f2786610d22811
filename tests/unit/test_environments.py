import sys
from importlib import metadata

import pytest

from schooner import base_images
from schooner.admin.managers.local import environments
from schooner.runtime.errors import ClipperException


def test_base_images_expand_the_shared_runtime_requirements():
    names = base_images.names()
    assert "python" in names
    reqs = base_images.requirements("python")
    assert any(r.startswith("pyzmq==") for r in reqs) and any(r.startswith("numpy==") for r in reqs)
    with pytest.raises(KeyError, match="no base image 'nope'"):
        base_images.folder("nope")


def test_unmet_compares_pins_at_major_minor_when_asked():
    numpy = metadata.version("numpy")
    major, minor, *_ = numpy.split(".")
    same_minor_other_patch = f"numpy=={major}.{minor}.9999"
    assert environments.unmet([f"numpy=={numpy}"]) == []
    assert environments.unmet([same_minor_other_patch], same_minor=True) == []
    assert environments.unmet([same_minor_other_patch]) == [f"{same_minor_other_patch} (installed {numpy})"]
    assert environments.unmet(["numpy==1.23.5"], same_minor=True)  # MXNet's numpy: not here
    assert environments.unmet(["surely-not-installed-pkg"]) == ["surely-not-installed-pkg"]
    assert environments.unmet(['numpy==0.1; python_version < "3"']) == []  # marker excludes it
    assert environments.unmet(["surely-not-installed-pkg | numpy>=1"]) == []  # alternatives
    assert environments.unmet(["surely-not-installed-pkg | numpy<1"]) == ["surely-not-installed-pkg | numpy<1"]


def test_current_interpreter_when_it_satisfies_the_image(monkeypatch):
    monkeypatch.setattr(environments, "ensure_isolated", lambda *a: pytest.fail("built an env"))
    monkeypatch.setattr(environments, "unmet", lambda reqs, same_minor=False: [])
    env = environments.resolve("python", ["requests"])
    assert env.python == sys.executable and not env.isolated
    assert env.requirements[-1] == "requests"
    assert environments.Environment.from_json(env.to_json()) == env


def test_isolated_when_something_is_unmet(monkeypatch):
    built = []
    monkeypatch.setattr(environments, "ensure_isolated",
                        lambda image, reqs: built.append((image, reqs)) or "/envs/x/bin/python")  # fmt: skip
    env = environments.resolve("python", ["surely-not-installed-pkg==1.0"])
    assert env.isolated and env.python == "/envs/x/bin/python"
    assert built and built[0][1][-1] == "surely-not-installed-pkg==1.0"
    # what the framework needs counts too (MXNet needs numpy < 1.24)
    env = environments.resolve("python", needs=["numpy<1"])
    assert env.isolated and len(built) == 2
    assert environments.resolve("python", needs=["numpy>=1"]).python == sys.executable


def test_bad_mode_and_unknown_image():
    with pytest.raises(ClipperException, match="environment mode 'sometimes'"):
        environments.resolve("python", mode="sometimes")
    with pytest.raises(ClipperException, match="no base image 'nope'"):
        environments.resolve("nope")

"""The lock CI installs from (.ci/requirements.lock) against setup.cfg's ranges and the base
images' pins: one set of versions, chosen on purpose, everywhere."""

from __future__ import annotations

import configparser
import re
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from schooner import base_images

ROOT = Path(__file__).resolve().parents[2]
LOCK = ROOT / ".ci" / "requirements.lock"
# Images whose environment cannot be the CI one (MXNet 1.9.1 needs numpy < 1.24).
OWN_ENVIRONMENT = {"mxnet"}


def lock() -> dict[str, Version]:
    pins = {}
    for line in LOCK.read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        match = re.fullmatch(r"([A-Za-z0-9_.-]+)==(\S+)", line.strip())
        assert match, f"not an exact pin: {line!r}"
        name = canonicalize_name(match[1])
        assert name not in pins, f"{name} pinned twice"
        pins[name] = Version(match[2])
    return pins


def test_the_readme_test_command_installs_from_the_lock():
    readme = (ROOT / "README.md").read_text()
    command = next(line.strip() for line in readme.splitlines()
                   if line.startswith("    python3 -m venv") and "pytest" in line)  # fmt: skip
    assert "-r .ci/requirements.lock" in command and "--no-deps" in command


def test_the_lock_meets_setup_cfg_ranges_for_everything_ci_installs():
    pins = lock()
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    lines = cfg["options"]["install_requires"].splitlines()
    for extra in ("test", "frameworks"):
        lines += cfg["options.extras_require"][extra].splitlines()
    for line in filter(None, (raw.strip() for raw in lines)):
        req = Requirement(line)
        if req.marker is not None and not req.marker.evaluate():
            continue
        name = canonicalize_name(req.name)
        assert name in pins, f"{req} is not in the lock: refresh it with bash .ci/lock"
        assert req.specifier.contains(pins[name], prereleases=True), (req, pins[name])
    for tool in ("setuptools", "wheel"):  # the README installs with --no-build-isolation
        assert tool in pins


def test_base_images_pin_what_the_lock_pins():
    pins = lock()
    for image in base_images.names():
        if image in OWN_ENVIRONMENT:
            continue
        for line in base_images.requirements(image):
            req = Requirement(line)
            name = canonicalize_name(req.name)
            (pinned,) = [s.version for s in req.specifier if s.operator == "=="]
            if name in pins:  # torch: the lock's 2.13.0+cpu is the image's 2.13.0 on a CPU
                assert pins[name].public == Version(pinned).public, (image, line, pins[name])

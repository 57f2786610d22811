"""The Python environment a local replica runs in, from its base image's requirements.

A base image (``base_images/<name>/requirements.txt``) describes the environment a model's
replicas need; the local container manager honours the same file, so "base image" means
one thing for Docker and for local processes. For each model it picks:

* the **current interpreter** (the one deploying), when it can load the model: it meets
  what the framework ``requires`` (e.g. ``numpy<1.24`` and ``mxnet>=1.9,<2`` for MXNet) and
  every ``pkgs_to_install`` entry; or
* an **isolated environment**: a virtualenv built once from exactly those requirements and
  cached under ``$SCHOONER_ENVS`` (default ``~/.cache/schooner/envs``), keyed by their hash.
  MXNet, which needs numpy < 1.24, always ends up here.

``mode="current"`` or ``"isolated"`` forces one or the other. Packages are installed
while the environment is built (from ``build_model``), never when a replica starts.

Schooner itself is not pip-installed into an isolated environment: a ``.pth`` file makes
the very Schooner packages the admin side runs importable there (through a folder of
symbolic links to them), so replicas never run a stale copy of the runtime.
"""

from __future__ import annotations

import fcntl
import hashlib
import importlib
import json
import logging
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path

from packaging.requirements import InvalidRequirement, Requirement
from packaging.version import InvalidVersion, Version

from schooner import base_images
from schooner.runtime.errors import ClipperException

__all__ = ["Environment", "MODES", "envs_root", "resolve", "unmet", "ensure_isolated"]

logger = logging.getLogger(__name__)

MODES = ("auto", "current", "isolated")
_PACKAGES = ("runtime", "frameworks", "frontend", "admin", "base_images")
_COMPLETE = ".schooner-complete"


@dataclass(frozen=True)
class Environment:
    """Where a model's replicas run: ``python`` and the requirements it was chosen for."""

    base_image: str
    python: str
    isolated: bool
    requirements: tuple[str, ...]

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    @classmethod
    def from_json(cls, text: str) -> Environment:
        data = json.loads(text)
        return cls(data["base_image"], data["python"], bool(data["isolated"]),
                   tuple(data["requirements"]))  # fmt: skip


def envs_root() -> Path:
    configured = os.environ.get("SCHOONER_ENVS")
    return Path(configured).expanduser() if configured else Path.home() / ".cache/schooner/envs"


def resolve(
    base_image: str,
    pkgs_to_install: Sequence[str] = (),
    *,
    needs: Sequence[str] = (),
    mode: str = "auto",
) -> Environment:
    """The environment for a model on ``base_image`` that also needs ``pkgs_to_install``;
    ``needs`` is what its framework requires of an interpreter (``Framework.requires``)."""
    if mode not in MODES:
        raise ClipperException(f"environment mode {mode!r}: use one of {', '.join(MODES)}")
    try:
        image_requirements = base_images.requirements(base_image)
    except KeyError as exc:
        raise ClipperException(str(exc.args[0])) from None
    requirements = tuple(dict.fromkeys([*image_requirements, *_clean(pkgs_to_install)]))
    if mode == "current":
        return Environment(base_image, sys.executable, False, requirements)
    if mode == "auto":
        missing = unmet(needs) + unmet(_clean(pkgs_to_install))
        if not missing:
            return Environment(base_image, sys.executable, False, requirements)
        logger.info("this interpreter lacks %s for base image %r: using an isolated environment",
                    ", ".join(missing), base_image)  # fmt: skip
    python = ensure_isolated(base_image, requirements)
    return Environment(base_image, str(python), True, requirements)


def unmet(requirements: Sequence[str], *, same_minor: bool = False) -> list[str]:
    """The requirements this interpreter does not satisfy (``same_minor``: ``==X.Y.Z`` is
    met by any installed X.Y.*). ``"a>=1 | b>=1"`` is met by either alternative."""
    missing = []
    for line in requirements:
        alternatives = [alt.strip() for alt in line.split(" | ")]
        if len(alternatives) > 1:
            if any(not unmet([alt], same_minor=same_minor) for alt in alternatives):
                continue
            missing.append(line)
            continue
        try:
            req = Requirement(line)
        except InvalidRequirement:
            missing.append(line)  # pip will judge it when the environment is built
            continue
        if req.marker is not None and not req.marker.evaluate():
            continue
        try:
            installed = Version(metadata.version(req.name))
        except (metadata.PackageNotFoundError, InvalidVersion):
            missing.append(line)
            continue
        if req.specifier.contains(installed, prereleases=True):
            continue
        pins = [s for s in req.specifier if s.operator == "=="]
        if same_minor and len(pins) == 1 and len(req.specifier) == 1:
            wanted = Version(pins[0].version)
            if (wanted.major, wanted.minor) == (installed.major, installed.minor):
                continue
        missing.append(f"{line} (installed {installed})")
    return missing


def ensure_isolated(base_image: str, requirements: Sequence[str]) -> Path:
    """Build (once) and return the python of the virtualenv for these requirements."""
    key = hashlib.sha256(
        "\n".join([sys.version, *sorted(requirements)]).encode()
    ).hexdigest()[:16]
    root = envs_root()
    path = root / f"{base_image}-{key}"
    python = path / "bin" / "python"
    root.mkdir(parents=True, exist_ok=True)
    with _locked(root / f"{path.name}.lock"):
        if not (path / _COMPLETE).exists():
            _build(path, requirements)
        _link_schooner(path, python)
    return python


@contextmanager
def _locked(lock_path: Path) -> Iterator[None]:
    with open(lock_path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _build(path: Path, requirements: Sequence[str]) -> None:
    logger.warning("building the environment %s (first use only; this takes a while)", path)
    shutil.rmtree(path, ignore_errors=True)
    base_python = getattr(sys, "_base_executable", sys.executable)
    _run([base_python, "-m", "venv", str(path)], path)
    req_file = path / "requirements.txt"
    req_file.write_text("".join(f"{r}\n" for r in requirements))
    _run([str(path / "bin" / "python"), "-m", "pip", "install", "--disable-pip-version-check",
          "--no-input", "-q", "-r", str(req_file)], path)  # fmt: skip
    (path / _COMPLETE).write_text("ok\n")
    logger.warning("environment %s is ready", path)


def _run(argv: list[str], path: Path) -> None:
    result = subprocess.run(argv, capture_output=True, text=True)
    if result.returncode != 0:
        tail = "\n".join((result.stdout + result.stderr).splitlines()[-30:])
        raise ClipperException(
            f"building the environment {path} failed: {' '.join(argv)} exited with "
            f"{result.returncode}:\n{tail}"
        )


def _link_schooner(path: Path, python: Path) -> None:
    """Make this process's Schooner packages importable in the environment."""
    links = path / "schooner-packages" / "schooner"
    links.mkdir(parents=True, exist_ok=True)
    for name in _PACKAGES:
        module = importlib.import_module(f"schooner.{name}")
        target = Path(list(module.__path__)[0]).resolve()
        link = links / name
        if link.is_symlink() and link.resolve() == target:
            continue
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(target, target_is_directory=True)
    site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    (Path(site) / "schooner-packages.pth").write_text(f"{links.parent}\n")


def _clean(packages: Sequence[str]) -> list[str]:
    return [p.strip() for p in packages if p and p.strip()]


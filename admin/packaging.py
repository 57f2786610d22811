"""Packaging: an artifact, its base image and its requirements, and the build contexts made of them.

Every manager starts from the same three facts about a model (``Package``): the artifact
directory, the base image its framework names (``base_images/<name>/``) and the packages it
needs beyond that image. The local manager turns a package into a virtualenv
(``schooner.admin.managers.local.environments``); Docker and Kubernetes turn it into an
image, from the build contexts written here (``model_context``, ``base_context``) and built
by ``schooner.admin.images``.

A build context is a plain folder with a ``Dockerfile``; its content hash
(``context_digest``) names what it builds, so an unchanged model is recognised as built.
"""

from __future__ import annotations

import hashlib
import importlib
import logging
import os
import shutil
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from schooner import base_images
from schooner.frameworks import registry
from schooner.frameworks.artifact import REQUIREMENTS_NAME, read_manifest
from schooner.runtime.errors import ClipperException, SchoonerError

__all__ = [
    "Package",
    "package",
    "record_requirements",
    "read_requirements",
    "model_context",
    "base_context",
    "context_digest",
    "MODEL_DIR",
    "READY_FILE",
]

logger = logging.getLogger(__name__)

# Where a model image holds its artifact, and the file its container writes once it serves
# (what the images' HEALTHCHECK tests); both are the container's defaults or set by the base.
MODEL_DIR = "/model"
READY_FILE = "/tmp/model_is_ready.check"

_PACKAGES = ("runtime", "frameworks", "frontend", "admin", "base_images")


@dataclass(frozen=True)
class Package:
    """A model as every manager packages it.

    ``base_image`` is the name of one of ``base_images/`` (``python``, ``pytorch``, ...);
    ``needs`` what its framework requires of an interpreter (``Framework.requires``);
    ``requirements`` the model's own packages (``requirements.txt`` of the artifact, which
    ``pkgs_to_install`` was merged into), not those of the base image.
    """

    artifact: Path
    base_image: str
    needs: tuple[str, ...]
    requirements: tuple[str, ...]


def package(
    artifact: str | os.PathLike[str], base_image: str = "default", captured: bool = False
) -> Package:
    """The package of ``artifact``: ``base_image="default"`` means the base image of its
    framework; ``schooner/<name>:<tag>`` (or just ``<name>``) names one of ``base_images/``.
    ``captured`` adds the pins the deployer found in what the model imports (the manifest's
    ``captured_requirements``): images install them; the local manager runs replicas in
    the deploying interpreter, which has them, or in an environment of the named packages."""
    path = Path(artifact)
    found: list[str] = []
    try:
        manifest = read_manifest(path)
        framework = registry.resolve(str(manifest["framework"]))
    except SchoonerError as exc:
        logger.warning("%s: using the python base image", exc)
        name, needs = "python", ()
    else:
        name, needs = framework.base_image, framework.requires
        found = [str(r) for r in manifest.get("captured_requirements", [])] if captured else []
    if base_image and base_image != "default":
        name = base_image.rsplit("/", 1)[-1].split(":", 1)[0]
    try:
        base_images.folder(name)
    except KeyError as exc:
        raise ClipperException(str(exc.args[0])) from None
    requirements = read_requirements(path / REQUIREMENTS_NAME)
    return Package(path, name, tuple(needs), tuple(dict.fromkeys([*requirements, *found])))


def read_requirements(path: Path) -> list[str]:
    if not path.is_file():
        return []
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


def record_requirements(path: Path, packages: Iterable[str]) -> None:
    """Append ``packages`` that ``path`` (a requirements file) does not list yet."""
    lines = read_requirements(path)
    lines += [p.strip() for p in packages if p.strip() and p.strip() not in lines]
    path.write_text("".join(f"{line}\n" for line in lines))


# ---------------------------------------------------------------------- build contexts


def model_context(pkg: Package, base_ref: str, destination: Path) -> Path:
    """Write the build context of a model image FROM ``base_ref`` into ``destination``:
    the artifact at ``/model``, its requirements installed at build time."""
    destination.mkdir(parents=True, exist_ok=True)
    shutil.copytree(pkg.artifact, destination / "model", dirs_exist_ok=True)
    lines = [
        f"FROM {base_ref}",
        f"LABEL ai.schooner.base-image={pkg.base_image}",
    ]
    if pkg.requirements:
        (destination / "model-requirements.txt").write_text(
            "".join(f"{r}\n" for r in pkg.requirements)
        )
        lines += [
            "USER root",
            "COPY model-requirements.txt /opt/schooner/model-requirements.txt",
            "RUN python3 -m pip install --no-input -r /opt/schooner/model-requirements.txt",
            "USER 10001",
        ]
    lines.append(f"COPY model {MODEL_DIR}")
    (destination / "Dockerfile").write_text("\n".join(lines) + "\n")
    return destination


def base_context(name: str, destination: Path, wheels: Sequence[Path] = ()) -> Path:
    """Write the build context of base image ``name`` into ``destination``: its Dockerfile
    and requirements, this installation's Schooner packages (their sources, Python and C;
    nothing built on this host: the image compiles the C extensions itself), and ``wheels``
    for pip to prefer over the index (a local CPU build of torch, for example)."""
    try:
        source = base_images.folder(name)
    except KeyError as exc:
        raise ClipperException(str(exc.args[0])) from None
    images = destination / "base_images"
    (images / name).mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source / "Dockerfile", destination / "Dockerfile")
    shutil.copyfile(source / "requirements.txt", images / name / "requirements.txt")
    shutil.copyfile(source.parent / "runtime.txt", images / "runtime.txt")
    found = destination / "wheels"
    found.mkdir(exist_ok=True)
    for wheel in wheels:
        shutil.copyfile(wheel, found / Path(wheel).name)
    for package_name in _PACKAGES:
        module = importlib.import_module(f"schooner.{package_name}")
        shutil.copytree(
            Path(list(module.__path__)[0]), destination / "schooner" / package_name,
            ignore=_not_source, dirs_exist_ok=True,
        )
    return destination


def _not_source(directory: str, names: list[str]) -> list[str]:
    keep = (".py", ".typed", ".txt", ".sh", "Dockerfile", ".c")
    return [
        n for n in names
        if n == "__pycache__" or (
            not os.path.isdir(os.path.join(directory, n)) and not n.endswith(keep)
        )
    ]


def context_digest(context: Path, *extra: str) -> str:
    """A hash of every file in ``context`` (paths and bytes) and of ``extra`` strings."""
    digest = hashlib.sha256()
    for value in extra:
        digest.update(value.encode() + b"\0")
    for path in sorted(p for p in context.rglob("*") if p.is_file()):
        digest.update(os.fsencode(path.relative_to(context)) + b"\0")
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()

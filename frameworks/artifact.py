"""The artifact directory: what a deployer writes and a container loads.

Layout (every framework)::

    <artifact>/
        schooner.json       the manifest: framework, versions it was made with, when
        requirements.txt    packages the model needs (installed when the image or
                            environment is built, never when a container starts)
        ...                 the framework's own files (see that framework's module)

Each framework module owns the names of its own files, in the same module that both
saves and loads them, so the admin side and the container cannot drift.
"""

from __future__ import annotations

import json
import platform
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from schooner.runtime.errors import ArtifactError, IncompatibleArtifact

__all__ = [
    "MANIFEST_NAME",
    "REQUIREMENTS_NAME",
    "FORMAT_VERSION",
    "Artifact",
    "schooner_version",
    "package_version",
    "write_artifact",
    "read_manifest",
    "open_artifact",
    "check_python",
]

MANIFEST_NAME = "schooner.json"
REQUIREMENTS_NAME = "requirements.txt"
FORMAT_VERSION = 1


def package_version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def schooner_version() -> str:
    return package_version("schooner") or "unknown"


@dataclass(frozen=True)
class Artifact:
    """An artifact directory whose manifest has been read and checked."""

    path: Path
    manifest: Mapping[str, Any] = field(repr=False)
    #: what this opening of the artifact tracks the classes it unpickles under: the pickles
    #: of one load share classes, and share none with the loading process or another load
    load_id: str = field(default_factory=lambda: uuid.uuid4().hex, repr=False, compare=False)

    @property
    def framework(self) -> str:
        return str(self.manifest["framework"])

    def file(self, name: str) -> Path:
        """A file the framework saved; ArtifactError if it is missing."""
        target = self.path / name
        if not target.exists():
            raise ArtifactError(f"artifact {self.path} is incomplete: {name} is missing")
        return target


def write_artifact(
    directory: str | Path,
    framework: str,
    *,
    versions: Mapping[str, str | None] | None = None,
    pkgs_to_install: Sequence[str] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Write the manifest and requirements into ``directory`` (created if needed).

    Called by a framework's ``save`` after it wrote its own files. ``versions`` records the
    framework libraries the artifact was made with (e.g. ``{"cloudpickle": "3.1.2"}``).
    """
    path = Path(directory).resolve()
    path.mkdir(parents=True, exist_ok=True)
    manifest = {
        "format": FORMAT_VERSION,
        "framework": framework,
        "schooner_version": schooner_version(),
        "python": platform.python_version(),
        "versions": dict(versions or {}),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        **dict(extra or {}),
    }
    (path / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    reqs = [p.strip() for p in (pkgs_to_install or ()) if p and p.strip()]
    (path / REQUIREMENTS_NAME).write_text("".join(f"{p}\n" for p in reqs))
    return path


def read_manifest(directory: str | Path) -> dict[str, Any]:
    """The manifest of an artifact directory; ArtifactError if absent or unreadable."""
    path = Path(directory)
    if not path.is_dir():
        raise ArtifactError(f"artifact directory {path} does not exist")
    manifest_path = path / MANIFEST_NAME
    try:
        manifest = json.loads(manifest_path.read_text())
    except FileNotFoundError:
        raise ArtifactError(
            f"{path} is not a Schooner artifact: {MANIFEST_NAME} is missing"
        ) from None
    except (OSError, ValueError) as exc:
        raise ArtifactError(f"cannot read {manifest_path}: {exc}") from exc
    if not isinstance(manifest, dict) or "framework" not in manifest:
        raise ArtifactError(f"{manifest_path} does not name a framework")
    fmt = manifest.get("format")
    if fmt != FORMAT_VERSION:
        raise IncompatibleArtifact(
            f"{path} has artifact format {fmt}; this Schooner "
            f"({schooner_version()}) reads format {FORMAT_VERSION}"
        )
    return manifest


def open_artifact(directory: str | Path) -> Artifact:
    return Artifact(Path(directory).resolve(), read_manifest(directory))


def check_python(artifact: Artifact, *, same_minor: bool = True) -> None:
    """Artifacts holding pickled code need the Python (major, minor) they were made with."""
    made = str(artifact.manifest.get("python", ""))
    here = platform.python_version()
    if same_minor and made.split(".")[:2] != here.split(".")[:2]:
        raise IncompatibleArtifact(
            f"{artifact.path} was made with Python {made}; this container runs Python {here}. "
            "Pickled code only loads on the same Python minor version: redeploy from "
            f"Python {'.'.join(here.split('.')[:2])} or run a base image with Python {made}."
        )

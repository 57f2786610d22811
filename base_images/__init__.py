"""Base images: one folder per framework, each a ``Dockerfile`` and its ``requirements.txt``;
``frontend/`` is the image of the query frontend (``FRONTEND``), ``debian/`` the script that
builds the Python base locally. ``schooner.admin.packaging`` writes their build contexts.

The same requirements define the Python environment that the local container manager
runs a replica with when the current interpreter cannot (``schooner.admin.managers.local.environments``),
so "base image" means one thing everywhere. ``runtime.txt`` holds what the container
runtime itself needs; each image's requirements include it with ``-r ../runtime.txt``.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

__all__ = ["names", "model_images", "folder", "requirements", "dockerfile", "FRONTEND"]

FRONTEND = "frontend"


def _root() -> Path:
    return Path(str(resources.files(__name__)))


def names() -> list[str]:
    """Every base image defined here (folders holding a Dockerfile)."""
    return sorted(p.name for p in _root().iterdir() if (p / "Dockerfile").is_file())


def model_images() -> list[str]:
    """The base images of model containers (every image but the frontend's)."""
    return [name for name in names() if name != FRONTEND]


def folder(name: str) -> Path:
    path = _root() / name
    if not (path / "Dockerfile").is_file():
        raise KeyError(f"no base image {name!r}; defined: {', '.join(names())}")
    return path


def dockerfile(name: str) -> Path:
    return folder(name) / "Dockerfile"


def requirements(name: str) -> list[str]:
    """The requirement lines of base image ``name``, ``-r`` includes expanded, in order."""
    return _read(folder(name) / "requirements.txt", set())


def _read(path: Path, seen: set[Path]) -> list[str]:
    path = path.resolve()
    if path in seen:
        return []
    seen.add(path)
    lines: list[str] = []
    for raw in path.read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        if line.startswith(("-r ", "--requirement ")):
            lines.extend(_read(path.parent / line.split(None, 1)[1], seen))
        else:
            lines.append(line)
    return lines

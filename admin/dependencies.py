"""The packages a model's function needs, found from what it imports, pinned to what is installed.

Clipper promised to detect a closure's packages ("best effort, Anaconda only") and later
removed it. Here: the modules a function refers to (its globals, the objects its closure
cells hold, and the same for the functions and local modules it reaches) are mapped to the
installed distributions that provide them (``importlib.metadata.packages_distributions``)
and pinned at their installed versions. The standard library, Schooner and the packages
the base image already has are left out; the user's ``pkgs_to_install`` win over a pin of
the same distribution. The deployers record ``captured`` in the artifact's manifest
(``captured_requirements``) and say what will be installed; image builds install them
(``schooner.admin.packaging.package``), never a starting container.
"""

from __future__ import annotations

import sys
import types
from collections.abc import Iterable, Sequence
from importlib import metadata
from typing import Any

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name

from schooner import base_images

__all__ = ["imported_modules", "distributions", "captured", "CAPTURED_KEY"]

CAPTURED_KEY = "captured_requirements"  # in the artifact manifest

_MAX_OBJECTS = 10_000  # a bound on the walk, whatever the function refers to
_LEFT_OUT = {"schooner", "__main__", "builtins"}


def imported_modules(*roots: Any, by_value: Iterable[str] = ()) -> set[str]:
    """Top-level names of the modules that ``roots`` (functions, objects) refer to.

    ``by_value`` names the user's modules pickled with the function (the manifest's
    ``captured_modules``): a class of theirs, or one of them referred to as a module, is
    pickled whole, so what it refers to is walked too. Any other module is imported by
    name in the container, so only its own distribution is needed.
    """
    walk = set(by_value)
    found: set[str] = set()
    seen: set[int] = set()
    todo: list[Any] = list(roots)
    while todo and len(seen) < _MAX_OBJECTS:
        obj = todo.pop()
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        if isinstance(obj, types.ModuleType):
            top = obj.__name__.split(".", 1)[0]
            found.add(top)
            if obj.__name__ in walk:
                todo.extend(vars(obj).values())
            continue
        try:
            todo.extend(_references(obj, found, walk))
        except Exception:  # noqa: BLE001 - an object we cannot look into refers to nothing
            continue
    return found - _LEFT_OUT


def _references(obj: Any, found: set[str], walk: set[str]) -> list[Any]:
    """What ``obj`` refers to that may import more; adds its own module to ``found``."""
    todo: list[Any] = []
    module = getattr(obj, "__module__", None)
    if isinstance(module, str):
        found.add(module.split(".", 1)[0])
        if isinstance(obj, type) and module in walk:  # a class pickled by value
            todo.extend(vars(obj).values())
    if isinstance(obj, types.FunctionType):
        todo.extend(_referenced_globals(obj))
        todo.extend(cell.cell_contents for cell in obj.__closure__ or () if _filled(cell))
        todo.extend(obj.__defaults__ or ())
    elif isinstance(obj, types.MethodType):
        todo.append(obj.__func__)
    elif isinstance(obj, (list, tuple, set, frozenset)):
        todo.extend(obj)
    elif isinstance(obj, dict):
        todo.extend(obj.values())
    elif not isinstance(obj, type) and hasattr(obj, "__dict__"):
        todo.append(type(obj))
    return todo


def _filled(cell: types.CellType) -> bool:
    try:
        cell.cell_contents  # noqa: B018
    except ValueError:
        return False
    return True


def _referenced_globals(func: types.FunctionType) -> list[Any]:
    names: set[str] = set()
    codes = [func.__code__]
    while codes:
        code = codes.pop()
        names.update(code.co_names)
        codes.extend(c for c in code.co_consts if isinstance(c, types.CodeType))
    return [func.__globals__[n] for n in names if n in func.__globals__]


def distributions(modules: Iterable[str]) -> dict[str, str]:
    """``{distribution: installed version}`` of the distributions providing ``modules``
    (standard library and modules no distribution provides are left out)."""
    providers = metadata.packages_distributions()
    found: dict[str, str] = {}
    for module in sorted(modules):
        if module in sys.stdlib_module_names:
            continue
        for dist in providers.get(module, []):
            try:
                found[dist] = metadata.version(dist)
            except metadata.PackageNotFoundError:
                continue
    return found


def captured(
    roots: Sequence[Any],
    pkgs_to_install: Sequence[str] | None,
    base_image: str,
    by_value: Iterable[str] = (),
) -> list[str]:
    """Pins of the distributions ``roots`` (and the ``by_value`` modules) import that
    neither ``base_image`` (a name in ``base_images/``) nor ``pkgs_to_install`` (which
    win) provide."""
    named = {_name(p) for p in pkgs_to_install or () if p and p.strip()}
    try:
        provided = {_name(line) for line in base_images.requirements(base_image)}
    except KeyError:
        provided = set()
    provided.add("schooner")
    return [
        f"{dist}=={version}"
        for dist, version in distributions(imported_modules(*roots, by_value=by_value)).items()
        if canonicalize_name(dist) not in named | provided
    ]


def _name(line: str) -> str:
    try:
        return canonicalize_name(Requirement(line.split(" | ")[0]).name)
    except InvalidRequirement:
        return canonicalize_name(line.split("=")[0].split("<")[0].split(">")[0].strip())

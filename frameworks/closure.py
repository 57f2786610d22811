"""Python closures, serialized with cloudpickle.

Artifact files (besides the manifest and requirements, see :mod:`.artifact`)::

    func.pkl    the cloudpickled function

Modules the function uses that are *local* — the user's own files, not installed packages
and not the standard library — are pickled by value with it (cloudpickle's
``register_pickle_by_value``), so the container needs only the installed packages named
in ``pkgs_to_install``. Pickled code runs only on the Python minor version it was made
with; the manifest records it and the container refuses a mismatch with a clear message.

**Loading never touches the loading process's own classes.** cloudpickle tracks every class
it pickles by value under an id and, when a pickle holding that id is loaded in the same
process, hands back the *live* class and overwrites its methods with the unpickled copies.
In a notebook that deploys a model and then loads the artifact (or a process that loads two
artifacts pickled from the same session), that silently rebinds the user's class to copies
whose code no longer points at its source file (cloudpickle 3.1.3 marks it
``<dynamic-code>``; ``torch.jit.script`` and ``inspect.getsource`` then fail) and whose
globals are a snapshot. :class:`ArtifactUnpickler` therefore tracks the classes it rebuilds
under ids of its own load: the pickles of one artifact load (``func.pkl``, PyTorch's
``model.pkl``) share their classes with each other and with nothing else.
"""

from __future__ import annotations

import importlib.metadata
import inspect
import io
import pickle
import sys
import sysconfig
import types
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from schooner.frameworks.artifact import Artifact, check_python, package_version, write_artifact
from schooner.frameworks.base import Batch, Framework
from schooner.runtime.errors import ArtifactError, IncompatibleArtifact

__all__ = [
    "FUNC_FILE",
    "save",
    "dump_func",
    "load_func",
    "ArtifactUnpickler",
    "ClosureFramework",
    "local_modules",
]

FUNC_FILE = "func.pkl"
NAME = "closure"


def save(
    func: Callable[[Batch], Sequence[str]],
    directory: str | Path,
    *,
    pkgs_to_install: Sequence[str] | None = None,
) -> Path:
    """Write ``func`` as an artifact directory and return its path."""
    path = Path(directory).resolve()
    captured = dump_func(func, path)
    return write_artifact(
        path,
        NAME,
        versions={"cloudpickle": package_version("cloudpickle")},
        pkgs_to_install=pkgs_to_install,
        extra={"captured_modules": captured},
    )


def dump_func(func: Callable[..., Any], directory: str | Path) -> list[str]:
    """Write ``func`` to ``<directory>/func.pkl``, its local modules pickled by value.

    Every framework that wraps a user function stores it this way (and records
    ``versions["cloudpickle"]`` in its manifest). Returns the captured module names, for
    the manifest's ``captured_modules``.
    """
    import cloudpickle

    if not callable(func):
        raise TypeError(f"func must be callable, got {type(func).__name__}")
    path = Path(directory)
    path.mkdir(parents=True, exist_ok=True)
    captured = local_modules(func)
    for module in captured:
        cloudpickle.register_pickle_by_value(module)
    try:
        data = cloudpickle.dumps(func)
    finally:
        for module in captured:
            cloudpickle.unregister_pickle_by_value(module)
    (path / FUNC_FILE).write_bytes(data)
    return sorted(m.__name__ for m in captured)


def load_func(artifact: Artifact) -> Callable[..., Any]:
    """The function :func:`dump_func` wrote, after checking that this Python and cloudpickle
    can load it; IncompatibleArtifact (naming both sides' versions) when they cannot."""
    import cloudpickle

    check_python(artifact)
    made = str(artifact.manifest.get("versions", {}).get("cloudpickle") or "")
    here = cloudpickle.__version__
    if made and _major(made) > _major(here):
        raise IncompatibleArtifact(
            f"{artifact.path} was pickled with cloudpickle {made}; this container has "
            f"{here}. Install cloudpickle>={_major(made)} in the container's environment."
        )
    data = artifact.file(FUNC_FILE).read_bytes()
    try:
        func = ArtifactUnpickler(io.BytesIO(data), artifact.load_id).load()
    except Exception as exc:  # unpickling is the boundary where foreign errors convert
        raise IncompatibleArtifact(
            f"cannot unpickle {artifact.path / FUNC_FILE} ({type(exc).__name__}: {exc}); "
            f"it was made with Python {artifact.manifest.get('python')}, cloudpickle "
            f"{made or '?'}, Schooner {artifact.manifest.get('schooner_version')}; this "
            f"container runs Python {'.'.join(map(str, sys.version_info[:3]))}, cloudpickle "
            f"{here}. A missing module usually means a package absent from pkgs_to_install."
        ) from exc
    if not callable(func):
        raise ArtifactError(f"{artifact.path / FUNC_FILE} does not hold a callable")
    return func  # type: ignore[no-any-return]


# cloudpickle's reconstructors that look a class up by its tracker id (and then overwrite
# the class they found): (module, name) as they appear in a pickle.
_TRACKING_RECONSTRUCTORS = frozenset(
    ("cloudpickle.cloudpickle", name)
    for name in ("_make_skeleton_class", "_make_skeleton_enum", "_make_typevar")
)


class ArtifactUnpickler(pickle.Unpickler):
    """Unpickles a cloudpickle written by a deployer, tracking the classes it rebuilds
    under ``namespace`` (see the module docstring), never under the ids of live classes.

    Pickles that share a namespace share their by-value classes, as one process would.
    """

    def __init__(self, file: io.BytesIO, namespace: str) -> None:
        super().__init__(file)
        self.namespace = namespace

    def find_class(self, module: str, name: str) -> Any:
        found = super().find_class(module, name)
        if (module, name) not in _TRACKING_RECONSTRUCTORS:
            return found
        signature = inspect.signature(found)
        if "class_tracker_id" not in signature.parameters:  # a cloudpickle that tracks differently
            return found
        namespace = self.namespace

        def reconstruct(*args: Any, **kwargs: Any) -> Any:
            bound = signature.bind(*args, **kwargs)
            tracker_id = bound.arguments.get("class_tracker_id")
            if tracker_id is not None:
                bound.arguments["class_tracker_id"] = f"schooner:{namespace}:{tracker_id}"
            return found(*bound.args, **bound.kwargs)

        return reconstruct


class ClosureFramework(Framework):
    name = NAME

    def load(self) -> None:
        self.func = load_func(self.artifact)

    def predict(self, batch: Batch) -> Sequence[str]:
        return self.func(batch)  # type: ignore[no-any-return]


def _major(version: str) -> int:
    head = version.split(".", 1)[0]
    return int(head) if head.isdigit() else 0


# --------------------------------------------------------------------------- local modules


def _installed_top_levels() -> set[str]:
    return set(importlib.metadata.packages_distributions())


def _system_dirs() -> tuple[str, ...]:
    paths = sysconfig.get_paths()
    dirs = {paths[k] for k in ("stdlib", "platstdlib", "purelib", "platlib") if k in paths}
    return tuple(str(Path(d).resolve()) for d in dirs)


def _is_local(module: types.ModuleType, installed: set[str], system: tuple[str, ...]) -> bool:
    name = module.__name__
    top = name.partition(".")[0]
    if name == "__main__" or top in installed or top in sys.builtin_module_names:
        return False
    file = getattr(module, "__file__", None)
    if not file:
        return False
    resolved = str(Path(file).resolve())
    return not resolved.startswith(system)


def _referenced(obj: Any) -> Iterator[Any]:
    """Objects a function (or class, or module) refers to by name."""
    if isinstance(obj, types.ModuleType):
        yield from vars(obj).values()
        return
    if isinstance(obj, type):
        for value in vars(obj).values():
            yield from _referenced(value) if callable(value) else ()
        return
    func = getattr(obj, "__func__", obj)
    code = getattr(func, "__code__", None)
    if code is None:
        return
    globals_ = getattr(func, "__globals__", {})
    stack = [code]
    while stack:
        co = stack.pop()
        for name in co.co_names:
            if name in globals_:
                yield globals_[name]
        stack.extend(c for c in co.co_consts if isinstance(c, types.CodeType))
    for cell in getattr(func, "__closure__", None) or ():
        try:
            yield cell.cell_contents
        except ValueError:  # an empty cell
            continue
    yield from getattr(func, "__defaults__", None) or ()


def local_modules(func: Callable[..., Any]) -> list[types.ModuleType]:
    """The user's own modules that ``func`` reaches, directly or through other local code,
    reduced to their top-level packages (pickling a package by value covers its submodules).

    Only the function itself, code from ``__main__`` and local code are walked, so installed
    libraries are never traversed.
    """
    installed, system = _installed_top_levels(), _system_dirs()
    found: dict[str, types.ModuleType] = {}
    seen: set[int] = set()
    stack: list[Any] = [func]
    while stack:
        obj = stack.pop()
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        if isinstance(obj, types.ModuleType):
            module: types.ModuleType | None = obj
        else:
            module = sys.modules.get(getattr(obj, "__module__", None) or "")
        local = module is not None and _is_local(module, installed, system)
        if local:
            assert module is not None
            top = module.__name__.partition(".")[0]
            found.setdefault(top, sys.modules.get(top, module))
        walk = obj is func or local or (module is not None and module.__name__ == "__main__")
        if walk and (callable(obj) or isinstance(obj, types.ModuleType)):
            stack.extend(_referenced(obj))
    return list(found.values())

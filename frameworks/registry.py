"""Which frameworks exist, by name.

Built-ins are an explicit table of import strings, so listing them imports nothing heavy.
Third parties add theirs through the ``schooner.frameworks`` entry-point group::

    [options.entry_points]
    schooner.frameworks =
        myframework = mypkg.serving:MyFramework
"""

from __future__ import annotations

import importlib
from importlib import metadata

from schooner.frameworks.base import Framework
from schooner.runtime.errors import FrameworkError

__all__ = ["BUILTIN", "ENTRY_POINT_GROUP", "available", "resolve"]

ENTRY_POINT_GROUP = "schooner.frameworks"

BUILTIN: dict[str, str] = {
    "closure": "schooner.frameworks.closure:ClosureFramework",
    "pytorch": "schooner.frameworks.pytorch:PyTorchFramework",
    "onnx": "schooner.frameworks.onnx:OnnxFramework",
    "tensorflow": "schooner.frameworks.tensorflow:TensorFlowFramework",
    "pyspark": "schooner.frameworks.pyspark:PySparkFramework",
    "mxnet": "schooner.frameworks.mxnet:MXNetFramework",
}


def _entry_points() -> dict[str, metadata.EntryPoint]:
    return {ep.name: ep for ep in metadata.entry_points(group=ENTRY_POINT_GROUP)}


def available() -> list[str]:
    """Every framework name that :func:`resolve` accepts (built-ins first)."""
    third = sorted(n for n in _entry_points() if n not in BUILTIN)
    return [*BUILTIN, *third]


def resolve(name: str) -> type[Framework]:
    """The Framework class registered under ``name``. Built-ins win over entry points."""
    target: object
    if name in BUILTIN:
        module_name, _, attr = BUILTIN[name].partition(":")
        try:
            target = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as exc:  # a broken install, converted here
            raise FrameworkError(f"built-in framework {name!r} failed to import: {exc}") from exc
    else:
        ep = _entry_points().get(name)
        if ep is None:
            raise FrameworkError(
                f"unknown framework {name!r}; available: {', '.join(available())}"
            )
        try:
            target = ep.load()
        except Exception as exc:  # a third party's import failure, converted once here
            raise FrameworkError(f"framework {name!r} ({ep.value}) failed to import: {exc}") from exc
    if not (isinstance(target, type) and issubclass(target, Framework)):
        raise FrameworkError(f"framework {name!r} does not name a Framework subclass")
    return target

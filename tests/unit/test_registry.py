import subprocess
import sys
from importlib import metadata

import pytest

from schooner.frameworks import registry
from schooner.frameworks.base import Framework
from schooner.frameworks.closure import ClosureFramework
from schooner.runtime.errors import FrameworkError, MissingExtra


def test_builtins_listed_without_importing_them():
    code = ("import sys; from schooner.frameworks import registry; names = registry.available(); "
            "assert 'closure' in names, names; "
            "assert 'schooner.frameworks.closure' not in sys.modules")  # fmt: skip
    subprocess.run([sys.executable, "-c", code], check=True)


def test_resolve_builtin():
    assert registry.resolve("closure") is ClosureFramework


def test_unknown_framework_names_the_available_ones():
    with pytest.raises(FrameworkError, match="unknown framework 'nope'; available: closure, pytorch"):
        registry.resolve("nope")


class Echo(Framework):
    name = "echo"

    def load(self):
        pass

    def predict(self, batch):
        return [str(x) for x in batch]


class _FakeEntryPoint:
    def __init__(self, name, target=None, error=None):
        self.name, self.value, self._target, self._error = name, f"tests:{name}", target, error

    def load(self):
        if self._error:
            raise self._error
        return self._target


def test_third_party_entry_points(monkeypatch):
    eps = [_FakeEntryPoint("echo", Echo), _FakeEntryPoint("broken", error=ImportError("no lib")),
           _FakeEntryPoint("notaframework", target=dict), _FakeEntryPoint("closure", target=Echo)]  # fmt: skip
    monkeypatch.setattr(metadata, "entry_points", lambda group: eps if group == registry.ENTRY_POINT_GROUP else [])
    assert registry.available() == [*registry.BUILTIN, "broken", "echo", "notaframework"]
    assert registry.resolve("echo") is Echo
    assert registry.resolve("closure") is ClosureFramework  # built-ins win
    with pytest.raises(FrameworkError, match="failed to import: no lib"):
        registry.resolve("broken")
    with pytest.raises(FrameworkError, match="does not name a Framework subclass"):
        registry.resolve("notaframework")


def test_missing_extra_names_the_install_command():
    err = MissingExtra("pytorch", "pytorch", "torch")
    assert "pip install 'schooner[pytorch]'" in str(err)


def test_importing_the_runtime_pulls_no_heavy_framework():
    code = ("import sys, schooner.runtime.container, schooner.runtime.__main__, schooner.frameworks.registry; "
            "heavy = {'torch', 'tensorflow', 'mxnet', 'pyspark', 'onnxruntime'} & set(sys.modules); "
            "assert not heavy, heavy")  # fmt: skip
    subprocess.run([sys.executable, "-c", code], check=True)

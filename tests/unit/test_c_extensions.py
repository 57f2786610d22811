"""The optional C extensions are built where CI runs, and in every base image.

Their own tests (test_fastpath, test_http_scan, test_oip_shortcuts, test_wirefast) skip where
an extension is not built: an install without a C compiler is a supported one. CI's machine
has a compiler (.ci/run installs one), so there a missing extension is a failed build, not a
skip: .ci/run sets SCHOONER_REQUIRE_C_EXTENSIONS=1 and this test fails if either is absent.

The base images compile them in their build stage with base_images/c_extensions.sh, which
takes every C file of the package for one module named after its path; setup.py lists them
by hand. The two must agree, and the script must build modules that import.
"""

from __future__ import annotations

import ast
import configparser
import importlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from schooner import base_images
from schooner.admin import packaging

ROOT = Path(__file__).resolve().parents[2]
REQUIRED = os.environ.get("SCHOONER_REQUIRE_C_EXTENSIONS") == "1"

EXTENSIONS = ["schooner.frontend._fastpath", "schooner.runtime._wirefast"]


@pytest.mark.skipif(not REQUIRED, reason="only where SCHOONER_REQUIRE_C_EXTENSIONS=1 (CI)")
@pytest.mark.parametrize("name", EXTENSIONS)
def test_the_extension_is_built(name: str) -> None:
    try:
        importlib.import_module(name)
    except ImportError as exc:
        pytest.fail(f"{name} is not built ({exc}): its tests were skipped")


def _declared_in_setup_py() -> dict[str, list[str]]:
    """setup.py's ext_modules: module name -> its sources."""
    found = {}
    for node in ast.walk(ast.parse((ROOT / "setup.py").read_text())):
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "Extension":
            sources = next(k.value for k in node.keywords if k.arg == "sources")
            found[ast.literal_eval(node.args[0])] = ast.literal_eval(sources)
    return found


def test_setup_py_builds_every_c_file_of_the_package_as_the_module_its_path_names():
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    package_dir = dict(  # package -> folder, as setup.cfg maps the namespace onto folders
        line.split(" = ") for line in config["options"]["package_dir"].strip().splitlines())
    files = {}
    for package, folder in package_dir.items():
        for path in sorted((ROOT / folder).rglob("*.c")):
            rel = path.relative_to(ROOT / folder).with_suffix("")
            files[".".join([package, *rel.parts])] = [str(path.relative_to(ROOT))]
    assert files == _declared_in_setup_py()
    assert set(files) == set(EXTENSIONS)


@pytest.mark.skipif(shutil.which("cc") is None and not REQUIRED, reason="no C compiler here")
def test_the_base_images_script_compiles_every_extension_in_place(tmp_path):
    context = packaging.base_context("python", tmp_path)
    assert not list(context.rglob("*.so"))  # sources only: nothing built on this host goes in
    script = Path(list(base_images.__path__)[0]) / "c_extensions.sh"
    subprocess.run(["sh", str(script), "build", sys.executable, str(context)], check=True,
                   capture_output=True, timeout=300)  # fmt: skip
    built = sorted(str(p.relative_to(context)) for p in context.rglob("*.so"))
    assert [p.split(".")[0] for p in built] == sorted(
        name.replace(".", "/") for name in EXTENSIONS)
    assert not (context / "build").exists()  # build_ext's folders went to a temporary one
    show = "; ".join(f"import {name}; print({name}.__file__)" for name in EXTENSIONS)
    out = subprocess.run([sys.executable, "-c", show], capture_output=True, text=True,
                         check=True, cwd=context, env={**os.environ, "PYTHONPATH": str(context)})  # fmt: skip
    assert [Path(line).parent.parent.parent for line in out.stdout.split()] == [context] * 2

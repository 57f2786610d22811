#!/bin/sh
# Schooner's optional C extensions (setup.py's ext_modules: frontend/_fastpath.c,
# runtime/_wirefast.c) in a base image, compiled in its build stage exactly as `pip install`
# compiles them on a host (setuptools' build_ext, the interpreter's own flags). The compiler
# and Python's headers stay in the build stage; the image copies only the package with the
# compiled modules beside their sources.
#
#   sh c_extensions.sh install          # as root: a C compiler and Python's headers, if missing
#   sh c_extensions.sh build PYTHON DIR # compile every schooner/**/*.c under DIR, in place
#
# The compile uses the image's venv's setuptools (Python 3.11's venv seeds it).
#
# Each C file of the package is one extension module, named after its path
# (schooner/frontend/_fastpath.c: schooner.frontend._fastpath), as setup.py lists them;
# tests/unit/test_c_extensions.py checks that the two lists agree. A file that does not
# compile fails the build: an image without them would serve the slower Python paths
# without saying so.
set -eu

has_headers() {
  python3 -c 'import os, sys, sysconfig
sys.exit(not os.path.isfile(os.path.join(sysconfig.get_paths()["include"], "Python.h")))'
}

case "${1:-}" in
install)
  packages=""
  command -v cc >/dev/null 2>&1 || packages="gcc libc6-dev"
  has_headers || packages="$packages python3-dev"
  if [ -n "$packages" ]; then
    if ! command -v apt-get >/dev/null 2>&1; then
      echo "c_extensions.sh: the base needs $packages and has no apt-get to install them" >&2
      exit 1
    fi
    apt-get update
    # shellcheck disable=SC2086  # the package names, split on purpose
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $packages
    rm -rf /var/lib/apt/lists/*
  fi
  ;;
build)
  python=$2
  root=$3
  "$python" - "$root" <<'EOF'
import os
import sys
import tempfile
from pathlib import Path

from setuptools import Distribution, Extension
from setuptools.command.build_ext import build_ext

root = Path(sys.argv[1]).resolve()
sources = sorted(root.glob("schooner/**/*.c"))
if not sources:
    sys.exit(f"c_extensions.sh: no C sources under {root}/schooner")
modules = [Extension(".".join(path.relative_to(root).with_suffix("").parts),
                     [str(path.relative_to(root))]) for path in sources]
os.chdir(root)  # build_ext in place writes each module beside its source, from here
with tempfile.TemporaryDirectory() as temp:
    command = build_ext(Distribution({"ext_modules": modules, "script_name": "c_extensions"}))
    command.inplace = True
    command.build_temp = command.build_lib = temp
    command.ensure_finalized()
    command.run()
for module in modules:
    print("built", module.name)
EOF
  ;;
*)
  echo "usage: c_extensions.sh install | build PYTHON DIR" >&2
  exit 2
  ;;
esac

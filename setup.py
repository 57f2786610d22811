"""Metadata lives in setup.cfg; this file declares what the build makes besides copying files.

* ``schooner.frontend._fastpath`` (frontend/_fastpath.c) turns the common request body
  straight into wire bytes. It is optional: without a C compiler the install goes on and
  the frontend uses the same conversion in Python (frontend/inputs.py).
* ``schooner.runtime._wirefast`` (runtime/_wirefast.c) does the container's wire work for
  the common message (cutting ZMTP frames, framing a reply, decoding a prediction request).
  Optional in the same way: without it the container runs the same steps in Python
  (runtime/transport.py, runtime/wire.py).
* ``schooner.frontend.oip_grpc_pb2``: the Open Inference Protocol's gRPC messages, compiled
  from frontend/oip_grpc.proto with grpcio-tools (a build requirement, pyproject.toml).
  Without grpcio-tools the build goes on and the frontend serves no gRPC (it says so, and
  which package to install, when a gRPC port is asked for).
"""

import logging
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
PROTO = ROOT / "frontend" / "oip_grpc.proto"
GENERATED = ROOT / "frontend" / "oip_grpc_pb2.py"


def compile_protos() -> None:
    if GENERATED.exists() and GENERATED.stat().st_mtime >= PROTO.stat().st_mtime:
        return
    try:
        from grpc_tools import protoc
    except ImportError:
        logging.warning("grpcio-tools is not installed: building without the gRPC frontend")
        return
    code = protoc.main(["grpc_tools.protoc", f"-I{PROTO.parent}", f"--python_out={PROTO.parent}",
                        str(PROTO)])  # fmt: skip
    if code != 0:
        raise SystemExit(f"protoc failed on {PROTO} (exit code {code})")


class BuildPy(build_py):
    def run(self) -> None:
        compile_protos()
        super().run()


setup(
    cmdclass={"build_py": BuildPy},
    ext_modules=[
        Extension(
            "schooner.frontend._fastpath",
            sources=["frontend/_fastpath.c"],
            optional=True,
        ),
        Extension(
            "schooner.runtime._wirefast",
            sources=["runtime/_wirefast.c"],
            optional=True,
        ),
    ],
)

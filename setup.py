"""Metadata lives in setup.cfg; this file only declares the optional C fast path.

``schooner.frontend._fastpath`` (frontend/_fastpath.c) turns the common request body
straight into wire bytes. It is optional: without a C compiler the install goes on and
the frontend uses the same conversion in Python (frontend/inputs.py).
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "schooner.frontend._fastpath",
            sources=["frontend/_fastpath.c"],
            optional=True,
        )
    ]
)

"""The optional C extensions are built where CI runs.

Their own tests (test_fastpath, test_http_scan, test_oip_shortcuts, test_wirefast) skip where
an extension is not built: an install without a C compiler is a supported one. CI's machine
has a compiler (.ci/run installs one), so there a missing extension is a failed build, not a
skip: .ci/run sets SCHOONER_REQUIRE_C_EXTENSIONS=1 and this test fails if either is absent.
"""

from __future__ import annotations

import importlib
import os

import pytest

EXTENSIONS = ["schooner.frontend._fastpath", "schooner.runtime._wirefast"]


@pytest.mark.skipif(os.environ.get("SCHOONER_REQUIRE_C_EXTENSIONS") != "1",
                    reason="only where SCHOONER_REQUIRE_C_EXTENSIONS=1 (CI)")  # fmt: skip
@pytest.mark.parametrize("name", EXTENSIONS)
def test_the_extension_is_built(name: str) -> None:
    try:
        importlib.import_module(name)
    except ImportError as exc:
        pytest.fail(f"{name} is not built ({exc}): its tests were skipped")

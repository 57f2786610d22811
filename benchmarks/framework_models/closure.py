"""A closure running a small numpy MLP (32 -> 64 -> 10)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from schooner.frameworks import closure


def make_artifact(directory: Path) -> tuple[Path, str, Callable[[int], np.ndarray]]:
    rng = np.random.default_rng(0)
    w1, w2 = rng.standard_normal((32, 64)), rng.standard_normal((64, 10))

    def mlp(inputs):
        x = np.asarray(inputs, dtype=np.float64)
        scores = np.maximum(x @ w1, 0.0) @ w2
        return [str(int(i)) for i in scores.argmax(axis=1)]

    path = closure.save(mlp, directory)
    return path, "doubles", lambda n: rng.standard_normal((n, 32))

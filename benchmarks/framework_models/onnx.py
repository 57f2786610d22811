"""A small PyTorch MLP (32 -> 64 -> 10) exported to ONNX, served with ONNX Runtime."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from schooner.frameworks import onnx


def make_artifact(directory: Path) -> tuple[Path, str, Callable[[int], np.ndarray]]:
    import torch

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.ReLU(), torch.nn.Linear(64, 10))

    def classify(runner, inputs):
        (scores,) = runner.run(inputs)
        return [str(int(i)) for i in scores.argmax(axis=1)]

    path = onnx.save(classify, model, torch.randn(1, 32), directory)
    rng = np.random.default_rng(0)
    return path, "floats", lambda n: rng.standard_normal((n, 32), dtype=np.float32)

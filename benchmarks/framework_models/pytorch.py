"""A small PyTorch MLP (32 -> 64 -> 10), saved as an eager module, answering the class."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from schooner.frameworks import pytorch


def make_artifact(directory: Path) -> tuple[Path, str, Callable[[int], np.ndarray]]:
    import torch

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.ReLU(), torch.nn.Linear(64, 10))

    def classify(model, inputs):
        return model(inputs).argmax(dim=1)  # float32 rows in, one class index per row out

    path = pytorch.save(classify, model, directory)
    rng = np.random.default_rng(0)
    return path, "floats", lambda n: rng.standard_normal((n, 32), dtype=np.float32)

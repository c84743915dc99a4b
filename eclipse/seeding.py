"""Seeds, generators and the compute device."""
from __future__ import annotations

import os
import random

import numpy as np
import torch


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and torch; return a CPU ``torch.Generator`` seeded the same way."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def make_generator(seed: int) -> torch.Generator:
    """A fresh CPU generator, so a component's randomness does not depend on what ran before it."""
    return torch.Generator().manual_seed(int(seed))


def default_device() -> torch.device:
    """``ECLIPSE_DEVICE`` if set, else CUDA when available, else CPU."""
    name = os.environ.get("ECLIPSE_DEVICE")
    if name:
        return torch.device(name)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")

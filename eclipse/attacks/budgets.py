"""Size of a perturbation: the L-inf, L2 and L0 norms the attack papers budget against."""
from __future__ import annotations

import torch


def perturbation_norms(poisoned: torch.Tensor, clean: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-image norms of ``poisoned - clean`` on the [0, 1] scale.

    Both inputs are uint8 ``(N, 3, 32, 32)`` (or float in [0, 1]). Returns ``linf``, ``l2`` (float, [0,1]
    scale) and ``l0`` (number of pixel *positions* where any channel changed), each of shape ``(N,)``.
    """
    if poisoned.shape != clean.shape:
        raise ValueError(f"shape mismatch: poisoned {tuple(poisoned.shape)} vs clean {tuple(clean.shape)}")
    scale = 255.0 if poisoned.dtype == torch.uint8 else 1.0
    delta = (poisoned.double() - clean.double()) / scale
    flat = delta.flatten(1)
    return {
        "linf": flat.abs().amax(dim=1),
        "l2": flat.norm(dim=1),
        "l0": (delta.abs().amax(dim=1) > 0).flatten(1).sum(dim=1),
    }

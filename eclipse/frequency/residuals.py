"""Residual perturbations: what a poison (or a purification) left on the images, as a float delta."""
from __future__ import annotations

import torch

from eclipse.frequency.inputs import check_pair

__all__ = ["residual"]


def residual(purified_uint8: torch.Tensor, clean_uint8: torch.Tensor) -> torch.Tensor:
    """Residual perturbation after purification: ``purified/255 - clean/255`` (float, [0, 1] scale)."""
    check_pair(purified_uint8, clean_uint8, ("purified_uint8", "clean_uint8"))
    return purified_uint8.float() / 255.0 - clean_uint8.float() / 255.0

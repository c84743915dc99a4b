"""Input checks and conversions shared by the frequency analyses.

Images are ``torch.uint8`` ``(N, 3, H, W)`` (checked by ``eclipse.validation.check_images``); perturbations
``delta`` are float ``(N, C, H, W)`` on the [0, 1] scale (``delta = poisoned / 255 - clean / 255``).
"""
from __future__ import annotations

import torch

from eclipse.validation import check_images

__all__ = ["as_unit", "check_delta", "check_pair"]


def check_delta(delta: torch.Tensor, name: str = "delta") -> torch.Tensor:
    """Check a float perturbation batch ``(N, C, H, W)`` (N >= 1, H, W >= 2); returns it as float32/float64."""
    if not isinstance(delta, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(delta).__name__}")
    if delta.dim() != 4:
        raise ValueError(f"{name} must have shape (N, C, H, W), got {tuple(delta.shape)}")
    if not torch.is_floating_point(delta):
        raise ValueError(f"{name} must be a float tensor on the [0, 1] scale, got dtype {delta.dtype}")
    if delta.shape[0] == 0 or delta.shape[2] < 2 or delta.shape[3] < 2:
        raise ValueError(f"{name} must hold at least one image of at least 2x2 pixels, got {tuple(delta.shape)}")
    return delta.to(torch.float64) if delta.dtype == torch.float64 else delta.float()


def check_pair(a: torch.Tensor, b: torch.Tensor, names: tuple[str, str]) -> None:
    """Check two uint8 image batches of the same shape (``names`` go into the error messages)."""
    check_images(a, name=names[0])
    check_images(b, name=names[1])
    if a.shape != b.shape:
        raise ValueError(f"{names[0]} {tuple(a.shape)} and {names[1]} {tuple(b.shape)} must have the same shape")


def as_unit(images: torch.Tensor) -> torch.Tensor:
    """uint8 images -> float32 on the [0, 1] scale."""
    return check_images(images).float() / 255.0

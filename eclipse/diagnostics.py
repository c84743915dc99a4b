"""Diagnostics of whether a purifier removed a poison's shortcut, without a victim trained on the result.

:func:`label_transition_rate` is DataElixir's signal turned into a number: a model trained on the *poisoned* set
has learned the shortcut, so its predictions on the poisoned images follow the perturbation; after a purifier
that removes the perturbation they change. The rate is the share of images whose predicted class differs before
and after purification (0: the shortcut model sees the same thing; near 1 - its clean accuracy: the shortcut is
gone). Reported beside the test accuracy for every purifier (notebook 08).
"""
from __future__ import annotations

import torch

from .data import ImageSet
from .validation import check_images


@torch.no_grad()
def predictions(model: torch.nn.Module, images_uint8: torch.Tensor, batch_size: int = 1000,
                device: torch.device | str | None = None) -> torch.Tensor:
    """Predicted class of each uint8 (N,3,H,W) image (the victim's input convention: float in [0, 1])."""
    check_images(images_uint8, name="images_uint8", channels=None)
    params = list(model.parameters())
    device = torch.device(device) if device is not None else (params[0].device if params else torch.device("cpu"))
    was_training = model.training
    model.eval()
    out = [model(chunk.to(device).float().div_(255)).argmax(1).cpu() for chunk in images_uint8.split(batch_size)]
    model.train(was_training)
    return torch.cat(out)


def label_transition_rate(model: torch.nn.Module, before: ImageSet | torch.Tensor, after: ImageSet | torch.Tensor,
                          batch_size: int = 1000) -> float:
    """Share of images whose class under ``model`` (trained on the poisoned set) changes from ``before``
    (the poisoned images) to ``after`` (the same images purified, same order)."""
    x0 = before.images if isinstance(before, ImageSet) else before
    x1 = after.images if isinstance(after, ImageSet) else after
    if x0.shape != x1.shape:
        raise ValueError(f"before and after must be the same images in the same order: shapes {tuple(x0.shape)} "
                         f"and {tuple(x1.shape)}")
    return float((predictions(model, x0, batch_size) != predictions(model, x1, batch_size)).float().mean())

"""Training-time defenses as composable batch transforms.

A :class:`Defense` has two optional hooks:

- ``prepare(images_uint8) -> images_uint8``: a deterministic per-image transform applied once to the
  training set (ISS-G grayscale, ISS-J JPEG). Applying it once is identical to re-applying it each
  epoch, because it is deterministic;
- ``on_batch(x, y) -> (x, y)``: a random transform of a float batch in [0, 1] after random crop and
  flip, re-drawn every step (compensation, cutout, mixup, cutmix). ``y`` may become soft targets.

Randomness comes from torch's global generator, which the training loop seeds and checkpoints.
ECLIPSE's corruption compensation is ``compensation`` (module B = ``grayscale``, module C = ``noise``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

BatchFn = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


@dataclass(frozen=True)
class Defense:
    """A named training-time defense: an optional once-per-image and an optional per-batch step."""

    name: str
    prepare: Callable[[torch.Tensor], torch.Tensor] | None = None
    on_batch: BatchFn | None = None
    params: tuple = ()


def random_grayscale(x: torch.Tensor, gray_p: float) -> torch.Tensor:
    """Convert each image independently to 3-channel grayscale with probability ``gray_p``."""
    chosen = torch.rand(x.shape[0]) < gray_p
    if chosen.any():
        x = x.clone()
        x[chosen] = TF.rgb_to_grayscale(x[chosen], num_output_channels=3)
    return x


def gaussian_noise(x: torch.Tensor, sigma: float, requantize: bool = True) -> torch.Tensor:
    """Add N(0, sigma^2), clamp to [0, 1] and (as the official code's ToPILImage round trip does)
    re-quantise to 8 bits by truncation."""
    x = (x + sigma * torch.randn_like(x)).clamp_(0, 1)
    return x.mul(255).floor_().div_(255) if requantize else x


def compensation_batch(gray_p: float, sigma: float) -> BatchFn:
    """ECLIPSE's corruption compensation: random grayscale (``gray_p``), then Gaussian noise ``sigma``."""
    def step(x: torch.Tensor, y: torch.Tensor):
        if gray_p > 0:
            x = random_grayscale(x, gray_p)
        if sigma > 0:
            x = gaussian_noise(x, sigma)
        return x, y
    return step


def cutout_batch(size: int = 16) -> BatchFn:
    """Cutout (DeVries & Taylor): zero one ``size`` x ``size`` square per image, centre uniform, clipped
    at the border. torchvision's RandomErasing draws one box per call (and a random aspect ratio), so the
    per-image boxes are drawn here as one vectorised mask."""
    def step(x: torch.Tensor, y: torch.Tensor):
        n, _, h, w = x.shape
        cy = torch.randint(0, h, (n, 1, 1))
        cx = torch.randint(0, w, (n, 1, 1))
        rows = torch.arange(h).view(1, h, 1)
        cols = torch.arange(w).view(1, 1, w)
        # the box spans [c - size/2, c + size/2): rows c-8 .. c+7 for size 16
        inside = (rows >= cy - size // 2) & (rows < cy + size - size // 2) & (cols >= cx - size // 2) & (
            cols < cx + size - size // 2)
        return x.masked_fill(inside.unsqueeze(1), 0.0), y
    return step


def _label_mixing(kind: str, alpha: float, num_classes: int) -> BatchFn:
    mixer = (v2.MixUp if kind == "mixup" else v2.CutMix)(alpha=alpha, num_classes=num_classes)

    def step(x: torch.Tensor, y: torch.Tensor):
        return mixer(x, y)
    return step


def _jpeg(quality: int) -> Callable[[torch.Tensor], torch.Tensor]:
    def prepare(images: torch.Tensor) -> torch.Tensor:
        return torch.cat([TF.jpeg(chunk, quality) for chunk in images.split(1024)])
    return prepare


def _grayscale_all(images: torch.Tensor) -> torch.Tensor:
    return TF.rgb_to_grayscale(images, num_output_channels=3)


DEFENSE_NAMES = ("none", "compensation", "grayscale", "noise", "iss-g", "iss-j", "cutout", "mixup", "cutmix")


def make_defense(name: str, *, gray_p: float = 0.4, sigma: float = 0.05, jpeg_quality: int = 10,
                 cutout_size: int = 16, mix_alpha: float = 1.0, num_classes: int = 10) -> Defense:
    """A defense by name: ``none``, ``compensation`` (B+C), ``grayscale`` (B), ``noise`` (C), ``iss-g``,
    ``iss-j``, ``cutout``, ``mixup``, ``cutmix``."""
    if name == "none":
        return Defense("none")
    if name == "compensation":
        return Defense(name, on_batch=compensation_batch(gray_p, sigma), params=(("gray_p", gray_p), ("sigma", sigma)))
    if name == "grayscale":
        return Defense(name, on_batch=compensation_batch(gray_p, 0.0), params=(("gray_p", gray_p),))
    if name == "noise":
        return Defense(name, on_batch=compensation_batch(0.0, sigma), params=(("sigma", sigma),))
    if name == "iss-g":
        return Defense(name, prepare=_grayscale_all)
    if name == "iss-j":
        return Defense(name, prepare=_jpeg(jpeg_quality), params=(("quality", jpeg_quality),))
    if name == "cutout":
        return Defense(name, on_batch=cutout_batch(cutout_size), params=(("size", cutout_size),))
    if name in ("mixup", "cutmix"):
        return Defense(name, on_batch=_label_mixing(name, mix_alpha, num_classes), params=(("alpha", mix_alpha),))
    raise ValueError(f"unknown defense {name!r}; choose from {', '.join(DEFENSE_NAMES)}")

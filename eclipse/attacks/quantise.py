"""8-bit quantisation of a float perturbation that keeps the quantised poison inside its budget.

A perturbation is computed on the [0, 1] scale, added to ``x / 255``, clipped to [0, 1] and rounded to 8 bits;
the rounding is then corrected so that the *quantised* perturbation stays inside the attack's L-inf ball
(``quantise_linf``) or L2 ball (``quantise_l2``). ``chunks`` bounds how many images are processed at once.
"""
from __future__ import annotations

import math
from typing import Iterator

import torch

CHUNK = 8192  # images processed at once (bounds memory at roughly 0.5 GB for 32x32 images)


def chunks(n: int, size: int = CHUNK) -> Iterator[slice]:
    """Consecutive slices of at most ``size`` covering ``range(n)``."""
    for start in range(0, n, size):
        yield slice(start, min(start + size, n))


def quantise_linf(clean: torch.Tensor, delta: torch.Tensor, epsilon: float) -> torch.Tensor:
    """``round(clip(clean/255 + delta) * 255)`` with every pixel kept within ``epsilon`` of ``clean``.

    ``delta`` is float on the [0, 1] scale with ``|delta| <= epsilon``. Rounding to the nearest level can only
    leave the ball when ``epsilon * 255`` is not an integer; the result is then pulled back to the largest
    representable step ``floor(epsilon * 255)``.
    """
    base = clean.float()
    poisoned = (base + delta * 255.0).clamp_(0.0, 255.0).round_()
    max_step = math.floor(epsilon * 255.0 + 1e-6)
    poisoned = torch.minimum(torch.maximum(poisoned, base - max_step), base + max_step)
    return poisoned.to(torch.uint8)


def quantise_l2(clean: torch.Tensor, delta: torch.Tensor, radius: float) -> torch.Tensor:
    """8-bit poison from ``clean`` (uint8) and ``delta`` (float, [0, 1] scale, per-image L2 <= ``radius``).

    Rounding to the nearest level adds about ``sqrt(D / 12) / 255`` in quadrature to an image's L2 norm, so for
    images that end up over ``radius`` the coordinates that rounding pushed furthest away from the clean pixel
    are moved one level back, most-overshooting first, just until the image is inside the ball (vectorised with
    a sort and a cumulative sum). The quantised perturbation therefore never exceeds ``radius`` and stays within
    a rounding step of it.
    """
    base = clean.float()
    target = radius * 255.0 * (1.0 - 1e-6)
    step = delta * 255.0
    step_norm = step.flatten(1).norm(dim=1)
    too_long = step_norm > target
    if too_long.any():
        step = step.clone()
        step[too_long] *= (target / step_norm[too_long]).view(-1, 1, 1, 1)
    poisoned = (base + step).clamp_(0.0, 255.0).round_()
    achieved_sq = (poisoned - base).flatten(1).pow(2).sum(dim=1)
    over = torch.nonzero(achieved_sq > target**2).squeeze(1)
    if over.numel() == 0:
        return poisoned.to(torch.uint8)
    diff = (poisoned[over] - base[over]).flatten(1)
    overshoot = diff.abs() - step[over].flatten(1).abs()  # > 0 where rounding moved away from the clean pixel
    order = overshoot.argsort(dim=1, descending=True)
    movable = overshoot.gather(1, order) > 0
    gain = (2.0 * diff.abs().gather(1, order) - 1.0) * movable  # squared-norm saved by one level back
    needed = achieved_sq[over] - target**2
    enough = gain.cumsum(dim=1) >= needed.unsqueeze(1)
    count = torch.where(enough.any(dim=1), enough.float().argmax(dim=1) + 1, torch.full_like(needed, -1).long())
    take_sorted = torch.arange(diff.shape[1]).unsqueeze(0) < count.unsqueeze(1)
    take = torch.zeros_like(take_sorted).scatter_(1, order, take_sorted)
    diff -= diff.sign() * take
    fallback = count < 0  # cannot happen in practice: round toward the clean pixel (only shrinks coordinates)
    if fallback.any():
        rows = over[fallback]
        diff[fallback] = ((base[rows] + step[rows]).clamp(0.0, 255.0) - base[rows]).trunc().flatten(1)
    poisoned[over] = base[over] + diff.view(-1, *base.shape[1:])
    return poisoned.to(torch.uint8)


def scale_to_l2(noise: torch.Tensor, radius: float) -> torch.Tensor:
    """``noise`` with every image (first dimension) rescaled to L2 norm ``radius``."""
    norms = noise.flatten(1).norm(dim=1).view(-1, *([1] * (noise.dim() - 1)))
    return noise * (radius / norms)

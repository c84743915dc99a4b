"""Per-image choice among purification candidates, DataElixir's rule (AAAI 2024, its ``utils/purify_utils.py``
as described in ``shared/docs/seed-systems-and-model-based-poisons.md`` §2; not its code).

Each candidate ``c`` of an image ``x`` gets the distance ``d = 0.5 (1 - SSIM') + 0.5 (1 - cos')``: ``SSIM'`` the
structural similarity of ``c`` and ``x`` with a 3 x 3 window, ``cos'`` the cosine of their features under a
classifier, both mapped from [-1, 1] to [0, 1]. The candidates are sorted by ``d`` and the one at index
``floor(quantile * K)`` (DataElixir: 0.8) is kept, a deliberately far one. Two departures, both for availability
poisons: the features come from a classifier trained on the *sparse clean set*, not on the poisoned set (a model
trained on an unlearnable set is a shortcut model, its features a poor basis); without a feature map the
distance is the SSIM term alone.

SSIM is written here (uniform 3 x 3 window, Wang et al.'s constants for a data range of 1): torchmetrics has one,
but it is not a dependency of this package and this is eight lines.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

ELIXIR_QUANTILE = 0.8     # DataElixir's hard-coded index: floor(0.8 * len(candidates)) of the sorted distances
SSIM_WINDOW = 3           # DataElixir's SSIM window


@dataclass(frozen=True)
class FeatureMap:
    """A feature extractor for candidate selection: ``fn`` maps float images in [-1, 1] (B, C, H, W) to (B, D);
    ``key`` names it (its weights), so that a cached or resumed purification never mixes two of them."""

    fn: Callable[[torch.Tensor], torch.Tensor]
    key: str


def ssim(a: torch.Tensor, b: torch.Tensor, window: int = SSIM_WINDOW) -> torch.Tensor:
    """Mean structural similarity of each pair of images in [-1, 1] (B, C, H, W) -> (B,), uniform
    ``window`` x ``window`` window over the valid region, on the [0, 1] data range."""
    if a.shape != b.shape or a.dim() != 4:
        raise ValueError(f"ssim needs two (B, C, H, W) batches of one shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    a, b = (a.float() + 1) / 2, (b.float() + 1) / 2
    c1, c2 = 0.01 ** 2, 0.03 ** 2

    def mean(x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(x, window, stride=1)
    mu_a, mu_b = mean(a), mean(b)
    var_a, var_b = mean(a * a) - mu_a ** 2, mean(b * b) - mu_b ** 2
    cov = mean(a * b) - mu_a * mu_b
    index = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a ** 2 + mu_b ** 2 + c1) * (var_a + var_b + c2))
    return index.flatten(1).mean(1)


def elixir_distance(candidates: torch.Tensor, reference: torch.Tensor,
                    features: Callable[[torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
    """DataElixir's distance of each candidate (K, B, C, H, W) to its image ``reference`` (B, C, H, W), all in
    [-1, 1]: ``0.5 (1 - SSIM') + 0.5 (1 - cos')`` with ``features`` (:class:`FeatureMap.fn`), ``1 - SSIM'``
    without. Returns (K, B)."""
    if candidates.dim() != 5 or candidates.shape[1:] != reference.shape:
        raise ValueError(f"candidates must be (K, *reference.shape); got {tuple(candidates.shape)} for a reference "
                         f"of {tuple(reference.shape)}")
    k = candidates.shape[0]
    flat = candidates.flatten(0, 1)
    repeated = reference.unsqueeze(0).expand_as(candidates).flatten(0, 1)
    pixel = 1 - (ssim(flat, repeated) + 1) / 2
    if features is None:
        return pixel.view(k, -1)
    with torch.no_grad():
        f_ref = features(reference.float())
        f_cand = features(flat.float())
    cos = F.cosine_similarity(f_cand, f_ref.repeat(k, 1), dim=1)
    return (0.5 * pixel + 0.5 * (1 - (cos + 1) / 2)).view(k, -1)


def choose_at_quantile(candidates: torch.Tensor, distance: torch.Tensor,
                       quantile: float = ELIXIR_QUANTILE) -> torch.Tensor:
    """Per image, the candidate whose distance ranks ``floor(quantile * K)`` (0-based, ascending; ties broken
    by candidate order) among its K candidates: (K, B, ...) and (K, B) -> (B, ...)."""
    if not 0 <= quantile <= 1:
        raise ValueError(f"quantile must lie in [0, 1], got {quantile}")
    k = candidates.shape[0]
    if distance.shape != candidates.shape[:2]:
        raise ValueError(f"distance must be (K, B) = {tuple(candidates.shape[:2])}, got {tuple(distance.shape)}")
    rank = min(int(quantile * k), k - 1)
    order = torch.sort(distance, dim=0, stable=True).indices     # (K, B): candidate indices by distance
    pick = order[rank]                                             # (B,)
    return candidates[pick, torch.arange(candidates.shape[1], device=candidates.device)]


def penultimate_features(classifier: torch.nn.Module, grad: bool = False) -> Callable[[torch.Tensor], torch.Tensor]:
    """``x in [-1, 1] -> the input of the classifier's last linear layer`` (its pooled features; every victim
    of :mod:`eclipse.victims` ends in one), the classifier frozen in eval mode. ``grad``: keep the graph to
    ``x`` (a perceptual loss back-propagates through it); otherwise no gradients."""
    linears = [m for m in classifier.modules() if isinstance(m, torch.nn.Linear)]
    if not linears:
        raise ValueError(f"{type(classifier).__name__} has no linear layer to take features before")
    last = linears[-1]
    classifier.eval().requires_grad_(False)

    def fn(x: torch.Tensor) -> torch.Tensor:
        captured: list[torch.Tensor] = []
        handle = last.register_forward_hook(lambda module, inputs, output: captured.append(inputs[0]))
        try:
            with torch.set_grad_enabled(grad and torch.is_grad_enabled()):
                device = next(classifier.parameters()).device
                classifier(((x + 1) / 2).clamp(0, 1).to(device))
        finally:
            handle.remove()
        return captured[0].flatten(1).float().to(x.device)
    return fn

"""Noise assimilation (paper Fig. 2a): how fast rounds of Gaussian noise swamp a poison's visible pattern."""
from __future__ import annotations

import math
from typing import Sequence

import pandas as pd
import torch

from eclipse.frequency.inputs import check_delta, check_pair
from eclipse.frequency.spectra import low_mask

__all__ = ["noised_perturbations", "noise_assimilation", "assimilation_round"]


def _check_rounds(rounds: int, sigma: float) -> None:
    if not isinstance(rounds, int) or rounds < 1:
        raise ValueError(f"rounds must be a positive int, got {rounds!r}")
    if not (sigma > 0 and math.isfinite(sigma)):
        raise ValueError(f"sigma must be positive and finite, got {sigma!r}")


def _noise_rounds(shape: torch.Size, rounds: int, sigma: float, seed: int):
    """Yield ``(k, accumulated noise after k rounds)`` for k = 1..rounds; round r draws N(0, sigma^2)
    of ``shape`` from one generator seeded with ``seed`` (identical across the public functions)."""
    generator = torch.Generator().manual_seed(int(seed))
    total = torch.zeros(shape)
    for k in range(1, rounds + 1):
        total += sigma * torch.randn(shape, generator=generator)
        yield k, total


def noised_perturbations(
    delta: torch.Tensor, ks: Sequence[int], sigma: float = 0.01, seed: int = 0
) -> torch.Tensor:
    """Fig. 2a panels: ``delta`` plus k rounds of independent N(0, sigma^2) noise, for each k in ``ks``.

    Returns ``(len(ks), N, C, H, W)`` float, unclipped, on the [0, 1] scale (pass a panel through
    :func:`eclipse.viz.amplify_for_display` to view it). The draws match :func:`noise_assimilation` for the same seed.
    """
    delta = check_delta(delta).float()
    ks = [int(k) for k in ks]
    if not ks or min(ks) < 0:
        raise ValueError(f"ks must be a non-empty sequence of non-negative ints, got {ks!r}")
    _check_rounds(max(max(ks), 1), sigma)
    out = torch.empty((len(ks),) + tuple(delta.shape))
    for i, k in enumerate(ks):
        if k == 0:
            out[i] = delta
    for k, noise in _noise_rounds(delta.shape, max(ks), sigma, seed):
        for i, kk in enumerate(ks):
            if kk == k:
                out[i] = delta + noise
    return out


def noise_assimilation(
    clean_uint8: torch.Tensor,
    poisoned_uint8: torch.Tensor,
    rounds: int = 50,
    sigma: float = 0.01,
    seed: int = 0,
    metric: str = "l2",
    cutoff: float | None = None,
    clip: bool = False,
) -> pd.DataFrame:
    """Fig. 2a as numbers: how much of the poison pattern remains recognisable after k = 1..rounds of
    N(0, sigma^2) noise (paper: sigma = 0.01 on the [0, 1] scale, 1 to 50 rounds, no clipping).

    The paper's Fig. 2a shows the *perturbation images* with noise added ("We present eight types of
    poison perturbations and add Gaussian noise ... from one to fifty rounds gradually"); the patterns
    "begin to resemble each other, ultimately converging to Gaussian noise". Round r adds a fresh
    draw n_r ~ N(0, sigma^2 I) to both images (same draws), so after k rounds the noised perturbation
    seen against the clean image is ``p_k = (poisoned/255 + N_k) - clean/255 = delta + N_k`` with
    ``N_k = n_1 + ... + n_k`` (std ``sigma * sqrt(k)``). Its visible structure is judged on the low
    frequencies (radius <= ``cutoff``, default 4 of 16 cycles), where a pattern is recognisable by eye
    and where white noise puts only ~5% of its energy:

    - ``metric="l2"``: residual poison fraction
      ``r_k = mean_i ||LP(delta_i)||^2 / ||LP(p_k,i)||^2`` -- the share of the noised perturbation's
      low-frequency energy that is still poison (1 = untouched, -> 0 = assimilated into noise);
    - ``metric="cosine"``: ``mean_i cos(LP(p_k,i), LP(delta_i))``, similarity of what one sees to the
      original pattern.

    A low-frequency poison keeps almost all its energy under the cutoff, so it stays dominant there
    for many rounds; a high-frequency poison of the same L2 puts little energy there and is swamped
    after a few rounds -- the paper's "assimilation ... to low-frequency perturbations is slow, while
    ... to high-frequency perturbations is faster".

    Returns a DataFrame with one row per k: ``k, noise_std, residual_fraction`` (the chosen metric),
    ``energy_fraction, cosine`` (both metrics), ``full_band_fraction`` (the same energy share without
    the low-pass, frequency-blind) and ``paired_l2_ratio`` = mean ||noised poisoned - noised clean|| /
    ||delta||, which is exactly 1 without clipping (identical draws cancel), i.e. Fig. 2a cannot be
    plotting that difference. ``clip=True`` clips both noised images to [0, 1] first. Memory is a few
    copies of the input; pass a subset (a few hundred images) for large sets.
    """
    check_pair(clean_uint8, poisoned_uint8, ("clean_uint8", "poisoned_uint8"))
    _check_rounds(rounds, sigma)
    if metric not in ("l2", "cosine"):
        raise ValueError(f"metric must be 'l2' or 'cosine', got {metric!r}")
    clean = clean_uint8.float() / 255.0
    poisoned = poisoned_uint8.float() / 255.0
    delta = poisoned - clean
    mask = low_mask(delta.shape[-2], delta.shape[-1], cutoff)
    delta_f = torch.fft.fft2(delta, norm="ortho") * mask
    delta_low = delta_f.abs().square().sum(dim=(1, 2, 3))
    delta_full = delta.square().sum(dim=(1, 2, 3))
    delta_norm = delta_full.sqrt()
    valid = delta_low > 0
    if not bool(valid.any()):
        raise ValueError("poisoned and clean images are identical at low frequencies: nothing to assimilate")
    rows = []
    for k, noise in _noise_rounds(delta.shape, rounds, sigma, seed):
        noised_poisoned = poisoned + noise
        if clip:
            noised_poisoned = noised_poisoned.clamp(0.0, 1.0)
            paired = noised_poisoned - (clean + noise).clamp(0.0, 1.0)
        else:
            paired = delta  # (p + N) - (c + N), exactly
        seen = noised_poisoned - clean
        seen_f = torch.fft.fft2(seen, norm="ortho") * mask
        seen_low = seen_f.abs().square().sum(dim=(1, 2, 3))
        energy = (delta_low / seen_low)[valid]
        inner = (seen_f * delta_f.conj()).real.sum(dim=(1, 2, 3))
        cosine = (inner / (seen_low.sqrt() * delta_low.sqrt()))[valid]
        full = (delta_full / seen.square().sum(dim=(1, 2, 3)))[valid]
        paired_ratio = (paired.flatten(1).norm(dim=1) / delta_norm.clamp_min(1e-12))[valid]
        rows.append({
            "k": k,
            "noise_std": sigma * math.sqrt(k),
            "energy_fraction": float(energy.mean()),
            "cosine": float(cosine.mean()),
            "full_band_fraction": float(full.mean()),
            "paired_l2_ratio": float(paired_ratio.mean()),
        })
    frame = pd.DataFrame(rows)
    frame.insert(2, "residual_fraction", frame["energy_fraction" if metric == "l2" else "cosine"])
    return frame


def assimilation_round(frame: pd.DataFrame, threshold: float = 0.5, column: str = "residual_fraction") -> int | None:
    """First k at which ``frame[column]`` (from :func:`noise_assimilation`) falls below ``threshold``;
    ``None`` if it never does within the rounds computed."""
    if "k" not in frame or column not in frame:
        raise ValueError(f"frame needs columns 'k' and {column!r}")
    below = frame.loc[frame[column] < threshold, "k"]
    return int(below.iloc[0]) if len(below) else None

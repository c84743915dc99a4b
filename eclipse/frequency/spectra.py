"""Power spectra of perturbations, radial spectra, an ideal low-pass and the low-frequency ratio.

Spectra use the orthonormal 2-D FFT (``norm="ortho"``), so by Parseval the spectrum of one
channel sums to that channel's squared L2 norm, and white noise of variance ``v`` has expected power
``v`` at every frequency. Frequencies are measured by their Euclidean radius from DC in units of
cycles per image (integers on the FFT grid); the Nyquist radius of a 32x32 image is 16.

Frequency classes (paper, Sec. 4 / ECLIPSE.md): low-frequency EM, REM, EFP, LSP; robust
high-frequency SEP; fragile high-frequency TAP, URP, AR.
"""
from __future__ import annotations

import math
from typing import Mapping

import pandas as pd
import torch

from eclipse.frequency.inputs import check_delta

__all__ = [
    "DEFAULT_CUTOFF_FRACTION",
    "LOW_FREQUENCY_THRESHOLD",
    "frequency_radius",
    "nyquist_radius",
    "default_cutoff",
    "power_spectrum",
    "radial_power_spectrum",
    "low_mask",
    "low_pass",
    "low_frequency_ratio",
    "frequency_summary",
]

DEFAULT_CUTOFF_FRACTION = 0.25
"""Default low-pass cutoff as a fraction of the Nyquist radius (4 of 16 for 32x32 images)."""

LOW_FREQUENCY_THRESHOLD = 0.25
"""A poison is labelled "low" when its mean low-frequency ratio (default cutoff) is at least this.
White noise scores the area fraction of the low-pass disc (49/1024 ~= 0.048 on 32x32), smooth
patterns score > 0.8; 0.25 is about five times the white-noise level."""


def frequency_radius(height: int, width: int, shifted: bool = True) -> torch.Tensor:
    """Euclidean distance from DC (cycles per image) of each FFT bin, ``(height, width)``.

    ``shifted=True`` matches ``torch.fft.fftshift`` layout (DC in the centre), else raw FFT layout.
    """
    fy = torch.fft.fftfreq(height, d=1.0 / height)
    fx = torch.fft.fftfreq(width, d=1.0 / width)
    if shifted:
        fy, fx = torch.fft.fftshift(fy), torch.fft.fftshift(fx)
    return torch.sqrt(fy[:, None] ** 2 + fx[None, :] ** 2)


def nyquist_radius(height: int, width: int) -> int:
    """Largest radius reached along both axes: ``min(H, W) // 2`` (16 for 32x32)."""
    return min(height, width) // 2


def default_cutoff(height: int, width: int) -> float:
    """Default low-pass cutoff: ``DEFAULT_CUTOFF_FRACTION`` of the Nyquist radius (4.0 for 32x32)."""
    return DEFAULT_CUTOFF_FRACTION * nyquist_radius(height, width)


def _fft_power(delta: torch.Tensor) -> torch.Tensor:
    """|FFT2|^2 per image and channel, orthonormal, unshifted: ``(N, C, H, W)``."""
    return torch.fft.fft2(delta, norm="ortho").abs().square()


def power_spectrum(delta: torch.Tensor) -> torch.Tensor:
    """Mean over images and channels of |FFT2(delta)|^2 (orthonormal FFT), fftshifted: ``(H, W)``.

    DC sits at index ``(H // 2, W // 2)``; the spectrum sums to the mean per-channel squared L2 norm.
    """
    delta = check_delta(delta)
    return torch.fft.fftshift(_fft_power(delta).mean(dim=(0, 1)), dim=(-2, -1))


def radial_power_spectrum(delta: torch.Tensor, bins: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Azimuthal average of :func:`power_spectrum` by distance from DC.

    ``bins=None``: one bin per integer radius (radius rounded to the nearest integer), radii
    ``0, 1, ..., round(max radius)``. ``bins=int``: that many equal-width bins over ``[0, max radius]``,
    radii are the bin centres. Empty bins are dropped. Returns ``(radii, mean power)``, both 1-D.
    """
    spectrum = power_spectrum(delta)
    radius = frequency_radius(*spectrum.shape).to(spectrum.dtype)
    if bins is None:
        index = torch.round(radius).long()
        n_bins = int(index.max()) + 1
        centres = torch.arange(n_bins, dtype=spectrum.dtype)
    else:
        if not isinstance(bins, int) or bins < 1:
            raise ValueError(f"bins must be a positive int or None, got {bins!r}")
        r_max = float(radius.max())
        width = r_max / bins
        index = torch.clamp((radius / width).floor().long(), max=bins - 1)
        n_bins = bins
        centres = (torch.arange(bins, dtype=spectrum.dtype) + 0.5) * width
    flat = index.flatten()
    sums = torch.zeros(n_bins, dtype=spectrum.dtype).index_add_(0, flat, spectrum.flatten())
    counts = torch.zeros(n_bins, dtype=spectrum.dtype).index_add_(0, flat, torch.ones_like(spectrum.flatten()))
    keep = counts > 0
    return centres[keep], sums[keep] / counts[keep]


def low_mask(height: int, width: int, cutoff: float | None) -> torch.Tensor:
    """Boolean ``(H, W)`` mask (unshifted FFT layout) of bins with radius <= cutoff (default :func:`default_cutoff`)."""
    if cutoff is None:
        cutoff = default_cutoff(height, width)
    if not (isinstance(cutoff, (int, float)) and cutoff >= 0 and math.isfinite(cutoff)):
        raise ValueError(f"cutoff must be a finite non-negative number, got {cutoff!r}")
    return frequency_radius(height, width, shifted=False) <= cutoff + 1e-9


def low_pass(delta: torch.Tensor, cutoff: float | None = None) -> torch.Tensor:
    """Ideal radial low-pass filter: keep FFT bins with radius <= cutoff (default :func:`default_cutoff`)."""
    delta = check_delta(delta)
    mask = low_mask(delta.shape[-2], delta.shape[-1], cutoff)
    return torch.fft.ifft2(torch.fft.fft2(delta) * mask, norm="backward").real


def _low_energy(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-image energy (sum over channels) inside ``mask`` via Parseval: ``(N,)``."""
    return (_fft_power(x) * mask).sum(dim=(1, 2, 3))


def low_frequency_ratio(delta: torch.Tensor, cutoff: float | None = None) -> torch.Tensor:
    """Fraction of each image's perturbation energy (all channels) at radius <= cutoff: ``(N,)``.

    Default cutoff is a quarter of the Nyquist radius (4 of 16 for 32x32). White noise scores the
    area fraction of the disc (49/1024 ~= 0.048); smooth perturbations score near 1. Images with a zero
    perturbation give NaN.
    """
    delta = check_delta(delta)
    mask = low_mask(delta.shape[-2], delta.shape[-1], cutoff)
    low = _low_energy(delta, mask)
    total = delta.square().sum(dim=(1, 2, 3))
    ratio = low / total
    return torch.where(total > 0, ratio, torch.full_like(ratio, float("nan")))


def frequency_summary(
    deltas: Mapping[str, torch.Tensor],
    cutoff: float | None = None,
    threshold: float = LOW_FREQUENCY_THRESHOLD,
) -> pd.DataFrame:
    """One row per poison: mean low-frequency ratio, mean per-image L2 and Linf (on [0, 1] scale, also
    Linf in /255 units), and ``band`` = "low" if the mean ratio >= ``threshold`` else "high".

    Index: poison name. Columns: ``low_freq_ratio, l2, linf, linf_255, band``.
    """
    if not isinstance(deltas, Mapping) or not deltas:
        raise ValueError("deltas must be a non-empty mapping name -> (N, C, H, W) float tensor")
    rows = []
    for name, delta in deltas.items():
        delta = check_delta(delta, f"deltas[{name!r}]")
        ratio = low_frequency_ratio(delta, cutoff)
        flat = delta.flatten(1)
        mean_ratio = float(torch.nanmean(ratio)) if not torch.isnan(ratio).all() else float("nan")
        linf = float(flat.abs().amax(dim=1).mean())
        rows.append({
            "poison": name,
            "low_freq_ratio": mean_ratio,
            "l2": float(flat.norm(dim=1).mean()),
            "linf": linf,
            "linf_255": linf * 255.0,
            "band": "low" if mean_ratio >= threshold else "high",
        })
    return pd.DataFrame(rows).set_index("poison")

"""Frequency analysis of poison perturbations, noise assimilation (Fig. 2a), a numerical check of
Theorem 1, and residual display helpers (Fig. 6).

Conventions: images are ``torch.uint8`` ``(N, 3, H, W)`` (CIFAR-10: 32x32); perturbations ``delta`` are
float ``(N, C, H, W)`` on the [0, 1] scale (``delta = poisoned / 255 - clean / 255``).

Spectra use the orthonormal 2-D FFT (``norm="ortho"``), so by Parseval the spectrum of one
channel sums to that channel's squared L2 norm, and white noise of variance ``v`` has expected power
``v`` at every frequency. Frequencies are measured by their Euclidean radius from DC in units of
cycles per image (integers on the FFT grid); the Nyquist radius of a 32x32 image is 16.

Frequency classes (paper, Sec. 4 / ECLIPSE.md): low-frequency EM, REM, EFP, LSP; robust
high-frequency SEP; fragile high-frequency TAP, URP, AR.
"""
from __future__ import annotations

import math
from typing import Mapping, Sequence

import numpy as np
import pandas as pd
import torch

__all__ = [
    "DEFAULT_CUTOFF_FRACTION",
    "LOW_FREQUENCY_THRESHOLD",
    "as_unit",
    "frequency_radius",
    "nyquist_radius",
    "default_cutoff",
    "power_spectrum",
    "radial_power_spectrum",
    "low_pass",
    "low_frequency_ratio",
    "frequency_summary",
    "noised_perturbations",
    "noise_assimilation",
    "assimilation_round",
    "paired_gaussian_kl",
    "gaussian_kl_divergence_check",
    "residual",
    "amplify_for_display",
]

DEFAULT_CUTOFF_FRACTION = 0.25
"""Default low-pass cutoff as a fraction of the Nyquist radius (4 of 16 for 32x32 images)."""

LOW_FREQUENCY_THRESHOLD = 0.25
"""A poison is labelled "low" when its mean low-frequency ratio (default cutoff) is at least this.
White noise scores the area fraction of the low-pass disc (49/1024 ~= 0.048 on 32x32), smooth
patterns score > 0.8; 0.25 is about five times the white-noise level."""


# --------------------------------------------------------------------------------------- validation
def _check_delta(delta: torch.Tensor, name: str = "delta") -> torch.Tensor:
    if not isinstance(delta, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(delta).__name__}")
    if delta.dim() != 4:
        raise ValueError(f"{name} must have shape (N, C, H, W), got {tuple(delta.shape)}")
    if not torch.is_floating_point(delta):
        raise ValueError(f"{name} must be a float tensor on the [0, 1] scale, got dtype {delta.dtype}")
    if delta.shape[0] == 0 or delta.shape[2] < 2 or delta.shape[3] < 2:
        raise ValueError(f"{name} must hold at least one image of at least 2x2 pixels, got {tuple(delta.shape)}")
    return delta.to(torch.float64) if delta.dtype == torch.float64 else delta.float()


def _check_images(images: torch.Tensor, name: str = "images") -> torch.Tensor:
    if not isinstance(images, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(images).__name__}")
    if images.dtype != torch.uint8:
        raise ValueError(f"{name} must be torch.uint8 in [0, 255], got dtype {images.dtype}")
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"{name} must have shape (N, 3, H, W), got {tuple(images.shape)}")
    if images.shape[0] == 0:
        raise ValueError(f"{name} is empty")
    return images


def _check_pair(a: torch.Tensor, b: torch.Tensor, names: tuple[str, str]) -> None:
    _check_images(a, names[0])
    _check_images(b, names[1])
    if a.shape != b.shape:
        raise ValueError(f"{names[0]} {tuple(a.shape)} and {names[1]} {tuple(b.shape)} must have the same shape")


def as_unit(images: torch.Tensor) -> torch.Tensor:
    """uint8 images -> float32 on the [0, 1] scale."""
    return _check_images(images).float() / 255.0


# ---------------------------------------------------------------------------------------- spectra
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
    delta = _check_delta(delta)
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


def _low_mask(height: int, width: int, cutoff: float | None) -> torch.Tensor:
    """Boolean ``(H, W)`` mask (unshifted FFT layout) of bins with radius <= cutoff."""
    if cutoff is None:
        cutoff = default_cutoff(height, width)
    if not (isinstance(cutoff, (int, float)) and cutoff >= 0 and math.isfinite(cutoff)):
        raise ValueError(f"cutoff must be a finite non-negative number, got {cutoff!r}")
    return frequency_radius(height, width, shifted=False) <= cutoff + 1e-9


def low_pass(delta: torch.Tensor, cutoff: float | None = None) -> torch.Tensor:
    """Ideal radial low-pass filter: keep FFT bins with radius <= cutoff (default :func:`default_cutoff`)."""
    delta = _check_delta(delta)
    mask = _low_mask(delta.shape[-2], delta.shape[-1], cutoff)
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
    delta = _check_delta(delta)
    mask = _low_mask(delta.shape[-2], delta.shape[-1], cutoff)
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
        delta = _check_delta(delta, f"deltas[{name!r}]")
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


# ---------------------------------------------------------------------------- Fig. 2a: assimilation
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
    :func:`amplify_for_display` to view it). The draws match :func:`noise_assimilation` for the same seed.
    """
    delta = _check_delta(delta).float()
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
    _check_pair(clean_uint8, poisoned_uint8, ("clean_uint8", "poisoned_uint8"))
    _check_rounds(rounds, sigma)
    if metric not in ("l2", "cosine"):
        raise ValueError(f"metric must be 'l2' or 'cosine', got {metric!r}")
    clean = clean_uint8.float() / 255.0
    poisoned = poisoned_uint8.float() / 255.0
    delta = poisoned - clean
    mask = _low_mask(delta.shape[-2], delta.shape[-1], cutoff)
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


# ----------------------------------------------------------------------------- Theorem 1 (KL check)
def _noise_levels(
    alphas_cumprod: torch.Tensor | None, ts: Sequence[int] | None, noise_stds: Sequence[float] | None
) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    """Resolve the noise levels into (frame with t/abar/noise_std, signal scales a, noise stds s)."""
    if (alphas_cumprod is None) == (noise_stds is None):
        raise ValueError("give exactly one of alphas_cumprod (with optional ts) or noise_stds")
    if alphas_cumprod is not None:
        abar = torch.as_tensor(alphas_cumprod, dtype=torch.float64)
        if abar.dim() != 1 or abar.numel() == 0:
            raise ValueError(f"alphas_cumprod must be a non-empty 1-D tensor, got shape {tuple(abar.shape)}")
        if ts is None:
            ts = np.unique(np.linspace(0, abar.numel() - 1, min(abar.numel(), 11)).round().astype(int)).tolist()
        ts = [int(t) for t in ts]
        if min(ts) < 0 or max(ts) >= abar.numel():
            raise ValueError(f"ts must index alphas_cumprod (0..{abar.numel() - 1}), got {ts}")
        if list(ts) != sorted(ts):
            raise ValueError("ts must be increasing")
        a_bar = abar[ts].numpy()
        if np.any(a_bar <= 0) or np.any(a_bar > 1):
            raise ValueError("alphas_cumprod values must lie in (0, 1]")
        scale, std = np.sqrt(a_bar), np.sqrt(1.0 - a_bar)
        frame = pd.DataFrame({"t": ts, "abar": a_bar, "noise_std": std})
    else:
        std = np.asarray([float(s) for s in noise_stds], dtype=np.float64)
        if std.ndim != 1 or std.size == 0 or np.any(std < 0) or not np.all(np.isfinite(std)):
            raise ValueError("noise_stds must be a non-empty list of finite non-negative numbers")
        if np.any(np.diff(std) < 0):
            raise ValueError("noise_stds must be non-decreasing")
        scale = np.ones_like(std)
        frame = pd.DataFrame({"t": np.arange(std.size), "noise_std": std})
    frame["effective_std"] = std / scale
    return frame, scale, std


def paired_gaussian_kl(
    delta: torch.Tensor,
    alphas_cumprod: torch.Tensor | None = None,
    ts: Sequence[int] | None = None,
    noise_stds: Sequence[float] | None = None,
    data_scale: float = 2.0,
) -> np.ndarray:
    """Closed form for a point-mass pair: mean over images of
    ``KL(N(a x_p, s^2 I) || N(a x_c, s^2 I)) = a^2 ||c * delta||^2 / (2 s^2)``.

    With a schedule (``a = sqrt(abar_t)``, ``s = sqrt(1 - abar_t)``) this is
    ``abar ||c delta||^2 / (2 (1 - abar))``, decreasing in t; with ``noise_stds`` (``a = 1``) it is
    ``||c delta||^2 / (2 s^2)``. ``c = data_scale`` maps the [0, 1] scale to the data scale the noise is
    defined on (2 for diffusion's [-1, 1]). Infinite where ``s = 0``. Returns one value per level.
    """
    delta = _check_delta(delta)
    _, scale, std = _noise_levels(alphas_cumprod, ts, noise_stds)
    energy = float((data_scale * delta.double()).flatten(1).square().sum(dim=1).mean())
    with np.errstate(divide="ignore", invalid="ignore"):
        kl = scale**2 * energy / (2.0 * std**2)
    return np.where(std > 0, kl, np.inf if energy > 0 else 0.0)


def _gaussian_kl(mu_p: torch.Tensor, cov_p: torch.Tensor, mu_q: torch.Tensor, cov_q: torch.Tensor) -> float:
    """KL(N(mu_p, cov_p) || N(mu_q, cov_q)), float64, via Cholesky."""
    d = mu_p.numel()
    chol_q = torch.linalg.cholesky(cov_q)
    chol_p = torch.linalg.cholesky(cov_p)
    solved = torch.cholesky_solve(cov_p, chol_q)
    diff = (mu_q - mu_p)[:, None]
    maha = float((diff * torch.cholesky_solve(diff, chol_q)).sum())
    logdet = 2.0 * float(torch.log(torch.diagonal(chol_q)).sum() - torch.log(torch.diagonal(chol_p)).sum())
    return 0.5 * (float(torch.trace(solved)) + maha - d + logdet)


def gaussian_kl_divergence_check(
    clean_uint8: torch.Tensor,
    poisoned_uint8: torch.Tensor,
    alphas_cumprod: torch.Tensor | None = None,
    ts: Sequence[int] | None = None,
    noise_stds: Sequence[float] | None = None,
    dims: int = 8,
    method: str = "analytic",
    seed: int = 0,
    ridge: float = 1e-6,
) -> pd.DataFrame:
    """Numerical check of Theorem 1: KL(p_t || q_t) between noised poisoned (p) and noised clean (q)
    data is non-increasing in the noise level.

    Noise levels: either a schedule ``alphas_cumprod`` (1-D, e.g. the cosine schedule's abar) with
    timesteps ``ts`` (default 11 evenly spaced; forward process ``x_t = sqrt(abar) x + sqrt(1-abar) eps``
    on the [-1, 1] scale), or ``noise_stds`` (``x_t = x + s eps`` on the [0, 1] scale). Independent
    of the diffusion module.

    Estimator: images are projected onto the top ``dims`` principal directions of the pooled clean +
    poisoned data (orthonormal, so isotropic pixel noise stays isotropic N(0, s^2 I_dims)), Gaussians
    are fitted to each set, and the closed-form Gaussian KL is computed:

    - ``method="analytic"``: noised moments ``(a mu, a^2 Sigma + s^2 I)`` -- deterministic and exactly
      non-increasing (Gaussian noise is a Markov kernel; data processing inequality);
    - ``method="sample"``: one noise draw per image pair, shared by the clean and the poisoned image
      (common random numbers, as in the forward process applied to both), Gaussians re-fitted to the
      noised samples (Monte-Carlo; non-increasing up to estimator noise).

    ``ridge`` is added to the fitted covariances so the noiseless level is finite. Returns a DataFrame
    with ``t, [abar,] noise_std, effective_std (= s / a), kl`` and ``kl_paired_closed_form`` (see
    :func:`paired_gaussian_kl`, the per-image point-mass case, on the same scale).
    """
    _check_pair(clean_uint8, poisoned_uint8, ("clean_uint8", "poisoned_uint8"))
    if method not in ("analytic", "sample"):
        raise ValueError(f"method must be 'analytic' or 'sample', got {method!r}")
    frame, scale, std = _noise_levels(alphas_cumprod, ts, noise_stds)
    data_scale = 2.0 if alphas_cumprod is not None else 1.0
    offset = -1.0 if alphas_cumprod is not None else 0.0
    clean = clean_uint8.flatten(1).double() / 255.0 * data_scale + offset
    poisoned = poisoned_uint8.flatten(1).double() / 255.0 * data_scale + offset
    n = clean.shape[0]
    if not isinstance(dims, int) or dims < 1 or dims > clean.shape[1]:
        raise ValueError(f"dims must be an int in 1..{clean.shape[1]}, got {dims!r}")
    if n < dims + 2:
        raise ValueError(f"need at least dims + 2 = {dims + 2} images to fit {dims}-D Gaussians, got {n}")
    pooled = torch.cat([clean, poisoned])
    centre = pooled.mean(dim=0)
    _, _, vh = torch.linalg.svd(pooled - centre, full_matrices=False)
    basis = vh[:dims]  # (dims, D), orthonormal rows

    def moments(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu = z.mean(dim=0)
        zc = z - mu
        return mu, zc.T @ zc / (z.shape[0] - 1)

    eye = torch.eye(dims, dtype=torch.float64)
    generator = torch.Generator().manual_seed(int(seed))
    kls = []
    if method == "analytic":
        mu_c, cov_c = moments((clean - centre) @ basis.T)
        mu_p, cov_p = moments((poisoned - centre) @ basis.T)
    for a, s in zip(scale, std):
        if method == "analytic":
            extra = (s**2 + ridge) * eye
            kls.append(_gaussian_kl(a * mu_p, a**2 * cov_p + extra, a * mu_c, a**2 * cov_c + extra))
        else:
            eps = torch.randn(clean.shape, generator=generator, dtype=torch.float64)
            zc = ((a * clean + s * eps) - centre) @ basis.T
            zp = ((a * poisoned + s * eps) - centre) @ basis.T
            mu_c, cov_c = moments(zc)
            mu_p, cov_p = moments(zp)
            kls.append(_gaussian_kl(mu_p, cov_p + ridge * eye, mu_c, cov_c + ridge * eye))
    frame["kl"] = np.maximum(kls, 0.0)  # clip float round-off below zero
    delta = (poisoned_uint8.float() - clean_uint8.float()) / 255.0
    if alphas_cumprod is not None:
        closed = paired_gaussian_kl(delta, alphas_cumprod=alphas_cumprod, ts=frame["t"].tolist(), data_scale=2.0)
    else:
        closed = paired_gaussian_kl(delta, noise_stds=std.tolist(), data_scale=1.0)
    frame["kl_paired_closed_form"] = closed
    return frame


# --------------------------------------------------------------------------------- Fig. 6 residuals
def residual(purified_uint8: torch.Tensor, clean_uint8: torch.Tensor) -> torch.Tensor:
    """Residual perturbation after purification: ``purified/255 - clean/255`` (float, [0, 1] scale)."""
    _check_pair(purified_uint8, clean_uint8, ("purified_uint8", "clean_uint8"))
    return purified_uint8.float() / 255.0 - clean_uint8.float() / 255.0


def amplify_for_display(delta: torch.Tensor, scale: float | None = None) -> torch.Tensor:
    """``clip(0.5 + delta * scale, 0, 1)`` for viewing a perturbation (grey = 0).

    Default ``scale`` maps the largest |delta| (over the whole tensor) to 0.5, i.e. to black/white;
    an all-zero delta gives uniform grey. Accepts any shape.
    """
    if not isinstance(delta, torch.Tensor) or not torch.is_floating_point(delta):
        raise ValueError("delta must be a float torch.Tensor")
    delta = delta.float()
    if scale is None:
        peak = float(delta.abs().max()) if delta.numel() else 0.0
        scale = 0.5 / peak if peak > 0 else 1.0
    elif not (scale > 0 and math.isfinite(scale)):
        raise ValueError(f"scale must be positive and finite, got {scale!r}")
    return (0.5 + delta * scale).clamp(0.0, 1.0)

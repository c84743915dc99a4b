"""Theorem 1 (the divergence between noised poisoned and noised clean data never increases with the noise
level), checked numerically: closed forms, an analytic Gaussian-fit check, and a sample-based divergence
estimated in the subspace where the poison lives."""
from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd
import torch

from eclipse.frequency.inputs import check_delta, check_pair

__all__ = ["paired_gaussian_kl", "gaussian_kl_divergence_check", "poison_subspace", "sample_divergence"]


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
    delta = check_delta(delta)
    _, scale, std = _noise_levels(alphas_cumprod, ts, noise_stds)
    energy = float((data_scale * delta.double()).flatten(1).square().sum(dim=1).mean())
    with np.errstate(divide="ignore", invalid="ignore"):
        kl = scale**2 * energy / (2.0 * std**2)
    return np.where(std > 0, kl, np.inf if energy > 0 else 0.0)


def _moments(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample mean and (unbiased) covariance of the rows of ``z``."""
    mu = z.mean(dim=0)
    zc = z - mu
    return mu, zc.T @ zc / (z.shape[0] - 1)


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
    poisoned data (dominated by image content, where a small poison barely shows: see
    :func:`sample_divergence` for the divergence in the poisons' own subspace) (orthonormal, so isotropic pixel noise stays isotropic N(0, s^2 I_dims)), Gaussians
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
    check_pair(clean_uint8, poisoned_uint8, ("clean_uint8", "poisoned_uint8"))
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

    eye = torch.eye(dims, dtype=torch.float64)
    generator = torch.Generator().manual_seed(int(seed))
    kls = []
    if method == "analytic":
        mu_c, cov_c = _moments((clean - centre) @ basis.T)
        mu_p, cov_p = _moments((poisoned - centre) @ basis.T)
    for a, s in zip(scale, std):
        if method == "analytic":
            extra = (s**2 + ridge) * eye
            kls.append(_gaussian_kl(a * mu_p, a**2 * cov_p + extra, a * mu_c, a**2 * cov_c + extra))
        else:
            eps = torch.randn(clean.shape, generator=generator, dtype=torch.float64)
            zc = ((a * clean + s * eps) - centre) @ basis.T
            zp = ((a * poisoned + s * eps) - centre) @ basis.T
            mu_c, cov_c = _moments(zc)
            mu_p, cov_p = _moments(zp)
            kls.append(_gaussian_kl(mu_p, cov_p + ridge * eye, mu_c, cov_c + ridge * eye))
    frame["kl"] = np.maximum(kls, 0.0)  # clip float round-off below zero
    delta = (poisoned_uint8.float() - clean_uint8.float()) / 255.0
    if alphas_cumprod is not None:
        closed = paired_gaussian_kl(delta, alphas_cumprod=alphas_cumprod, ts=frame["t"].tolist(), data_scale=2.0)
    else:
        closed = paired_gaussian_kl(delta, noise_stds=std.tolist(), data_scale=1.0)
    frame["kl_paired_closed_form"] = closed
    return frame


def poison_subspace(clean_uint8: torch.Tensor, poisoned_uint8: torch.Tensor, dims: int = 16) -> torch.Tensor:
    """Orthonormal basis ``(k, C*H*W)`` of where the poison lives, ``k = min(dims, rank)``: the top right
    singular vectors of the (uncentred) poison deltas ``poisoned - clean``.

    For a class-wise poison these span the class patterns; for a sample-wise one the directions its
    perturbations use most. Unlike the principal directions of the images (image content), they hold the poison.
    """
    check_pair(clean_uint8, poisoned_uint8, ("clean_uint8", "poisoned_uint8"))
    if not isinstance(dims, int) or isinstance(dims, bool) or dims < 1:
        raise ValueError(f"dims must be a positive int, got {dims!r}")
    delta = (poisoned_uint8.flatten(1).double() - clean_uint8.flatten(1).double()) / 255.0
    _, singular, vh = torch.linalg.svd(delta, full_matrices=False)
    rank = int((singular > 1e-9 * float(singular[0])).sum()) if float(singular[0]) > 0 else 0
    if rank == 0:
        raise ValueError("poisoned and clean images are identical: there is no poison subspace")
    return vh[: min(dims, rank)]


def _orthonormal_rows(direction: torch.Tensor, features: int) -> torch.Tensor:
    """``direction`` (``(k, D)``, ``(D,)`` or ``(k, C, H, W)``) as orthonormal float64 rows spanning it."""
    if not isinstance(direction, torch.Tensor) or not torch.is_floating_point(direction):
        raise ValueError("direction must be a float tensor (k, C*H*W), (C*H*W,) or (k, C, H, W)")
    if direction.numel() == 0 or direction.numel() % features or not torch.isfinite(direction).all():
        raise ValueError(f"direction must hold finite vectors of {features} values, got shape {tuple(direction.shape)}")
    rows = direction.detach().to("cpu", torch.float64).reshape(-1, features)
    q, r = torch.linalg.qr(rows.T)
    keep = r.diagonal().abs() > 1e-9 * float(r.diagonal().abs().max())
    if not bool(keep.any()):
        raise ValueError("direction is zero")
    return q.T[keep]


def sample_divergence(
    clean_uint8: torch.Tensor,
    poisoned_uint8: torch.Tensor,
    alphas_cumprod: torch.Tensor | None = None,
    ts: Sequence[int] | None = None,
    *,
    seed: int,
    noise_stds: Sequence[float] | None = None,
    direction: torch.Tensor | None = None,
    dims: int = 16,
    ridge: float = 1e-6,
) -> pd.DataFrame:
    """Sample-based check of Theorem 1 in the subspace where the poison lives: KL(p_t || q_t) estimated from
    noised samples, with nothing forcing it to fall.

    The images are split at random (``seed``) into two halves A and B. At each level, noised samples
    ``x_t = sqrt(abar) x + sqrt(1 - abar) e`` (on [-1, 1]; with ``noise_stds``, ``x + s e`` on [0, 1]) are
    drawn of clean A (q), of poisoned B (p) and of clean B (the null), and projected onto ``direction``
    (orthonormalised; default :func:`poison_subspace` of half A's poison deltas, ``dims`` directions, so the
    subspace is not fitted to the samples it is measured on). The noise is drawn directly in the subspace: for
    an orthonormal basis the projection of isotropic pixel noise is exactly ``N(0, s^2 I_k)``. Gaussians are
    fitted to the projected samples (covariance + ``ridge``) and compared:

    - ``divergence`` = KL(fit(poisoned B) || fit(clean A)): poison plus estimator noise;
    - ``baseline`` = KL(fit(clean B) || fit(clean A)): the same estimate for clean against clean (other
      images, other noise draw), i.e. the level a divergence indistinguishable from no poison sits at.

    Poisoned B and clean B share their noise draw, clean A has its own; every level draws afresh. A poison
    that the noise assimilates has ``divergence`` falling towards ``baseline`` as t grows. Returns a
    DataFrame ``t, [abar,] noise_std, effective_std, divergence, baseline``.
    """
    check_pair(clean_uint8, poisoned_uint8, ("clean_uint8", "poisoned_uint8"))
    frame, scale, std = _noise_levels(alphas_cumprod, ts, noise_stds)
    data_scale, offset = (2.0, -1.0) if alphas_cumprod is not None else (1.0, 0.0)
    n, half = clean_uint8.shape[0], clean_uint8.shape[0] // 2
    if half < 3:
        raise ValueError(f"need at least 6 images (two halves of >= 3) to estimate a divergence, got {n}")
    generator = torch.Generator().manual_seed(int(seed))
    order = torch.randperm(n, generator=generator)
    a_idx, b_idx = order[:half], order[half: 2 * half]
    if direction is None:  # fitted on half A, so the divergence on half B is not inflated by the fit
        basis = poison_subspace(clean_uint8[a_idx], poisoned_uint8[a_idx], dims)
    else:
        basis = _orthonormal_rows(direction, clean_uint8[0].numel())
    k = basis.shape[0]
    if half < k + 2:
        raise ValueError(f"need at least 2 * (k + 2) = {2 * (k + 2)} images for {k}-D Gaussian fits, got {n}")

    def project(images: torch.Tensor) -> torch.Tensor:
        return (images.flatten(1).double() / 255.0 * data_scale + offset) @ basis.T

    clean_a, clean_b, poisoned_b = project(clean_uint8[a_idx]), project(clean_uint8[b_idx]), \
        project(poisoned_uint8[b_idx])
    eye = torch.eye(k, dtype=torch.float64)
    divergence, baseline = [], []
    for a, s in zip(scale, std):
        noise_a = torch.randn(half, k, generator=generator, dtype=torch.float64)
        noise_b = torch.randn(half, k, generator=generator, dtype=torch.float64)
        mu_q, cov_q = _moments(a * clean_a + s * noise_a)
        mu_p, cov_p = _moments(a * poisoned_b + s * noise_b)
        mu_n, cov_n = _moments(a * clean_b + s * noise_b)
        divergence.append(_gaussian_kl(mu_p, cov_p + ridge * eye, mu_q, cov_q + ridge * eye))
        baseline.append(_gaussian_kl(mu_n, cov_n + ridge * eye, mu_q, cov_q + ridge * eye))
    frame["divergence"] = np.maximum(divergence, 0.0)
    frame["baseline"] = np.maximum(baseline, 0.0)
    return frame

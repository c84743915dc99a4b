"""Gaussian diffusion math (improved-diffusion conventions), given a schedule and model outputs.

Nothing here holds model state: the functions take the schedule, tensors, and (for the
training loss) the model as an argument. Coefficients are float64 in the schedule and are
cast to the working dtype after indexing, as improved-diffusion's ``_extract_into_tensor``.
"""
from __future__ import annotations

import hashlib
import math
from typing import Callable

import torch

from .schedule import NoiseSchedule

Model = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def extract(arr: torch.Tensor, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``arr[t]`` as ``like``'s dtype, shaped (B, 1, 1, ...) to broadcast against ``like``."""
    out = arr.to(t.device)[t].to(like.dtype)
    return out.reshape(out.shape + (1,) * (like.ndim - out.ndim))


def model_timesteps(schedule: NoiseSchedule, t: torch.Tensor) -> torch.Tensor:
    """Model-input timestep: original index through the respacing map, times 1000/T if rescaling."""
    mapped = schedule.timestep_map.to(t.device)[t]
    if schedule.rescale_timesteps:
        return mapped.float() * (1000.0 / schedule.original_num_steps)
    return mapped


# The model's data range: uint8 pixels <-> floats in [-1, 1], the one place the conversion is written.
def to_model_range(images: torch.Tensor) -> torch.Tensor:
    """uint8 (N,3,H,W) -> float in [-1, 1]."""
    return images.float() / 127.5 - 1.0


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """float in [-1, 1] -> uint8 as round(clamp((x + 1) * 127.5, 0, 255))."""
    return ((x.float() + 1.0) * 127.5).clamp(0, 255).round().to(torch.uint8)


def image_seed(seed: int, index: int) -> int:
    """The seed of image ``index``'s own noise stream under run seed ``seed`` (a hash of both)."""
    digest = hashlib.sha256(f"eclipse-image-noise:{int(seed)}:{int(index)}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


class PerImageNoise:
    """A noise source in which image ``indices[j]`` of a batch draws from its own CPU generator seeded by
    :func:`image_seed` (seed, index): every image gets the same numbers whatever batch, chunk, resume point
    or process it is purified in. Pass it where a sampler takes a generator."""

    def __init__(self, seed: int, indices) -> None:
        self.generators = [torch.Generator().manual_seed(image_seed(seed, int(i))) for i in indices]

    def randn_like(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] != len(self.generators):
            raise ValueError(f"a batch of {x.shape[0]} images, but noise streams for {len(self.generators)}")
        noise = torch.stack([torch.randn(x.shape[1:], generator=g) for g in self.generators])
        return noise.to(device=x.device, dtype=x.dtype)


def randn(x: torch.Tensor, generator: "torch.Generator | PerImageNoise | None") -> torch.Tensor:
    """``randn_like(x)`` (same strides, so the same numbers land in the same places as the official
    code's ``randn_like``); from ``generator`` when given, drawn on its device and moved to x's; from each
    image's own stream for a :class:`PerImageNoise`."""
    if isinstance(generator, PerImageNoise):
        return generator.randn_like(x)
    if generator is None:
        return torch.randn_like(x)
    if generator.device.type == x.device.type:
        return torch.randn_like(x, generator=generator)
    return torch.randn_like(x, device=generator.device, generator=generator).to(x.device)


# Forward noising, the one place it happens: ``q_sample`` for training (float64 coefficients indexed per
# sample, as improved-diffusion), ``forward_noise`` for purification from t* (as the official ECLIPSE code).
def q_sample(schedule: NoiseSchedule, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) noise."""
    return extract(schedule.sqrt_alphas_cumprod, t, x0) * x0 + extract(schedule.sqrt_one_minus_alphas_cumprod, t, x0) * noise


def forward_noise(schedule: NoiseSchedule, x0: torch.Tensor, t_star: int,
                  generator: torch.Generator | None) -> torch.Tensor:
    """x = sqrt(abar[t*-1]) x0 + sqrt(1 - abar[t*-1]) e: the sample a purification from depth ``t_star``
    starts from (schedule index ``t_star - 1``), with abar formed as the official code forms it (float32
    cumulative product of the float32 betas) and ``e`` one ``randn_like`` draw from ``generator``."""
    if not 1 <= t_star <= schedule.num_timesteps:
        raise ValueError(f"t_star={t_star} outside [1, {schedule.num_timesteps}]")
    noise = randn(x0, generator)
    abar = torch.cumprod(1 - schedule.betas.float(), 0)[t_star - 1].to(x0.device)
    return x0 * abar.sqrt() + noise * (1.0 - abar).sqrt()


def q_posterior(schedule: NoiseSchedule, x0: torch.Tensor, x_t: torch.Tensor,
                t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mean, variance and clipped log variance of q(x_{t-1} | x_t, x0)."""
    mean = extract(schedule.posterior_mean_coef1, t, x_t) * x0 + extract(schedule.posterior_mean_coef2, t, x_t) * x_t
    return mean, extract(schedule.posterior_variance, t, x_t), extract(schedule.posterior_log_variance_clipped, t, x_t)


def predict_xstart_from_eps(schedule: NoiseSchedule, x_t: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    return extract(schedule.sqrt_recip_alphas_cumprod, t, x_t) * x_t - extract(schedule.sqrt_recipm1_alphas_cumprod, t, x_t) * eps


def predict_eps_from_xstart(schedule: NoiseSchedule, x_t: torch.Tensor, t: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
    return (extract(schedule.sqrt_recip_alphas_cumprod, t, x_t) * x_t - x0) / extract(schedule.sqrt_recipm1_alphas_cumprod, t, x_t)


def p_mean_variance(schedule: NoiseSchedule, model_output: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor,
                    clip_denoised: bool = True) -> dict[str, torch.Tensor]:
    """Reverse-step mean/variance from an epsilon-predicting model output.

    With 2C output channels the variance is learned (LEARNED_RANGE: log var interpolates
    between log beta_t and the clipped log posterior variance, frac = (v + 1) / 2); with C
    channels it is fixed to improved-diffusion's FIXED_LARGE.
    """
    c = x_t.shape[1]
    model_output = model_output.to(x_t.dtype)
    if model_output.shape[1] == 2 * c:
        eps, v = model_output[:, :c], model_output[:, c:]
        min_log = extract(schedule.posterior_log_variance_clipped, t, x_t)
        max_log = extract(schedule.log_betas, t, x_t)
        frac = (v + 1) / 2
        log_var = frac * max_log + (1 - frac) * min_log
        var = torch.exp(log_var)
    elif model_output.shape[1] == c:
        eps = model_output
        large = torch.cat([schedule.posterior_variance[1:2], schedule.betas[1:]])
        var = extract(large, t, x_t).expand_as(x_t)
        log_var = extract(torch.log(large), t, x_t).expand_as(x_t)
    else:
        raise ValueError(f"model output has {model_output.shape[1]} channels, expected {c} or {2 * c}")
    pred_xstart = predict_xstart_from_eps(schedule, x_t, t, eps)
    if clip_denoised:
        pred_xstart = pred_xstart.clamp(-1, 1)
    mean, _, _ = q_posterior(schedule, pred_xstart, x_t, t)
    return {"mean": mean, "variance": var, "log_variance": log_var, "pred_xstart": pred_xstart, "eps": eps}


def normal_kl(mean1: torch.Tensor, logvar1: torch.Tensor, mean2: torch.Tensor, logvar2: torch.Tensor) -> torch.Tensor:
    """KL(N(mean1, e^logvar1) || N(mean2, e^logvar2)), elementwise, in nats."""
    return 0.5 * (-1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2) + (mean1 - mean2) ** 2 * torch.exp(-logvar2))


def approx_standard_normal_cdf(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x.pow(3))))


def discretized_gaussian_log_likelihood(x: torch.Tensor, means: torch.Tensor, log_scales: torch.Tensor) -> torch.Tensor:
    """Log-likelihood of [-1, 1] images quantised to 256 bins under a Gaussian decoder (nats)."""
    centered = x - means
    inv_std = torch.exp(-log_scales)
    cdf_plus = approx_standard_normal_cdf(inv_std * (centered + 1.0 / 255.0))
    cdf_min = approx_standard_normal_cdf(inv_std * (centered - 1.0 / 255.0))
    log_cdf_plus = torch.log(cdf_plus.clamp(min=1e-12))
    log_one_minus_cdf_min = torch.log((1.0 - cdf_min).clamp(min=1e-12))
    log_delta = torch.log((cdf_plus - cdf_min).clamp(min=1e-12))
    return torch.where(x < -0.999, log_cdf_plus, torch.where(x > 0.999, log_one_minus_cdf_min, log_delta))


def _mean_flat(x: torch.Tensor) -> torch.Tensor:
    return x.mean(dim=tuple(range(1, x.ndim)))


def hybrid_loss(schedule: NoiseSchedule, model_output: torch.Tensor, x0: torch.Tensor, x_t: torch.Tensor,
                t: torch.Tensor, noise: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-sample L_hybrid = mse(eps) + vb, improved-diffusion's RESCALED_MSE with learned sigma.

    ``vb`` is the KL term (decoder NLL at t=0) in bits, with a stop-gradient on the mean
    channels, times ``num_timesteps / 1000``. Without learned sigma ``vb`` is zero.
    """
    c = x0.shape[1]
    eps = model_output[:, :c]
    mse = _mean_flat((noise - eps) ** 2)
    if model_output.shape[1] != 2 * c:
        return {"loss": mse, "mse": mse, "vb": torch.zeros_like(mse)}
    frozen = torch.cat([eps.detach(), model_output[:, c:]], dim=1)
    true_mean, _, true_log_var = q_posterior(schedule, x0, x_t, t)
    out = p_mean_variance(schedule, frozen, x_t, t, clip_denoised=False)
    kl = _mean_flat(normal_kl(true_mean, true_log_var, out["mean"], out["log_variance"])) / math.log(2.0)
    nll = -_mean_flat(discretized_gaussian_log_likelihood(x0, out["mean"], 0.5 * out["log_variance"])) / math.log(2.0)
    vb = torch.where(t == 0, nll, kl) * (schedule.num_timesteps / 1000.0)
    return {"loss": mse + vb, "mse": mse, "vb": vb}


def training_losses(model: Model, schedule: NoiseSchedule, x0: torch.Tensor, t: torch.Tensor,
                    noise: torch.Tensor) -> dict[str, torch.Tensor]:
    """Noise ``x0`` to ``t``, run the model once, return the per-sample hybrid loss terms."""
    x_t = q_sample(schedule, x0, t, noise)
    model_output = model(x_t, model_timesteps(schedule, t))
    return hybrid_loss(schedule, model_output.float(), x0, x_t, t, noise)

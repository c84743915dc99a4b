"""Noise schedules (float64), posterior terms and improved-diffusion respacing."""
from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace
from typing import Iterable

import torch

F64 = torch.float64


def cosine_betas(num_steps: int, max_beta: float = 0.999) -> torch.Tensor:
    """Nichol & Dhariwal cosine schedule: beta_t = min(1 - abar((t+1)/T) / abar(t/T), max_beta)."""

    def abar(s: float) -> float:
        return math.cos((s + 0.008) / 1.008 * math.pi / 2) ** 2

    betas = [min(1 - abar((i + 1) / num_steps) / abar(i / num_steps), max_beta) for i in range(num_steps)]
    return torch.tensor(betas, dtype=F64)


def linear_betas(num_steps: int) -> torch.Tensor:
    """Ho et al. linear schedule, scaled so that any T gives the same curve as T=1000."""
    scale = 1000 / num_steps
    return torch.linspace(scale * 0.0001, scale * 0.02, num_steps, dtype=F64)


def named_betas(name: str, num_steps: int) -> torch.Tensor:
    if name == "cosine":
        return cosine_betas(num_steps)
    if name == "linear":
        return linear_betas(num_steps)
    raise ValueError(f"unknown noise_schedule {name!r} (expected 'cosine' or 'linear')")


@dataclass(frozen=True)
class NoiseSchedule:
    """All per-step terms of a diffusion, as float64 tensors of length ``num_timesteps``.

    ``timestep_map[i]`` is the original step index of step ``i`` (identity unless respaced);
    the model sees ``timestep_map[i] * 1000 / original_num_steps`` when ``rescale_timesteps``.
    """

    betas: torch.Tensor
    alphas_cumprod: torch.Tensor
    alphas_cumprod_prev: torch.Tensor
    alphas_cumprod_next: torch.Tensor
    sqrt_alphas_cumprod: torch.Tensor
    sqrt_one_minus_alphas_cumprod: torch.Tensor
    sqrt_recip_alphas_cumprod: torch.Tensor
    sqrt_recipm1_alphas_cumprod: torch.Tensor
    posterior_variance: torch.Tensor
    posterior_log_variance_clipped: torch.Tensor
    posterior_mean_coef1: torch.Tensor
    posterior_mean_coef2: torch.Tensor
    log_betas: torch.Tensor
    timestep_map: torch.Tensor
    original_num_steps: int
    rescale_timesteps: bool = True

    @property
    def num_timesteps(self) -> int:
        return int(self.betas.shape[0])

    def to(self, device: torch.device | str) -> "NoiseSchedule":
        """Same schedule with every tensor on ``device`` (dtypes unchanged)."""
        moved = {f.name: getattr(self, f.name).to(device) for f in fields(self)
                 if isinstance(getattr(self, f.name), torch.Tensor)}
        return replace(self, **moved)


def schedule_from_betas(betas: torch.Tensor, *, timestep_map: torch.Tensor | None = None,
                        original_num_steps: int | None = None, rescale_timesteps: bool = True) -> NoiseSchedule:
    """Derive every term improved-diffusion's ``GaussianDiffusion`` precomputes, in float64."""
    betas = torch.as_tensor(betas, dtype=F64).cpu()
    if betas.ndim != 1 or not bool(((betas > 0) & (betas <= 1)).all()):
        raise ValueError("betas must be a 1-D tensor in (0, 1]")
    n = betas.shape[0]
    alphas = 1.0 - betas
    ac = torch.cumprod(alphas, 0)
    ac_prev = torch.cat([torch.ones(1, dtype=F64), ac[:-1]])
    ac_next = torch.cat([ac[1:], torch.zeros(1, dtype=F64)])
    post_var = betas * (1.0 - ac_prev) / (1.0 - ac)
    # log of the posterior variance with its t=0 entry (zero) replaced by the t=1 one
    post_log_clipped = torch.log(torch.cat([post_var[1:2], post_var[1:]])) if n > 1 else torch.log(betas)
    return NoiseSchedule(
        betas=betas,
        alphas_cumprod=ac,
        alphas_cumprod_prev=ac_prev,
        alphas_cumprod_next=ac_next,
        sqrt_alphas_cumprod=ac.sqrt(),
        sqrt_one_minus_alphas_cumprod=(1.0 - ac).sqrt(),
        sqrt_recip_alphas_cumprod=(1.0 / ac).sqrt(),
        sqrt_recipm1_alphas_cumprod=(1.0 / ac - 1).sqrt(),
        posterior_variance=post_var,
        posterior_log_variance_clipped=post_log_clipped,
        posterior_mean_coef1=betas * ac_prev.sqrt() / (1.0 - ac),
        posterior_mean_coef2=(1.0 - ac_prev) * alphas.sqrt() / (1.0 - ac),
        log_betas=torch.log(betas),
        timestep_map=torch.arange(n, dtype=torch.long) if timestep_map is None else timestep_map.long().cpu(),
        original_num_steps=n if original_num_steps is None else int(original_num_steps),
        rescale_timesteps=rescale_timesteps,
    )


def make_schedule(noise_schedule: str = "cosine", diffusion_steps: int = 4000,
                  rescale_timesteps: bool = True) -> NoiseSchedule:
    """The full (un-respaced) schedule, e.g. ECLIPSE's cosine with T=4000."""
    return schedule_from_betas(named_betas(noise_schedule, diffusion_steps), rescale_timesteps=rescale_timesteps)


def respace(schedule: NoiseSchedule, use_timesteps: Iterable[int]) -> tuple[NoiseSchedule, torch.Tensor]:
    """Keep only ``use_timesteps`` (original indices); betas rebuilt as 1 - abar_k / abar_prev_kept.

    Returns the new schedule and the index map (new step -> original step), as improved-diffusion's
    ``SpacedDiffusion``. Respacing a respaced schedule composes the maps.
    """
    keep = sorted({int(t) for t in use_timesteps})
    if not keep:
        raise ValueError("use_timesteps is empty")
    if keep[0] < 0 or keep[-1] >= schedule.num_timesteps:
        raise ValueError(f"use_timesteps must lie in [0, {schedule.num_timesteps - 1}], got {keep[0]}..{keep[-1]}")
    idx = torch.tensor(keep, dtype=torch.long)
    ac = schedule.alphas_cumprod[idx]
    prev = torch.cat([torch.ones(1, dtype=F64), ac[:-1]])
    new_betas = 1.0 - ac / prev
    index_map = schedule.timestep_map[idx]
    new = schedule_from_betas(new_betas, timestep_map=index_map, original_num_steps=schedule.original_num_steps,
                              rescale_timesteps=schedule.rescale_timesteps)
    return new, index_map


def space_timesteps(num_timesteps: int, section_counts: str | int | list[int]) -> set[int]:
    """improved-diffusion's ``space_timesteps``: "10,15,20" section counts, or "ddimN" strides."""
    if isinstance(section_counts, str):
        if section_counts.startswith("ddim"):
            desired = int(section_counts[len("ddim"):])
            for stride in range(1, num_timesteps):
                if len(range(0, num_timesteps, stride)) == desired:
                    return set(range(0, num_timesteps, stride))
            raise ValueError(f"cannot create exactly {desired} steps with an integer stride")
        section_counts = [int(x) for x in section_counts.split(",")]
    elif isinstance(section_counts, int):
        section_counts = [section_counts]
    size_per, extra = divmod(num_timesteps, len(section_counts))
    start, steps = 0, []
    for i, count in enumerate(section_counts):
        size = size_per + (1 if i < extra else 0)
        if size < count:
            raise ValueError(f"cannot divide section of {size} steps into {count}")
        stride = 1 if count <= 1 else (size - 1) / (count - 1)
        cur = 0.0
        for _ in range(count):
            steps.append(start + round(cur))
            cur += stride
        start += size
    return set(steps)


def purification_timesteps(t_star: int, steps: int) -> list[int]:
    """``steps`` original indices in [0, t_star - 1], evenly spread, always including 0 and t_star - 1."""
    if t_star < 1:
        raise ValueError(f"t_star must be >= 1, got {t_star}")
    if not 1 <= steps <= t_star:
        raise ValueError(f"steps must be in [1, t_star={t_star}], got {steps}")
    if steps == 1:
        return [t_star - 1]
    pts = torch.linspace(0, t_star - 1, steps, dtype=F64).round().long().tolist()
    return sorted(set(pts))

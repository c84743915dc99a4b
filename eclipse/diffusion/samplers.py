"""Reverse-process samplers as plain functions ``sampler(model, schedule, x_t, t_start, ...)``.

``x_t`` is a sample at schedule index ``t_start`` (for purification from t*: ``t_start = t_star - 1``,
the official ECLIPSE convention of noising with ``abar[t* - 1]``). Every sampler returns the
float x0 estimate and calls the model ``network_evaluations(...)`` times per image.
Gradients are off unless ``grad=True``.
"""
from __future__ import annotations

from typing import Callable

import torch
from tqdm.auto import tqdm

from . import gaussian as G
from .schedule import NoiseSchedule, purification_timesteps, respace

Model = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def randn(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """``randn_like(x)`` (same strides, so the same numbers land in the same places as the official
    code's ``randn_like``); from ``generator`` when given, drawn on its device and moved to x's."""
    if generator is None:
        return torch.randn_like(x)
    if generator.device.type == x.device.type:
        return torch.randn_like(x, generator=generator)
    return torch.randn_like(x, device=generator.device, generator=generator).to(x.device)


def _model_output(model: Model, schedule: NoiseSchedule, x: torch.Tensor, t: torch.Tensor,
                  autocast_dtype: torch.dtype | None) -> torch.Tensor:
    ts = G.model_timesteps(schedule, t)
    if autocast_dtype is None:
        return model(x, ts).float()
    with torch.autocast(device_type=x.device.type, dtype=autocast_dtype):
        return model(x, ts).float()


def _steps(t_start: int, progress: bool, desc: str):
    return tqdm(range(t_start, -1, -1), disable=not progress, desc=desc, leave=False)


def _check(schedule: NoiseSchedule, t_start: int) -> None:
    if not 0 <= t_start < schedule.num_timesteps:
        raise ValueError(f"t_start={t_start} outside the schedule's [0, {schedule.num_timesteps - 1}]")


def ancestral(model: Model, schedule: NoiseSchedule, x_t: torch.Tensor, t_start: int,
              generator: torch.Generator | None = None, *, clip_denoised: bool = True,
              autocast_dtype: torch.dtype | None = None, grad: bool = False,
              progress: bool = False) -> torch.Tensor:
    """improved-diffusion ``p_sample`` for i = t_start..0; a normal draw at every step (none added at i=0)."""
    _check(schedule, t_start)
    sched = schedule.to(x_t.device)
    x = x_t.float()
    with torch.set_grad_enabled(grad):
        for i in _steps(t_start, progress, "ancestral"):
            t = torch.full((x.shape[0],), i, device=x.device, dtype=torch.long)
            out = G.p_mean_variance(sched, _model_output(model, sched, x, t, autocast_dtype), x, t, clip_denoised)
            z = randn(x, generator)
            x = out["mean"] + torch.exp(0.5 * out["log_variance"]) * z if i > 0 else out["mean"]
    return x


def respaced(model: Model, schedule: NoiseSchedule, x_t: torch.Tensor, t_start: int, steps: int,
             generator: torch.Generator | None = None, *, clip_denoised: bool = True,
             autocast_dtype: torch.dtype | None = None, grad: bool = False,
             progress: bool = False) -> torch.Tensor:
    """Ancestral sampling over ``steps`` kept indices in [0, t_start] (including t_start), respaced betas."""
    _check(schedule, t_start)
    sub, _ = respace(schedule, purification_timesteps(t_start + 1, steps))
    return ancestral(model, sub, x_t, sub.num_timesteps - 1, generator, clip_denoised=clip_denoised,
                     autocast_dtype=autocast_dtype, grad=grad, progress=progress)


def ddim(model: Model, schedule: NoiseSchedule, x_t: torch.Tensor, t_start: int, steps: int | None = None,
         eta: float = 0.0, generator: torch.Generator | None = None, *, clip_denoised: bool = True,
         autocast_dtype: torch.dtype | None = None, grad: bool = False, progress: bool = False) -> torch.Tensor:
    """DDIM(eta) over ``steps`` kept indices in [0, t_start] (all of them when None); eps from the clipped x0."""
    _check(schedule, t_start)
    sub, _ = respace(schedule, purification_timesteps(t_start + 1, steps or t_start + 1))
    sched = sub.to(x_t.device)
    x = x_t.float()
    with torch.set_grad_enabled(grad):
        for i in _steps(sched.num_timesteps - 1, progress, "ddim"):
            t = torch.full((x.shape[0],), i, device=x.device, dtype=torch.long)
            out = G.p_mean_variance(sched, _model_output(model, sched, x, t, autocast_dtype), x, t, clip_denoised)
            eps = G.predict_eps_from_xstart(sched, x, t, out["pred_xstart"])
            abar = G.extract(sched.alphas_cumprod, t, x)
            abar_prev = G.extract(sched.alphas_cumprod_prev, t, x)
            sigma = eta * torch.sqrt((1 - abar_prev) / (1 - abar)) * torch.sqrt(1 - abar / abar_prev)
            z = randn(x, generator)
            x = out["pred_xstart"] * abar_prev.sqrt() + torch.sqrt(1 - abar_prev - sigma**2) * eps
            if i > 0:
                x = x + sigma * z
    return x


def one_shot(model: Model, schedule: NoiseSchedule, x_t: torch.Tensor, t_start: int,
             generator: torch.Generator | None = None, *, clip_denoised: bool = True,
             autocast_dtype: torch.dtype | None = None, grad: bool = False, progress: bool = False) -> torch.Tensor:
    """One network call: the x0 prediction at ``t_start`` (Carlini et al.'s one-shot denoiser)."""
    del generator, progress  # deterministic, single step
    _check(schedule, t_start)
    sched = schedule.to(x_t.device)
    x = x_t.float()
    with torch.set_grad_enabled(grad):
        t = torch.full((x.shape[0],), t_start, device=x.device, dtype=torch.long)
        out = G.p_mean_variance(sched, _model_output(model, sched, x, t, autocast_dtype), x, t, clip_denoised)
    return out["pred_xstart"]


SAMPLERS = ("ancestral", "respaced", "ddim", "one_shot")


def network_evaluations(sampler: str, t_star: int, steps: int | None = None) -> int:
    """Model calls per image for purification from ``t_star``."""
    if sampler == "ancestral":
        return t_star
    if sampler in ("respaced", "ddim"):
        return len(purification_timesteps(t_star, steps or t_star))
    if sampler == "one_shot":
        return 1
    raise ValueError(f"unknown sampler {sampler!r}; expected one of {SAMPLERS}")

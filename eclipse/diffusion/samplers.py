"""Reverse-process samplers, one signature for all: ``fn(model, schedule, x_t, t_start, generator, options)``.

``x_t`` is a sample at schedule index ``t_start`` (for purification from t*: ``t_start = t_star - 1``,
the official ECLIPSE convention of noising with ``abar[t* - 1]``). Every sampler returns the float x0
estimate, calls ``options.callback`` (if any) after each reverse step with ``{"i", "t", "x",
"pred_xstart"}`` (k-diffusion's callback convention), and declares how many times it calls the model
per image (``SamplerSpec.nfe``). Adding a sampler is one function plus one ``@register_sampler``.
Gradients are off unless ``options.grad``.
"""
from __future__ import annotations

import math

from dataclasses import dataclass, replace
from typing import Callable

import torch
from tqdm.auto import tqdm

from ..registry import Registry
from . import gaussian as G
from .gaussian import Model, randn
from .schedule import NoiseSchedule, purification_timesteps, respace

Callback = Callable[[dict], None]


@dataclass(frozen=True)
class SamplerOptions:
    """What a sampler may be asked besides its inputs (a sampler ignores what it does not use)."""

    steps: int | None = None             # reverse steps kept (respaced, ddim); None: all t_start + 1
    eta: float = 0.0                     # DDIM's eta
    clip_denoised: bool = True           # clamp the x0 prediction to [-1, 1]
    autocast_dtype: torch.dtype | None = None
    grad: bool = False
    progress: bool = False
    callback: Callback | None = None     # called after every reverse step with {"i", "t", "x", "pred_xstart"}

    def __post_init__(self) -> None:
        if self.steps is not None and (isinstance(self.steps, bool) or not isinstance(self.steps, int)
                                       or self.steps < 1):
            raise ValueError(f"steps must be a positive number of reverse steps (or None for all), got {self.steps!r}")
        if not (isinstance(self.eta, (int, float)) and math.isfinite(self.eta) and self.eta >= 0):
            raise ValueError(f"eta must be a finite number >= 0 (DDIM's eta; 0 = deterministic), got {self.eta!r}")


SamplerFn = Callable[[Model, NoiseSchedule, torch.Tensor, int, "torch.Generator | None", SamplerOptions], torch.Tensor]


@dataclass(frozen=True)
class SamplerSpec:
    """A registered sampler: the function and its network-evaluation count ``nfe(t_star, steps)`` per image."""

    name: str
    fn: SamplerFn
    nfe: Callable[[int, "int | None"], int]
    description: str


SAMPLERS: Registry[SamplerSpec] = Registry("sampler")


def register_sampler(name: str, nfe: Callable[[int, int | None], int], description: str | None = None):
    """Decorator: register ``fn`` under ``name`` with its network-evaluation count."""
    def add(fn: SamplerFn) -> SamplerFn:
        doc = description or (fn.__doc__ or "").strip().splitlines()[0]
        SAMPLERS.register(name, SamplerSpec(name, fn, nfe, doc))
        return fn
    return add


def sample(name: str, model: Model, schedule: NoiseSchedule, x_t: torch.Tensor, t_start: int,
           generator: torch.Generator | None = None, options: SamplerOptions | None = None) -> torch.Tensor:
    """Run the registered sampler ``name`` (the one dispatch point: no if/elif over sampler names)."""
    return SAMPLERS[name].fn(model, schedule, x_t, t_start, generator, options or SamplerOptions())


def network_evaluations(sampler: str, t_star: int, steps: int | None = None) -> int:
    """Model calls per image for purification from ``t_star``."""
    return SAMPLERS[sampler].nfe(t_star, steps)


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


def _report(options: SamplerOptions, i: int, schedule: NoiseSchedule, x: torch.Tensor, pred_xstart: torch.Tensor) -> None:
    if options.callback is not None:
        options.callback({"i": i, "t": int(schedule.timestep_map[i]), "x": x, "pred_xstart": pred_xstart})


def _ancestral_loop(model: Model, schedule: NoiseSchedule, x_t: torch.Tensor, t_start: int,
                    generator: torch.Generator | None, options: SamplerOptions) -> torch.Tensor:
    sched = schedule.to(x_t.device)
    x = x_t.float()
    with torch.set_grad_enabled(options.grad):
        for i in _steps(t_start, options.progress, "ancestral"):
            t = torch.full((x.shape[0],), i, device=x.device, dtype=torch.long)
            out = G.p_mean_variance(sched, _model_output(model, sched, x, t, options.autocast_dtype), x, t,
                                    options.clip_denoised)
            z = randn(x, generator)
            x = out["mean"] + torch.exp(0.5 * out["log_variance"]) * z if i > 0 else out["mean"]
            _report(options, i, schedule, x, out["pred_xstart"])
    return x


@register_sampler("ancestral", nfe=lambda t_star, steps: t_star,
                  description="every reverse step from t* (the paper and the official code; t* network calls)")
def ancestral(model: Model, schedule: NoiseSchedule, x_t: torch.Tensor, t_start: int,
              generator: torch.Generator | None = None, options: SamplerOptions | None = None) -> torch.Tensor:
    """improved-diffusion p_sample for every step t_start..0 (the paper's sampler; t* network calls)."""
    options = options or SamplerOptions()
    _check(schedule, t_start)
    if options.steps not in (None, t_start + 1):
        raise ValueError("the ancestral sampler takes all t_star steps; use sampler='respaced' for fewer")
    return _ancestral_loop(model, schedule, x_t, t_start, generator, options)


def _kept_steps(t_star: int, steps: int | None) -> int:
    return len(purification_timesteps(t_star, steps or t_star))


@register_sampler("respaced", nfe=_kept_steps,
                  description="ancestral over --steps evenly kept steps, respaced betas (improved-diffusion)")
def respaced(model: Model, schedule: NoiseSchedule, x_t: torch.Tensor, t_start: int,
             generator: torch.Generator | None = None, options: SamplerOptions | None = None) -> torch.Tensor:
    """Ancestral sampling over ``steps`` evenly kept steps in [0, t_start], respaced betas."""
    options = options or SamplerOptions()
    _check(schedule, t_start)
    sub, _ = respace(schedule, purification_timesteps(t_start + 1, options.steps or t_start + 1))
    return _ancestral_loop(model, sub, x_t, sub.num_timesteps - 1, generator, options)


@register_sampler("ddim", nfe=_kept_steps,
                  description="DDIM(eta) over --steps kept steps (eta 0: deterministic)")
def ddim(model: Model, schedule: NoiseSchedule, x_t: torch.Tensor, t_start: int,
         generator: torch.Generator | None = None, options: SamplerOptions | None = None) -> torch.Tensor:
    """DDIM(eta) over ``steps`` kept steps in [0, t_start] (all when None); eps from the clipped x0."""
    options = options or SamplerOptions()
    _check(schedule, t_start)
    sub, _ = respace(schedule, purification_timesteps(t_start + 1, options.steps or t_start + 1))
    sched = sub.to(x_t.device)
    x = x_t.float()
    with torch.set_grad_enabled(options.grad):
        for i in _steps(sched.num_timesteps - 1, options.progress, "ddim"):
            t = torch.full((x.shape[0],), i, device=x.device, dtype=torch.long)
            out = G.p_mean_variance(sched, _model_output(model, sched, x, t, options.autocast_dtype), x, t,
                                    options.clip_denoised)
            eps = G.predict_eps_from_xstart(sched, x, t, out["pred_xstart"])
            abar = G.extract(sched.alphas_cumprod, t, x)
            abar_prev = G.extract(sched.alphas_cumprod_prev, t, x)
            sigma = options.eta * torch.sqrt((1 - abar_prev) / (1 - abar)) * torch.sqrt(1 - abar / abar_prev)
            z = randn(x, generator)
            x = out["pred_xstart"] * abar_prev.sqrt() + torch.sqrt(1 - abar_prev - sigma**2) * eps
            if i > 0:
                x = x + sigma * z
            _report(options, i, sub, x, out["pred_xstart"])
    return x


@register_sampler("one_shot", nfe=lambda t_star, steps: 1,
                  description="the x0 prediction at t*, one network call (Carlini et al.'s one-shot denoiser)")
def one_shot(model: Model, schedule: NoiseSchedule, x_t: torch.Tensor, t_start: int,
             generator: torch.Generator | None = None, options: SamplerOptions | None = None) -> torch.Tensor:
    """One network call: the x0 prediction at t_start (Carlini et al.'s one-shot denoiser)."""
    del generator  # deterministic, single step
    options = options or SamplerOptions()
    _check(schedule, t_start)
    sched = schedule.to(x_t.device)
    x = x_t.float()
    with torch.set_grad_enabled(options.grad):
        t = torch.full((x.shape[0],), t_start, device=x.device, dtype=torch.long)
        out = G.p_mean_variance(sched, _model_output(model, sched, x, t, options.autocast_dtype), x, t,
                                options.clip_denoised)
    _report(options, t_start, schedule, out["pred_xstart"], out["pred_xstart"])
    return out["pred_xstart"]


def with_options(options: SamplerOptions | None, **changes) -> SamplerOptions:
    """``options`` (or the defaults) with some fields changed."""
    return replace(options or SamplerOptions(), **changes)

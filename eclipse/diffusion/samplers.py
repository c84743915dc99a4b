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
from .gaussian import Model, forward_noise, randn
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
    x0: torch.Tensor | None = None       # the input before noising (purify passes it), for samplers that keep
    #                                      its context or compare with it: masked, elixir; the others ignore it
    features: Callable[[torch.Tensor], torch.Tensor] | None = None   # [-1, 1] images -> (B, D): elixir's feature
    #                                      distance (eclipse.diffusion.selection.FeatureMap.fn); None: pixels only

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
    purifier: str = "diffusion"   # the weights it runs on: "diffusion" (the sparse DDPM) or "consistency" (its
    #                               one-step fine-tuning, eclipse.experiments.consistency_purifier)
    features: bool = False        # it chooses among candidates with a feature map (SamplerOptions.features, given
    #                               by eclipse.experiments.purifier_for: a classifier trained on the sparse set)


SAMPLERS: Registry[SamplerSpec] = Registry("sampler")


def register_sampler(name: str, nfe: Callable[[int, int | None], int], description: str | None = None,
                     purifier: str = "diffusion", features: bool = False):
    """Decorator: register ``fn`` under ``name`` with its network-evaluation count (and the weights and feature
    map it needs)."""
    def add(fn: SamplerFn) -> SamplerFn:
        doc = description or (fn.__doc__ or "").strip().splitlines()[0]
        SAMPLERS.register(name, SamplerSpec(name, fn, nfe, doc, purifier, features))
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
    # contiguous: a channels_last network's output would otherwise carry its layout into x, and randn_like(x) would
    # place the same draws elsewhere (the official code's noise follows NCHW)
    if autocast_dtype is None:
        return model(x, ts).float().contiguous()
    with torch.autocast(device_type=x.device.type, dtype=autocast_dtype):
        return model(x, ts).float().contiguous()


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


CHAINED_ROUNDS = 3   # rounds of `chained` when --steps is not given
MASK_PATCH = 8       # side of the square patches of `masked`'s two complementary checkerboard masks


@register_sampler("chained", nfe=lambda t_star, steps: steps or CHAINED_ROUNDS,
                  description=f"--steps rounds (default {CHAINED_ROUNDS}) of noise-to-t* and one-shot denoising, "
                              "each round from the last one's output (DataElixir-style chaining; --steps network calls)")
def chained(model: Model, schedule: NoiseSchedule, x_t: torch.Tensor, t_start: int,
            generator: torch.Generator | None = None, options: SamplerOptions | None = None) -> torch.Tensor:
    """``options.steps`` rounds (default ``CHAINED_ROUNDS``): denoise x_t in one shot, noise the estimate back to
    ``t_start`` with fresh noise, denoise again. DataElixir chains full reverse processes; rounds of the one-shot
    denoiser are its CPU-sized form (one network call a round). Reports each round's estimate (``i``: the round)."""
    options = options or SamplerOptions()
    _check(schedule, t_start)
    rounds = options.steps or CHAINED_ROUNDS
    inner = with_options(options, callback=None, steps=None)
    x = x_t
    for r in range(rounds):
        if r:
            x = forward_noise(schedule, x0_hat, t_start + 1, generator)
        x0_hat = one_shot(model, schedule, x, t_start, None, inner)
        if options.callback is not None:
            options.callback({"i": r, "t": int(schedule.timestep_map[t_start]), "x": x0_hat, "pred_xstart": x0_hat})
    return x0_hat


ELIXIR_ROUNDS = 5        # rounds of `elixir` when --steps is not given (DataElixir's rounds_n)
ELIXIR_ROUND_STEPS = 4   # reverse steps a round, each one's x0 prediction harvested (DataElixir: 150 steps, the
#                          last 10 states kept); 4 a round: 20 candidates at 5 rounds, so the 0.8 quantile leaves
#                          farther ones (one candidate a round made the choice always the last round: chained)


def _elixir_nfe(t_star: int, steps: int | None) -> int:
    return (steps or ELIXIR_ROUNDS) * _kept_steps(t_star, min(ELIXIR_ROUND_STEPS, t_star))


@register_sampler("elixir", nfe=_elixir_nfe, features=True,
                  description=f"DataElixir-style: --steps chained rounds (default {ELIXIR_ROUNDS}) of a "
                              f"{ELIXIR_ROUND_STEPS}-step respaced reverse process from t*, every step's x0 prediction "
                              "harvested, per image the candidate at the 0.8 quantile of 0.5(1-SSIM')+0.5(1-cos') to "
                              "the input, features of a classifier trained on the sparse clean set "
                              f"({ELIXIR_ROUND_STEPS} x --steps network calls)")
def elixir(model: Model, schedule: NoiseSchedule, x_t: torch.Tensor, t_start: int,
           generator: torch.Generator | None = None, options: SamplerOptions | None = None) -> torch.Tensor:
    """Chained purification with DataElixir's harvest and per-image choice. ``options.steps`` rounds (default
    ``ELIXIR_ROUNDS``): a :func:`respaced` reverse process of ``ELIXIR_ROUND_STEPS`` steps from ``t_start``, its
    output noised back to ``t_start`` for the next round (all t_start + 1 steps when fewer). Every step's x0 prediction is a candidate (DataElixir
    keeps the last 10 of 150 states, x_9..x_0, all nearly clean; four steps from t* leave the states noisy, their
    x0 predictions are not), and per image :func:`eclipse.diffusion.selection.choose_at_quantile` picks by
    :func:`~eclipse.diffusion.selection.elixir_distance` to ``options.x0`` with ``options.features``. With
    K = 4 x rounds candidates the 0.8 quantile's rank floor(0.8 K) leaves farther ones (K >= 5; DataElixir's 50
    leave ten). Reports every step (``i``: the step within its round) like ``respaced``."""
    from .selection import choose_at_quantile, elixir_distance

    options = options or SamplerOptions()
    _check(schedule, t_start)
    if options.x0 is None or options.x0.shape != x_t.shape:
        raise ValueError("the elixir sampler compares each candidate with the un-noised input: it needs options.x0 "
                         "of the same shape as x_t (eclipse.purify.purify_batch passes it)")
    candidates: list[torch.Tensor] = []

    def harvest(state: dict) -> None:
        candidates.append(state["pred_xstart"])
        if options.callback is not None:
            options.callback(state)
    round_options = with_options(options, steps=min(ELIXIR_ROUND_STEPS, t_start + 1), callback=harvest)
    x = x_t
    for r in range(options.steps or ELIXIR_ROUNDS):
        if r:
            x = forward_noise(schedule, x, t_start + 1, generator)
        x = respaced(model, schedule, x, t_start, generator, round_options)
    stacked = torch.stack(candidates)
    return choose_at_quantile(stacked, elixir_distance(stacked, options.x0, options.features))


def checkerboard_masks(height: int, width: int, patch: int = MASK_PATCH,
                       device: torch.device | str | None = None) -> torch.Tensor:
    """Two complementary (2, 1, H, W) float masks of ``patch`` x ``patch`` squares in a checkerboard: every pixel
    is masked (1) in exactly one of them."""
    rows = torch.arange(height, device=device) // patch
    cols = torch.arange(width, device=device) // patch
    first = ((rows[:, None] + cols[None, :]) % 2 == 0).float()
    return torch.stack([first, 1 - first])[:, None]


def _masked_steps(t_star: int, steps: int | None) -> int:
    return 2 * _kept_steps(t_star, steps)


@register_sampler("masked", nfe=_masked_steps,
                  description=f"IMPure-inspired: two complementary checkerboard masks of {MASK_PATCH}x{MASK_PATCH} "
                              "patches, the masked patches regenerated by respaced reverse steps from their "
                              "context (RePaint-style inpainting), stitched (2 x --steps network calls)")
def masked(model: Model, schedule: NoiseSchedule, x_t: torch.Tensor, t_start: int,
           generator: torch.Generator | None = None, options: SamplerOptions | None = None) -> torch.Tensor:
    """Masked purification (inspired by IMPure's masked-patch reconstruction; not its code or model).

    For each of two complementary checkerboard masks (:func:`checkerboard_masks`), the respaced reverse process
    runs from ``x_t`` over ``options.steps`` kept steps (all when None); after every step the visible patches
    are replaced by the input ``options.x0`` noised to that step's level (RePaint's known-region update), so the
    masked patches are regenerated from their context. Each pixel of the result comes from the pass in which
    it was masked. Needs ``options.x0``; noise comes from ``generator`` (per image under ``PerImageNoise``)."""
    options = options or SamplerOptions()
    _check(schedule, t_start)
    if options.x0 is None or options.x0.shape != x_t.shape:
        raise ValueError("the masked sampler needs the un-noised input of the same shape as x_t (options.x0); "
                         "eclipse.purify.purify_batch passes it")
    sub, _ = respace(schedule, purification_timesteps(t_start + 1, options.steps or t_start + 1))
    sched = sub.to(x_t.device)
    x0 = options.x0.float()
    masks = checkerboard_masks(x_t.shape[-2], x_t.shape[-1], device=x_t.device)
    out = torch.zeros_like(x0)
    with torch.set_grad_enabled(options.grad):
        for k, mask in enumerate(masks):
            x = x_t.float()
            for i in _steps(sched.num_timesteps - 1, options.progress, f"masked {k + 1}/2"):
                t = torch.full((x.shape[0],), i, device=x.device, dtype=torch.long)
                res = G.p_mean_variance(sched, _model_output(model, sched, x, t, options.autocast_dtype), x, t,
                                        options.clip_denoised)
                z = randn(x, generator)
                x = res["mean"] + torch.exp(0.5 * res["log_variance"]) * z if i > 0 else res["mean"]
                if i > 0:  # the visible patches: the input noised to the level of x_{i-1}
                    abar_prev = G.extract(sched.alphas_cumprod_prev, t, x)
                    known = abar_prev.sqrt() * x0 + (1 - abar_prev).sqrt() * randn(x, generator)
                else:
                    known = x0
                x = mask * x + (1 - mask) * known
                _report(options, i, sub, x, res["pred_xstart"])
            out = out + mask * x
    return out


@register_sampler("consistency", nfe=lambda t_star, steps: 1, purifier="consistency",
                  description="one network call on the sparse model fine-tuned into a one-step purifier "
                              "(Consistency Purification's idea; eclipse.diffusion.consistency)")
def consistency(model: Model, schedule: NoiseSchedule, x_t: torch.Tensor, t_start: int,
                generator: torch.Generator | None = None, options: SamplerOptions | None = None) -> torch.Tensor:
    """The one-step x0 estimate at t_start from the consistency-fine-tuned weights (the caller passes them:
    :func:`eclipse.experiments.consistency_purifier`); the same computation as ``one_shot``."""
    return one_shot(model, schedule, x_t, t_start, generator, options)


def with_options(options: SamplerOptions | None, **changes) -> SamplerOptions:
    """``options`` (or the defaults) with some fields changed."""
    return replace(options or SamplerOptions(), **changes)

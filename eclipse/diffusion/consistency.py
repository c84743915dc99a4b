"""Consistency purification's one-step purifier, for the sparse model (after Consistency Purification, NeurIPS 2024).

The purifier is a copy of the sparse DDPM fine-tuned on the sparse clean set so that its one-step x0 estimate
from x_t (t drawn in a band around t*) lands on the clean image: the loss is the pseudo-Huber distance
``sqrt(||f(x_t) - x0||^2 + c^2) - c`` (Song & Dhariwal 2023's choice, ``c = 0.00054 sqrt(d)``), which needs no
downloaded network. Purification with it is the one-shot sampler on the fine-tuned weights (``--sampler
consistency``: one network call per image).

Where this departs from the paper: Consistency Purification starts from a consistency model distilled from EDM
(not a DDPM), purifies at much larger noise and fine-tunes with LPIPS, a perceptual distance from an ImageNet
network. Here the start is the sparse improved-diffusion UNet (its x0 prediction through the epsilon output),
the band is around ECLIPSE's t*, and the distance is pixel-space pseudo-Huber. LPIPS needs downloaded ImageNet
weights; its place can be taken by an optional perceptual term from a network the package trains itself
(``perceptual`` > 0): ``perceptual * (1 - cos(phi(f(x_t)), phi(x0)))`` with ``phi`` the pooled features of the
profile's victim trained on the same sparse clean set (:func:`eclipse.experiments.sparse_features`).

Training is resumable bit for bit: data order, timesteps, noise and flips come from one seeded generator whose
state is checkpointed with the weights, optimiser and EMA (written atomically every ``checkpoint_every`` steps).
"""
from __future__ import annotations

import copy
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..seeding import make_generator
from ..storage import atomic_torch_save, safe_torch_load, tensor_hash
from ..validation import check_images
from . import gaussian as G
from .gaussian import Model, to_model_range
from .schedule import NoiseSchedule
from .selection import FeatureMap

CHECKPOINT_NAME = "consistency.pt"


@dataclass(frozen=True)
class ConsistencyConfig:
    """Fine-tuning knobs. ``band``: t is drawn uniformly from the schedule indices
    ``[(1 - band) t*, (1 + band) t*]`` (clipped to the schedule); ``huber_c`` None: ``0.00054 sqrt(C H W)``;
    ``perceptual``: weight of the feature term (0: pixels only; needs a feature map)."""

    iterations: int = 2000
    batch_size: int = 64
    lr: float = 2e-5
    band: float = 0.5
    huber_c: float | None = None
    ema_rate: float = 0.999
    checkpoint_every: int = 200
    seed: int = 0
    perceptual: float = 0.0

    def __post_init__(self) -> None:
        if self.iterations < 0 or self.batch_size < 1 or self.checkpoint_every < 1:
            raise ValueError("iterations >= 0, batch_size >= 1 and checkpoint_every >= 1 are required")
        if not 0 <= self.band <= 1:
            raise ValueError(f"band must lie in [0, 1] (a fraction of t*), got {self.band}")
        if not (self.perceptual >= 0 and math.isfinite(self.perceptual)):
            raise ValueError(f"perceptual must be a finite weight >= 0, got {self.perceptual}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"lr must be a positive number, got {self.lr}")

    def to_dict(self) -> dict:
        """The settings; ``perceptual`` only when on (so pixel-only fine-tunings keep their identity)."""
        out = asdict(self)
        if not self.perceptual:
            del out["perceptual"]
        return out


def pseudo_huber(a: torch.Tensor, b: torch.Tensor, c: float) -> torch.Tensor:
    """Per-sample ``sqrt(||a - b||^2 + c^2) - c``."""
    return torch.sqrt((a - b).flatten(1).square().sum(1) + c * c) - c


def one_step_x0(model: Model, schedule: NoiseSchedule, x_t: torch.Tensor, t: torch.Tensor,
                clip: bool = False) -> torch.Tensor:
    """The model's x0 estimate from ``x_t`` at schedule indices ``t`` (one network call)."""
    out = model(x_t, G.model_timesteps(schedule, t)).float()
    return G.p_mean_variance(schedule, out, x_t, t, clip)["pred_xstart"]


def timestep_band(t_star: int, band: float, num_timesteps: int) -> tuple[int, int]:
    """The schedule indices ``[lo, hi]`` fine-tuning draws t from (purification from t* uses index t* - 1)."""
    lo = max(0, int(round((1 - band) * t_star)) - 1)
    hi = min(num_timesteps - 1, max(lo, int(round((1 + band) * t_star)) - 1))
    return lo, hi


def finetune_consistency(base: torch.nn.Module, schedule: NoiseSchedule, images: torch.Tensor, cfg: ConsistencyConfig,
                         *, t_star: int, out_dir: str | os.PathLike, device: torch.device | str = "cpu",
                         progress: bool = True, features: "FeatureMap | None" = None,
                         ) -> tuple[torch.nn.Module, list[float]]:
    """Fine-tune a copy of ``base`` (left untouched) on the clean uint8 ``images`` into a one-step purifier
    for depth ``t_star``; returns (EMA model in eval mode, per-step losses). A rerun with the same inputs
    resumes from ``out_dir/consistency.pt``; one with other inputs is refused. ``features``: the feature map of
    the perceptual term (a :class:`~eclipse.diffusion.selection.FeatureMap` whose ``fn`` keeps gradients),
    required when ``cfg.perceptual`` > 0."""
    check_images(images, channels=None)
    if cfg.perceptual and features is None:
        raise ValueError(f"perceptual = {cfg.perceptual}: the perceptual term needs a feature map (features=)")
    device = torch.device(device)
    sched = schedule.to(device)
    lo, hi = timestep_band(t_star, cfg.band, schedule.num_timesteps)
    c = cfg.huber_c if cfg.huber_c is not None else 0.00054 * math.sqrt(images[0].numel())
    data = to_model_range(images.cpu()).to(device)
    free = ("iterations", "checkpoint_every")   # a longer run continues a shorter one's state
    identity = {"config": {k: v for k, v in cfg.to_dict().items() if k not in free}, "t_star": int(t_star), "images": tensor_hash(images),
                "base": tensor_hash(*base.state_dict().values())}
    if cfg.perceptual:
        identity["features"] = features.key
    path = Path(out_dir) / CHECKPOINT_NAME
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(cfg.seed)
        student = copy.deepcopy(base).to(device).train().requires_grad_(True)
        opt = torch.optim.Adam(student.parameters(), lr=cfg.lr)
        ema = copy.deepcopy(student).eval().requires_grad_(False)
        gen = make_generator(cfg.seed + 7)
        step, losses = 0, []
        if path.exists():
            saved = safe_torch_load(path)
            if not isinstance(saved, dict) or saved.get("identity") != identity:
                raise ValueError(f"{path}: a consistency fine-tuning of other inputs (model, images, t* or "
                                 "settings); use a fresh folder")
            student.load_state_dict(saved["model"])
            ema.load_state_dict(saved["ema"])
            opt.load_state_dict(saved["optimizer"])
            gen.set_state(saved["generator"])
            torch.set_rng_state(saved["torch_rng"])
            step, losses = int(saved["step"]), list(saved["losses"])

        def save() -> None:
            cpu = {k: v.detach().cpu() for k, v in student.state_dict().items()}
            atomic_torch_save({"identity": identity, "model": cpu,
                               "ema": {k: v.detach().cpu() for k, v in ema.state_dict().items()},
                               "optimizer": opt.state_dict(), "generator": gen.get_state(),
                               "torch_rng": torch.get_rng_state(), "step": step, "losses": losses}, path)

        bar = tqdm(total=cfg.iterations, initial=min(step, cfg.iterations), disable=not progress,
                   desc=f"consistency t*={t_star}")
        while step < cfg.iterations:
            idx = torch.randint(0, len(data), (cfg.batch_size,), generator=gen)
            t = torch.randint(lo, hi + 1, (cfg.batch_size,), generator=gen)
            noise = torch.randn((cfg.batch_size, *data.shape[1:]), generator=gen)
            flip = torch.rand(cfg.batch_size, generator=gen) < 0.5
            x0 = data[idx.to(device)]
            x0 = torch.where(flip.to(device).view(-1, 1, 1, 1), x0.flip(3), x0)
            t, noise = t.to(device), noise.to(device)
            x_t = G.q_sample(sched, x0, t, noise)
            estimate = one_step_x0(student, sched, x_t, t)
            loss = pseudo_huber(estimate, x0, c).mean()
            if cfg.perceptual:
                with torch.no_grad():
                    target = features.fn(x0)
                cos = torch.nn.functional.cosine_similarity(features.fn(estimate.clamp(-1, 1)), target, dim=1)
                loss = loss + cfg.perceptual * (1 - cos).mean()
            if not torch.isfinite(loss):
                bar.close()
                where = f"last good state in {path}" if path.exists() else "no state saved yet"
                raise FloatingPointError(f"consistency fine-tuning: non-finite loss at step {step + 1}; {where}")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            with torch.no_grad():
                for e, p in zip(ema.parameters(), student.parameters()):
                    e.mul_(cfg.ema_rate).add_(p.detach(), alpha=1 - cfg.ema_rate)
            step += 1
            losses.append(float(loss.detach()))
            bar.update(1)
            if step % cfg.checkpoint_every == 0 or step == cfg.iterations:
                save()
        bar.close()
        if not path.exists():
            save()
    return ema.eval(), losses

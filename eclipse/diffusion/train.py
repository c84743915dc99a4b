"""Sparse-set diffusion training (ECLIPSE step 2), improved-diffusion style, resumable bit-for-bit.

The defender's B clean images are enlarged to D_A (plain replication: D_s repeated M+1 times;
or D_s plus M augmented copies for Fig. 3's crop/flip/rotation/mixup), then an unconditional
UNet is trained with the hybrid loss, AdamW and an EMA. All randomness (enlargement, data
order, timesteps, noise, dropout) comes from seeded generators whose states are checkpointed,
so a run killed and rerun gives the same weights as an uninterrupted one (on CPU).

Under torchrun (``torch.distributed`` initialised, world size W) the training is data-parallel (DDP):
``batch_size`` is per process, the global batch is ``batch_size x W``; every rank draws the same global batch
(indices, timesteps, noise) from the shared seeded generator and trains on its slice, DDP averages the
gradients, so W ranks of batch b follow 1 rank of batch W*b (within float tolerance; dropout, drawn per rank,
is 0 in every profile). Rank 0 writes the checkpoints; every rank resumes from them.

Documented deviation: ``t_max`` trains only on t <= t_max (the paper samples t uniformly in
[0, T)); purification from t* only queries t < t*, so CPU profiles spend their budget there.
"""
from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .. import distributed
from ..seeding import default_device, make_generator
from ..storage import tensor_hash
from ..validation import check_images
from .checkpoints import DiffusionSettings, load_checkpoint, save_checkpoint, schedule_from_settings
from .gaussian import to_model_range, training_losses
from .runtime import UNetRuntime, prepare_unet
from .unet import UNetConfig, UNetModel, build_unet

ENLARGEMENTS = ("replicate", "crop", "flip", "rotation", "mixup")
CHECKPOINT_NAME = "checkpoint.pt"


@dataclass
class DiffusionTrainConfig:
    """Knobs of sparse-set training; paper values are the defaults except the model size/iterations."""

    unet: UNetConfig = field(default_factory=UNetConfig)
    diffusion: DiffusionSettings = field(default_factory=DiffusionSettings)
    replicas: int = 4  # M: D_A holds D_s plus M copies (replicated or augmented)
    enlargement: str = "replicate"  # one of ENLARGEMENTS
    lr: float = 1e-4
    weight_decay: float = 0.0
    ema_rate: float = 0.9999
    batch_size: int = 128
    iterations: int = 250_000
    t_max: int | None = None  # train only on t <= t_max (deviation for CPU profiles)
    checkpoint_every: int = 10_000
    seed: int = 0
    rotation_degrees: float = 15.0
    crop_padding: int = 4

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["unet"] = self.unet.to_dict()
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "DiffusionTrainConfig":
        data = dict(data)
        data["unet"] = UNetConfig.from_dict(data.get("unet", {}))
        data["diffusion"] = DiffusionSettings.from_dict(data.get("diffusion", {}))
        return cls(**data)


@dataclass
class TrainResult:
    model: UNetModel  # final online weights
    ema: UNetModel  # EMA weights (what purification uses)
    step: int
    losses: list[float]  # mean training loss per step, from step 1
    checkpoint: Path


# ---------------------------------------------------------------- data enlargement

def _crop(x: torch.Tensor, pad: int, g: torch.Generator) -> torch.Tensor:
    n, _, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=g)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=g)
    rows = (dy[:, None] + torch.arange(h))[:, None, :, None].expand(n, x.shape[1], h, w + 2 * pad)
    out = padded.gather(2, rows)
    cols = (dx[:, None] + torch.arange(w))[:, None, None, :].expand(n, x.shape[1], h, w)
    return out.gather(3, cols)


def _rotate(x: torch.Tensor, degrees: float, g: torch.Generator) -> torch.Tensor:
    n = x.shape[0]
    angle = (torch.rand(n, generator=g, dtype=torch.float64) * 2 - 1) * math.radians(degrees)
    cos, sin = angle.cos().float(), angle.sin().float()
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0], theta[:, 0, 1], theta[:, 1, 0], theta[:, 1, 1] = cos, -sin, sin, cos
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def enlarge(images: torch.Tensor, replicas: int, mode: str = "replicate", *, seed: int = 0,
            rotation_degrees: float = 15.0, crop_padding: int = 4) -> torch.Tensor:
    """D_A from the sparse set D_s (uint8): D_s followed by ``replicas`` copies, plain or augmented."""
    if mode not in ENLARGEMENTS:
        raise ValueError(f"unknown enlargement {mode!r}; expected one of {ENLARGEMENTS}")
    if replicas < 0:
        raise ValueError("replicas must be >= 0")
    if mode == "replicate":
        return images.repeat(replicas + 1, 1, 1, 1)
    g = make_generator(seed)
    copies = [images]
    for _ in range(replicas):
        x = images.float()
        if mode == "crop":
            x = _crop(x, crop_padding, g)
        elif mode == "flip":
            flip = torch.rand(x.shape[0], generator=g) < 0.5
            x = torch.where(flip[:, None, None, None], x.flip(3), x)
        elif mode == "rotation":
            x = _rotate(x, rotation_degrees, g)
        else:  # mixup of two images of the set, lambda ~ Beta(1, 1) = U(0, 1)
            partner = torch.randperm(x.shape[0], generator=g)
            lam = torch.rand(x.shape[0], generator=g)[:, None, None, None]
            x = lam * x + (1 - lam) * x[partner]
        copies.append(x.round().clamp(0, 255).to(torch.uint8))
    return torch.cat(copies)


# ---------------------------------------------------------------- training loop

def _next_batch(perm: torch.Tensor, pos: int, n: int, batch_size: int,
                gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Next ``batch_size`` indices from epochs of shuffled D_A (a shuffling, non-dropping loader)."""
    parts, need = [], batch_size
    while need:
        take = min(need, n - pos)
        parts.append(perm[pos:pos + take])
        pos, need = pos + take, need - take
        if pos == n:
            perm, pos = torch.randperm(n, generator=gen), 0
    return torch.cat(parts), perm, pos


@torch.no_grad()
def _update_ema(ema: list[torch.Tensor], params: list[torch.Tensor], rate: float) -> None:
    for e, p in zip(ema, params):
        e.mul_(rate).add_(p.detach(), alpha=1 - rate)


def _ema_state(model: UNetModel, ema: list[torch.Tensor]) -> dict[str, torch.Tensor]:
    names = [n for n, _ in model.named_parameters()]
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    state.update({n: e.detach().cpu().clone() for n, e in zip(names, ema)})
    return state


def _cpu_state(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone() for k, v in sd.items()}


def _compatible(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    free = {"iterations", "checkpoint_every"}
    return [k for k in current if k not in free and saved.get(k) != current[k]]


LOSS_WINDOW = 100   # training steps whose losses are read from the device at once


def _autocast(net: Callable, dtype: torch.dtype | None, device_type: str) -> Callable:
    """``net`` with its forward pass under autocast to ``dtype`` and a float32 output (the loss stays fp32)."""
    if dtype is None:
        return net

    def forward(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type=device_type, dtype=dtype):
            return net(x, t).float()
    return forward


def train_diffusion(images: torch.Tensor, cfg: DiffusionTrainConfig, out_dir: str | os.PathLike, *,
                    device: torch.device | str | None = None, progress: bool = True,
                    on_step: Callable[[int, UNetModel], None] | None = None,
                    runtime: UNetRuntime | None = None) -> TrainResult:
    """Train (or resume training of) a diffusion model on the sparse set ``images`` (uint8, N,3,H,W).

    Checkpoints go to ``out_dir/checkpoint.pt`` every ``checkpoint_every`` steps and at the end;
    a rerun with the same data and config (``iterations`` may grow) resumes from it. A non-finite
    loss raises ``FloatingPointError`` (naming its step; losses are read from the device before each checkpoint and
    every ``LOSS_WINDOW`` steps) and leaves the last good checkpoint in place. ``on_step``
    is called after each optimiser step with (step, model). ``runtime``: the UNet's precision (bf16 autocast of
    the forward pass), memory format and compilation (:mod:`eclipse.diffusion.runtime`; default fp32 eager); a
    checkpoint resumes only under the runtime it was trained with.
    """
    check_images(images, channels=None)
    runtime = runtime or UNetRuntime()
    if images.shape[-1] != cfg.unet.image_size:
        raise ValueError(f"images are {images.shape[-1]} px but unet.image_size={cfg.unet.image_size}")
    device = torch.device(device) if device is not None else default_device()
    out_dir = Path(out_dir)
    ckpt_path = out_dir / CHECKPOINT_NAME
    schedule = schedule_from_settings(cfg.diffusion).to(device)
    t_hi = schedule.num_timesteps if cfg.t_max is None else min(int(cfg.t_max) + 1, schedule.num_timesteps)
    data = enlarge(images.cpu(), cfg.replicas, cfg.enlargement, seed=cfg.seed,
                   rotation_degrees=cfg.rotation_degrees, crop_padding=cfg.crop_padding)
    data = to_model_range(data).to(device)
    fingerprint = tensor_hash(images)
    cfg_dict = cfg.to_dict()
    rank, world_size = distributed.world()
    parallel = world_size > 1 and torch.distributed.is_available() and torch.distributed.is_initialized()
    if not parallel:
        rank, world_size = 0, 1

    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(cfg.seed)  # model init and dropout draw from the (forked) global stream
        model = prepare_unet(build_unet(cfg.unet).to(device), replace(runtime, compile=False), inplace=True)
        opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        params = list(model.parameters())
        ema = [p.detach().clone() for p in params]
        gen = make_generator(cfg.seed + 1)  # data order, timesteps, noise
        perm, pos, step, losses = torch.randperm(len(data), generator=gen), 0, 0, []
        if ckpt_path.exists():
            ck = load_checkpoint(ckpt_path)
            extra = ck["extra"]
            bad = _compatible(extra.get("train_config", {}), cfg_dict)
            if extra.get("unet_runtime", {}) != runtime.key():
                bad = bad + [f"UNet runtime {extra.get('unet_runtime', {}) or 'fp32'} (now {runtime.label()})"]
            if extra.get("world_size", 1) != world_size:
                bad = bad + [f"world size {extra.get('world_size', 1)} (now {world_size}: another global batch)"]
            if bad or extra.get("images") != fingerprint:
                raise ValueError(f"{ckpt_path}: checkpoint is from another run (differs in "
                                 f"{bad or ['images']}); use a fresh out_dir")
            model.load_state_dict(ck["model"])
            opt.load_state_dict(ck["optimizer"])
            ema = [ck["ema"][n].to(device).clone() for n, _ in model.named_parameters()]
            step, perm, pos = int(ck["step"]), extra["perm"].clone(), int(extra["pos"])
            losses = list(extra["losses"])
            gen.set_state(extra["generator"])
            torch.set_rng_state(extra["torch_rng"])
            if device.type == "cuda" and extra.get("cuda_rng") is not None:
                torch.cuda.set_rng_state(extra["cuda_rng"], device)

        def save() -> None:
            if rank != 0:
                return
            extra = {
                "train_config": cfg_dict, "unet_runtime": runtime.key(), "world_size": world_size,
                "images": fingerprint, "perm": perm, "pos": pos, "losses": losses,
                "generator": gen.get_state(), "torch_rng": torch.get_rng_state(),
                "cuda_rng": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
            }
            save_checkpoint(ckpt_path, model=_cpu_state(model.state_dict()), ema=_ema_state(model, ema),
                            unet_config=cfg.unet, diffusion=cfg.diffusion, step=step,
                            optimizer=opt.state_dict(), extra=extra)

        # The per-step losses stay on the device and are read LOSS_WINDOW steps at a time (and before each
        # checkpoint): one host sync, and under DDP one all-reduce, per window instead of per step.
        pending: list[torch.Tensor] = []

        def flush() -> None:
            if not pending:
                return
            window = torch.stack(pending)
            if parallel:   # the global batch's mean loss, the number one process would log
                torch.distributed.all_reduce(window)
                window = window / world_size
            values, first = window.tolist(), step - len(pending) + 1
            pending.clear()
            for offset, value in enumerate(values):
                if not math.isfinite(value):
                    bar.close()
                    where = (f"last good checkpoint kept at {ckpt_path}" if ckpt_path.exists()
                             else "no checkpoint written yet")
                    raise FloatingPointError(f"diffusion training: non-finite loss ({value}) at step {first + offset}; "
                                             f"{where}")
            losses.extend(values)
            bar.set_postfix(loss=round(values[-1], 4))

        model.train()
        net = torch.nn.parallel.DistributedDataParallel(model) if parallel else model
        net = _autocast(torch.compile(net) if runtime.compile else net, runtime.autocast_dtype, device.type)
        mine = slice(rank * cfg.batch_size, (rank + 1) * cfg.batch_size)   # this rank's part of the global batch
        bar = tqdm(total=cfg.iterations, initial=min(step, cfg.iterations), disable=not progress or rank != 0,
                   desc="diffusion")
        while step < cfg.iterations:
            idx, perm, pos = _next_batch(perm, pos, len(data), cfg.batch_size * world_size, gen)
            t = torch.randint(0, t_hi, (len(idx),), generator=gen)
            noise = torch.randn((len(idx), *data.shape[1:]), generator=gen)
            x0, t, noise = data[idx[mine].to(device)], t[mine].to(device), noise[mine].to(device)
            loss = training_losses(net, schedule, x0, t, noise)["loss"].mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            _update_ema(ema, params, cfg.ema_rate)
            step += 1
            pending.append(loss.detach())
            bar.update(1)
            if on_step is not None:
                on_step(step, model)
            if step % cfg.checkpoint_every == 0 or step == cfg.iterations:
                flush()   # a checkpoint is written only after every loss before it was read and found finite
                save()
            elif len(pending) >= LOSS_WINDOW:
                flush()
        flush()
        bar.close()
        if not ckpt_path.exists():
            save()
        if parallel:
            torch.distributed.barrier()   # rank 0's checkpoint is written before any rank goes on
    model.eval()
    ema_model = build_unet(cfg.unet).to(device)
    ema_model.load_state_dict(_ema_state(model, ema))
    ema_model.requires_grad_(False).eval()
    return TrainResult(model=model, ema=ema_model, step=step, losses=losses, checkpoint=ckpt_path)

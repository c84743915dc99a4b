"""The one victim training loop: tensor-level augmentation on whole batches, resumable, seeded.

The paper's recipe (ECLIPSE ``train.py``): SGD lr 0.1, momentum 0.9, no weight decay, no schedule,
batch 128, 80 epochs, random crop (pad 4, zeros) + horizontal flip, no normalisation, last-epoch
test accuracy. CPU profiles may switch the schedule to one-cycle and shrink the model; the loop is
the same.
"""
from __future__ import annotations

import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .data import ImageSet
from .defenses import Defense, make_defense
from .seeding import default_device, native_bf16, seed_everything
from .storage import atomic_torch_save, atomic_write_json, safe_torch_load
from .victims import build_victim


@dataclass(frozen=True)
class TrainConfig:
    """Victim training settings (defaults: the paper's)."""

    arch: str = "resnet18"
    width: int = 64
    epochs: int = 80
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 0.0
    schedule: str = "constant"  # "constant" (paper), "onecycle" or "multistep" (x0.1 at each of milestones)
    milestones: tuple[float, ...] = ()  # multistep: fractions of the epochs, e.g. (0.625, 0.75) = 75, 90 of 120
    nesterov: bool = False
    max_grad_norm: float | None = None  # clip the gradient norm (EM's surrogate: 5)
    crop_padding: int = 4       # 0 disables the random crop
    flip: bool = True
    eval_every: int = 5
    eval_batch_size: int = 1000
    label_smoothing: float = 0.0
    precision: str = "fp32"     # "fp32" or "bf16" (autocast; ~1.5x on CPUs with AVX512-BF16, deterministic)


def random_crop(x: torch.Tensor, padding: int) -> torch.Tensor:
    """Per-image random crop of a zero-padded batch (torchvision RandomCrop(32, padding) on each image)."""
    if padding <= 0:
        return x
    n, c, h, w = x.shape
    padded = F.pad(x, (padding,) * 4)
    oy = torch.randint(0, 2 * padding + 1, (n, 1))   # drawn on the CPU generator (seeded, checkpointed)
    ox = torch.randint(0, 2 * padding + 1, (n, 1))
    rows = (oy + torch.arange(h)).view(n, 1, h, 1).to(x.device)
    cols = (ox + torch.arange(w)).view(n, 1, 1, w).to(x.device)
    index_n = torch.arange(n, device=x.device).view(n, 1, 1, 1)
    return padded[index_n, torch.arange(c, device=x.device).view(1, c, 1, 1), rows, cols]


def random_flip(x: torch.Tensor) -> torch.Tensor:
    """Flip each image horizontally with probability 1/2."""
    flip = (torch.rand(x.shape[0]) < 0.5).view(-1, 1, 1, 1).to(x.device)
    return torch.where(flip, x.flip(3), x)


@torch.no_grad()
def evaluate(model: torch.nn.Module, test: ImageSet, batch_size: int = 1000, device: torch.device | None = None) -> float:
    """Top-1 accuracy (%) of ``model`` on ``test``."""
    device = device or next(model.parameters()).device
    was_training = model.training
    model.eval()
    correct = 0
    for images, labels in zip(test.images.split(batch_size), test.labels.split(batch_size)):
        logits = model(images.to(device).float().div_(255).contiguous(memory_format=torch.channels_last))
        correct += int((logits.argmax(1).cpu() == labels).sum())
    model.train(was_training)
    return 100.0 * correct / len(test)


def _autocast(precision: str, device: torch.device):
    """Mixed precision context for the forward pass (``fp32``: none)."""
    if precision == "fp32":
        return torch.autocast(device.type, enabled=False)
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    raise ValueError(f"unknown precision {precision!r} (fp32 or bf16)")


def sgd_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor, target: torch.Tensor, *,
             precision: str = "fp32", device: torch.device | None = None,
             label_smoothing: float = 0.0, max_grad_norm: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimisation step of ``model`` on the batch ``x`` (float in [0, 1]) with cross-entropy toward
    ``target`` (class indices or soft labels). Returns the (detached) loss and logits. The victim loop and the
    model-based attacks' surrogate updates share it."""
    device = device or next(model.parameters()).device
    with _autocast(precision, device):
        logits = model(x.detach().to(device, memory_format=torch.channels_last))
        loss = F.cross_entropy(logits.float(), target.to(device), label_smoothing=label_smoothing)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if max_grad_norm is not None:
        torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
    optimizer.step()
    return loss.detach(), logits.detach()


def trained_model(out_dir: str | Path, config: TrainConfig, num_classes: int,
                  device: torch.device | str | None = None) -> torch.nn.Module:
    """The network of a run that :func:`train_victim` wrote to ``out_dir`` (its last epoch), in eval mode."""
    ckpt_path = Path(out_dir) / "checkpoint.pt"
    if not ckpt_path.exists():
        raise FileNotFoundError(f"{ckpt_path}: no trained run here")
    state = safe_torch_load(ckpt_path)
    model = build_victim(config.arch, num_classes, config.width)
    adapt = make_defense(state["identity"]["defense"], num_classes=num_classes).adapt_model
    model = adapt(model) if adapt is not None else model     # DP-SGD's group-norm network
    model.load_state_dict(state["model"])
    return model.to(device or default_device()).eval()


def _save_checkpoint(state: dict, path: Path) -> None:
    atomic_torch_save(state, path)


def train_victim(train: ImageSet, test: ImageSet, config: TrainConfig, *, defense: Defense | str = "none",
                 seed: int = 0, out_dir: str | Path | None = None, device: torch.device | str | None = None,
                 progress: bool = True,
                 on_epoch: Callable[[int, torch.nn.Module], None] | None = None) -> dict:
    """Train ``config.arch`` on ``train`` with ``defense``; return a result dict with the last-epoch
    ``test_acc`` (%) on ``test``, the per-epoch log and the wall time.

    With ``out_dir`` the run checkpoints after every epoch (atomically) and resumes from the last
    checkpoint when called again with the same arguments; the finished result is ``result.json``.
    ``on_epoch(epoch, model)`` runs after each epoch (1-based) and before that epoch's checkpoint, so a
    resumed run calls it for every epoch exactly once (SEP keeps its ensemble's snapshots this way).
    """
    defense = make_defense(defense, num_classes=len(train.classes)) if isinstance(defense, str) else defense
    _autocast(config.precision, torch.device("cpu"))  # fail early on a bad name
    device = torch.device(device) if device is not None else default_device()
    if config.precision == "bf16" and device.type == "cpu" and not native_bf16():
        warnings.warn("bf16 autocast on a CPU without AVX512-BF16/AMX is emulated, several times slower than fp32 "
                      "(`--precision fp32`; results then differ within the victim-seed spread)", stacklevel=2)
    identity = {"config": asdict(config), "defense": defense.name, "defense_params": dict(defense.params),
                "seed": seed, "n_train": len(train), "n_test": len(test), "train_source": train.source}
    out_dir = Path(out_dir) if out_dir is not None else None
    ckpt_path = out_dir / "checkpoint.pt" if out_dir else None

    seed_everything(seed)
    # channels_last: oneDNN (CPU) and cuDNN run these convolutions faster in NHWC (1.3x measured on 2 cores)
    net = build_victim(config.arch, len(train.classes), config.width)
    if defense.adapt_model is not None:
        net = defense.adapt_model(net)
    net = net.to(device, memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(net.parameters(), lr=config.lr, momentum=config.momentum,
                                weight_decay=config.weight_decay, nesterov=config.nesterov)
    steps_per_epoch = -(-len(train) // config.batch_size)
    if config.schedule == "onecycle":
        scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=config.lr,
                                                        total_steps=config.epochs * steps_per_epoch)
    elif config.schedule == "multistep":
        scheduler = torch.optim.lr_scheduler.MultiStepLR(
            optimizer, [round(m * config.epochs) * steps_per_epoch for m in config.milestones], gamma=0.1)
    elif config.schedule == "constant":
        scheduler = None
    else:
        raise ValueError(f"unknown schedule {config.schedule!r} (constant, onecycle or multistep)")

    start_epoch, log, elapsed = 0, [], 0.0
    if ckpt_path is not None and ckpt_path.exists():
        state = safe_torch_load(ckpt_path)
        if state["identity"] != identity:
            raise ValueError(f"{ckpt_path}: checkpoint belongs to a different run; remove it or use another out_dir")
        net.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if scheduler is not None:
            scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng"])
        start_epoch, log, elapsed = state["epoch"], state["log"], state["elapsed"]

    base_optimizer = optimizer
    # ``net`` is the network; ``model``/``optimizer`` what the steps go through (DP-SGD: Opacus's wrappers)
    model, optimizer = (defense.wrap_training(net, optimizer, config.batch_size, len(train))
                        if defense.wrap_training is not None else (net, optimizer))
    # The whole set lives on the training device and is augmented there, with every random draw from the CPU
    # generator (seeded and checkpointed, so a run is the same and resumes exactly on any device); the epoch's
    # loss and accuracy are summed on the device, read once per epoch (no per-step host syncs).
    images = (defense.prepare(train.images, train.labels) if defense.prepare else train.images).to(device)
    labels = train.labels.to(device)
    bar = tqdm(range(start_epoch, config.epochs), desc=f"{config.arch} [{defense.name}]", disable=not progress,
               initial=start_epoch, total=config.epochs, leave=False)
    for epoch in bar:
        tick = time.perf_counter()
        model.train()
        if defense.on_epoch_start is not None:
            defense.on_epoch_start(epoch, config.epochs)
        order = torch.randperm(len(train)).to(device)
        loss_sum = torch.zeros((), dtype=torch.float64, device=device)
        correct = torch.zeros((), dtype=torch.long, device=device)
        for batch in order.split(config.batch_size):
            x = images[batch].float()
            if images.dtype == torch.uint8:
                x = x.div_(255)
            y = labels[batch]
            x = random_crop(x, config.crop_padding)
            if config.flip:
                x = random_flip(x)
            target = y
            if defense.on_batch is not None:
                x, target = defense.on_batch(x, y)
            if defense.on_model_batch is not None:
                x, target = defense.on_model_batch(net, x, target)
            loss, logits = sgd_step(model, optimizer, x, target, precision=config.precision, device=device,
                                    label_smoothing=config.label_smoothing, max_grad_norm=config.max_grad_norm)
            if scheduler is not None:
                scheduler.step()
            loss_sum += loss.detach().double() * len(batch)
            correct += (logits.argmax(1) == y).sum()
        entry = {"epoch": epoch + 1, "loss": float(loss_sum) / len(train),
                 "train_acc": 100.0 * int(correct) / len(train)}
        if (epoch + 1) % config.eval_every == 0 or epoch + 1 == config.epochs:
            entry["test_acc"] = evaluate(net, test, config.eval_batch_size, device)
        elapsed += time.perf_counter() - tick
        entry["seconds"] = elapsed
        log.append(entry)
        bar.set_postfix({k: round(v, 2) for k, v in entry.items() if k in ("loss", "train_acc", "test_acc")})
        if on_epoch is not None:
            on_epoch(epoch + 1, net)
        if ckpt_path is not None:
            _save_checkpoint({"identity": identity, "model": net.state_dict(), "optimizer": base_optimizer.state_dict(),
                              "scheduler": scheduler.state_dict() if scheduler else None,
                              "rng": torch.get_rng_state(), "epoch": epoch + 1, "log": log, "elapsed": elapsed},
                             ckpt_path)
    result = {**identity, "test_acc": log[-1]["test_acc"], "log": log, "wall_time_s": elapsed, "device": str(device)}
    if defense.summary is not None:
        result.update(defense.summary(config.epochs * steps_per_epoch, config.batch_size, len(train)))
    if out_dir is not None:
        atomic_write_json(result, out_dir / "result.json")
    return result

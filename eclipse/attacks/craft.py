"""What the model-based poisons share: a surrogate trained by the package's victim loop, differentiable
augmentation, signed L-inf steps, and resume state saved atomically (a generation killed midway continues
from its last saved state and gives the same poison).

Every model-based attack keeps its perturbation ``delta`` on the [0, 1] scale, float32, ``(N, 3, H, W)``
(or ``(K, 3, H, W)`` class-wise), and hands the final images to :func:`finish`, which quantises them to 8
bits inside the budget.
"""
from __future__ import annotations

import os
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from eclipse.attacks.quantise import quantise_linf
from eclipse.data import ImageSet
from eclipse.seeding import default_device, seed_everything
from eclipse.storage import atomic_torch_save, config_key, safe_torch_load
from eclipse.training import TrainConfig, random_crop, random_flip, train_victim, trained_model

STATE_FILE = "craft.pt"


def surrogate_config(base: TrainConfig, overrides: dict | None) -> TrainConfig:
    """``base`` (the recipe's surrogate) with ``overrides`` (TrainConfig fields; a profile's cuts)."""
    if not overrides:
        return base
    unknown = set(overrides) - set(asdict(base))
    if unknown:
        raise ValueError(f"unknown surrogate settings {sorted(unknown)}; TrainConfig fields: {sorted(asdict(base))}")
    return replace(base, **overrides)


def train_surrogate(images: torch.Tensor, labels: torch.Tensor, num_classes: int, config: TrainConfig, *,
                    seed: int, state_dir: Path | None, name: str = "surrogate", progress: bool = True,
                    on_epoch=None, defense="none") -> torch.nn.Module:
    """Train ``config`` on the clean ``(images, labels)`` with the victim loop (:func:`train_victim`, with
    ``defense``: EFP's reference model is adversarially trained); the run resumes from ``state_dir/name``
    after an interruption. Returns the network in eval mode.

    The attacker has no test set: the accuracy logged is on 1,000 training images spread over the set (every
    ``len // 1000``-th: a class-sorted set's first 1,000 would be one class).
    """
    import tempfile

    classes = tuple(str(k) for k in range(num_classes))
    train = ImageSet(images, labels, classes, f"<{name} training set>")
    probe = train.subset(torch.arange(0, len(train), max(1, len(train) // 1000))[:1000], f"<{name} probe>")
    config = replace(config, eval_every=config.epochs)
    with tempfile.TemporaryDirectory() as tmp:
        out_dir = state_dir / name if state_dir is not None else Path(tmp)
        train_victim(train, probe, config, defense=defense, seed=seed, out_dir=out_dir, progress=progress,
                     on_epoch=on_epoch)
        return trained_model(out_dir, config, num_classes)


def augment(x: torch.Tensor, crop_padding: int = 4, flip: bool = True) -> torch.Tensor:
    """Random crop (zero padding) and horizontal flip, differentiable in ``x`` (the victim's augmentation)."""
    x = random_crop(x, crop_padding)
    return random_flip(x) if flip else x


def shift_flip(x: torch.Tensor, max_shift: float = 4.0, flip: bool = True) -> torch.Tensor:
    """TAP's differentiable augmentation: a continuous random shift of up to ``max_shift`` pixels in each
    direction (bilinear resampling, zeros outside) and a horizontal flip with probability 1/2."""
    n, _, h, w = x.shape
    shift = (torch.rand(n, 2) - 0.5) * 2 * (max_shift * 2 / (w - 1))
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0] = torch.where(torch.rand(n) < 0.5, -1.0, 1.0) if flip else 1.0
    theta[:, 1, 1] = 1.0
    theta[:, :, 2] = shift
    grid = F.affine_grid(theta.to(x.device, x.dtype), list(x.shape), align_corners=True)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=True)


def signed_step(delta: torch.Tensor, grad: torch.Tensor, step_size: float, epsilon: float,
                clean: torch.Tensor, *, descend: bool) -> torch.Tensor:
    """One L-inf PGD step on ``delta``: ``-+ step_size * sign(grad)``, projected to the ``epsilon`` ball and
    so that ``clean + delta`` stays in [0, 1] (``clean`` on the [0, 1] scale)."""
    direction = -1.0 if descend else 1.0
    delta = (delta + direction * step_size * grad.sign()).clamp_(-epsilon, epsilon)
    return (clean + delta).clamp_(0.0, 1.0) - clean


def to_unit(images: torch.Tensor) -> torch.Tensor:
    """uint8 images -> float32 on [0, 1]."""
    return images.float().div_(255.0)


def finish(images: torch.Tensor, delta: torch.Tensor, epsilon: float, labels: torch.Tensor | None = None) -> torch.Tensor:
    """8-bit poisoned images from uint8 ``images`` and ``delta`` (per sample, or per class with ``labels``)."""
    per_image = delta[labels] if labels is not None and delta.shape[0] != images.shape[0] else delta
    return quantise_linf(images, per_image.detach().cpu().clamp(-epsilon, epsilon), epsilon)


# --------------------------------------------------------------------------------------------
# resume state
# --------------------------------------------------------------------------------------------
def identity_of(attack: str, images: torch.Tensor, labels: torch.Tensor, seed: int, params: dict[str, Any]) -> str:
    """A key naming one generation (attack, data, seed, parameters): saved state of another is never resumed."""
    from eclipse.storage import tensor_hash

    return config_key({"attack": attack, "data": tensor_hash(images, labels), "seed": seed, "params": params})


def save_interval() -> float:
    """Seconds between resume-state saves (``ECLIPSE_CRAFT_SAVE_EVERY_S``, default 60; 0 saves at every chance).

    Where the saves fall does not change the poison: a state holds everything the loop needs, RNG included."""
    return float(os.environ.get("ECLIPSE_CRAFT_SAVE_EVERY_S", "60"))


class Checkpoint:
    """The resume state of one generation, ``state_dir/craft.pt`` (nothing is saved without a ``state_dir``)."""

    def __init__(self, state_dir: Path | None, identity: str) -> None:
        self.path = state_dir / STATE_FILE if state_dir is not None else None
        self.identity = identity
        self.last = time.monotonic()

    def load(self) -> dict | None:
        """The saved state (restoring the global RNG), or None. A state of another generation is an error."""
        if self.path is None or not self.path.exists():
            return None
        state = safe_torch_load(self.path)
        if not isinstance(state, dict) or state.get("identity") != self.identity:
            raise ValueError(f"{self.path}: resume state of another generation; remove it or use another state_dir")
        torch.set_rng_state(state["rng"])
        return state

    def save(self, *, force: bool = False, **state: Any) -> None:
        """Save ``state`` atomically with the global RNG state, at most every :func:`save_interval` seconds
        unless ``force``."""
        if self.path is None or not (force or time.monotonic() - self.last >= save_interval()):
            return
        atomic_torch_save({"identity": self.identity, "rng": torch.get_rng_state(), **state}, self.path)
        self.last = time.monotonic()


def start(seed: int, state_dir: str | Path | None) -> tuple[Path | None, torch.device]:
    """Seed every RNG and make ``state_dir``; returns it (as a Path) and the device to compute on."""
    seed_everything(seed)
    state_dir = Path(state_dir) if state_dir is not None else None
    if state_dir is not None:
        state_dir.mkdir(parents=True, exist_ok=True)
    return state_dir, default_device()

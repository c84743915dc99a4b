"""Training-time defenses as composable batch transforms.

A :class:`Defense` has two optional hooks:

- ``prepare(images_uint8, labels) -> images``: a deterministic transform applied once to the training set
  (ISS-G grayscale, ISS-J JPEG, OP's projection). Applying it once is identical to re-applying it each
  epoch, because it is deterministic. It returns uint8 images, or float images on the [0, 1] scale (OP's
  projected images leave [0, 1]); any randomness comes from its own seeded generator, so a resumed run
  prepares the same set;
- ``on_batch(x, y) -> (x, y)``: a random transform of a float batch in [0, 1] after random crop and
  flip, re-drawn every step (compensation, cutout, mixup, cutmix). ``y`` may become soft targets;
- ``on_model_batch(model, x, y) -> (x, y)``: a transform that needs the network being trained, after
  ``on_batch`` (adversarial training's PGD examples, UEraser's worst augmentation);
- ``on_epoch_start(epoch, epochs)``: called before each epoch (0-based) of ``epochs``, so a defense can follow
  a schedule over training (UEraser's adversarial phase); also called for each epoch of a resumed run.
- ``adapt_model(model) -> model`` before the optimizer is made, ``wrap_training(model, optimizer, batch_size,
  n_train) -> (model, optimizer)`` after the checkpoint is loaded, and ``summary(steps, batch_size, n_train) ->
  dict`` merged into the result: a defense that changes the optimisation itself (DP-SGD: group norms,
  Opacus's per-sample clipping and noise, the epsilon spent).

Randomness comes from torch's global generator, which the training loop seeds and checkpoints.
ECLIPSE's corruption compensation is ``compensation`` (module B = ``grayscale``, module C = ``noise``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from ..registry import Registry

BatchFn = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


@dataclass(frozen=True)
class Defense:
    """A named training-time defense: an optional once-per-image and an optional per-batch step."""

    name: str
    prepare: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None
    on_batch: BatchFn | None = None
    params: tuple = ()
    on_model_batch: Callable[[torch.nn.Module, torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]] | None = None
    on_epoch_start: Callable[[int, int], None] | None = None
    adapt_model: Callable[[torch.nn.Module], torch.nn.Module] | None = None
    wrap_training: Callable[..., tuple[torch.nn.Module, torch.optim.Optimizer]] | None = None
    summary: Callable[[int, int, int], dict] | None = None


def random_grayscale(x: torch.Tensor, gray_p: float) -> torch.Tensor:
    """Convert each image independently to 3-channel grayscale with probability ``gray_p``."""
    chosen = (torch.rand(x.shape[0]) < gray_p).to(x.device)
    if chosen.any():
        x = x.clone()
        x[chosen] = TF.rgb_to_grayscale(x[chosen], num_output_channels=3)
    return x


def gaussian_noise(x: torch.Tensor, sigma: float, requantize: bool = True) -> torch.Tensor:
    """Add N(0, sigma^2), clamp to [0, 1] and (as the official code's ToPILImage round trip does)
    re-quantise to 8 bits by truncation."""
    x = (x + sigma * torch.randn(x.shape).to(x.device)).clamp_(0, 1)   # CPU generator on any device
    return x.mul(255).floor_().div_(255) if requantize else x


def compensation_batch(gray_p: float, sigma: float) -> BatchFn:
    """ECLIPSE's corruption compensation: random grayscale (``gray_p``), then Gaussian noise ``sigma``."""
    def step(x: torch.Tensor, y: torch.Tensor):
        if gray_p > 0:
            x = random_grayscale(x, gray_p)
        if sigma > 0:
            x = gaussian_noise(x, sigma)
        return x, y
    return step


def cutout_batch(size: int = 16) -> BatchFn:
    """Cutout (DeVries & Taylor): zero one ``size`` x ``size`` square per image, centre uniform, clipped
    at the border. torchvision's RandomErasing draws one box per call (and a random aspect ratio), so the
    per-image boxes are drawn here as one vectorised mask."""
    def step(x: torch.Tensor, y: torch.Tensor):
        n, _, h, w = x.shape
        cy = torch.randint(0, h, (n, 1, 1))
        cx = torch.randint(0, w, (n, 1, 1))
        rows = torch.arange(h).view(1, h, 1)
        cols = torch.arange(w).view(1, 1, w)
        # the box spans [c - size/2, c + size/2): rows c-8 .. c+7 for size 16
        inside = (rows >= cy - size // 2) & (rows < cy + size - size // 2) & (cols >= cx - size // 2) & (
            cols < cx + size - size // 2)
        return x.masked_fill(inside.unsqueeze(1).to(x.device), 0.0), y
    return step


def _label_mixing(kind: str, alpha: float, num_classes: int) -> BatchFn:
    mixer = (v2.MixUp if kind == "mixup" else v2.CutMix)(alpha=alpha, num_classes=num_classes)

    def step(x: torch.Tensor, y: torch.Tensor):
        return mixer(x, y)
    return step


def _jpeg(quality: int) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    def prepare(images: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        return torch.cat([TF.jpeg(chunk, quality) for chunk in images.split(1024)])
    return prepare


def _grayscale_all(images: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
    return TF.rgb_to_grayscale(images, num_output_channels=3)


@dataclass(frozen=True)
class DefenseParams:
    """Every defense's settings in one place (a defense reads the fields it needs)."""

    gray_p: float = 0.4
    sigma: float = 0.05
    jpeg_quality: int = 10
    cutout_size: int = 16
    mix_alpha: float = 1.0
    num_classes: int = 10
    at_epsilon: float = 8 / 255   # adversarial training: L-inf radius, PGD steps and step size (Madry et al.)
    at_steps: int = 10
    at_step_size: float = 2 / 255
    ueraser_repeats: int = 5         # UEraser: K augmented copies per image, the worst one trained on,
    ueraser_fraction: float = 0.3    # for this fraction of the epochs (the official 60 of 200), then K = 1
    op_epochs: int = 20              # OP: the bias-free linear model's epochs (SGD lr 0.1, batch 1024)
    dp_noise_multiplier: float = 1.0  # DP-SGD: noise std / clipping norm, per-sample clipping norm, delta
    dp_max_grad_norm: float = 1.0
    dp_delta: float = 1e-5


DefenseBuilder = Callable[[DefenseParams], Defense]
DEFENSES: Registry[DefenseBuilder] = Registry("defense")
"""Training-time defenses by name: ``DEFENSES[name](DefenseParams(...)) -> Defense``."""


@DEFENSES.register("none", description="no defense: plain training (crop and flip only)")
def _none(p: DefenseParams) -> Defense:
    return Defense("none")


@DEFENSES.register("compensation", description="ECLIPSE's corruption compensation B+C: random grayscale (gray_p), then Gaussian noise (sigma)")
def _compensation(p: DefenseParams) -> Defense:
    return Defense("compensation", on_batch=compensation_batch(p.gray_p, p.sigma),
                   params=(("gray_p", p.gray_p), ("sigma", p.sigma)))


@DEFENSES.register("grayscale", description="ECLIPSE module B alone: random grayscale with probability gray_p")
def _grayscale(p: DefenseParams) -> Defense:
    return Defense("grayscale", on_batch=compensation_batch(p.gray_p, 0.0), params=(("gray_p", p.gray_p),))


@DEFENSES.register("noise", description="ECLIPSE module C alone: Gaussian noise sigma, re-quantised to 8 bits")
def _noise(p: DefenseParams) -> Defense:
    return Defense("noise", on_batch=compensation_batch(0.0, p.sigma), params=(("sigma", p.sigma),))


@DEFENSES.register("iss-g", description="ISS-G (Liu et al. 2023): train on grayscale images")
def _iss_g(p: DefenseParams) -> Defense:
    return Defense("iss-g", prepare=_grayscale_all)


@DEFENSES.register("iss-j", description="ISS-J (Liu et al. 2023): JPEG-compress every image (quality 10)")
def _iss_j(p: DefenseParams) -> Defense:
    return Defense("iss-j", prepare=_jpeg(p.jpeg_quality), params=(("quality", p.jpeg_quality),))


@DEFENSES.register("cutout", description="Cutout (DeVries & Taylor 2017): one 16x16 square zeroed per image")
def _cutout(p: DefenseParams) -> Defense:
    return Defense("cutout", on_batch=cutout_batch(p.cutout_size), params=(("size", p.cutout_size),))


@DEFENSES.register("mixup", description="MixUp (Zhang et al. 2018), alpha 1 (torchvision v2.MixUp)")
def _mixup(p: DefenseParams) -> Defense:
    return Defense("mixup", on_batch=_label_mixing("mixup", p.mix_alpha, p.num_classes), params=(("alpha", p.mix_alpha),))


@DEFENSES.register("cutmix", description="CutMix (Yun et al. 2019), alpha 1 (torchvision v2.CutMix)")
def _cutmix(p: DefenseParams) -> Defense:
    return Defense("cutmix", on_batch=_label_mixing("cutmix", p.mix_alpha, p.num_classes), params=(("alpha", p.mix_alpha),))


def pgd_examples(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, *, epsilon: float, steps: int,
                 step_size: float, random_start: bool = True) -> torch.Tensor:
    """L-inf PGD that raises the cross-entropy of ``model`` on ``(x, y)`` (x float in [0, 1]): uniform start in
    the ``epsilon`` ball, ``steps`` signed-gradient ascents of ``step_size``, projected to the ball and to [0, 1].
    The model is put in eval mode while the examples are made, then back to the mode it was in."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    x, y = x.detach().to(device), y.to(device)
    delta = (torch.empty(x.shape).uniform_(-epsilon, epsilon).to(device) if random_start  # the CPU generator
             else torch.zeros_like(x))
    delta = (x + delta).clamp_(0, 1) - x
    for _ in range(steps):
        delta.requires_grad_(True)
        loss = torch.nn.functional.cross_entropy(model((x + delta).contiguous(memory_format=torch.channels_last)), y)
        (grad,) = torch.autograd.grad(loss, delta)
        delta = (delta.detach() + step_size * grad.sign()).clamp_(-epsilon, epsilon)
        delta = (x + delta).clamp_(0, 1) - x
    model.train(was_training)
    return (x + delta).detach()


def _adversarial(epsilon: float, steps: int, step_size: float):
    def step(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor):
        if y.ndim != 1:
            raise ValueError("adversarial training needs hard labels (it does not combine with mixup/cutmix)")
        return pgd_examples(model, x, y, epsilon=epsilon, steps=steps, step_size=step_size), y
    return step


@DEFENSES.register("at", description="adversarial training (Madry et al. 2018): PGD, L-inf 8/255, 10 steps of 2/255")
def _at(p: DefenseParams) -> Defense:
    return Defense("at", on_model_batch=_adversarial(p.at_epsilon, p.at_steps, p.at_step_size),
                   params=(("epsilon", p.at_epsilon), ("steps", p.at_steps), ("step_size", p.at_step_size)))


def make_defense(name: str, **params) -> Defense:
    """A defense by name (see ``DEFENSES``) with :class:`DefenseParams` fields as keywords."""
    return DEFENSES[name](DefenseParams(**params))


# Defenses with modules of their own register themselves on import.
from . import dp_sgd, op, ueraser  # noqa: E402,F401

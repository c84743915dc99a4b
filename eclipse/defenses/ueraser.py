"""UEraser (Qin et al., "Learning the unlearnable", arXiv 2303.15127; the paper's "AA"). Registers ``"ueraser"``.

Facts from the authors' ``ueraser.py`` (lafeat/ueraser): a policy of plasma brightness (p 0.5), plasma
contrast (p 0.5), channel shuffle (p 0.5) and TrivialAugment; the loss is the batch mean of the *worst* of
``repeat`` = 5 augmented copies of each image for the first 60 of 200 epochs, then a single augmented copy
(UEraser-Lite); SGD lr 0.1, weight decay 5e-4.

Here: the worst copy is chosen per image by its loss in a no-grad forward (train-mode batch statistics as the
official forward, running statistics left untouched) and the training step then runs on it: the gradient of a
max over copies is the gradient of its arg-max copy, so this is the official loss at one backward pass instead
of ``repeat``. The adversarial phase is ``ueraser_fraction`` (0.3 = 60/200) of the victim's epochs.
Departures (torchvision v2 has no plasma fractals): brightness and contrast are global
``ColorJitter(0.5)`` draws, each with p 0.5, where kornia's plasma fields vary over the image; channel shuffle
is ``RandomChannelPermutation`` (p 0.5); TrivialAugment is ``TrivialAugmentWide``. Every transform is drawn
per image (a v2 transform on a batch would share one draw).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torchvision.transforms import v2

from . import DEFENSES, Defense, DefenseParams


def ueraser_policy() -> v2.Transform:
    """UEraser's augmentation policy on one uint8 image, from torchvision v2 (departures in the module doc)."""
    return v2.Compose([
        v2.RandomApply([v2.ColorJitter(brightness=0.5)], p=0.5),
        v2.RandomApply([v2.ColorJitter(contrast=0.5)], p=0.5),
        v2.RandomApply([v2.RandomChannelPermutation()], p=0.5),
        v2.TrivialAugmentWide(),
    ])


def augmented_copies(x: torch.Tensor, repeats: int, policy: v2.Transform) -> torch.Tensor:
    """``repeats`` independently augmented copies of the float batch ``x`` (on [0, 1]): shape (repeats, *x.shape)."""
    images = x.detach().cpu().mul(255).round_().clamp_(0, 255).to(torch.uint8)
    copies = torch.stack([torch.stack([policy(image) for image in images]) for _ in range(repeats)])
    return copies.float().div_(255)


@torch.no_grad()
def worst_copies(model: torch.nn.Module, copies: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per image, the copy (of ``copies``, shape (K, B, C, H, W)) on which ``model`` has the highest cross-entropy
    toward ``y``. The forward uses batch statistics (train mode) without moving the running statistics."""
    repeats, batch = copies.shape[:2]
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.momentum = 0.0
    try:
        device = next(model.parameters()).device
        flat = copies.flatten(0, 1).to(device).contiguous(memory_format=torch.channels_last)
        losses = F.cross_entropy(model(flat).float(), y.to(device).repeat(repeats), reduction="none")
    finally:
        for m, momentum in zip(norms, momenta):
            m.momentum = momentum
    pick = losses.view(repeats, batch).argmax(0).cpu()
    return copies[pick, torch.arange(batch)]


def _ueraser(repeats: int, fraction: float):
    policy = ueraser_policy()
    phase = {"repeats": repeats}

    def on_epoch_start(epoch: int, epochs: int) -> None:
        phase["repeats"] = repeats if epoch < round(fraction * epochs) else 1

    def step(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor):
        if y.ndim != 1:
            raise ValueError("UEraser needs hard labels (it does not combine with mixup/cutmix)")
        copies = augmented_copies(x, phase["repeats"], policy)
        return (worst_copies(model, copies, y) if phase["repeats"] > 1 else copies[0]), y
    return step, on_epoch_start


@DEFENSES.register("ueraser", description="UEraser (Qin et al. 2023): train on the worst of 5 augmented copies "
                                          "(the first 30 percent of epochs), then on one (torchvision v2 policy)")
def _ueraser_defense(p: DefenseParams) -> Defense:
    step, on_epoch_start = _ueraser(p.ueraser_repeats, p.ueraser_fraction)
    return Defense("ueraser", on_model_batch=step, on_epoch_start=on_epoch_start,
                   params=(("repeats", p.ueraser_repeats), ("fraction", p.ueraser_fraction)))

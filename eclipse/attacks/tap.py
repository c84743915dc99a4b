"""TAP: targeted adversarial poisoning (Fowl et al., NeurIPS'21, "Adversarial Examples Make Strong
Poisons"). Registers ``"tap"``.

Each training image becomes a targeted adversarial example of a surrogate trained on the clean data, toward
the class ``(y + 1) mod K``. Facts from the authors' ``anneal.py --recipe targeted --attackoptim PGD``
(lhfowl/adversarial_poisons); the loop is written here:

- surrogate: ResNet-18, 40 epochs, SGD 0.1 with Nesterov momentum 0.9, weight decay 5e-4, batch 128, lr x0.1
  at epochs 14, 24 and 35; in eval mode while crafting;
- crafting: start at N(0, eps) clipped to the ball; ``iterations`` = 250 passes over the data in batches of
  512, each batch one signed step of ``0.05 * eps`` (no step schedule under PGD) lowering the cross-entropy
  toward the target class of the *augmented* perturbed batch (a continuous random shift of up to 4 pixels
  and a horizontal flip, differentiable); projected to the ball and to [0, 1];
- ``restarts`` (8 in the recipe; the README suggests 1 to save time): the restart whose last-iteration
  loss is lowest is kept.

Departures: the surrogate trains with the victim loop's crop + flip (the official surrogate uses the same
shift augmentation as the crafting) and without input normalisation.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from eclipse.attacks.craft import (Checkpoint, finish, identity_of, shift_flip, signed_step, start,
                                   surrogate_config, to_unit, train_surrogate)
from eclipse.attacks.quantise import chunks
from eclipse.attacks.registry import AttackSpec, register
from eclipse.training import TrainConfig

TAP_LINF_BUDGET = 8 / 255
TAP_SURROGATE = TrainConfig(arch="resnet18", width=64, epochs=40, batch_size=128, lr=0.1, momentum=0.9,
                            weight_decay=5e-4, nesterov=True, schedule="multistep", milestones=(0.35, 0.6, 0.875))


def targeted_pass(model, clean: torch.Tensor, delta: torch.Tensor, target: torch.Tensor, *, step_size: float,
                  epsilon: float, batch_size: int, device, augmentation=shift_flip) -> tuple[torch.Tensor, float]:
    """One pass of signed steps lowering the cross-entropy toward ``target`` over ``clean`` in batches; returns
    the new ``delta`` and the batch-averaged loss before the steps (TAP's restart score)."""
    losses = []
    delta = delta.clone()
    for index in chunks(clean.shape[0], batch_size):
        x = (clean[index] + delta[index]).requires_grad_(True)
        loss = F.cross_entropy(model(augmentation(x).to(device).contiguous(memory_format=torch.channels_last)),
                               target[index].to(device))
        (grad,) = torch.autograd.grad(loss, x)
        delta[index] = signed_step(delta[index], grad.cpu(), step_size, epsilon, clean[index], descend=True)
        losses.append(float(loss.detach()))
    return delta, sum(losses) / len(losses)


def tap(images: torch.Tensor, labels: torch.Tensor, *, seed: int, num_classes: int,
        epsilon: float = TAP_LINF_BUDGET, iterations: int = 250, step_fraction: float = 0.05, restarts: int = 8,
        batch_size: int = 512, target_shift: int = 1, surrogate: dict | None = None, state_dir=None,
        progress: bool = True) -> torch.Tensor:
    """TAP, targeted PGD toward ``(y + target_shift) mod K`` against a clean surrogate. Budget: L-inf 8/255.

    ``surrogate``: TrainConfig fields over the recipe's (ResNet-18, 40 epochs); ``restarts=1`` is the
    README's cheap variant."""
    params = dict(epsilon=epsilon, iterations=iterations, step_fraction=step_fraction, restarts=restarts,
                  batch_size=batch_size, target_shift=target_shift, surrogate=surrogate)
    state_dir, device = start(seed, state_dir)
    model = train_surrogate(images, labels, num_classes, surrogate_config(TAP_SURROGATE, surrogate), seed=seed,
                            state_dir=state_dir, progress=progress).to(device)
    for p in model.parameters():
        p.requires_grad_(False)
    checkpoint = Checkpoint(state_dir, identity_of("tap", images, labels, seed, params))
    clean = to_unit(images)
    target = (labels + target_shift) % num_classes
    state = {"restart": 0, "iteration": 0, "delta": None, "score": None, "best": None, "best_score": None}
    saved = checkpoint.load()
    if saved is not None:
        state.update({k: saved[k] for k in state})
    bar = tqdm(total=restarts * iterations, initial=state["restart"] * iterations + state["iteration"], desc="tap",
               disable=not progress, leave=False)
    while state["restart"] < restarts:
        if state["delta"] is None:
            state["delta"] = (torch.randn_like(clean) * epsilon).clamp_(-epsilon, epsilon)
        while state["iteration"] < iterations:
            state["delta"], state["score"] = targeted_pass(
                model, clean, state["delta"], target, step_size=step_fraction * epsilon, epsilon=epsilon,
                batch_size=batch_size, device=device)
            state["iteration"] += 1
            bar.update(1)
            bar.set_postfix(loss=round(state["score"], 3))
            checkpoint.save(**state)
        if state["best_score"] is None or state["score"] < state["best_score"]:
            state["best"], state["best_score"] = state["delta"], state["score"]
        state.update(restart=state["restart"] + 1, iteration=0, delta=None, score=None)
        checkpoint.save(force=True, **state)
    bar.close()
    return finish(images, state["best"], epsilon)


register(AttackSpec("tap", tap, "model-based", "linf", TAP_LINF_BUDGET,
                    "targeted adversarial poisoning (Fowl et al. 2021): PGD toward (y+1) mod K on a clean surrogate",
                    resumable=True))

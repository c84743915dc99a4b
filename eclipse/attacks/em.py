"""EM: error-minimising noise (Huang et al., ICLR'21, "Unlearnable Examples"). Registers ``"em"``.

The bi-level min-min: alternately train a surrogate for a few batches on the perturbed data, then move the
noise to *lower* the surrogate's loss (signed-gradient descent in the L-inf ball), until the surrogate's
error on the perturbed data falls below a threshold. Facts from the authors' ``perturbation.py`` /
``toolbox.py`` (HanxunH/Unlearnable-Examples); the loop is written here:

- sample-wise (README): noise starts at zero; each round trains ``train_steps`` = 10 batches of 512 (no
  augmentation, SGD 0.1, momentum 0.9, weight decay 5e-4, gradient norm clipped at 5), the next batches of a
  shuffled pass over the data that carries over between rounds (the official shuffled loader's iterator; a
  new permutation when a pass ends, its last batch possibly smaller). Taken in the data's own order, a
  class-sorted set (an ImageFolder) gives one-class batches and the surrogate collapses to one class; then, with the surrogate in eval mode, every image's noise takes
  ``steps`` = 20 signed steps of 0.8/255 (warm start from its last noise), projected to 8/255; stop when the
  eval-mode error on the perturbed set is below ``stop_error`` = 0.01;
- class-wise (``per="class"``, README): one pattern per class; training batches are drawn shuffled from
  the whole set; the noise update runs over a stratified 20% subset, one step per batch, and each class's
  pattern becomes the mean of that batch's per-sample updates of the class; stop error 0.1.

Departures, all deliberate: perturbed inputs are clipped to [0, 1] before the surrogate sees them (the
official code does not; its author agreed it should, issue #13); the number of rounds is bounded by
``max_rounds`` (the official loop has no bound).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from eclipse.attacks.craft import Checkpoint, finish, identity_of, start, surrogate_config, to_unit
from eclipse.attacks.quantise import chunks
from eclipse.attacks.registry import AttackSpec, register
from eclipse.data import balanced_indices
from eclipse.training import TrainConfig, _autocast, sgd_step
from eclipse.victims import build_victim

EM_LINF_BUDGET = 8 / 255
EM_SURROGATE = TrainConfig(arch="resnet18", width=64, batch_size=512, lr=0.1, momentum=0.9, weight_decay=5e-4,
                           max_grad_norm=5.0)

Transform = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class MinMin:
    """Settings of the min-min loop shared by EM and the adaptive attack (ADP)."""

    epsilon: float = EM_LINF_BUDGET
    step_size: float = 0.8 / 255
    steps: int = 20
    train_steps: int = 10
    stop_error: float = 0.01
    max_rounds: int = 100
    per: str = "sample"            # "sample" or "class"
    subset_fraction: float = 0.2   # class-wise: the stratified subset the noise is fitted on
    eot: int = 1                   # draws of ``transform`` averaged per noise step (expectation over it)


def min_min(images: torch.Tensor, labels: torch.Tensor, *, num_classes: int, seed: int, settings: MinMin,
            surrogate: TrainConfig, identity: str, state_dir, transform: Transform | None = None,
            name: str = "em", progress: bool = True) -> torch.Tensor:
    """The min-min loop; returns the float perturbation (``(N, 3, H, W)``, or ``(K, 3, H, W)`` class-wise).

    ``transform`` (differentiable, random) is applied to every perturbed batch the surrogate sees, in training
    and in the noise steps (ADP: the corruption compensation); each noise step sums the gradients of
    ``settings.eot`` draws. Resumable through ``state_dir`` (saved after each phase of a round and, within the
    noise phase, after a chunk at most every ``ECLIPSE_CRAFT_SAVE_EVERY_S`` seconds)."""
    if settings.per not in ("sample", "class"):
        raise ValueError(f"per must be 'sample' or 'class', got {settings.per!r}")
    state_dir, device = start(seed, state_dir)
    checkpoint = Checkpoint(state_dir, identity)
    clean = to_unit(images)
    n = clean.shape[0]
    model = build_victim(surrogate.arch, num_classes, surrogate.width).to(device, memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=surrogate.lr, momentum=surrogate.momentum,
                                weight_decay=surrogate.weight_decay, nesterov=surrogate.nesterov)
    classwise = settings.per == "class"
    if classwise:
        per_class = max(1, int(settings.subset_fraction * n) // num_classes)
        fit_index = balanced_indices(labels, min(per_class, min(torch.bincount(labels, minlength=num_classes)).item()),
                                     seed, num_classes)
        delta = torch.zeros(num_classes, *clean.shape[1:])
    else:
        fit_index = torch.arange(n)
        delta = torch.zeros_like(clean)
    state = {"round": 0, "phase": "train", "order": torch.randperm(n), "cursor": 0, "delta": delta, "done": False,
             "errors": [], "noise": None, "noise_order": None, "noise_chunk": 0}
    saved = checkpoint.load()
    if saved is not None:
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        state.update({k: saved.get(k, state[k]) for k in state})
    transform = transform or (lambda x: x)

    def perturbed(index: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        per_image = noise[labels[index]] if classwise else noise[index]
        return (clean[index] + per_image).clamp(0, 1)

    def save() -> None:
        checkpoint.save(force=True, model=model.state_dict(), optimizer=optimizer.state_dict(), **state)

    bar = tqdm(total=settings.max_rounds, initial=state["round"], desc=f"{name} rounds", disable=not progress,
               leave=False)
    while not state["done"] and state["round"] < settings.max_rounds:
        if state["phase"] == "train":
            model.train()
            for _ in range(settings.train_steps):
                if classwise:
                    index = torch.randperm(n)[: surrogate.batch_size]
                else:
                    if state["cursor"] >= n:  # the pass is over: a fresh shuffle
                        state["order"], state["cursor"] = torch.randperm(n), 0
                    index = state["order"][state["cursor"]: state["cursor"] + surrogate.batch_size]
                    state["cursor"] += len(index)
                x = transform(perturbed(index, state["delta"]))
                sgd_step(model, optimizer, x, labels[index], precision=surrogate.precision, device=device,
                         max_grad_norm=surrogate.max_grad_norm)
            state["phase"] = "noise"
            state["noise_order"] = fit_index[torch.randperm(len(fit_index))] if classwise else fit_index
            state["noise"], state["noise_chunk"] = state["delta"].clone(), 0
            save()
        model.eval()
        # the noise phase saves its progress (at most every ECLIPSE_CRAFT_SAVE_EVERY_S): a kill loses one chunk
        order, noise = state["noise_order"], state["noise"]
        for ci, index in enumerate(chunks(len(order), surrogate.batch_size)):
            if ci < state["noise_chunk"]:
                continue
            index = order[index]
            start_noise = noise[labels[index]] if classwise else noise[index]
            eta = _descend(model, clean[index], start_noise, labels[index], settings, transform, surrogate, device)
            if classwise:
                for k in labels[index].unique():
                    mine = labels[index] == k
                    noise[k] = eta[mine].mean(0).clamp(-settings.epsilon, settings.epsilon)
            else:
                noise[index] = eta
            state["noise_chunk"] = ci + 1
            checkpoint.save(model=model.state_dict(), optimizer=optimizer.state_dict(), **state)
        state["delta"], state["noise"], state["noise_order"] = noise, None, None
        error = 1.0 - _accuracy(model, lambda idx: perturbed(idx, noise), labels, fit_index, surrogate, device)
        state["errors"] = state["errors"] + [error]
        state["round"] += 1
        state["phase"] = "train"
        state["done"] = error < settings.stop_error
        bar.update(1)
        bar.set_postfix(error=round(error, 4))
        save()
    bar.close()
    return state["delta"]


def _descend(model, clean: torch.Tensor, noise: torch.Tensor, labels: torch.Tensor, settings: MinMin,
             transform: Transform, surrogate: TrainConfig, device) -> torch.Tensor:
    """``settings.steps`` signed steps lowering the loss of ``model`` on ``clean + noise`` (warm start)."""
    x_adv = (clean + noise).clamp(0, 1)
    target = labels.to(device)
    for _ in range(settings.steps):
        x_adv = x_adv.detach().requires_grad_(True)
        grad = torch.zeros_like(x_adv)
        for _ in range(settings.eot):
            with _autocast(surrogate.precision, device):
                logits = model(transform(x_adv).to(device, memory_format=torch.channels_last))
            loss = F.cross_entropy(logits.float(), target)
            grad += torch.autograd.grad(loss, x_adv)[0].cpu()
        x_adv = x_adv.detach() - settings.step_size * grad.sign()
        eta = (x_adv - clean).clamp(-settings.epsilon, settings.epsilon)
        x_adv = (clean + eta).clamp(0, 1)
    return x_adv - clean


@torch.no_grad()
def _accuracy(model, perturbed, labels: torch.Tensor, index: torch.Tensor, surrogate: TrainConfig, device) -> float:
    correct = 0
    for part in chunks(len(index), 1000):
        idx = index[part]
        with _autocast(surrogate.precision, device):
            logits = model(perturbed(idx).to(device, memory_format=torch.channels_last))
        correct += int((logits.argmax(1).cpu() == labels[idx]).sum())
    return correct / max(1, len(index))


def em(images: torch.Tensor, labels: torch.Tensor, *, seed: int, num_classes: int, epsilon: float = EM_LINF_BUDGET,
       step_size: float = 0.8 / 255, steps: int = 20, train_steps: int = 10, stop_error: float | None = None,
       max_rounds: int = 100, per: str = "sample", surrogate: dict | None = None, state_dir=None,
       progress: bool = True) -> torch.Tensor:
    """EM, error-minimising noise, sample-wise (default) or class-wise (``per="class"``: the README's 1 step
    per batch on a 20% subset; pass ``steps=1``). Budget: L-inf ``epsilon`` = 8/255.

    ``stop_error`` defaults to the README's 0.01 (sample-wise) or 0.1 (class-wise); ``surrogate``: TrainConfig
    fields over the recipe's ResNet-18 (batch 512, SGD 0.1, weight decay 5e-4, gradient clip 5)."""
    params = dict(epsilon=epsilon, step_size=step_size, steps=steps, train_steps=train_steps, stop_error=stop_error,
                  max_rounds=max_rounds, per=per, surrogate=surrogate)
    settings = MinMin(epsilon=epsilon, step_size=step_size, steps=steps, train_steps=train_steps,
                      stop_error=stop_error if stop_error is not None else (0.1 if per == "class" else 0.01),
                      max_rounds=max_rounds, per=per)
    delta = min_min(images, labels, num_classes=num_classes, seed=seed, settings=settings,
                    surrogate=surrogate_config(EM_SURROGATE, surrogate),
                    identity=identity_of("em", images, labels, seed, params), state_dir=state_dir, progress=progress)
    return finish(images, delta, epsilon, labels)


register(AttackSpec("em", em, "model-based", "linf", EM_LINF_BUDGET,
                    "error-minimising noise (Huang et al. 2021), sample-wise min-min on a ResNet-18 surrogate",
                    resumable=True))

"""SEP: self-ensemble protection (Chen et al., ICLR'23). Registers ``"sep"``.

Targeted signed steps against the ensemble of checkpoints of *one* training run of a surrogate. Facts from
the authors' ``vanilla.py`` / ``ens.py`` (Sizhe-Chen/SEP); the loop is written here:

- surrogate: ResNet-18, 120 epochs, SGD 0.1, momentum 0.9, weight decay 5e-4, batch 128, lr x0.1 at epochs
  75 and 90, crop + flip; a snapshot after every epoch;
- ensemble: ``num_models`` snapshots evenly spaced over the run (``ens.py``: every ``E // num_models``-th,
  ending at the last epoch; 30 in the README's command, 5 by default), each in eval mode;
- crafting: from the clean image (no random start), ``iterations`` = 30 signed steps of ``step_size`` =
  1/255 lowering the cross-entropy toward ``(y + 5) mod K``, the input gradient averaged over every model of
  the ensemble at every step; projected to the ball and to [0, 1]; no augmentation; batches of 5,000.

The README crafts at 2/255; ECLIPSE evaluates SEP at 8/255, the default here. Departures: ``ens.py`` picks
among the checkpoints that improved test accuracy (the attacker has no test set here: every epoch's
snapshot is a candidate); no input normalisation.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from eclipse.attacks.craft import (Checkpoint, finish, identity_of, signed_step, start, surrogate_config,
                                   to_unit, train_surrogate)
from eclipse.attacks.quantise import chunks
from eclipse.attacks.registry import AttackSpec, register
from eclipse.storage import atomic_torch_save, safe_torch_load
from eclipse.training import TrainConfig
from eclipse.victims import build_victim

SEP_LINF_BUDGET = 8 / 255
SEP_SURROGATE = TrainConfig(arch="resnet18", width=64, epochs=120, batch_size=128, lr=0.1, momentum=0.9,
                            weight_decay=5e-4, schedule="multistep", milestones=(0.625, 0.75))


def ensemble_epochs(epochs: int, num_models: int) -> list[int]:
    """The (1-based) epochs whose snapshots form the ensemble: every ``epochs // num_models``-th, ending at the
    last; all of them when there are fewer epochs than models."""
    if num_models >= epochs:
        return list(range(1, epochs + 1))
    interval = epochs // num_models
    return [epochs - interval * i for i in reversed(range(num_models))]


def sep(images: torch.Tensor, labels: torch.Tensor, *, seed: int, num_classes: int,
        epsilon: float = SEP_LINF_BUDGET, step_size: float = 1 / 255, iterations: int = 30, num_models: int = 30,
        target_shift: int = 5, batch_size: int = 5000, surrogate: dict | None = None, state_dir=None,
        progress: bool = True) -> torch.Tensor:
    """SEP, targeted steps toward ``(y + target_shift) mod K`` against ``num_models`` checkpoints of one
    surrogate run. Budget: L-inf ``epsilon`` = 8/255 (ECLIPSE's; the SEP README uses 2/255)."""
    params = dict(epsilon=epsilon, step_size=step_size, iterations=iterations, num_models=num_models,
                  target_shift=target_shift, batch_size=batch_size, surrogate=surrogate)
    config = surrogate_config(SEP_SURROGATE, surrogate)
    state_dir, device = start(seed, state_dir)
    chosen = ensemble_epochs(config.epochs, num_models)
    snapshots: dict[int, dict] = {}

    def keep(epoch: int, model: torch.nn.Module) -> None:
        if epoch in chosen:
            weights = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
            if state_dir is not None:
                atomic_torch_save(weights, state_dir / "snapshots" / f"epoch-{epoch:04d}.pt")
            else:
                snapshots[epoch] = weights

    train_surrogate(images, labels, num_classes, config, seed=seed, state_dir=state_dir, progress=progress,
                    on_epoch=keep)
    models = [_load(snapshots.get(e), state_dir, e, config, num_classes, device) for e in chosen]
    checkpoint = Checkpoint(state_dir, identity_of("sep", images, labels, seed, params))
    clean = to_unit(images)
    target = (labels + target_shift) % num_classes
    state = {"batch": 0, "iteration": 0, "delta": torch.zeros_like(clean)}
    saved = checkpoint.load()
    if saved is not None:
        state.update({k: saved[k] for k in state})
    parts = list(chunks(clean.shape[0], batch_size))
    bar = tqdm(total=len(parts) * iterations, initial=state["batch"] * iterations + state["iteration"], desc="sep",
               disable=not progress, leave=False)
    while state["batch"] < len(parts):
        index = parts[state["batch"]]
        while state["iteration"] < iterations:
            x = (clean[index] + state["delta"][index]).requires_grad_(True)
            grad = torch.zeros_like(x)
            for model in models:
                loss = F.cross_entropy(model(x.to(device).contiguous(memory_format=torch.channels_last)),
                                       target[index].to(device))
                grad += torch.autograd.grad(loss, x)[0].cpu()
            state["delta"][index] = signed_step(state["delta"][index], grad / len(models), step_size, epsilon,
                                                clean[index], descend=True)
            state["iteration"] += 1
            bar.update(1)
            checkpoint.save(**state)
        state.update(batch=state["batch"] + 1, iteration=0)
        checkpoint.save(force=True, **state)
    bar.close()
    return finish(images, state["delta"], epsilon)


def _load(weights: dict | None, state_dir: Path | None, epoch: int, config: TrainConfig, num_classes: int, device):
    model = build_victim(config.arch, num_classes, config.width)
    if weights is None:
        path = state_dir / "snapshots" / f"epoch-{epoch:04d}.pt"
        if not path.exists():
            raise FileNotFoundError(f"{path}: the surrogate run finished without this snapshot; remove {state_dir}")
        weights = safe_torch_load(path)
    model.load_state_dict(weights)
    model = model.to(device, memory_format=torch.channels_last).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


register(AttackSpec("sep", sep, "model-based", "linf", SEP_LINF_BUDGET,
                    "self-ensemble protection (Chen et al. 2023): targeted steps against checkpoints of one run",
                    resumable=True))

"""EFP, entangled features, the "push" recipe (Wen et al., ICLR'23, "Is Adversarial Training Really a Silver
Bullet for Mitigating Data Poisoning?"; EntF). Registers ``"efp"``.

Each image's features, under an *adversarially trained* reference model, are pushed away from its own class
centroid, so that even adversarial training cannot separate the classes. Facts from the authors'
``train_reference_model.py`` / ``get_centroid.py`` / ``forgemaster_push.py`` (WenRuiUSTC/EntF); the loop is
written here:

- reference model: ResNet-18 trained by PGD adversarial training (4/255, 10 steps of 2/255, uniform start),
  100 epochs, SGD 0.1, momentum 0.9, weight decay 5e-4, lr x0.1 at epochs 75 and 90, crop + flip, batch 128
  (the package's victim loop with its ``at`` defense);
- centroids: the mean penultimate feature (the input of the last linear layer) of each class over the
  clean training set, the reference model in eval mode;
- crafting: start at N(0, eps) clipped to the ball; ``iterations`` = 300 passes over the data in shuffled
  batches of 128, each batch one signed step of ``0.05 * eps`` that lowers ``-MSE(feature(aug(x + delta)),
  centroid[y])`` (TAP's differentiable shift + flip augmentation); projected to the ball and to [0, 1].
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from eclipse.attacks.craft import (Checkpoint, finish, identity_of, shift_flip, signed_step, start,
                                   surrogate_config, to_unit, train_surrogate)
from eclipse.attacks.quantise import chunks
from eclipse.attacks.registry import AttackSpec, register
from eclipse.defenses import make_defense
from eclipse.training import TrainConfig

EFP_LINF_BUDGET = 8 / 255
EFP_REFERENCE = TrainConfig(arch="resnet18", width=64, epochs=100, batch_size=128, lr=0.1, momentum=0.9,
                            weight_decay=5e-4, schedule="multistep", milestones=(0.75, 0.9))


def penultimate(model: torch.nn.Module):
    """A function returning the input of ``model``'s last linear layer (its penultimate features)."""
    linear = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    if not linear:
        raise ValueError(f"{type(model).__name__} has no linear layer to take features from")
    store: dict = {}
    linear[-1].register_forward_pre_hook(lambda module, inputs: store.__setitem__("features", inputs[0]))

    def features(x: torch.Tensor) -> torch.Tensor:
        model(x.contiguous(memory_format=torch.channels_last))
        return store.pop("features")
    return features


@torch.no_grad()
def class_centroids(features, clean: torch.Tensor, labels: torch.Tensor, num_classes: int, device) -> torch.Tensor:
    """Mean feature of each class over the clean images."""
    sums, counts = None, torch.bincount(labels, minlength=num_classes).float()
    for index in chunks(clean.shape[0], 500):
        f = features(clean[index].to(device)).float().cpu()
        sums = torch.zeros(num_classes, f.shape[1]) if sums is None else sums
        sums.index_add_(0, labels[index], f)
    return sums / counts.clamp(min=1).unsqueeze(1)


def efp(images: torch.Tensor, labels: torch.Tensor, *, seed: int, num_classes: int,
        epsilon: float = EFP_LINF_BUDGET, iterations: int = 300, step_fraction: float = 0.05, batch_size: int = 128,
        reference: dict | None = None, at_epsilon: float = 4 / 255, at_steps: int = 10, at_step_size: float = 2 / 255,
        state_dir=None, progress: bool = True) -> torch.Tensor:
    """EFP (EntF-push): push each image's reference-model features away from its class centroid. Budget: L-inf
    8/255. ``reference``: TrainConfig fields over the adversarially trained ResNet-18 (AT radius ``at_epsilon``)."""
    params = dict(epsilon=epsilon, iterations=iterations, step_fraction=step_fraction, batch_size=batch_size,
                  reference=reference, at_epsilon=at_epsilon, at_steps=at_steps, at_step_size=at_step_size)
    config = surrogate_config(EFP_REFERENCE, reference)
    state_dir, device = start(seed, state_dir)
    adversarial = make_defense("at", at_epsilon=at_epsilon, at_steps=at_steps, at_step_size=at_step_size,
                               num_classes=num_classes)
    model = train_surrogate(images, labels, num_classes, config, seed=seed, state_dir=state_dir, name="reference",
                            progress=progress, defense=adversarial).to(device)
    for p in model.parameters():
        p.requires_grad_(False)
    features = penultimate(model)
    clean = to_unit(images)
    centroids = class_centroids(features, clean, labels, num_classes, device).to(device)
    checkpoint = Checkpoint(state_dir, identity_of("efp", images, labels, seed, params))
    state = {"iteration": 0, "delta": (torch.randn_like(clean) * epsilon).clamp_(-epsilon, epsilon)}
    saved = checkpoint.load()
    if saved is not None:
        state.update({k: saved[k] for k in state})
    for _ in tqdm(range(state["iteration"], iterations), initial=state["iteration"], total=iterations, desc="efp",
                  disable=not progress, leave=False):
        order = torch.randperm(clean.shape[0])
        for part in chunks(len(order), batch_size):
            index = order[part]
            x = (clean[index] + state["delta"][index]).requires_grad_(True)
            f = features(shift_flip(x).to(device))
            loss = -F.mse_loss(f.float(), centroids[labels[index].to(device)])
            (grad,) = torch.autograd.grad(loss, x)
            state["delta"][index] = signed_step(state["delta"][index], grad.cpu(), step_fraction * epsilon, epsilon,
                                                clean[index], descend=True)
        state["iteration"] += 1
        checkpoint.save(**state)
    checkpoint.save(force=True, **state)
    return finish(images, state["delta"], epsilon)


register(AttackSpec("efp", efp, "model-based", "linf", EFP_LINF_BUDGET,
                    "entangled features, push (Wen et al. 2023): features pushed from their class centroid "
                    "under an adversarially trained model", resumable=True))

"""OP: orthogonal projection (Sandoval-Segura et al., "What can we learn from unlearnable datasets?", NeurIPS
2023). Registers ``"op"``.

Facts from the authors' code (psandovalsegura/learn-from-unlearnable, ``orthogonal_projection_step_1/2.py``,
``utils_projection.py``): a bias-free linear softmax model is fitted on the flattened poisoned training images
(on [0, 1], no normalisation; SGD lr 0.1, batch 1024, 20 epochs, learning rate x0.1 at 50% and 75%); its class
weight vectors are normalised and orthonormalised by QR, and each image's projection onto their span is
subtracted (the result leaves [0, 1] and is used as is); the network then trains with random rotation 10
degrees, affine shear 10 and scale 0.8-1.2, colour jitter 0.2 (brightness, contrast, saturation), crop and flip.
Class-wise poisons (LSP, OPS, URP, class-wise EM) live in a few linear directions, which the projection removes.

Departures: the linear model's batches are shuffled (the official loader is not shuffled; the offline CIFAR-10
here is sorted by class) with a generator of its own (``seed``), so a resumed run projects identically; the
rotation/affine/jitter run after the crop and flip (the official: before), per image.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torchvision.transforms import v2

from . import DEFENSES, Defense, DefenseParams


def linear_directions(images: torch.Tensor, labels: torch.Tensor, num_classes: int, *, epochs: int = 20,
                      lr: float = 0.1, batch_size: int = 1024, seed: int = 0) -> tuple[torch.Tensor, float]:
    """Fit OP's bias-free linear model on ``images`` (uint8, (N, C, H, W)); return an orthonormal basis of its
    class weight vectors, shape (num_classes, C*H*W), and the model's training accuracy (%)."""
    x = images.flatten(1).float().div_(255)
    generator = torch.Generator().manual_seed(seed)
    bound = x.shape[1] ** -0.5                                 # nn.Linear's initialisation
    weight = ((torch.rand(num_classes, x.shape[1], generator=generator) * 2 - 1) * bound).requires_grad_(True)
    optimizer = torch.optim.SGD([weight], lr=lr)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, [int(epochs * 0.5), int(epochs * 0.75)])
    for _ in range(epochs):
        for batch in torch.randperm(len(x), generator=generator).split(batch_size):
            loss = F.cross_entropy(x[batch] @ weight.T, labels[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        scheduler.step()
    weight = weight.detach()
    accuracy = 100.0 * float(((x @ weight.T).argmax(1) == labels).float().mean())
    q, _ = torch.linalg.qr(F.normalize(weight.double(), dim=1).T)
    return q.T.float(), accuracy


def project_out(images: torch.Tensor, basis: torch.Tensor) -> torch.Tensor:
    """``images`` (uint8) on [0, 1] minus their projection onto the span of ``basis``'s orthonormal rows: float."""
    x = images.flatten(1).float().div_(255)
    return (x - (x @ basis.T) @ basis).view(images.shape)


def op_augmentation() -> v2.Transform:
    """OP's training augmentation on one float image (its crop and flip are the training loop's)."""
    return v2.Compose([v2.RandomRotation(10), v2.RandomAffine(0, shear=10, scale=(0.8, 1.2)),
                       v2.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2)])


def _op(num_classes: int, epochs: int):
    augment = op_augmentation()

    def prepare(images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        basis, _ = linear_directions(images, labels, num_classes, epochs=epochs)
        return project_out(images, basis)

    def step(x: torch.Tensor, y: torch.Tensor):
        return torch.stack([augment(image) for image in x]), y
    return prepare, step


@DEFENSES.register("op", description="OP (Sandoval-Segura et al. 2023): project out a linear model's class "
                                     "directions, then train with rotation/affine/jitter")
def _op_defense(p: DefenseParams) -> Defense:
    prepare, step = _op(p.num_classes, p.op_epochs)
    return Defense("op", prepare=prepare, on_batch=step, params=(("linear_epochs", p.op_epochs),))

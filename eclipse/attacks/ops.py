"""OPS: one-pixel shortcut (Wu et al., ICLR'23). Registers ``"ops"``."""
from __future__ import annotations

import math

import torch

from eclipse.attacks.registry import AttackSpec, register, validate_poison_inputs

OPS_L0_BUDGET = 1

CUBE_CORNERS = torch.tensor([[(v >> 2) & 1, (v >> 1) & 1, v & 1] for v in range(8)], dtype=torch.float64)
"""The 8 colours OPS may write, indexed like the authors' ``pixel_value`` (R = bit 2, G = bit 1, B = bit 0)."""


def ops_scores(class_images: torch.Tensor) -> torch.Tensor:
    """OPS search objective for one class, ``(H*W, 8)``: for every position and cube-corner colour ``c``,
    mean / std of ``|c - x[p]|`` over the class's images and the 3 channels (population std, [0, 1] scale).

    Vectorised through per-channel first and second moments (``|c - x| = x`` for ``c = 0`` and ``1 - x`` for
    ``c = 1``). Zero spread scores +inf when the colour changes every image by the same amount, and 0 when it
    changes nothing.
    """
    x = class_images.double().flatten(2) / 255.0  # (n, 3, P)
    mean_x, mean_x2 = x.mean(dim=0), (x * x).mean(dim=0)  # (3, P)
    corner = CUBE_CORNERS.T.unsqueeze(-1)  # (3, 8, 1): channel value of each colour
    # E|c - x| and E|c - x|^2 per channel, for c in {0, 1} chosen by each colour.
    first = torch.where(corner > 0, 1.0 - mean_x.unsqueeze(1), mean_x.unsqueeze(1))  # (3, 8, P)
    second = torch.where(corner > 0, 1.0 - 2.0 * mean_x.unsqueeze(1) + mean_x2.unsqueeze(1), mean_x2.unsqueeze(1))
    mean = first.mean(dim=0)  # (8, P): channels pooled with the images
    std = (second.mean(dim=0) - mean * mean).clamp_min(0.0).sqrt()
    scores = torch.where(std > 1e-12, mean / std.clamp_min(1e-12), torch.where(mean > 1e-12, math.inf, 0.0))
    return scores.T.contiguous()  # (P, 8)


def ops_pixel_search(images: torch.Tensor, labels: torch.Tensor, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per class, the best (position, colour) pair not taken by an earlier class.

    Returns ``positions`` ``(K,)`` (row-major index ``row * W + col``, -1 for a class without images) and
    ``colours`` ``(K, 3)`` in {0, 1}. Source: cychomatica/One-Pixel-Shotcut ``perturb.py::pixel_search``
    (``sparsity=1``), which excludes used (position, colour) pairs, not positions.
    """
    _, _, height, width = images.shape
    positions = torch.full((num_classes,), -1, dtype=torch.int64)
    colours = torch.zeros(num_classes, 3, dtype=torch.float64)
    taken: list[tuple[int, int]] = []
    for k in range(num_classes):
        members = labels == k
        if not members.any():
            continue
        scores = ops_scores(images[members])
        for position, colour in taken:
            scores[position, colour] = -math.inf
        best = int(torch.argmax(scores))  # first of ties, in row-major (position, colour) order
        position, colour = divmod(best, scores.shape[1])
        taken.append((position, colour))
        positions[k] = position
        colours[k] = CUBE_CORNERS[colour]
    return positions, colours


def ops(images: torch.Tensor, labels: torch.Tensor, *, seed: int, num_classes: int) -> torch.Tensor:
    """OPS, one-pixel shortcut (Wu et al., ICLR'23). Budget: L0 = 1 pixel position (L-inf unbounded).

    ``ops_pixel_search`` picks one (position, cube-corner colour) per class; that pixel is set to the colour in
    every image of the class. Deterministic: ``seed`` is accepted for a uniform interface and not used.
    """
    labels, num_classes = validate_poison_inputs(images, labels, num_classes)
    positions, colours = ops_pixel_search(images, labels, num_classes)
    _, _, height, width = images.shape
    poisoned = images.clone()
    flat = poisoned.view(images.shape[0], 3, height * width)
    values = (colours * 255).to(torch.uint8)
    for k in torch.nonzero(positions >= 0).flatten().tolist():
        members = torch.nonzero(labels == k).squeeze(1)
        flat[members, :, int(positions[k])] = values[k]
    return poisoned


register(AttackSpec("ops", ops, "model-free", "l0", float(OPS_L0_BUDGET),
                    "one-pixel shortcut: one class-wise pixel set to a cube-corner colour"))

"""URP: class-wise uniform random noise (Huang et al., ICLR'21; ECLIPSE's URP). Registers ``"urp"``."""
from __future__ import annotations

import torch

from eclipse.attacks.quantise import chunks, quantise_linf
from eclipse.attacks.registry import AttackSpec, register, validate_poison_inputs
from eclipse.seeding import make_generator

URP_LINF_BUDGET = 8 / 255


def urp(
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    seed: int,
    num_classes: int,
    epsilon: float = URP_LINF_BUDGET,
) -> torch.Tensor:
    """URP, class-wise universal random noise. Budget: L-inf ``epsilon`` = 8/255.

    One pattern per class, ``delta_k ~ U(-epsilon, epsilon)`` per pixel and channel, added to every image of
    class ``k`` (before clipping). Source: Huang et al. (ICLR'21) code, ``perturbation.py --attack_type random
    --perturb_type classwise`` (``uniform_(-eps, eps)``); ECLIPSE's URP.
    """
    labels, num_classes = validate_poison_inputs(images, labels, num_classes)
    if not 0 < epsilon:
        raise ValueError(f"epsilon must be positive, got {epsilon}")
    _, channels, height, width = images.shape
    generator = make_generator(seed)
    patterns = (torch.rand(num_classes, channels, height, width, generator=generator) * 2.0 - 1.0) * epsilon
    poisoned = torch.empty_like(images)
    for part in chunks(images.shape[0]):
        poisoned[part] = quantise_linf(images[part], patterns[labels[part]], epsilon)
    return poisoned


register(AttackSpec("urp", urp, "model-free", "linf", URP_LINF_BUDGET,
                    "class-wise uniform random noise U(-8/255, 8/255), one pattern per class"))

"""LSP: linearly separable synthetic patch noise (Yu et al., KDD'22). Registers ``"lsp"``."""
from __future__ import annotations

import math

import torch

from eclipse.attacks.quantise import chunks, quantise_l2, scale_to_l2
from eclipse.attacks.registry import AttackSpec, register, validate_poison_inputs
from eclipse.seeding import make_generator

LSP_L2_BUDGET = 1.30  # ECLIPSE's budget; the LSP authors' "L-inf-equivalent 6/255" is sqrt(3072) * 6/255 = 1.3043


def _distinct_hypercube_vertices(count: int, dims: int, generator: torch.Generator) -> torch.Tensor:
    """``count`` distinct random vertices of ``{0, 1}^dims`` (as sklearn's ``_generate_hypercube`` draws them)."""
    if dims < 63 and count > 2**dims:
        raise ValueError(f"cannot draw {count} distinct class centres from a {dims}-dimensional hypercube")
    vertices = torch.randint(0, 2, (count, dims), generator=generator)
    while torch.unique(vertices, dim=0).shape[0] < count:
        vertices = torch.randint(0, 2, (count, dims), generator=generator)
    return vertices.double()


def lsp_features(
    labels: torch.Tensor, num_classes: int, num_features: int, generator: torch.Generator, class_sep: float = 10.0
) -> torch.Tensor:
    """Per-sample class-clustered Gaussian features, ``(N, num_features)`` float64.

    The recipe of ``sklearn.datasets.make_classification(n_informative=F, n_redundant=0, n_repeated=0,
    n_clusters_per_class=1, class_sep=10, flip_y=0)`` as the LSP authors call it: class ``k`` has centre
    ``c_k`` in ``{-class_sep, +class_sep}^F`` (distinct hypercube vertices) and a random linear map
    ``A_k ~ U(-1, 1)^{F x F}``; a sample of class ``k`` is ``z @ A_k + c_k`` with ``z ~ N(0, I_F)``.
    """
    centres = _distinct_hypercube_vertices(num_classes, num_features, generator) * (2 * class_sep) - class_sep
    mixing = torch.rand(num_classes, num_features, num_features, generator=generator, dtype=torch.float64) * 2 - 1
    gaussian = torch.randn(labels.shape[0], num_features, generator=generator, dtype=torch.float64)
    features = torch.empty_like(gaussian)
    for k in range(num_classes):
        members = labels == k
        if members.any():
            features[members] = gaussian[members] @ mixing[k] + centres[k]
    return features


def lsp(
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    seed: int,
    num_classes: int,
    patch_size: int = 8,
    l2_radius: float = LSP_L2_BUDGET,
    class_sep: float = 10.0,
) -> torch.Tensor:
    """LSP, linearly separable synthetic perturbations (Yu et al., KDD'22). Budget: L2 ``l2_radius`` = 1.30.

    Sample-wise noise clustered by class: one ``make_classification``-style point per image
    (``lsp_features``, ``F = ceil(H/p) * ceil(W/p) * 3`` features, 48 for 32x32 and p=8), reshaped to a
    ``(H/p, W/p, 3)`` grid so that each ``p x p`` patch is one uniform colour per channel, upsampled by
    repetition to ``H x W`` (cropped when ``p`` does not divide the size), scaled to L2 = ``l2_radius`` and
    added. Source: dayu11/Availability-Attacks-Create-Shortcuts ``synthetic_perturbations/cifar_train.py``
    (``--patchsize 8 --eps 6``, i.e. L2 = sqrt(3072) * 6/255 = 1.304; ECLIPSE and APBench quote 1.30).
    """
    labels, num_classes = validate_poison_inputs(images, labels, num_classes)
    if patch_size < 1:
        raise ValueError(f"patch_size must be >= 1, got {patch_size}")
    if not l2_radius > 0:
        raise ValueError(f"l2_radius must be positive, got {l2_radius}")
    n, channels, height, width = images.shape
    grid_h, grid_w = math.ceil(height / patch_size), math.ceil(width / patch_size)
    generator = make_generator(seed)
    features = lsp_features(labels, num_classes, grid_h * grid_w * channels, generator, class_sep)
    # The authors reshape each point as (rows, cols, channels) (HWC images), then we move channels first.
    patches = features.view(n, grid_h, grid_w, channels).permute(0, 3, 1, 2).float()
    poisoned = torch.empty_like(images)
    for part in chunks(n):
        noise = patches[part].repeat_interleave(patch_size, dim=2).repeat_interleave(patch_size, dim=3)
        noise = scale_to_l2(noise[:, :, :height, :width].contiguous(), l2_radius)
        poisoned[part] = quantise_l2(images[part], noise, l2_radius)
    return poisoned


register(AttackSpec("lsp", lsp, "model-free", "l2", LSP_L2_BUDGET,
                    "linearly separable synthetic 8x8-patch noise, sample-wise around class centres, L2 = 1.30"))

"""The one check of uint8 image batches and their labels, used by every module that takes images.

``check_images`` and ``check_labels`` raise ``ValueError`` whose message starts with the argument's ``name``
and says what is wrong; callers that report a file (``eclipse.data``) prefix it and re-raise as their own
``ValueError`` subclass.
"""
from __future__ import annotations

import torch

__all__ = ["check_images", "check_labels"]


def check_images(
    images: torch.Tensor,
    *,
    name: str = "images",
    channels: int | None = 3,
    size: tuple[int, int] | None = None,
    allow_empty: bool = False,
) -> torch.Tensor:
    """Check that ``images`` is a uint8 ``(N, C, H, W)`` tensor and return it unchanged.

    ``channels`` (``None``: any) and ``size`` (``(H, W)``, ``None``: any non-zero) pin the image shape;
    ``allow_empty`` admits ``N = 0``. Raises ``ValueError`` naming ``name`` and the problem.
    """
    if not isinstance(images, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(images).__name__}")
    if images.dtype != torch.uint8:
        raise ValueError(
            f"{name} must have dtype torch.uint8 (0..255), got {images.dtype}; "
            "convert float [0, 1] images with (x * 255).round().to(torch.uint8)"
        )
    c = "C" if channels is None else str(channels)
    h, w = ("H", "W") if size is None else (str(size[0]), str(size[1]))
    shape = tuple(images.shape)
    if (
        images.dim() != 4
        or (channels is not None and shape[1] != channels)
        or (size is not None and tuple(shape[2:]) != tuple(size))
        or 0 in shape[1:]
    ):
        raise ValueError(f"{name} must have shape (N, {c}, {h}, {w}), got {shape}")
    if shape[0] == 0 and not allow_empty:
        raise ValueError(f"{name} must be non-empty, got shape {shape}")
    return images


def check_labels(
    labels: torch.Tensor,
    n: int,
    num_classes: int | None = None,
    *,
    name: str = "labels",
    require_int64: bool = False,
) -> torch.Tensor:
    """Check integer class labels ``(n,)`` in ``0..num_classes-1`` and return them as int64 on the CPU.

    Any integer dtype is accepted (and converted) unless ``require_int64``. Without ``num_classes`` only
    non-negativity is checked. Raises ``ValueError`` naming ``name`` and the problem.
    """
    if not isinstance(labels, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(labels).__name__}")
    if labels.dtype.is_floating_point or labels.dtype.is_complex or labels.dtype == torch.bool:
        raise ValueError(f"{name} must be an integer tensor (int64), got {labels.dtype}")
    if require_int64 and labels.dtype != torch.int64:
        raise ValueError(f"{name} must be int64, got {labels.dtype}")
    if labels.dim() != 1:
        raise ValueError(f"{name} must have shape (N,) = ({n},), got {tuple(labels.shape)}")
    if labels.shape[0] != n:
        raise ValueError(f"{name} must have shape (N,) = ({n},) to match the images: {n} images but "
                         f"{labels.shape[0]} labels")
    if num_classes is not None and (isinstance(num_classes, bool) or not isinstance(num_classes, int)
                                    or num_classes < 1):
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
    labels = labels.to(device="cpu", dtype=torch.int64)
    if n == 0:
        return labels
    low, high = int(labels.min()), int(labels.max())
    if num_classes is None:
        if low < 0:
            raise ValueError(f"{name} must lie in 0..K-1 (non-negative class indices), got range {low}..{high}")
    elif low < 0 or high >= num_classes:
        raise ValueError(f"{name} must lie in 0..{num_classes - 1} (num_classes={num_classes}), "
                         f"got range {low}..{high}")
    return labels

"""Perturbation files: a poison shipped as a tensor (``.pt``/``.npy``, per-sample or per-class) rather than
as poisoned images, read by :func:`load_perturbation` and added to a clean set by :func:`apply_perturbation`."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from .bounded import check_npy_header
from .data import IMAGE_SHAPE, DataError, ImageSet
from .storage import safe_torch_load

__all__ = ["load_perturbation", "apply_perturbation"]


def load_perturbation(path: str | os.PathLike) -> torch.Tensor:
    """A perturbation on the [0, 1] scale, ``(N, 3, 32, 32)`` or per-class ``(K, 3, 32, 32)``.

    Accepts float tensors (values in [-1, 1]) and int8 tensors in pixel units (divided by 255), and REM's
    pickled int8 numpy noise (``.pkl``, through the restricted unpickler).
    """
    path = Path(path)
    if path.suffix == ".npy":
        try:
            with open(path, "rb") as handle:  # the header's shape must fit the bytes behind it
                check_npy_header(handle, path.stat().st_size, str(path))
            delta = torch.from_numpy(np.load(path, allow_pickle=False))
        except DataError:
            raise
        except Exception as err:  # noqa: BLE001
            raise DataError(f"{path}: not a readable .npy ({type(err).__name__}: {err})") from err
    elif path.suffix in (".pkl", ".pickle"):
        from .poison_files import read_rem_noise

        delta = read_rem_noise(path)
    elif path.suffix == ".pt":
        try:
            delta = safe_torch_load(path)
        except ValueError as err:
            raise DataError(str(err)) from err
    else:
        raise DataError(f"{path}: perturbations must be .pt, .npy or REM's .pkl files")
    if not isinstance(delta, torch.Tensor):
        raise DataError(f"{path}: expected a tensor, got {type(delta).__name__}")
    if delta.dtype == torch.int8:
        delta = delta.float() / 255.0
    elif delta.is_floating_point():
        delta = delta.float()
    else:
        raise DataError(f"{path}: perturbation must be float or int8, got {delta.dtype}")
    if delta.ndim == 4 and delta.shape[-1] == 3 and delta.shape[1] != 3:
        delta = delta.permute(0, 3, 1, 2)
    if delta.ndim != 4 or tuple(delta.shape[1:]) != IMAGE_SHAPE:
        raise DataError(f"{path}: perturbation must be (N, 3, 32, 32) or (K, 3, 32, 32), got {tuple(delta.shape)}")
    if not torch.isfinite(delta).all():
        raise DataError(f"{path}: perturbation holds NaN or infinite values")
    if delta.abs().max() > 1:
        raise DataError(f"{path}: perturbation values exceed 1 in magnitude (expected the [0, 1] image scale)")
    return delta


def apply_perturbation(base: ImageSet, delta: torch.Tensor, source: str = "<perturbation>", *,
                       per: str = "auto") -> ImageSet:
    """Add ``delta`` to ``base``, then clip and quantise.

    ``per``: ``"sample"`` (``delta[i]`` for image ``i``), ``"class"`` (``delta[label]``), or ``"auto"``, which
    reads the count; a count that fits both (N images == K classes) is ambiguous and must be named.
    """
    fits_sample, fits_class = delta.shape[0] == len(base), delta.shape[0] == len(base.classes)
    if per not in ("auto", "sample", "class"):
        raise ValueError(f"per must be 'auto', 'sample' or 'class', got {per!r}")
    if per == "auto" and fits_sample and fits_class:
        raise DataError(f"{source}: {delta.shape[0]} perturbations fit both the {len(base)} images and the "
                        f"{len(base.classes)} classes of {base.source}; say per='sample' or per='class'")
    if per == "sample" or (per == "auto" and fits_sample):
        if not fits_sample:
            raise DataError(f"{source}: {delta.shape[0]} perturbations, but {base.source} holds {len(base)} images")
        per_image = delta
    elif fits_class:
        per_image = delta[base.labels]
    else:
        raise DataError(f"{source}: {delta.shape[0]} perturbations fit neither the {len(base)} images "
                        f"nor the {len(base.classes)} classes of {base.source}")
    poisoned = (base.images.float() / 255 + per_image).clamp(0, 1).mul(255).round().to(torch.uint8)
    return base.with_images(poisoned, source)

"""The public file formats of the model-based poisons, read into an :class:`ImageSet`.

Most of them hold a perturbation or unlabelled images, so they need ``base``, the clean set they were made
from (same order; its labels are the poisoned set's labels):

- EM's ``perturbation.pt``: float ``(N | K, 3, 32, 32)`` on the [0, 1] scale (sample- or class-wise), read by
  :func:`eclipse.perturbations.load_perturbation` (``weights_only`` loading, never arbitrary unpickling);
- REM's ``*-def-noise.pkl``: a pickled numpy int8 ``(N, 3, 32, 32)`` array of ``round(255 * delta)``, read by
  the restricted unpickler admitting numpy's array reconstruction and nothing else;
- TAP's ``--save numpy`` export, ``poisoned_training_data.npy``: float64 ``(N, 32, 32, 3)`` holding pixel
  values 0..255, with its float labels in ``poisoned_training_labels.npy`` beside it (used when present);
- SEP's ``.npy``: float32 ``(N, 3, 32, 32)`` images in [0, 1] (no labels: ``base``'s);
- TAP's / EntF's PNG export: a folder of ``<index>.png`` (or ``data/<index>.png``), index into ``base``;
  images not in the folder stay clean.

Every reader validates shapes, dtypes, ranges and labels and names the file in its error.
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import torch

from .bounded import check_npy_header, decode_image, read_regular_file
from .errors import DataError

TAP_LABELS = "poisoned_training_labels.npy"
_INDEXED_PNG = re.compile(r"^(\d{1,9})\.png$", re.IGNORECASE)
_LEVEL_TOLERANCE = 1e-3  # a value within this of a whole pixel level counts as that level


def read_npy_array(path: Path) -> np.ndarray:
    """A plain numeric ``.npy`` (no pickled objects), its header checked against the file's size."""
    try:
        with open(path, "rb") as handle:
            check_npy_header(handle, path.stat().st_size, str(path))
        return np.load(path, allow_pickle=False)
    except DataError:
        raise
    except Exception as err:  # noqa: BLE001 - every malformed file is a data error, named
        raise DataError(f"{path}: not a readable .npy ({type(err).__name__}: {err})") from None


def _require_base(path: Path, base, what: str):
    if base is None:
        raise DataError(f"{path}: {what}; give the clean set it was made from (in Python: load_images(path, "
                        f"base=clean); on the command line: --reference CLEAN)")
    return base


def _labels_beside(path: Path, n: int):
    """TAP's float labels file next to its images, as int64 (None when absent)."""
    beside = path.with_name(TAP_LABELS)
    if beside == path or not beside.exists():
        return None
    raw = read_npy_array(beside)
    if raw.ndim != 1 or raw.shape[0] != n:
        raise DataError(f"{beside}: {raw.shape} labels for the {n} images of {path.name}")
    if not np.issubdtype(raw.dtype, np.number) or not np.isfinite(raw).all():
        raise DataError(f"{beside}: labels must be finite numbers")
    if np.abs(raw - np.round(raw)).max(initial=0) > 0 or raw.min(initial=0) < 0:
        raise DataError(f"{beside}: labels must be whole non-negative class indices")
    return torch.from_numpy(np.round(raw).astype(np.int64))


def images_from_array(raw: np.ndarray, where: str) -> torch.Tensor:
    """uint8 ``(N, 3, 32, 32)`` from a float image array, NCHW or NHWC, on [0, 1] (SEP) or 0..255 (TAP)."""
    if raw.ndim != 4:
        raise DataError(f"{where}: expected images (N, 3, 32, 32) or (N, 32, 32, 3), got shape {raw.shape}")
    if raw.shape[1] != 3 and raw.shape[-1] == 3:
        raw = raw.transpose(0, 3, 1, 2)
    if tuple(raw.shape[1:]) != (3, 32, 32):
        raise DataError(f"{where}: expected 32x32 RGB images, got shape {raw.shape}")
    if not np.isfinite(raw).all():
        raise DataError(f"{where}: images hold NaN or infinite values")
    low, high = float(raw.min()), float(raw.max())
    if low < -_LEVEL_TOLERANCE:
        raise DataError(f"{where}: values down to {low:.4g}: a perturbation, not images")
    scale = 255.0 if high > 1 + _LEVEL_TOLERANCE else 1.0
    if high > 255 + _LEVEL_TOLERANCE:
        raise DataError(f"{where}: values up to {high:.4g}, beyond 255")
    levels = raw.astype(np.float64) * (255.0 / scale)
    if scale == 255.0 and np.abs(levels - np.round(levels)).max() > _LEVEL_TOLERANCE:
        raise DataError(f"{where}: values on the 0..255 scale are not whole pixel levels")
    return torch.from_numpy(np.clip(np.round(levels), 0, 255).astype(np.uint8)).contiguous()


def read_npy(path: Path, base=None):
    """A ``.npy`` poison: images (TAP, SEP) or a perturbation (negative values, or int8), as an ImageSet."""
    from .data import ImageSet
    from .perturbations import apply_perturbation, load_perturbation

    raw = read_npy_array(path)
    if not np.issubdtype(raw.dtype, np.floating):
        if raw.dtype == np.uint8:
            raise DataError(f"{path}: uint8 images in a .npy have no labels; save them as .npz (data, targets)")
        base = _require_base(path, base, "a perturbation (int8) applies to a clean set")
        return apply_perturbation(base, load_perturbation(path), str(path))
    if raw.size and float(raw.min()) < -_LEVEL_TOLERANCE:
        base = _require_base(path, base, "a perturbation (negative values) applies to a clean set")
        return apply_perturbation(base, load_perturbation(path), str(path))
    images = images_from_array(raw, str(path))
    labels = _labels_beside(path, images.shape[0])
    if labels is None:
        base = _require_base(path, base, "images without labels take them from the clean set")
        if len(base) != images.shape[0]:
            raise DataError(f"{path}: {images.shape[0]} images, but the clean set {base.source} holds {len(base)}")
        labels, classes = base.labels, base.classes
    else:
        classes = base.classes if base is not None else None
    from .data import CIFAR10_CLASSES

    classes = classes or CIFAR10_CLASSES
    if int(labels.max()) >= len(classes):
        raise DataError(f"{path}: label {int(labels.max())} beyond the {len(classes)} classes")
    return ImageSet(images, labels, tuple(classes), str(path), {"format": "npy-images"})


def read_rem_noise(path: Path) -> torch.Tensor:
    """REM's noise pickle -> the perturbation on the [0, 1] scale, ``(N, 3, 32, 32)`` float32."""
    from .safe_pickle import NUMPY_GLOBALS, restricted_load

    obj = restricted_load(path, NUMPY_GLOBALS)
    if not isinstance(obj, np.ndarray):
        raise DataError(f"{path}: expected a numpy array of noise, got {type(obj).__name__}")
    if obj.dtype != np.int8:
        raise DataError(f"{path}: REM noise must be int8 (round(255 * delta)), got {obj.dtype}")
    if obj.ndim == 4 and obj.shape[1] != 3 and obj.shape[-1] == 3:
        obj = obj.transpose(0, 3, 1, 2)
    if obj.ndim != 4 or tuple(obj.shape[1:]) != (3, 32, 32):
        raise DataError(f"{path}: REM noise must be (N, 3, 32, 32), got {obj.shape}")
    return torch.from_numpy(obj.astype(np.float32) / 255.0)


def is_indexed_png_folder(path: Path) -> bool:
    """A folder of ``<index>.png`` files (or ``data/<index>.png``) and no class sub-folders."""
    root = path / "data" if (path / "data").is_dir() else path
    names = [p.name for p in root.iterdir()] if root.is_dir() else []
    return bool(names) and any(_INDEXED_PNG.match(n) for n in names) and not any((root / n).is_dir() for n in names)


def read_indexed_pngs(path: Path, base=None):
    """TAP's / EntF's export: ``<index>.png`` replacing image ``index`` of ``base`` (the others stay clean)."""
    root = path / "data" if (path / "data").is_dir() else path
    base = _require_base(path, base, "PNG files named by index take their labels from the clean set")
    images = base.images.clone()
    seen = 0
    for file in sorted(root.iterdir()):
        match = _INDEXED_PNG.match(file.name)
        if match is None:
            continue
        index = int(match.group(1))
        if index >= len(base):
            raise DataError(f"{file}: index {index}, but the clean set {base.source} holds {len(base)} images")
        images[index] = torch.from_numpy(decode_image(read_regular_file(file), str(file)).copy()).permute(2, 0, 1)
        seen += 1
    if seen == 0:
        raise DataError(f"{root}: no <index>.png files")
    result = base.with_images(images, str(path))
    return result

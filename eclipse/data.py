"""Load, validate, save and subset image datasets.

Everything becomes an :class:`ImageSet`: uint8 images ``(N, 3, 32, 32)`` plus int64 labels ``(N,)``.
Readable sources (:func:`load_images` picks by what the path is):

- ``"cifar10"`` (or ``None``): the offline ImageFolder copy (``ECLIPSE_DATA``, or ``shared/data`` beside
  the repository), else torchvision's ``cifar-10-batches-py`` under the cache (downloaded only on request);
- a directory or ``.tar.gz`` in ImageFolder layout (``[split/]<class>/<image>``);
- a ``cifar-10-batches-py`` folder (read with a restricted unpickler, never plain ``pickle.load``);
- the ECLIPSE release pickle: a list of ``(3072 RGB bytes, label)`` tuples;
- ``.npz`` with ``data`` (uint8, NHWC or NCHW) and ``targets``;
- the model-based poisons' public formats (EM ``perturbation.pt``, REM's int8 ``.pkl``, TAP's and SEP's
  ``.npy``, ``<index>.png`` folders), given the clean ``base`` they were made from
  (:mod:`eclipse.poison_files`); a perturbation tensor also via :func:`eclipse.perturbations.apply_perturbation`.

Decoded image folders are cached as ``.pt`` files keyed by the source's content (sha256). Every reader is
bounded by the file's size (:mod:`eclipse.bounded`, :mod:`eclipse.safe_pickle`, :mod:`eclipse.limits`).
"""
from __future__ import annotations

import hashlib
import io
import os
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import numpy as np
import torch

from .bounded import check_npy_header, decode_image, read_regular_file, tar_image_members
from .errors import DataError
from .limits import expansion_budget
from .safe_pickle import NUMPY_GLOBALS, RELEASE_GLOBALS, restricted_load, starts_with_numpy
from .storage import (TEMP_SUFFIX, atomic_torch_save, atomic_write_bytes, cache_dir, clean_stale_temps, config_key,
                      safe_torch_load)
from .validation import check_images, check_labels

CIFAR10_CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)
IMAGE_SHAPE = (3, 32, 32)
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp")
DEFENDER_POOL_PER_CLASS = 200  # test images per class reserved for the defender (2,000 = paper's B)
POOL_SEED = 0


@dataclass
class ImageSet:
    """Images as uint8 ``(N, 3, 32, 32)`` and labels as int64 ``(N,)``."""

    images: torch.Tensor
    labels: torch.Tensor
    classes: tuple[str, ...] = CIFAR10_CLASSES
    source: str = "<memory>"
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        validate(self.images, self.labels, source=self.source, num_classes=len(self.classes))

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def subset(self, index: torch.Tensor, source: str | None = None) -> "ImageSet":
        """The images at ``index`` (a new ImageSet sharing class names)."""
        return ImageSet(self.images[index], self.labels[index], self.classes,
                        source or f"{self.source}[subset]", dict(self.meta))

    def with_images(self, images: torch.Tensor, source: str) -> "ImageSet":
        """Same labels, new images (e.g. poisoned or purified)."""
        return ImageSet(images, self.labels.clone(), self.classes, source, dict(self.meta))

    def class_counts(self) -> list[int]:
        return torch.bincount(self.labels, minlength=len(self.classes)).tolist()


def validate(images: torch.Tensor, labels: torch.Tensor, *, source: str, num_classes: int = 10) -> None:
    """Raise :class:`DataError` naming ``source`` if images/labels are not a well-formed dataset
    (uint8 images ``(N, 3, 32, 32)``, N >= 1, int64 labels ``(N,)`` in ``0..num_classes-1``)."""
    try:
        check_images(images, size=IMAGE_SHAPE[1:])
        check_labels(labels, images.shape[0], num_classes, require_int64=True)
    except ValueError as err:
        raise DataError(f"{source}: {err}") from err


# --------------------------------------------------------------------------------------------
# finding the data
# --------------------------------------------------------------------------------------------
def _repo_root() -> Path:
    return Path(__file__).resolve().parents[1]


def find_offline_cifar10() -> Path | None:
    """The offline CIFAR-10 copy: ``ECLIPSE_DATA`` if set, else ``shared/data`` beside the repository."""
    env = os.environ.get("ECLIPSE_DATA")
    if env:
        return Path(env).expanduser()
    for base in (_repo_root(), Path.cwd()):
        for parent in (base, *base.parents):
            candidate = parent / "shared" / "data" / "cifar10-jpeg.tar.gz"
            if candidate.exists():
                return candidate
    return None


def torchvision_root() -> Path:
    """Where torchvision's CIFAR-10 lives (or would be downloaded): ``<cache>/torchvision``."""
    return cache_dir() / "torchvision"


def load_cifar10(split: str = "train", *, source: str | os.PathLike | None = None,
                 download: bool | None = None) -> ImageSet:
    """CIFAR-10 ``split`` ("train" or "test") from ``source``, the offline copy, or torchvision's copy
    (downloaded if ``download``; None: if the environment sets ``ECLIPSE_DOWNLOAD=1``, which reaches notebooks)."""
    if download is None:
        download = os.environ.get("ECLIPSE_DOWNLOAD", "") == "1"
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    path = Path(source).expanduser() if source is not None else find_offline_cifar10()
    if path is None:
        batches = torchvision_root() / "cifar-10-batches-py"
        if not batches.exists():
            if not download:
                raise DataError(
                    f"CIFAR-10 not found: set ECLIPSE_DATA (or --data) to the ImageFolder .tar.gz/folder, "
                    f"or set ECLIPSE_DOWNLOAD=1 (download=True) to fetch it with torchvision into {torchvision_root()}")
            import torchvision

            torchvision.datasets.CIFAR10(str(torchvision_root()), train=(split == "train"), download=True)
        path = batches
    return load_images(path, split=split)


# --------------------------------------------------------------------------------------------
# readers
# --------------------------------------------------------------------------------------------
def load_images(path: str | os.PathLike, *, split: str | None = None, base: "ImageSet | None" = None) -> ImageSet:
    """Read any supported dataset file or folder (see the module docstring) into an ImageSet.

    ``base``: the clean set a poison file was made from, for the formats that hold a perturbation or
    unlabelled images (EM ``.pt``, REM ``.pkl``, TAP/SEP ``.npy``, ``<index>.png`` folders; see
    :mod:`eclipse.poison_files`); their error says so when it is missing."""
    from . import poison_files

    path = Path(path).expanduser()
    if not path.exists():
        raise DataError(f"{path}: no such file or directory")
    name = path.name.lower()
    if path.is_dir():
        if (path / "cifar-10-batches-py").is_dir():
            path = path / "cifar-10-batches-py"
        if (path / "data_batch_1").exists() or (path / "test_batch").exists():
            return _cached(path, split or "train", _read_cifar_batches)
        if split is None and poison_files.is_indexed_png_folder(path):
            return poison_files.read_indexed_pngs(path, base)
        return _cached(path, split, _read_image_folder)
    if name.endswith((".tar.gz", ".tgz", ".tar")):
        return _cached(path, split, _read_image_tar)
    if name.endswith((".pkl", ".pickle")):
        if starts_with_numpy(path):  # REM's int8 noise array; else the release list (no numpy admitted)
            from .perturbations import apply_perturbation

            poison_files._require_base(path, base, "REM noise applies to a clean set")
            return apply_perturbation(base, poison_files.read_rem_noise(path), str(path), per="sample")
        return read_release_pickle(path)
    if name.endswith(".npz"):
        return read_npz(path)
    if name.endswith(".npy"):
        return poison_files.read_npy(path, base)
    if name.endswith(".pt"):
        from .perturbations import apply_perturbation, load_perturbation

        poison_files._require_base(path, base, "a perturbation (EM's perturbation.pt) applies to a clean set")
        return apply_perturbation(base, load_perturbation(path), str(path))
    raise DataError(f"{path}: unknown dataset format (expected a folder, .tar.gz, .pkl, .npz, .npy or .pt)")


def _content_key(path: Path) -> str:
    """sha256 of a file's bytes, or of every image (or batch) file's relative name and bytes under a folder (the decode
    cache is keyed on content: a same-size copy made with ``cp -p`` is not mistaken for the original).
    Memoised per process on (inode, size, mtime, ctime), which a copy cannot keep."""
    files = [path] if path.is_file() else sorted(
        f for f in path.rglob("*") if f.suffix.lower() in IMAGE_EXTENSIONS + ("", ".meta") and f.is_file())
    digest = hashlib.sha256()
    for file in files:
        info = file.stat()
        stamp = (str(file.resolve()), info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns)
        if stamp not in _HASHES:
            h = hashlib.sha256()
            with open(file, "rb") as handle:
                for block in iter(lambda: handle.read(1 << 20), b""):
                    h.update(block)
            _HASHES[stamp] = h.hexdigest()
        digest.update(f"{file.relative_to(path) if file != path else ''}\0{_HASHES[stamp]}\0".encode())
    return digest.hexdigest()


_HASHES: dict[tuple, str] = {}


def content_key(path: str | os.PathLike) -> str:
    """sha256 of a file's content (a folder: of its image files' names and content); memoised per process."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such file")
    return _content_key(path)


def _cached(path: Path, split: str | None, reader) -> ImageSet:
    """Decode ``path`` with ``reader`` once; later loads of the same content come from the cache."""
    key = config_key({"content": _content_key(path), "split": split, "reader": reader.__name__, "version": 2})
    target = cache_dir() / "decoded" / f"{path.name.split('.')[0]}-{split or 'all'}-{key}.pt"
    if target.exists():
        try:
            blob = safe_torch_load(target)
            return ImageSet(blob["images"], blob["labels"], tuple(blob["classes"]), str(path), {"split": split})
        except (ValueError, KeyError, TypeError):
            target.unlink(missing_ok=True)  # a damaged cache entry is rebuilt, never trusted
    images, labels, classes = reader(path, split)
    result = ImageSet(images, labels, tuple(classes), str(path), {"split": split})
    atomic_torch_save({"images": images, "labels": labels, "classes": list(classes)}, target)
    return result


def _collect(entries: Iterable[tuple[str, str, bytes]], where: Path,
             split: str | None = None) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """entries: (class name, file name, bytes). Classes sorted (CIFAR-10's order is alphabetical)."""
    items = sorted(entries, key=lambda e: (e[0], e[1]))
    if not items:
        layout = f"{split}/<class>/<image>" if split else "[split/]<class>/<image>"
        raise DataError(f"{where}: no images found (expected {layout} entries)")
    classes = sorted({c for c, _, _ in items})
    index = {c: i for i, c in enumerate(classes)}
    arrays = [decode_image(blob, f"{where}:{c}/{n}") for c, n, blob in items]
    images = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()
    labels = torch.tensor([index[c] for c, _, _ in items], dtype=torch.int64)
    return images, labels, classes


def _split_parts(rel: list[str], split: str | None) -> tuple[str, str] | None:
    """Map a relative path to (class, file) under ``split`` (or with no split level)."""
    if split is not None and len(rel) == 3 and rel[0] == split:
        return rel[1], rel[2]
    if split is None and len(rel) == 2:
        return rel[0], rel[1]
    return None


def _read_image_tar(path: Path, split: str | None):
    entries = []
    for name, payload in tar_image_members(path, IMAGE_EXTENSIONS):
        parts = _split_parts([p for p in name.split("/") if p not in ("", ".")], split)
        if parts is not None:
            entries.append((parts[0], parts[1], payload))
    return _collect(entries, path, split)


def _read_image_folder(path: Path, split: str | None):
    root = path
    if split is not None:
        if not (path / split).is_dir():
            raise DataError(f"{path}: no '{split}' folder (expected {path}/{split}/<class>/<image>)")
        root = path / split
    entries = [(f.parent.name, f.name, read_regular_file(f))
               for f in root.glob("*/*") if f.suffix.lower() in IMAGE_EXTENSIONS]
    return _collect(entries, root)


def read_release_pickle(path: str | os.PathLike) -> ImageSet:
    """The ECLIPSE release format: a pickled list of ``(32*32*3 RGB bytes, label)`` tuples.

    Read by :func:`eclipse.safe_pickle.restricted_load`; a list claiming more images than the file's bytes
    could hold (memo references repeat one entry) is refused before anything is allocated for it."""
    path = Path(path)
    return _release_images(restricted_load(path, RELEASE_GLOBALS), path)


def _release_images(obj, path: Path) -> ImageSet:
    """The ImageSet of an unpickled release list (validated entry by entry, bounded by the file's size)."""
    if not isinstance(obj, (list, tuple)) or len(obj) == 0:
        raise DataError(f"{path}: expected a non-empty list of (bytes, label) tuples, got {type(obj).__name__}")
    n = len(obj)
    size = path.stat().st_size
    if n * 3072 > size:
        raise DataError(f"{path}: lists {n:,} images, but {n:,} x 3072 bytes cannot fit in its {size:,} bytes "
                        "(entries repeated through pickle memo references)")
    buffer = bytearray(n * 3072)
    labels = np.empty(n, dtype=np.int64)
    for i, item in enumerate(obj):
        if not (isinstance(item, (tuple, list)) and len(item) == 2 and isinstance(item[0], (bytes, bytearray))
                and isinstance(item[1], int) and not isinstance(item[1], bool)):
            raise DataError(f"{path}: entry {i} is not a (bytes, int) pair")
        if len(item[0]) != 3072:
            raise DataError(f"{path}: entry {i} holds {len(item[0])} bytes, expected 3072 (32x32 RGB)")
        if not 0 <= item[1] < len(CIFAR10_CLASSES):
            raise DataError(f"{path}: entry {i} has label {_short(item[1])}, expected 0..{len(CIFAR10_CLASSES) - 1}")
        buffer[i * 3072:(i + 1) * 3072] = item[0]
        labels[i] = item[1]
    images = torch.frombuffer(buffer, dtype=torch.uint8).view(n, 32, 32, 3).permute(0, 3, 1, 2).contiguous()
    return ImageSet(images, torch.from_numpy(labels), source=str(path), meta={"format": "eclipse-pickle"})


def _short(value: int) -> str:
    """An int for a message: its digits, or its size when it is absurdly long."""
    return str(value) if value.bit_length() <= 64 else f"of {value.bit_length()} bits"


def _read_cifar_batches(path: Path, split: str):
    if split not in ("train", "test"):
        raise DataError(f"{path}: a cifar-10-batches-py folder has the splits train and test, not {split!r}")
    names = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
    chunks, labels = [], []
    for name in names:
        file = path / name
        if not file.exists():
            raise DataError(f"{file}: missing CIFAR-10 batch file")
        blob = restricted_load(file, NUMPY_GLOBALS)
        if not isinstance(blob, dict) or b"data" not in blob or b"labels" not in blob:
            raise DataError(f"{file}: not a CIFAR-10 batch (no data/labels)")
        data, batch_labels = blob[b"data"], blob[b"labels"]
        if not isinstance(data, np.ndarray) or data.dtype != np.uint8:
            kind = data.dtype if isinstance(data, np.ndarray) else type(data).__name__
            raise DataError(f"{file}: data must be a uint8 array, got {kind} (values are not wrapped modulo 256)")
        if data.ndim != 2 or data.shape[1] != 3072:
            raise DataError(f"{file}: data must be (N, 3072), got {data.shape}")
        if not isinstance(batch_labels, (list, tuple)) or len(batch_labels) != data.shape[0]:
            raise DataError(f"{file}: needs one label per image ({data.shape[0]} images)")
        for i, v in enumerate(batch_labels):
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or not 0 <= v < len(CIFAR10_CLASSES):
                raise DataError(f"{file}: label {i} is {_short(v) if isinstance(v, int) else type(v).__name__}, "
                                f"expected 0..{len(CIFAR10_CLASSES) - 1}")
        chunks.append(data.reshape(-1, 3, 32, 32))
        labels.extend(int(v) for v in batch_labels)
    images = torch.from_numpy(np.concatenate(chunks))
    return images, torch.tensor(labels, dtype=torch.int64), list(CIFAR10_CLASSES)


def read_npz(path: str | os.PathLike) -> ImageSet:
    """``.npz`` with ``data`` (uint8, NHWC or NCHW) and ``targets`` (ints); pickles are refused, and each
    member's header must fit its size within the file's expansion budget (no zip bombs)."""
    path = Path(path)
    budget = expansion_budget(path.stat().st_size)
    try:
        with np.load(path, allow_pickle=False) as npz:
            if "data" not in npz or "targets" not in npz:
                raise DataError(f"{path}: .npz must hold 'data' and 'targets', found {sorted(npz.files)}")
            for member in ("data", "targets"):
                info = npz.zip.getinfo(f"{member}.npy")
                if info.file_size > budget:
                    raise DataError(f"{path}: member {member} expands to {info.file_size:,} bytes, more than its "
                                    f"{path.stat().st_size:,}-byte file may hold ({budget:,}; a zip bomb?)")
                with npz.zip.open(info) as handle:
                    check_npy_header(handle, info.file_size, f"{path}:{member}")
            data, targets = npz["data"], npz["targets"]
    except DataError:
        raise
    except Exception as err:  # noqa: BLE001 - zip/format errors of many kinds
        raise DataError(f"{path}: not a readable .npz ({type(err).__name__}: {err})") from None
    if data.dtype != np.uint8:
        raise DataError(f"{path}: 'data' must be uint8, got {data.dtype}")
    if data.ndim == 4 and data.shape[-1] == 3 and data.shape[1] != 3:
        data = data.transpose(0, 3, 1, 2)
    if not np.issubdtype(targets.dtype, np.integer):
        raise DataError(f"{path}: 'targets' must be integers, got {targets.dtype}")
    if targets.ndim == 1 and targets.size and (targets.min() < 0 or targets.max() >= len(CIFAR10_CLASSES)):
        raise DataError(f"{path}: 'targets' must lie in 0..{len(CIFAR10_CLASSES) - 1}, got range "
                        f"{_short(int(targets.min()))}..{_short(int(targets.max()))}")
    images = torch.from_numpy(np.ascontiguousarray(data))
    return ImageSet(images, torch.from_numpy(targets.astype(np.int64)), source=str(path), meta={"format": "npz"})


# --------------------------------------------------------------------------------------------
# writers
# --------------------------------------------------------------------------------------------
def save_images(dataset: ImageSet, path: str | os.PathLike) -> Path:
    """Write ``dataset`` atomically as the ECLIPSE pickle (``.pkl``), ``.npz`` (NHWC ``data``) or, for a
    path without a suffix, a PNG ImageFolder (``<path>/<class>/<index>.png``, which must not exist yet)."""
    path = Path(path)
    hwc = dataset.images.permute(0, 2, 3, 1).contiguous().numpy()
    if path.suffix in (".pkl", ".pickle"):
        records = [(hwc[i].tobytes(), int(label)) for i, label in enumerate(dataset.labels.tolist())]
        return atomic_write_bytes(path, pickle.dumps(records, protocol=4))
    if path.suffix == ".npz":
        buffer = io.BytesIO()
        np.savez(buffer, data=hwc, targets=dataset.labels.numpy())
        return atomic_write_bytes(path, buffer.getvalue())
    if not path.suffix:
        return _save_image_folder(dataset, path)
    raise DataError(f"{path}: can only write .pkl (ECLIPSE format), .npz or a folder (a path without a suffix)")


def _save_image_folder(dataset: ImageSet, path: Path) -> Path:
    """PNG ImageFolder written into a temporary sibling folder, then renamed into place (never half-written,
    never over an existing folder)."""
    import shutil
    import tempfile

    from torchvision.io import encode_png

    if path.exists():
        raise DataError(f"{path}: already exists; ImageFolder output goes to a new folder (nothing was overwritten)")
    path.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_temps(path.parent)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.{os.getpid()}.", suffix=TEMP_SUFFIX))
    try:
        width = len(str(len(dataset)))
        for i, (image, label) in enumerate(zip(dataset.images, dataset.labels.tolist())):
            folder = tmp / dataset.classes[label]
            folder.mkdir(exist_ok=True)
            (folder / f"{i:0{width}d}.png").write_bytes(encode_png(image).numpy().tobytes())
        tmp.rename(path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


# --------------------------------------------------------------------------------------------
# subsets and splits
# --------------------------------------------------------------------------------------------
def balanced_indices(labels: torch.Tensor, per_class: int, seed: int, num_classes: int | None = None) -> torch.Tensor:
    """``per_class`` seeded random indices of each class, sorted."""
    num_classes = num_classes or int(labels.max()) + 1
    generator = torch.Generator().manual_seed(seed)
    chosen = []
    for k in range(num_classes):
        members = torch.nonzero(labels == k).flatten()
        if len(members) < per_class:
            raise DataError(f"class {k} has {len(members)} images, fewer than the {per_class} requested")
        chosen.append(members[torch.randperm(len(members), generator=generator)[:per_class]])
    return torch.cat(chosen).sort().values


def split_test(test: ImageSet) -> tuple[ImageSet, ImageSet]:
    """Split CIFAR-10 test into (defender pool, evaluation set), disjoint and fixed.

    The defender's sparse clean images (paper: 2,000 test images) come from the pool; victims are
    evaluated only on the other 8,000 images, so the purifier never saw an evaluation image.
    """
    pool_idx = balanced_indices(test.labels, DEFENDER_POOL_PER_CLASS, POOL_SEED, len(test.classes))
    mask = torch.ones(len(test), dtype=torch.bool)
    mask[pool_idx] = False
    return test.subset(pool_idx, f"{test.source}[defender-pool]"), test.subset(
        torch.nonzero(mask).flatten(), f"{test.source}[eval]")


def sparse_set(pool: ImageSet, size: int, seed: int) -> ImageSet:
    """``size`` class-balanced clean images (the defender's sparse set D_s), seeded."""
    k = len(pool.classes)
    if size % k:
        raise ValueError(f"sparse-set size {size} must be a multiple of the {k} classes")
    return pool.subset(balanced_indices(pool.labels, size // k, seed, k), f"{pool.source}[sparse {size}]")


def train_subset(train: ImageSet, size: int | None, seed: int) -> ImageSet:
    """A class-balanced seeded subset of ``size`` training images (``None``: all of them)."""
    if size is None or size >= len(train):
        return train
    k = len(train.classes)
    return train.subset(balanced_indices(train.labels, size // k, seed, k), f"{train.source}[{size}]")

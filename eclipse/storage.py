"""Where artifacts live and how they are written: cache folder, atomic writes, safe reads."""
from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch


def cache_dir() -> Path:
    """Root folder for decoded datasets, poisons, checkpoints and results.

    ``ECLIPSE_CACHE`` overrides it; the default is ``$XDG_CACHE_HOME/eclipse`` (``~/.cache/eclipse``).
    """
    root = os.environ.get("ECLIPSE_CACHE")
    if root:
        path = Path(root).expanduser()
    else:
        path = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "eclipse"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _umask() -> int:
    """The process umask (read without changing it where /proc allows)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


TEMP_SUFFIX = ".tmp"


def clean_stale_temps(folder: str | os.PathLike) -> list[Path]:
    """Remove temporary files of :func:`atomic_write_bytes` (and half-written ImageFolder folders) in
    ``folder`` whose writing process is gone (left by a kill). Returns what was removed."""
    removed = []
    folder = Path(folder)
    if not folder.is_dir():
        return removed
    for tmp in folder.glob(f".*{TEMP_SUFFIX}"):
        parts = tmp.name.rsplit(".", 3)  # .<name>.<pid>.<random>.tmp -> [..., pid, random, tmp]
        if len(parts) == 4 and parts[1].isdigit() and not _pid_alive(int(parts[1])):
            try:
                if tmp.is_dir() and not tmp.is_symlink():
                    import shutil

                    shutil.rmtree(tmp)
                else:
                    tmp.unlink()
                removed.append(tmp)
            except OSError:
                pass
    return removed


def atomic_write_bytes(path: str | os.PathLike, payload: bytes) -> Path:
    """Write ``payload`` to ``path`` through a temporary file and a rename (never half-written).

    The file gets the permissions of a plain ``open()`` (0666 less the umask), not ``mkstemp``'s 0600;
    temporary files left in the folder by killed writers are removed first."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_temps(path.parent)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{os.getpid()}.", suffix=TEMP_SUFFIX)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` that leaves either the old file or the complete new one."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return atomic_write_bytes(path, buffer.getvalue())


def atomic_write_json(obj: Any, path: str | os.PathLike) -> Path:
    """Write ``obj`` as indented JSON, atomically."""
    return atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n").encode())


def atomic_write_text(text: str, path: str | os.PathLike) -> Path:
    """Write text atomically."""
    return atomic_write_bytes(path, text.encode())


def _check_torch_zip(path: Path, size: int) -> None:
    """A torch zip file stores tensors uncompressed; a compressed member (a zip bomb) or members that add up
    to more than the file are refused before torch reads them."""
    import zipfile

    if not zipfile.is_zipfile(path):
        return
    try:
        with zipfile.ZipFile(path) as archive:
            infos = archive.infolist()
    except (zipfile.BadZipFile, OSError, ValueError) as err:
        raise ValueError(f"{path}: not a readable torch file ({type(err).__name__}: {err})") from None
    compressed = [i.filename for i in infos if i.compress_type != zipfile.ZIP_STORED]
    if compressed:
        raise ValueError(f"{path}: holds compressed members ({compressed[0]}, ...), which torch.save never writes")
    total = sum(i.file_size for i in infos)
    if total > size:
        raise ValueError(f"{path}: its members claim {total:,} bytes, more than the file's {size:,}")


def _overlaps(tensor: torch.Tensor) -> bool:
    """Whether two elements of ``tensor`` share memory (e.g. a stride-0 view claiming a huge shape)."""
    dims = sorted((st, sz) for st, sz in zip(tensor.stride(), tensor.shape) if sz > 1)
    reach = 1
    for st, sz in dims:
        if st < reach:
            return True
        reach = st * sz
    return False


def _check_tensors(obj: Any, path: Path, size: int) -> None:
    """Every tensor must own its elements (no overlapping strides) and all of them together may not hold
    more bytes than the file could store: a 1.6 KB file cannot stand for 12 GB of perturbations."""
    total = 0
    stack = [obj]
    while stack:
        item = stack.pop()
        if isinstance(item, torch.Tensor):
            if _overlaps(item):
                raise ValueError(f"{path}: tensor of shape {tuple(item.shape)} has overlapping strides "
                                 f"{item.stride()} (one stored value stands for many); refusing it")
            total += item.numel() * item.element_size()
            if total > size + (1 << 20):
                raise ValueError(f"{path}: its tensors hold {total:,} bytes, more than the file's {size:,}")
        elif isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, (list, tuple)):
            stack.extend(item)


def safe_torch_load(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> Any:
    """Load a torch file with ``weights_only=True`` (tensors and plain containers only, no code), bounded by
    the file's size: no compressed members, no overlapping views, no more tensor bytes than the file holds."""
    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError as err:
        raise ValueError(f"{path}: cannot read ({err.strerror or err})") from None
    _check_torch_zip(path, size)
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # noqa: BLE001 - re-raised with the file named
        raise ValueError(f"{path}: not a readable torch file of tensors ({type(err).__name__}: {err})") from None
    _check_tensors(obj, path, size)
    return obj


def tensor_hash(*tensors: torch.Tensor, length: int = 16) -> str:
    """Short sha256 of the tensors' bytes (content fingerprint for cache keys and resume checks)."""
    h = hashlib.sha256()
    for tensor in tensors:
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:length]


def _content(value: Any) -> Any:
    """JSON stand-in for values json cannot hold: tensors/arrays by content hash, files by content hash."""
    import numpy as np

    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().contiguous().numpy()
    if isinstance(value, np.ndarray):
        return {"array": hashlib.sha256(value.tobytes()).hexdigest(), "shape": list(value.shape), "dtype": str(value.dtype)}
    if isinstance(value, os.PathLike) or (isinstance(value, str) and os.path.isfile(value)):
        return {"file": hashlib.sha256(Path(value).read_bytes()).hexdigest()}
    return str(value)


def config_key(config: Any, length: int = 16) -> str:
    """Stable short hash of a configuration (used to key cached artifacts); tensors, arrays and files
    count by their content."""
    blob = json.dumps(config, sort_keys=True, default=_content).encode()
    return hashlib.sha256(blob).hexdigest()[:length]

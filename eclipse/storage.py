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


def atomic_write_bytes(path: str | os.PathLike, payload: bytes) -> Path:
    """Write ``payload`` to ``path`` through a temporary file and a rename (never half-written)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
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


def safe_torch_load(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> Any:
    """Load a torch file with ``weights_only=True`` (tensors and plain containers only, no code)."""
    path = Path(path)
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # noqa: BLE001 - re-raised with the file named
        raise ValueError(f"{path}: not a readable torch file of tensors ({type(err).__name__}: {err})") from err


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

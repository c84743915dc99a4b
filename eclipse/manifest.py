"""Provenance of a result: profile, seed, commit, machine, wall time."""
from __future__ import annotations

import datetime as _dt
import os
import platform
import subprocess
from pathlib import Path

import torch

from .storage import atomic_write_json


def git_commit(repo: Path | None = None) -> str:
    """The current commit (with ``-dirty`` if the work tree has uncommitted changes), or ``unknown``."""
    repo = repo or Path(__file__).resolve().parents[1]
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True,
                             check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=repo,
                               capture_output=True, text=True, check=True).stdout.strip()
        return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def machine() -> dict:
    """What ran it: host, CPU count, torch threads, accelerator."""
    info = {"platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}
    return info


def write_manifest(path: str | Path, *, profile: str, seed: int, wall_time_s: float, **extra) -> Path:
    """Write a JSON manifest next to a figure or table."""
    record = {"profile": profile, "seed": seed, "commit": git_commit(), "machine": machine(),
              "wall_time_s": round(wall_time_s, 1),
              "finished": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), **extra}
    return atomic_write_json(record, path)

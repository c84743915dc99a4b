"""Seeds, generators and the compute device."""
from __future__ import annotations

import os
import random

import numpy as np
import torch


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and torch; return a CPU ``torch.Generator`` seeded the same way."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def make_generator(seed: int) -> torch.Generator:
    """A fresh CPU generator, so a component's randomness does not depend on what ran before it."""
    return torch.Generator().manual_seed(int(seed))


_DEVICE: torch.device | None = None


def set_default_device(device: torch.device | str | None) -> torch.device:
    """Make ``device`` what :func:`default_device` returns in this process (None: back to automatic)."""
    global _DEVICE
    _DEVICE = torch.device(device) if device is not None else None
    return default_device()


def default_device() -> torch.device:
    """The device set by :func:`set_default_device`, else ``ECLIPSE_DEVICE``, else CUDA when available, else CPU."""
    if _DEVICE is not None:
        return _DEVICE
    name = os.environ.get("ECLIPSE_DEVICE")
    if name:
        return torch.device(name)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def resolve_device(name: str | None = "auto") -> torch.device:
    """``auto``/None: :func:`default_device`; otherwise the named device, checked to exist here."""
    if name in (None, "", "auto"):
        return default_device()
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"unknown device {name!r} (auto, cpu, cuda, cuda:N or mps)") from err
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {name!r} asked for, but torch sees no CUDA GPU on this machine")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"device {name!r}: only {torch.cuda.device_count()} CUDA device(s) here")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError("device 'mps' asked for, but MPS is not available here")
    return device


def native_bf16() -> bool:
    """Whether this CPU computes bfloat16 natively (AVX512-BF16 or AMX); elsewhere bf16 autocast is emulated
    and several times slower than fp32 (7x measured on a 2-core AVX2 machine). Linux only; True elsewhere."""
    try:
        flags = open("/proc/cpuinfo").read()
    except OSError:
        return True
    return any(flag in flags for flag in ("avx512_bf16", "amx_bf16"))

"""How the UNet runs, apart from what it computes: autocast precision, memory format, ``torch.compile``.

Each is a switch (``--unet-precision``, ``--channels-last``, ``--compile`` on every command with a profile;
``Profile.unet_runtime``), off by default: fp32 eager NCHW is what the official code runs, and what the
conformance tests check. bf16 changes the numbers (purified images within a level or two), so it keys every
artifact it makes; channels_last and compile leave the arithmetic to other kernels and are keyed too (a cache hit
never stands for another computation). Measured effect: ``benchmarks/unet_switches.py`` and ``figures/benchmarks-cpu.md``.
"""
from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, fields

import torch

# autocast dtype per precision name (None: no autocast)
PRECISIONS: dict[str, torch.dtype | None] = {"fp32": None, "bf16": torch.bfloat16}


@dataclass(frozen=True)
class UNetRuntime:
    """The UNet's execution switches (see the module docstring)."""

    precision: str = "fp32"
    channels_last: bool = False
    compile: bool = False

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ValueError(f"unknown UNet precision {self.precision!r}; choose from {', '.join(PRECISIONS)}")

    @classmethod
    def from_dict(cls, data: dict | None) -> "UNetRuntime":
        names = {f.name for f in fields(cls)}
        unknown = set(data or {}) - names
        if unknown:
            raise ValueError(f"unknown UNet runtime settings {sorted(unknown)}; known: {sorted(names)}")
        return cls(**(data or {}))

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        return PRECISIONS[self.precision]

    def key(self) -> dict:
        """The switches that differ from the default (``{}`` by default, so fp32 eager keys stay as they were)."""
        default = UNetRuntime()
        return {k: v for k, v in asdict(self).items() if getattr(default, k) != v}

    def label(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.key().items()) or "fp32"


def prepare_unet(model: torch.nn.Module, runtime: UNetRuntime, *, inplace: bool = False) -> torch.nn.Module:
    """``model`` with ``runtime``'s memory format and compilation (precision is the caller's autocast). A copy
    unless ``inplace`` (a cached model shared with other callers keeps its layout); the model itself when no switch
    is on."""
    if not (runtime.channels_last or runtime.compile):
        return model
    net = model if inplace else copy.deepcopy(model)
    if runtime.channels_last:
        net = net.to(memory_format=torch.channels_last)
    if runtime.compile:
        net = torch.compile(net)
    return net


def base_module(net: torch.nn.Module) -> torch.nn.Module:
    """The module under a ``torch.compile`` wrapper (its state dict has the plain parameter names)."""
    return getattr(net, "_orig_mod", net)

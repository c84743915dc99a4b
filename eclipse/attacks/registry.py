"""Registry of poisoning attacks by name, and ``poison``, the one entry point that validates inputs.

Every attack is a plain function ``fn(images, labels, *, seed, num_classes, **params) -> torch.Tensor``
that takes uint8 images ``(N, 3, H, W)`` and int64 labels ``(N,)`` in ``0..num_classes-1`` and returns the
poisoned uint8 images (same shape). ``ATTACKS`` is an ``eclipse.registry.Registry`` of ``AttackSpec``s
(``names()``, ``description(name)``, ``help()`` for the CLI). The model-free attacks register themselves from
their modules (``eclipse.attacks.urp``, ``lsp``, ``ar``, ``ops``), and so do the model-based ones (``em``,
``rem``, ``tap``, ``sep``, ``efp``, ``adp``, built on :mod:`eclipse.attacks.craft`): define the function, then
``register(AttackSpec(...))`` at import time of its module, and import that module in
``eclipse/attacks/__init__.py``.
"""
from __future__ import annotations

import inspect

import math
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from eclipse.attacks.budgets import perturbation_norms
from eclipse.registry import Registry
from eclipse.validation import check_images, check_labels

FAMILIES = ("model-free", "model-based")
NORMS = ("linf", "l2", "l0")
# Slack on the registered budget when checking a quantised poison (float rounding of the norm itself).
BUDGET_TOLERANCE = 1e-6
_CHECK_CHUNK = 4096


class AttackFn(Protocol):
    def __call__(
        self, images: torch.Tensor, labels: torch.Tensor, *, seed: int, num_classes: int, **params: Any
    ) -> torch.Tensor: ...


@dataclass(frozen=True)
class AttackSpec:
    """One registered attack: its function, family, the norm it is budgeted in and that budget.

    ``budget`` is on the [0, 1] pixel scale for ``linf``/``l2`` and a count of pixel positions for ``l0``.
    """

    name: str
    fn: AttackFn
    family: str
    norm: str
    budget: float
    description: str
    resumable: bool = False  # takes ``state_dir`` (resume state) and ``progress`` (a progress bar)
    file_params: tuple[str, ...] = ()  # parameters naming files whose content (not path) keys the cached poison

    def __post_init__(self) -> None:
        if not self.name or self.name != self.name.strip().lower():
            raise ValueError(f"attack name must be non-empty lower-case without spaces, got {self.name!r}")
        if not callable(self.fn):
            raise ValueError(f"attack {self.name!r}: fn must be callable")
        if self.family not in FAMILIES:
            raise ValueError(f"attack {self.name!r}: family must be one of {FAMILIES}, got {self.family!r}")
        if self.norm not in NORMS:
            raise ValueError(f"attack {self.name!r}: norm must be one of {NORMS}, got {self.norm!r}")
        if not (isinstance(self.budget, (int, float)) and math.isfinite(self.budget) and self.budget > 0):
            raise ValueError(f"attack {self.name!r}: budget must be a positive finite number, got {self.budget!r}")


ATTACKS: Registry[AttackSpec] = Registry("attack")
"""The registered attacks, by name (a live, read-only mapping; add entries with ``register``)."""


def register(spec: AttackSpec, *, replace: bool = False) -> AttackSpec:
    """Add ``spec`` to ``ATTACKS``; a second attack with the same name is an error unless ``replace``."""
    if not isinstance(spec, AttackSpec):
        raise TypeError(f"register expects an AttackSpec, got {type(spec).__name__}")
    return ATTACKS.register(spec.name, spec, description=spec.description, replace=replace)


def get_attack(name: str) -> AttackSpec:
    """The registered attack called ``name`` (case-insensitive); ``KeyError`` naming the known attacks."""
    return ATTACKS[name]


def validate_poison_inputs(
    images: torch.Tensor, labels: torch.Tensor, num_classes: int | None = None
) -> tuple[torch.Tensor, int]:
    """Check images (uint8 ``(N, 3, H, W)``, non-empty) and labels (integer ``(N,)`` in range).

    Returns the labels as int64 on the CPU and the number of classes (``labels.max() + 1`` when not given).
    Raises ``ValueError`` naming the problem.
    """
    check_images(images)
    labels = check_labels(labels, images.shape[0], num_classes)
    return labels, (int(labels.max()) + 1 if num_classes is None else num_classes)


def _check_seed(seed: Any) -> int:
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"seed must be an int, got {seed!r}")
    return seed


def check_within_budget(poisoned: torch.Tensor, clean: torch.Tensor, spec: AttackSpec) -> None:
    """Raise ``RuntimeError`` if any poisoned image exceeds ``spec``'s budget (after 8-bit quantisation)."""
    worst, count = 0.0, 0
    for start in range(0, clean.shape[0], _CHECK_CHUNK):
        stop = start + _CHECK_CHUNK
        size = perturbation_norms(poisoned[start:stop], clean[start:stop])[spec.norm].double()
        worst = max(worst, float(size.max()))
        count += int((size > spec.budget + BUDGET_TOLERANCE).sum())
    if count:
        raise RuntimeError(
            f"attack {spec.name!r}: {count} poisoned images exceed the {spec.norm} budget {spec.budget:.6g} "
            f"(largest {worst:.6g}); pass check_budget=False if a larger budget was intended"
        )


def poison(
    name: str,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    seed: int,
    num_classes: int | None = None,
    check_budget: bool = True,
    state_dir: Any = None,
    progress: bool = True,
    **params: Any,
) -> torch.Tensor:
    """Poison ``images`` with the attack ``name``; returns uint8 images of the same shape and device.

    ``params`` go to the attack function. With ``check_budget`` every poisoned image is verified to be within
    the attack's registered budget after quantisation (a ``RuntimeError`` otherwise). A resumable
    (model-based) attack keeps its resume state in ``state_dir`` (a folder; none: no resume) and shows a
    progress bar unless ``progress`` is False; neither changes the poison.
    """
    spec = get_attack(name)
    seed = _check_seed(seed)
    accepted = set(inspect.signature(spec.fn).parameters) - {"images", "labels", "seed", "num_classes", "state_dir",
                                                            "progress"}
    unknown = sorted(set(params) - accepted)
    if unknown:
        raise ValueError(f"attack {spec.name!r} has no parameter {', '.join(unknown)}; "
                         f"it takes {', '.join(sorted(accepted)) or 'none'}")
    labels, num_classes = validate_poison_inputs(images, labels, num_classes)
    clean = images.detach().to("cpu").contiguous()
    if spec.resumable:
        params = {**params, "state_dir": state_dir, "progress": progress}
    poisoned = spec.fn(clean, labels, seed=seed, num_classes=num_classes, **params)
    if not isinstance(poisoned, torch.Tensor) or poisoned.dtype != torch.uint8 or poisoned.shape != clean.shape:
        raise RuntimeError(f"attack {spec.name!r} must return uint8 images of shape {tuple(clean.shape)}")
    if check_budget:
        check_within_budget(poisoned, clean, spec)
    return poisoned.to(images.device)

"""Clean-label availability poisons ("unlearnable examples"), by name.

``poison(name, images, labels, seed=...)``; ``ATTACKS`` lists the registered attacks. Each attack lives in
its own module and registers itself on import, so they are imported here: the model-free ``urp``, ``lsp``,
``ar``, ``ops`` and the model-based ``em``, ``rem``, ``tap``, ``sep``, ``efp`` and ``adp`` (the paper's
adaptive attack), which share :mod:`eclipse.attacks.craft`; ``quantise`` holds the budget-respecting 8-bit
rounding they all use.
"""
from eclipse.attacks.budgets import perturbation_norms
from eclipse.attacks.registry import ATTACKS, AttackSpec, get_attack, poison, register
from eclipse.attacks import urp, lsp, ar, ops  # noqa: F401,E402  (each registers its attack, in this order)
from eclipse.attacks import em, rem, tap, sep, efp, adp  # noqa: F401,E402

__all__ = ["ATTACKS", "AttackSpec", "get_attack", "perturbation_norms", "poison", "register"]

"""Clean-label availability poisons ("unlearnable examples"), by name.

``poison("urp" | "lsp" | "ar" | "ops", images, labels, seed=...)``; ``ATTACKS`` lists the registered attacks.
Each attack lives in its own module (``urp``, ``lsp``, ``ar``, ``ops``) and registers itself on import, so
they are imported here; ``quantise`` holds the budget-respecting 8-bit rounding they share.
"""
from eclipse.attacks.budgets import perturbation_norms
from eclipse.attacks.registry import ATTACKS, AttackSpec, get_attack, poison, register
from eclipse.attacks import urp, lsp, ar, ops  # noqa: F401,E402  (each registers its attack, in this order)

__all__ = ["ATTACKS", "AttackSpec", "get_attack", "perturbation_norms", "poison", "register"]

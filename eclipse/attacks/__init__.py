"""Clean-label availability poisons ("unlearnable examples"), by name.

``poison("urp" | "lsp" | "ar" | "ops", images, labels, seed=...)``; ``ATTACKS`` lists the registered attacks.
Modules that define more attacks register them on import, so they are imported here.
"""
from eclipse.attacks.budgets import perturbation_norms
from eclipse.attacks.registry import ATTACKS, AttackSpec, get_attack, poison, register
from eclipse.attacks import model_free  # noqa: F401  (registers urp, lsp, ar, ops)

__all__ = ["ATTACKS", "AttackSpec", "get_attack", "perturbation_norms", "poison", "register"]

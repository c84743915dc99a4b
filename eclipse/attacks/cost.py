"""The cost model of the model-based poisons: each recipe's work in epoch-equivalents (forward + backward
passes over the training set; an input-gradient pass counts as one), from the attack's settings under a
profile. ``benchmarks/poison_cost.py`` prices it with measured pass times; :mod:`eclipse.plan` uses it to
project a reproduction's wall time."""
from __future__ import annotations

import inspect

from .craft import surrogate_config
from .registry import ATTACKS


def recipe(attack: str, profile) -> dict:
    """The attack's settings under ``profile``: the function's defaults (the published recipe) + the profile's."""
    fn = ATTACKS[attack].fn
    defaults = {k: p.default for k, p in inspect.signature(fn).parameters.items() if p.default is not p.empty}
    return {**defaults, **profile.attack_settings(attack)}


def surrogate_of(attack: str, settings: dict):
    """The :class:`~eclipse.training.TrainConfig` of the network ``attack`` trains or attacks."""
    module = inspect.getmodule(ATTACKS[attack].fn)
    base = next(v for k, v in vars(module).items() if k.endswith(("_SURROGATE", "_REFERENCE")))
    return surrogate_config(base, settings.get("surrogate") or settings.get("reference"))


def epoch_equivalents(attack: str, s: dict, n: int, rounds: int) -> tuple[float, float]:
    """(surrogate training, crafting) in passes over ``n`` images. ``rounds``: EM's and ADP's min-min rounds,
    data-dependent (their stop condition), an assumption of the caller."""
    if attack in ("em", "adp"):
        per_round = s["train_steps"] * 512 / n + s["steps"] * s.get("eot", 1) + 1 / 3
        return 0.0, rounds * per_round
    if attack == "rem":
        inner = s["def_steps"] * s["eot"] * (s["adv_steps"] + 1)
        per_step = (inner + s["adv_steps"] + 1) * 128 / n
        return 0.0, s["train_steps"] * per_step + inner
    if attack == "tap":
        return float(surrogate_of(attack, s).epochs), float(s["iterations"] * s["restarts"])
    if attack == "sep":
        from .sep import ensemble_epochs

        models = len(ensemble_epochs(surrogate_of(attack, s).epochs, s["num_models"]))
        return float(surrogate_of(attack, s).epochs), float(s["iterations"] * models)
    if attack == "efp":
        return float(surrogate_of(attack, s).epochs * (1 + s["at_steps"])), float(s["iterations"])
    raise ValueError(f"no cost model for {attack}")

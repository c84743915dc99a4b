"""ECLIPSE itself: its three modules, its settings, and the pipeline "purify, then train with compensation".

- Module A: sparse diffusion purification (a diffusion model trained on a few clean images; each
  training image is noised to ``t_star`` and denoised).
- Module B: random grayscale with probability ``gray_p`` during victim training.
- Module C: Gaussian noise ``sigma`` during victim training.

``MODULES`` registers every combination of Table 4 (``A+B+C`` is ECLIPSE); a combination names whether
module A runs and which training-time defense (``eclipse.defenses.DEFENSES``) carries B/C.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from .data import ImageSet
from .experiments import diffusion_model, purified_set, purifier_for, victim_run
from .profiles import Profile, get_profile
from .registry import Registry


@dataclass(frozen=True)
class ModuleSpec:
    """One combination of ECLIPSE's modules."""

    name: str
    purify: bool       # module A
    defense: str       # the training-time defense that carries modules B and C
    description: str


MODULES: Registry[ModuleSpec] = Registry("ECLIPSE modules")
for _name, _purify, _defense, _text in (
        ("A+B+C", True, "compensation", "ECLIPSE: purify, then train with random grayscale and Gaussian noise"),
        ("A", True, "none", "diffusion purification only"),
        ("B", False, "grayscale", "random grayscale only"),
        ("C", False, "noise", "Gaussian noise only"),
        ("A+B", True, "grayscale", "purification + random grayscale"),
        ("A+C", True, "noise", "purification + Gaussian noise"),
        ("B+C", False, "compensation", "corruption compensation without purification")):
    MODULES.register(_name, ModuleSpec(_name, _purify, _defense, _text), description=_text)


def module_spec(modules: str) -> ModuleSpec:
    """The registered combination (``"A+B+C"``, ``"B+C"``, ...); module order does not matter."""
    key = "+".join(sorted(str(modules).upper().replace(" ", "").split("+")))
    return MODULES[key if key in MODULES else modules]


@dataclass(frozen=True)
class EclipseSettings:
    """ECLIPSE's hyper-parameters (the paper's defaults; a profile supplies its own)."""

    t_star: int = 100           # purification depth, forward steps of the T = 4000 schedule
    sampler: str = "ancestral"  # reverse sampler (eclipse.diffusion.samplers.SAMPLERS)
    sampler_steps: int | None = None
    sparse_size: int = 2000     # B, clean images the defender holds
    replicas: int = 4           # M, the sparse set is repeated M + 1 times
    gray_p: float = 0.4         # module B
    sigma: float = 0.05         # module C


def settings(profile: Profile | str) -> EclipseSettings:
    """The profile's ECLIPSE settings (the one source of defaults for ``purify`` and ``defend``)."""
    p = get_profile(profile)
    return EclipseSettings(t_star=p.t_star, sampler=p.sampler, sampler_steps=p.sampler_steps,
                           sparse_size=p.sparse_size, replicas=p.replicas, gray_p=p.gray_p, sigma=p.sigma)


def run(dataset: ImageSet, evaluation: ImageSet, profile: Profile | str, modules: str = "A+B+C", *,
        purifier: tuple | None = None, pool: ImageSet | None = None, progress: bool = True,
        victim: dict | None = None, **purify_overrides) -> dict:
    """ECLIPSE on ``dataset`` (a possibly poisoned training set): purify if module A is on (with
    ``purifier = (model, schedule, key)``, or a model trained on a sparse set drawn from ``pool``), then
    train the profile's victim (``victim``: TrainConfig overrides) with the modules B/C that are on.
    Every stage is cached. Returns the victim result with ``modules`` added."""
    spec = module_spec(modules)
    if spec.purify:
        dataset = purify_stage(dataset, profile, purifier, pool, progress=progress, **purify_overrides)
    result = victim_run(dataset, evaluation, profile, spec.defense, progress=progress, **(victim or {}))
    return {**result, "modules": spec.name}


def purify_stage(dataset: ImageSet, profile: Profile | str, purifier: tuple | None = None, pool: ImageSet | None = None,
                 *, progress: bool = True, **purify_overrides) -> ImageSet:
    """Module A of :func:`run`: ``dataset`` purified (cached) with ``purifier = (model, schedule, key)``, or
    with a model trained on a sparse set drawn from ``pool``, by the profile's sampler (or ``sampler=``)."""
    if purifier is None:
        if pool is None:
            raise ValueError("module A needs the diffusion model: pass purifier=(model, schedule, key) or pool=")
        purifier = diffusion_model(profile, pool, progress=progress)
    purifier = purifier_for(profile, purify_overrides.get("sampler"), purifier, pool,
                            t_star=purify_overrides.get("t_star"), progress=progress)
    return purified_set(dataset, profile, *purifier, progress=progress, **purify_overrides)


# --------------------------------------------------------------------------------------------
# Purifying defenses of the comparison (Table 1) that reuse ECLIPSE's machinery with other inputs
# --------------------------------------------------------------------------------------------
PurifyingDefense = Callable[..., dict]
PURIFYING_DEFENSES: Registry[PurifyingDefense] = Registry("purifying defense")
"""Defenses that purify the training set before a plain victim: ``fn(dataset, evaluation, profile, *,
progress, victim) -> result`` (victim_run's result, ``modules`` naming the defense)."""


@PURIFYING_DEFENSES.register("avatar", description="AVATAR (Dolatabadi et al. 2024): a diffusion model trained on "
                                                   "the poisoned set itself, the same purification, plain training")
def avatar(dataset: ImageSet, evaluation: ImageSet, profile: Profile | str, *, progress: bool = True,
           victim: dict | None = None) -> dict:
    """AVATAR as ECLIPSE's comparison runs it: the profile's diffusion recipe trained on the whole (poisoned)
    training set, not on a sparse clean one (no replicas: the set is not repeated), then the profile's
    purification (t*, sampler) of that set, then the victim without compensation. Departure from AVATAR's
    paper: its score-SDE (NCSN++) model and t = 0.1 are replaced by the package's DDPM, schedule and sampler,
    so the comparison isolates what the training data of the diffusion model does."""
    purifier = diffusion_model(profile, None, sparse=dataset, progress=progress, replicas=0)
    purified = purified_set(dataset, profile, *purifier, progress=progress)
    return {**victim_run(purified, evaluation, profile, "none", progress=progress, **(victim or {})),
            "modules": "avatar"}


def is_method(name: str) -> bool:
    """Whether ``name`` is a table method: a training-time defense, a purifying defense or ``eclipse:<modules>``."""
    from .defenses import DEFENSES

    if name in DEFENSES or name in PURIFYING_DEFENSES:
        return True
    if name.startswith("eclipse"):
        module_spec(name.split(":", 1)[1] if ":" in name else "A+B+C")  # raises naming the choices
        return True
    return False

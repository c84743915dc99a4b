"""What ``eclipse reproduce`` will compute under a profile, without computing it, and how long that takes.

:func:`plan` walks the notebooks' grids as the notebooks and :mod:`eclipse.sweeps` walk them and lists every
cached artifact they ask for (poisons, diffusion trainings, consistency fine-tunings, purified sets, victim
runs), once each, as the cache shares them: a task belongs to the first notebook that needs it. Each task
carries its work in its own unit (passes over images, UNet evaluations, training iterations) and the measured
rate that prices it (:class:`Rates`, measured by ``benchmarks/reproduce_cost.py`` on the machine at hand);
:func:`project` turns the priced plan into wall time on one device or N.

The walk mirrors the code it plans for; ``tests/test_plan.py`` runs grids for real at smoke scale on an
empty cache and checks that the artifacts they compute are the plan's, kind by kind.
"""
from __future__ import annotations

import hashlib
import heapq
from dataclasses import dataclass, field
from typing import Callable

import pandas as pd

from .profiles import Profile, get_profile, sweep_profile
from .registry import Registry

STAGE = {"poisons": 0, "diffusion": 0, "consistency": 0, "purified": 1, "runs": 2}
"""The stage of a shared grid (``torchrun ... table``): poisons and models, then purified sets, then victims."""


@dataclass(frozen=True)
class Task:
    """One artifact to compute: ``work`` in ``unit``, priced by the :class:`Rates` entry ``rate``."""

    kind: str
    key: tuple          # what identifies it (the inputs its cache key is made from, as plain values)
    notebook: str       # the first notebook that asks for it
    work: float
    unit: str
    rate: tuple         # ("victim", arch, width, defense) | ("unet_eval",) | ("diffusion_it",) | ...
    sharded: bool       # whether ``torchrun ... table`` spreads it over the processes (accuracy_grid's tasks)
    label: str


@dataclass(frozen=True)
class DataId:
    """A training set as the plan sees it: a name that identifies its content, and its size."""

    name: str
    n: int


@dataclass
class Planner:
    """Collects the tasks of one profile's notebooks (deduplicated by kind and key)."""

    profile: Profile
    em_rounds: int = 10     # EM's / ADP's min-min rounds (data-dependent; the EM paper: about 10)
    tasks: dict = field(default_factory=dict)
    notebook: str = ""
    sharded: bool = False

    # ------------------------------------------------------------------ artifacts
    def _add(self, kind: str, key: tuple, work: float, unit: str, rate: tuple, label: str) -> None:
        if (kind, key) not in self.tasks:
            self.tasks[(kind, key)] = Task(kind, key, self.notebook, float(work), unit, rate, self.sharded, label)

    def train(self, p: Profile) -> DataId:
        n = p.train_size or 50_000
        return DataId(f"train{n}", n)

    def poisoned(self, p: Profile, clean: DataId, attack: str) -> DataId:
        """``poisoned_set(clean, attack, profile=p)``: a model-based poison is crafted once on the craft set."""
        from .attacks import ATTACKS

        if ATTACKS[attack].family == "model-based":
            from .attacks.cost import epoch_equivalents, recipe, surrogate_of

            craft_n = p.craft_train_size or p.train_size or 50_000
            settings = recipe(attack, p)
            sur = surrogate_of(attack, settings)
            train_eq, craft_eq = epoch_equivalents(attack, settings, craft_n, self.em_rounds)
            key = (attack, f"train{craft_n}", _frozen(p.attack_settings(attack)), p.seed)
            self._add("poisons", key, (train_eq + craft_eq) * craft_n, "image-passes",
                      ("victim", sur.arch, sur.width, "none"), f"{attack} on {craft_n:,} images")
        else:
            key = (attack, clean.name, _frozen(p.attack_settings(attack)), p.seed)
            self._add("poisons", key, clean.n, "images", ("model_free", attack), f"{attack} on {clean.n:,} images")
        return DataId(f"{attack}({clean.name})", clean.n)

    def diffusion(self, p: Profile, *, sparse: DataId | None = None, replicas: int | None = None,
                  sparse_size: int | None = None, **overrides) -> str:
        """``diffusion_model(p, pool, ...)``; a longer run continues the longest shorter one of its lineage."""
        train = {**p.diffusion_train, **overrides}
        data = sparse.name if sparse is not None else f"sparse{sparse_size or p.sparse_size}"
        lineage = (data, p.replicas if replicas is None else replicas, train.get("enlargement", "replicate"),
                   _frozen({k: v for k, v in train.items() if k not in ("iterations", "enlargement")}),
                   _frozen(p.unet), p.diffusion_steps, p.seed, _frozen(p.unet_runtime))
        iterations = int(train["iterations"])
        done = [k[-1] for (kind, k) in self.tasks if kind == "diffusion" and k[:-1] == lineage and k[-1] < iterations]
        start = max(done, default=0)
        self._add("diffusion", lineage + (iterations,), iterations - start, "iterations", ("diffusion_it",),
                  f"diffusion on {data}, {start:,} -> {iterations:,} it")
        return "unet-" + hashlib.sha1(repr(lineage + (iterations,)).encode()).hexdigest()[:12]

    def purified(self, p: Profile, data: DataId, model: str, sampler: str | None = None, steps: int | None = None,
                 t_star: int | None = None) -> DataId:
        """``purified_set`` after ``purifier_for``: the consistency fine-tuning or the sparse classifier it needs."""
        from .diffusion.samplers import SAMPLERS, network_evaluations

        sampler = sampler or p.sampler
        steps = steps if steps is not None else p.sampler_steps
        t_star = t_star or p.t_star
        spec = SAMPLERS[sampler]
        if spec.purifier == "consistency":
            from .diffusion.consistency import ConsistencyConfig

            cfg = ConsistencyConfig(**{"seed": p.seed, **p.consistency})
            if cfg.perceptual:
                self.victim(p, DataId(f"sparse{p.sparse_size}", p.sparse_size), "none", {}, label="sparse classifier")
            self._add("consistency", (model, t_star, _frozen(cfg.to_dict())), cfg.iterations, "iterations",
                      ("consistency_it",), f"consistency fine-tuning at t* = {t_star}")
            model = f"consistency-{model}-t{t_star}"
        if spec.features:
            self.victim(p, DataId(f"sparse{p.sparse_size}", p.sparse_size), "none", {}, label="sparse classifier")
        nfe = network_evaluations(sampler, t_star, steps)
        self._add("purified", (data.name, model, t_star, sampler, steps, p.seed), data.n * nfe, "unet-evaluations",
                  ("unet_eval",), f"{sampler}{'-' + str(steps) if steps else ''} t*={t_star} on {data.name} ({nfe} NFE)")
        return DataId(f"purified[{model},{t_star},{sampler},{steps}]({data.name})", data.n)

    def victim(self, p: Profile, data: DataId, defense: str, overrides: dict, label: str = "") -> None:
        """``victim_run(data, eval, p, defense, **overrides)``."""
        overrides = {**p.defense_victim_overrides(defense), **overrides}
        v = p.with_overrides(victim=overrides).victim if overrides else p.victim
        params = {"gray_p": p.gray_p, "sigma": p.sigma, **p.defense_settings(defense)}
        key = (data.name, defense, _frozen(params), _frozen(vars(v)), p.seed, p.eval_size)
        self._add("runs", key, data.n * v.epochs, "image-epochs", ("victim", v.arch, v.width, defense),
                  label or f"{v.arch}-w{v.width} x {defense} on {data.name}")

    # ------------------------------------------------------------------ what the sweeps do
    def method_run(self, p: Profile, data: DataId, modules: str, model: str, victim: dict,
                   sampler: str | None = None, steps: int | None = None) -> None:
        from .method import module_spec

        spec = module_spec(modules)
        if spec.purify:
            data = self.purified(p, data, model, sampler, steps)
        self.victim(p, data, spec.defense, victim)

    def accuracy_grid(self, p: Profile, attacks: list[str], methods: list[str], **victim_overrides) -> None:
        """:func:`eclipse.sweeps.accuracy_grid`: its jobs and their artifacts, shared under torchrun."""
        from .method import PURIFYING_DEFENSES, module_spec
        from .profiles import setting_label

        self.sharded = True
        try:
            jobs = [(a, {**p.victim_overrides(a), **victim_overrides}, m) for a in attacks for m in methods]
            if "clean" in attacks:
                settings = {setting_label(v): v for a in attacks if a != "clean" for v in [p.victim_overrides(a)] if v}
                jobs += [("clean", {**v, **victim_overrides}, "none") for v in settings.values()]
            model = None
            for attack, victim, name in jobs:
                data = self.train(p) if attack == "clean" else self.poisoned(p, self.train(p), attack)
                if name.startswith("eclipse"):
                    spec = module_spec(name.split(":", 1)[1] if ":" in name else "A+B+C")
                    if spec.purify and model is None:
                        model = self.diffusion(p)
                    self.method_run(p, data, spec.name, model, victim)
                elif name in PURIFYING_DEFENSES:   # AVATAR: a diffusion model on the poisoned set itself
                    avatar = self.diffusion(p, sparse=data, replicas=0)
                    self.victim(p, self.purified(p, data, avatar), "none", victim)
                else:
                    self.victim(p, data, name, victim)
        finally:
            self.sharded = False


def _frozen(value) -> tuple:
    """A hashable, order-free form of a dict of settings."""
    if isinstance(value, dict):
        return tuple(sorted((k, _frozen(v)) for k, v in value.items()))
    if isinstance(value, (list, tuple)):
        return tuple(_frozen(v) for v in value)
    return value


# ---------------------------------------------------------------------------------------- per notebook
NOTEBOOK_PLANS: Registry[Callable[[Planner, Profile], None]] = Registry("notebook plan")
"""``notebook stem -> fn(planner, profile)``: what that notebook asks the cache for under its defaults."""


@NOTEBOOK_PLANS.register("01-noise-assimilation")
def _plan_01(pl: Planner, p: Profile) -> None:
    grid = p.grid("noise_assimilation")
    train = pl.train(p)
    for n in (grid["n_images"], 500):   # the figure's images and the Theorem 1 check's (kl_images = 500)
        clean = DataId(f"{train.name}/every-{max(1, train.n // n)}[:{n}]", min(n, train.n))
        for a in grid["attacks"]:
            pl.poisoned(p, clean, a)


@NOTEBOOK_PLANS.register("02-sparse-diffusion")
def _plan_02(pl: Planner, p: Profile) -> None:
    from .sweeps import sparse_diffusion_points

    s = sweep_profile(p)
    attacks = s.grid("sparse_diffusion")["attacks"]
    poisoned = {a: pl.poisoned(s, pl.train(s), a) for a in attacks}
    # the points in the order the sweep trains them (a longer run continues a shorter one of its lineage)
    for _, (_, _, overrides) in sparse_diffusion_points(s).items():
        model = pl.diffusion(s, **dict(overrides))
        for a, data in poisoned.items():
            pl.method_run(s, data, "A+B+C", model, s.victim_overrides(a))


@NOTEBOOK_PLANS.register("03-purification-gallery")
def _plan_03(pl: Planner, p: Profile) -> None:
    model = pl.diffusion(p)
    train = pl.train(p)
    show = DataId(f"{train.name}/stride-{train.n // 6}[:6]", 6)   # n_show = 6
    for a in p.grid("gallery")["attacks"]:
        pl.purified(p, pl.poisoned(p, show, a), model)   # the figure's chains (purify_batch) and the check's set


@NOTEBOOK_PLANS.register("04-main-results")
def _plan_04(pl: Planner, p: Profile) -> None:
    grid = p.grid("main_results")
    pl.accuracy_grid(p, grid["attacks"], grid["methods"])
    if grid.get("second_arch"):
        pl.accuracy_grid(p, grid["attacks"], grid["methods"], arch=grid["second_arch"])
    for arch in grid["archs"]:
        pl.accuracy_grid(p, ["clean"], grid["table3_methods"], arch=arch)


@NOTEBOOK_PLANS.register("05-ablation")
def _plan_05(pl: Planner, p: Profile) -> None:
    from .method import MODULES

    s = sweep_profile(p)
    pl.accuracy_grid(s, s.grid("ablation")["attacks"], ["none"] + [f"eclipse:{m}" for m in MODULES.names()])


@NOTEBOOK_PLANS.register("06-hyperparameters")
def _plan_06(pl: Planner, p: Profile) -> None:
    from .sweeps import HYPERPARAMETERS

    s = sweep_profile(p)
    grid = s.grid("hyperparameters")
    for name, (values_key, field_name) in HYPERPARAMETERS.items():
        for v in grid[values_key]:
            pl.accuracy_grid(s.with_overrides(**{field_name: v}), grid["attacks"][name], ["eclipse:A+B+C"])


@NOTEBOOK_PLANS.register("07-residual-poisons")
def _plan_07(pl: Planner, p: Profile) -> None:
    grid = p.grid("residuals")
    model = pl.diffusion(p)
    train = pl.train(p)
    n = grid["n_images"]
    clean = DataId(f"{train.name}/stride-{train.n // n}[:{n}]", n)
    pl.purified(p, clean, model)
    for a in grid["attacks"]:
        pl.purified(p, pl.poisoned(p, clean, a), model)


@NOTEBOOK_PLANS.register("08-purifiers")
def _plan_08(pl: Planner, p: Profile, attacks: list[str] | None = None, purifiers: list[str] | None = None,
             modules: list[str] | None = None) -> None:
    from .sweeps import parse_purifier

    s = sweep_profile(p)
    grid = s.grid("purifiers")
    model = pl.diffusion(s)
    chosen = {name: parse_purifier(name) for name in purifiers or grid["purifiers"]}
    for attack in attacks or grid["attacks"]:
        data = pl.poisoned(s, pl.train(s), attack)
        victim = s.victim_overrides(attack)
        pl.victim(s, data, "none", victim)
        for sampler, steps in chosen.values():
            for mods in modules or grid["modules"]:
                pl.method_run(s, data, mods, model, victim, sampler, steps)


def plan(profile: Profile | str, notebooks: list[str] | None = None, *, em_rounds: int = 10,
         grids: dict[str, dict] | None = None) -> list[Task]:
    """The tasks of ``notebooks`` (default all, in order) under ``profile``; ``grids``: notebook stem -> keyword
    arguments of its planner (e.g. ``{"08-purifiers": {"attacks": ["urp"]}}``, a notebook run with parameters)."""
    profile = get_profile(profile)
    planner = Planner(profile, em_rounds=em_rounds)
    for name in notebooks or NOTEBOOK_PLANS.names():
        planner.notebook = name
        NOTEBOOK_PLANS[name](planner, profile, **(grids or {}).get(name, {}))
    return list(planner.tasks.values())


# ---------------------------------------------------------------------------------------- pricing
@dataclass
class Rates:
    """Measured throughputs, in each task unit per second: ``victim[(arch, width, defense)]`` image-epochs/s
    (training with that defense; a poison's image-passes are priced at its surrogate's ``none`` rate),
    ``unet_eval`` image-evaluations/s (purification), ``diffusion_it`` and ``consistency_it`` iterations/s,
    ``model_free[attack]`` images/s. ``machine`` says where they were measured."""

    victim: dict = field(default_factory=dict)
    unet_eval: float | None = None
    diffusion_it: float | None = None
    consistency_it: float | None = None
    model_free: dict = field(default_factory=dict)
    machine: str = ""

    def set(self, rate: tuple, value: float) -> None:
        """Store the measured ``value`` of ``rate`` (a :class:`Task` ``rate`` tuple)."""
        if rate[0] in ("victim", "model_free"):
            getattr(self, rate[0])[tuple(rate[1:]) if rate[0] == "victim" else rate[1]] = value
        else:
            setattr(self, rate[0], value)

    def per_second(self, rate: tuple) -> float | None:
        kind = rate[0]
        if kind == "victim":
            return self.victim.get(tuple(rate[1:]))
        if kind == "model_free":
            return self.model_free.get(rate[1])
        return getattr(self, kind)


def price(tasks: list[Task], rates: Rates) -> pd.DataFrame:
    """One row per task with its projected ``seconds`` (NaN where ``rates`` lacks the rate that prices it)."""
    rows = []
    for t in tasks:
        r = rates.per_second(t.rate)
        rows.append({"notebook": t.notebook, "kind": t.kind, "label": t.label, "work": t.work, "unit": t.unit,
                     "rate": "/".join(map(str, t.rate)), "stage": STAGE[t.kind], "sharded": t.sharded,
                     "seconds": t.work / r if r else float("nan")})
    return pd.DataFrame(rows, columns=["notebook", "kind", "label", "work", "unit", "rate", "stage", "sharded",
                                       "seconds"])


def makespan(seconds: list[float], devices: int) -> float:
    """Wall time of independent tasks on ``devices`` workers, longest first to the least loaded (LPT)."""
    loads = [0.0] * max(1, devices)
    for s in sorted(seconds, reverse=True):
        heapq.heapreplace(loads, loads[0] + s)
    return max(loads)


def project(priced: pd.DataFrame, devices: int = 1) -> pd.DataFrame:
    """Projected wall time per notebook on ``devices`` devices: the notebooks one after another; within one, the
    tasks ``torchrun ... table`` shares (accuracy_grid's) spread stage by stage over the devices, the rest on one."""
    rows = []
    for notebook, part in priced.groupby("notebook", sort=False):
        serial = float(part.loc[~part["sharded"], "seconds"].sum())
        shared = sum(makespan(list(stage["seconds"]), devices)
                     for _, stage in part[part["sharded"]].groupby("stage"))
        rows.append({"notebook": notebook, "devices": devices, "tasks": len(part),
                     "victims": int((part["kind"] == "runs").sum()), "seconds": serial + shared,
                     "unpriced": int(part["seconds"].isna().sum())})
    return pd.DataFrame(rows)

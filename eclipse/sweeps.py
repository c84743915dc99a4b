"""Grids of cached runs: the attacks x methods accuracy grid (Tables 1, 3, 4) and the sweeps of the
sparse diffusion model (Fig. 3, Tables 5-6, Fig. 5a) and of ECLIPSE's hyper-parameters (Fig. 5b-c,
Table 7). Notebooks and scripts call these; the grids' values come from the profile."""
from __future__ import annotations

import contextlib
import os
import time
from typing import Callable, Iterable

import pandas as pd

from . import distributed, method
from .experiments import Purifier, clean_data, diffusion_model, poisoned_set, victim_run
from .profiles import Profile, attack_settings_label, defense_settings_label, get_profile, setting_label


def accuracy_grid(profile: Profile | str, attacks: list[str], methods: list[str], *, data: str | None = None,
                  progress: bool = True, log=print, reference_rows: bool = True, **victim_overrides) -> pd.DataFrame:
    """Long table of test accuracy for every (attack, method). ``attacks`` may include ``clean``; a
    method is a training-time defense name or ``eclipse:<modules>`` (e.g. ``eclipse:A+B+C``). Every
    run is cached, so notebooks that share cells share the work.

    Where the profile trains an attack's victim differently (``profile.attack_victim``, e.g. URP without
    random crop in ``quick``), that attack's rows carry the setting in the ``setting`` column (and in the
    display label ``row``, e.g. ``urp (no crop)``; the profile's cuts of a model-based poison's recipe are in
    ``poison_settings``), and, if ``clean`` is in ``attacks``, a ``clean`` row
    with the same setting (method ``none``) is added as its reference (``reference_rows=False``: not).

    Under torchrun (``torchrun --nproc-per-node N -m eclipse table ...``) the processes share the grid: the
    poisons and the diffusion model, then the purified sets, then the victims, each task on one rank (round
    robin, one victim per GPU), the results meeting in the shared cache; then every rank reads the whole
    grid from the cache, so the table is the one a single process would make."""
    profile = get_profile(profile)
    sets = clean_data(profile, data)
    jobs = []
    for attack in attacks:
        jobs += [(attack, {**profile.victim_overrides(attack), **victim_overrides}, m) for m in methods]
    if "clean" in attacks and reference_rows:
        settings = {setting_label(v): v for a in attacks if a != "clean" for v in [profile.victim_overrides(a)] if v}
        jobs += [("clean", {**v, **victim_overrides}, "none") for v in settings.values()]
    base: list = []   # the diffusion model, loaded once

    def purifier():
        if not base:
            base.append(diffusion_model(profile, sets["pool"], progress=progress))
        return base[0]

    def train_set(attack: str):
        return sets["train"] if attack == "clean" else poisoned_set(sets["train"], attack, profile.seed, profile=profile)

    def modules(name: str):   # ``eclipse:<modules>`` -> its ModuleSpec (None for another method)
        return method.module_spec(name.split(":", 1)[1] if ":" in name else "A+B+C") if name.startswith("eclipse") else None

    def cell(attack: str, victim: dict, name: str) -> dict:
        if name.startswith("eclipse"):
            spec = modules(name)
            return method.run(train_set(attack), sets["eval"], profile, spec.name,
                              purifier=purifier() if spec.purify else None, progress=progress, victim=victim)
        if name in method.PURIFYING_DEFENSES:
            return method.PURIFYING_DEFENSES[name](train_set(attack), sets["eval"], profile, progress=progress,
                                                   victim=victim)
        return victim_run(train_set(attack), sets["eval"], profile, name, progress=progress, **victim)

    rank, size = distributed.world()
    if size > 1:
        progress, log = progress and rank == 0, log if rank == 0 else None
        purifying = list(dict.fromkeys(a for a, _, m in jobs if modules(m) is not None and modules(m).purify))
        import datetime

        import torch.distributed as dist

        # the waits: a gloo group with a day's timeout (a victim or a poison outlasts the default 10-30 minutes)
        waits = dist.new_group(backend="gloo", timeout=datetime.timedelta(days=1))
        with _one_process():
            _share([lambda a=a: train_set(a) for a in dict.fromkeys(a for a, _, _ in jobs) if a != "clean"]
                   + ([purifier] if purifying else []), rank, size, waits)
            _share([lambda a=a: method.purify_stage(train_set(a), profile, purifier(), progress=progress)
                    for a in purifying], rank, size, waits)
            _share([lambda job=job: cell(*job) for job in jobs], rank, size, waits)
    with _one_process() if size > 1 else contextlib.nullcontext():
        return _grid_rows(jobs, cell, victim_overrides, profile, log)


def _grid_rows(jobs, cell, victim_overrides: dict, profile: Profile, log) -> pd.DataFrame:
    """The long table, one row per job (each cell computed, or read from the cache)."""
    rows, started = [], time.perf_counter()
    for attack, victim, name in jobs:
        result = cell(attack, victim, name)
        setting = setting_label({k: v for k, v in victim.items() if k not in victim_overrides})
        rows.append({"row": f"{attack} ({setting})" if setting else attack, "attack": attack, "setting": setting,
                     "method": name, "test_acc": result["test_acc"],
                     "poison_settings": "" if attack == "clean" else attack_settings_label(profile, attack),
                     "defense_settings": defense_settings_label(profile, name),
                     "train_s": round(result["wall_time_s"], 1), "cached": result["cached"]})
        if log:
            log(f"{attack:>6}{' (' + setting + ')' if setting else ''} x {name:<14} {result['test_acc']:6.2f}%  "
                f"({'cached' if result['cached'] else str(round(result['wall_time_s'])) + 's'}, "
                f"{time.perf_counter() - started:.0f}s so far)")
    return pd.DataFrame(rows)


@contextlib.contextmanager
def _one_process():
    """A task of a shared grid is one process's own work: torchrun's ``RANK``/``WORLD_SIZE`` are hidden from the
    package meanwhile (no DDP diffusion training, no world size in a cache key), so each artifact is the one a
    single process makes."""
    saved = {k: os.environ.pop(k) for k in ("RANK", "WORLD_SIZE") if k in os.environ}
    try:
        yield
    finally:
        os.environ.update(saved)


def _share(tasks: list[Callable[[], object]], rank: int, size: int, waits) -> None:
    """Run every ``size``-th of ``tasks`` on ``rank``, then wait for the other ranks at a barrier of the
    ``waits`` group: the results reach them through the cache."""
    import torch.distributed as dist

    for i, task in enumerate(tasks):
        if i % size == rank:
            task()
    dist.barrier(group=waits)


def wide(long: pd.DataFrame, index: str = "row", columns: str = "method") -> pd.DataFrame:
    """The long grid as a table, rows and columns in the order they ran (not alphabetical)."""
    table = long.pivot(index=index, columns=columns, values="test_acc")
    return table.loc[list(dict.fromkeys(long[index])), list(dict.fromkeys(long[columns]))]


# ------------------------------------------------------------------ notebook 02: the sparse diffusion model

def sparse_diffusion_points(profile: Profile | str) -> dict[str, tuple[str, object, dict]]:
    """Every point of the profile's ``sparse_diffusion`` grid: ``label -> (sweep, value, diffusion overrides)``.

    Sweeps: ``enlargement`` (Fig. 3), ``M`` (Table 5), ``B`` (Table 6), all at ``variant_iterations``, and
    ``I`` (Fig. 5a). Points that name the same diffusion model appear once per sweep; the runs are shared
    through the cache."""
    grid = get_profile(profile).grid("sparse_diffusion")
    at_i = {"iterations": grid["variant_iterations"]}
    points: dict[str, tuple[str, object, dict]] = {}
    for v in grid["enlargements"]:
        points[f"enlargement={v}"] = ("enlargement", v, {"enlargement": v, **at_i})
    for v in grid["replicas"]:
        points[f"M={v}"] = ("M", v, {"replicas": v, **at_i})
    for v in grid["sparse_sizes"]:
        points[f"B={v}"] = ("B", v, {"sparse_size": v, **at_i})
    for v in grid["iterations"]:
        points[f"I={v}"] = ("I", v, {"iterations": v})
    return points


def sparse_diffusion_point(profile: Profile | str, poisoned: dict, sets: dict, *, victim_seed: int | None = None,
                           progress: bool = False, **diffusion) -> dict[str, float]:
    """ECLIPSE (A+B+C) accuracy per attack with the diffusion model trained under ``diffusion`` overrides
    (``sparse_size``, ``replicas``, ``enlargement``, ``iterations``); each attack's victim as the profile
    trains it (quick: URP without crop, as in notebooks 04-06)."""
    profile = get_profile(profile)
    diffusion = dict(diffusion)
    sparse_size = diffusion.pop("sparse_size", None)
    purifier = diffusion_model(profile, sets["pool"], sparse_size=sparse_size, progress=progress, **diffusion)
    seed = {} if victim_seed is None else {"seed": victim_seed}
    return {a: method.run(d, sets["eval"], profile, "A+B+C", purifier=purifier, progress=progress,
                          victim={**seed, **profile.victim_overrides(a)})["test_acc"] for a, d in poisoned.items()}


def sparse_diffusion_sweeps(profile: Profile | str, attacks: Iterable[str] | None = None,
                            progress: bool = False) -> dict[str, pd.DataFrame]:
    """Notebook 02's four tables (``enlargement``, ``M``, ``B``, ``I``): accuracy per attack and AVG."""
    profile = get_profile(profile)
    attacks = list(attacks or profile.grid("sparse_diffusion")["attacks"])
    sets = clean_data(profile)
    poisoned = {a: poisoned_set(sets["train"], a, profile.seed, profile=profile) for a in attacks}
    rows: dict[str, dict] = {}
    for label, (sweep, value, overrides) in sparse_diffusion_points(profile).items():
        rows.setdefault(sweep, {})[value] = sparse_diffusion_point(profile, poisoned, sets, progress=progress,
                                                                    **overrides)
    tables = {}
    for sweep, by_value in rows.items():
        frame = pd.DataFrame(by_value).T.rename_axis(sweep)
        frame["AVG"] = frame.mean(axis=1)
        tables[sweep] = frame
    return tables


# ------------------------------------------------------------------ notebook 06: ECLIPSE's hyper-parameters

HYPERPARAMETERS: dict[str, tuple[str, str]] = {"p": ("gray_ps", "gray_p"), "sigma": ("sigmas", "sigma"),
                                               "t*": ("t_stars", "t_star")}
"""Notebook 06's sweeps: name -> (grid key of its values, the Profile field it sets)."""


def hyperparameter_sweep(profile: Profile | str, name: str, values: Iterable | None = None,
                         attacks: Iterable[str] | None = None) -> pd.DataFrame:
    """ECLIPSE (A+B+C) accuracy with one hyper-parameter (``p``, ``sigma`` or ``t*``) set to each value;
    a long table with a column named ``name``."""
    profile = get_profile(profile)
    grid = profile.grid("hyperparameters")
    key, field_name = HYPERPARAMETERS[name]
    values = list(values if values is not None else grid[key])
    attacks = list(attacks or grid["attacks"][name])
    make: Callable[[object], Profile] = lambda v: profile.with_overrides(**{field_name: v})  # noqa: E731
    return pd.concat([accuracy_grid(make(v), attacks, ["eclipse:A+B+C"], log=None).assign(**{name: v})
                      for v in values], ignore_index=True)


# ------------------------------------------------------------------ notebook 08: purifiers side by side

def parse_purifier(name: str) -> tuple[str, int | None]:
    """``"respaced-4"`` -> ``("respaced", 4)``; ``"one_shot"`` -> ``("one_shot", None)`` (a registered sampler)."""
    from .diffusion.samplers import SAMPLERS

    sampler, _, steps = str(name).rpartition("-") if str(name).rpartition("-")[2].isdigit() else (name, "", "")
    SAMPLERS[sampler]   # an unknown sampler fails here, naming the registered ones
    return sampler, int(steps) if steps else None


def purification_speed(profile: Profile | str, purifier: tuple, images, sampler: str, steps: int | None,
                       n_images: int = 100) -> float:
    """Seconds to purify 10,000 images with ``sampler`` on this machine, measured on ``n_images`` of ``images``
    (uncached, the profile's batch size, after an untimed warm-up on 8 of them) and scaled."""
    from .purify import purify

    profile = get_profile(profile)
    model, schedule, _, features = Purifier(*purifier)     # a bare (model, schedule, key) has no features
    sample = images[:n_images]
    # untimed warm-up: a process's first purification pays one-off setup (allocator, kernel selection)
    purify(sample[:8], model, schedule, t_star=profile.t_star, sampler=sampler, steps=steps, seed=profile.seed,
           batch_size=profile.purify_batch_size, progress=False, features=features)
    tick = time.perf_counter()
    purify(sample, model, schedule, t_star=profile.t_star, sampler=sampler, steps=steps, seed=profile.seed,
           batch_size=profile.purify_batch_size, progress=False, features=features)
    return (time.perf_counter() - tick) / len(sample) * 10_000


def purifier_comparison(profile: Profile | str, attacks: list[str] | None = None, purifiers: list[str] | None = None,
                        modules: list[str] | None = None, *, progress: bool = False, log=print) -> pd.DataFrame:
    """Notebook 08's long table: for each attack x purifier x ECLIPSE modules (with ``A``), the victim's test
    accuracy, network evaluations per image, measured purification time per 10,000 images and the
    label-transition rate of the undefended victim (trained on the poisoned set) from the poisoned to the
    purified images (:func:`eclipse.diagnostics.label_transition_rate`). Defaults: the profile's grid."""
    from .diagnostics import label_transition_rate
    from .diffusion.samplers import network_evaluations
    from .experiments import purified_set, purifier_for
    from .training import trained_model

    profile = get_profile(profile)
    grid = profile.grid("purifiers")
    attacks = list(attacks or grid["attacks"])
    purifiers = list(purifiers or grid["purifiers"])
    modules = list(modules or grid["modules"])
    sets = clean_data(profile)
    base = diffusion_model(profile, sets["pool"], progress=progress)
    chosen = {name: parse_purifier(name) for name in purifiers}            # name -> (sampler, steps)
    weights = {name: purifier_for(profile, sampler, base, sets["pool"], progress=progress)
               for name, (sampler, _) in chosen.items()}
    speed = {name: purification_speed(profile, weights[name], sets["train"].images, *chosen[name]) for name in chosen}
    rows, started = [], time.perf_counter()
    for attack in attacks:
        train = poisoned_set(sets["train"], attack, profile.seed, profile=profile)
        victim = profile.victim_overrides(attack)
        undefended = victim_run(train, sets["eval"], profile, "none", progress=progress, **victim)
        shortcut = trained_model(undefended["run_dir"], profile.with_overrides(victim=victim).victim,
                                 len(train.classes))
        for name, (sampler, steps) in chosen.items():
            purifier = weights[name]
            purified = purified_set(train, profile, *purifier, sampler=sampler, steps=steps, progress=progress)
            transition = label_transition_rate(shortcut, train, purified)
            for mods in modules:
                result = method.run(train, sets["eval"], profile, mods, purifier=purifier, progress=progress,
                                    victim=victim, sampler=sampler, steps=steps)
                rows.append({"attack": attack, "purifier": name, "sampler": sampler, "steps": steps,
                             "modules": method.module_spec(mods).name,
                             "nfe": network_evaluations(sampler, profile.t_star, steps),
                             "test_acc": result["test_acc"], "undefended_acc": undefended["test_acc"],
                             "label_transition": transition, "purify_s_per_10k": round(speed[name], 1),
                             "train_s": round(result["wall_time_s"], 1), "cached": result["cached"]})
                if log:
                    log(f"{attack:>5} x {name:<12} {rows[-1]['modules']:<6} {result['test_acc']:6.2f}%  "
                        f"(transition {transition:.2f}, {time.perf_counter() - started:.0f}s so far)")
    return pd.DataFrame(rows)


def pareto_front(points: pd.DataFrame, cost: str = "nfe", value: str = "test_acc") -> pd.Series:
    """Whether each row is on the Pareto front: no other row costs as little or less and gives more
    (or costs less and gives as much)."""
    c, v = points[cost].to_numpy(), points[value].to_numpy()
    dominated = [bool((((c <= c[i]) & (v > v[i])) | ((c < c[i]) & (v >= v[i]))).any()) for i in range(len(points))]
    return pd.Series([not d for d in dominated], index=points.index)

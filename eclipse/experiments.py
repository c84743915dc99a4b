"""Cached experiment artifacts: the datasets a profile uses, poisoned sets and victim runs.

Every artifact is stored under ``cache_dir()`` keyed by a hash of everything that determines it
(data content, configuration, seed), written atomically, and reused when asked for again. An
interrupted victim run resumes from its last epoch checkpoint.
"""
from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict
from pathlib import Path

import pandas as pd
import torch

from .data import ImageSet, load_cifar10, split_test, train_subset
from .defenses import make_defense
from .profiles import Profile, get_profile, setting_label
from .seeding import default_device
from .storage import atomic_torch_save, cache_dir, config_key, safe_torch_load, tensor_hash
from .training import train_victim


def code_version(*modules: str) -> str:
    """Hash of the source files that determine an artifact (e.g. ``"attacks"``, ``"training"``), so a
    cached artifact is never reused after the code that made it changed."""
    root = Path(__file__).resolve().parent
    h = hashlib.sha256()
    for name in modules:
        target = root / name
        files = sorted(target.rglob("*.py")) if target.is_dir() else [target.with_suffix(".py")]
        for f in files:
            h.update(f.read_bytes())
    return h.hexdigest()[:12]


def digest(dataset: ImageSet) -> str:
    """Content hash of a dataset's images and labels."""
    return tensor_hash(dataset.images, dataset.labels)


def clean_data(profile: Profile | str, data: str | None = None) -> dict[str, ImageSet]:
    """The profile's clean ``train`` subset, ``eval`` set (held-out test images) and defender ``pool``."""
    profile = get_profile(profile)
    train = train_subset(load_cifar10("train", source=data), profile.train_size, profile.seed)
    pool, evaluation = split_test(load_cifar10("test", source=data))
    if profile.eval_size is not None and profile.eval_size < len(evaluation):
        evaluation = train_subset(evaluation, profile.eval_size, profile.seed)
    return {"train": train, "eval": evaluation, "pool": pool}


def poisoned_set(clean: ImageSet, attack: str, seed: int, **params) -> ImageSet:
    """``clean`` poisoned by ``attack`` (cached by content, attack, parameters and seed)."""
    from .attacks import poison

    key = config_key({"data": digest(clean), "attack": attack, "seed": seed, "params": params,
                      "code": code_version("attacks")})
    path = cache_dir() / "poisons" / f"{attack}-{key}.pt"
    if path.exists():
        blob = safe_torch_load(path)
        return clean.with_images(blob["images"], f"{attack}({clean.source})")
    images = poison(attack, clean.images, clean.labels, seed=seed, num_classes=len(clean.classes), **params)
    atomic_torch_save({"images": images, "attack": attack, "seed": seed}, path)
    return clean.with_images(images, f"{attack}({clean.source})")


def victim_run(train: ImageSet, evaluation: ImageSet, profile: Profile | str, defense: str = "none", *,
               seed: int | None = None, progress: bool = True, **victim_overrides) -> dict:
    """Train (or fetch from the cache) the profile's victim on ``train`` with ``defense``."""
    profile = get_profile(profile)
    seed = profile.seed if seed is None else seed
    victim = profile.with_overrides(victim=victim_overrides).victim if victim_overrides else profile.victim
    defense_obj = make_defense(defense, gray_p=profile.gray_p, sigma=profile.sigma, num_classes=len(train.classes))
    key = config_key({"train": digest(train), "eval": digest(evaluation), "victim": asdict(victim),
                      "defense": defense, "params": dict(defense_obj.params), "seed": seed,
                      "code": code_version("training", "victims", "defenses")})
    out_dir = cache_dir() / "runs" / key
    result_path = out_dir / "result.json"
    if result_path.exists():
        return {**json.loads(result_path.read_text()), "cached": True}
    result = train_victim(train, evaluation, victim, defense=defense_obj, seed=seed, out_dir=out_dir,
                          progress=progress)
    return {**result, "cached": False}


# --------------------------------------------------------------------------------------------
# ECLIPSE: sparse diffusion model, purified sets, the defense with its modules
# --------------------------------------------------------------------------------------------
def diffusion_config(profile: Profile | str, **overrides):
    """The profile's :class:`DiffusionTrainConfig` (``overrides``: replicas, enlargement, iterations, ...)."""
    from .diffusion.checkpoints import DiffusionSettings
    from .diffusion.train import DiffusionTrainConfig
    from .diffusion.unet import UNetConfig

    profile = get_profile(profile)
    train = dict(profile.diffusion_train)
    return DiffusionTrainConfig(
        unet=UNetConfig(**profile.unet), diffusion=DiffusionSettings(diffusion_steps=profile.diffusion_steps),
        replicas=overrides.pop("replicas", profile.replicas), seed=profile.seed,
        checkpoint_every=max(1, train["iterations"] // 10), **{**train, **overrides})


def diffusion_model(profile: Profile | str, pool: ImageSet, *, sparse_size: int | None = None,
                    progress: bool = True, **overrides):
    """Train (or fetch) the profile's diffusion model on a sparse set drawn from the defender ``pool``.

    Returns ``(ema_model, schedule, key)``; ``key`` identifies the model in other cache keys. The
    training folder is ``<cache>/diffusion/<key>``; an interrupted run resumes from its checkpoint.
    """
    from .data import sparse_set
    from .diffusion.checkpoints import schedule_from_settings
    from .diffusion.train import train_diffusion
    from .purify import load_purifier

    profile = get_profile(profile)
    sparse = sparse_set(pool, sparse_size or profile.sparse_size, profile.seed)
    cfg = diffusion_config(profile, **overrides)
    identity = {k: v for k, v in cfg.to_dict().items() if k != "checkpoint_every"}
    key_inputs = {"sparse": digest(sparse), "config": identity, "code": code_version("diffusion")}
    key = config_key(key_inputs)
    folder = cache_dir() / "diffusion" / key
    done = folder / "done.json"
    if done.exists():
        model, schedule = load_purifier(folder / "checkpoint.pt", device=default_device())
        return model, schedule, key
    # The learning rate is constant, so a longer run of the same configuration continues exactly where the
    # longest shorter cached run stopped (Fig. 5a's iteration sweep then costs one training of the largest I).
    lineage = {**key_inputs, "config": {k: v for k, v in identity.items() if k != "iterations"}}
    start = _longest_shorter_run(lineage, cfg.iterations)
    if start is not None and not (folder / "checkpoint.pt").exists():
        from .storage import atomic_write_bytes

        atomic_write_bytes(folder / "checkpoint.pt", (start / "checkpoint.pt").read_bytes())
    tick = time.perf_counter()
    result = train_diffusion(sparse.images, cfg, folder, progress=progress, device=default_device())
    from .storage import atomic_write_json

    atomic_write_json({"config": identity, "lineage": config_key(lineage), "sparse_images": len(sparse),
                       "steps": result.step, "continued_from": start.name if start is not None else None,
                       "final_loss": float(sum(result.losses[-50:]) / max(1, len(result.losses[-50:]))),
                       "wall_time_s": time.perf_counter() - tick}, done)
    return result.ema, schedule_from_settings(cfg.diffusion), key


def _longest_shorter_run(lineage: dict, iterations: int) -> Path | None:
    """The finished cached diffusion run of the same lineage (everything but ``iterations``) with the most
    iterations below ``iterations``, or None."""
    wanted, best, best_steps = config_key(lineage), None, 0
    for done in sorted((cache_dir() / "diffusion").glob("*/done.json")):
        try:
            info = json.loads(done.read_text())
        except (OSError, json.JSONDecodeError):
            continue  # a damaged marker is never trusted
        steps = int(info.get("config", {}).get("iterations", 0))
        if info.get("lineage") == wanted and best_steps < steps < iterations and (done.parent / "checkpoint.pt").exists():
            best, best_steps = done.parent, steps
    return best


def purified_set(dataset: ImageSet, profile: Profile | str, model, schedule, model_key: str, *,
                 t_star: int | None = None, sampler: str | None = None, steps: int | None = None,
                 progress: bool = True) -> ImageSet:
    """``dataset`` purified by the model (noise to t*, then reverse), cached and resumable by chunks."""
    from .purify import purify

    profile = get_profile(profile)
    t_star = t_star or profile.t_star
    sampler = sampler or profile.sampler
    steps = steps if steps is not None else profile.sampler_steps
    key = config_key({"data": digest(dataset), "model": model_key, "t_star": t_star, "sampler": sampler,
                      "steps": steps, "seed": profile.seed, "batch": profile.purify_batch_size,
                      "code": code_version("purify", "diffusion")})
    final = cache_dir() / "purified" / f"{key}.pt"
    source = f"purified[t*={t_star},{sampler}]({dataset.source})"
    if final.exists():
        return dataset.with_images(safe_torch_load(final), source)
    images = purify(dataset.images, model, schedule, t_star=t_star, sampler=sampler, steps=steps, seed=profile.seed,
                    batch_size=profile.purify_batch_size, resume_dir=final.with_suffix(""), progress=progress)
    atomic_torch_save(images, final)
    return dataset.with_images(images, source)


MODULES = {"A+B+C": (True, "compensation"), "A": (True, "none"), "B": (False, "grayscale"),
           "C": (False, "noise"), "A+B": (True, "grayscale"), "A+C": (True, "noise"), "B+C": (False, "compensation")}
"""ECLIPSE's modules (Table 4): A = diffusion purification, B = random grayscale, C = Gaussian noise."""


def eclipse_run(dataset: ImageSet, evaluation: ImageSet, profile: Profile | str, modules: str = "A+B+C", *,
                purifier: tuple | None = None, pool: ImageSet | None = None, progress: bool = True,
                victim: dict | None = None, **purify_overrides) -> dict:
    """ECLIPSE on ``dataset`` (a possibly poisoned training set): purify if module A is on, then train the
    victim with the compensation modules that are on; returns the victim result."""
    if modules not in MODULES:
        raise ValueError(f"modules must be one of {list(MODULES)}, got {modules!r}")
    use_diffusion, defense = MODULES[modules]
    if use_diffusion:
        if purifier is None:
            if pool is None:
                raise ValueError("module A needs the diffusion model: pass purifier=(model, schedule, key) or pool=")
            purifier = diffusion_model(profile, pool, progress=progress)
        dataset = purified_set(dataset, profile, *purifier, progress=progress, **purify_overrides)
    result = victim_run(dataset, evaluation, profile, defense, progress=progress, **(victim or {}))
    return {**result, "modules": modules}


def attack_victim(profile: Profile | str, attack: str) -> dict:
    """The profile's victim TrainConfig overrides for ``attack`` (usually empty)."""
    return dict(get_profile(profile).attack_victim.get(attack, {}))


def accuracy_grid(profile: Profile | str, attacks: list[str], methods: list[str], *, data: str | None = None,
                  progress: bool = True, log=print, reference_rows: bool = True, **victim_overrides) -> pd.DataFrame:
    """Long table of test accuracy for every (attack, method). ``attacks`` may include ``clean``; a
    method is a training-time defense name or ``eclipse:<modules>`` (e.g. ``eclipse:A+B+C``). Every
    run is cached, so notebooks that share cells share the work.

    Where the profile trains an attack's victim differently (``profile.attack_victim``, e.g. URP without
    random crop in ``quick``), that attack's rows carry the setting in the ``setting`` column (and in the
    display label ``row``, e.g. ``urp (no crop)``), and, if
    ``clean`` is in ``attacks``, a ``clean`` row with the same setting (method ``none``) is added as its
    reference (``reference_rows=False`` leaves it out)."""
    profile = get_profile(profile)
    sets = clean_data(profile, data)
    purifier = None
    rows, started = [], time.perf_counter()
    jobs = []
    for attack in attacks:
        jobs += [(attack, {**attack_victim(profile, attack), **victim_overrides}, method) for method in methods]
    if "clean" in attacks and reference_rows:
        settings = {setting_label(v): v for a in attacks if a != "clean" for v in [attack_victim(profile, a)] if v}
        jobs += [("clean", {**v, **victim_overrides}, "none") for v in settings.values()]
    for attack, victim, method in jobs:
        train = sets["train"] if attack == "clean" else poisoned_set(sets["train"], attack, profile.seed)
        if method.startswith("eclipse"):
            modules = method.split(":", 1)[1] if ":" in method else "A+B+C"
            if MODULES[modules][0] and purifier is None:
                purifier = diffusion_model(profile, sets["pool"], progress=progress)
            result = eclipse_run(train, sets["eval"], profile, modules, purifier=purifier, progress=progress,
                                 victim=victim)
        else:
            result = victim_run(train, sets["eval"], profile, method, progress=progress, **victim)
        setting = setting_label({k: v for k, v in victim.items() if k not in victim_overrides})
        rows.append({"row": f"{attack} ({setting})" if setting else attack, "attack": attack, "setting": setting,
                     "method": method, "test_acc": result["test_acc"],
                     "train_s": round(result["wall_time_s"], 1), "cached": result["cached"]})
        if log:
            log(f"{attack:>6}{' (' + setting + ')' if setting else ''} x {method:<14} {result['test_acc']:6.2f}%  "
                f"({'cached' if result['cached'] else str(round(result['wall_time_s'])) + 's'}, "
                f"{time.perf_counter() - started:.0f}s so far)")
    return pd.DataFrame(rows)

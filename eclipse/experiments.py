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
from .profiles import Profile, get_profile
from .storage import atomic_torch_save, cache_dir, config_key, safe_torch_load
from .training import train_victim


def digest(dataset: ImageSet) -> str:
    """Content hash of a dataset's images and labels."""
    h = hashlib.sha256()
    h.update(dataset.images.contiguous().numpy().tobytes())
    h.update(dataset.labels.numpy().tobytes())
    return h.hexdigest()[:16]


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

    key = config_key({"data": digest(clean), "attack": attack, "seed": seed, "params": params})
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
                      "defense": defense, "params": dict(defense_obj.params), "seed": seed})
    out_dir = cache_dir() / "runs" / key
    result_path = out_dir / "result.json"
    if result_path.exists():
        return {**json.loads(result_path.read_text()), "cached": True}
    result = train_victim(train, evaluation, victim, defense=defense_obj, seed=seed, out_dir=out_dir,
                          progress=progress)
    return {**result, "cached": False}


def defense_table(profile: Profile | str, datasets: dict[str, ImageSet], evaluation: ImageSet,
                  defenses: list[str], *, progress: bool = True, log=print) -> pd.DataFrame:
    """Test accuracy (%) of the profile's victim for every (dataset, defense); rows are datasets."""
    rows, started = [], time.perf_counter()
    for name, dataset in datasets.items():
        for defense in defenses:
            result = victim_run(dataset, evaluation, profile, defense, progress=progress)
            rows.append({"dataset": name, "defense": defense, "test_acc": result["test_acc"],
                         "train_s": result["wall_time_s"], "cached": result["cached"]})
            if log:
                took = "cached" if result["cached"] else f"{result['wall_time_s']:.0f}s"
                log(f"{name:>10} x {defense:<13} {result['test_acc']:6.2f}%  ({took}, "
                    f"{time.perf_counter() - started:.0f}s total)")
    return pd.DataFrame(rows)


def save_table(table: pd.DataFrame, stem: str | Path) -> list[Path]:
    """Write ``table`` as ``<stem>.csv`` and ``<stem>.md``."""
    from .storage import atomic_write_text

    stem = Path(stem)
    return [atomic_write_text(table.to_csv(index=True), stem.with_suffix(".csv")),
            atomic_write_text(table.to_markdown(floatfmt=".2f") + "\n", stem.with_suffix(".md"))]

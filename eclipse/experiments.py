"""Cached experiment artifacts: the datasets a profile uses, poisoned sets, victim runs, the sparse
diffusion model and purified sets.

Every artifact goes through :func:`eclipse.artifacts.cached`: keyed by everything that determines it
(data content, configuration, seed, the code that computes it), written atomically, reused when asked for
again; the long ones (victim runs, diffusion training, purification) resume after an interruption.
ECLIPSE's own semantics (modules, pipeline) live in :mod:`eclipse.method`, grids in :mod:`eclipse.sweeps`.
"""
from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import torch

from .artifacts import ARTIFACT_CODE, cached, code_identity
from .data import ImageSet, load_cifar10, split_test, train_subset
from .defenses import make_defense
from .profiles import Profile, get_profile
from .seeding import default_device
from .storage import atomic_torch_save, atomic_write_json, cache_dir, config_key, safe_torch_load, tensor_hash
from .training import train_victim
from .victims import VICTIMS

if TYPE_CHECKING:
    from .diffusion.selection import FeatureMap


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


def poisoned_set(clean: ImageSet, attack: str, seed: int, *, profile: Profile | str | None = None,
                 progress: bool = True, **params) -> ImageSet:
    """``clean`` poisoned by ``attack`` (cached by content, attack, parameters, seed and code).

    ``profile``: its generation settings for ``attack`` (``Profile.attack_params``) under ``params``. A
    model-based poison under a profile is crafted once, on the profile's training set (``craft_train_size``),
    and ``clean`` (a subset of that set: a sweep victim's 5,000 images, a notebook's gallery) gets its rows:
    the attacker poisons the whole training set, and a surrogate fitted to a 200-image gallery would be a
    different attack. A model-based generation keeps its resume state next to the cache entry until it is
    finished, so a killed generation continues where it stopped."""
    from .attacks import ATTACKS

    if profile is not None:
        profile = get_profile(profile)
        params = {**profile.attack_settings(attack), **params}
        if ATTACKS[attack].family == "model-based":
            crafted_on = craft_set(profile)
            if digest(crafted_on) != digest(clean):
                rows = rows_in(clean, crafted_on, f"{attack}: the {profile.name} profile crafts it on "
                                                  f"{crafted_on.source}")
                whole = _poisoned(crafted_on, attack, seed, params, progress)
                return whole.subset(rows, f"{attack}({clean.source})")
    return _poisoned(clean, attack, seed, params, progress)


def craft_set(profile: Profile | str) -> ImageSet:
    """The clean training set ``profile``'s model-based poisons are crafted on (``craft_train_size`` images,
    default ``train_size``; the same seeded class-balanced draw, so a smaller draw is a subset of it)."""
    profile = get_profile(profile)
    size = profile.craft_train_size or profile.train_size
    return train_subset(load_cifar10("train"), size, profile.seed)


def rows_in(part: ImageSet, whole: ImageSet, what: str = "") -> torch.Tensor:
    """The row of ``whole`` holding each image of ``part`` (same pixels and label); an error names the first
    image of ``part`` that ``whole`` lacks."""
    flat = whole.images.reshape(len(whole), -1).numpy()
    where = {(flat[i].tobytes(), int(whole.labels[i])): i for i in range(len(whole))}
    rows = []
    for i, row in enumerate(part.images.reshape(len(part), -1).numpy()):
        found = where.get((row.tobytes(), int(part.labels[i])))
        if found is None:
            raise ValueError(f"{part.source}: image {i} is not in {whole.source}"
                             + (f" ({what}); pass profile=None to craft the poison on these images" if what else ""))
        rows.append(found)
    return torch.tensor(rows, dtype=torch.long)


def _poisoned(clean: ImageSet, attack: str, seed: int, params: dict, progress: bool) -> ImageSet:
    import shutil

    from .attacks import ATTACKS, poison

    def compute(path: Path) -> dict:
        images = poison(attack, clean.images, clean.labels, seed=seed, num_classes=len(clean.classes),
                        state_dir=path.with_suffix(""), progress=progress, **params)
        return {"images": images, "attack": attack, "seed": seed}

    def save(blob: dict, path: Path) -> None:
        atomic_torch_save(blob, path)
        shutil.rmtree(path.with_suffix(""), ignore_errors=True)  # the resume state of a finished generation

    from .data import content_key

    keyed = {k: {"file": content_key(v)} if k in ATTACKS[attack].file_params and v is not None else v
             for k, v in params.items()}  # a checkpoint's content, not its path, names the poison
    blob, _, _ = cached("poisons", {"data": digest(clean), "attack": attack, "seed": seed, "params": keyed},
                        compute, load=safe_torch_load, save=save, label=attack, suffix=".pt",
                        code=(ATTACKS[attack].fn.__module__,))
    return clean.with_images(blob["images"], f"{attack}({clean.source})")


def victim_run(train: ImageSet, evaluation: ImageSet, profile: Profile | str, defense: str = "none", *,
               seed: int | None = None, progress: bool = True, **victim_overrides) -> dict:
    """Train (or fetch from the cache) the profile's victim on ``train`` with ``defense``; an interrupted
    run resumes from its last epoch. ``victim_overrides``: TrainConfig fields (e.g. ``arch``, ``crop_padding``)."""
    profile = get_profile(profile)
    seed = profile.seed if seed is None else seed
    victim_overrides = {**profile.defense_victim_overrides(defense), **victim_overrides}
    victim = profile.with_overrides(victim=victim_overrides).victim if victim_overrides else profile.victim
    defense_obj = make_defense(defense, **{"gray_p": profile.gray_p, "sigma": profile.sigma,
                                           "num_classes": len(train.classes), **profile.defense_settings(defense)})
    inputs = {"train": digest(train), "eval": digest(evaluation), "victim": asdict(victim), "defense": defense,
              "params": dict(defense_obj.params), "seed": seed}

    def compute(folder: Path) -> dict:
        return train_victim(train, evaluation, victim, defense=defense_obj, seed=seed, out_dir=folder,
                            progress=progress)  # writes folder/result.json when finished

    result, was_cached, folder = cached("runs", inputs, compute,
                                        load=lambda f: json.loads((f / "result.json").read_text()),
                                        save=lambda value, folder: None, done=lambda f: (f / "result.json").exists(),
                                        label=f"{victim.arch}-{defense}", code=(VICTIMS[victim.arch].__module__,))
    return {**result, "cached": was_cached, "run_dir": str(folder)}


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


def diffusion_model(profile: Profile | str, pool: ImageSet | None, *, sparse_size: int | None = None,
                    sparse: ImageSet | None = None, progress: bool = True, **overrides):
    """Train (or fetch) the profile's diffusion model on a sparse set drawn from the defender ``pool``
    (class-balanced, ``sparse_size`` images), or on ``sparse`` itself (the defender's own clean images).

    Returns ``(ema_model, schedule, key)``; ``key`` identifies the model in other cache keys. The
    training folder is ``<cache>/diffusion/<key>``; an interrupted run resumes from its checkpoint, and a
    run asked for more iterations continues the longest shorter finished run of the same configuration.
    """
    from .data import sparse_set
    from .diffusion.checkpoints import load_model_and_schedule, schedule_from_settings
    from .diffusion.train import train_diffusion

    profile = get_profile(profile)
    if sparse is None:
        if pool is None:
            raise ValueError("diffusion_model needs the defender pool or a sparse set")
        sparse = sparse_set(pool, sparse_size or profile.sparse_size, profile.seed)
    cfg = diffusion_config(profile, **overrides)
    identity = {k: v for k, v in cfg.to_dict().items() if k != "checkpoint_every"}
    inputs = {"sparse": digest(sparse), "config": identity}
    runtime = profile.runtime()
    if runtime.key():   # fp32 eager keys as before
        inputs["unet_runtime"] = runtime.key()
    from .distributed import world

    if world()[1] > 1:
        inputs["world_size"] = world()[1]   # DDP: the global batch is batch_size x world size
    # The learning rate is constant, so a longer run of the same configuration continues exactly where the
    # longest shorter cached run stopped (Fig. 5a's iteration sweep then costs one training of the largest I).
    # (the lineage includes the code identity: a run made by other training code is never continued)
    lineage = config_key({**inputs, "config": {k: v for k, v in identity.items() if k != "iterations"},
                          "code": code_identity(*ARTIFACT_CODE["diffusion"])})
    started: dict = {}

    def compute(folder: Path):
        start = _longest_shorter_run(lineage, cfg.iterations)
        if start is not None and not (folder / "checkpoint.pt").exists():
            from .storage import atomic_write_bytes

            atomic_write_bytes(folder / "checkpoint.pt", (start / "checkpoint.pt").read_bytes())
        started.update(tick=time.perf_counter(), start=start)
        return train_diffusion(sparse.images, cfg, folder, progress=progress, device=default_device(), runtime=runtime)

    def save(result, folder: Path) -> None:
        from .distributed import world

        if world()[0] != 0:
            return  # under torchrun rank 0 writes the artifact
        losses = result.losses[-50:]
        atomic_write_json({"config": identity, "lineage": lineage, "sparse_images": len(sparse), "steps": result.step,
                           "continued_from": started["start"].name if started["start"] is not None else None,
                           "final_loss": float(sum(losses) / max(1, len(losses))),
                           "wall_time_s": time.perf_counter() - started["tick"]}, folder / "done.json")

    def load(folder: Path):
        return load_model_and_schedule(folder / "checkpoint.pt", device=default_device())

    value, was_cached, folder = cached("diffusion", inputs, compute, load=load, save=save,
                                       done=lambda f: (f / "done.json").exists())
    model, schedule = value if was_cached else (value.ema, schedule_from_settings(cfg.diffusion))
    if progress and was_cached:
        print(f"diffusion model: reusing the cached {folder.name} ({cfg.iterations} iterations)", file=sys.stderr)
    return model, schedule, folder.name


def _longest_shorter_run(lineage: str, iterations: int) -> Path | None:
    """The finished cached diffusion run of the same lineage (everything but ``iterations``) with the most
    iterations below ``iterations``, or None."""
    wanted, best, best_steps = lineage, None, 0
    for done in sorted((cache_dir() / "diffusion").glob("*/done.json")):
        try:
            info = json.loads(done.read_text())
        except (OSError, json.JSONDecodeError):
            continue  # a damaged marker is never trusted
        steps = int(info.get("config", {}).get("iterations", 0))
        if info.get("lineage") == wanted and best_steps < steps < iterations and (done.parent / "checkpoint.pt").exists():
            best, best_steps = done.parent, steps
    return best


def purified_set(dataset: ImageSet, profile: Profile | str, model, schedule, model_key: str,
                 features: "FeatureMap | None" = None, *, t_star: int | None = None, sampler: str | None = None,
                 steps: int | None = None, progress: bool = True, noise: str = "official") -> ImageSet:
    """``dataset`` purified by the model (noise to t*, then reverse), cached and resumable by chunks;
    ``noise``: ``official`` or ``per-image`` (:data:`eclipse.purify.NOISE_MODES`). The model arguments are a
    :class:`Purifier`'s fields (``purified_set(data, profile, *purifier_for(...))``); ``features``: the feature map
    of a sampler that chooses among candidates (``elixir``), required for it."""
    from .purify import purify

    from .diffusion.samplers import SAMPLERS

    profile = get_profile(profile)
    t_star = t_star or profile.t_star
    sampler = sampler or profile.sampler
    steps = steps if steps is not None else profile.sampler_steps
    if SAMPLERS[sampler].purifier == "consistency" and not model_key.startswith(CONSISTENCY_PREFIX):
        raise ValueError(f"sampler {sampler!r} runs on the consistency-fine-tuned weights; get them with "
                         "eclipse.experiments.purifier_for(profile, sampler, (model, schedule, key), pool=...)")
    if SAMPLERS[sampler].features and features is None:
        raise ValueError(f"sampler {sampler!r} chooses among candidates with a sparse-set classifier's features; "
                         "get them with eclipse.experiments.purifier_for(profile, sampler, (model, schedule, key), "
                         "pool=...)")
    inputs = {"data": digest(dataset), "model": model_key, "t_star": t_star, "sampler": sampler, "steps": steps,
              "seed": profile.seed, "batch": profile.purify_batch_size, "noise": noise}
    if features is not None:
        inputs["features"] = features.key
    runtime = profile.runtime()
    if runtime.key():   # fp32 eager keys as before
        inputs["unet_runtime"] = runtime.key()

    def compute(path: Path) -> torch.Tensor:
        return purify(dataset.images, model, schedule, t_star=t_star, sampler=sampler, steps=steps, seed=profile.seed,
                      batch_size=profile.purify_batch_size, resume_dir=path.with_suffix(""), progress=progress,
                      noise=noise, features=features, runtime=runtime)

    images, _, _ = cached("purified", inputs, compute, load=safe_torch_load, save=atomic_torch_save,
                          label=f"{sampler}-t{t_star}", suffix=".pt")
    return dataset.with_images(images, f"purified[t*={t_star},{sampler}]({dataset.source})")


CONSISTENCY_PREFIX = "consistency-"


def consistency_purifier(profile: Profile | str, base: tuple, pool: ImageSet | None = None, *,
                         sparse: ImageSet | None = None, t_star: int | None = None, progress: bool = True) -> tuple:
    """The one-step purifier of :mod:`eclipse.diffusion.consistency`: the diffusion model ``base = (model,
    schedule, key)`` fine-tuned on the profile's sparse set drawn from ``pool`` (or on ``sparse``) for depth
    ``t_star`` (default the profile's), with the profile's ``consistency`` settings. Cached and resumable;
    returns ``(model, schedule, key)`` with a key that ``purified_set`` accepts for ``sampler="consistency"``."""
    import copy

    from .data import sparse_set
    from .diffusion.consistency import ConsistencyConfig, finetune_consistency

    profile = get_profile(profile)
    model, schedule, base_key = base[:3]
    if sparse is None:
        if pool is None:
            raise ValueError("the consistency purifier is fine-tuned on clean images: pass the defender pool or "
                             "a sparse set")
        sparse = sparse_set(pool, profile.sparse_size, profile.seed)
    t_star = t_star or profile.t_star
    cfg = ConsistencyConfig(**{"seed": profile.seed, **profile.consistency})
    inputs = {"base": base_key, "sparse": digest(sparse), "t_star": t_star, "config": cfg.to_dict()}
    features = sparse_features(profile, sparse, grad=True, progress=progress) if cfg.perceptual else None
    if features is not None:
        inputs["features"] = features.key
    started: dict = {}

    def compute(folder: Path):
        started["tick"] = time.perf_counter()
        return finetune_consistency(model, schedule, sparse.images, cfg, t_star=t_star, out_dir=folder,
                                    device=default_device(), progress=progress, features=features)

    def save(result, folder: Path) -> None:
        losses = result[1]
        atomic_write_json({"inputs": inputs, "steps": len(losses),
                           "first_loss": float(sum(losses[:20]) / max(1, len(losses[:20]))),
                           "final_loss": float(sum(losses[-20:]) / max(1, len(losses[-20:]))),
                           "wall_time_s": time.perf_counter() - started["tick"]}, folder / "done.json")

    def load(folder: Path):
        from .diffusion.consistency import CHECKPOINT_NAME

        tuned = copy.deepcopy(model)
        tuned.load_state_dict(safe_torch_load(folder / CHECKPOINT_NAME)["ema"])
        return tuned.to(default_device()).eval().requires_grad_(False), None

    (tuned, _), was_cached, folder = cached("consistency", inputs, compute, load=load, save=save,
                                            done=lambda f: (f / "done.json").exists(), label=f"t{t_star}")
    if progress and was_cached:
        print(f"consistency purifier: reusing the cached {folder.name}", file=sys.stderr)
    return tuned, schedule, CONSISTENCY_PREFIX + folder.name


class Purifier(NamedTuple):
    """What a sampler purifies with: the network, its schedule, the cache key naming them, and (for a sampler
    that chooses among candidates) the feature map; unpacks into :func:`purified_set`'s arguments."""

    model: torch.nn.Module
    schedule: object
    key: str
    features: "FeatureMap | None" = None


def sparse_features(profile: Profile | str, sparse: ImageSet, *, grad: bool = False,
                    progress: bool = True) -> "FeatureMap":
    """The penultimate features of the profile's victim trained on the clean sparse set (cached like every
    victim run): the feature map of DataElixir's per-image choice (``elixir``) and of the consistency
    purifier's optional perceptual term (``grad=True``), from a classifier that never saw a poison. Its accuracy
    is reported on the sparse set itself (no test set is at hand here)."""
    from .diffusion.selection import FeatureMap, penultimate_features
    from .training import trained_model

    profile = get_profile(profile)
    run = victim_run(sparse, sparse, profile, "none", progress=progress)
    net = trained_model(run["run_dir"], profile.victim, len(sparse.classes))
    return FeatureMap(penultimate_features(net, grad=grad), "sparse-classifier-" + Path(run["run_dir"]).name)


def purifier_for(profile: Profile | str, sampler: str | None, base: tuple, pool: ImageSet | None = None, *,
                 sparse: ImageSet | None = None, t_star: int | None = None, progress: bool = True) -> Purifier:
    """The :class:`Purifier` that ``sampler`` (default the profile's) purifies with: ``base = (model, schedule,
    key)`` itself, or its consistency fine-tuning for a sampler that needs it, with the sparse-set classifier's
    features for a sampler that chooses among candidates. ``pool`` (the defender's clean images, from which the
    profile's sparse set is drawn) or ``sparse`` is needed for those two."""
    from .data import sparse_set
    from .diffusion.samplers import SAMPLERS

    profile = get_profile(profile)
    spec = SAMPLERS[sampler or profile.sampler]
    model, schedule, key, features = Purifier(*base)
    tune = spec.purifier == "consistency" and not key.startswith(CONSISTENCY_PREFIX)
    need_features = spec.features and features is None
    if (tune or need_features) and sparse is None:
        if pool is None:
            raise ValueError(f"sampler {spec.name!r} needs the defender's clean images: pass the pool or a sparse set")
        sparse = sparse_set(pool, profile.sparse_size, profile.seed)
    if tune:
        model, schedule, key = consistency_purifier(profile, (model, schedule, key), sparse=sparse, t_star=t_star,
                                                    progress=progress)
    if need_features:
        features = sparse_features(profile, sparse, progress=progress)
    return Purifier(model, schedule, key, features if spec.features else None)

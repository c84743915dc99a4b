"""``eclipse`` command line: a thin argparse front end over the package's functions.

Every choice (attacks, defenses, victims, samplers, ECLIPSE modules, profiles) and its help comes from
the package's registries, and every ECLIPSE default from the profile (:func:`eclipse.method.settings`).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

from . import __version__
from .errors import DataError
from .outputs import check_output

REPO = Path(__file__).resolve().parents[1]


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Help that shows each option's default (unless it is None/False or the text already says it)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "default" in text or action.default is None or action.default is False or not action.option_strings \
                or action.default == argparse.SUPPRESS:
            return text
        return f"{text} (default: %(default)s)"


def _registries():
    from .attacks import ATTACKS
    from .defenses import DEFENSES
    from .diffusion.samplers import SAMPLERS
    from .method import MODULES, PURIFYING_DEFENSES
    from .profiles import PROFILES
    from .victims import VICTIMS

    return dict(attacks=ATTACKS, defenses=DEFENSES, purifying=PURIFYING_DEFENSES, samplers=SAMPLERS, modules=MODULES,
                profiles=PROFILES, victims=VICTIMS)


def _choices(registry) -> str:
    return "; ".join(registry.help(sep="\n").splitlines())


def _profile_arg(parser: argparse.ArgumentParser, default: str = "quick", seed: bool = True) -> None:
    from .profiles import PROFILES

    parser.add_argument("--profile", default=default, choices=PROFILES.names(), metavar="PROFILE",
                        help=f"experiment scale: {_choices(PROFILES)}")
    parser.add_argument("--data", default=None, metavar="PATH",
                        help="CIFAR-10 source (ImageFolder dir/.tar.gz or cifar-10-batches-py); default: ECLIPSE_DATA, "
                             "the offline copy beside the repository, or torchvision's (ECLIPSE_DOWNLOAD=1)")
    if seed:
        parser.add_argument("--seed", type=int, default=None, help="override the profile's seed (default: the profile's, 0)")
    parser.add_argument("--precision", default=None, choices=["fp32", "bf16"],
                        help="override the victim's precision (quick: bf16, which is emulated and ~7x slower than "
                             "fp32 on CPUs without AVX512-BF16/AMX; results then differ within the seed spread)")
    _runtime_args(parser)


def _runtime_args(parser: argparse.ArgumentParser) -> None:
    """The UNet's execution switches (:mod:`eclipse.diffusion.runtime`), each off by default."""
    parser.add_argument("--unet-precision", default=None, choices=["fp32", "bf16"],
                        help="the diffusion UNet's precision in purification and diffusion training (default fp32, "
                             "as the official code; bf16: autocast, ~1.8x in purification measured on a 2-core AMX CPU, "
                             "emulated and slow on CPUs without AVX512-BF16; purified images then differ by a level "
                             "or two); "
                             "keys the artifacts it makes")
    parser.add_argument("--channels-last", action="store_true", default=None,
                        help="run the UNet in NHWC (channels_last) memory format (within the noise on a 2-core CPU, "
                             "measured; meant for GPUs' convolutions; keys the artifacts it makes)")
    parser.add_argument("--compile", action="store_true", default=None,
                        help="torch.compile the UNet (a compilation on first use: ~40 s for the quick UNet on 2 CPU cores; no "
                             "gain measured there; keys the artifacts it makes)")


def _runtime_overrides(args: argparse.Namespace) -> dict:
    """``--unet-precision``, ``--channels-last``, ``--compile`` as given (UNetRuntime fields)."""
    return {k: v for k, v in (("precision", getattr(args, "unet_precision", None)),
                              ("channels_last", getattr(args, "channels_last", None)),
                              ("compile", getattr(args, "compile", None))) if v is not None}


def _defense_params(triples: list[list[str]] | None, base: dict) -> dict:
    """``--defense-param DEFENSE NAME VALUE`` triples merged over the profile's ``defense_params`` (a new dict);
    DEFENSE must be registered, NAME a :class:`~eclipse.defenses.DefenseParams` field, VALUE of its type."""
    from dataclasses import fields

    import yaml

    from .defenses import DEFENSES, DefenseParams

    types = {f.name: f.type for f in fields(DefenseParams)}
    out = {name: dict(values) for name, values in base.items()}
    for defense, name, value in triples or []:
        if defense not in DEFENSES:
            raise ValueError(f"--defense-param: unknown defense {defense!r} (registered: {', '.join(DEFENSES.names())})")
        if name not in types:
            raise ValueError(f"--defense-param {defense}: unknown setting {name!r} (DefenseParams fields: "
                             f"{', '.join(types)})")
        kind = {"float": float, "int": int}.get(str(types[name]), float)
        try:
            parsed = yaml.safe_load(value)
            if isinstance(parsed, bool) or not isinstance(parsed, (int, float)) or (kind is int and parsed != int(parsed)):
                raise ValueError
        except (yaml.YAMLError, ValueError):
            raise ValueError(f"--defense-param {defense} {name}: {value!r} is not a{'n integer' if kind is int else ' number'}"
                             ) from None
        out.setdefault(defense, {})[name] = kind(parsed)
    return out


def _profile(args: argparse.Namespace):
    """The profile named by ``--profile`` with ``--seed``, ``--precision`` and ``--defense-param`` applied."""
    from .profiles import get_profile

    profile = get_profile(args.profile)
    if getattr(args, "seed", None) is not None:
        profile = profile.with_overrides(seed=args.seed)
    if getattr(args, "precision", None) is not None:
        profile = profile.with_overrides(victim={"precision": args.precision})
    defense_params = _defense_params(getattr(args, "defense_param", None), profile.defense_params)
    if defense_params != profile.defense_params:
        profile = profile.with_overrides(defense_params=defense_params)
    runtime = _runtime_overrides(args)
    if runtime:
        profile = profile.with_overrides(unet_runtime={**profile.unet_runtime, **runtime})
        profile.runtime()   # bad settings fail here
    return profile


def _int_at_least(low: int):
    """argparse type: a whole number >= ``low`` (``--steps 0`` is an error, not "all steps")."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number >= {low}, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"expected a whole number >= {low}, got {value}")
        return value
    return parse


_positive_int, _count = _int_at_least(1), _int_at_least(0)


def _unit_float(text: str) -> float:
    """argparse type: a finite number in [0, 1] (``nan`` and ``inf`` are errors)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {text!r}") from None
    if not 0 <= value <= 1:  # also false for nan
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {text}")
    return value


def _positive_float(text: str) -> float:
    """argparse type: a finite number > 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text!r}") from None
    if not 0 < value < float("inf"):  # also false for nan
        raise argparse.ArgumentTypeError(f"expected a finite number > 0, got {text}")
    return value


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------------ commands
def cmd_info(args: argparse.Namespace) -> int:
    import importlib.util

    import torch
    import torchvision

    from .data import find_offline_cifar10, torchvision_root
    from .manifest import git_commit
    from .seeding import default_device
    from .storage import cache_dir

    offline = find_offline_cifar10()
    tv = torchvision_root() / "cifar-10-batches-py"
    missing = [m for m in ("papermill", "jupyterlab", "ipywidgets", "nbval") if importlib.util.find_spec(m) is None]
    print(f"eclipse      {__version__}  commit {git_commit()}")
    print(f"torch        {torch.__version__}  torchvision {torchvision.__version__}  threads {torch.get_num_threads()}")
    print(f"device       {default_device()}" + (f" ({torch.cuda.get_device_name(0)})" if torch.cuda.is_available() else ""))
    print(f"cache        {cache_dir()}")
    print(f"CIFAR-10     offline: {offline if offline and offline.exists() else 'not found'}; "
          f"torchvision: {tv if tv.exists() else 'not downloaded'}")
    print("notebooks    " + ("extras installed" if not missing else
                             f"missing {', '.join(missing)}: pip install -e '.[notebooks,test]' "
                             "(needed by `eclipse reproduce`)"))
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    from .attacks.budgets import perturbation_norms
    from .data import load_images

    reference = load_images(args.reference, split=args.split) if args.reference else None
    dataset = _load_dataset(args.path, args.split, base=reference)  # a perturbation file applies to the reference
    counts = dataset.class_counts()
    report = {"path": str(args.path), "count": len(dataset), "shape": list(dataset.images.shape[1:]),
              "dtype": str(dataset.images.dtype), "value_range": [int(dataset.images.min()), int(dataset.images.max())],
              "label_histogram": dict(zip(dataset.classes, counts))}
    if reference is not None:
        if len(reference) != len(dataset):
            raise DataError(f"{args.reference}: {len(reference)} images, but {args.path} holds {len(dataset)}")
        if not bool((reference.labels == dataset.labels).all()):
            raise DataError(f"{args.reference}: labels differ from {args.path} (different order or set)")
        norms = perturbation_norms(dataset.images, reference.images)
        report["perturbation"] = {
            "linf_max_255": round(float(norms["linf"].max()) * 255, 3),
            "linf_mean_255": round(float(norms["linf"].mean()) * 255, 3),
            "l2_max": round(float(norms["l2"].max()), 4), "l2_mean": round(float(norms["l2"].mean()), 4),
            "l0_max_pixels": int(norms["l0"].max()), "l0_mean_pixels": round(float(norms["l0"].float().mean()), 2),
            "changed_images": int((norms["l0"] > 0).sum())}
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        for key, value in report.items():
            print(f"{key:>16}: {value}")
    return 0


def _load_dataset(path: str, split: str | None = None, base=None):
    """``load_images`` with a hint when an archive holds split folders and none was named."""
    from .data import load_images

    try:
        return load_images(path, split=split, base=base)
    except DataError as err:
        if split is None and "no images" in str(err):
            raise DataError(f"{err} (an archive or folder with train/ and test/ inside needs --split train or "
                            "--split test)") from None
        raise


def cmd_export(args: argparse.Namespace) -> int:
    from .data import save_images
    from .experiments import clean_data

    profile = _profile(args)
    check_output(args.out, [args.data])
    _say(f"reading CIFAR-10 and drawing the {profile.name} profile's sets ...")
    dataset = clean_data(profile, args.data)[args.set]
    path = save_images(dataset, args.out)
    print(f"{args.set}: {len(dataset)} images of the {profile.name} profile -> {path} "
          f"(use as `eclipse inspect POISONED --reference {path}`)")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from .experiments import clean_data, victim_run
    from .method import PURIFYING_DEFENSES

    profile = _profile(args)
    if args.out:
        check_output(args.out, [args.dataset, args.data], suffixes=(".json",))
    _use_device(args)
    sets = clean_data(profile, args.data)
    train = _load_dataset(args.dataset) if args.dataset else sets["train"]
    _check_same_classes(train, sets["eval"], args.dataset or "the training set")
    overrides = {k: v for k, v in (("arch", args.arch), ("width", args.width), ("epochs", args.epochs), ("lr", args.lr))
                 if v is not None}
    if args.defense in PURIFYING_DEFENSES:   # purify the set (AVATAR), then a plain victim
        result = PURIFYING_DEFENSES[args.defense](train, sets["eval"], profile, victim=overrides)
        result["defense"] = args.defense
    else:
        result = victim_run(train, sets["eval"], profile, args.defense, **overrides)
    summary = {k: result[k] for k in ("defense", "seed", "n_train", "n_test", "test_acc", "wall_time_s", "cached")}
    summary.update({k: result[k] for k in ("dp_epsilon", "dp_delta") if k in result})
    summary["arch"] = result["config"]["arch"]
    print(json.dumps(summary, indent=2))
    if args.out:
        from .storage import atomic_write_json

        atomic_write_json(result, args.out)
    return 0


def _check_same_classes(train, evaluation, where: str) -> None:
    if tuple(train.classes) != tuple(evaluation.classes):
        raise DataError(f"{where}: its classes {list(train.classes)} differ from the evaluation set's "
                        f"{list(evaluation.classes)}; a victim trained on it cannot be scored there")


def _method_list(text: str) -> str:
    """argparse type of a ``table`` method: a registered defense, a purifying defense or ``eclipse:<modules>``."""
    from .defenses import DEFENSES
    from .method import PURIFYING_DEFENSES, is_method

    if text == "all" or is_method(text):
        return text
    raise argparse.ArgumentTypeError(f"unknown method {text!r}; choose a defense "
                                     f"({', '.join([*DEFENSES, *PURIFYING_DEFENSES])}), eclipse:<modules> or all")


def cmd_table(args: argparse.Namespace) -> int:
    """Attacks x defenses test-accuracy table for a profile, written to --out-dir with a manifest (under
    torchrun, by rank 0, the grid shared among the processes)."""
    from dataclasses import asdict

    from .defenses import DEFENSES
    from .method import PURIFYING_DEFENSES
    from .experiments import clean_data
    from .manifest import write_manifest
    from .method import settings
    from .storage import atomic_write_text
    from .sweeps import accuracy_grid, wide
    from .viz import save_table

    from . import distributed

    profile = _profile(args)
    device = _use_device(args, per_rank=True)
    started = time.perf_counter()
    defenses = ([d for d in DEFENSES if d not in ("grayscale", "noise")] + list(PURIFYING_DEFENSES)
                if args.defenses == ["all"] else args.defenses)
    victim = {k: v for k, v in (("arch", args.arch), ("width", args.width)) if v is not None}
    with distributed.process_group(device):   # torchrun: the grid's tasks shared, one victim per process/GPU
        long = accuracy_grid(profile, args.attacks, defenses, data=args.data, progress=not args.no_progress,
                             reference_rows=not args.no_reference, **victim)
    if distributed.world()[0] != 0:
        return 0
    table = wide(long)
    table.index.name = "attack"
    sets = clean_data(profile, args.data)
    out = Path(args.out_dir)
    stem = f"{args.name}-{profile.name}"
    paths = save_table(table, stem, out)
    if args.figure:
        paths += _table_figure(table, profile, out / stem, **victim)
    atomic_write_text(long.to_csv(index=False), out / f"{stem}-runs.csv")
    write_manifest(out / f"{stem}-manifest.json", profile=profile.name, seed=profile.seed,
                   wall_time_s=time.perf_counter() - started, victim={**asdict(profile.victim), **victim},
                   train_images=len(sets["train"]), eval_images=len(sets["eval"]),
                   attack_victim=profile.attack_victim,
                   attack_params={a: profile.attack_settings(a) for a in args.attacks if profile.attack_settings(a)},
                   defense_params={d: profile.defense_settings(d) for d in defenses if profile.defense_settings(d)},
                   defense_victim={d: profile.defense_victim_overrides(d) for d in defenses
                                   if profile.defense_victim_overrides(d)},
                   run_seconds=dict(zip(long["row"] + "/" + long["method"], long["train_s"])),
                   processes=distributed.world()[1],
                   **({"eclipse": {**asdict(settings(profile)), "unet": profile.unet,
                                   "diffusion_train": profile.diffusion_train, "unet_runtime": profile.runtime().label()}}
                      if any(d.startswith("eclipse") for d in defenses) else {}))
    print(table.round(2).to_string())
    print("wrote", ", ".join(str(p) for p in paths))
    return 0


def _table_figure(table, profile, stem: Path, **victim) -> list[Path]:
    """``table`` as a heatmap with the paper's Table 1 cell under each of ours (display names); ``victim``:
    the overrides of the profile's victim (``arch``, ``width``) the table was trained with."""
    from dataclasses import replace

    from . import paper, viz
    from .profiles import victim_label

    arch = victim.get("arch", profile.victim.arch)
    names = dict(index=viz.display_name, columns=viz.display_name)
    theirs = paper.table1_cells(table, arch=arch).rename(**names) if arch in paper.TABLE1_ARCHS else None
    label = victim_label(replace(profile, victim=replace(profile.victim, **victim)))
    fig = viz.accuracy_heatmap(table.rename(**names), f"test accuracy (%), ours (paper)\n({label})"
                               if theirs is not None else f"test accuracy (%)\n({label})", paper=theirs)
    fig.axes[0].title.set_fontsize(9)
    fig.axes[0].set_xlabel("")
    fig.axes[0].set_ylabel("")
    fig.tight_layout()
    return viz.save_figure(fig, stem.name, stem.parent)


def cmd_poison(args: argparse.Namespace) -> int:
    from .data import save_images
    from .experiments import clean_data, poisoned_set

    profile = _profile(args)
    check_output(args.out, [args.data])
    _use_device(args)
    started = time.perf_counter()
    _say(f"reading CIFAR-10 and drawing the {profile.name} profile's training subset ...")
    clean = clean_data(profile, args.data)["train"]
    _say(f"poisoning {len(clean)} images with {args.attack} ({time.perf_counter() - started:.0f}s so far) ...")
    overrides = parse_parameters(args.attack_params, "attack parameter")
    if overrides:
        _say(f"{args.attack} parameters over the {profile.name} profile's: {overrides}")
    poisoned = poisoned_set(clean, args.attack, profile.seed, profile=profile, **overrides)
    path = save_images(poisoned, args.out)
    print(f"{args.attack}: {len(poisoned)} images -> {path} ({time.perf_counter() - started:.1f}s in all, "
          "data loading included)")
    return 0


def parse_parameters(pairs: list[list[str]] | None, what: str = "notebook parameter") -> dict:
    """``-p NAME VALUE`` pairs -> notebook (or attack) parameters, each VALUE read as YAML (``[lsp, ar]``, ``0.4``,
    ``null``)."""
    import yaml

    out = {}
    for name, value in pairs or []:
        if not name.isidentifier():
            raise ValueError(f"{what} name {name!r} is not a Python identifier")
        try:
            out[name] = yaml.safe_load(value)
        except yaml.YAMLError as err:
            raise ValueError(f"{what} {name}: cannot read {value!r} ({err})") from None
    return out


def _defense_param_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--defense-param", action="append", nargs=3, metavar=("DEFENSE", "NAME", "VALUE"), default=None,
                   help="override one setting of a defense over the profile's (repeatable), e.g. --defense-param "
                        "dp-sgd dp_noise_multiplier 0.3 or --defense-param at at_steps 5; NAME: a DefenseParams field "
                        "(eclipse/defenses/__init__.py); the cache keys and the table's runs CSV follow it")


def _device_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto", help="auto (ECLIPSE_DEVICE, else CUDA when present, else CPU), cpu, "
                                                    "cuda, cuda:N or mps")


def _use_device(args: argparse.Namespace, per_rank: bool = False):
    """Make --device this process's default device (and its notebooks': ECLIPSE_DEVICE); return it
    (``per_rank``: under torchrun, ``cuda`` is this rank's GPU)."""
    from . import distributed
    from .seeding import resolve_device, set_default_device

    device = resolve_device(args.device)
    device = set_default_device(distributed.rank_device(device) if per_rank else device)
    if args.device not in (None, "", "auto"):
        os.environ["ECLIPSE_DEVICE"] = str(device)
    return device


def cmd_reproduce(args: argparse.Namespace) -> int:
    _use_device(args)
    try:
        import papermill  # noqa: F401
    except ImportError:
        print("eclipse: error: `eclipse reproduce` needs the notebook extras: pip install -e '.[notebooks]'",
              file=sys.stderr)
        return 2
    from .profiles import RUNTIME_ENV, runtime_env_value
    from .reproduce import reproduce

    runtime = _runtime_overrides(args)
    if runtime:
        os.environ[RUNTIME_ENV] = runtime_env_value(runtime)
    parameters = parse_parameters(args.parameter)
    summary = reproduce(args.profile, only=args.only, run_dir=args.run_dir, figures_dir=args.figures_dir,
                        seed=args.seed or 0, timeout_s=args.timeout, parameters=parameters)
    print(summary[["notebook", "status", "seconds", "cold_equivalent_s", "error"]].to_string(index=False))
    failed = summary[summary["status"] != "ok"]
    print(f"{len(summary) - len(failed)}/{len(summary)} notebooks ran; total {summary['seconds'].sum():.0f}s "
          f"({summary['cold_equivalent_s'].sum():.0f}s with the recorded making time of the cached artifacts reused); "
          f"executed copies in {summary['output'].iloc[0].rsplit('/', 1)[0] if len(summary) else '-'}")
    return 1 if len(failed) else 0


def cmd_train_diffusion(args: argparse.Namespace) -> int:
    from . import distributed
    from .experiments import clean_data, diffusion_model
    from .seeding import resolve_device, set_default_device

    profile = _profile(args)
    overrides = {k: v for k, v in (("replicas", args.replicas), ("enlargement", args.enlargement),
                                   ("iterations", args.iterations), ("batch_size", args.batch_size)) if v is not None}
    device = set_default_device(distributed.rank_device(resolve_device(args.device)))
    sparse = _load_dataset(args.sparse_set) if args.sparse_set else None
    pool = None if sparse is not None else clean_data(profile, args.data)["pool"]
    started = time.perf_counter()
    rank, size = distributed.world()
    with distributed.process_group(device):   # torchrun: DDP, global batch = --batch-size x processes
        _, _, key = diffusion_model(profile, pool, sparse_size=args.sparse_size, sparse=sparse, progress=rank == 0,
                                    **overrides)
        if size > 1:
            import torch.distributed as dist

            dist.barrier()   # rank 0's done.json is written
    if rank != 0:
        return 0
    from .storage import cache_dir

    folder = cache_dir() / "diffusion" / key
    info = json.loads((folder / "done.json").read_text())
    reused = time.perf_counter() - started < 0.5 * info.get("wall_time_s", 0)
    print(f"diffusion model {key}: {folder / 'checkpoint.pt'} ("
          + (f"reused from the cache; trained in {info['wall_time_s']:.0f}s earlier)" if reused
             else f"trained {info['steps']} iterations in {time.perf_counter() - started:.0f}s)"))
    return 0


def _eclipse_profile(args: argparse.Namespace):
    """The profile with the command's ECLIPSE overrides (--t-star, --sampler, --steps, --gray-p, --sigma)."""
    profile = _profile(args)
    changes = {k: v for k, v in (("t_star", args.t_star), ("sampler", args.sampler), ("sampler_steps", args.steps),
                                 ("gray_p", getattr(args, "gray_p", None)), ("sigma", getattr(args, "sigma", None)))
               if v is not None}
    if "sampler" in changes and "sampler_steps" not in changes:
        changes["sampler_steps"] = None  # the profile's step count belongs to the profile's sampler
    if getattr(args, "batch_size", None):
        changes["purify_batch_size"] = args.batch_size
    profile = profile.with_overrides(**changes) if changes else profile
    if profile.t_star < 1:
        raise ValueError(f"--t-star must be >= 1, got {profile.t_star}")
    if profile.sampler_steps is not None and not 1 <= profile.sampler_steps <= profile.t_star:
        raise ValueError(f"--steps must lie in 1..t* = {profile.t_star}, got {profile.sampler_steps}")
    for name, value in (("gray-p", profile.gray_p), ("sigma", profile.sigma)):
        if not 0 <= value <= 1:
            raise ValueError(f"--{name} must lie in [0, 1], got {value}")
    return profile


def _purifier(args: argparse.Namespace, profile, device):
    """The :class:`~eclipse.experiments.Purifier` the profile's sampler purifies with: :func:`_diffusion_purifier`'s
    model, or its consistency fine-tuning for ``--sampler consistency``, with the sparse-set classifier's features for
    ``--sampler elixir`` (both on --sparse-set, else the profile's sparse set)."""
    from .diffusion.samplers import SAMPLERS
    from .experiments import clean_data, purifier_for

    base = _diffusion_purifier(args, profile, device)
    spec = SAMPLERS[profile.sampler]
    if spec.purifier != "consistency" and not spec.features:
        return purifier_for(profile, profile.sampler, base)   # needs no clean images
    if spec.purifier == "consistency":
        _say(f"fine-tuning (or reusing) the one-step consistency purifier for t* = {profile.t_star} (cached, "
             "resumable) ...")
    if spec.features:
        _say("training (or reusing) the sparse-set classifier whose features choose among the candidates (cached) ...")
    if args.sparse_set:
        return purifier_for(profile, profile.sampler, base, sparse=_load_dataset(args.sparse_set))
    return purifier_for(profile, profile.sampler, base, clean_data(profile, args.data)["pool"])


def _diffusion_purifier(args: argparse.Namespace, profile, device):
    """(model, schedule, key): the user's checkpoint, a model trained on --sparse-set, or the profile's."""
    from .diffusion.checkpoints import load_model_and_schedule
    from .experiments import clean_data, diffusion_model
    from .storage import config_key

    if args.checkpoint:
        if args.sparse_set:
            raise ValueError("give either --checkpoint (a trained model) or --sparse-set (train one), not both")
        _say(f"loading {args.checkpoint} on {device} ...")
        model, schedule = load_model_and_schedule(args.checkpoint, args.config, device=device)
        return model, schedule, "checkpoint-" + config_key({"checkpoint": Path(args.checkpoint),
                                                            "config": Path(args.config) if args.config else None})
    if args.config:
        raise ValueError("--config describes a --checkpoint; give the checkpoint too")
    if args.sparse_set:
        sparse = _load_dataset(args.sparse_set)
        _say(f"training the diffusion model on {len(sparse)} images of {args.sparse_set} (cached, resumable) ...")
        return diffusion_model(profile, None, sparse=sparse)
    _say(f"training (or reusing) the {profile.name} profile's diffusion model on its {profile.sparse_size}-image "
         "sparse set ...")
    return diffusion_model(profile, clean_data(profile, args.data)["pool"])


def _check_fits(dataset, model, where: str) -> None:
    size = getattr(getattr(model, "config", None), "image_size", None)
    if size is not None and tuple(dataset.images.shape[-2:]) != (size, size):
        raise DataError(f"{where}: images are {tuple(dataset.images.shape[-2:])}, but the diffusion model takes "
                        f"{size}x{size}; use a checkpoint trained at that size")


def _noise_mode(args: argparse.Namespace) -> str:
    """--noise, defaulting to per-image under torchrun (shards must not depend on the split) and to official
    otherwise; official with several processes is refused."""
    from .distributed import world

    size = world()[1]
    if args.noise is None:
        return "per-image" if size > 1 else "official"
    if args.noise == "official" and size > 1:
        raise ValueError(f"--noise official depends on how the set is batched, so {size} processes would not give "
                         "the single-process result; use --noise per-image (the default under torchrun)")
    return args.noise


def cmd_purify(args: argparse.Namespace) -> int:
    from . import distributed
    from .data import save_images
    from .purify import purify
    from .seeding import resolve_device, set_default_device

    started = time.perf_counter()
    profile = _eclipse_profile(args)
    noise = _noise_mode(args)
    check_output(args.out, [args.input, args.checkpoint, args.config, args.resume_dir, args.data])
    device = set_default_device(distributed.rank_device(resolve_device(args.device)))
    rank, size = distributed.world()
    dataset = _load_dataset(args.input)
    purifier = _purifier(args, profile, device)
    model, schedule, _, features = purifier
    _check_fits(dataset, model, args.input)
    with distributed.process_group(device):
        start, stop = distributed.shard(len(dataset))      # the whole set in a single process
        resume = args.resume_dir if size == 1 or not args.resume_dir else Path(args.resume_dir) / f"rows-{start}-{stop}"
        part = purify(dataset.images[start:stop], model.to(device), schedule, t_star=profile.t_star,
                      sampler=profile.sampler, steps=profile.sampler_steps, eta=args.eta, seed=args.seed,
                      batch_size=profile.purify_batch_size, resume_dir=resume, device=device, noise=noise,
                      first_index=start, progress=rank == 0, features=features, runtime=profile.runtime())
        images = distributed.gather_rows(part, len(dataset))
    if rank == 0:
        path = save_images(dataset.with_images(images, f"purified({args.input})"), args.out)
        print(f"purified {len(dataset)} images (t*={profile.t_star}, {profile.sampler}, {noise} noise, {device}, "
              f"UNet {profile.runtime().label()}"
              f"{f', {size} processes' if size > 1 else ''}) -> {path} ({time.perf_counter() - started:.0f}s in all)")
    return 0


def cmd_defend(args: argparse.Namespace) -> int:
    """ECLIPSE end to end: purify a training set, then (with --train) train the victim with compensation."""
    from .data import save_images
    from .experiments import clean_data, poisoned_set, purified_set
    from .method import module_spec, run
    from .seeding import resolve_device, set_default_device

    started = time.perf_counter()
    if args.dataset and args.attack:
        raise ValueError("give either --dataset (your training set) or --attack (poison the profile's subset), not both")
    profile = _eclipse_profile(args)
    spec = module_spec(args.modules)
    if args.out and not spec.purify:
        raise ValueError(f"--out writes the purified set, but modules {spec.name} do not purify (no A)")
    if args.out:
        check_output(args.out, [args.dataset, args.sparse_set, args.checkpoint, args.config, args.data])
    device = set_default_device(resolve_device(args.device))  # purification and the victim run there
    if args.dataset:
        dataset, where = _load_dataset(args.dataset), args.dataset
    else:
        attack = args.attack or "clean"
        _say(f"reading CIFAR-10 for the {profile.name} profile's training subset ...")
        train = clean_data(profile, args.data)["train"]
        dataset = train if attack == "clean" else poisoned_set(train, attack, profile.seed, profile=profile)
        where = f"{attack} on the {profile.name} subset"
    summary: dict = {"input": where, "images": len(dataset), "modules": spec.name, "profile": profile.name,
                     "device": str(device)}
    purifier = None
    if spec.purify:
        purifier = _purifier(args, profile, device)
        _check_fits(dataset, purifier.model, where)
        purifier = purifier._replace(model=purifier.model.to(device))
        summary.update(t_star=profile.t_star, sampler=profile.sampler, steps=profile.sampler_steps,
                       diffusion_model=purifier.key)
        _say(f"purifying {len(dataset)} images (t*={profile.t_star}, {profile.sampler}; cached and resumable) ...")
        purified = purified_set(dataset, profile, *purifier, noise=_noise_mode(args))
        if args.out:
            summary["purified_set"] = str(save_images(purified, args.out))
    if args.train:
        if args.dataset:
            _check_same_classes(dataset, clean_data(profile, args.data)["eval"], args.dataset)
        _say(f"training the {profile.victim.arch} victim with {spec.defense} ...")
        sets = clean_data(profile, args.data)
        victim = {} if args.dataset else profile.victim_overrides(args.attack or "clean")
        result = run(dataset, sets["eval"], profile, spec.name, purifier=purifier, victim=victim)
        summary.update(defense=result["defense"], gray_p=profile.gray_p, sigma=profile.sigma, victim=profile.victim.arch,
                       victim_overrides=victim, test_acc=result["test_acc"], victim_cached=result["cached"],
                       eval_images=len(sets["eval"]))
    summary["wall_time_s"] = round(time.perf_counter() - started, 1)
    print(json.dumps(summary, indent=2))
    return 0


def _cache_kinds(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if p.is_dir()) if root.exists() else []


def _size(path: Path) -> int:
    return path.stat().st_size if path.is_file() else sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def cmd_cache(args: argparse.Namespace) -> int:
    from .storage import cache_dir

    root = cache_dir()
    kinds = [k for k in _cache_kinds(root) if not args.kind or k.name in args.kind]
    if args.action == "du":
        total = 0
        for kind in kinds:
            size = _size(kind)
            total += size
            print(f"{size / 2**20:10.1f} MiB  {kind.name}")
        print(f"{total / 2**20:10.1f} MiB  total in {root}")
    elif args.action == "ls":
        print(f"cache {root}")
        for kind in kinds:
            index_path = kind / "index.json"
            index = json.loads(index_path.read_text()) if index_path.exists() else {}
            entries = [p for p in kind.iterdir() if p.name != "index.json" and not p.name.startswith(".")]
            print(f"{kind.name}/ ({len(entries)} entr{'y' if len(entries) == 1 else 'ies'})")
            for key, info in sorted(index.items(), key=lambda kv: kv[1].get("created", "")):
                print(f"  {info.get('created', '?'):19}  {info.get('path', key):44}  {info.get('label', '')}"
                      f"  ({info.get('seconds', '?')} s to make)")
    else:  # clean
        if not kinds:
            print(f"nothing to remove in {root}")
            return 0
        names = ", ".join(k.name for k in kinds)
        if not args.yes:
            print(f"would remove {names} from {root} ({sum(_size(k) for k in kinds) / 2**20:.1f} MiB); "
                  "rerun with --yes to do it")
            return 1
        for kind in kinds:
            shutil.rmtree(kind)
        print(f"removed {names} from {root}")
    return 0


# ------------------------------------------------------------------------------------------ parser
def build_parser() -> argparse.ArgumentParser:
    from .purify import NOISE_MODES

    reg = _registries()
    attacks_help = _choices(reg["attacks"])
    parser = argparse.ArgumentParser(prog="eclipse", formatter_class=_Formatter,
                                     description="ECLIPSE (ESORICS 2024): sparse diffusion purification against "
                                                 "clean-label indiscriminate poisons")
    parser.add_argument("--version", action="version", version=f"eclipse {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, fn, text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=text, description=text, formatter_class=_Formatter)
        p.set_defaults(fn=fn)
        return p

    command("info", cmd_info, "versions, device, data found, notebook extras")

    p = command("inspect", cmd_inspect, "what a dataset file holds (and its perturbation vs a reference)")
    p.add_argument("path", help="dataset: ECLIPSE .pkl, .npz, ImageFolder folder/.tar.gz, cifar-10-batches-py, or "
                                "a model-based poison's public file (EM perturbation.pt, REM .pkl, TAP/SEP .npy, "
                                "a folder of <index>.png), which needs --reference")
    p.add_argument("--reference", help="the clean dataset the file was made from, same order "
                                       "(e.g. from `eclipse export`); a perturbation file is applied to it")
    p.add_argument("--split", default=None, choices=["train", "test"],
                   help="split folder inside an ImageFolder archive that holds train/ and test/")
    p.add_argument("--json", action="store_true", help="print the report as JSON")

    p = command("export", cmd_export, "write one of a profile's clean sets (e.g. as `inspect --reference`)")
    _profile_arg(p)
    p.add_argument("--set", default="train", choices=["train", "eval", "pool"],
                   help="train: the training subset attacks poison; eval: the scored test images; pool: the "
                        "defender's clean pool")
    p.add_argument("--out", required=True, help="output: .pkl (ECLIPSE format), .npz or a folder (PNG ImageFolder)")

    p = command("train", cmd_train, "train a victim on a dataset file (or the clean subset) and evaluate it")
    _device_arg(p)
    _profile_arg(p)
    p.add_argument("--dataset", help="training set file (.pkl/.npz/folder); default: the profile's clean subset")
    p.add_argument("--defense", default="none", choices=[*reg["defenses"].names(), *reg["purifying"].names()],
                   metavar="DEFENSE", help=f"{_choices(reg['defenses'])}; {_choices(reg['purifying'])}")
    p.add_argument("--arch", default=None, choices=reg["victims"].names(), metavar="ARCH",
                   help=f"victim network (default: the profile's): {_choices(reg['victims'])}")
    p.add_argument("--width", type=_positive_int, default=None, help="victim base width (64 = standard; default: the profile's)")
    p.add_argument("--epochs", type=_positive_int, default=None, help="training epochs (default: the profile's)")
    p.add_argument("--lr", type=_positive_float, default=None,
                   help="peak learning rate (default: the profile's; e.g. DP-SGD's clipped gradients want a larger one)")
    _defense_param_arg(p)
    p.add_argument("--out", help="write the full result JSON (per-epoch log included) here")

    p = command("table", cmd_table, "attacks x defenses accuracy table, CSV/Markdown + manifest")
    _device_arg(p)
    _profile_arg(p)
    p.add_argument("--attacks", nargs="+", default=["clean", "urp", "lsp", "ar", "ops"],
                   choices=["clean", *reg["attacks"].names()], metavar="ATTACK", help=f"clean or: {attacks_help}")
    p.add_argument("--defenses", nargs="+", type=_method_list, default=["none", "iss-g", "iss-j", "compensation"],
                   metavar="METHOD", help="training-time defenses, purifying defenses, eclipse:<modules> (e.g. "
                                          "eclipse:A+B+C, eclipse:B+C) or all. Defenses: "
                                          f"{_choices(reg['defenses'])}; {_choices(reg['purifying'])}")
    p.add_argument("--arch", default=None, choices=reg["victims"].names(), metavar="ARCH",
                   help=f"victim network instead of the profile's (e.g. vgg19 for Table 1's second half): "
                        f"{_choices(reg['victims'])}")
    p.add_argument("--width", type=_positive_int, default=None,
                   help="victim base width instead of the profile's (64 = standard; quick: 16)")
    _defense_param_arg(p)
    p.add_argument("--name", default="table-defenses", help="file stem in --out-dir: <name>-<profile>.{csv,md}")
    p.add_argument("--no-reference", action="store_true",
                   help="leave out the clean reference rows for per-attack victim settings (e.g. clean, no crop)")
    p.add_argument("--out-dir", default="eclipse-results",
                   help="folder for the table and its manifest (the repository's figures/ only when named)")
    p.add_argument("--figure", action="store_true",
                   help="also draw <name>-<profile>.png/.pdf: a heatmap with the paper's Table 1 value under ours "
                        "where the paper has one (needs the notebook extras)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")

    p = command("poison", cmd_poison, "poison the profile's training subset and write it")
    _device_arg(p)
    _profile_arg(p)
    p.add_argument("--attack", required=True, choices=reg["attacks"].names(), metavar="ATTACK", help=attacks_help)
    p.add_argument("--out", required=True, help="output: .pkl (ECLIPSE format), .npz or a folder (PNG ImageFolder)")
    p.add_argument("--set", dest="attack_params", action="append", nargs=2, metavar=("NAME", "VALUE"), default=None,
                   help="an attack parameter over the profile's (VALUE read as YAML), e.g. `--set restarts 8`, "
                        "`--set purifier model.pt` (ADP through a purifier); repeatable")

    p = command("train-diffusion", cmd_train_diffusion, "train the sparse-set diffusion model (cached, resumable)")
    _profile_arg(p)
    p.add_argument("--sparse-set", default=None, metavar="FILE",
                   help="train on your own clean images (default: a class-balanced draw from the defender pool)")
    p.add_argument("--sparse-size", type=_positive_int, default=None, help="B, clean images drawn from the pool (default: the profile's)")
    p.add_argument("--replicas", type=_count, default=None, help="M, the sparse set is repeated M+1 times (default: the profile's)")
    p.add_argument("--enlargement", default=None, choices=["replicate", "crop", "flip", "rotation", "mixup"],
                   help="how the sparse set is enlarged (Fig. 3; default: replicate)")
    p.add_argument("--iterations", type=_positive_int, default=None, help="training iterations I (default: the profile's)")
    p.add_argument("--batch-size", type=_positive_int, default=None,
                   help="images per step and process (default: the profile's); under torchrun the global batch is "
                        "this times the number of processes")
    p.add_argument("--device", default="auto", help="auto (CUDA when present; each torchrun process its own GPU), "
                                                    "cpu, cuda, cuda:N or mps")

    def eclipse_args(p: argparse.ArgumentParser, compensation: bool) -> None:
        model = p.add_argument_group("diffusion model (default: the profile's, trained on its sparse set)")
        model.add_argument("--checkpoint", default=None, help="a diffusion checkpoint: ours, or an improved-diffusion/"
                                                              "official ECLIPSE one (e.g. ema_0.9999_250000.pt) with --config")
        model.add_argument("--config", default=None, help="official-style YAML for --checkpoint (configs/cifar10.yml)")
        model.add_argument("--sparse-set", default=None, metavar="FILE",
                           help="your own clean images: train the diffusion model on them (cached)")
        knobs = p.add_argument_group("ECLIPSE settings (default: the profile's; see `eclipse.method.settings`)")
        knobs.add_argument("--t-star", type=_positive_int, default=None, help="purification depth t* (paper: 100 of T=4000)")
        knobs.add_argument("--sampler", default=None, choices=reg["samplers"].names(), metavar="SAMPLER",
                           help=_choices(reg["samplers"]))
        knobs.add_argument("--steps", type=_positive_int, default=None,
                           help="reverse steps for respaced/ddim/masked, rounds for chained (1..t*)")
        if compensation:
            knobs.add_argument("--gray-p", type=_unit_float, default=None, help="module B: grayscale probability (paper 0.4)")
            knobs.add_argument("--sigma", type=_unit_float, default=None, help="module C: Gaussian noise std (paper 0.05)")
        knobs.add_argument("--batch-size", type=_positive_int, default=None, help="images purified at once (default: the profile's)")
        knobs.add_argument("--noise", default=None, choices=list(NOISE_MODES),
                           help="purification noise: official (the default in one process: the official code's "
                                "draws, for conformance and the cached results; depends on --batch-size) or "
                                "per-image (the default under torchrun: each image's own generator seeded by "
                                "(seed, index), identical at any --batch-size or number of processes)")
        p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:N or mps")

    p = command("purify", cmd_purify, "purify a dataset file with a diffusion model (module A alone)")
    _profile_arg(p, seed=False)
    p.add_argument("--input", required=True, help="dataset to purify (.pkl/.npz/folder)")
    p.add_argument("--out", required=True, help=".pkl (ECLIPSE format, input order kept), .npz or a folder (PNG)")
    eclipse_args(p, compensation=False)
    p.add_argument("--eta", type=_unit_float, default=0.0, help="DDIM eta (ddim sampler only)")
    p.add_argument("--seed", type=int, default=1234, help="seed of the purification noise (the official code's)")
    p.add_argument("--resume-dir", default=None, help="folder for finished chunks (resume after interruption)")

    p = command("defend", cmd_defend, "ECLIPSE end to end on your data: purify, then train with compensation")
    _profile_arg(p)
    source = p.add_argument_group("training set (one of)")
    source.add_argument("--dataset", default=None, help="your (possibly poisoned) training set: any readable format")
    source.add_argument("--attack", default=None, choices=["clean", *reg["attacks"].names()], metavar="ATTACK",
                        help=f"or poison the profile's CIFAR-10 subset with: {attacks_help}")
    p.add_argument("--modules", default="A+B+C", choices=reg["modules"].names(), metavar="MODULES",
                   help=_choices(reg["modules"]))
    eclipse_args(p, compensation=True)
    p.add_argument("--out", default=None, help="write the purified set: .pkl (ECLIPSE format), .npz or a folder (PNG)")
    p.add_argument("--train", action=argparse.BooleanOptionalAction, default=True,
                   help="train the profile's victim on the purified set with compensation and score it on the "
                        "CIFAR-10 evaluation images (--no-train: purify only)")

    p = command("reproduce", cmd_reproduce, "run the notebooks with papermill (every figure and table)")
    _device_arg(p)
    p.add_argument("--profile", default="quick", choices=reg["profiles"].names(), metavar="PROFILE",
                   help=_choices(reg["profiles"]))
    p.add_argument("--only", nargs="+", default=None, help="notebooks whose name contains one of these (e.g. 04 05)")
    p.add_argument("--seed", type=int, default=None, help="seed passed to every notebook (default 0)")
    p.add_argument("--run-dir", default=None, help="where executed notebooks go (default runs/<time>-<profile>)")
    p.add_argument("--figures-dir", default=None,
                   help="where figures and tables go (default: <run-dir>/figures; the repository's figures/ only "
                        "when named, as scripts/reproduce.sh does)")
    p.add_argument("--timeout", type=_positive_int, default=None, help="per-cell timeout in seconds (default: none)")
    p.add_argument("-p", "--parameter", nargs=2, action="append", metavar=("NAME", "VALUE"),
                   help="notebook parameter (papermill's -p; VALUE is read as YAML, e.g. -p attacks '[lsp, ar]')")
    _runtime_args(p)   # handed to the notebooks' kernels as ECLIPSE_UNET_RUNTIME

    p = command("cache", cmd_cache, "list, size or clean the artifact cache (ECLIPSE_CACHE)")
    p.add_argument("action", choices=["ls", "du", "clean"], help="ls: entries with readable names; du: sizes; "
                                                               "clean: remove (with --yes)")
    p.add_argument("--kind", nargs="+", default=None, help="only these kinds (poisons, runs, diffusion, purified, decoded)")
    p.add_argument("--yes", action="store_true", help="really remove (clean)")
    return parser


def _error(message: object) -> int:
    print(f"eclipse: error: {message}", file=sys.stderr)
    return 2


def main(argv: list[str] | None = None) -> int:
    """Run one command. Every failure is one line ``eclipse: error: <file>: <what>`` and exit status 2;
    Ctrl-C exits 130 (atomic writes leave no partial output). ``ECLIPSE_DEBUG=1`` shows tracebacks."""
    import os

    from .seeding import set_default_device

    debug = os.environ.get("ECLIPSE_DEBUG") == "1"
    try:
        args = build_parser().parse_args(argv)
        return args.fn(args)
    except KeyboardInterrupt:
        if debug:
            raise
        print("eclipse: interrupted (no partial output is left behind)", file=sys.stderr)
        return 130
    except (DataError, ValueError, KeyError, NotImplementedError, FloatingPointError, RuntimeError) as err:
        if debug:
            raise
        return _error(err.args[0] if isinstance(err, KeyError) and err.args else err)
    except OSError as err:
        if debug:
            raise
        where = f"{err.filename}: " if err.filename else ""
        return _error(f"{where}{err.strerror or err}")
    except MemoryError:
        if debug:
            raise
        return _error("out of memory (an input asks for more than this machine has; try --batch-size)")
    except Exception as err:  # noqa: BLE001 - the last line of defence: one line, not a traceback
        if debug:
            raise
        return _error(f"unexpected {type(err).__name__}: {err} (ECLIPSE_DEBUG=1 shows the traceback; please report it)")
    finally:
        set_default_device(None)  # --device holds for one command (matters when main() is called in-process)


if __name__ == "__main__":
    raise SystemExit(main())

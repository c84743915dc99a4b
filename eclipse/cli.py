"""``eclipse`` command line: a thin argparse front end over the package's functions."""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from .data import DataError

REPO = Path(__file__).resolve().parents[1]


def _profile_arg(parser: argparse.ArgumentParser, default: str = "quick") -> None:
    parser.add_argument("--profile", default=default, choices=["smoke", "quick", "paper"],
                        help=f"experiment scale (default: {default})")
    parser.add_argument("--data", default=None, help="CIFAR-10 source (ImageFolder dir/.tar.gz or cifar-10-batches-py)")
    parser.add_argument("--seed", type=int, default=None, help="override the profile's seed")


def _profile(args: argparse.Namespace):
    """The profile named by ``--profile`` with ``--seed`` applied."""
    from .profiles import get_profile

    profile = get_profile(args.profile)
    return profile.with_overrides(seed=args.seed) if getattr(args, "seed", None) is not None else profile


def cmd_info(args: argparse.Namespace) -> int:
    import torch
    import torchvision

    from .data import find_offline_cifar10, torchvision_root
    from .manifest import git_commit
    from .seeding import default_device
    from .storage import cache_dir

    offline = find_offline_cifar10()
    tv = torchvision_root() / "cifar-10-batches-py"
    print(f"eclipse      commit {git_commit()}")
    print(f"torch        {torch.__version__}  torchvision {torchvision.__version__}  threads {torch.get_num_threads()}")
    print(f"device       {default_device()}" + (f" ({torch.cuda.get_device_name(0)})" if torch.cuda.is_available() else ""))
    print(f"cache        {cache_dir()}")
    print(f"CIFAR-10     offline: {offline if offline and offline.exists() else 'not found'}; "
          f"torchvision: {tv if tv.exists() else 'not downloaded'}")
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    from .attacks.budgets import perturbation_norms
    from .data import load_images

    dataset = load_images(args.path, split=args.split)
    counts = dataset.class_counts()
    report = {"path": str(args.path), "count": len(dataset), "shape": list(dataset.images.shape[1:]),
              "dtype": str(dataset.images.dtype), "value_range": [int(dataset.images.min()), int(dataset.images.max())],
              "label_histogram": dict(zip(dataset.classes, counts))}
    if args.reference:
        reference = load_images(args.reference, split=args.split)
        if len(reference) != len(dataset):
            raise DataError(f"{args.reference}: {len(reference)} images, but {args.path} holds {len(dataset)}")
        if not bool((reference.labels == dataset.labels).all()):
            raise DataError(f"{args.reference}: labels differ from {args.path} (different order or set)")
        norms = perturbation_norms(dataset.images, reference.images)
        report["perturbation"] = {
            "linf_max_255": round(float(norms["linf"].max()) * 255, 3),
            "linf_mean_255": round(float(norms["linf"].mean()) * 255, 3),
            "l2_max": round(float(norms["l2"].max()), 4), "l2_mean": round(float(norms["l2"].mean()), 4),
            "l0_max": int(norms["l0"].max()), "l0_mean": round(float(norms["l0"].float().mean()), 2),
            "changed_images": int((norms["l0"] > 0).sum())}
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        for key, value in report.items():
            print(f"{key:>16}: {value}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from .data import load_images
    from .experiments import clean_data, victim_run

    profile = _profile(args)
    sets = clean_data(profile, args.data)
    train = load_images(args.dataset) if args.dataset else sets["train"]
    overrides = {k: v for k, v in (("arch", args.arch), ("width", args.width), ("epochs", args.epochs)) if v is not None}
    result = victim_run(train, sets["eval"], profile, args.defense, **overrides)
    summary = {k: result[k] for k in ("defense", "seed", "n_train", "n_test", "test_acc", "wall_time_s", "cached")}
    summary["arch"] = result["config"]["arch"]
    print(json.dumps(summary, indent=2))
    if args.out:
        from .storage import atomic_write_json

        atomic_write_json(result, args.out)
    return 0


def cmd_table(args: argparse.Namespace) -> int:
    """Attacks x defenses test-accuracy table for a profile, written to figures/ with a manifest."""
    from .defenses import DEFENSE_NAMES
    from .experiments import accuracy_grid, clean_data
    from .manifest import write_manifest
    from .storage import atomic_write_text
    from .viz import save_table

    profile = _profile(args)
    started = time.perf_counter()
    defenses = [d for d in DEFENSE_NAMES if d not in ("grayscale", "noise")] if args.defenses == ["all"] else args.defenses
    long = accuracy_grid(profile, args.attacks, defenses, data=args.data, progress=not args.no_progress,
                         reference_rows=not args.no_reference)
    table = long.pivot(index="row", columns="method", values="test_acc").reindex(columns=defenses)
    table = table.loc[list(dict.fromkeys(long["row"]))]  # rows in the order they ran
    table.index.name = "attack"
    sets = clean_data(profile, args.data)
    out = Path(args.out_dir)
    stem = f"{args.name}-{profile.name}"
    paths = save_table(table, stem, out)
    atomic_write_text(long.to_csv(index=False), out / f"{stem}-runs.csv")
    write_manifest(out / f"{stem}-manifest.json", profile=profile.name, seed=profile.seed,
                   wall_time_s=time.perf_counter() - started, victim=profile.victim.__dict__,
                   train_images=len(sets["train"]), eval_images=len(sets["eval"]),
                   attack_victim=profile.attack_victim,
                   run_seconds=dict(zip(long["row"] + "/" + long["method"], long["train_s"])),
                   **({"eclipse": {"t_star": profile.t_star, "sampler": profile.sampler,
                                   "sampler_steps": profile.sampler_steps, "sparse_size": profile.sparse_size,
                                   "replicas": profile.replicas, "unet": profile.unet,
                                   "diffusion_train": profile.diffusion_train, "gray_p": profile.gray_p,
                                   "sigma": profile.sigma}}
                      if any(d.startswith("eclipse") for d in defenses) else {}))
    print(table.round(2).to_string())
    print("wrote", ", ".join(str(p) for p in paths))
    return 0


def cmd_poison(args: argparse.Namespace) -> int:
    from .data import save_images
    from .experiments import clean_data, poisoned_set

    profile = _profile(args)
    clean = clean_data(profile, args.data)["train"]
    started = time.perf_counter()
    poisoned = poisoned_set(clean, args.attack, profile.seed)
    save_images(poisoned, args.out)
    print(f"{args.attack}: {len(poisoned)} images -> {args.out} ({time.perf_counter() - started:.1f}s)")
    return 0


def parse_parameters(pairs: list[list[str]] | None) -> dict:
    """``-p NAME VALUE`` pairs -> notebook parameters, each VALUE read as YAML (``[lsp, ar]``, ``0.4``, ``null``)."""
    import yaml

    out = {}
    for name, value in pairs or []:
        if not name.isidentifier():
            raise ValueError(f"notebook parameter name {name!r} is not a Python identifier")
        try:
            out[name] = yaml.safe_load(value)
        except yaml.YAMLError as err:
            raise ValueError(f"notebook parameter {name}: cannot read {value!r} ({err})") from None
    return out


def cmd_reproduce(args: argparse.Namespace) -> int:
    try:
        import papermill  # noqa: F401
    except ImportError:
        print("eclipse: error: `eclipse reproduce` needs the notebook extras: pip install -e '.[notebooks]'",
              file=sys.stderr)
        return 2
    from .reproduce import reproduce

    parameters = parse_parameters(args.parameter)
    summary = reproduce(args.profile, only=args.only, run_dir=args.run_dir, figures_dir=args.figures_dir,
                        seed=args.seed or 0, timeout_s=args.timeout, parameters=parameters)
    print(summary[["notebook", "status", "seconds", "error"]].to_string(index=False))
    failed = summary[summary["status"] != "ok"]
    print(f"{len(summary) - len(failed)}/{len(summary)} notebooks ran; total {summary['seconds'].sum():.0f}s; "
          f"executed copies in {summary['output'].iloc[0].rsplit('/', 1)[0] if len(summary) else '-'}")
    return 1 if len(failed) else 0


def cmd_train_diffusion(args: argparse.Namespace) -> int:
    from .experiments import clean_data, diffusion_model

    profile = _profile(args)
    overrides = {k: v for k, v in (("replicas", args.replicas), ("enlargement", args.enlargement),
                                   ("iterations", args.iterations)) if v is not None}
    pool = clean_data(profile, args.data)["pool"]
    started = time.perf_counter()
    _, _, key = diffusion_model(profile, pool, sparse_size=args.sparse_size, **overrides)
    from .storage import cache_dir

    print(f"diffusion model {key}: {cache_dir() / 'diffusion' / key / 'checkpoint.pt'} "
          f"({time.perf_counter() - started:.0f}s)")
    return 0


def cmd_purify(args: argparse.Namespace) -> int:
    from .data import load_images, save_images
    from .purify import load_purifier, purify

    dataset = load_images(args.input)
    model, schedule = load_purifier(args.checkpoint, args.config)
    started = time.perf_counter()
    images = purify(dataset.images, model, schedule, t_star=args.t_star, sampler=args.sampler, steps=args.steps,
                    eta=args.eta, seed=args.seed, batch_size=args.batch_size, resume_dir=args.resume_dir)
    save_images(dataset.with_images(images, f"purified({args.input})"), args.out)
    print(f"purified {len(dataset)} images (t*={args.t_star}, {args.sampler}) -> {args.out} "
          f"({time.perf_counter() - started:.0f}s)")
    return 0


def cmd_defend(args: argparse.Namespace) -> int:
    from .data import load_images
    from .experiments import attack_victim, clean_data, eclipse_run, poisoned_set

    profile = _profile(args)
    sets = clean_data(profile, args.data)
    victim = attack_victim(profile, args.attack) if not args.dataset else {}
    if args.dataset:
        dataset = load_images(args.dataset)
    elif args.attack == "clean":
        dataset = sets["train"]
    else:
        dataset = poisoned_set(sets["train"], args.attack, profile.seed)
    result = eclipse_run(dataset, sets["eval"], profile, args.modules, pool=sets["pool"], victim=victim)
    summary = {k: result[k] for k in ("modules", "defense", "n_train", "test_acc", "wall_time_s", "cached")}
    print(json.dumps({**summary, "victim_overrides": victim}, indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="eclipse", description="ECLIPSE: sparse diffusion purification against "
                                     "clean-label indiscriminate poisons")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("info", help="versions, device, data found")
    p.set_defaults(fn=cmd_info)

    p = sub.add_parser("inspect", help="what a dataset file holds (and its perturbation vs a reference)")
    p.add_argument("path")
    p.add_argument("--reference", help="the clean dataset the file was made from (same order)")
    p.add_argument("--split", default=None, help="split folder inside an ImageFolder archive (train/test)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(fn=cmd_inspect)

    p = sub.add_parser("train", help="train a victim on a dataset file (or the clean set) and evaluate it")
    _profile_arg(p)
    p.add_argument("--dataset", help="training set file (.pkl/.npz/folder); default: the profile's clean subset")
    p.add_argument("--defense", default="none")
    p.add_argument("--arch", default=None)
    p.add_argument("--width", type=int, default=None)
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--out", help="write the full result JSON here")
    p.set_defaults(fn=cmd_train)

    p = sub.add_parser("table", help="attacks x defenses accuracy table -> figures/")
    _profile_arg(p)
    p.add_argument("--attacks", nargs="+", default=["clean", "urp", "lsp", "ar", "ops"])
    p.add_argument("--defenses", nargs="+", default=["none", "iss-g", "iss-j", "compensation"],
                   help="defense names, 'eclipse:<modules>' (e.g. eclipse:A+B+C, eclipse:B+C), or 'all' "
                        "(none, compensation, iss-g, iss-j, cutout, mixup, cutmix)")
    p.add_argument("--name", default="table-defenses", help="file stem in --out-dir: <name>-<profile>.{csv,md}")
    p.add_argument("--no-reference", action="store_true",
                   help="leave out the clean reference rows for per-attack victim settings (e.g. clean, no crop)")
    p.add_argument("--out-dir", default=str(REPO / "figures"))
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(fn=cmd_table)

    p = sub.add_parser("poison", help="poison the profile's training subset and write it (.pkl or .npz)")
    _profile_arg(p)
    p.add_argument("--attack", required=True)
    p.add_argument("--out", required=True)
    p.set_defaults(fn=cmd_poison)

    p = sub.add_parser("train-diffusion", help="train the sparse-set diffusion model of a profile (cached, resumable)")
    _profile_arg(p)
    p.add_argument("--sparse-size", type=int, default=None, help="B, clean images from the defender pool")
    p.add_argument("--replicas", type=int, default=None, help="M")
    p.add_argument("--enlargement", default=None, choices=["replicate", "crop", "flip", "rotation", "mixup"])
    p.add_argument("--iterations", type=int, default=None)
    p.set_defaults(fn=cmd_train_diffusion)

    p = sub.add_parser("purify", help="purify a dataset file with a diffusion checkpoint (ours or official + YAML)")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--config", default=None, help="official-style YAML (configs/cifar10.yml) for official checkpoints")
    p.add_argument("--input", required=True)
    p.add_argument("--out", required=True, help=".pkl (ECLIPSE format, input order kept) or .npz")
    p.add_argument("--t-star", type=int, default=100)
    p.add_argument("--sampler", default="ancestral", choices=["ancestral", "respaced", "ddim", "one_shot"])
    p.add_argument("--steps", type=int, default=None, help="reverse steps for respaced/ddim")
    p.add_argument("--eta", type=float, default=0.0)
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--resume-dir", default=None, help="folder for finished chunks (resume after interruption)")
    p.set_defaults(fn=cmd_purify)

    p = sub.add_parser("defend", help="ECLIPSE end to end: purify, then train with compensation")
    _profile_arg(p)
    p.add_argument("--attack", default="clean", help="poison the profile's subset with this attack (or 'clean')")
    p.add_argument("--dataset", default=None, help="or a training-set file")
    p.add_argument("--modules", default="A+B+C", choices=["A+B+C", "A", "B", "C", "A+B", "A+C", "B+C"])
    p.set_defaults(fn=cmd_defend)

    p = sub.add_parser("reproduce", help="run the notebooks with papermill (every figure and table)")
    p.add_argument("--profile", default="quick", choices=["smoke", "quick", "paper"])
    p.add_argument("--only", nargs="+", default=None, help="notebooks whose name contains one of these")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--run-dir", default=None, help="where executed notebooks go (default runs/<time>-<profile>)")
    p.add_argument("--figures-dir", default=str(REPO / "figures"))
    p.add_argument("--timeout", type=int, default=None, help="per-cell timeout in seconds")
    p.add_argument("-p", "--parameter", nargs=2, action="append", metavar=("NAME", "VALUE"),
                   help="notebook parameter (papermill's -p; VALUE is read as YAML, e.g. -p attacks '[lsp, ar]')")
    p.set_defaults(fn=cmd_reproduce)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.fn(args)
    except (DataError, ValueError, KeyError, NotImplementedError, FloatingPointError, RuntimeError,
            FileNotFoundError) as err:
        message = err.args[0] if isinstance(err, KeyError) and err.args else err
        print(f"eclipse: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())

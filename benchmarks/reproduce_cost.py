"""Projected wall time of ``eclipse reproduce --profile P`` on this machine, on 1 and N devices: the plan of every
artifact the notebooks ask for (``eclipse.plan``), priced with throughputs measured here in this run.

    python benchmarks/reproduce_cost.py --profile quick                      # 2 CPU cores: ~3 min of measuring
    python benchmarks/reproduce_cost.py --profile paper --device cuda --devices 1 8 --csv figures/reproduce-cost-gpu.csv

Measured here, at the profile's own sizes (random weights and images: speed does not depend on them): each
(victim architecture, width, defense) the plan trains, one epoch of ``--victim-images`` images after a warm-up
epoch, as image-epochs/s; UNet evaluations/s of purification (a batch of ``--purify-images`` images, default the profile's, ``--purify-steps``
respaced steps at the profile's t*); diffusion training and consistency fine-tuning iterations/s at the profile's
batch sizes (after warm-up steps); each model-free poison on ``--victim-images`` images. A model-based poison is
its cost model (``eclipse.attacks.cost``, EM/ADP at ``--em-rounds`` rounds) priced at its surrogate's training
rate. Several devices: the tasks ``torchrun ... table`` shares (notebooks 04, 05, 06) spread over them stage by
stage, longest first; notebooks 02 and 08 run in one process (they are not sharded today). Not counted: data
decoding, evaluation passes, figures, the uncached 6-image gallery chains and notebook 08's 100-image speed probes.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))   # unet_switches

from eclipse.plan import Rates, plan, price, project  # noqa: E402
from eclipse.profiles import get_profile  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--profile", default="quick")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--devices", type=int, nargs="+", default=[1, 8], help="device counts to project for")
    p.add_argument("--notebooks", nargs="*", default=None, help="notebook stems (default: all)")
    p.add_argument("--purifier-attacks", nargs="*", default=None,
                   help="notebook 08's attacks (default: its grid), as a run with that parameter")
    p.add_argument("--victim-images", type=int, default=512, help="images per timed victim epoch (default 512)")
    p.add_argument("--purify-images", type=int, default=None, help="images purified at once (default: the "
                   "profile's purify batch; the per-image speed depends on it)")
    p.add_argument("--purify-steps", type=int, default=4, help="respaced reverse steps timed (default 4)")
    p.add_argument("--train-steps", type=int, default=4, help="timed diffusion / consistency steps (after 2 warm-up)")
    p.add_argument("--em-rounds", type=int, default=10, help="EM/ADP min-min rounds assumed (data-dependent)")
    p.add_argument("--csv", default=None, help="also write the priced plan to this CSV")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def victim_rate(profile, arch: str, width: int, defense: str, n: int, device: torch.device) -> float | None:
    """Image-epochs/s of the profile's victim recipe with ``arch``/``width`` and ``defense`` (second epoch timed)."""
    from dataclasses import replace

    from eclipse.data import ImageSet
    from eclipse.defenses import make_defense
    from eclipse.training import train_victim

    g = torch.Generator().manual_seed(0)
    train = ImageSet(torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g), torch.arange(n) % 10,
                     source="random")
    test = train.subset(torch.arange(min(n, 100)))
    config = replace(profile.victim, arch=arch, width=width, epochs=2, eval_every=10 ** 6)
    try:
        obj = make_defense(defense, gray_p=profile.gray_p, sigma=profile.sigma, num_classes=10,
                           **profile.defense_settings(defense))
    except ImportError as err:   # DP-SGD without Opacus
        print(f"  {arch}-w{width} x {defense}: not measured ({err})")
        return None
    stamps: list[float] = []

    def on_epoch(epoch: int, model) -> None:
        _sync(device)
        stamps.append(time.perf_counter())

    with tempfile.TemporaryDirectory() as folder:
        train_victim(train, test, config, defense=obj, seed=0, out_dir=folder, device=device, progress=False,
                     on_epoch=on_epoch)
    return n / (stamps[1] - stamps[0])


def unet_eval_rate(profile, n: int, steps: int, device: torch.device) -> float:
    """Image-evaluations/s of purification with the profile's UNet (respaced ``steps`` from t*, after a warm-up)."""
    from eclipse.diffusion.checkpoints import DiffusionSettings, schedule_from_settings
    from eclipse.diffusion.unet import UNetConfig, build_unet
    from eclipse.purify import purify

    model = build_unet(UNetConfig(**profile.unet)).to(device).eval()
    schedule = schedule_from_settings(DiffusionSettings(diffusion_steps=profile.diffusion_steps))
    x = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    run = lambda k: purify(x, model, schedule, t_star=profile.t_star, sampler="respaced", steps=k,  # noqa: E731
                           seed=0, batch_size=n, progress=False, device=device,
                           runtime=profile.runtime())
    run(1)
    _sync(device)
    tick = time.perf_counter()
    run(steps)
    _sync(device)
    return n * steps / (time.perf_counter() - tick)


def diffusion_rate(profile, steps: int, device: torch.device) -> float:
    """Training iterations/s of the profile's UNet at its diffusion batch (``unet_switches.time_training``)."""
    from argparse import Namespace

    from eclipse.diffusion.unet import UNetConfig
    from unet_switches import time_training

    batch = int(profile.diffusion_train.get("batch_size", 128))
    return 1 / time_training(UNetConfig(**profile.unet), profile.runtime(),
                             Namespace(batch=batch, train_steps=steps, seed=0), device)


def consistency_rate(profile, steps: int, device: torch.device) -> float:
    """Fine-tuning iterations/s of the profile's consistency recipe (whole run of ``steps + 2`` minus a 2-step run)."""
    from eclipse.diffusion.checkpoints import DiffusionSettings, schedule_from_settings
    from eclipse.diffusion.consistency import ConsistencyConfig, finetune_consistency
    from eclipse.diffusion.unet import UNetConfig, build_unet

    model = build_unet(UNetConfig(**profile.unet)).to(device)
    schedule = schedule_from_settings(DiffusionSettings(diffusion_steps=profile.diffusion_steps))
    base = {"seed": 0, **profile.consistency}
    images = torch.randint(0, 256, (max(64, base.get("batch_size", 64)), 3, 32, 32), dtype=torch.uint8)
    seconds = []
    for k in (2, steps + 2):
        cfg = ConsistencyConfig(**{**base, "iterations": k, "checkpoint_every": 10 ** 9})
        with tempfile.TemporaryDirectory() as folder:
            _sync(device)
            tick = time.perf_counter()
            finetune_consistency(model, schedule, images, cfg, t_star=profile.t_star, out_dir=folder, device=device,
                                 progress=False)
            _sync(device)
            seconds.append(time.perf_counter() - tick)
    return steps / max(seconds[1] - seconds[0], 1e-9)


def model_free_rate(attack: str, n: int) -> float:
    from eclipse.attacks import poison

    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g)
    tick = time.perf_counter()
    poison(attack, images, torch.arange(n) % 10, seed=0, num_classes=10)
    return n / (time.perf_counter() - tick)


def measure(profile, tasks, args, device: torch.device) -> Rates:
    """The rates ``tasks`` need, measured now (each printed as it is measured)."""
    rates = Rates(machine=f"{device.type}: {torch.cuda.get_device_name(device) if device.type == 'cuda' else ''}"
                          f"{torch.get_num_threads()} threads, torch {torch.__version__}")
    needed = list(dict.fromkeys(t.rate for t in tasks))
    for rate in needed:
        tick = time.perf_counter()
        try:
            value = _measure_one(rate, rates, profile, args, device)
        except Exception as err:  # noqa: BLE001 - an unmeasurable rate leaves its tasks unpriced, said below
            print(f"  rate {'/'.join(map(str, rate))}: not measured ({type(err).__name__}: {err})")
            continue
        shown = "-" if value is None else f"{value:,.2f}"
        print(f"  rate {'/'.join(map(str, rate)):<34} {shown:>12} per s  (measured in {time.perf_counter() - tick:.1f} s)")
    return rates


MEASURERS = {
    "victim": lambda rate, profile, args, device: victim_rate(profile, *rate[1:], args.victim_images, device),
    "unet_eval": lambda rate, profile, args, device: unet_eval_rate(
        profile, args.purify_images or profile.purify_batch_size, args.purify_steps, device),
    "diffusion_it": lambda rate, profile, args, device: diffusion_rate(profile, args.train_steps, device),
    "consistency_it": lambda rate, profile, args, device: consistency_rate(profile, args.train_steps, device),
    "model_free": lambda rate, profile, args, device: model_free_rate(rate[1], args.victim_images),
}
"""How each kind of :class:`~eclipse.plan.Rates` entry is measured: ``fn(rate, profile, args, device)``."""


def _measure_one(rate: tuple, rates: Rates, profile, args, device: torch.device) -> float | None:
    """Measure ``rate`` and store it in ``rates`` (None: not measurable here, e.g. DP-SGD without Opacus)."""
    value = MEASURERS[rate[0]](rate, profile, args, device)
    if value is not None:
        rates.set(rate, value)
    return value


def _hours(seconds: float) -> str:
    return f"{seconds:,.0f} s ({seconds / 3600:.1f} h)" if seconds < 3 * 86400 else f"{seconds / 86400:,.1f} days"


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.manual_seed(args.seed)
    device = torch.device(args.device)
    profile = get_profile(args.profile)
    grids = {"08-purifiers": {"attacks": args.purifier_attacks}} if args.purifier_attacks else None
    tasks = plan(profile, args.notebooks, em_rounds=args.em_rounds, grids=grids)
    print(f"{profile.name}: {len(tasks)} artifacts to compute from an empty cache; measuring their rates on {device}")
    rates = measure(profile, tasks, args, device)
    priced = price(tasks, rates)
    by_kind = priced.groupby("kind")["seconds"].agg(["count", "sum"])
    print("\nby artifact kind (one device):")
    for kind, row in by_kind.iterrows():
        print(f"  {kind:<12} {int(row['count']):>4}  {_hours(row['sum'])}")
    tables = {n: project(priced, n) for n in args.devices}
    first = tables[args.devices[0]]
    print(f"\nprojected wall time per notebook ({rates.machine}):")
    print(f"  {'notebook':<26} {'tasks':>5} {'victims':>7} " + " ".join(f"{f'{n} device(s)':>22}" for n in args.devices))
    for i, row in first.iterrows():
        cells = " ".join(f"{_hours(tables[n].loc[i, 'seconds']):>22}" for n in args.devices)
        print(f"  {row['notebook']:<26} {row['tasks']:>5} {row['victims']:>7} {cells}")
    totals = " ".join(f"{_hours(tables[n]['seconds'].sum()):>22}" for n in args.devices)
    print(f"  {'total':<26} {int(first['tasks'].sum()):>5} {int(first['victims'].sum()):>7} {totals}")
    one = tables[args.devices[0]]["seconds"].sum()
    for n in args.devices[1:]:
        print(f"  speed-up on {n} devices: {one / tables[n]['seconds'].sum():.2f}x")
    if int(first["unpriced"].sum()):
        print(f"  ({int(first['unpriced'].sum())} tasks unpriced: their rate could not be measured here)")
    if args.csv:
        from eclipse.storage import atomic_write_text

        atomic_write_text(priced.to_csv(index=False), Path(args.csv))
        print(f"priced plan -> {args.csv}")


if __name__ == "__main__":
    main()

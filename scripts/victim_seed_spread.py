"""How much of a sweep's difference is the victim's own training noise: retrain the victim of notebook 02's
points (same poisons, same diffusion models, same purified sets; the points come from the profile's
``sparse_diffusion`` grid, as in the notebook) under other victim seeds and report the spread. Writes figures/quick-victim-seed-spread.csv (+ manifest); every run is cached.

    python scripts/victim_seed_spread.py --seeds 0 1 [--profile quick]
"""
from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

import pandas as pd

from eclipse.experiments import clean_data, poisoned_set
from eclipse.manifest import write_manifest
from eclipse.profiles import get_profile, sweep_profile, victim_label
from eclipse.storage import atomic_write_text
from eclipse.sweeps import sparse_diffusion_point, sparse_diffusion_points

OUT = Path(__file__).resolve().parents[1] / "figures"


def points(profile: str = "quick") -> dict[str, dict]:
    """Notebook 02's points under ``profile`` (its ``sparse_diffusion`` grid): label -> diffusion overrides."""
    return {label: overrides for label, (_, _, overrides) in sparse_diffusion_points(sweep_profile(profile)).items()}


def main(argv: list[str] | None = None) -> pd.DataFrame:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="quick")
    parser.add_argument("--attack", default="urp")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--points", nargs="+", metavar="POINT",
                        help="the points of notebook 02's grid to run (default: all), e.g. enlargement=crop M=0 I=1200 "
                             f"(under quick: {', '.join(points('quick'))})")
    parser.add_argument("--name", default="quick-victim-seed-spread")
    parser.add_argument("--out", type=Path, default=OUT, help="folder for the CSV and manifest (default figures/)")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    profile = sweep_profile(get_profile(args.profile))
    sets = clean_data(profile)
    poisoned = poisoned_set(sets["train"], args.attack, profile.seed, profile=profile)
    unknown = sorted(set(args.points or []) - set(points(profile)))
    if unknown:
        parser.error(f"--points {' '.join(unknown)}: not in the {profile.name} grid ({', '.join(points(profile))})")
    rows = []
    for label, overrides in points(profile).items():
        if args.points and label not in args.points:
            continue
        for seed in args.seeds:
            acc = sparse_diffusion_point(profile, {args.attack: poisoned}, sets, victim_seed=seed, **overrides)
            rows.append({"point": label, "victim_seed": seed, "test_acc": acc[args.attack]})
            print(f"{label:>18} seed {seed}: {acc[args.attack]:.2f}%", flush=True)
    table = pd.DataFrame(rows)
    wide = table.pivot(index="point", columns="victim_seed", values="test_acc").loc[list(dict.fromkeys(table["point"]))]
    wide["spread"] = wide.max(axis=1) - wide.min(axis=1)
    atomic_write_text(wide.to_csv(), args.out / f"{args.name}.csv")
    write_manifest(args.out / f"{args.name}-manifest.json", profile=profile.name, seed=profile.seed,
                   wall_time_s=time.perf_counter() - started, attack=args.attack, victim_seeds=args.seeds,
                   victim=victim_label(profile),
                   command=shlex.join(["python", "scripts/victim_seed_spread.py", *(sys.argv[1:] if argv is None else argv)]))
    print(wide.round(2).to_string())
    print(f"victim-seed spread: mean {wide['spread'].mean():.2f}, max {wide['spread'].max():.2f} points")
    return wide


if __name__ == "__main__":
    main()

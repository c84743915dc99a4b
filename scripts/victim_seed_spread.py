"""How much of a sweep's difference is the victim's own training noise: retrain the victim of notebook 02's
points (same poisons, same diffusion models, same purified sets) under other victim seeds and report the
spread. Writes figures/quick-victim-seed-spread.csv (+ manifest); every run is cached.

    python scripts/victim_seed_spread.py --seeds 0 1 [--profile quick]
"""
from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

import pandas as pd

from eclipse.experiments import attack_victim, clean_data, diffusion_model, eclipse_run, poisoned_set
from eclipse.manifest import write_manifest
from eclipse.profiles import get_profile, sweep_profile, victim_label
from eclipse.storage import atomic_write_text

OUT = Path(__file__).resolve().parents[1] / "figures"


def points(iterations: int) -> dict[str, dict]:
    """Notebook 02's quick points: label -> diffusion_model overrides."""
    at = {"iterations": iterations // 4}
    return {"replicate, I/4": {"enlargement": "replicate", **at}, "crop, I/4": {"enlargement": "crop", **at},
            "M = 0, I/4": {"replicas": 0, **at}, "B = 1000, I/4": {"sparse_size": 1000, **at},
            "I/2": {"iterations": iterations // 2}, "I": {"iterations": iterations}}


def main(argv: list[str] | None = None) -> pd.DataFrame:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="quick")
    parser.add_argument("--attack", default="urp")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--points", nargs="+", choices=list(points(0)), help="the points to run (default: all six)")
    parser.add_argument("--name", default="quick-victim-seed-spread")
    parser.add_argument("--out", type=Path, default=OUT, help="folder for the CSV and manifest (default figures/)")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    profile = sweep_profile(get_profile(args.profile))
    sets = clean_data(profile)
    poisoned = poisoned_set(sets["train"], args.attack, profile.seed)
    rows = []
    for label, overrides in points(profile.diffusion_train["iterations"]).items():
        if args.points and label not in args.points:
            continue
        sparse_size = overrides.pop("sparse_size", None)
        purifier = diffusion_model(profile, sets["pool"], sparse_size=sparse_size, progress=False, **overrides)
        for seed in args.seeds:
            result = eclipse_run(poisoned, sets["eval"], profile, "A+B+C", purifier=purifier, progress=False,
                                 victim={"seed": seed, **attack_victim(profile, args.attack)})
            rows.append({"point": label, "victim_seed": seed, "test_acc": result["test_acc"],
                         "cached": result["cached"]})
            print(f"{label:>14} seed {seed}: {result['test_acc']:.2f}%{' (cached)' if result['cached'] else ''}",
                  flush=True)
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

"""Calibration sweep for the quick profile: which training settings let each model-free poison bite
on 2 CPU cores. Writes figures/quick-calibration-sweep.csv (+ manifest); runs are cached.

    python scripts/sweep_quick.py urp:crop lsp:crop ar:crop ops:crop clean:nocrop urp:nocrop ...
    (each item is attack:crop|nocrop[:size=N][:FIELD=VALUE...][:attack.PARAM=VALUE...],
    FIELD any TrainConfig field, PARAM a keyword of the attack, e.g. ar:crop:attack.max_norm=150)
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import pandas as pd

from eclipse.experiments import clean_data, poisoned_set, victim_run
from eclipse.manifest import write_manifest
from eclipse.storage import atomic_write_text
from eclipse.profiles import QUICK
from eclipse.data import train_subset

KEYS = ("attack", "attack_params", "crop", "train_size", "epochs", "width", "precision", "label_smoothing")
OUT = Path(__file__).resolve().parents[1] / "figures" / "quick-calibration-sweep.csv"


def main(items: list[str]) -> None:
    started = time.perf_counter()
    base = clean_data(QUICK)
    old = pd.read_csv(OUT, keep_default_na=False) if OUT.exists() else pd.DataFrame(columns=list(KEYS))
    for key, default in (("precision", "fp32"), ("label_smoothing", 0.0), ("attack_params", "")):
        if key not in old:
            old[key] = default  # rows from before these fields existed
    rows = old.to_dict("records")
    for item in items:
        attack, crop, *extra = item.split(":")
        opts = dict(kv.split("=") for kv in extra)
        size = int(opts.get("size", QUICK.train_size))
        overrides = {"crop_padding": 4 if crop == "crop" else 0}
        attack_params = {key.split(".", 1)[1]: float(value) for key, value in opts.items() if key.startswith("attack.")}
        for key, value in opts.items():
            if key != "size" and not key.startswith("attack."):
                kind = type(getattr(QUICK.victim, key))
                overrides[key] = kind(value)
        train = train_subset(base["train"], size, QUICK.seed) if size != QUICK.train_size else base["train"]
        data = train if attack == "clean" else poisoned_set(train, attack, QUICK.seed, profile=QUICK, **attack_params)
        result = victim_run(data, base["eval"], QUICK, "none", progress=False, **overrides)
        row = {"attack": attack, "attack_params": " ".join(f"{k}={v:g}" for k, v in attack_params.items()),
               "crop": crop == "crop", "train_size": size,
               "epochs": result["config"]["epochs"], "width": result["config"]["width"],
               "schedule": result["config"]["schedule"], "precision": result["config"]["precision"],
               "label_smoothing": result["config"]["label_smoothing"], "test_acc": result["test_acc"],
               "train_s": round(result["wall_time_s"], 1)}
        rows = [r for r in rows if any(r[k] != row[k] for k in KEYS)]
        rows.append(row)
        atomic_write_text(pd.DataFrame(rows).to_csv(index=False), OUT)
        print(row, flush=True)
    write_manifest(OUT.with_name("quick-calibration-sweep-manifest.json"), profile="quick", seed=QUICK.seed,
                   wall_time_s=time.perf_counter() - started, note="victim: " + str(QUICK.victim))


if __name__ == "__main__":
    main(sys.argv[1:])

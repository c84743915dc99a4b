"""Calibration sweep for the quick profile: which training settings let each model-free poison bite
on 2 CPU cores. Writes figures/quick-calibration-sweep.csv (+ manifest); runs are cached.

    python scripts/sweep_quick.py urp:crop lsp:crop ar:crop ops:crop clean:nocrop urp:nocrop ...
    (each item is attack:crop|nocrop[:epochs=N][:size=N][:width=N])
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

OUT = Path(__file__).resolve().parents[1] / "figures" / "quick-calibration-sweep.csv"


def main(items: list[str]) -> None:
    started = time.perf_counter()
    base = clean_data(QUICK)
    rows = pd.read_csv(OUT).to_dict("records") if OUT.exists() else []
    for item in items:
        attack, crop, *extra = item.split(":")
        opts = dict(kv.split("=") for kv in extra)
        size = int(opts.get("size", QUICK.train_size))
        overrides = {"crop_padding": 4 if crop == "crop" else 0}
        for key in ("epochs", "width"):
            if key in opts:
                overrides[key] = int(opts[key])
        train = train_subset(base["train"], size, QUICK.seed) if size != QUICK.train_size else base["train"]
        data = train if attack == "clean" else poisoned_set(train, attack, QUICK.seed)
        result = victim_run(data, base["eval"], QUICK, "none", progress=False, **overrides)
        row = {"attack": attack, "crop": crop == "crop", "train_size": size,
               "epochs": result["config"]["epochs"], "width": result["config"]["width"],
               "schedule": result["config"]["schedule"], "test_acc": result["test_acc"],
               "train_s": round(result["wall_time_s"], 1)}
        rows = [r for r in rows if any(r[k] != row[k] for k in ("attack", "crop", "train_size", "epochs", "width"))]
        rows.append(row)
        atomic_write_text(pd.DataFrame(rows).to_csv(index=False), OUT)
        print(row, flush=True)
    write_manifest(OUT.with_name("quick-calibration-sweep-manifest.json"), profile="quick", seed=QUICK.seed,
                   wall_time_s=time.perf_counter() - started, note="victim: " + str(QUICK.victim))


if __name__ == "__main__":
    main(sys.argv[1:])

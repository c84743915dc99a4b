"""Which sampler should a profile purify with? Speed and ECLIPSE accuracy per sampler, measured in one run.

    python benchmarks/sampler_accuracy.py                                # quick profile, LSP, 4 samplers
    python benchmarks/sampler_accuracy.py --attacks lsp ar --samplers respaced-8 one_shot
    python benchmarks/sampler_accuracy.py --profile paper --samplers ancestral respaced-10   # GPU

For each sampler (``name`` or ``name-STEPS``): purification throughput (images/s, network evaluations per
image) timed on ``--time-images`` poisoned training images, then the test accuracy of the profile's
victim trained with ECLIPSE (A+B+C) on the whole purified training subset of each attack. The diffusion
model, purified sets and victim runs are the cached ones the notebooks use, so a rerun costs seconds and
the expensive work is shared. Writes ``figures/<profile>-sampler-accuracy.csv`` with a manifest.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import pandas as pd
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from eclipse.diffusion.samplers import network_evaluations  # noqa: E402
from eclipse.experiments import clean_data, diffusion_model, poisoned_set  # noqa: E402
from eclipse.method import run as eclipse_run  # noqa: E402
from eclipse.manifest import write_manifest  # noqa: E402
from eclipse.profiles import get_profile  # noqa: E402
from eclipse.purify import purify  # noqa: E402
from eclipse.storage import atomic_write_text  # noqa: E402


def parse_sampler(text: str) -> tuple[str, int | None]:
    """``"respaced-8"`` -> ``("respaced", 8)``; ``"one_shot"`` -> ``("one_shot", None)``."""
    name, _, steps = text.rpartition("-") if text[-1].isdigit() else (text, "", "")
    return (name, int(steps)) if steps else (text, None)


def main(argv: list[str] | None = None) -> pd.DataFrame:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--profile", default="quick")
    p.add_argument("--attacks", nargs="+", default=["lsp"])
    p.add_argument("--samplers", nargs="+", default=["one_shot", "respaced-4", "respaced-8", "ddim-8"])
    p.add_argument("--time-images", type=int, default=256, help="images used for the throughput timing")
    p.add_argument("--out-dir", default=str(REPO / "figures"))
    args = p.parse_args(argv)

    profile = get_profile(args.profile)
    started = time.perf_counter()
    sets = clean_data(profile)
    model, schedule, key = diffusion_model(profile, sets["pool"])
    rows = []
    for text in args.samplers:
        sampler, steps = parse_sampler(text)
        nfe = network_evaluations(sampler, profile.t_star, steps)
        sample = poisoned_set(sets["train"], args.attacks[0], profile.seed, profile=profile).images[: args.time_images]
        tick = time.perf_counter()
        purify(sample, model, schedule, t_star=profile.t_star, sampler=sampler, steps=steps, seed=profile.seed,
               batch_size=profile.purify_batch_size, progress=False)
        img_s = len(sample) / (time.perf_counter() - tick)
        for attack in args.attacks:
            data = sets["train"] if attack == "clean" else poisoned_set(sets["train"], attack, profile.seed, profile=profile)
            result = eclipse_run(data, sets["eval"], profile, "A+B+C", purifier=(model, schedule, key),
                                 victim=profile.victim_overrides(attack), sampler=sampler, steps=steps)
            rows.append({"sampler": text, "nfe_per_image": nfe, "img_per_s": round(img_s, 2),
                         "purify_train_set_min": round(len(data) / img_s / 60, 1), "attack": attack,
                         "eclipse_acc": result["test_acc"], "victim_s": round(result["wall_time_s"], 1)})
            print(rows[-1], flush=True)
    frame = pd.DataFrame(rows)
    out = Path(args.out_dir)
    stem = f"{profile.name}-sampler-accuracy"
    atomic_write_text(frame.to_csv(index=False), out / f"{stem}.csv")
    write_manifest(out / f"{stem}-manifest.json", profile=profile.name, seed=profile.seed,
                   wall_time_s=time.perf_counter() - started, t_star=profile.t_star, diffusion_model=key,
                   device=str(next(model.parameters()).device), threads=torch.get_num_threads())
    print(frame.to_string(index=False))
    return frame


if __name__ == "__main__":
    main()

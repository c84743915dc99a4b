"""What each purifier leaves of URP's poison at test scale (figures/README.md, "Related purifiers at smoke scale").

The setting of tests/test_eclipse_pipeline.py: a smoke-profile denoiser trained 600 iterations on 50 clean
images, t* = 200, 100 URP images; prints the high-frequency energy ratio, pass-through gain and cosine of
P(x + delta) - P(x) to the poison for every purifier (1, 1, 1: nothing removed).

    python scripts/purifier_passthrough.py [--purifiers one_shot chained-2 masked-2 consistency]
"""
from __future__ import annotations

import argparse
import time

import torch

from eclipse.experiments import clean_data, diffusion_model, poisoned_set, purified_set, purifier_for
from eclipse.frequency import pass_through, residual
from eclipse.profiles import SMOKE
from eclipse.sweeps import parse_purifier


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--purifiers", nargs="+", default=["one_shot", "consistency", "chained-2", "chained-3",
                                                           "respaced-2", "masked-2", "masked-4"])
    args = parser.parse_args(argv)
    profile = SMOKE.with_overrides(t_star=200, sampler="one_shot",
                                   diffusion_train={**SMOKE.diffusion_train, "iterations": 600, "t_max": 200},
                                   consistency=dict(iterations=100, batch_size=16, lr=1e-4, ema_rate=0.9))
    sets = clean_data(profile)
    clean = sets["train"].subset(torch.arange(100))
    poisoned = poisoned_set(clean, "urp", profile.seed)
    base = diffusion_model(profile, sets["pool"], progress=False)
    poison = residual(poisoned.images, clean.images)
    print("purifier,ratio,gain,cosine,seconds")
    for name in args.purifiers:
        sampler, steps = parse_purifier(name)
        tick = time.perf_counter()
        purifier = purifier_for(profile, sampler, base, sets["pool"], progress=False)
        left = residual(purified_set(poisoned, profile, *purifier, sampler=sampler, steps=steps, progress=False).images,
                        purified_set(clean, profile, *purifier, sampler=sampler, steps=steps, progress=False).images)
        measured = pass_through(left, poison)
        print(f"{name},{measured['high_frequency']:.3f},{measured['gain']:.3f},{measured['cosine']:.3f},"
              f"{time.perf_counter() - tick:.1f}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

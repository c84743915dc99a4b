"""The package's ancestral purification against the official loop (improved-diffusion's ``p_sample``), same
weights, same images, same RNG draws, fp32, in one run: seconds per reverse step, the ratio, and the largest
difference of the purified images in 8-bit levels.

    git clone https://github.com/openai/improved-diffusion ../improved-diffusion   # the official code, beside
    python benchmarks/official_loop.py                          # quick-sized UNet (1.6M), t* = 20, 2 CPU cores
    python benchmarks/official_loop.py --config paper --t-star 5 --n 8
    python benchmarks/official_loop.py --profile                # where each loop's time goes (torch.profiler)

The official code is imported from ``--official-code`` (default ``$IMPROVED_DIFFUSION``, else
``../improved-diffusion`` beside this repository); it is never copied into the project. The official
purification, as the ECLIPSE code runs it: ``q_sample`` to t* - 1 with one ``randn_like``, then
``p_sample(..., clip_denoised=True)`` for t* - 1 .. 0 (a ``randn_like`` at every step). Both loops run under
``torch.no_grad()``, with random weights (speed does not depend on them), from the same global seed.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from eclipse.diffusion.checkpoints import load_weights, parse_config, schedule_from_settings  # noqa: E402
from eclipse.diffusion.gaussian import to_uint8  # noqa: E402
from eclipse.diffusion.unet import build_unet, count_parameters  # noqa: E402
from eclipse.purify import purify_batch  # noqa: E402

# improved-diffusion argument names: "small" is the conformance reference's tiny model (the quick layout at the
# official channel multipliers), "paper" the official configs/cifar10.yml (../shared/reference/paper_unet_config.json)
CONFIGS = {
    "small": dict(num_channels=32, num_res_blocks=1, attention_resolutions="16"),
    "paper": dict(num_channels=128, num_res_blocks=3, attention_resolutions="16,8"),
}
COMMON = dict(image_size=32, learn_sigma=True, noise_schedule="cosine", diffusion_steps=4000, rescale_timesteps=True,
              use_scale_shift_norm=True, num_heads=4, dropout=0.0, timestep_respacing="")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--official-code", default=os.environ.get("IMPROVED_DIFFUSION", str(REPO.parent / "improved-diffusion")),
                   help="a checkout of openai/improved-diffusion (default: $IMPROVED_DIFFUSION or ../improved-diffusion)")
    p.add_argument("--config", choices=sorted(CONFIGS), default="small", help="UNet size (default: small, 1.6M)")
    p.add_argument("--n", type=int, default=16, help="images per batch (default 16)")
    p.add_argument("--t-star", type=int, default=20, help="reverse steps (default 20)")
    p.add_argument("--repeats", type=int, default=3, help="alternating timed runs of each loop; the best is kept")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--profile", action="store_true", help="print each loop's top operators (torch.profiler)")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def official_modules(path: str):
    """``(script_util, )`` of the official code at ``path``, or a clear error saying how to get it."""
    if not (Path(path) / "improved_diffusion" / "gaussian_diffusion.py").exists():
        raise SystemExit(f"official code not found at {path}: git clone https://github.com/openai/improved-diffusion "
                         f"{path} (or pass --official-code / set IMPROVED_DIFFUSION)")
    sys.path.insert(0, str(Path(path).resolve()))
    from improved_diffusion import script_util

    return script_util


def build_pair(script_util, config: dict, seed: int):
    """The official model + diffusion and the package's model + schedule, with the official model's weights."""
    settings = {**script_util.model_and_diffusion_defaults(), **COMMON, **config}
    settings = {k: v for k, v in settings.items() if k in script_util.model_and_diffusion_defaults()}
    torch.manual_seed(seed)
    official, diffusion = script_util.create_model_and_diffusion(**settings)
    cfg, diff_settings = parse_config({"model": settings})
    ours = load_weights(build_unet(cfg), official.state_dict(), "official model")
    return official.eval(), diffusion, ours.eval(), schedule_from_settings(diff_settings)


def official_purify(model, diffusion, x0: torch.Tensor, t_star: int) -> torch.Tensor:
    """The official loop (see the module docstring); the caller seeds torch's global RNG."""
    noise = torch.randn_like(x0)
    x = diffusion.q_sample(x0, torch.full((x0.shape[0],), t_star - 1, dtype=torch.long), noise=noise)
    for i in reversed(range(t_star)):
        x = diffusion.p_sample(model, x, torch.full((x0.shape[0],), i, dtype=torch.long), clip_denoised=True)["sample"]
    return x


def ours_purify(model, schedule, x0: torch.Tensor, t_star: int) -> torch.Tensor:
    return purify_batch(x0, model, schedule, t_star=t_star, sampler="ancestral")   # generator None: torch's global RNG


def timed(fn, seed: int) -> tuple[float, torch.Tensor]:
    torch.manual_seed(seed)
    tick = time.perf_counter()
    with torch.no_grad():
        out = fn()
    return time.perf_counter() - tick, out


def top_ops(fn, seed: int, rows: int = 12) -> str:
    from torch.profiler import ProfilerActivity, profile

    torch.manual_seed(seed)
    with torch.no_grad(), profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    script_util = official_modules(args.official_code)
    official, diffusion, ours, schedule = build_pair(script_util, CONFIGS[args.config], args.seed)
    x0 = torch.rand(args.n, 3, 32, 32, generator=torch.Generator().manual_seed(args.seed)) * 2 - 1
    loops = {"official": lambda: official_purify(official, diffusion, x0, args.t_star),
             "eclipse": lambda: ours_purify(ours, schedule, x0, args.t_star)}
    for fn in loops.values():   # warm-up (allocator, first-call costs) on 2 steps
        torch.manual_seed(args.seed)
        with torch.no_grad():
            (official_purify(official, diffusion, x0[:2], 2) if fn is loops["official"]
             else ours_purify(ours, schedule, x0[:2], 2))
    best = {name: float("inf") for name in loops}
    outputs = {}
    for _ in range(args.repeats):   # alternate, so that a neighbour's load hits both alike
        for name, fn in loops.items():
            seconds, outputs[name] = timed(fn, args.seed)
            best[name] = min(best[name], seconds)
    levels = int((to_uint8(outputs["eclipse"]).int() - to_uint8(outputs["official"]).int()).abs().max())
    result = {"config": args.config, "parameters": count_parameters(ours), "n": args.n, "t_star": args.t_star,
              "threads": torch.get_num_threads(), "official_s_per_step": best["official"] / args.t_star,
              "eclipse_s_per_step": best["eclipse"] / args.t_star,
              "speed_ratio": best["official"] / best["eclipse"], "max_diff_levels": levels}
    print(f"{args.config} UNet ({result['parameters']:,} parameters), {args.n} images x {args.t_star} steps, "
          f"{result['threads']} threads, fp32, best of {args.repeats}:")
    print(f"  official p_sample loop: {1e3 * result['official_s_per_step']:.1f} ms/step")
    print(f"  eclipse ancestral:      {1e3 * result['eclipse_s_per_step']:.1f} ms/step")
    print(f"  speed ratio (official time / ours): {result['speed_ratio']:.3f}x; max difference {levels} level(s)")
    if args.profile:
        for name, fn in loops.items():
            print(f"\n--- {name}: top operators by self CPU time ---")
            print(top_ops(fn, args.seed))
    return result


if __name__ == "__main__":
    main()

"""Purification throughput per sampler: images/s, network evaluations (NFE) per image, speed-up vs ancestral.

    python benchmarks/purify.py                      # small "quick"-sized UNet, CPU, ~1-2 min on 2 cores
    python benchmarks/purify.py --paper --device cuda --dtype bf16 --channels-last --compile --n 1024 --t-star 100
    python benchmarks/purify.py --checkpoint ema_0.9999_250000.pt --config cifar10.yml --device cuda

Random weights unless ``--checkpoint`` is given (speed does not depend on the weights).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from eclipse.diffusion import samplers as S  # noqa: E402
from eclipse.diffusion.schedule import make_schedule  # noqa: E402
from eclipse.diffusion.unet import UNetConfig, build_unet, count_parameters  # noqa: E402
from eclipse.diffusion.checkpoints import load_model_and_schedule  # noqa: E402
from eclipse.purify import purify_batch  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--channels", type=int, default=32, help="UNet num_channels (multiple of 32)")
    p.add_argument("--res-blocks", type=int, default=1)
    p.add_argument("--attention", default="16", help='attention resolutions, e.g. "16,8"')
    p.add_argument("--channel-mult", default=None, help='e.g. "1,2,2,2" (default: improved-diffusion for 32 px)')
    p.add_argument("--paper", action="store_true", help="the 52.5M ECLIPSE UNet (overrides the size flags)")
    p.add_argument("--checkpoint", default=None, help="load weights (ours or official) instead of random ones")
    p.add_argument("--config", default=None, help="official YAML for --checkpoint")
    p.add_argument("--n", type=int, default=16, help="images per batch")
    p.add_argument("--t-star", type=int, default=20)
    p.add_argument("--steps", type=int, default=5, help="steps for respaced and ddim")
    p.add_argument("--samplers", default="ancestral,respaced,ddim,one_shot")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32", help="bf16 = autocast for the UNet")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--compile", action="store_true", help="torch.compile the UNet")
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main(argv: list[str] | None = None) -> list[dict]:
    args = parse_args(argv)
    device = torch.device(args.device)
    torch.manual_seed(args.seed)
    if args.checkpoint:
        model, schedule = load_model_and_schedule(args.checkpoint, args.config, device=device)
    else:
        cfg = UNetConfig() if args.paper else UNetConfig(
            num_channels=args.channels, num_res_blocks=args.res_blocks, attention_resolutions=args.attention,
            channel_mult=tuple(int(m) for m in args.channel_mult.split(",")) if args.channel_mult else None)
        model = build_unet(cfg)
        with torch.no_grad():  # random non-zero weights (the zero-initialised output conv would make eps = 0)
            for p in model.parameters():
                p.normal_(0, 0.02)
        model = model.to(device).eval().requires_grad_(False)
        schedule = make_schedule("cosine", 4000)
    memory_format = torch.channels_last if args.channels_last else torch.contiguous_format
    model = model.to(memory_format=memory_format)
    net = torch.compile(model) if args.compile else model
    autocast = torch.bfloat16 if args.dtype == "bf16" else None
    images = torch.rand(args.n, 3, 32, 32, device=device).mul(2).sub(1).contiguous(memory_format=memory_format)

    print(f"UNet {count_parameters(model) / 1e6:.2f}M params | device {device} | {args.dtype}"
          f"{' channels_last' if args.channels_last else ''}{' compile' if args.compile else ''} | "
          f"n={args.n} t*={args.t_star} steps={args.steps} | torch threads {torch.get_num_threads()}")
    with torch.no_grad():  # warm-up (and compilation) outside the timings
        t0 = time.perf_counter()
        purify_batch(images, net, schedule, t_star=min(2, args.t_star), sampler="ancestral",
                     generator=torch.Generator(device=device).manual_seed(0), autocast_dtype=autocast)
        _sync(device)
        print(f"warm-up {time.perf_counter() - t0:.1f} s")

    rows = []
    for sampler in args.samplers.split(","):
        steps = args.steps if sampler in ("respaced", "ddim") else None
        nfe = S.network_evaluations(sampler, args.t_star, steps)
        best = float("inf")
        for rep in range(args.repeats):
            gen = torch.Generator(device=device).manual_seed(args.seed + rep)
            _sync(device)
            t0 = time.perf_counter()
            with torch.no_grad():
                purify_batch(images, net, schedule, t_star=args.t_star, sampler=sampler, steps=steps,
                             generator=gen, autocast_dtype=autocast)
            _sync(device)
            best = min(best, time.perf_counter() - t0)
        rows.append(dict(sampler=sampler if steps is None else f"{sampler}-{steps}", nfe=nfe, seconds=best,
                         img_s=args.n / best, fwd_img_s=args.n * nfe / best))

    base = next((r["img_s"] for r in rows if r["sampler"] == "ancestral"), None)
    print(f"{'sampler':<14}{'NFE/img':>9}{'seconds':>10}{'img/s':>11}{'net img/s':>11}{'vs ancestral':>14}")
    for r in rows:
        ratio = f"{r['img_s'] / base:.1f}x" if base else "-"
        print(f"{r['sampler']:<14}{r['nfe']:>9}{r['seconds']:>10.2f}{r['img_s']:>11.2f}{r['fwd_img_s']:>11.1f}{ratio:>14}")
    return rows


if __name__ == "__main__":
    main()

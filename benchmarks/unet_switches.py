"""The UNet's execution switches, measured in one run: purification (the ancestral loop, ``purify_batch``) and
diffusion training (the package's ``train_diffusion`` loop: AdamW, EMA, checkpointing off the clock) under fp32,
channels_last, bf16 and bf16 + channels_last (and the last compiled, with ``--compile``), as ratios to fp32 eager, with
the achieved FLOP rate and the physical floor (FLOPs per network evaluation x evaluations / the device's peak).

    python benchmarks/unet_switches.py                                    # quick UNet, CPU, ~30 s on 2 cores
    python benchmarks/unet_switches.py --paper --n 8 --t-star 3 --train-steps 3        # paper UNet, CPU (~1.5 min)
    python benchmarks/unet_switches.py --paper --device cuda --n 256 --t-star 20 --batch 128 --compile \\
        --peak-tflops 989 --csv figures/unet-switches-gpu.csv            # one H100/H200 (bf16 dense peak)

FLOPs are counted with ``torch.utils.flop_counter`` on one image (a multiply-add is 2 FLOPs); a training step is
taken as 3x the forward pass. ``--peak-tflops`` is the device's peak for the precision that dominates (bf16 tensor
cores on a GPU); without it the floor is not printed. Random weights: speed does not depend on them.
"""
from __future__ import annotations

import argparse
import csv
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from eclipse.diffusion.runtime import UNetRuntime, prepare_unet  # noqa: E402
from eclipse.diffusion.schedule import make_schedule  # noqa: E402
from eclipse.diffusion.train import DiffusionTrainConfig, train_diffusion  # noqa: E402
from eclipse.diffusion.unet import UNetConfig, build_unet, count_parameters  # noqa: E402
from eclipse.purify import purify_batch  # noqa: E402

QUICK_UNET = UNetConfig(num_channels=32, num_res_blocks=1, attention_resolutions="16", channel_mult=(1, 2, 2))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--paper", action="store_true", help="the 52.5M paper UNet (default: the 1.19M quick UNet)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--n", type=int, default=32, help="images purified at once (default 32)")
    p.add_argument("--t-star", type=int, default=10, help="reverse steps timed (default 10)")
    p.add_argument("--batch", type=int, default=32, help="diffusion training batch (default 32)")
    p.add_argument("--train-steps", type=int, default=6, help="timed training steps (after 2 warm-up steps)")
    p.add_argument("--compile", action="store_true", help="also the last switch set compiled (minutes of compilation)")
    p.add_argument("--skip-bf16", action="store_true", help="no bf16 rows (CPUs without AVX512-BF16 emulate it)")
    p.add_argument("--peak-tflops", type=float, default=None, help="the device's peak TFLOP/s, for the floor")
    p.add_argument("--csv", default=None, help="also write the rows to this CSV")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def forward_flops(config: UNetConfig) -> float:
    """FLOPs of one network evaluation on one image (torch.utils.flop_counter; a multiply-add is 2)."""
    from torch.utils.flop_counter import FlopCounterMode

    model = build_unet(config).eval()
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(torch.zeros(1, 3, config.image_size, config.image_size), torch.zeros(1))
    return float(counter.get_total_flops())


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_purification(model: torch.nn.Module, runtime: UNetRuntime, args, device: torch.device) -> float:
    """Seconds per reverse step of ``args.n`` images (best of 2, after a warm-up that also compiles)."""
    net = prepare_unet(model, runtime)
    schedule = make_schedule("cosine", 4000)
    x0 = torch.rand(args.n, 3, 32, 32, generator=torch.Generator().manual_seed(args.seed)).mul(2).sub(1).to(device)
    best = float("inf")
    with torch.no_grad():
        for rep in range(3):   # the first is the warm-up
            _sync(device)
            tick = time.perf_counter()
            purify_batch(x0, net, schedule, t_star=2 if rep == 0 else args.t_star,
                         generator=torch.Generator(device=device).manual_seed(rep), autocast_dtype=runtime.autocast_dtype)
            _sync(device)
            if rep:
                best = min(best, (time.perf_counter() - tick) / args.t_star)
    return best


def time_training(config: UNetConfig, runtime: UNetRuntime, args, device: torch.device) -> float:
    """Seconds per training step of the package's loop (the steps after two warm-up steps, by ``on_step`` times)."""
    images = torch.randint(0, 256, (max(args.batch, 8), 3, 32, 32), dtype=torch.uint8,
                           generator=torch.Generator().manual_seed(args.seed))
    steps = args.train_steps + 2
    cfg = DiffusionTrainConfig(unet=config, replicas=0, batch_size=args.batch, iterations=steps,
                               checkpoint_every=10 ** 9, seed=args.seed)   # the final checkpoint is off the clock
    stamps: list[float] = []

    def on_step(step: int, model) -> None:
        _sync(device)
        stamps.append(time.perf_counter())

    with tempfile.TemporaryDirectory() as folder:
        train_diffusion(images, cfg, folder, device=device, progress=False, on_step=on_step, runtime=runtime)
    return (stamps[-1] - stamps[1]) / (len(stamps) - 2)


def main(argv: list[str] | None = None) -> list[dict]:
    args = parse_args(argv)
    device = torch.device(args.device)
    config = UNetConfig() if args.paper else QUICK_UNET
    torch.manual_seed(args.seed)
    model = build_unet(config)
    with torch.no_grad():   # non-zero weights everywhere (the zero-initialised output convs would skip work)
        for p in model.parameters():
            p.normal_(0, 0.02)
    model = model.to(device).eval().requires_grad_(False)
    flops = forward_flops(config)
    sets = [UNetRuntime(), UNetRuntime(channels_last=True)]
    if not args.skip_bf16:
        sets += [UNetRuntime(precision="bf16"), UNetRuntime(precision="bf16", channels_last=True)]
    if args.compile:   # the fastest eager set, compiled (one compilation: minutes for the paper UNet)
        sets.append(UNetRuntime(precision=sets[-1].precision, channels_last=True, compile=True))
    print(f"UNet {count_parameters(model) / 1e6:.2f}M params, {flops / 1e9:.2f} GFLOP per image evaluation | {device} "
          f"| purify {args.n} images x {args.t_star} steps | train batch {args.batch} x {args.train_steps} steps | "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    rows = []
    for runtime in sets:
        step_s = time_purification(model, runtime, args, device)
        train_s = time_training(config, runtime, args, device)
        rows.append({"switches": runtime.label(), "purify_img_evals_per_s": args.n / step_s,
                     "train_it_per_s": 1 / train_s, "train_img_per_s": args.batch / train_s,
                     "purify_tflops": args.n * flops / step_s / 1e12,
                     "train_tflops": 3 * args.batch * flops / train_s / 1e12})
        print(f"  measured {runtime.label()}", flush=True)
    base = rows[0]
    print(f"{'switches':<44}{'purify evals/s':>15}{'x fp32':>8}{'train it/s':>12}{'x fp32':>8}"
          f"{'TFLOP/s p/t':>14}")
    for r in rows:
        r["purify_vs_fp32"] = r["purify_img_evals_per_s"] / base["purify_img_evals_per_s"]
        r["train_vs_fp32"] = r["train_it_per_s"] / base["train_it_per_s"]
        print(f"{r['switches']:<44}{r['purify_img_evals_per_s']:>15.1f}{r['purify_vs_fp32']:>7.2f}x"
              f"{r['train_it_per_s']:>12.2f}{r['train_vs_fp32']:>7.2f}x"
              f"{r['purify_tflops']:>8.3f}/{r['train_tflops']:.3f}")
    if args.peak_tflops:
        floor = 50_000 * 100 * flops / (args.peak_tflops * 1e12)
        best = max(rows, key=lambda r: r["purify_img_evals_per_s"])
        measured = 50_000 * 100 / best["purify_img_evals_per_s"]
        print(f"floor, paper purification (50,000 images x 100 steps) at {args.peak_tflops:g} TFLOP/s: {floor / 60:.1f} "
              f"min; at the best measured rate ({best['switches']}): {measured / 60:.1f} min "
              f"({measured / floor:.1f}x the floor)")
    if args.csv:
        Path(args.csv).parent.mkdir(parents=True, exist_ok=True)
        with open(args.csv, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=["device", "unet", "gflop_per_eval", *rows[0]])
            writer.writeheader()
            for r in rows:
                writer.writerow({"device": str(device) if device.type != "cuda" else torch.cuda.get_device_name(device),
                                 "unet": "paper" if args.paper else "quick", "gflop_per_eval": flops / 1e9, **r})
        print(f"wrote {args.csv}")
    return rows


if __name__ == "__main__":
    main()

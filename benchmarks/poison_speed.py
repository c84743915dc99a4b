"""Time each model-free attack on a CIFAR-10-sized random set (50,000 uint8 images, 10 classes).

Run: ``python benchmarks/poison_speed.py [--n 50000] [--seed 0]``. Prints seconds and images/s per attack and
whether it is under the 60 s target; also the worst norm against the registered budget.
"""
from __future__ import annotations

import argparse
import time

import torch

from eclipse.attacks import get_attack, perturbation_norms, poison
from eclipse.seeding import make_generator

TARGET_SECONDS = 60.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=50_000)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--attacks", nargs="+", default=["urp", "lsp", "ar", "ops"])
    args = parser.parse_args()

    generator = make_generator(args.seed)
    images = torch.randint(0, 256, (args.n, 3, 32, 32), generator=generator, dtype=torch.uint8)
    labels = torch.randint(0, args.classes, (args.n,), generator=generator)
    print(f"{args.n} images, {args.classes} classes, torch threads: {torch.get_num_threads()}")
    for name in args.attacks:
        spec = get_attack(name)
        start = time.perf_counter()
        poisoned = poison(name, images, labels, seed=args.seed, num_classes=args.classes)
        seconds = time.perf_counter() - start
        worst = max(float(perturbation_norms(poisoned[i : i + 4096], images[i : i + 4096])[spec.norm].max())
                    for i in range(0, args.n, 4096))
        verdict = "under" if seconds < TARGET_SECONDS else "OVER"
        print(f"{name:>4}: {seconds:7.2f} s  {args.n / seconds:9.0f} images/s  {verdict} {TARGET_SECONDS:.0f} s  "
              f"max {spec.norm} {worst:.4f} (budget {spec.budget:.4f})")


if __name__ == "__main__":
    main()

"""Training throughput: eclipse's batch-level tensor pipeline vs a per-sample PIL DataLoader pipeline
like the official ECLIPSE ``train.py`` (RandomCrop(32, 4) -> flip -> [RandomGrayscale(0.4) -> ToTensor ->
+N(0, 0.05^2) -> clamp -> ToPILImage -> ToTensor]), same model, batch and optimiser, in one run.

    python benchmarks/train_throughput.py [--width 16] [--batches 20] [--compensation]
"""
from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F
from PIL import Image
from torchvision import transforms as T

from eclipse.data import load_cifar10, train_subset
from eclipse.defenses import make_defense
from eclipse.training import random_crop, random_flip
from eclipse.victims import build_victim


class PilDataset(torch.utils.data.Dataset):
    """What the official code does: one PIL image per sample through torchvision transforms."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, transform):
        self.images = [Image.fromarray(img.permute(1, 2, 0).numpy()) for img in images]
        self.labels = labels.tolist()
        self.transform = transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i):
        return self.transform(self.images[i]), self.labels[i]


class AddNoise:
    def __call__(self, x):
        return (x + 0.05 * torch.randn_like(x)).clamp(0, 1)


def step(model, optimizer, x, y):
    loss = F.cross_entropy(model(x), y)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--compensation", action="store_true", help="include ECLIPSE's compensation transform")
    args = parser.parse_args()
    n = args.batch_size * args.batches
    train = train_subset(load_cifar10("train"), n, seed=0)
    model = build_victim("resnet18", 10, args.width)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    results = {}

    # per-sample PIL pipeline
    steps = [T.RandomCrop(32, padding=4), T.RandomHorizontalFlip()]
    if args.compensation:
        steps += [T.RandomGrayscale(0.4), T.ToTensor(), AddNoise(), T.ToPILImage(), T.ToTensor()]
    else:
        steps += [T.ToTensor()]
    loader = torch.utils.data.DataLoader(PilDataset(train.images, train.labels, T.Compose(steps)),
                                         batch_size=args.batch_size, shuffle=True, num_workers=args.workers)
    for name in ("pil_dataloader", "tensor_batches", "pil_dataloader", "tensor_batches"):  # interleaved, 2 rounds
        torch.manual_seed(0)
        tick = time.perf_counter()
        if name == "pil_dataloader":
            for x, y in loader:
                step(model, optimizer, x, y)
        else:
            defense = make_defense("compensation") if args.compensation else None
            for batch in torch.randperm(n).split(args.batch_size):
                x = random_flip(random_crop(train.images[batch].float().div_(255), 4))
                y = train.labels[batch]
                if defense:
                    x, y = defense.on_batch(x, y)
                step(model, optimizer, x, y)
        results.setdefault(name, []).append(n / (time.perf_counter() - tick))

    # data pipeline alone (no model), where the difference comes from
    tick = time.perf_counter()
    for _ in loader:
        pass
    pil_data = n / (time.perf_counter() - tick)
    tick = time.perf_counter()
    defense = make_defense("compensation") if args.compensation else None
    for batch in torch.randperm(n).split(args.batch_size):
        x = random_flip(random_crop(train.images[batch].float().div_(255), 4))
        if defense:
            x, _ = defense.on_batch(x, train.labels[batch])
    tensor_data = n / (time.perf_counter() - tick)

    best = {k: max(v) for k, v in results.items()}
    print(f"resnet18 width {args.width}, batch {args.batch_size}, {n} images, compensation={args.compensation}, "
          f"threads={torch.get_num_threads()}, workers={args.workers}")
    print(f"{'pipeline':<16}{'train img/s':>12}{'data-only img/s':>17}")
    print(f"{'pil_dataloader':<16}{best['pil_dataloader']:>12.0f}{pil_data:>17.0f}")
    print(f"{'tensor_batches':<16}{best['tensor_batches']:>12.0f}{tensor_data:>17.0f}")
    print(f"ratio tensor/pil: training {best['tensor_batches'] / best['pil_dataloader']:.2f}x, "
          f"data pipeline {tensor_data / pil_data:.1f}x")


if __name__ == "__main__":
    main()

"""Cost of the model-based poisons: a cost model in epoch-equivalents (forward + backward passes over the
training set) from each recipe's settings, priced with per-image pass times measured in this run, printed
as ratios to one clean victim training of the same profile measured in the same run.

    python benchmarks/poison_cost.py [--profile quick] [--images 1024] [--rounds 10] [--run em ...]

``--run ATTACK`` also generates that poison for real on the profile's training set (cached) and prints its
wall time beside the model's estimate. EM's and ADP's number of rounds is data-dependent (stop condition);
``--rounds`` is the assumption used for the estimate (the EM paper reports convergence in about 10).
"""
from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from eclipse.attacks import ATTACKS
from eclipse.attacks.cost import epoch_equivalents, recipe, surrogate_of
from eclipse.profiles import get_profile
from eclipse.training import _autocast
from eclipse.victims import build_victim


def pass_time(arch: str, width: int, precision: str, images: int, batch: int = 128) -> float:
    """Measured seconds per image of one forward + backward pass (parameter gradients, as in training), over
    about ``images`` images in batches of at most ``batch``, after one warm-up batch."""
    batch = min(batch, images)
    model = build_victim(arch, 10, width).to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    x = torch.rand(batch, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (batch,))
    step(model, optimizer, x, y, precision)  # warm-up
    tick = time.perf_counter()
    for _ in range(max(1, images // batch)):
        step(model, optimizer, x, y, precision)
    return (time.perf_counter() - tick) / (max(1, images // batch) * batch)


def step(model, optimizer, x, y, precision):
    with _autocast(precision, torch.device("cpu")):
        loss = F.cross_entropy(model(x).float(), y)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--profile", default="quick")
    parser.add_argument("--images", type=int, default=1024, help="images timed per network")
    parser.add_argument("--rounds", type=int, default=10, help="EM/ADP rounds assumed for the estimate")
    parser.add_argument("--run", nargs="*", default=[], help="attacks to also generate for real (cached)")
    args = parser.parse_args()
    torch.manual_seed(0)
    profile = get_profile(args.profile)
    paper = get_profile("paper")
    n = profile.train_size or 50_000
    victim = profile.victim
    victim_pass = pass_time(victim.arch, victim.width, victim.precision, args.images)
    victim_s = victim.epochs * n * victim_pass
    print(f"{profile.name}: one clean victim training ({victim.arch}-w{victim.width}, {victim.epochs} epochs, "
          f"{n:,} images) ~ {victim_s:.0f} s here ({victim_pass * 1e3:.3f} ms per image-pass)")
    print(f"{'attack':<6} {'profile':<7} {'surrogate':<18} {'epoch-eq':>9} {'est. s here':>12} {'x victim':>9}")
    timed: dict[tuple, float] = {(victim.arch, victim.width, victim.precision): victim_pass}
    for attack in [a for a in ATTACKS.names() if ATTACKS[a].family == "model-based"]:
        for prof in (profile, paper):
            s = recipe(attack, prof)
            sur = surrogate_of(attack, s)
            key = (sur.arch, sur.width, sur.precision)
            if key not in timed:
                timed[key] = pass_time(*key, args.images)
            train_eq, craft_eq = epoch_equivalents(attack, s, prof.train_size or 50_000, args.rounds)
            seconds = (train_eq + craft_eq) * (prof.train_size or 50_000) * timed[key]
            v = prof.victim
            vkey = (v.arch, v.width, v.precision)
            if vkey not in timed:
                timed[vkey] = pass_time(*vkey, args.images)
            ratio = seconds / (v.epochs * (prof.train_size or 50_000) * timed[vkey])
            print(f"{attack:<6} {prof.name:<7} {f'{sur.arch}-w{sur.width} {sur.precision}':<18} "
                  f"{train_eq + craft_eq:>9.0f} {seconds:>12.0f} {ratio:>9.1f}")
    for attack in args.run:
        from eclipse.experiments import clean_data, poisoned_set

        train = clean_data(profile)["train"]
        tick = time.perf_counter()
        poisoned_set(train, attack, profile.seed, profile=profile)
        wall = time.perf_counter() - tick
        print(f"{attack}: generated on {len(train):,} images in {wall:.0f} s = {wall / victim_s:.1f} x one clean victim "
              "training (0 if cached)")


if __name__ == "__main__":
    main()

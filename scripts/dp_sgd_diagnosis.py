"""Why DP-SGD does not train the quick victim: per-sample gradient norms against the clipping norm C, and short
training runs of DP-SGD recipes on the clean quick set.

    python scripts/dp_sgd_diagnosis.py norms            # per-sample gradient norms of the group-norm victim
    python scripts/dp_sgd_diagnosis.py recipes --epochs 4 --recipes base fp32 no-momentum ...

``norms`` computes Opacus's per-sample gradients (``GradSampleModule``) of the quick victim (ResNet-18, width 16,
batch norms replaced by group norms, as the ``dp-sgd`` defense trains it) on clean training batches, under fp32
and under the victim's bf16 autocast, at initialisation and after a few epochs of plain (non-private) training,
and reports their quantiles, the share clipped at C and the cosine between each bf16 per-sample gradient and its
fp32 one. ``recipes`` trains the clean quick victim a few epochs with each recipe (``eclipse.training.train_victim``,
the ``dp-sgd`` defense with its parameters overridden) and reports train/test accuracy per epoch. Both write a CSV
under ``--out`` (default figures/) with a manifest.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import pandas as pd
import torch

from eclipse.data import train_subset
from eclipse.defenses import make_defense
from eclipse.defenses.dp_sgd import dp_model, per_sample_gradients
from eclipse.experiments import clean_data
from eclipse.manifest import write_manifest
from eclipse.profiles import get_profile
from eclipse.seeding import seed_everything
from eclipse.storage import atomic_write_text
from eclipse.training import train_victim
from eclipse.victims import build_victim

OUT = Path(__file__).resolve().parents[1] / "figures"

# A recipe is "key=value,..." over the quick victim's TrainConfig (lr, momentum, weight_decay, precision, batch_size)
# and DP-SGD's settings (C: clipping norm, sigma: noise multiplier; dp=off: the group-norm network without DP).
_DP_KEYS = {"C": "dp_max_grad_norm", "sigma": "dp_noise_multiplier"}
_FLOAT_KEYS = {"lr", "momentum", "weight_decay", "C", "sigma"}


def parse_recipe(spec: str) -> tuple[dict, dict, bool]:
    """``"lr=1,C=1,sigma=0"`` -> (TrainConfig overrides, DefenseParams overrides, with DP)."""
    config, params, dp = {}, {}, True
    for item in filter(None, spec.split(",")):
        key, _, value = item.partition("=")
        if key == "dp":
            dp = value != "off"
        elif key in _DP_KEYS:
            params[_DP_KEYS[key]] = float(value)
        elif key in _FLOAT_KEYS:
            config[key] = float(value)
        elif key == "batch_size":
            config[key] = int(value)
        elif key == "precision":
            config[key] = value
        else:
            raise SystemExit(f"recipe {spec!r}: unknown key {key!r} (lr, momentum, weight_decay, precision, "
                             f"batch_size, C, sigma, dp)")
    return config, params, dp


def norms(args: argparse.Namespace, save) -> pd.DataFrame:
    profile = get_profile(args.profile)
    sets = clean_data(profile)
    train = sets["train"]
    seed_everything(profile.seed)
    net = dp_model(build_victim(profile.victim.arch, len(train.classes), profile.victim.width))
    batches = torch.arange(args.images).split(args.batch)
    rows = []

    def measure(stage: str) -> None:
        net.train()
        for precision in ("fp32", "bf16"):
            per_sample = []
            for batch in batches:
                x = train.images[batch].float().div(255)
                per_sample.append(per_sample_gradients(net, x, train.labels[batch], precision))
            g = torch.cat(per_sample)
            if precision == "fp32":
                reference = g
            n = g.norm(dim=1)
            row = {"stage": stage, "precision": precision, "images": len(n),
                   **{f"norm_q{int(q * 100)}": float(n.quantile(q)) for q in (0.05, 0.25, 0.5, 0.75, 0.95)},
                   "norm_mean": float(n.mean()), "share_clipped_at_C": float((n > args.clip).float().mean()),
                   "C": args.clip,
                   # how far the batch's clipped mean is from the unclipped mean's direction
                   "cos_clipped_vs_plain_mean": float(torch.nn.functional.cosine_similarity(
                       (g / n.clamp_min(args.clip).unsqueeze(1) * args.clip).mean(0), g.mean(0), dim=0)),
                   "clipped_mean_norm": float((g / n.clamp_min(args.clip).unsqueeze(1) * args.clip).mean(0).norm()),
                   "cos_vs_fp32_median": float(torch.nn.functional.cosine_similarity(g, reference, dim=1).median())}
            rows.append(row)
            print({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}, flush=True)

    measure("init")
    if args.train_epochs:
        config = dataclasses.replace(profile.victim, epochs=args.train_epochs, eval_every=args.train_epochs)
        net.load_state_dict(_train_gn(train, sets["eval"], config, profile.seed).state_dict())
        measure(f"after {args.train_epochs} epochs (group norms, no DP)")
    return pd.DataFrame(rows)


def _train_gn(train, evaluation, config, seed) -> torch.nn.Module:
    """The group-norm victim trained ``config.epochs`` epochs without DP (the ``dp-sgd`` defense's network)."""
    captured = {}
    defense = make_defense("dp-sgd")
    plain = dataclasses.replace(defense, wrap_training=None, summary=None, name="gn-no-dp")
    train_victim(train, evaluation, config, defense=plain, seed=seed, progress=False,
                 on_epoch=lambda epoch, net: captured.__setitem__("net", net))
    return captured["net"]


def recipes(args: argparse.Namespace, save) -> pd.DataFrame:
    profile = get_profile(args.profile)
    sets = clean_data(profile)
    train = train_subset(sets["train"], args.images, profile.seed)
    rows = []
    for name in args.recipes:
        config_over, params_over, with_dp = parse_recipe(name)
        config = dataclasses.replace(profile.victim, epochs=args.epochs, eval_every=1, **config_over)
        defense = make_defense("dp-sgd", **params_over)
        if not with_dp:
            defense = dataclasses.replace(defense, wrap_training=None, summary=None, name="gn-no-dp")
        tick = time.perf_counter()
        result = train_victim(train, sets["eval"], config, defense=defense, seed=profile.seed, progress=False)
        for entry in result["log"]:
            rows.append({"recipe": name, **config_over, **params_over, **{k: entry.get(k) for k in
                         ("epoch", "loss", "train_acc", "test_acc", "seconds")}})
        print(f"{name}: " + ", ".join(f"ep{e['epoch']} train {e['train_acc']:.1f} test {e.get('test_acc', float('nan')):.1f}"
                                      for e in result["log"]) + f" ({time.perf_counter() - tick:.0f} s)", flush=True)
        save(pd.DataFrame(rows))          # after each recipe: a kill loses at most the one running
    return pd.DataFrame(rows)


def main(argv: list[str] | None = None) -> pd.DataFrame:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="quick")
    parser.add_argument("--out", type=Path, default=OUT)
    sub = parser.add_subparsers(dest="what", required=True)
    n = sub.add_parser("norms")
    n.add_argument("--images", type=int, default=512)
    n.add_argument("--batch", type=int, default=128)
    n.add_argument("--clip", type=float, default=1.0)
    n.add_argument("--train-epochs", type=int, default=0)
    r = sub.add_parser("recipes")
    r.add_argument("--recipes", nargs="+", default=["sigma=0", "sigma=0,precision=fp32"],
                   help='each "key=value,..." (keys lr, momentum, weight_decay, precision, batch_size, C, sigma, dp=off)')
    r.add_argument("--epochs", type=int, default=4)
    r.add_argument("--images", type=int, default=None)
    args = parser.parse_args(argv)
    started = time.perf_counter()
    name = f"dp-sgd-{args.what}-{args.profile}"
    path = args.out / f"{name}.csv"
    # recipes accumulate over invocations: a recipe run again replaces its rows, the others are kept
    earlier = pd.read_csv(path) if args.what == "recipes" and path.exists() else None

    def save(table: pd.DataFrame) -> None:
        if earlier is not None:
            table = pd.concat([earlier[~earlier["recipe"].isin(table["recipe"])], table], ignore_index=True)
        atomic_write_text(table.to_csv(index=False), path)
        write_manifest(args.out / f"{name}.manifest.json", profile=args.profile, seed=get_profile(args.profile).seed,
                       wall_time_s=time.perf_counter() - started, command=" ".join(sys.argv))

    table = (norms if args.what == "norms" else recipes)(args, save)
    save(table)
    return table


if __name__ == "__main__":
    main()

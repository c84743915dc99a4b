"""Residual perturbations: what a poison (or a purification) left on the images, as a float delta."""
from __future__ import annotations

import pandas as pd
import torch

from eclipse.frequency.inputs import check_delta, check_pair
from eclipse.frequency.spectra import low_frequency_ratio

__all__ = ["residual", "residual_energy_table", "pass_through"]


def residual(purified_uint8: torch.Tensor, clean_uint8: torch.Tensor) -> torch.Tensor:
    """Residual perturbation after purification: ``purified/255 - clean/255`` (float, [0, 1] scale)."""
    check_pair(purified_uint8, clean_uint8, ("purified_uint8", "clean_uint8"))
    return purified_uint8.float() / 255.0 - clean_uint8.float() / 255.0


def residual_energy_table(poison: dict[str, torch.Tensor], left: dict[str, torch.Tensor],
                          baseline: torch.Tensor) -> pd.DataFrame:
    """How much of each poison purification left (Fig. 6), one row per key of ``poison``.

    ``poison[a]`` is poisoned - clean, ``left[a]`` purified poisoned - clean and ``baseline`` purified clean -
    clean (the same images, purified with the same seed), all float ``(N, C, H, W)`` on the [0, 1] scale.
    Columns, each a mean over the N images: ``poison L2`` and ``residual L2`` (per-image L2 norms of poison
    and left), ``clean-purification L2`` (of the baseline), ``surviving L2`` (of left - baseline, the part of
    the residual the poison caused) and ``poison left (cosine)`` (cosine of left - baseline with the poison:
    1 where the poison passed unchanged, about 0 where purification removed it)."""
    baseline = check_delta(baseline, "baseline")
    if set(poison) != set(left):
        raise ValueError(f"poison and left must have the same keys, got {sorted(poison)} and {sorted(left)}")
    rows = {}
    for name in poison:
        delta = check_delta(poison[name], f"poison[{name!r}]")
        rest = check_delta(left[name], f"left[{name!r}]")
        if not delta.shape == rest.shape == baseline.shape:
            raise ValueError(f"{name}: poison {tuple(delta.shape)}, left {tuple(rest.shape)} and baseline "
                             f"{tuple(baseline.shape)} must have the same shape")
        survived = (rest - baseline).flatten(1)
        rows[name] = {"poison L2": float(delta.flatten(1).norm(dim=1).mean()),
                      "residual L2": float(rest.flatten(1).norm(dim=1).mean()),
                      "clean-purification L2": float(baseline.flatten(1).norm(dim=1).mean()),
                      "surviving L2": float(survived.norm(dim=1).mean()),
                      "poison left (cosine)": float(torch.nn.functional.cosine_similarity(
                          survived, delta.flatten(1), dim=1).mean())}
    return pd.DataFrame.from_dict(rows, orient="index")


def pass_through(left: torch.Tensor, poison: torch.Tensor) -> dict[str, float]:
    """How much of ``poison`` (poisoned - clean) a purifier let through, from ``left`` = P(poisoned) - P(clean)
    (the same images and noise draw, so the purifier's error on the clean content cancels). ``high_frequency``:
    the high-frequency energy of left over the poison's; ``gain``: the poison's share of left (projection);
    ``cosine``: mean per-image cosine of left with the poison. 1, 1, 1: nothing removed."""
    left, poison = check_delta(left, "left"), check_delta(poison, "poison")
    if left.shape != poison.shape:
        raise ValueError(f"left {tuple(left.shape)} and poison {tuple(poison.shape)} must have the same shape")

    def high_energy(delta: torch.Tensor) -> torch.Tensor:
        return (delta.square().sum(dim=(1, 2, 3)) * (1 - low_frequency_ratio(delta).nan_to_num(1.0))).sum()
    return {"high_frequency": float(high_energy(left) / high_energy(poison)),
            "gain": float((left * poison).sum() / poison.square().sum()),
            "cosine": float(torch.nn.functional.cosine_similarity(left.flatten(1), poison.flatten(1), dim=1).mean())}

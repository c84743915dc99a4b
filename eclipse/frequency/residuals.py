"""Residual perturbations: what a poison (or a purification) left on the images, as a float delta."""
from __future__ import annotations

import pandas as pd
import torch

from eclipse.frequency.inputs import check_delta, check_pair

__all__ = ["residual", "residual_energy_table"]


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

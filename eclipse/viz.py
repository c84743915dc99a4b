"""Plotting helpers the notebooks call: image grids, perturbations made visible, accuracy tables with the
paper's numbers beside ours, and one way to save a figure (PNG + PDF) and a table (CSV + Markdown) into
``figures/``."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import matplotlib
import matplotlib.lines

import matplotlib.pyplot as plt
import pandas as pd
import torch

from .storage import atomic_write_text

# One fixed colour per attack in every figure (matplotlib's tab10, then gold for ADP; clean is black).
ATTACK_COLORS = {"urp": "#1f77b4", "lsp": "#ff7f0e", "ar": "#2ca02c", "ops": "#d62728", "em": "#9467bd",
                 "tap": "#8c564b", "rem": "#e377c2", "sep": "#bcbd22", "efp": "#17becf", "adp": "#e6ab02",
                 "clean": "#000000"}
OTHER_COLOR = "#7f7f7f"  # anything that is not an attack (an average, say)

DISPLAY_NAMES = {"none": "no defense", "iss-g": "ISS-G", "iss-j": "ISS-J", "cutout": "Cutout", "mixup": "Mixup",
                 "cutmix": "CutMix", "compensation": "compensation (B+C)", "grayscale": "grayscale (B)",
                 "noise": "noise (C)", "eclipse": "ECLIPSE", "resnet18": "ResNet-18", "resnet50": "ResNet-50",
                 "vgg16": "VGG-16", "vgg19": "VGG-19", "densenet121": "DenseNet-121", "clean": "clean",
                 "at": "AT", "ueraser": "UEraser", "op": "OP", "dp-sgd": "DP-SGD", "avatar": "AVATAR"}


def display_name(name) -> str:
    """A run id as a reader reads it: ``"urp"`` -> ``"URP"``, ``"iss-j"`` -> ``"ISS-J"``, ``"none"`` ->
    ``"no defense"``, ``"eclipse:A+B+C"`` -> ``"ECLIPSE (A+B+C)"``, ``"urp (no crop)"`` -> ``"URP (no crop)"``;
    anything else unchanged."""
    text = str(name)
    if ": " in text:  # "<label>: paper", a column beside ours
        label, what = text.rsplit(": ", 1)
        return f"{display_name(label)}: {what}"
    if text.endswith(")") and " (" in text:  # a label with its setting: name the base, keep the setting
        base, setting = text.split(" (", 1)
        return f"{display_name(base)} ({setting}"
    key = text.strip().lower()
    if key.startswith("eclipse:"):
        return f"ECLIPSE ({text.split(':', 1)[1]})"
    if key in DISPLAY_NAMES:
        return DISPLAY_NAMES[key]
    return text.upper() if key in ATTACK_COLORS else text


def attack_color(name) -> str:
    """The fixed colour of an attack (or of a label such as ``"urp (no crop)"``); grey for anything else."""
    return ATTACK_COLORS.get(str(name).split(" (")[0].strip().lower(), OTHER_COLOR)


def save_figure(fig: matplotlib.figure.Figure, name: str, figures_dir: str | Path) -> list[Path]:
    """Save ``fig`` as ``<figures_dir>/<name>.png`` (150 dpi) and ``.pdf``; return the paths."""
    figures_dir = Path(figures_dir)
    figures_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for suffix, kwargs in ((".png", {"dpi": 150}), (".pdf", {"metadata": {"CreationDate": None}})):
        path = figures_dir / f"{name}{suffix}"
        tmp = path.with_name(f".{path.name}.tmp{suffix}")
        fig.savefig(tmp, bbox_inches="tight", **kwargs)
        tmp.replace(path)
        paths.append(path)
    return paths


def save_table(table: pd.DataFrame, name: str, figures_dir: str | Path, floatfmt: str = ".2f") -> list[Path]:
    """Save ``table`` as ``<name>.csv`` and ``<name>.md`` in ``figures_dir``."""
    figures_dir = Path(figures_dir)
    # per-column formats, index first: a swept value (sigma 0.025) keeps its digits, accuracies get floatfmt
    formats = ["g" if pd.api.types.is_float_dtype(table.index) else floatfmt] + [floatfmt] * table.shape[1]
    return [atomic_write_text(table.to_csv(), figures_dir / f"{name}.csv"),
            atomic_write_text(table.to_markdown(floatfmt=formats) + "\n", figures_dir / f"{name}.md")]


def to_display(images: torch.Tensor) -> torch.Tensor:
    """uint8 (N,3,H,W) or float [0,1] -> float (N,H,W,3) for imshow."""
    images = images.float() / 255 if images.dtype == torch.uint8 else images.float()
    return images.clamp(0, 1).permute(0, 2, 3, 1).cpu()


def amplify_for_display(delta: torch.Tensor, scale: float | None = None) -> torch.Tensor:
    """``clip(0.5 + delta * scale, 0, 1)`` for viewing a perturbation (grey = 0).

    Default ``scale`` maps the largest |delta| (over the whole tensor) to 0.5, i.e. to black/white;
    an all-zero delta gives uniform grey. Accepts any shape.
    """
    if not isinstance(delta, torch.Tensor) or not torch.is_floating_point(delta):
        raise ValueError("delta must be a float torch.Tensor")
    delta = delta.float()
    if scale is None:
        peak = float(delta.abs().max()) if delta.numel() else 0.0
        scale = 0.5 / peak if peak > 0 else 1.0
    elif not (scale > 0 and math.isfinite(scale)):
        raise ValueError(f"scale must be positive and finite, got {scale!r}")
    return (0.5 + delta * scale).clamp(0.0, 1.0)


def display_gain(*deltas: torch.Tensor, quantile: float = 0.99) -> float:
    """The ``scale`` for :func:`amplify_for_display` that takes the ``quantile`` of |delta| (all ``deltas``
    together) to black/white, so about 1% of the values clip at the default; rounded down to two significant
    digits, so that a label can state the gain exactly. 1.0 when that quantile is 0 (e.g. all-zero deltas)."""
    if not deltas or not 0 < quantile <= 1:
        raise ValueError("display_gain needs at least one delta and 0 < quantile <= 1")
    values = torch.cat([d.detach().abs().flatten().float().cpu() for d in deltas])
    rank = max(1, math.ceil(quantile * values.numel()))
    level = float(values.kthvalue(rank).values) if values.numel() else 0.0
    if not level > 0:
        return 1.0
    gain = 0.5 / level
    digits = 10 ** (math.floor(math.log10(gain)) - 1)
    return math.floor(gain / digits + 1e-9) * digits


def labelled_grid(rows: dict[str, torch.Tensor | Sequence[torch.Tensor]], groups: Sequence[str] | None = None,
                  title: str | None = None, caption: str | None = None, size: float = 1.2, gap: float = 0.35):
    """An image grid that says what it shows: one row per entry of ``rows`` with its label written
    horizontally to the left (break a long one with ``"\\n"``), a ``title`` above and a ``caption`` below
    (wrapped to the figure's width). A row is one batch of images, or a list of batches shown side by side
    as groups (a gap between them), titled by ``groups`` over the top row. Returns the figure."""
    import textwrap

    batches = {label: [v] if isinstance(v, torch.Tensor) else list(v) for label, v in rows.items()}
    n_groups = max(len(b) for b in batches.values())
    per = [max((len(b[g]) for b in batches.values() if g < len(b)), default=0) for g in range(n_groups)]
    ratios = [w for g, k in enumerate(per) for w in [1.0] * k + ([gap] if g < n_groups - 1 else [])]
    space = 0.06  # between images, a fraction of an image
    width = size * (sum(ratios) + space * (len(ratios) - 1) * sum(ratios) / len(ratios))
    height = size * (len(batches) + space * (len(batches) - 1))
    fig = plt.figure(figsize=(width, height))
    grid = fig.add_gridspec(len(batches), len(ratios), width_ratios=ratios, wspace=space, hspace=space,
                            left=0, right=1, bottom=0, top=1)
    starts = [sum(per[:g]) + g for g in range(n_groups)]
    for r, (label, row) in enumerate(batches.items()):
        for g, batch in enumerate(row):
            for c, image in enumerate(to_display(batch)):
                ax = fig.add_subplot(grid[r, starts[g] + c])
                ax.imshow(image.numpy(), interpolation="nearest")
                ax.set_xticks([])
                ax.set_yticks([])
        box = grid[r, 0].get_position(fig)
        fig.text(box.x0 - 0.08 / width, (box.y0 + box.y1) / 2, label, ha="right", va="center", fontsize=9)
    for g, name in enumerate(groups or []):
        box = grid[0, starts[g]:starts[g] + per[g]].get_position(fig)
        fig.text((box.x0 + box.x1) / 2, 1 + 0.05 / height, name, ha="center", va="bottom", fontsize=9)
    if title:  # above the group titles (9 pt lines, about 0.16 inch each)
        lines = max((str(name).count("\n") + 1 for name in groups or []), default=0)
        fig.text(0.5, 1 + (0.1 + 0.16 * lines) / height, title, ha="center", va="bottom", fontsize=10)
    if caption:
        wrapped = "\n".join(textwrap.fill(p, max(40, int(width * 72 / 4.2))) for p in caption.split("\n"))
        fig.text(0, -0.08 / height, wrapped, ha="left", va="top", fontsize=8)
    return fig


def image_grid(rows: dict[str, torch.Tensor], col_titles: Sequence[str] | None = None, size: float = 1.4):
    """A grid with one row per entry of ``rows`` (label -> images of equal count); returns the figure."""
    labels = list(rows)
    n = max(len(v) for v in rows.values())
    fig, axes = plt.subplots(len(labels), n, figsize=(size * n, size * len(labels)), squeeze=False)
    for r, label in enumerate(labels):
        shown = to_display(rows[label])
        for c in range(n):
            ax = axes[r, c]
            ax.set_xticks([])
            ax.set_yticks([])
            if c < len(shown):
                ax.imshow(shown[c], interpolation="nearest")
            else:
                ax.axis("off")
            if c == 0:
                ax.set_ylabel(label, fontsize=9)
            if r == 0 and col_titles is not None and c < len(col_titles):
                ax.set_title(col_titles[c], fontsize=9)
    fig.tight_layout()
    return fig


def accuracy_heatmap(table: pd.DataFrame, title: str = "", vmin: float = 0, vmax: float = 100,
                     paper: pd.DataFrame | None = None):
    """Heatmap of a test-accuracy table (rows x columns, %), each cell annotated with our value.

    With ``paper`` (same index and columns, NaN where the paper has no value), a cell with a paper value
    reads ``ours`` over ``paper P``; the colour is always ours.
    """
    import seaborn as sns

    ours = table.astype(float)
    annot = ours.map(lambda v: f"{v:.1f}")
    if paper is not None:
        theirs = paper.reindex(index=ours.index, columns=ours.columns).astype(float)
        annot = annot.where(theirs.isna(), annot + "\n" + theirs.map(lambda v: f"paper {v:.1f}"))
    height = 0.5 if paper is None else 0.7
    fig, ax = plt.subplots(figsize=(1.25 * len(table.columns) + 2, height * len(table) + 1.5))
    sns.heatmap(ours, annot=annot.to_numpy(), fmt="", cmap="viridis", vmin=vmin, vmax=vmax, ax=ax,
                annot_kws={"fontsize": 8 if paper is not None else 10}, cbar_kws={"label": "test accuracy (%)"})
    ax.set_title(title)
    ax.set_ylabel("")
    ax.tick_params(axis="y", rotation=0)
    fig.tight_layout()
    return fig


def beside_paper(ours: pd.Series | pd.DataFrame, paper: pd.Series | pd.DataFrame, ours_label: str = "ours",
                 paper_label: str = "paper") -> pd.DataFrame:
    """Our numbers and the paper's side by side (columns suffixed), for tables in the notebooks."""
    ours_df = ours.to_frame(ours_label) if isinstance(ours, pd.Series) else ours.add_suffix(f" ({ours_label})")
    paper_df = paper.to_frame(paper_label) if isinstance(paper, pd.Series) else paper.add_suffix(f" ({paper_label})")
    return ours_df.join(paper_df, how="left")


# One colour per sampler family in the purifier plots (matplotlib's Dark2), the same in every figure.
PURIFIER_COLORS = {"ancestral": "#1b9e77", "respaced": "#d95f02", "ddim": "#7570b3", "one_shot": "#e7298a",
                   "consistency": "#66a61e", "chained": "#e6ab02", "elixir": "#a6761d", "masked": "#1f78b4"}


def purifier_color(purifier: str) -> str:
    """The fixed colour of a purifier id such as ``"respaced-4"`` (its sampler's); grey for anything else."""
    return PURIFIER_COLORS.get(str(purifier).rsplit("-", 1)[0] if str(purifier)[-1:].isdigit() else str(purifier),
                               OTHER_COLOR)


def pareto_plot(points: pd.DataFrame, title: str = "", paper_value: float | None = None,
                cost: str = "nfe", value: str = "test_acc", spread: float = 0.06):
    """Accuracy against cost (log x) for one row per (purifier, modules): one colour per purifier, one marker
    per module combination, A and A+B+C of a purifier joined by a thin line, the ``pareto`` rows ringed and
    joined by a step line, ``paper_value`` dashed. Purifiers of equal cost are set apart sideways by a factor
    ``1 + spread`` each (the tick stays at the true cost); the legend names them instead of labels on the points.
    """
    fig, ax = plt.subplots(figsize=(7.4, 4.4), layout="constrained")
    purifiers = list(dict.fromkeys(points["purifier"]))
    markers = dict(zip(dict.fromkeys(points["modules"]), "os^Dv"))
    costs = points.groupby("purifier", sort=False)[cost].first()
    shift = {}
    for c in dict.fromkeys(costs):
        same = [p for p in purifiers if costs[p] == c]
        for j, p in enumerate(same):
            shift[p] = (1 + spread) ** (j - (len(same) - 1) / 2)
    x = points[cost] * points["purifier"].map(shift)
    for p in purifiers:
        rows = points["purifier"] == p
        ax.plot(x[rows], points.loc[rows, value], color=purifier_color(p), linewidth=0.8, alpha=0.6)
        for mods, marker in markers.items():
            sel = rows & (points["modules"] == mods)
            ax.scatter(x[sel], points.loc[sel, value], color=purifier_color(p), marker=marker, s=42, zorder=3)
    if "pareto" in points:
        front = points["pareto"].astype(bool)
        order = points.loc[front, cost].argsort()
        fx, fy = x[front].iloc[order], points.loc[front, value].iloc[order]
        ax.step(fx, fy, where="post", color="0.3", linewidth=1, zorder=2)
        ax.scatter(fx, fy, s=170, facecolors="none", edgecolors="k", zorder=4)
    if paper_value is not None:
        ax.axhline(paper_value, color="k", linestyle="--", linewidth=1)
    handles = [matplotlib.lines.Line2D([], [], color=purifier_color(p), marker="o", linestyle="", label=p)
               for p in purifiers]
    handles += [matplotlib.lines.Line2D([], [], marker=m, markerfacecolor="none", markeredgecolor="k", linestyle="",
                                      label=f"ECLIPSE modules {mods}")
                for mods, m in markers.items()]
    if "pareto" in points:
        handles.append(matplotlib.lines.Line2D([], [], marker="o", markersize=11, markerfacecolor="none",
                                               markeredgecolor="k", linestyle="", label="Pareto front"))
    if paper_value is not None:
        handles.append(matplotlib.lines.Line2D([], [], color="k", linestyle="--",
                                               label=f"paper ECLIPSE ({paper_value:.1f})"))
    ax.legend(handles=handles, fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
    ax.set_xscale("log")
    ticks = sorted(points[cost].unique())
    ax.set_xticks(ticks, [str(t) for t in ticks], minor=False)
    ax.set_xticks([], minor=True)
    ax.set(xlabel="network evaluations per image (log scale)", ylabel="test accuracy (%), mean over attacks",
           ylim=(0, 100), xlim=(ticks[0] / 1.3, ticks[-1] * 1.6))
    ax.set_title(title, fontsize=9)
    return fig

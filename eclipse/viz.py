"""Plotting helpers the notebooks call: image grids, accuracy tables with the paper's numbers beside
ours, and one way to save a figure (PNG + PDF) and a table (CSV + Markdown) into ``figures/``."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import matplotlib

import matplotlib.pyplot as plt
import pandas as pd
import torch

from .storage import atomic_write_text


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


def accuracy_heatmap(table: pd.DataFrame, title: str = "", vmin: float = 0, vmax: float = 100):
    """Heatmap of a test-accuracy table (rows x columns, %), annotated."""
    import seaborn as sns

    fig, ax = plt.subplots(figsize=(1.1 * len(table.columns) + 2, 0.5 * len(table) + 1.5))
    sns.heatmap(table.astype(float), annot=True, fmt=".1f", cmap="viridis", vmin=vmin, vmax=vmax, ax=ax,
                cbar_kws={"label": "test accuracy (%)"})
    ax.set_title(title)
    ax.set_ylabel("")
    fig.tight_layout()
    return fig


def beside_paper(ours: pd.Series | pd.DataFrame, paper: pd.Series | pd.DataFrame, ours_label: str = "ours",
                 paper_label: str = "paper") -> pd.DataFrame:
    """Our numbers and the paper's side by side (columns suffixed), for tables in the notebooks."""
    ours_df = ours.to_frame(ours_label) if isinstance(ours, pd.Series) else ours.add_suffix(f" ({ours_label})")
    paper_df = paper.to_frame(paper_label) if isinstance(paper, pd.Series) else paper.add_suffix(f" ({paper_label})")
    return ours_df.join(paper_df, how="left")

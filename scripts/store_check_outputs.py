"""Execute notebooks under the smoke profile and keep only the outputs of cells marked
``# NBVAL_CHECK_OUTPUT`` (the ones nbval compares in CI); every other output is cleared so the
committed notebooks stay small and profile-neutral.

    python scripts/store_check_outputs.py notebooks/01-noise-assimilation.ipynb [...]
"""
from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import nbformat
from nbclient import NotebookClient

MARK = "# NBVAL_CHECK_OUTPUT"


def main(paths: list[str]) -> None:
    env = {"ECLIPSE_PROFILE": "smoke", "ECLIPSE_FIGURES": tempfile.mkdtemp(prefix="eclipse-figures-")}
    os.environ.update({k: os.environ.get(k, v) if k == "ECLIPSE_CACHE" else v for k, v in env.items()})
    for path in map(Path, paths):
        nb = nbformat.read(path, as_version=4)
        NotebookClient(nb, timeout=900, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}).execute()
        for cell in nb.cells:
            cell.metadata.pop("execution", None)  # timestamps only: keeps diffs to what changed
            if cell.cell_type == "code" and MARK not in cell.source:
                cell.outputs = []
                cell.execution_count = None  # nbval treats checked cells without a count as unrun
            elif cell.cell_type == "code":
                cell.outputs = _coalesced(cell.outputs)
        nb.metadata.pop("widgets", None)
        nbformat.write(nb, path)
        print("stored", path)


def _coalesced(outputs: list) -> list:
    """Consecutive writes to one stream as one output (as Jupyter shows them; a loop's prints stay one block)."""
    merged = []
    for out in outputs:
        if merged and out.get("output_type") == "stream" and merged[-1].get("output_type") == "stream" \
                and merged[-1].get("name") == out.get("name"):
            merged[-1]["text"] += out["text"]
        else:
            merged.append(out)
    return merged


if __name__ == "__main__":
    main(sys.argv[1:])

"""Run the notebooks with papermill under one profile: every figure and table of the paper.

Each notebook in ``notebooks/`` runs into a run folder (the executed copies are kept), a failing
notebook does not stop the others, and a summary plus a manifest (profile, seed, commit, machine,
wall time per notebook) is written. Expensive artifacts are cached by ``eclipse.experiments``, so a
second run reuses them; each notebook's row also says what it reused and what that cost to make
(``cold_equivalent_s``: its wall time plus the recorded making time of the artifacts it reused, each
counted once over the run; see :func:`eclipse.artifacts.cold_cost`), so a cold-cache wall time can be
stated from a run that found part of the cache warm.
"""
from __future__ import annotations

import datetime as _dt
import os
import time
from pathlib import Path

import pandas as pd
from tqdm.auto import tqdm

from .artifacts import CACHE_LOG_ENV, cold_cost, read_cache_log
from .manifest import git_commit, machine
from .storage import atomic_write_json, cache_dir

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK_DIR = REPO / "notebooks"


def notebook_paths(only: list[str] | None = None, notebook_dir: Path = NOTEBOOK_DIR) -> list[Path]:
    """The reproduction notebooks in reading order, optionally those whose name contains an ``only`` item."""
    paths = sorted(p for p in Path(notebook_dir).glob("[0-9]*.ipynb") if not p.name.endswith("-checkpoint.ipynb"))
    if only:
        available = [p.stem for p in paths]
        paths = [p for p in paths if any(key in p.stem for key in only)]
        if not paths:
            raise ValueError(f"no notebook matches {only}; available: {available}")
    return paths


def kernel_name() -> str:
    """The ``eclipse`` kernel when registered (scripts/setup.sh does it), else ``python3``."""
    from jupyter_client.kernelspec import KernelSpecManager

    return "eclipse" if "eclipse" in KernelSpecManager().find_kernel_specs() else "python3"


def reproduce(profile: str = "quick", *, only: list[str] | None = None, run_dir: str | Path | None = None,
              figures_dir: str | Path | None = None, seed: int = 0, timeout_s: int | None = None,
              parameters: dict | None = None, notebook_dir: str | Path = NOTEBOOK_DIR) -> pd.DataFrame:
    """Execute the notebooks under ``profile``; return one row per notebook (status, seconds, output).

    Figures and tables go to ``figures_dir`` (default ``<run_dir>/figures``: the repository's committed
    ``figures/`` only when asked for, as ``scripts/reproduce.sh`` does)."""
    import papermill as pm

    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    run_dir = Path(run_dir) if run_dir else REPO / "runs" / f"{stamp}-{profile}"
    run_dir.mkdir(parents=True, exist_ok=True)
    run_dir = run_dir.resolve()
    # absolute: the kernels run in the notebooks' folder
    figures_dir = Path(figures_dir).resolve() if figures_dir is not None else run_dir / "figures"
    figures_dir.mkdir(parents=True, exist_ok=True)
    kernel = kernel_name()
    rows = []
    counted: set[str] = set()   # artifacts already charged to an earlier notebook of this run
    paths = notebook_paths(only, Path(notebook_dir))
    bar = tqdm(paths, desc=f"reproduce [{profile}]", unit="notebook")
    for path in bar:
        bar.set_postfix_str(path.stem)
        params = {"profile": profile, "seed": seed, "figures_dir": str(figures_dir)}
        if "interactive" in pm.inspect_notebook(str(path)):
            params["interactive"] = False  # headless: no widget panels (-p interactive true keeps them)
        params.update(parameters or {})
        out = run_dir / path.name
        commit = git_commit()  # per notebook: the code it ran with, even if the tree changes during a long run
        log = run_dir / f"{path.stem}-cache.jsonl"
        log.unlink(missing_ok=True)
        previous_log = os.environ.get(CACHE_LOG_ENV)
        os.environ[CACHE_LOG_ENV] = str(log)   # the kernel inherits it
        tick = time.perf_counter()
        try:
            pm.execute_notebook(str(path), str(out), parameters=params, kernel_name=kernel, cwd=str(notebook_dir),
                                progress_bar=False, execution_timeout=timeout_s)
            status, error = "ok", ""
        except Exception as err:  # noqa: BLE001 - a failed notebook is recorded, the rest still run
            status, error = "failed", f"{type(err).__name__}: {str(err).strip().splitlines()[-1] if str(err).strip() else ''}"
        finally:
            if previous_log is None:
                os.environ.pop(CACHE_LOG_ENV, None)
            else:
                os.environ[CACHE_LOG_ENV] = previous_log
        seconds = round(time.perf_counter() - tick, 1)
        reuse = cold_cost(read_cache_log(log), counted)
        rows.append({"notebook": path.stem, "status": status, "seconds": seconds,
                     "cold_equivalent_s": round(seconds + reuse["reused_make_s"], 1), "artifacts": reuse,
                     "output": str(out), "error": error, "parameters": dict(parameters or {}), "commit": commit,
                     "finished": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                     "cache": str(cache_dir())})
    summary = pd.DataFrame(rows)
    manifest = {"profile": profile, "seed": seed, "commit": rows[0]["commit"] if rows else git_commit(), "machine": machine(),
                "wall_time_s": round(float(summary["seconds"].sum()), 1),
                "cold_equivalent_s": round(float(summary["cold_equivalent_s"].sum()), 1), "run_dir": str(run_dir),
                "finished": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                "notebooks": rows}
    atomic_write_json(manifest, run_dir / "manifest.json")
    _merge_manifest(figures_dir / f"manifest-{profile}.json", manifest)
    return summary


def _merge_manifest(path: Path, manifest: dict) -> None:
    """Update the figures/ manifest notebook by notebook, so ``--only`` reruns keep the others' records."""
    import json

    previous = json.loads(path.read_text()) if path.exists() else {}
    notebooks = {row["notebook"]: row for row in previous.get("notebooks", [])}  # each keeps its own commit and time
    for row in manifest["notebooks"]:
        notebooks[row["notebook"]] = {"commit": manifest["commit"], "finished": manifest["finished"], **row}
    merged = {**manifest, "notebooks": [notebooks[k] for k in sorted(notebooks)],
              "wall_time_s": round(sum(r["seconds"] for r in notebooks.values()), 1),
              # rows from before the cache log count their wall time
              "cold_equivalent_s": round(sum(r.get("cold_equivalent_s", r["seconds"]) for r in notebooks.values()), 1)}
    atomic_write_json(merged, path)

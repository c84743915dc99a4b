"""Environment for every test, notebooks included: the smoke profile, a private cache and figure folder.

Set before any kernel starts, so nbval's kernels inherit it. Notebooks read ECLIPSE_PROFILE and
ECLIPSE_FIGURES in their parameters cell (papermill overrides both)."""
import os
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent
os.environ.setdefault("ECLIPSE_CACHE", str(REPO / ".cache-test"))
os.environ.setdefault("ECLIPSE_PROFILE", "smoke")
os.environ.setdefault("ECLIPSE_FIGURES", tempfile.mkdtemp(prefix="eclipse-figures-"))
os.environ.setdefault("MPLBACKEND", "Agg")

collect_ignore_glob = ["runs/*", ".cache-test/*", "**/.ipynb_checkpoints/*"]

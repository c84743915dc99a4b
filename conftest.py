"""Environment for every test, notebooks included: the smoke profile, a private cache and figure folder.

Set before any kernel starts, so nbval's kernels inherit it. Notebooks read ECLIPSE_PROFILE and
ECLIPSE_FIGURES in their parameters cell (papermill overrides both)."""
import atexit
import os
import shutil
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent
if "ECLIPSE_CACHE" not in os.environ:
    # a fresh cache per test session, so cached artifacts never stand in for the code under test;
    # only decoded CIFAR-10 (keyed by the source file's size and mtime) is kept between sessions
    _cache = Path(tempfile.mkdtemp(prefix="eclipse-test-cache-"))
    _decoded = REPO / ".cache-test" / "decoded"
    _decoded.mkdir(parents=True, exist_ok=True)
    (_cache / "decoded").symlink_to(_decoded, target_is_directory=True)
    os.environ["ECLIPSE_CACHE"] = str(_cache)
    atexit.register(shutil.rmtree, _cache, ignore_errors=True)
os.environ.setdefault("ECLIPSE_PROFILE", "smoke")
if "ECLIPSE_FIGURES" not in os.environ:
    os.environ["ECLIPSE_FIGURES"] = tempfile.mkdtemp(prefix="eclipse-figures-")
    atexit.register(shutil.rmtree, os.environ["ECLIPSE_FIGURES"], ignore_errors=True)
os.environ.setdefault("MPLBACKEND", "Agg")

collect_ignore_glob = ["runs/*", ".cache-test/*", "**/.ipynb_checkpoints/*"]

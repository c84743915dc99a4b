"""Notebook hygiene, nbval's ability to fail, and the papermill reproduction runner."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import nbformat
import pytest

from eclipse.reproduce import notebook_paths, reproduce

MARK = "# NBVAL_CHECK_OUTPUT"
NOTEBOOKS = notebook_paths()


def test_there_is_a_notebook_per_figure_group():
    names = [p.stem for p in NOTEBOOKS]
    for key in ("noise-assimilation", "sparse-diffusion", "purification-gallery", "main-results", "ablation",
                "hyperparameters", "residual-poisons", "purifiers"):
        assert any(key in n for n in names), key


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_shape(path):
    nb = nbformat.read(path, as_version=4)
    tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1, "exactly one cell tagged 'parameters'"
    for name in ("profile", "seed", "figures_dir"):
        assert f"{name} =" in tagged[0].source
    assert nb.metadata["kernelspec"]["name"] == "eclipse"
    checked = [c for c in nb.cells if c.cell_type == "code" and MARK in c.source]
    assert checked and all(c.outputs for c in checked), "checked cells carry their expected output"
    unchecked_outputs = [c for c in nb.cells if c.cell_type == "code" and MARK not in c.source and c.outputs]
    assert not unchecked_outputs, "other outputs are stripped (figures live in figures/)"
    assert nb.cells[0].cell_type == "markdown" and len(nb.cells[0].source) > 200  # says what it shows
    assert "widgets" not in nb.metadata


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebooks_call_the_package_in_short_cells(path):
    # Acceptance rules for the notebooks (issue 13): a notebook's grids come from its profile
    # (eclipse/profiles.py, Profile.grids), never a per-profile {"smoke": ..., "quick": ..., "paper": ...}
    # dict of its own; no code cell over 25 lines; no line over 110 characters.
    import re

    cells = [c for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code"]
    key = lambda name: re.compile(rf"""["']{name}["']\s*:""")  # noqa: E731
    per_profile = [c.source.splitlines()[0] for c in cells if key("smoke").search(c.source) and key("quick").search(c.source)]
    assert not per_profile, f"per-profile dicts (move them to the profile's grids): {per_profile}"
    long_cells = [(len(lines), lines[0]) for lines in (c.source.splitlines() for c in cells) if len(lines) > 25]
    assert not long_cells, f"code cells over 25 lines: {long_cells}"
    long_lines = [line for c in cells for line in c.source.splitlines() if len(line) > 110]
    assert not long_lines, f"lines over 110 characters: {long_lines}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_papermill_sees_every_parameter(path):
    # papermill's parser skips a line with two '=' (e.g. one in its comment) and warns "Unable to parse line"
    import ast

    import papermill

    cell = next(c for c in nbformat.read(path, as_version=4).cells if "parameters" in c.metadata.get("tags", []))
    assigned = {t.id for node in ast.parse(cell.source).body if isinstance(node, ast.Assign) for t in node.targets}
    assert set(papermill.inspect_notebook(str(path))) == assigned


def _tiny_notebook(check_output: str | None = None) -> nbformat.NotebookNode:
    """A two-cell parameterized notebook (seconds to run), with a marked check cell and its stored output."""
    nb = nbformat.v4.new_notebook()
    params = nbformat.v4.new_code_cell("profile = 'quick'\nseed = 0\nfigures_dir = '.'\nrounds = 1",
                                       metadata={"tags": ["parameters"]})
    work = nbformat.v4.new_code_cell(
        "import pathlib\npathlib.Path(figures_dir, 'tiny.txt').write_text(str(rounds))\n"
        f"{MARK}\nprint('rounds is an int:', isinstance(rounds, int))")
    work.outputs = [nbformat.v4.new_output("stream", name="stdout", text=check_output or "rounds is an int: True\n")]
    params.execution_count, work.execution_count = 1, 2  # nbval compares only cells that were run
    nb.cells = [params, work]
    nb.metadata = {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
                   "language_info": {"name": "python"}}
    return nb


def test_nbval_fails_on_a_broken_output(tmp_path):
    """A stored check output that the code no longer prints fails nbval (the committed notebooks' own nbval
    run, once per suite, is the passing case)."""
    nbformat.write(_tiny_notebook("rounds is an int: False\n"), tmp_path / "broken.ipynb")
    nbformat.write(_tiny_notebook(), tmp_path / "intact.ipynb")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = lambda p: subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(p),  # noqa: E731
                                    "--rootdir", str(tmp_path), "-c", os.devnull, "--nbval-lax", "--nbval-current-env"],
                                   capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    bad = run(tmp_path / "broken.ipynb")
    assert bad.returncode != 0 and "mismatch" in bad.stdout.lower(), bad.stdout[-2000:]
    good = run(tmp_path / "intact.ipynb")
    assert good.returncode == 0, good.stdout[-2000:]


_CACHED_CELL = """import json, time
from eclipse import artifacts
value, hit, _ = artifacts.cached("poisons", {"test": "cache log"}, lambda path: time.sleep(5) or {"v": 1},
                                 load=lambda p: json.loads(p.read_text()), save=lambda v, p: p.write_text(json.dumps(v)),
                                 label="log-test", suffix=".json")
print("hit:", hit)"""


def test_reproduce_charges_a_reused_artifact_its_recorded_making_time(tmp_path, monkeypatch):
    """A notebook that finds its artifact cached reports the artifact's making time beside its own wall time
    (the cold-cache equivalent), read from the cache log its kernel wrote."""
    from eclipse import artifacts

    monkeypatch.setenv("ECLIPSE_CACHE", str(tmp_path / "cache"))   # the kernel inherits it
    slow = lambda path: time.sleep(1.0) or {"v": 1}  # noqa: E731
    _, hit, _ = artifacts.cached("poisons", {"test": "cache log"}, slow, load=lambda p: json.loads(p.read_text()),
                                 save=lambda v, p: p.write_text(json.dumps(v)), label="log-test", suffix=".json")
    assert not hit
    notebooks = tmp_path / "notebooks"
    notebooks.mkdir()
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("profile = 'quick'\nseed = 0\nfigures_dir = '.'", metadata={"tags": ["parameters"]}),
                nbformat.v4.new_code_cell(_CACHED_CELL)]
    nb.metadata = {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
                   "language_info": {"name": "python"}}
    nbformat.write(nb, notebooks / "01-cached.ipynb")
    summary = reproduce("smoke", run_dir=tmp_path / "run", figures_dir=tmp_path / "figures", notebook_dir=notebooks)
    row = summary.iloc[0]
    assert row["status"] == "ok", row["error"]
    assert row["artifacts"]["reused"] == 1 and row["artifacts"]["computed"] == 0   # the kernel hit it (no 5 s sleep)
    assert 0.9 <= row["cold_equivalent_s"] - row["seconds"] <= 1.5
    manifest = json.loads((tmp_path / "figures" / "manifest-smoke.json").read_text())
    assert manifest["cold_equivalent_s"] >= manifest["wall_time_s"] + 0.9


def test_reproduce_runs_keeps_going_and_reports(tmp_path):
    notebooks = tmp_path / "notebooks"
    notebooks.mkdir()
    nbformat.write(_tiny_notebook(), notebooks / "01-tiny.ipynb")
    failing = nbformat.v4.new_notebook()
    failing.cells = [nbformat.v4.new_code_cell("profile = 'quick'\nseed = 0\nfigures_dir = '.'", metadata={"tags": ["parameters"]}),
                     nbformat.v4.new_code_cell("raise RuntimeError('deliberate failure')")]
    failing.metadata = {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
                        "language_info": {"name": "python"}}
    nbformat.write(failing, notebooks / "00-fails.ipynb")
    (tmp_path / "figures").mkdir()
    earlier = {"notebook": "99-earlier", "seconds": 1.0, "commit": "0123abc", "finished": "2026-01-01T00:00:00+00:00"}
    (tmp_path / "figures" / "manifest-smoke.json").write_text(json.dumps({"notebooks": [earlier]}))
    summary = reproduce("smoke", run_dir=tmp_path / "run", figures_dir=tmp_path / "figures", notebook_dir=notebooks,
                        parameters={"rounds": 50})
    assert list(summary["notebook"]) == ["00-fails", "01-tiny"]
    assert list(summary["status"]) == ["failed", "ok"]  # the failure did not stop the next notebook
    assert "deliberate failure" in summary["error"].iloc[0]
    assert (tmp_path / "run" / "01-tiny.ipynb").exists()
    executed = nbformat.read(tmp_path / "run" / "01-tiny.ipynb", as_version=4)
    assert any("injected-parameters" in c.metadata.get("tags", []) for c in executed.cells)
    assert (tmp_path / "figures" / "tiny.txt").read_text() == "50"  # the parameter reached the kernel
    manifest = json.loads((tmp_path / "figures" / "manifest-smoke.json").read_text())
    rows = {r["notebook"]: r for r in manifest["notebooks"]}
    assert manifest["profile"] == "smoke" and set(rows) == {"00-fails", "01-tiny", "99-earlier"}
    assert rows["99-earlier"] == earlier  # an earlier run's record keeps its own commit and time
    assert all(rows[n]["commit"] and rows[n]["cache"] for n in ("00-fails", "01-tiny"))
    manifest["notebooks"] = [r for r in manifest["notebooks"] if r["notebook"] != "99-earlier"]
    assert manifest["commit"] and manifest["machine"]["cpu_count"]
    assert all(r["parameters"] == {"rounds": 50} for r in manifest["notebooks"])

"""Measurement scripts run end to end under the smoke profile and write their table and manifest."""
from __future__ import annotations

import importlib.util
import json
import shlex
from pathlib import Path

import pandas as pd

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_victim_seed_spread_smoke(tmp_path):
    from eclipse.experiments import clean_data, poisoned_set
    from eclipse.profiles import sweep_profile
    from eclipse.sweeps import sparse_diffusion_point, sparse_diffusion_points

    argv = ["--profile", "smoke", "--attack", "lsp", "--seeds", "0", "1", "--points", "enlargement=crop",
            "--out", str(tmp_path), "--name", "spread"]
    wide = _load("victim_seed_spread").main(argv)
    assert list(wide.columns) == [0, 1, "spread"] and list(wide.index) == ["enlargement=crop"]
    # seed 0 is notebook 02's own run of each point (its sweep helper, its grid): the same cached number
    profile = sweep_profile("smoke")
    sets = clean_data(profile)
    poisoned = {"lsp": poisoned_set(sets["train"], "lsp", profile.seed)}
    for label in wide.index:
        overrides = sparse_diffusion_points(profile)[label][2]
        assert wide.loc[label, 0] == sparse_diffusion_point(profile, poisoned, sets, **overrides)["lsp"]
    saved = pd.read_csv(tmp_path / "spread.csv", index_col=0)
    assert list(saved.index) == list(wide.index)
    manifest = json.loads((tmp_path / "spread-manifest.json").read_text())
    assert manifest["victim_seeds"] == [0, 1] and manifest["profile"] == "smoke"
    assert shlex.split(manifest["command"])[2:] == argv  # the manifest's command reruns this exact run

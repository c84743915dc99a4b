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
    argv = ["--profile", "smoke", "--attack", "lsp", "--seeds", "0", "1", "--points", "crop, I/4", "I",
            "--out", str(tmp_path), "--name", "spread"]
    wide = _load("victim_seed_spread").main(argv)
    assert list(wide.columns) == [0, 1, "spread"] and list(wide.index) == ["crop, I/4", "I"]
    assert ((wide[[0, 1]] >= 0) & (wide[[0, 1]] <= 100)).all().all()
    assert (wide["spread"] == (wide[0] - wide[1]).abs()).all()
    saved = pd.read_csv(tmp_path / "spread.csv", index_col=0)
    assert list(saved.index) == list(wide.index)
    manifest = json.loads((tmp_path / "spread-manifest.json").read_text())
    assert manifest["victim_seeds"] == [0, 1] and manifest["profile"] == "smoke"
    assert shlex.split(manifest["command"])[2:] == argv  # the manifest's command reruns this exact run

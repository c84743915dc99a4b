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


def test_unet_switches_benchmark_measures_every_switch_set_in_one_run(tmp_path):
    """benchmarks/unet_switches.py (tiny sizes): one row per switch set, fp32 the reference, and the CSV."""
    spec = importlib.util.spec_from_file_location("unet_switches", SCRIPTS.parent / "benchmarks" / "unet_switches.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    rows = bench.main(["--n", "2", "--t-star", "1", "--batch", "2", "--train-steps", "1", "--peak-tflops", "1",
                       "--csv", str(tmp_path / "switches.csv")])
    assert [r["switches"] for r in rows] == ["fp32", "channels_last=True", "precision=bf16",
                                             "precision=bf16, channels_last=True"]
    assert rows[0]["purify_vs_fp32"] == rows[0]["train_vs_fp32"] == 1.0
    assert all(r["purify_img_evals_per_s"] > 0 and r["train_it_per_s"] > 0 for r in rows)
    saved = pd.read_csv(tmp_path / "switches.csv")
    assert len(saved) == 4 and saved["gflop_per_eval"].iloc[0] > 0.1   # the quick UNet: ~0.5 GFLOP per image

"""Cached experiment runs and the table command, at smoke scale."""
from __future__ import annotations

import json

import pandas as pd

from eclipse import cli


def test_table_command_writes_table_and_manifest_then_reuses_cache(tmp_path, capsys):
    args = ["table", "--profile", "smoke", "--attacks", "clean", "--defenses", "none", "iss-g",
            "--out-dir", str(tmp_path), "--no-progress"]
    assert cli.main(args) == 0
    table = pd.read_csv(tmp_path / "table-defenses-smoke.csv", index_col=0)
    assert list(table.columns) == ["none", "iss-g"] and list(table.index) == ["clean"]
    manifest = json.loads((tmp_path / "table-defenses-smoke-manifest.json").read_text())
    assert manifest["profile"] == "smoke" and manifest["seed"] == 0 and manifest["commit"]
    assert manifest["machine"]["cpu_count"] >= 1 and manifest["wall_time_s"] >= 0
    capsys.readouterr()
    assert cli.main(args + ["--figure"]) == 0  # second run: every cell comes from the cache
    runs = pd.read_csv(tmp_path / "table-defenses-smoke-runs.csv")
    assert runs["cached"].all()
    assert (tmp_path / "table-defenses-smoke.png").stat().st_size > 1000
    again = pd.read_csv(tmp_path / "table-defenses-smoke.csv", index_col=0)
    pd.testing.assert_frame_equal(table, again)


def test_grid_labels_per_attack_victim_settings_and_adds_their_clean_reference():
    from eclipse.experiments import clean_data, victim_run
    from eclipse.sweeps import accuracy_grid
    from eclipse.profiles import SMOKE

    profile = SMOKE.with_overrides(attack_victim={"urp": {"crop_padding": 0}},
                                   victim={"epochs": 1, "width": 8})
    grid = accuracy_grid(profile, ["clean", "urp"], ["none"], progress=False, log=None)
    rows = list(zip(grid["attack"], grid["setting"], grid["method"]))
    assert rows == [("clean", "", "none"), ("urp", "no crop", "none"), ("clean", "no crop", "none")]
    assert list(grid["row"]) == ["clean", "urp (no crop)", "clean (no crop)"]
    # the reference row is exactly the cached no-crop clean run
    sets = clean_data(profile)
    reference = victim_run(sets["train"], sets["eval"], profile, "none", progress=False, crop_padding=0)
    assert reference["cached"] and reference["config"]["crop_padding"] == 0
    assert reference["test_acc"] == grid.loc[2, "test_acc"]


def test_grid_reference_rows_can_be_left_out():
    from eclipse.sweeps import accuracy_grid
    from eclipse.profiles import SMOKE

    profile = SMOKE.with_overrides(attack_victim={"urp": {"crop_padding": 0}}, victim={"epochs": 1, "width": 8})
    grid = accuracy_grid(profile, ["clean", "urp"], ["none"], progress=False, log=None, reference_rows=False)
    assert list(grid["row"]) == ["clean", "urp (no crop)"]


def test_table_name_option_and_eclipse_manifest(tmp_path, capsys):
    args = ["table", "--profile", "smoke", "--attacks", "clean", "--defenses", "eclipse:B+C",
            "--name", "table-eclipse", "--out-dir", str(tmp_path), "--no-progress"]
    assert cli.main(args) == 0
    assert not (tmp_path / "table-defenses-smoke.csv").exists()
    table = pd.read_csv(tmp_path / "table-eclipse-smoke.csv", index_col=0)
    assert list(table.columns) == ["eclipse:B+C"] and list(table.index) == ["clean"]
    manifest = json.loads((tmp_path / "table-eclipse-smoke-manifest.json").read_text())
    assert manifest["eclipse"]["t_star"] == 10 and manifest["eclipse"]["gray_p"] == 0.4


def test_every_profile_grid_names_registered_attacks_methods_and_victims():
    """A grid entry that names no registered choice would fail hours into a cold run; fail here instead."""
    from eclipse.attacks import ATTACKS
    from eclipse.method import is_method
    from eclipse.profiles import PROFILES
    from eclipse.victims import VICTIMS

    for name in PROFILES.names():
        profile = PROFILES[name]
        for grid_name, grid in profile.grids.items():
            attacks = grid.get("attacks", [])
            attacks = [a for v in attacks.values() for a in v] if isinstance(attacks, dict) else attacks
            for attack in attacks:
                assert attack in ATTACKS, (name, grid_name, attack)
            for method_name in grid.get("methods", []) + grid.get("table3_methods", []):
                assert is_method(method_name), (name, grid_name, method_name)
            for arch in grid.get("archs", []) + [a for a in [grid.get("second_arch")] if a]:
                assert arch in VICTIMS, (name, grid_name, arch)
        for defense in profile.defense_params:
            assert is_method(defense), (name, defense)
    assert "table3_methods" in PROFILES["paper"].grid("main_results")
    assert PROFILES["paper"].grid("main_results")["methods"][-1] == "eclipse:A+B+C"


def test_table_arch_option_trains_that_victim_and_says_so(tmp_path, capsys):
    """`eclipse table --arch vgg19` (Table 1's second half) trains VGG-19 victims, records the arch in the
    manifest and draws the heatmap with the paper's VGG-19 values."""
    from eclipse.experiments import clean_data, victim_run
    from eclipse.profiles import SMOKE

    args = ["table", "--profile", "smoke", "--attacks", "clean", "--defenses", "none", "--arch", "vgg19",
            "--width", "8", "--name", "t-vgg", "--out-dir", str(tmp_path), "--no-progress", "--figure"]
    assert cli.main(args) == 0
    manifest = json.loads((tmp_path / "t-vgg-smoke-manifest.json").read_text())
    assert manifest["victim"]["arch"] == "vgg19" and manifest["victim"]["width"] == 8
    table = pd.read_csv(tmp_path / "t-vgg-smoke.csv", index_col=0)
    sets = clean_data(SMOKE)
    run = victim_run(sets["train"], sets["eval"], SMOKE, "none", progress=False, arch="vgg19", width=8)
    assert run["cached"] and run["config"]["arch"] == "vgg19"
    assert run["test_acc"] == table.loc["clean", "none"]
    assert (tmp_path / "t-vgg-smoke.png").stat().st_size > 1000

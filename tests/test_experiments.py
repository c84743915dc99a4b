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
    assert ((table.values >= 0) & (table.values <= 100)).all()
    manifest = json.loads((tmp_path / "table-defenses-smoke-manifest.json").read_text())
    assert manifest["profile"] == "smoke" and manifest["seed"] == 0 and manifest["commit"]
    assert manifest["machine"]["cpu_count"] >= 1 and manifest["wall_time_s"] >= 0
    capsys.readouterr()
    assert cli.main(args) == 0  # second run: every cell comes from the cache
    runs = pd.read_csv(tmp_path / "table-defenses-smoke-runs.csv")
    assert runs["cached"].all()
    again = pd.read_csv(tmp_path / "table-defenses-smoke.csv", index_col=0)
    pd.testing.assert_frame_equal(table, again)

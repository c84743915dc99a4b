"""README.md's generated blocks (results, supported methods, timings) must match figures/ and the package
registries: ``python scripts/readme_tables.py`` regenerates them, ``--check`` shows the diff."""
from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import pandas as pd
import pytest

REPO = Path(__file__).resolve().parents[1]


def _script():
    spec = importlib.util.spec_from_file_location("readme_tables", REPO / "scripts" / "readme_tables.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


readme_tables = _script()


def test_readme_matches_figures_and_registries():
    ok, diff = readme_tables.check(REPO / "README.md", REPO / "figures")
    assert ok, "README.md is stale; run `python scripts/readme_tables.py`:\n" + diff


@pytest.fixture()
def copy(tmp_path: Path) -> tuple[Path, Path]:
    """README.md and figures/ (CSVs and manifests only) copied to a temporary folder."""
    figures = tmp_path / "figures"
    figures.mkdir()
    for path in (REPO / "figures").iterdir():
        if path.suffix in (".csv", ".json", ".md"):
            shutil.copy(path, figures / path.name)
    readme = tmp_path / "README.md"
    shutil.copy(REPO / "README.md", readme)
    return readme, figures


def test_check_fails_when_a_csv_value_changes(copy):
    readme, figures = copy
    assert readme_tables.check(readme, figures)[0]
    csv = figures / "table1-main-results.csv"
    table = pd.read_csv(csv, index_col=0)
    column = [c for c in table.columns if c.startswith("eclipse")][0]
    old = table.loc["lsp", column]
    table.loc["lsp", column] = old + 3.0
    table.to_csv(csv)
    ok, diff = readme_tables.check(readme, figures)
    assert not ok
    assert f"{old + 3.0:.2f}" in diff and "-| LSP |" in diff

    # --check exits 1 and prints the diff; a rewrite makes it pass again, atomically and only inside the blocks.
    assert readme_tables.main(["--check", "--readme", str(readme), "--figures", str(figures)]) == 1
    before = readme.read_text()
    assert readme_tables.main(["--readme", str(readme), "--figures", str(figures)]) == 0
    assert readme_tables.check(readme, figures)[0]
    after = readme.read_text()
    outside = lambda text: readme_tables.BLOCK.sub("", text)  # noqa: E731
    assert outside(before) == outside(after) and before != after
    assert not list(readme.parent.glob(".README.md.*"))


def test_check_fails_when_a_generated_block_is_edited_by_hand(copy):
    readme, figures = copy
    text = readme.read_text()
    readme.write_text(text.replace("<!-- END generated:results -->", "| a hand-made row |\n<!-- END generated:results -->"))
    ok, diff = readme_tables.check(readme, figures)
    assert not ok and "hand-made row" in diff


def test_every_block_is_present_and_known():
    text = (REPO / "README.md").read_text()
    names = {m.group("name") for m in readme_tables.BLOCK.finditer(text)}
    assert names == set(readme_tables.GENERATORS)
    with pytest.raises(KeyError, match="lacks"):
        readme_tables.render(readme_tables.BLOCK.sub("", text))


def test_methods_list_every_registered_name():
    block = readme_tables.methods_block()
    for _, paths, _ in readme_tables.METHOD_SOURCES:
        source = next((s for s in map(readme_tables._resolve, paths) if s is not None), None)
        assert source is not None, paths
        for name in (source.names() if hasattr(source, "names") else list(source)):
            assert f"`{name}`" in block


def test_purifier_goals_follow_the_csv(copy):
    """The issue-18 goal verdicts are read off purifiers-long.csv: lifting the best one-step purifier's A+B+C cells
    to the best multi-step mean flips "not met" to "met"."""
    _, figures = copy
    csv = figures / "purifiers-long.csv"
    long = pd.read_csv(csv, index_col=0)
    mean = long[long["modules"] == "A+B+C"].groupby("purifier")["test_acc"].mean()
    nfe = long.groupby("purifier")["nfe"].first()
    best_multi = mean[nfe > 1].max()
    block = readme_tables.purifiers_block(figures)
    one_step = mean[nfe == 1].idxmax()
    verdict = "met" if best_multi - mean[one_step] <= 1 else "not met"
    assert f"**{verdict}**" in block
    rows = (long["purifier"] == one_step) & (long["modules"] == "A+B+C")
    long.loc[rows, "test_acc"] += best_multi - mean[one_step] + 0.5
    long.to_csv(csv)
    block = readme_tables.purifiers_block(figures)
    assert "**met**" in block and f"`{one_step}`" in block


def test_table1_defense_rows_follow_their_csvs(copy):
    """The Table 1 layout (defenses as rows) reads each row off its own CSV: lifting OP's cells above ECLIPSE's
    makes OP the best baseline "above ECLIPSE" in the reading, and the row's average is recomputed."""
    _, figures = copy
    block = readme_tables.results_block(figures)
    assert "| OP |" in block and "| UEraser |" in block
    csv = figures / "table1-defenses-quick.csv"
    table = pd.read_csv(csv, index_col=0)
    eclipse = pd.read_csv(figures / "table-eclipse-quick.csv", index_col=0)["eclipse:A+B+C"]
    for label in readme_tables.TABLE1_DEFENSE_AVG:
        table.loc[label, "op"] = eclipse[label] + 5.0
    table.to_csv(csv)
    block = readme_tables.results_block(figures)
    assert "The best baseline, OP, is 5.0 points above ECLIPSE" in block
    mean = sum(readme_tables._dec(eclipse[label] + 5.0) for label in readme_tables.TABLE1_DEFENSE_AVG) / 3
    op_row = next(line for line in block.splitlines() if line.startswith("| OP |"))
    assert f"| {readme_tables._f(float(mean))} |" in op_row


def test_table3_rows_follow_their_csvs_and_the_orderings_are_computed(copy):
    """Table 3 gathers one row per architecture from its own CSV; putting ISS-J above ECLIPSE on VGG-16 turns the
    ordering "ECLIPSE above ISS-J" into "does not hold", and the cost range is recomputed from the cells."""
    _, figures = copy
    paper = readme_tables._paper()
    clean = {"none": 70.0, "at": 60.0, "iss-j": 66.0, "eclipse:A+B+C": 68.0}
    pd.DataFrame([clean], index=pd.Index(["clean"], name="attack")).to_csv(figures / "table3-vgg16-quick.csv")
    text, note = readme_tables._table3_archs(figures, paper)
    row = next(line for line in text.splitlines() if line.startswith("| VGG-16 |"))
    assert "| 68.00 / 88.38 (-20.4) |" in row and "| 60.00 / 88.04 (-28.0) |" in row
    cells = readme_tables._table3_cells(figures)
    both = cells[["eclipse:A+B+C", "iss-j"]].dropna()
    assert "vgg16" in both.index
    assert f"ECLIPSE (A+B+C) above ISS-J on {len(both)} of {len(both)}" in note
    clean["iss-j"] = 69.0
    pd.DataFrame([clean], index=pd.Index(["clean"], name="attack")).to_csv(figures / "table3-vgg16-quick.csv")
    _, note = readme_tables._table3_archs(figures, paper)
    assert f"ECLIPSE (A+B+C) above ISS-J on {len(both) - 1} of {len(both)}" in note and "does not hold" in note
    cells = readme_tables._table3_cells(figures)
    costs = [readme_tables._dec(n) - readme_tables._dec(i) for n, i in zip(cells["none"], cells["iss-j"]) if i == i]
    assert min(costs) == readme_tables._dec(1.0)
    assert f"ISS-J {readme_tables._span(costs)} (paper" in note
    (figures / "table3-vgg16-quick.csv").unlink()
    _, note = readme_tables._table3_archs(figures, paper)
    assert "VGG-16" in note.split("Not run under `quick`:")[1]

"""The paper's numbers as transcribed in eclipse/paper.py agree with the averages the paper prints beside them,
and the side-by-side helpers put the paper's value in the same cell as ours, never an average over other poisons."""
from __future__ import annotations

import math

import pandas as pd
import pytest

from eclipse import paper

FULL_ROWS = [("Table 3", paper.TABLE3_CLEAN_ARCHS), ("Table 4", paper.TABLE4_ABLATION),
             ("Table 5", paper.TABLE5_BY_ATTACK), ("Table 6", paper.TABLE6_BY_ATTACK),
             ("Table 7", paper.TABLE7_BY_ATTACK), ("Table 1 VGG-19", paper.TABLE1_VGG19),
             ("Table 1 ResNet-18", paper.TABLE1_RESNET18.loc[["eclipse"]])]


@pytest.mark.parametrize("name,table", FULL_ROWS, ids=[n for n, _ in FULL_ROWS])
def test_every_row_averages_to_its_printed_avg(name, table):
    cells = table.drop(columns="AVG")
    # the paper rounds to 2 decimals: its AVG is within 0.005 (+ float slack) of the mean of its rounded cells
    assert ((cells.mean(axis=1) - table["AVG"]).abs() <= 0.0051).all(), (name, cells.mean(axis=1) - table["AVG"])


def test_default_rows_are_table4s_eclipse_row():
    abc = paper.TABLE4_ABLATION.loc["A+B+C"]
    for table, default in ((paper.TABLE5_BY_ATTACK, 4), (paper.TABLE6_BY_ATTACK, 0.04), (paper.TABLE7_BY_ATTACK, 100)):
        assert table.loc[default].equals(abc.rename(default))
    assert paper.TABLE1_RESNET18.loc["eclipse", paper.ATTACKS].equals(abc[paper.ATTACKS].rename("eclipse"))


def test_names_the_readme_generator_reads_keep_their_values():
    assert paper.TABLE3_CLEAN.to_dict() == {"none": 94.95, "AT": 89.57, "iss-j": 85.23, "eclipse": 90.43}
    assert paper.TABLE5_REPLICAS.to_dict() == {0: 82.70, 2: 83.28, 4: 83.82, 6: 83.60}
    assert paper.TABLE6_SPARSE_FRACTION.to_dict() == {0.02: 81.86, 0.04: 83.82, 0.06: 83.20, 0.08: 80.75}
    assert paper.TABLE7_T_STAR.to_dict() == {50: 79.77, 100: 83.82, 150: 81.63}
    assert paper.TABLE1_AVERAGES["eclipse"] == 83.82


def test_table1_cells_are_the_same_attack_and_method():
    ours = pd.DataFrame([[11.0, 64.7, 62.1], [25.6, 64.0, 71.0], [10.6, 69.5, 70.9], [1.0, 2.0, 3.0]],
                        index=["urp (no crop)", "lsp", "ar", "ops"], columns=["none", "iss-j", "eclipse:A+B+C"])
    ours.loc["AVG"] = ours.iloc[:3].mean()
    cells = paper.table1_cells(ours)
    assert cells.loc["urp (no crop)", "none"] == 16.80 and cells.loc["lsp", "eclipse:A+B+C"] == 84.58
    assert cells["iss-j"].isna().all() and cells.loc["ops"].isna().all()  # not legible / not in the paper
    assert math.isnan(cells.loc["AVG", "eclipse:A+B+C"])  # OPS has no paper value, so no paper AVG
    trio = ours.drop(index=["ops", "AVG"])
    three = paper.table1_cells(pd.concat([trio, trio.mean().to_frame("AVG").T]))
    assert three.loc["AVG", "eclipse:A+B+C"] == pytest.approx((86.98 + 84.58 + 87.32) / 3)
    assert three.loc["AVG", "none"] == pytest.approx((16.80 + 24.48 + 10.59) / 3)


def test_table4_and_sweep_cells_average_over_the_same_attacks():
    ours = pd.DataFrame({"urp (no crop)": [57.6, 53.1], "lsp": [59.1, 25.7]}, index=["A+B+C", "A"])
    ours["AVG"] = ours.mean(axis=1)
    cells = paper.table4_cells(ours)
    assert cells.loc["A", "AVG"] == pytest.approx((86.86 + 39.93) / 2)
    sweep = pd.DataFrame({"urp": [55.3, 57.2]}, index=pd.Index([1000, 2000], name="B"))
    sweep["AVG"] = sweep.mean(axis=1)
    cells = paper.sweep_cells(sweep, paper.TABLE6_BY_ATTACK, key=lambda b: b / paper.PAPER_N)
    assert list(cells["urp"]) == [84.70, 86.98] and list(cells["AVG"]) == [84.70, 86.98]
    table = paper.beside(sweep, cells, rename=str.upper)
    assert list(table.columns) == ["URP", "URP: paper", "AVG", "AVG: paper"]


def test_sweeps_label_the_papers_eight_poison_average():
    sweep = pd.DataFrame({"urp (no crop)": [55.9, 57.6]}, index=pd.Index([100, 200], name="t*"))
    table = paper.beside_sweep(sweep, paper.TABLE7_BY_ATTACK)
    assert list(table.columns) == ["urp (no crop)", "urp (no crop): paper", paper.EIGHT_POISONS]
    assert table.loc[100, "urp (no crop): paper"] == 86.98 and table.loc[100, paper.EIGHT_POISONS] == 83.82
    assert table.loc[200].isna().tolist() == [False, True, True]  # the paper has no t* = 200


def test_no_defense_row_of_table4_is_table1s_undefended_row():
    ours = pd.DataFrame({"urp": [13.9], "lsp": [25.6], "ops": [20.0]}, index=["no defense"])
    cells = paper.table4_cells(ours)
    assert cells.loc["no defense", "urp"] == 16.80 and cells.loc["no defense", "lsp"] == 24.48
    assert math.isnan(cells.loc["no defense", "ops"])

"""Regenerate the generated blocks of README.md from figures/ and the package registries.

Blocks sit between ``<!-- BEGIN generated:NAME -->`` and ``<!-- END generated:NAME -->``:

- ``results``: our measured numbers (figures/*.csv) beside the paper's (eclipse/paper.py), with the gap,
  and which quick effects stand out of the victim-seed spread (figures/quick-victim-seed-spread.csv);
- ``methods``: the supported attacks, defenses, samplers, victims, ECLIPSE modules and profiles, read
  from the package registries;
- ``purifiers``: notebook 08's purifier comparison (figures/purifiers-long.csv) and its goals;
- ``timings``: the notebooks' measured wall times (figures/manifest-quick-cold.json and
  figures/manifest-quick-warm-rerun.json).

    python scripts/readme_tables.py            # rewrite README.md in place (atomic)
    python scripts/readme_tables.py --check    # exit 1 and print a diff if README.md is stale
"""
from __future__ import annotations

import argparse
import difflib
import importlib
import inspect
import json
import math
import os
import re
import sys
import tempfile
from collections.abc import Mapping
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Callable

import pandas as pd

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
FIGURES = REPO / "figures"

BLOCK = re.compile(r"(<!-- BEGIN generated:(?P<name>[\w-]+) -->\n)(?P<body>.*?)(<!-- END generated:(?P=name) -->)",
                   re.DOTALL)

# Paper attack names for our CSV row labels ("urp (no crop)" -> URP).
PAPER_ATTACK = {"urp": "URP", "lsp": "LSP", "ar": "AR", "em": "EM", "rem": "REM", "tap": "TAP", "sep": "SEP",
                "efp": "EFP", "adp": "ADP"}
LABEL = {**PAPER_ATTACK, "ops": "OPS", "clean": "clean"}


# ----------------------------------------------------------------------------------------------- helpers
def _num(x) -> float | None:
    try:
        value = float(x)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(value) else value


def _dec(x) -> Decimal:
    """A float as the decimal it was written as (``64.725``, not ``64.72499...``)."""
    return Decimal(repr(float(x)))


def _f(x, digits: int = 2, sign: bool = False) -> str:
    """Round half up (accuracies are multiples of 1/80 %, so many end in 5), as a person would."""
    value = x if isinstance(x, Decimal) else _num(x)
    if value is None:
        return ""
    d = (value if isinstance(value, Decimal) else _dec(value)).quantize(Decimal(1).scaleb(-digits), ROUND_HALF_UP)
    text = f"{d:,.{digits}f}" if abs(d) >= 10_000 else f"{d:.{digits}f}"
    if text.lstrip("-").strip("0.") == "":
        text = text.lstrip("-")
    return ("+" + text if sign and not text.startswith("-") else text)


def _gap(ours, paper) -> str:
    return _f(_dec(ours) - _dec(paper), 1, sign=True)


def _cell(ours, paper=None, paper_note: str = "") -> str:
    """``ours / paper (gap)``; just ``ours`` where the paper has no number for the cell."""
    o, p = _num(ours), _num(paper)
    if o is None:
        return "-"
    if p is None:
        return _f(o) + (f" / {paper_note}" if paper_note else "")
    return f"{_f(o)} / {_f(p)} ({_gap(o, p)})"


def _base(label: str) -> str:
    """``"urp (no crop)"`` -> ``"urp"``."""
    return str(label).split(" (")[0].strip().lower()


def _setting(label: str) -> str:
    text = str(label)
    return text[text.index("(") + 1:text.rindex(")")] if "(" in text and text.endswith(")") else ""


def _row_label(label: str) -> str:
    base, setting = _base(label), _setting(label)
    name = LABEL.get(base, str(label))
    return f"{name} ({setting})" if setting else name


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _read(figures: Path, name: str, **kw) -> pd.DataFrame:
    return pd.read_csv(figures / name, **kw)


def _paper():
    from eclipse import paper
    return paper


# ----------------------------------------------------------------------------------------------- results
def _seed_spread(figures: Path) -> dict:
    df = _read(figures, "quick-victim-seed-spread.csv")
    seeds = [c for c in df.columns if c not in ("point", "spread")]
    spread = df["spread"].astype(float)
    return {"df": df, "seeds": seeds, "max": float(spread.max()), "min": float(spread.min()),
            "mean": float(spread.mean()), "n": len(df)}


def _verdict(effect: float, spread: dict) -> str:
    size = abs(effect)
    if size <= spread["max"]:
        return "within the spread"
    if size <= 2 * spread["max"]:
        return "at its edge"
    return "well above it"


def _paper_none(paper, label, key: str) -> float | None:
    """The paper's Table 1 "no defense" value for our attack row (where its text keeps it), else None."""
    table = getattr(paper, "TABLE1_RESNET18", None)
    if key != "none" or table is None:
        return None
    return _num(table.loc["none"].get(PAPER_ATTACK.get(_base(label))))


def _paper_eclipse(paper, label) -> float | None:
    """The paper's ECLIPSE (A+B+C) value for our attack row: Table 1's (the eight poisons, as Table 4's A+B+C
    row, and ADP)."""
    return _num(paper.TABLE1_RESNET18.loc["eclipse"].get(PAPER_ATTACK.get(_base(label))))


def _table1(figures: Path, paper, name: str = "table1-main-results.csv", clean: str | None = "table3-clean-accuracy.csv",
            ) -> tuple[str, dict]:
    t1 = _read(figures, name, index_col=0)
    own_clean = t1.loc["clean"] if "clean" in t1.index else None  # a table with its own clean reference row
    t1 = t1.drop(index="clean", errors="ignore")
    if not any(str(i).upper() == "AVG" for i in t1.index):
        t1.loc["AVG"] = t1.mean(skipna=False)  # a column missing a poison gets no average, not one over fewer
    eclipse_col = [c for c in t1.columns if c.startswith("eclipse")][0]
    cols = [("none", "none", "none")] + [(c, name, c) for c, name in (("iss-g", "ISS-G"), ("iss-j", "ISS-J"))
                                         if c in t1.columns] + [(eclipse_col, "ECLIPSE (A+B+C)", "eclipse")]
    rows, attacks = [], []
    for label, values in t1.iterrows():
        if str(label).upper() == "AVG":
            continue
        attacks.append(_base(label))
        cells = []
        for col, _, key in cols:
            ref = _paper_eclipse(paper, label) if key == "eclipse" else _paper_none(paper, label, key)
            cells.append(_cell(values[col], ref))
        rows.append([_row_label(label)] + cells)
    avg = t1.loc[[i for i in t1.index if str(i).upper() == "AVG"][0]]
    eclipse_refs = [_paper_eclipse(paper, a) for a in attacks]
    avg_cells = []
    for col, _, key in cols:
        nones = [_paper_none(paper, a, key) for a in attacks]
        if key == "eclipse" and all(v is not None for v in eclipse_refs):
            avg_cells.append(_cell(avg[col], float(sum(eclipse_refs) / len(eclipse_refs))))
        elif key == "none" and all(v is not None for v in nones):
            avg_cells.append(_cell(avg[col], float(sum(nones) / len(nones))))
        elif key in paper.TABLE1_AVERAGES:
            avg_cells.append(_cell(avg[col], None, f"~{paper.TABLE1_AVERAGES[key]:.0f} (8 poisons + ADP)"))
        else:
            avg_cells.append(_cell(avg[col]))
    rows.append([f"AVG ({', '.join(LABEL.get(a, a) for a in attacks)})"] + avg_cells)
    if own_clean is not None:
        rows.append(["clean"] + [_cell(own_clean[col], paper.TABLE3_CLEAN.get(key)) for col, _, key in cols])
    if clean is not None:
        t3 = _read(figures, clean, index_col=0)
        row = t3.iloc[0]
        rows.append([f"clean (Table 3, {t3.index[0]})"] + [_cell(row[col], paper.TABLE3_CLEAN.get(key))
                                                          for col, _, key in cols])
    text = _table(["attack"] + [name for _, name, _ in cols], rows)
    attack_rows = [i for i in t1.index if str(i).upper() != "AVG"]
    facts = {"gain": {_base(i): _dec(t1.loc[i, eclipse_col]) - _dec(t1.loc[i, "none"]) for i in attack_rows}}
    return text, facts


def _model_based_facts(figures: Path) -> str:
    """One sentence on the model-based table: each poison's drop below the clean victim, and what ECLIPSE and
    ISS-J give back."""
    t = _read(figures, "table1-model-based-quick.csv", index_col=0)
    eclipse_col = [c for c in t.columns if c.startswith("eclipse")][0]
    clean = t.loc["clean"]
    poisons = [i for i in t.index if i != "clean"]
    drops = ", ".join(f"{_row_label(i)} {_f(_dec(clean['none']) - _dec(t.loc[i, 'none']), 1)}" for i in poisons)
    back = ", ".join(f"{_row_label(i)} {_f(t.loc[i, eclipse_col], 2)} (ISS-J {_f(t.loc[i, 'iss-j'], 2)})" for i in poisons)
    text = (f"Undefended, each poison is this many points below the clean victim ({_f(clean['none'], 2)}): {drops}. "
            f"ECLIPSE (A+B+C) gives {back}; on clean data ECLIPSE {_f(clean[eclipse_col], 2)}, "
            f"ISS-J {_f(clean['iss-j'], 2)}.")
    if "efp" in poisons:
        paper = _paper()
        efp, ref = paper.TABLE1_RESNET18.loc["none", "EFP"], paper.TABLE3_CLEAN["none"]
        text += (f" EFP (EntF-push) is made against adversarial training: in the paper too it barely bites a "
                 f"standard victim (undefended {_f(efp, 2)} against clean {_f(ref, 2)}, "
                 f"{_f(_dec(ref) - _dec(efp), 1)} points down).")
    if "adp" in poisons and "em" in poisons:
        gain = {a: _dec(t.loc[a, eclipse_col]) - _dec(t.loc[a, "none"]) for a in ("adp", "em")}
        text += (f" ADP is EM's min-min through ECLIPSE's compensation: ECLIPSE gains {_f(gain['adp'], 1)} points over "
                 f"no defense on it, against {_f(gain['em'], 1)} on EM; the paper's ECLIPSE keeps "
                 f"{_f(_paper().TABLE1_RESNET18.loc['eclipse', 'ADP'], 2)} on ADP.")
    return text


def _defenses_table(figures: Path, paper) -> tuple[str, str]:
    defs = _read(figures, "table-defenses-quick.csv", index_col=0)
    ecl = _read(figures, "table-eclipse-quick.csv", index_col=0)
    ecl_col = ecl.columns[0]
    abc, bc = paper.TABLE4_ABLATION.loc["A+B+C"], paper.TABLE4_ABLATION.loc["B+C"]
    clean_paper = {"none": paper.TABLE3_CLEAN.get("none"), "iss-j": paper.TABLE3_CLEAN.get("iss-j")}
    header = ["attack", "none", "ISS-G", "ISS-J", "compensation B+C (p = 0.4)", "ECLIPSE A+B+C (quick defaults)"]
    rows = []
    for label, values in defs.iterrows():
        base = _base(label)
        pa = PAPER_ATTACK.get(base)
        paper_cell = {"none": clean_paper["none"] if label == "clean" else None,
                      "iss-g": None,
                      "iss-j": clean_paper["iss-j"] if label == "clean" else None,
                      "compensation": bc.get(pa) if pa else None}
        cells = [_cell(values.get(c), paper_cell[c]) if _num(values.get(c)) is not None else "-"
                 for c in ("none", "iss-g", "iss-j", "compensation")]
        if label in ecl.index:
            ref = abc.get(pa) if pa else (paper.TABLE3_CLEAN.get("eclipse") if label == "clean" else None)
            cells.append(_cell(ecl.loc[label, ecl_col], ref))
        else:
            cells.append("-")
        rows.append([_row_label(label)] + cells)
    # Reading aid, computed from the same cells.
    trio = [i for i in defs.index if _base(i) in ("urp", "lsp", "ar")]
    poisoned = [i for i in defs.index if _base(i) != "clean"]

    def clean_ref(i):
        no_crop = f"clean ({_setting(i)})"
        return defs.loc[no_crop, "none"] if _setting(i) and no_crop in defs.index else defs.loc["clean", "none"]

    drops = {i: _dec(ecl.loc[i, ecl_col]) - _dec(clean_ref(i)) for i in trio}
    bites = [_dec(clean_ref(i)) - _dec(defs.loc[i, "none"]) for i in poisoned]
    mean = lambda values: float(sum(values) / len(values))  # noqa: E731
    worst = max(abs(d) for d in drops.values())
    note = (f"Every poison bites ({_f(min(bites), 1)}-{_f(max(bites), 1)} points below its clean reference; URP's is "
            f"the no-crop clean victim). ECLIPSE brings URP, LSP and AR back to within {math.ceil(worst)} points of "
            f"it ({', '.join(f'{_row_label(i).split(chr(32) + chr(40))[0]} {_f(d, 1, sign=True)}' for i, d in drops.items())}) "
            f"at a clean cost of {_f(_dec(defs.loc['clean', 'none']) - _dec(ecl.loc['clean', ecl_col]), 1)} points, and "
            f"beats both image-shrinking baselines on average over URP/LSP/AR ({_f(mean(list(ecl.loc[trio, ecl_col])), 1)} vs "
            f"ISS-G {_f(mean(list(defs.loc[trio, 'iss-g'])), 1)} and ISS-J {_f(mean(list(defs.loc[trio, 'iss-j'])), 1)}). "
            f"OPS, a one-pixel unbounded change the paper did not test, survives ECLIPSE "
            f"({_f(ecl.loc['ops', ecl_col], 1)}%): a measured limitation.")
    return _table(header, rows), note


# Table 1's rows in the paper's order, each read from the quick CSV that holds it: (key, display name, [(csv, column)])
# -- the first CSV holding the cell wins. Rows not run under quick (cutout, mixup, cutmix, AVATAR) are left out.
TABLE1_DEFENSE_ROWS = [
    ("none", "none", [("table-defenses-quick.csv", "none")]),
    ("dp-sgd", "DP-SGD", [("table1-dp-sgd-quick.csv", "dp-sgd")]),
    ("iss-g", "ISS-G", [("table-defenses-quick.csv", "iss-g")]),
    ("ueraser", "UEraser", [("table1-defenses-quick.csv", "ueraser")]),
    ("op", "OP", [("table1-defenses-quick.csv", "op")]),
    ("at", "AT", [("table1-at-quick.csv", "at"), ("at-clean-quick.csv", "at")]),
    ("iss-j", "ISS-J", [("table-defenses-quick.csv", "iss-j")]),
    ("eclipse", "ECLIPSE (A+B+C)", [("table-eclipse-quick.csv", "eclipse:A+B+C")]),
]
TABLE1_DEFENSE_POISONS = ["urp (no crop)", "lsp", "ar", "ops"]
TABLE1_DEFENSE_AVG = ["urp (no crop)", "lsp", "ar"]   # the model-free poisons of the paper's Table 1


def _table1_defense_cells(figures: Path) -> pd.DataFrame:
    """Defense x attack accuracies (NaN where not run) gathered from the quick CSVs of ``TABLE1_DEFENSE_ROWS``."""
    rows = {}
    for key, _, sources in TABLE1_DEFENSE_ROWS:
        cells = {}
        for name, column in sources:
            if not (Path(figures) / name).exists():
                continue
            table = _read(figures, name, index_col=0)
            if column not in table.columns:
                continue
            for label in TABLE1_DEFENSE_POISONS + ["clean"]:
                if label not in cells and label in table.index and _num(table.loc[label, column]) is not None:
                    cells[label] = float(table.loc[label, column])
        rows[key] = cells
    return pd.DataFrame.from_dict(rows, orient="index").reindex(columns=TABLE1_DEFENSE_POISONS + ["clean"])


def _table1_defenses(figures: Path, paper) -> tuple[str, str]:
    """Table 1 laid out as the paper's (defenses as rows) over the model-free poisons, with the paper's value where
    our copy of its text keeps one, and a reading of it computed from the same cells."""
    cells = _table1_defense_cells(figures)
    header = ["defense"] + [_row_label(a) for a in TABLE1_DEFENSE_POISONS] + \
        [f"AVG ({', '.join(_row_label(a).split(' (')[0] for a in TABLE1_DEFENSE_AVG)})", "clean"]
    clean_key = {"none": "none", "at": "AT", "iss-j": "iss-j", "eclipse": "eclipse"}
    avg = {}
    rows = []
    for key, name, _ in TABLE1_DEFENSE_ROWS:
        values = cells.loc[key]
        if values.isna().all():
            continue
        row = [name]
        for label in TABLE1_DEFENSE_POISONS:
            ref = _paper_eclipse(paper, label) if key == "eclipse" else _paper_none(paper, label, key)
            row.append(_cell(values[label], ref))
        trio = [values[a] for a in TABLE1_DEFENSE_AVG]
        if all(_num(v) is not None for v in trio):
            avg[key] = float(sum(_dec(v) for v in trio) / len(trio))
        # the paper's averages: Table 1's AVG over the eight poisons and ADP (ECLIPSE; "no defense" as its text
        # keeps it) and the approximate AT and ISS-J averages its text states
        paper_avg = {"none": _num(paper.TABLE1_RESNET18.loc["none", "AVG"]), "at": paper.TABLE1_AVERAGES.get("AT"),
                     "iss-j": paper.TABLE1_AVERAGES.get("iss-j"),
                     "eclipse": _num(paper.TABLE1_RESNET18.loc["eclipse", "AVG"])}.get(key)
        stated = key in ("at", "iss-j")   # rounded in the paper's text
        row.append(_cell(avg.get(key), None, (f"~{paper_avg:.0f}" if stated else _f(paper_avg)) + " (8 poisons + ADP)"
                         if paper_avg else ""))
        ck = clean_key.get(key)
        row.append(_cell(values["clean"], paper.TABLE3_CLEAN.get(ck) if ck else None))
        rows.append(row)
    # Reading aid, computed from the same cells.
    names = {key: name for key, name, _ in TABLE1_DEFENSE_ROWS}
    ranked = sorted(avg, key=avg.get, reverse=True)
    parts = [f"Over URP, LSP and AR the rows run in full rank {', '.join(f'{names[k]} {_f(avg[k], 1)}' for k in ranked)}."]
    if "eclipse" in avg:
        runner = [k for k in ranked if k != "eclipse"]
        if runner:
            best = runner[0]
            gap = _dec(avg[best]) - _dec(avg["eclipse"])
            pa = paper.TABLE1_AVERAGES
            parts.append(f"The best baseline, {names[best]}, is {_f(abs(gap), 1)} points "
                         f"{'above' if gap > 0 else 'below'} ECLIPSE on average (the paper: only AT and ISS-J come "
                         f"close, ~{pa['AT']:.0f} and ~{pa['iss-j']:.0f} against ECLIPSE's {_f(paper.TABLE1_RESNET18.loc['eclipse', 'AVG'], 1)}). "
                         f"The victim-seed spread of `quick` is up to {_f(_seed_spread(figures)['max'], 1)} points.")
    own = {k: _dec(avg[k]) - _dec(cells.loc[k, "clean"]) for k in ranked if k != "none" and _num(cells.loc[k, "clean"]) is not None}
    if own:
        parts.append("Against each defense's own clean victim (the same defense on clean data) the average is "
                     f"{', '.join(f'{names[k]} {_f(d, 1, sign=True)}' for k, d in own.items())}: at this scale the "
                     "defenses that restore accuracy differ mostly in what they cost the clean victim.")
    not_run = [name for key, name, _ in TABLE1_DEFENSE_ROWS if cells.loc[key].isna().all()]
    if not_run:
        parts.append(f"Not run under `quick`: {', '.join(not_run)} (figures/README.md says why).")
    dp = cells.loc["dp-sgd"]
    ran = [a for a in TABLE1_DEFENSE_POISONS if _num(dp[a]) is not None]
    if ran and _num(dp["clean"]) is not None:
        deltas = {a: _dec(dp[a]) - _dec(cells.loc["none", a]) for a in ran}
        verdict = ("trains almost nothing at this scale (its clean victim is near chance), so it cannot help; the "
                   "paper reads it as barely helping" if _dec(dp["clean"]) < 20
                   else "barely helps, as the paper reads it" if max(deltas.values()) < 10
                   else "helps here, unlike the paper's reading that it barely does")
        parts.append(f"DP-SGD (run on {', '.join(_row_label(a) for a in ran)} and clean only) moves the poisoned victim "
                     f"by {', '.join(f'{_row_label(a)} {_f(d, 1, sign=True)}' for a, d in deltas.items())} points over "
                     f"no defense while the clean victim falls to {_f(dp['clean'], 1)}% "
                     f"({_f(_dec(dp['clean']) - _dec(cells.loc['none', 'clean']), 1, sign=True)}): it {verdict}.")
    at = cells.loc["at"]
    missing = [_row_label(a) for a in TABLE1_DEFENSE_POISONS if _num(at[a]) is None]
    if missing:
        parts.append(f"AT was run on {'clean data only' if len(missing) == len(TABLE1_DEFENSE_POISONS) else 'part of the poisons'}"
                     f" (not on {', '.join(missing)}).")
    if _num(cells.loc["eclipse", "ops"]) is not None:
        better = [names[k] for k in cells.index if k != "eclipse" and _num(cells.loc[k, "ops"]) is not None
                  and cells.loc[k, "ops"] > cells.loc["eclipse", "ops"]]
        if better:
            parts.append(f"On OPS (not in the paper) {', '.join(better)} beat ECLIPSE's {_f(cells.loc['eclipse', 'ops'], 1)}%.")
    return _table(header, rows), " ".join(parts)


# Table 3: clean accuracy by victim architecture. (arch, CSV, its row); each CSV's columns are method ids. ResNet-18
# comes from notebook 04 and the AT clean run, the others from `eclipse table --arch ARCH --attacks clean`.
TABLE3_SOURCES = [
    ("resnet18", "table3-clean-accuracy.csv", "resnet18"),
    ("resnet18", "at-clean-quick.csv", "clean"),
    ("resnet50", "table3-resnet50-quick.csv", "clean"),
    ("vgg16", "table3-vgg16-quick.csv", "clean"),
    ("vgg19", "table3-vgg19-quick.csv", "clean"),
    ("densenet121", "table3-densenet121-quick.csv", "clean"),
]
# (our column, header, the paper's Table 3 row)
TABLE3_METHODS = [("none", "none", "none"), ("at", "AT", "AT"), ("iss-j", "ISS-J", "iss-j"),
                  ("eclipse:A+B+C", "ECLIPSE (A+B+C)", "eclipse")]
ARCH_LABEL = {"resnet18": "ResNet-18", "resnet50": "ResNet-50", "vgg16": "VGG-16", "vgg19": "VGG-19",
              "densenet121": "DenseNet-121"}


def _span(values) -> str:
    """``"3.3"`` for one value (or equal ones), ``"3.3 to 5.6"`` for a range, one decimal."""
    low, high = _f(min(values), 1), _f(max(values), 1)
    return low if low == high else f"{low} to {high}"


def _table3_cells(figures: Path) -> pd.DataFrame:
    """Architecture x method clean accuracies (NaN where not run) gathered from ``TABLE3_SOURCES``."""
    cells: dict[str, dict[str, float]] = {}
    for arch, name, row in TABLE3_SOURCES:
        if not (Path(figures) / name).exists():
            continue
        table = _read(figures, name, index_col=0)
        if row not in table.index:
            continue
        for col, _, _ in TABLE3_METHODS:
            if col in table.columns and _num(table.loc[row, col]) is not None:
                cells.setdefault(arch, {}).setdefault(col, float(table.loc[row, col]))
    archs = [a for a in ARCH_LABEL if a in cells]
    return pd.DataFrame.from_dict(cells, orient="index").reindex(index=archs, columns=[c for c, _, _ in TABLE3_METHODS])


def _table3_archs(figures: Path, paper) -> tuple[str, str]:
    """Table 3 (clean accuracy, architectures as rows) with the paper's value beside ours, and which of its
    orderings (ECLIPSE above ISS-J and AT, AT above ISS-J) hold on the architectures run."""
    cells = _table3_cells(figures)
    theirs = paper.TABLE3_CLEAN_ARCHS
    rows = []
    for arch, values in cells.iterrows():
        rows.append([ARCH_LABEL[arch]] + [_cell(values[col], theirs.loc[key, arch]) for col, _, key in TABLE3_METHODS])
    if len(cells) == len(ARCH_LABEL):
        avg = [_cell(float(sum(_dec(v) for v in cells[col]) / len(cells)) if cells[col].notna().all() else None,
                     theirs.loc[key, "AVG"]) for col, _, key in TABLE3_METHODS]
        rows.append(["AVG"] + avg)
    text = _table(["victim"] + [name for _, name, _ in TABLE3_METHODS], rows)
    names = {col: name for col, name, _ in TABLE3_METHODS}
    key = {col: k for col, _, k in TABLE3_METHODS}
    costs = []
    for col in [c for c, _, _ in TABLE3_METHODS if c != "none"]:
        both = cells[["none", col]].dropna()
        if len(both):
            ours = [_dec(r["none"]) - _dec(r[col]) for _, r in both.iterrows()]
            paper_cost = [_dec(theirs.loc["none", a]) - _dec(theirs.loc[key[col], a]) for a in both.index]
            costs.append(f"{names[col]} {_span(ours)} (paper {_span(paper_cost)}; {len(both)} "
                         f"architecture{'s' if len(both) > 1 else ''})")
    parts = [f"What each defense costs the clean victim (none minus it, points): {'; '.join(costs)}."] if costs else []
    checks = []
    for a, b in (("eclipse:A+B+C", "iss-j"), ("eclipse:A+B+C", "at"), ("at", "iss-j")):
        both = cells[[a, b]].dropna()
        if not len(both):
            continue
        ours = int((both[a] > both[b]).sum())
        paper_n = int(sum(theirs.loc[key[a], x] > theirs.loc[key[b], x] for x in both.index))
        verdict = "holds" if ours == paper_n == len(both) else ("does not hold" if ours < paper_n else "differs")
        margins = [_dec(r[a]) - _dec(r[b]) for _, r in both.iterrows()]
        checks.append(f"{names[a]} above {names[b]} on {ours} of {len(both)} (the paper: {paper_n}; ours by "
                      f"{_span(margins)} points): {verdict}")
    if checks:
        parts.append("The paper's orderings on the same architectures: " + "; ".join(checks) + f". One victim seed per "
                     f"cell; the victim-seed spread of `quick` is up to {_f(_seed_spread(figures)['max'], 1)} points.")
    missing = [f"{names[col]} on {', '.join(ARCH_LABEL[a] for a in cells.index[cells[col].isna()])}"
               for col, _, _ in TABLE3_METHODS if cells[col].isna().any()]
    not_run = [ARCH_LABEL[a] for a in ARCH_LABEL if a not in cells.index]
    if missing or not_run:
        parts.append("Not run under `quick`: " + "; ".join(missing + ([", ".join(not_run)] if not_run else [])) +
                     " (figures/README.md says why).")
    return text, " ".join(parts)


def _table1_arch(figures: Path, paper, arch: str, name: str) -> str | None:
    """Table 1 on a second victim (``eclipse table --arch``), the paper's value for that victim beside ours (its
    Table 3 column for the clean row), and the average over the poisons run with the paper's over the same ones."""
    if not (Path(figures) / name).exists():
        return None
    table = _read(figures, name, index_col=0)
    theirs = paper.table1_cells(table, arch=arch)
    table3_key = {col: key for col, _, key in TABLE3_METHODS}

    def ref(label, col):
        if label != "clean":
            return theirs.loc[label, col]
        return paper.TABLE3_CLEAN_ARCHS.loc[table3_key[col], arch] if col in table3_key else None

    rows = [[_row_label(label)] + [_cell(table.loc[label, col], ref(label, col)) for col in table.columns]
            for label in table.index]
    poisons = [label for label in table.index if label != "clean"]
    if len(poisons) > 1:
        avg = []
        for col in table.columns:
            refs = [_num(theirs.loc[p, col]) for p in poisons]
            ours = sum(_dec(table.loc[p, col]) for p in poisons) / len(poisons)
            avg.append(_cell(float(ours), float(sum(refs) / len(refs)) if all(r is not None for r in refs) else None))
        rows.append([f"AVG ({', '.join(_row_label(p).split(' (')[0] for p in poisons)})"] + avg)
    header = {col: name for col, name, _ in TABLE3_METHODS}
    return _table(["attack"] + [header.get(col, col) for col in table.columns], rows)


def _ablation(figures: Path, name: str, paper, spread: dict | None) -> tuple[str, list[tuple]]:
    df = _read(figures, name, index_col=0)
    attacks = [c for c in df.columns if c != "AVG"]
    pap = paper.TABLE4_ABLATION
    header = ["modules"] + [_row_label(a) for a in attacks] + [f"AVG ({', '.join(LABEL.get(_base(a), a) for a in attacks)})"]
    rows = []
    for label, values in df.iterrows():
        row = [f"**{label}**" if label == "A+B+C" else str(label)]
        refs = []
        for a in attacks:
            ref = pap.loc[label, PAPER_ATTACK[_base(a)]] if label in pap.index and _base(a) in PAPER_ATTACK else None
            refs.append(ref)
            row.append(_cell(values[a], ref))
        avg_ref = float(sum(refs) / len(refs)) if refs and all(r is not None for r in refs) else None
        row.append(_cell(values["AVG"], avg_ref))
        rows.append(row)
    effects = []
    if "A+B+C" in df.index:
        for module in ("A", "B", "C"):
            if module in df.index:
                worst = min(attacks, key=lambda a: df.loc[module, a] - df.loc["A+B+C", a])
                ours = float(df.loc[module, worst] - df.loc["A+B+C", worst])
                pa = PAPER_ATTACK.get(_base(worst))
                ref = float(pap.loc[module, pa] - pap.loc["A+B+C", pa]) if pa else None
                effects.append((f"Table 4: {module} alone vs A+B+C on {LABEL.get(_base(worst))}", ours, ref, "", ""))
    text = _table(header, rows)
    if "A+B+C" in df.index:
        others = [i for i in df.index if i not in ("A+B+C", "no defense")]
        best_avg = max(df.index.drop("no defense", errors="ignore"), key=lambda i: df.loc[i, "AVG"])
        margin, row, col = max(((_dec(df.loc[i, a]) - _dec(df.loc["A+B+C", a]), i, a) for i in others for a in attacks))
        text += (f"\n\n{'A+B+C has the best average, as in the paper' if best_avg == 'A+B+C' else f'{best_avg} has the best average (the paper: A+B+C)'}; "
                 + (f"the best other row on a single attack beats it by at most {_f(margin, 1)} points "
                    f"({row} on {LABEL.get(_base(col), col)})." if margin > 0 else "no other row beats it on any attack."))
    return text, effects


def _sweep(figures: Path, name: str, key: str, column: str, title: str, paper_series=None,
           key_to_paper: Callable | None = None, fmt: Callable = lambda k: k if isinstance(k, str) else f"{k:g}") -> tuple[list[str], tuple]:
    """One hyper-parameter sweep: its table row and its effect (best minus worst setting, ours and the
    paper's over the settings both have)."""
    df = _read(figures, name)
    # the notebooks label a column with its victim setting ("urp (no crop)"); paper columns read "<label>: paper"
    column = next((c for c in df.columns if c == column or (_base(c) == column and ":" not in c)), column)
    ours = {k: float(v) for k, v in zip(df[key], df[column])}
    cells, common = [], {}
    for k, v in ours.items():
        ref = None
        if paper_series is not None:
            pk = float(key_to_paper(k) if key_to_paper else k)
            ref = next((float(val) for idx, val in paper_series.items() if math.isclose(float(idx), pk)), None)
            if ref is not None:
                common[k] = ref
        cells.append(f"{fmt(k)}: {_cell(v, ref)}")
    best = max(ours, key=ours.get)
    effect = _dec(max(ours.values())) - _dec(min(ours.values()))
    paper_effect = paper_best = None
    if len(common) >= 2:
        paper_effect = _dec(max(common.values())) - _dec(min(common.values()))
        paper_best = fmt(max(common, key=common.get))
    short = title.split(" (")[0]
    what = title[title.index("(") + 1:].split(",")[0] if "(" in title else "setting"
    row = [title, ", ".join(cells)]
    return row, (f"{short}: {what}, best minus worst", effect, paper_effect, fmt(best), paper_best or "")


def results_block(figures: Path = FIGURES) -> str:
    paper = _paper()
    spread = _seed_spread(figures)
    figures = Path(figures)
    out: list[str] = []
    out.append(
        "Test accuracy (%) on the 8,000 held-out CIFAR-10 test images, seed 0. **Ours are `quick` numbers: a "
        "CPU subset (10,000 training images, 5,000 in the sweeps) with a 1.19M-parameter denoiser trained 1,200 "
        "iterations and a width-16 ResNet-18 trained 20 epochs; the paper's are full CIFAR-10 with its 52.5M "
        "model trained 250K iterations and an 80-epoch ResNet-18. Gaps to the paper are expected at this scale;** "
        "what `quick` is meant to show is the paper's effects (which module fixes which poison, which settings "
        "win). Cells read `ours / paper (gap = ours - paper)`; a cell with one number has no paper value. The "
        "paper's Table 1 is partly garbled in our copy of its text: its \"no defense\" row keeps URP, LSP and AR "
        "(`eclipse/paper.py`); for ISS-J only its average over the eight poisons and ADP survives (marked "
        "\"8 poisons + ADP\").")
    out.append("")
    t1, facts = _table1(figures, paper)
    out.append("**Table 1 and Table 3** (notebook 04, 10,000-image victim; `figures/table1-main-results.csv`, "
               "`figures/table3-clean-accuracy.csv`; the paper's per-poison ECLIPSE values are its Table 4 A+B+C row):")
    out.append("")
    out.append(t1)
    out.append("")
    mb, mb_facts = _table1(figures, paper, "table1-model-based-quick.csv", clean=None)
    out.append("**Table 1, model-based poisons** (`eclipse table --profile quick`, the same victim and cells as "
               "notebook 04; `figures/table1-model-based-quick.csv`; each poison crafted on the 10,000 training "
               "images with the quick cuts of its recipe listed in `eclipse/profiles.py` and in the CSV's "
               "`-runs.csv`):")
    out.append("")
    out.append(mb)
    out.append("")
    out.append(_model_based_facts(figures))
    out.append("")
    dt, note = _defenses_table(figures, paper)
    out.append("**Every training-time defense** (`eclipse table --profile quick`, 10,000-image victim; "
               "`figures/table-defenses-quick.csv`, `figures/table-eclipse-quick.csv`; the compensation column "
               "was run at the paper's p = 0.4, the ECLIPSE column at the quick defaults t* = 200, p = 0.8, "
               "sigma = 0.05; the paper's compensation values are its Table 4 B+C row):")
    out.append("")
    out.append(dt)
    out.append("")
    out.append(note)
    out.append("")
    t1d, t1d_note = _table1_defenses(figures, paper)
    sources = sorted({name for _, _, srcs in TABLE1_DEFENSE_ROWS for name, _ in srcs if (figures / name).exists()})
    out.append("**Table 1 as the paper lays it out: every defense run under `quick` on the model-free poisons** "
               "(`eclipse table --profile quick`, 10,000-image victim, URP's without random crop; rows from "
               f"{', '.join(f'`figures/{name}`' for name in sources)}; the paper's per-cell values for these rows "
               "are lost in our copy of its text except \"no defense\" and ECLIPSE, so its averages are given where "
               "its text states them; cutout, mixup, cutmix and AVATAR were not run under `quick`):")
    out.append("")
    out.append(t1d)
    out.append("")
    out.append(t1d_note)
    out.append("")
    vgg = _table1_arch(figures, paper, "vgg19", "table1-vgg19-quick.csv")
    if vgg:
        out.append("**Table 1's VGG-19 half** (`eclipse table --profile quick --arch vgg19`, width 16 like the ResNet-18, "
                   "the same 10,000 images and purified sets; `figures/table1-vgg19-quick.csv`; the paper's VGG-19 "
                   "row for each cell where its text keeps one, Table 3's VGG-19 column for clean):")
        out.append("")
        out.append(vgg)
        out.append("")
    t3, t3_note = _table3_archs(figures, paper)
    out.append("**Table 3 across architectures: clean accuracy** (every victim width-scaled to 16 and trained 20 "
               "epochs on the same 10,000 images; ResNet-18 from notebook 04 and `figures/at-clean-quick.csv`, the "
               "others from `eclipse table --profile quick --arch ARCH --attacks clean`, "
               "`figures/table3-ARCH-quick.csv`):")
    out.append("")
    out.append(t3)
    out.append("")
    if t3_note:
        out.append(t3_note)
        out.append("")
    ab, effects = _ablation(figures, "table4-ablation.csv", paper, spread)
    out.append("**Table 4, ablation** (notebook 05, 5,000-image sweep victim; `figures/table4-ablation.csv`; "
               "A = diffusion purification, B = random grayscale, C = Gaussian noise; the paper's AVG here is "
               "over the same attacks):")
    out.append("")
    out.append(ab)
    out.append("")
    ab10, _ = _ablation(figures, "table4-ablation-10k-quick.csv", paper, None)
    out.append("Table 4 with the 10,000-image victim and AR as well (`figures/table4-ablation-10k-quick.csv`):")
    out.append("")
    out.append(ab10)
    out.append("")
    sweeps = [
        _sweep(figures, "fig3-enlargement.csv", "enlargement", "urp", "Fig. 3 (enlargement, URP, I = 300)"),
        _sweep(figures, "table5-replicas.csv", "M", "urp", "Table 5 (replicas M, URP, I = 300)", paper.TABLE5_BY_ATTACK["URP"]),
        _sweep(figures, "table6-sparse-size.csv", "B", "urp", "Table 6 (sparse set B, URP, I = 300)",
               paper.TABLE6_BY_ATTACK["URP"], key_to_paper=lambda b: float(b) / 50_000, fmt=lambda b: f"{int(b):,}"),
        _sweep(figures, "fig5a-iterations.csv", "I", "urp", "Fig. 5a (iterations I, URP)", fmt=lambda i: f"{int(i):,}"),
        _sweep(figures, "fig5b-p.csv", "p", "lsp", "Fig. 5b (grayscale p, LSP)"),
        _sweep(figures, "fig5c-sigma.csv", "sigma", "lsp", "Fig. 5c (noise sigma, LSP)"),
        _sweep(figures, "table7-t-star.csv", "t*", "urp", "Table 7 (t*, URP)", paper.TABLE7_BY_ATTACK["URP"]),
    ]
    out.append("**Sparse diffusion and hyper-parameters** (notebooks 02 and 06, 5,000-image sweep victim; "
               "`figures/fig3-enlargement.csv`, `table5-replicas.csv`, `table6-sparse-size.csv`, "
               "`fig5a-iterations.csv`, `fig5b-p.csv`, `fig5c-sigma.csv`, `table7-t-star.csv`). The paper's values "
               "for Tables 5-7 are its ECLIPSE accuracy on the same poison, URP (Table 6: B/N = 2% and 4% of 50,000 "
               "images); Fig. 3 and Fig. 5 are curves in the paper, without numbers to compare:")
    out.append("")
    out.append(_table(["sweep", "setting: ours / paper (gap)"], [row for row, _ in sweeps]))
    out.append("")
    df = spread["df"]
    seeds = spread["seeds"]
    out.append(
        f"**Victim-seed spread.** Retraining only the victim under seed {seeds[1]} on notebook 02's purified sets "
        f"(`python scripts/victim_seed_spread.py --seeds {' '.join(seeds)}`, `figures/quick-victim-seed-spread.csv`; "
        f"same poisons, diffusion models and purified sets) moves its {spread['n']} points by "
        f"{_f(spread['min'], 1)}-{_f(spread['max'], 1)} points (mean {_f(spread['mean'], 1)}); I/4, I/2, I = 300, "
        f"600, 1,200 iterations:")
    out.append("")
    rows = [[str(r["point"])] + [_f(r[s_]) for s_ in seeds] + [_f(r["spread"]), _f(sum(r[s_] for s_ in seeds) / len(seeds))]
            for r in df.to_dict("records")]
    out.append(_table(["point (URP)"] + [f"seed {s_}" for s_ in seeds] + ["spread", "mean"], rows))
    out.append("")
    out.append(f"Which `quick` effects stand out of that spread (\"well above\": more than twice its maximum, "
               f"{_f(2 * spread['max'], 1)} points; \"at its edge\": between one and two maxima). Sweep effects are "
               f"the best minus the worst setting, the paper's over the settings it shares with ours:")
    out.append("")
    gains = facts["gain"]
    all_effects = [("Table 1: ECLIPSE vs no defense, smallest gain over URP/LSP/AR", min(gains.values()), None, "", "")]
    all_effects += list(effects) + [e for _, e in sweeps]
    rows = [[name, _f(ours, 1, sign=True), "-" if ref is None else _f(ref, 1, sign=True),
             " / ".join(x for x in (best, pbest) if x) or "-", _verdict(float(ours), spread)]
            for name, ours, ref, best, pbest in all_effects]
    out.append(_table(["effect", "ours (points)", "paper (points)", "best setting: ours / paper",
                       f"vs victim-seed spread (max {_f(spread['max'], 1)})"], rows))
    out.append("")
    out.append(_extras(figures))
    return "\n".join(out) + "\n"


def _extras(figures: Path) -> str:
    lines = []
    res = _read(figures, "fig6-residual-energy.csv", index_col=0)
    col = [c for c in res.columns if "cosine" in c][0]
    lines.append("Residual poison after one-shot purification at t* = 200 (`figures/fig6-residual-energy.csv`, "
                 "cosine between the poison and what purification leaves): "
                 + ", ".join(f"{LABEL.get(i, i)} {_f(v)}" for i, v in res[col].items()) + ".")
    cal = _read(figures, "quick-calibration-sweep.csv")
    cal = cal[(cal["epochs"] == 20) & (cal["precision"] == "bf16") & (cal["label_smoothing"] == 0)
              & cal["attack_params"].isna()]
    parts = []
    for size, group in cal.groupby("train_size", sort=False):
        cells = ", ".join(f"{LABEL.get(r.attack, r.attack)}{'' if r.crop else ' (no crop)'} {_f(r.test_acc, 1)}"
                          for r in group.itertuples())
        parts.append(f"{int(size):,} images: {cells}")
    lines.append("Undefended quick victim, 20 epochs bf16 (`figures/quick-calibration-sweep.csv`): "
                 + "; ".join(parts) + ".")
    return "\n\n".join(lines) + "\n" if lines else ""


# ----------------------------------------------------------------------------------------------- methods
# (title, dotted paths tried in order, extra columns read from each entry)
METHOD_SOURCES = [
    ("Attacks", ["eclipse.attacks.ATTACKS", "eclipse.attacks.registry.ATTACKS"], ("family", "norm", "budget")),
    ("Training-time defenses", ["eclipse.defenses.DEFENSES", "eclipse.defenses.DEFENSE_NAMES"], ()),
    ("Purifying defenses", ["eclipse.method.PURIFYING_DEFENSES"], ()),
    ("Purification samplers", ["eclipse.diffusion.samplers.SAMPLERS"], ()),
    ("Victims", ["eclipse.victims.VICTIMS"], ()),
    ("ECLIPSE modules", ["eclipse.method.MODULES", "eclipse.experiments.MODULES"], ()),
    ("Profiles", ["eclipse.profiles.PROFILES"], ()),
]


def _resolve(path: str):
    module_name, attr = path.rsplit(".", 1)
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        if err.name and module_name.startswith(err.name):
            return None
        raise
    return getattr(module, attr, None)


def _own_doc(obj) -> str:
    """The first docstring line of a function or class defined in this package (never a builtin's doc)."""
    if (inspect.isfunction(obj) or inspect.isclass(obj)) and getattr(obj, "__module__", "").startswith("eclipse"):
        doc = inspect.getdoc(obj) or ""
        return doc.strip().splitlines()[0] if doc.strip() else ""
    return ""


def _entries(source) -> list[tuple[str, str, object]]:
    from eclipse.registry import Registry

    if isinstance(source, Registry):
        return [(n, source.description(n), source[n]) for n in source.names()]
    if isinstance(source, Mapping):
        out = []
        for name, entry in source.items():
            desc = getattr(entry, "description", None)
            out.append((str(name), desc if isinstance(desc, str) else _own_doc(entry), entry))
        return out
    return [(str(name), "", None) for name in source]


def _budget(entry) -> str:
    norm, budget = getattr(entry, "norm", None), _num(getattr(entry, "budget", None))
    if budget is None:
        return ""
    if norm == "linf" and abs(budget * 255 - round(budget * 255)) < 1e-6:
        return f"{round(budget * 255)}/255"
    if norm == "l0":
        return f"{budget:g} px"
    return f"{budget:g}"


def methods_block() -> str:
    out = []
    for title, paths, extra in METHOD_SOURCES:
        source = path = None
        for path in paths:
            source = _resolve(path)
            if source is not None:
                break
        if source is None:
            continue
        entries = _entries(source)
        where = path.rsplit(".", 1)
        out.append(f"**{title}** (`{where[0]}.{where[1]}`):")
        out.append("")
        if any(desc for _, desc, _ in entries) or extra:
            cols = [c for c in extra if any(getattr(e, c, None) is not None for _, _, e in entries)]
            rows = []
            for name, desc, entry in entries:
                vals = [(_budget(entry) if c == "budget" else str(getattr(entry, c, "") or "")) for c in cols]
                rows.append([f"`{name}`"] + vals + [desc.replace("|", "\\|")])
            out.append(_table(["name"] + cols + ["description"], rows))
        else:
            out.append(", ".join(f"`{name}`" for name, _, _ in entries))
        out.append("")
    return "\n".join(out)


# ----------------------------------------------------------------------------------------------- timings
NOTEBOOK_WORK = {
    "01-noise-assimilation": ("0", "0", "0", "includes decoding CIFAR-10 into the cache"),
    "02-sparse-diffusion": ("6 (5,000 images)", "6", "300 it x 4 variants + 1,200 it (one run, continued)",
                            "about 10 min of it shared the cores with tests"),
    "03-purification-gallery": ("0", "24 images", "0", ""),
    "04-main-results": ("12 (10,000 images)", "4", "0", "the last ~5 min shared the cores with tests"),
    "05-ablation": ("16 (5,000 images)", "1", "0", ""),
    "06-hyperparameters": ("6 (5,000 images)", "2", "0", ""),
    "07-residual-poisons": ("0", "1,000 images", "0", ""),
}


# What the measured cold run (manifest-quick-cold.json) covered, and what the grids gained after it: the
# timing table says so, so that its wall times are not read as today's.
COLD_RUN_POISONS = ("URP", "LSP", "AR", "OPS")
ADDED_SINCE_COLD_RUN = ("EM", "REM", "TAP", "SEP")


# Sampler benchmarks: (CSV, the compensation p it was run at; t* comes from the CSV's manifest).
SAMPLER_RUNS = [("quick-sampler-accuracy.csv", "p = 0.8"), ("quick-sampler-accuracy-t100-p04.csv", "p = 0.4")]


def _duration(seconds: float) -> str:
    seconds = float(seconds)
    whole = int(_dec(seconds).quantize(Decimal(1), ROUND_HALF_UP))
    if whole < 120:
        return f"{whole} s"
    minutes = int(_dec(seconds / 60).quantize(Decimal(1), ROUND_HALF_UP))
    if minutes < 90:
        return f"{whole:,} s ({minutes} min)"
    return f"{whole:,} s ({minutes // 60} h {minutes % 60} min)"


def timings_block(figures: Path = FIGURES) -> str:
    cold = json.loads((figures / "manifest-quick-cold.json").read_text())
    warm = json.loads((figures / "manifest-quick-warm-rerun.json").read_text())
    warm_s = {n["notebook"]: n["seconds"] for n in warm["notebooks"]}
    rows = []
    for nb in cold["notebooks"]:
        name = nb["notebook"]
        victims, purif, diff, note = NOTEBOOK_WORK.get(name, ("", "", "", ""))
        wall = _duration(nb["seconds"]) + (f"; {note}" if note else "")
        rows.append([f"`{name}`", victims, purif, diff, wall,
                     _duration(warm_s[name]) if name in warm_s else "-"])
    machine = cold.get("machine", {})
    victims = sum(int(NOTEBOOK_WORK.get(n["notebook"], ("0",))[0].split()[0]) for n in cold["notebooks"])
    rows.append(["total", str(victims), "", "",
                 _duration(cold["wall_time_s"]) + " (`figures/manifest-quick-cold.json`)",
                 _duration(warm["wall_time_s"]) + " (`figures/manifest-quick-warm-rerun.json`)"])
    finished = max(inv["finished"] for inv in cold.get("invocations", [{"finished": "?"}]))[:10]
    head = (f"`eclipse reproduce --profile quick` on {machine.get('cpu_count', '?')} CPU cores, no GPU "
            f"(one empty `ECLIPSE_CACHE`; torch {machine.get('torch', '?')}); the cached rerun rewrote every "
            f"figure byte for byte. Measured {finished} on the grids of that day ({', '.join(COLD_RUN_POISONS)} "
            f"only, notebook 08 not yet in it); today's grids add {', '.join(ADDED_SINCE_COLD_RUN)} (each crafted "
            f"once) and notebook 08, and a cold run of them has not been timed yet:")
    table = _table(["notebook", "new victims", "purifications", "diffusion training", "cold run (measured)",
                    "second run, cached"], rows)
    samplers = []
    for name, p_label in SAMPLER_RUNS:
        df = _read(figures, name)
        manifest = json.loads((figures / name.replace(".csv", "-manifest.json")).read_text())
        for r in df.to_dict("records"):
            samplers.append([f"`{r['sampler']}`", f"t* = {manifest.get('t_star', '?')}, {p_label}",
                             str(r["nfe_per_image"]), _f(r["img_per_s"], 1), f"{_f(r['purify_train_set_min'], 1)} min",
                             f"{LABEL.get(r['attack'], r['attack'])} {_f(r['eclipse_acc'])}", f"`figures/{name}`"])
    table += ("\n\nPurifying the 10,000 quick training images with the quick UNet (2 CPU cores; "
              "`benchmarks/sampler_accuracy.py`), and the ECLIPSE accuracy each gives:\n\n"
              + _table(["sampler", "setting", "network calls / image", "img/s", "10,000 images", "ECLIPSE (%)", "file"],
                       samplers))
    return head + "\n\n" + table + "\n"


# ----------------------------------------------------------------------------------------------- purifiers
def purifiers_block(figures: Path = FIGURES) -> str:
    """Notebook 08 under quick (figures/purifiers-long.csv): each purifier's A+B+C accuracy per poison beside
    the paper's ECLIPSE (Table 4), its means with A and A+B+C, and the issue-18 goals read off the same numbers."""
    paper = _paper()
    long = _read(figures, "purifiers-long.csv", index_col=0)
    attacks = list(dict.fromkeys(long["attack"]))
    purifiers = list(dict.fromkeys(long["purifier"]))
    acc = long.pivot_table(index="purifier", columns=["modules", "attack"], values="test_acc", sort=False)
    per = long.groupby("purifier", sort=False).agg(nfe=("nfe", "first"), lt=("label_transition", "mean"),
                                                   speed=("purify_s_per_10k", "first"))
    mean = {m: acc[m][attacks].mean(axis=1) for m in ("A", "A+B+C")}
    rows = [[f"`{p}`", str(int(per.loc[p, "nfe"]))] + [_f(acc.loc[p, ("A+B+C", a)]) for a in attacks]
            + [_f(mean["A"][p]), _f(mean["A+B+C"][p]), _f(per.loc[p, "lt"]), f"{per.loc[p, 'speed']:.0f}"]
            for p in purifiers]
    undefended = long.groupby("attack", sort=False)["undefended_acc"].first()
    rows.append(["no defense (the undefended victim)", "-"] + [_f(undefended[a]) for a in attacks]
                + [_f(undefended[attacks].mean())] * 2 + ["", ""])
    t4 = paper.TABLE4_ABLATION
    names = [paper.paper_attack(a) for a in attacks]
    rows.append(["paper ECLIPSE (Table 4, full scale)", "100"] + [_f(t4.loc["A+B+C", n]) for n in names]
                + [_f(t4.loc["A", names].mean()), _f(t4.loc["A+B+C", names].mean()), "", ""])
    header = (["purifier", "NFE"] + [f"{LABEL.get(a, a)} A+B+C" for a in attacks]
              + ["mean A", "mean A+B+C", "label transition", "purify s / 10,000"])
    one_step = [p for p in purifiers if per.loc[p, "nfe"] == 1]
    multi = [p for p in purifiers if per.loc[p, "nfe"] > 1]
    best1 = max(one_step, key=lambda p: mean["A+B+C"][p])
    bestk = max(multi, key=lambda p: mean["A+B+C"][p])
    gap = mean["A+B+C"][bestk] - mean["A+B+C"][best1]
    cal = _read(figures, "quick-calibration-sweep.csv")
    from eclipse.profiles import get_profile, sweep_profile
    size = int(sweep_profile(get_profile("quick")).train_size)
    clean = cal[(cal["attack"] == "clean") & (cal["train_size"] == size) & (cal["epochs"] == 20)]["test_acc"]
    clean_acc = float(clean.iloc[0])
    fragile = [a for a in ("urp", "ar", "tap") if a in attacks]
    reach = []
    for a in fragile:
        best = max(purifiers, key=lambda p: acc.loc[p, ("A", a)])
        below = clean_acc - acc.loc[best, ("A", a)]
        reach.append(f"{LABEL[a]} {'met' if below <= 10 else 'not met'}: best A alone {best} "
                     f"{_f(acc.loc[best, ('A', a)])}, {_f(below)} below")
    goals = (f"Goal \"a one-step purifier within 1 point of the best multi-step one (A+B+C, mean over the "
             f"poisons)\": **{'met' if gap <= 1 else 'not met'}**: `{best1}` {_f(mean['A+B+C'][best1])} against "
             f"`{bestk}` {_f(mean['A+B+C'][bestk])} ({_f(gap)} points). Goal \"module A alone within 10 points of "
             f"clean ({_f(clean_acc)}, the {size:,}-image sweep victim) on the fragile poisons\": " + "; ".join(reach)
             + (". AR is not in the quick grid: it does not poison the 5,000-image sweep victim." if "ar" not in attacks
                else "."))
    return (f"Mean test accuracy under `quick` ({size:,}-image victims, seed 0, one victim seed per cell; "
            f"`figures/purifiers-long.csv`, notebook `08-purifiers`):\n\n" + _table(header, rows) + "\n\n" + goals + "\n")


GENERATORS: dict[str, Callable[[Path], str]] = {
    "results": results_block,
    "methods": lambda figures: methods_block(),
    "timings": timings_block,
    "purifiers": purifiers_block,
}


# ----------------------------------------------------------------------------------------------- driver
def render(text: str, figures: Path = FIGURES) -> str:
    """``text`` with every generated block replaced by freshly generated content."""
    found = set()

    def replace(match: re.Match) -> str:
        name = match.group("name")
        if name not in GENERATORS:
            raise KeyError(f"README has an unknown generated block {name!r}; known: {', '.join(GENERATORS)}")
        found.add(name)
        body = GENERATORS[name](Path(figures)).rstrip("\n") + "\n"
        return match.group(1) + body + match.group(4)

    new = BLOCK.sub(replace, text)
    missing = set(GENERATORS) - found
    if missing:
        raise KeyError(f"README lacks the generated block(s) {', '.join(sorted(missing))}")
    return new


def check(readme: Path = README, figures: Path = FIGURES) -> tuple[bool, str]:
    """(up to date, unified diff from the README as it is to the README as it should be)."""
    current = Path(readme).read_text()
    wanted = render(current, figures)
    diff = "".join(difflib.unified_diff(current.splitlines(True), wanted.splitlines(True),
                                        fromfile=f"{readme} (as is)", tofile=f"{readme} (regenerated)"))
    return current == wanted, diff


def write(readme: Path = README, figures: Path = FIGURES) -> bool:
    """Rewrite ``readme`` atomically; True if it changed."""
    readme = Path(readme)
    current = readme.read_text()
    wanted = render(current, figures)
    if wanted == current:
        return False
    fd, tmp = tempfile.mkstemp(dir=readme.parent, prefix=f".{readme.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(wanted)
        os.chmod(tmp, readme.stat().st_mode & 0o777)
        os.replace(tmp, readme)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 and print the diff if README.md is stale")
    parser.add_argument("--readme", type=Path, default=README)
    parser.add_argument("--figures", type=Path, default=FIGURES)
    args = parser.parse_args(argv)
    if args.check:
        ok, diff = check(args.readme, args.figures)
        if not ok:
            sys.stdout.write(diff)
            print(f"\n{args.readme} is stale: run python scripts/readme_tables.py", file=sys.stderr)
            return 1
        print(f"{args.readme}: generated blocks up to date")
        return 0
    changed = write(args.readme, args.figures)
    print(f"{args.readme}: {'rewritten' if changed else 'already up to date'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The plan of a reproduction (eclipse.plan) against what the grids really compute on an empty cache."""
from __future__ import annotations

import collections

import pytest

from eclipse import plan as planning
from eclipse.artifacts import CACHE_LOG_ENV, read_cache_log


def _computed_by_kind(log) -> collections.Counter:
    return collections.Counter(e["artifact"].split("/", 1)[0] for e in read_cache_log(log) if not e["hit"])


def test_the_plan_lists_what_the_grids_compute(tmp_path, monkeypatch):
    """Notebooks 02 and 08 and a Table 1 grid with AVATAR, run for real under smoke on an empty cache: the
    artifacts they compute, kind by kind, are the ones the plan lists (diffusion runs continued, shared sets
    and victims counted once)."""
    from eclipse import sweeps
    from eclipse.profiles import get_profile

    monkeypatch.setenv("ECLIPSE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv(CACHE_LOG_ENV, str(tmp_path / "log.jsonl"))
    smoke = get_profile("smoke")
    sweeps.sparse_diffusion_sweeps(smoke)
    # four purifiers of different kinds: one-step, fine-tuned one-step, harvested rounds with a feature classifier,
    # masked regeneration
    purifiers = ["one_shot", "consistency", "elixir-2", "masked-2"]
    sweeps.purifier_comparison(smoke, purifiers=purifiers, log=None)
    sweeps.accuracy_grid(smoke, ["urp", "clean"], ["none", "avatar", "eclipse:A"], log=None)
    computed = _computed_by_kind(tmp_path / "log.jsonl")

    pl = planning.Planner(smoke)
    planning.NOTEBOOK_PLANS["02-sparse-diffusion"](pl, smoke)
    planning.NOTEBOOK_PLANS["08-purifiers"](pl, smoke, purifiers=purifiers)
    pl.accuracy_grid(smoke, ["urp", "clean"], ["none", "avatar", "eclipse:A"])
    planned = collections.Counter(t.kind for t in pl.tasks.values())
    assert planned == computed, (planned, computed)
    assert computed["diffusion"] >= 3 and computed["runs"] >= 10   # the check is not vacuous


def test_every_notebook_has_a_plan():
    from eclipse.reproduce import notebook_paths

    assert [p.stem for p in notebook_paths()] == planning.NOTEBOOK_PLANS.names()


def test_a_longer_diffusion_run_is_planned_as_its_continuation():
    from eclipse.profiles import get_profile

    quick = get_profile("quick")
    pl = planning.Planner(quick)
    for iterations in (300, 600, 1200):
        pl.diffusion(quick, iterations=iterations)
    assert [t.work for t in pl.tasks.values()] == [300, 300, 600]   # 600 continues 300, 1200 continues 600


def test_project_spreads_only_the_shared_tasks():
    def task(kind, seconds, sharded):
        return {"notebook": "n", "kind": kind, "label": "", "work": seconds, "unit": "s", "rate": "x",
                "stage": planning.STAGE[kind], "sharded": sharded, "seconds": seconds}

    import pandas as pd

    priced = pd.DataFrame([task("diffusion", 100.0, True), task("runs", 60.0, True), task("runs", 60.0, True),
                           task("runs", 30.0, False)])
    assert float(planning.project(priced, 1)["seconds"].sum()) == pytest.approx(250.0)
    # two devices: the diffusion stage 100, the two shared victims 60 side by side, the unshared one 30
    assert float(planning.project(priced, 2)["seconds"].sum()) == pytest.approx(190.0)
    assert planning.makespan([5, 4, 3, 3, 3], 2) == pytest.approx(10.0)   # longest first (the optimum is 9)


def test_price_leaves_an_unmeasured_rate_unpriced():
    from eclipse.profiles import get_profile

    tasks = planning.plan(get_profile("smoke"), ["05-ablation"])
    priced = planning.price(tasks, planning.Rates(unet_eval=1e3))
    assert priced.loc[priced["kind"] == "purified", "seconds"].notna().all()
    assert priced.loc[priced["kind"] == "runs", "seconds"].isna().all()


def test_the_cost_benchmark_prices_every_task(tmp_path):
    """benchmarks/reproduce_cost.py at smoke scale: every rate measured, every task priced, the CSV written."""
    import subprocess
    import sys

    import pandas as pd

    from pathlib import Path

    REPO = Path(__file__).resolve().parents[1]
    out = tmp_path / "cost.csv"
    run = subprocess.run([sys.executable, str(REPO / "benchmarks" / "reproduce_cost.py"), "--profile", "smoke",
                          "--notebooks", "05-ablation", "--devices", "1", "2", "--victim-images", "64",
                          "--csv", str(out)], capture_output=True, text=True, timeout=300, cwd=REPO)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "not measured" not in run.stdout and "unpriced" not in run.stdout, run.stdout
    priced = pd.read_csv(out)
    assert len(priced) > 0 and (priced["seconds"] > 0).all()

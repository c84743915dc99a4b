"""ECLIPSE end to end at smoke scale: sparse diffusion model, purification, compensation, caching."""
from __future__ import annotations

import torch

from eclipse.experiments import MODULES, clean_data, diffusion_model, eclipse_run, poisoned_set, purified_set
from eclipse.profiles import SMOKE


def test_smoke_defense_end_to_end_and_cache():
    sets = clean_data(SMOKE)
    poisoned = poisoned_set(sets["train"], "urp", SMOKE.seed)
    model, schedule, key = diffusion_model(SMOKE, sets["pool"], progress=False)
    purified = purified_set(poisoned, SMOKE, model, schedule, key, progress=False)
    assert purified.images.dtype == torch.uint8 and purified.images.shape == poisoned.images.shape
    assert torch.equal(purified.labels, poisoned.labels)  # order kept
    changed = (purified.images.int() - poisoned.images.int()).abs().float().mean()
    assert changed > 1.0  # noise to t* and back does change the pixels
    again = purified_set(poisoned, SMOKE, *diffusion_model(SMOKE, sets["pool"], progress=False), progress=False)
    assert torch.equal(again.images, purified.images)  # cached (and deterministic)
    result = eclipse_run(poisoned, sets["eval"], SMOKE, "A+B+C", purifier=(model, schedule, key), progress=False)
    assert result["defense"] == "compensation" and 0 <= result["test_acc"] <= 100
    rerun = eclipse_run(poisoned, sets["eval"], SMOKE, "A+B+C", purifier=(model, schedule, key), progress=False)
    assert rerun["cached"] and rerun["test_acc"] == result["test_acc"]


def test_modules_table_matches_paper_rows():
    assert set(MODULES) == {"A+B+C", "A", "B", "C", "A+B", "A+C", "B+C"}
    assert MODULES["A"] == (True, "none") and MODULES["B+C"] == (False, "compensation")

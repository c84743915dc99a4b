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


def test_longer_diffusion_run_continues_the_shorter_cached_one(tmp_path, monkeypatch):
    """Fig. 5a's iteration sweep trains once: I = 20 continues the cached I = 10 run and ends bit-identical
    to a straight 20-iteration run (constant learning rate, checkpointed generators)."""
    import json

    from eclipse.storage import cache_dir

    sets = clean_data(SMOKE)
    monkeypatch.setenv("ECLIPSE_CACHE", str(tmp_path / "grown"))
    short = diffusion_model(SMOKE, sets["pool"], progress=False, iterations=10)
    longer = diffusion_model(SMOKE, sets["pool"], progress=False, iterations=20)
    info = json.loads((cache_dir() / "diffusion" / longer[2] / "done.json").read_text())
    assert info["continued_from"] == short[2] and info["steps"] == 20
    other = diffusion_model(SMOKE, sets["pool"], progress=False, iterations=20, replicas=0)
    assert json.loads((cache_dir() / "diffusion" / other[2] / "done.json").read_text())["continued_from"] is None
    monkeypatch.setenv("ECLIPSE_CACHE", str(tmp_path / "straight"))
    straight = diffusion_model(SMOKE, sets["pool"], progress=False, iterations=20)
    assert straight[2] == longer[2]
    assert json.loads((cache_dir() / "diffusion" / straight[2] / "done.json").read_text())["continued_from"] is None
    for a, b in zip(longer[0].state_dict().values(), straight[0].state_dict().values()):
        assert torch.equal(a, b)

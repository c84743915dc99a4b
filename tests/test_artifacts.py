"""Cache identity: what keys an artifact, and that it changes when (and only when) the computation does."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from eclipse import artifacts
from eclipse.artifacts import ARTIFACT_CODE, artifact_key, code_identity, module_closure

PACKAGE = Path(artifacts.__file__).resolve().parent


@pytest.fixture()
def package_copy(tmp_path) -> Path:
    root = tmp_path / "eclipse"
    shutil.copytree(PACKAGE, root, ignore=shutil.ignore_patterns("__pycache__"))
    return root


def _keys(root: Path) -> dict[str, str]:
    return {kind: artifact_key(kind, {"x": 1}, root=root) for kind in ARTIFACT_CODE}


def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, f"{path.name} no longer holds {old!r}: update this test"
    path.write_text(text.replace(old, new, 1))


def _edit_unet_forward(root: Path) -> None:
    """Add one statement to ``UNetModel.forward`` in the package copy at ``root``."""
    unet = root / "diffusion" / "unet.py"
    text = unet.read_text()
    signature = "    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:\n"
    at = text.index(signature, text.index("class UNetModel")) + len(signature)
    unet.write_text(text[:at] + "        x = x * 1.0\n" + text[at:])


def test_docstring_and_comment_edits_keep_every_cache_identity(package_copy):
    before = _keys(package_copy)
    assert before == _keys(PACKAGE)  # a copy of the same code has the same identity
    unet = package_copy / "diffusion" / "unet.py"
    text = unet.read_text()
    first = text.index('"""') + 3
    unet.write_text(text[:first] + "An edited module docstring. " + text[first:])  # module docstring
    _edit(package_copy / "diffusion" / "train.py", "def train_diffusion(",
          "# a new comment line\ndef train_diffusion(")
    _edit(package_copy / "diffusion" / "schedule.py", '"""', '"""Reworded: ')
    assert _keys(package_copy) == before


def test_changing_the_unet_forward_changes_the_diffusion_identity(package_copy):
    before = _keys(package_copy)
    _edit_unet_forward(package_copy)
    after = _keys(package_copy)
    assert after["diffusion"] != before["diffusion"]
    assert after["poisons"] == before["poisons"] and after["runs"] == before["runs"]


def test_a_helper_outside_the_artifacts_folder_is_followed(package_copy):
    """URP draws its pattern with eclipse.seeding / eclipse.validation: those files are part of a poison's identity."""
    assert "eclipse.seeding" in module_closure(*ARTIFACT_CODE["poisons"]) or \
        "eclipse.validation" in module_closure(*ARTIFACT_CODE["poisons"])
    before = code_identity(*ARTIFACT_CODE["poisons"], root=package_copy)
    helper = "seeding.py" if "eclipse.seeding" in module_closure(*ARTIFACT_CODE["poisons"]) else "validation.py"
    with (package_copy / helper).open("a") as handle:
        handle.write("\n\nEXTRA = 1\n")
    assert code_identity(*ARTIFACT_CODE["poisons"], root=package_copy) != before


def test_cached_computes_once_and_indexes_readable_names(tmp_path, monkeypatch):
    import json

    monkeypatch.setenv("ECLIPSE_CACHE", str(tmp_path))
    calls = []

    def compute(path):
        calls.append(path)
        return {"v": 3}

    save = lambda value, path: path.write_text(json.dumps(value))  # noqa: E731
    load = lambda path: json.loads(path.read_text())  # noqa: E731
    first = artifacts.cached("poisons", {"attack": "urp", "seed": 0}, compute, load=load, save=save, label="urp",
                             suffix=".json")
    second = artifacts.cached("poisons", {"attack": "urp", "seed": 0}, compute, load=load, save=save, label="urp",
                              suffix=".json")
    other = artifacts.cached("poisons", {"attack": "urp", "seed": 1}, compute, load=load, save=save, label="urp",
                             suffix=".json")
    assert first[:2] == ({"v": 3}, False) and second[:2] == ({"v": 3}, True) and len(calls) == 2
    assert first[2] == second[2] != other[2] and first[2].name.startswith("urp-")
    index = json.loads((tmp_path / "poisons" / "index.json").read_text())
    assert {entry["path"] for entry in index.values()} == {first[2].name, other[2].name}
    assert {entry["seed"] for entry in index.values()} == {0, 1}
    with pytest.raises(ValueError, match="unknown artifact kind"):
        artifact_key("nope", {})


def test_a_poison_key_follows_its_own_attack_not_the_others(package_copy):
    """URP's key ignores the UNet (which ADP's surrogate is built from); ADP's follows it; runs of a ResNet too."""
    def keys(root):
        return {name: artifact_key("poisons", {"x": 1}, root=root, code=(f"eclipse.attacks.{name}",))
                for name in ("urp", "em", "adp")} | {"resnet run": artifact_key("runs", {"x": 1}, root=root,
                                                                                code=("eclipse.victims",))}
    before = keys(package_copy)
    _edit_unet_forward(package_copy)
    after = keys(package_copy)
    assert after["adp"] != before["adp"]
    assert all(after[k] == before[k] for k in ("urp", "em", "resnet run"))
    _edit(package_copy / "training.py", "def sgd_step(", "def _unused():\n    return 1\n\n\ndef sgd_step(")
    edited = keys(package_copy)
    assert edited["em"] != after["em"] and edited["urp"] == after["urp"]  # EM's surrogate trains with it


def test_cold_cost_counts_each_reused_artifact_once_through_what_it_was_made_from(tmp_path, monkeypatch):
    """An artifact computed inside another is charged once: the outer one's own time excludes it, and
    reusing both (the outer one and the inner one directly) costs their sum, not the inner twice."""
    import json
    import time

    monkeypatch.setenv("ECLIPSE_CACHE", str(tmp_path / "cache"))
    io = dict(load=lambda p: json.loads(p.read_text()), save=lambda v, p: p.write_text(json.dumps(v)), suffix=".json")

    def inner(path, tag="a"):
        return artifacts.cached("poisons", {"inner": tag}, lambda p: time.sleep(0.4) or {"v": 1}, **io)

    def outer(path):
        inner(path)
        time.sleep(0.6)
        return {"v": 2}

    _, hit, _ = artifacts.cached("runs", {"outer": 1}, outer, **io)
    assert not hit
    index = json.loads((tmp_path / "cache" / "runs" / "index.json").read_text())
    (entry,) = index.values()
    assert len(entry["used"]) == 1 and entry["used"][0].startswith("poisons/")
    assert 0.5 <= entry["own_seconds"] <= 0.9 and entry["seconds"] >= entry["own_seconds"] + 0.35

    log = tmp_path / "log.jsonl"
    monkeypatch.setenv(artifacts.CACHE_LOG_ENV, str(log))
    artifacts.cached("runs", {"outer": 1}, outer, **io)   # hit: the inner one is not even looked up
    inner(None)                                            # hit, directly
    inner(None, tag="b")                                   # computed now: in the wall time, not charged
    events = artifacts.read_cache_log(log)
    assert [e["hit"] for e in events] == [True, True, False]
    counted: set[str] = set()
    cost = artifacts.cold_cost(events, counted)
    assert cost["computed"] == 1 and cost["reused"] == 2 and cost["unrecorded"] == 0
    assert 0.9 <= cost["reused_make_s"] <= 1.3        # 0.4 + 0.6 once each (1.4 if the inner counted twice)
    again = artifacts.cold_cost(events, counted)     # a later notebook of the same run reusing the same ones
    assert again["reused"] == 0 and again["reused_make_s"] == 0

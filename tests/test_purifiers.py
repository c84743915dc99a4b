"""The related purifiers' diagnostics: DataElixir's label-transition rate."""
from __future__ import annotations

import pytest
import torch

from eclipse.diagnostics import label_transition_rate, predictions


class Shortcut(torch.nn.Module):
    """A model that learned a planted shortcut: the class is the brightest of the first ten pixels of row 0."""

    def forward(self, x):
        return x[:, 0, 0, :10]


def _shortcut_set(n: int = 50):
    images = torch.full((n, 3, 32, 32), 100, dtype=torch.uint8)
    labels = torch.arange(n) % 10
    images[torch.arange(n), 0, 0, labels] = 255
    return images, labels


def test_label_transition_rate_sees_a_removed_shortcut():
    images, labels = _shortcut_set()
    model = Shortcut()
    assert torch.equal(predictions(model, images, batch_size=7), labels)
    assert label_transition_rate(model, images, images.clone()) == 0.0       # a purifier that changed nothing
    removed = images.clone()
    removed[:, 0, 0, :10] = 100                       # shortcut gone: every prediction falls to class 0 (ties)
    assert label_transition_rate(model, images, removed) == pytest.approx(0.9)   # all but class 0's five
    half = images.clone()
    half[:25] = removed[:25]
    assert label_transition_rate(model, images, half) == pytest.approx(float((labels[:25] != 0).sum()) / 50)
    with pytest.raises(ValueError, match="same images"):
        label_transition_rate(model, images, images[:10])


# ----------------------------------------------------------------------------------------------- consistency
@pytest.fixture(scope="module")
def smoke_purifier():
    from eclipse.experiments import clean_data, diffusion_model
    from eclipse.profiles import SMOKE

    sets = clean_data(SMOKE)
    return SMOKE, sets, diffusion_model(SMOKE, sets["pool"], progress=False)


def _held_out_error(model, schedule, images, t_star: int) -> float:
    """Mean squared distance of the one-step x0 estimate to the clean image from x_t at t* (fixed noise)."""
    from eclipse.diffusion.consistency import one_step_x0
    from eclipse.diffusion.gaussian import forward_noise, to_model_range

    x0 = to_model_range(images)
    x_t = forward_noise(schedule, x0, t_star, torch.Generator().manual_seed(123))
    t = torch.full((len(x0),), t_star - 1, dtype=torch.long)
    with torch.no_grad():
        return float((one_step_x0(model, schedule, x_t, t, clip=True) - x0).square().mean())


def test_consistency_finetuning_lowers_its_loss_and_beats_one_shot_on_held_out_images(smoke_purifier):
    """Fine-tuned on the sparse set, the one-step purifier's x0 estimate is closer to the clean image than the
    base model's one-shot estimate on pool images it never saw (a measured property of the fine-tuning)."""
    import json

    from eclipse.data import sparse_set
    from eclipse.experiments import CONSISTENCY_PREFIX, consistency_purifier
    from eclipse.storage import cache_dir

    profile, sets, base = smoke_purifier
    profile = profile.with_overrides(consistency=dict(iterations=60, batch_size=16, lr=1e-4, ema_rate=0.9))
    tuned, schedule, key = consistency_purifier(profile, base, sets["pool"], progress=False)
    assert key.startswith(CONSISTENCY_PREFIX)
    info = json.loads((cache_dir() / "consistency" / key[len(CONSISTENCY_PREFIX):] / "done.json").read_text())
    assert info["steps"] == 60 and info["final_loss"] < info["first_loss"]
    sparse = sparse_set(sets["pool"], profile.sparse_size, profile.seed)
    seen = {bytes(x.numpy()) for x in sparse.images}
    held_out = torch.stack([x for x in sets["pool"].images if bytes(x.numpy()) not in seen][:64])
    assert len(held_out) == 64
    before = _held_out_error(base[0], schedule, held_out, profile.t_star)
    after = _held_out_error(tuned, schedule, held_out, profile.t_star)
    assert after < before, (before, after)
    again = consistency_purifier(profile, base, sets["pool"], progress=False)   # cached
    assert again[2] == key and all(torch.equal(a, b) for a, b in zip(again[0].state_dict().values(),
                                                                      tuned.state_dict().values()))


def test_consistency_finetuning_resumes_to_the_identical_weights(smoke_purifier, tmp_path):
    from eclipse.diffusion.consistency import ConsistencyConfig, finetune_consistency

    profile, sets, (model, schedule, _) = smoke_purifier
    images = sets["pool"].images[:40]
    cfg = ConsistencyConfig(iterations=8, batch_size=4, checkpoint_every=3)
    full, losses = finetune_consistency(model, schedule, images, cfg, t_star=10, out_dir=tmp_path / "a",
                                        progress=False)
    calls = {"n": 0}

    def crash(module, inputs):
        calls["n"] += 1
        if calls["n"] > 7:          # in step 8, after the checkpoint at step 6
            raise RuntimeError("simulated kill")
    handle = model.register_forward_pre_hook(crash)
    try:
        with pytest.raises(RuntimeError, match="simulated kill"):
            finetune_consistency(model, schedule, images, cfg, t_star=10, out_dir=tmp_path / "b", progress=False)
    finally:
        handle.remove()
    resumed, resumed_losses = finetune_consistency(model, schedule, images, cfg, t_star=10, out_dir=tmp_path / "b",
                                                   progress=False)
    assert resumed_losses == losses
    assert all(torch.equal(a, b) for a, b in zip(full.state_dict().values(), resumed.state_dict().values()))
    with pytest.raises(ValueError, match="other inputs"):
        finetune_consistency(model, schedule, images[:20], cfg, t_star=10, out_dir=tmp_path / "b", progress=False)


def test_the_consistency_sampler_refuses_the_base_weights(smoke_purifier):
    from eclipse.experiments import purified_set, purifier_for

    profile, sets, base = smoke_purifier
    with pytest.raises(ValueError, match="consistency-fine-tuned"):
        purified_set(sets["train"], profile, *base, sampler="consistency", progress=False)
    assert purifier_for(profile, "one_shot", base) is base

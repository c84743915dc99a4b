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
    same = purifier_for(profile, "one_shot", base)
    assert same.model is base[0] and same.schedule is base[1] and same.key == base[2] and same.features is None


def test_the_perceptual_term_pulls_the_one_step_estimate_towards_the_clean_features(smoke_purifier):
    """With ``perceptual`` > 0 the fine-tuning also minimises 1 - cos of the sparse classifier's features of the
    estimate and the clean image: on held-out pool images that feature distance ends lower than after the
    pixel-only fine-tuning of the same settings (a measured property), and the feature map is in the identity."""
    from eclipse.data import sparse_set
    from eclipse.diffusion.consistency import ConsistencyConfig, finetune_consistency, one_step_x0
    from eclipse.diffusion.gaussian import forward_noise, to_model_range
    from eclipse.experiments import consistency_purifier, sparse_features

    profile, sets, base = smoke_purifier
    settings = dict(iterations=60, batch_size=16, lr=1e-4, ema_rate=0.9)
    pixel = consistency_purifier(profile.with_overrides(consistency=settings), base, sets["pool"], progress=False)
    perceptual = consistency_purifier(profile.with_overrides(consistency={**settings, "perceptual": 1.0}), base,
                                      sets["pool"], progress=False)
    assert perceptual[2] != pixel[2]
    sparse = sparse_set(sets["pool"], profile.sparse_size, profile.seed)
    features = sparse_features(profile, sparse, progress=False)
    seen = {bytes(x.numpy()) for x in sparse.images}
    x0 = to_model_range(torch.stack([x for x in sets["pool"].images if bytes(x.numpy()) not in seen][:64]))
    x_t = forward_noise(base[1], x0, profile.t_star, torch.Generator().manual_seed(9))
    t = torch.full((len(x0),), profile.t_star - 1, dtype=torch.long)

    def feature_distance(model) -> float:
        with torch.no_grad():
            estimate = one_step_x0(model, base[1], x_t, t, clip=True)
        return float((1 - torch.nn.functional.cosine_similarity(features.fn(estimate), features.fn(x0))).mean())
    assert feature_distance(perceptual[0]) < feature_distance(pixel[0])
    with pytest.raises(ValueError, match="feature map"):
        finetune_consistency(base[0], base[1], sparse.images, ConsistencyConfig(iterations=1, perceptual=1.0),
                             t_star=10, out_dir="unused", progress=False)


# ----------------------------------------------------------------------------------------------- DataElixir choice
def test_ssim_is_one_on_identical_images_and_falls_with_noise():
    from eclipse.diffusion.selection import ssim

    gen = torch.Generator().manual_seed(0)
    x = torch.rand(4, 3, 32, 32, generator=gen) * 2 - 1
    assert torch.allclose(ssim(x, x), torch.ones(4), atol=1e-5)
    scores = [float(ssim(x, (x + s * torch.randn(x.shape, generator=gen)).clamp(-1, 1)).mean())
              for s in (0.05, 0.2, 0.8)]
    assert scores[0] > scores[1] > scores[2]
    with pytest.raises(ValueError, match="one shape"):
        ssim(x, x[:2])


def test_choose_at_quantile_keeps_the_candidate_of_that_rank_for_each_image():
    from eclipse.diffusion.selection import choose_at_quantile

    gen = torch.Generator().manual_seed(1)
    k, b = 7, 20
    candidates = torch.randn(k, b, 3, 4, 4, generator=gen)
    distance = torch.rand(k, b, generator=gen)
    chosen = choose_at_quantile(candidates, distance, 0.8)
    for i in range(b):
        j = next(j for j in range(k) if torch.equal(candidates[j, i], chosen[i]))
        assert int((distance[:, i] < distance[j, i]).sum()) == int(0.8 * k)     # 5 candidates are nearer
    assert torch.equal(choose_at_quantile(candidates, distance, 0.0), candidates[distance.argmin(0), torch.arange(b)])
    assert torch.equal(choose_at_quantile(candidates, distance, 1.0), candidates[distance.argmax(0), torch.arange(b)])
    with pytest.raises(ValueError, match="quantile"):
        choose_at_quantile(candidates, distance, 1.5)


def test_elixir_distance_grows_with_the_change_and_uses_the_features():
    from eclipse.diffusion.selection import elixir_distance

    gen = torch.Generator().manual_seed(2)
    x = torch.rand(5, 3, 32, 32, generator=gen) * 2 - 1
    near = (x + 0.05 * torch.randn(x.shape, generator=gen)).clamp(-1, 1)
    far = (x + 0.5 * torch.randn(x.shape, generator=gen)).clamp(-1, 1)
    d = elixir_distance(torch.stack([x, near, far]), x)
    assert d.shape == (3, 5) and torch.all(d[0] < 1e-5) and torch.all(d[1] < d[2])
    # a feature map that sees only the mean colour: a colour shift moves the feature term, not only pixels
    colour = lambda images: images.mean(dim=(2, 3)) + 1.0     # noqa: E731  (positive, so cosines differ)
    shifted = x.clone()
    shifted[:, 0] = -1
    pixel_only = elixir_distance(torch.stack([shifted]), x)
    with_features = elixir_distance(torch.stack([shifted]), x, colour)
    assert torch.all(with_features != pixel_only)


def test_elixir_picks_among_every_steps_x0_prediction_at_the_quantile(tmp_path):
    """The elixir sampler harvests the x0 prediction of every step of its chained respaced rounds (K = 4 a round)
    and returns, per image, the candidate whose distance to the input ranks floor(0.8 K): not the last round's
    output (the defect it had: one candidate a round made rank floor(0.8 K) the farthest, the chained result),
    and a feature map can change the choice."""
    from eclipse.diffusion import samplers as S
    from eclipse.diffusion.gaussian import forward_noise
    from eclipse.diffusion.schedule import make_schedule
    from eclipse.diffusion.selection import elixir_distance
    from eclipse.diffusion.unet import UNetConfig, build_unet

    torch.manual_seed(0)
    model = build_unet(UNetConfig(num_channels=32, num_res_blocks=1, attention_resolutions="16",
                                  channel_mult=(1, 2))).eval()
    schedule = make_schedule("cosine", 4000)
    gen = torch.Generator().manual_seed(3)
    x0 = torch.rand(6, 3, 32, 32, generator=gen) * 2 - 1
    x_t = forward_noise(schedule, x0, 40, torch.Generator().manual_seed(4))
    states = []
    out = S.elixir(model, schedule, x_t, 39, torch.Generator().manual_seed(5),
                   S.SamplerOptions(steps=2, x0=x0, callback=lambda s: states.append(s)))
    k = 2 * S.ELIXIR_ROUND_STEPS
    assert len(states) == k == S.network_evaluations("elixir", 40, 2)
    stacked = torch.stack([s["pred_xstart"] for s in states])
    d = elixir_distance(stacked, x0)
    for i in range(len(x0)):
        j = [j for j in range(k) if torch.equal(stacked[j, i], out[i])]
        assert j and int((d[:, i] < d[j[0], i]).sum()) == int(0.8 * k)
    assert not torch.equal(out, states[-1]["x"])     # the last round's output: what chained would return
    features = lambda images: images.flatten(1)[:, :64] + 2.0     # noqa: E731
    with_features = S.elixir(model, schedule, x_t, 39, torch.Generator().manual_seed(5),
                             S.SamplerOptions(steps=2, x0=x0, features=features))
    assert all(any(torch.equal(stacked[j, i], with_features[i]) for j in range(k)) for i in range(len(x0)))
    with pytest.raises(ValueError, match="options.x0"):
        S.elixir(model, schedule, x_t, 39, None, S.SamplerOptions(steps=2))


def test_elixir_purification_uses_the_sparse_classifier_features(smoke_purifier):
    """Through the pipeline: ``purifier_for`` gives elixir the features of a classifier trained on the sparse
    set (pooled features of a trained network), and ``purified_set`` refuses elixir without them."""
    from eclipse.experiments import purified_set, purifier_for

    profile, sets, base = smoke_purifier
    data = sets["train"].subset(torch.arange(20))
    with pytest.raises(ValueError, match="features"):
        purified_set(data, profile, *base, sampler="elixir", steps=3, progress=False)
    purifier = purifier_for(profile, "elixir", base, sets["pool"], progress=False)
    assert purifier.features is not None and purifier.features.key.startswith("sparse-classifier-")
    feats = purifier.features.fn(data.images[:4].float() / 127.5 - 1)
    assert feats.shape[0] == 4 and feats.dim() == 2 and torch.isfinite(feats).all()
    out = purified_set(data, profile, *purifier, sampler="elixir", steps=3, progress=False)
    assert out.images.shape == data.images.shape and out.images.dtype == torch.uint8
    assert not torch.equal(out.images, data.images)


def test_purifier_for_passes_on_what_it_was_given():
    """A purifier already fine-tuned, or already carrying its feature map, needs no clean images again (the
    ECLIPSE pipeline calls ``purifier_for`` once more on what the comparison grid built); a sampler that does not
    choose among candidates gets no feature map (its cache key stays that of the plain purification)."""
    from eclipse.diffusion.selection import FeatureMap
    from eclipse.experiments import CONSISTENCY_PREFIX, Purifier, purifier_for
    from eclipse.profiles import SMOKE

    model, schedule = torch.nn.Identity(), object()
    tuned = purifier_for(SMOKE, "consistency", (model, schedule, CONSISTENCY_PREFIX + "abc"))
    assert tuned.model is model and tuned.key == CONSISTENCY_PREFIX + "abc" and tuned.features is None
    features = FeatureMap(lambda x: x.flatten(1), "sparse-classifier-xyz")
    chosen = purifier_for(SMOKE, "elixir", Purifier(model, schedule, "base", features))
    assert chosen.features is features and chosen.key == "base"
    assert purifier_for(SMOKE, "one_shot", Purifier(model, schedule, "base", features)).features is None
    with pytest.raises(ValueError, match="clean images"):
        purifier_for(SMOKE, "elixir", (model, schedule, "base"))

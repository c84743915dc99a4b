"""`eclipse defend` / `purify` / `cache` as a user runs them: own data, official-format checkpoint, devices,
contradictory arguments, a sampler registered from outside the package."""
from __future__ import annotations

import json

import pytest
import torch

from eclipse import cli, data
from eclipse.diffusion import samplers as S
from eclipse.diffusion.checkpoints import load_model_and_schedule
from eclipse.profiles import SMOKE
from eclipse.purify import purify

from test_diffusion_conformance import TINY
from test_purify_cli import TINY_YAML

needs_reference = pytest.mark.skipif(not TINY.exists(), reason=f"conformance reference not found at {TINY}")


@pytest.fixture()
def official(tmp_path):
    """An improved-diffusion-format EMA checkpoint (a plain state dict) and its official-style YAML."""
    ref = torch.load(TINY, weights_only=True)
    checkpoint = tmp_path / "ema_0.9999_000000.pt"
    torch.save(ref["state_dict"], checkpoint)
    (tmp_path / "cifar10.yml").write_text(TINY_YAML)
    return checkpoint, tmp_path / "cifar10.yml"


@needs_reference
def test_defend_no_train_with_an_official_checkpoint_writes_the_purified_set(random_set, official, tmp_path, capsys):
    checkpoint, config = official
    source = data.save_images(random_set, tmp_path / "mine.pkl")
    out = tmp_path / "purified.npz"
    code = cli.main(["defend", "--profile", "smoke", "--dataset", str(source), "--checkpoint", str(checkpoint),
                     "--config", str(config), "--out", str(out), "--no-train", "--device", "cpu"])
    assert code == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["purified_set"] == str(out) and "test_acc" not in summary and summary["wall_time_s"] >= 0
    assert summary["t_star"] == SMOKE.t_star and summary["device"] == "cpu"
    purified = data.load_images(out)
    assert torch.equal(purified.labels, random_set.labels)  # order kept
    model, schedule = load_model_and_schedule(checkpoint, config)
    expected = purify(random_set.images, model, schedule, t_star=SMOKE.t_star, sampler=SMOKE.sampler, seed=SMOKE.seed,
                      batch_size=SMOKE.purify_batch_size, progress=False)
    assert torch.equal(purified.images, expected)  # exactly the profile's purification
    assert not torch.equal(purified.images, random_set.images)


@needs_reference
def test_defend_writes_a_png_image_folder(random_set, official, tmp_path, capsys):
    checkpoint, config = official
    source = data.save_images(random_set, tmp_path / "mine.npz")
    folder = tmp_path / "purified-folder"
    assert cli.main(["defend", "--profile", "smoke", "--dataset", str(source), "--checkpoint", str(checkpoint),
                     "--config", str(config), "--out", str(folder), "--no-train", "--t-star", "3"]) == 0
    back = data.load_images(folder)
    npz = tmp_path / "p.npz"
    assert cli.main(["defend", "--profile", "smoke", "--dataset", str(source), "--checkpoint", str(checkpoint),
                     "--config", str(config), "--out", str(npz), "--no-train", "--t-star", "3"]) == 0
    reference = data.load_images(npz)
    assert sorted(back.labels.tolist()) == sorted(reference.labels.tolist())
    for k in range(10):  # same images per class (PNG is lossless)
        a = back.images[back.labels == k].flatten(1).tolist()
        b = reference.images[reference.labels == k].flatten(1).tolist()
        assert sorted(a) == sorted(b)


@needs_reference
def test_defend_passes_device_cuda_through(random_set, official, tmp_path, monkeypatch, capsys):
    """On a machine without a GPU, pretend one exists: the checkpoint is loaded for and moved to cuda."""
    import eclipse.diffusion.checkpoints as C

    checkpoint, config = official
    source = data.save_images(random_set, tmp_path / "mine.pkl")
    seen = []
    real_load = C.load_model_and_schedule

    def fake_load(path, cfg=None, *, use_ema=True, device="cpu"):
        seen.append(("load", str(device)))
        model, schedule = real_load(path, cfg, use_ema=use_ema, device="cpu")
        model.to = lambda device, *a, **k: (seen.append(("to", str(device))), model)[1]
        return model, schedule

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(C, "load_model_and_schedule", fake_load)
    assert cli.main(["defend", "--profile", "smoke", "--dataset", str(source), "--checkpoint", str(checkpoint),
                     "--config", str(config), "--out", str(tmp_path / "p.npz"), "--no-train", "--device", "cuda"]) == 0
    assert ("load", "cuda") in seen and ("to", "cuda") in seen
    assert json.loads(capsys.readouterr().out)["device"] == "cuda"
    from eclipse import seeding

    assert seeding._DEVICE is None  # --device holds for the one command only


def test_device_cuda_without_a_gpu_is_a_clear_error(random_set, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    source = data.save_images(random_set, tmp_path / "mine.pkl")
    assert cli.main(["defend", "--profile", "smoke", "--dataset", str(source), "--no-train", "--device", "cuda"]) == 2
    assert "no CUDA GPU" in capsys.readouterr().err


@pytest.mark.parametrize("extra, message", [
    (["--attack", "urp"], "not both"),
    (["--sparse-set", "X.npz", "--checkpoint", "C.pt"], "not both"),
    (["--config", "cifar10.yml"], "give the checkpoint too"),
    (["--t-star", "0"], "--t-star: expected a whole number >= 1"),
    (["--gray-p", "1.5"], "--gray-p: expected a number in [0, 1]"),
    (["--modules", "B+C", "--out", "x.npz"], "do not purify"),
])
def test_contradictory_arguments_are_errors(random_set, tmp_path, capsys, extra, message):
    source = data.save_images(random_set, tmp_path / "mine.pkl")
    try:
        code = cli.main(["defend", "--profile", "smoke", "--dataset", str(source), "--no-train", *extra])
    except SystemExit as exit_:  # argparse's own checks (types, ranges)
        code = exit_.code
    assert code == 2 and message in capsys.readouterr().err


@needs_reference
def test_a_sampler_registered_in_a_test_runs_from_the_cli(random_set, official, tmp_path):
    calls = []

    @S.register_sampler("toy", nfe=lambda t_star, steps: 0, description="returns x_t clipped (test only)")
    def toy(model, schedule, x_t, t_start, generator=None, options=None):
        calls.append(t_start)
        return x_t.clamp(-1, 1)

    try:
        checkpoint, config = official
        source = data.save_images(random_set, tmp_path / "in.pkl")
        assert cli.main(["purify", "--checkpoint", str(checkpoint), "--config", str(config), "--input", str(source),
                         "--out", str(tmp_path / "out.npz"), "--sampler", "toy", "--t-star", "5"]) == 0
        assert calls == [4] and S.network_evaluations("toy", 5) == 0
        assert data.load_images(tmp_path / "out.npz").images.shape == random_set.images.shape
    finally:
        S.SAMPLERS.unregister("toy")
    assert "toy" not in S.SAMPLERS


def test_version_and_cache_commands(tmp_path, monkeypatch, capsys):
    from eclipse import __version__
    from eclipse.experiments import poisoned_set

    with pytest.raises(SystemExit):
        cli.main(["--version"])
    assert __version__ in capsys.readouterr().out
    monkeypatch.setenv("ECLIPSE_CACHE", str(tmp_path / "cache"))
    clean = data.ImageSet(torch.zeros(20, 3, 32, 32, dtype=torch.uint8), torch.arange(20) % 10)
    poisoned_set(clean, "urp", 0)
    assert cli.main(["cache", "ls"]) == 0
    listing = capsys.readouterr().out
    assert "poisons/ (1 entry)" in listing and "urp-" in listing  # named by attack, beside its hash
    assert cli.main(["cache", "du"]) == 0 and "poisons" in capsys.readouterr().out
    assert cli.main(["cache", "clean", "--kind", "poisons"]) == 1  # refuses without --yes
    assert (tmp_path / "cache" / "poisons").exists()
    assert cli.main(["cache", "clean", "--kind", "poisons", "--yes"]) == 0
    assert not (tmp_path / "cache" / "poisons").exists()


def test_defend_with_the_consistency_sampler_purifies_with_the_fine_tuned_weights(random_set, tmp_path, capsys):
    """`--sampler consistency` fine-tunes the model trained on --sparse-set into the one-step purifier (cached)
    and purifies with it: the same one network call as `one_shot`, other weights, so other pixels."""
    source = data.save_images(random_set, tmp_path / "mine.pkl")
    sparse = data.save_images(random_set, tmp_path / "sparse.npz")
    outs = {}
    for sampler in ("one_shot", "consistency"):
        outs[sampler] = tmp_path / f"{sampler}.npz"
        assert cli.main(["defend", "--profile", "smoke", "--dataset", str(source), "--sparse-set", str(sparse),
                         "--sampler", sampler, "--out", str(outs[sampler]), "--no-train", "--device", "cpu"]) == 0
        assert json.loads(capsys.readouterr().out)["purified_set"] == str(outs[sampler])
    one_shot, consistency = (data.load_images(outs[s]) for s in ("one_shot", "consistency"))
    assert torch.equal(one_shot.labels, consistency.labels)
    assert not torch.equal(one_shot.images, consistency.images)


def test_defend_with_the_elixir_sampler_trains_the_sparse_classifier_it_chooses_with(random_set, tmp_path, capsys):
    """`--sampler elixir` trains (cached) a classifier on --sparse-set for its feature distance and purifies with
    the chained rounds and the per-image choice; a second run reuses both and gives the same images."""
    source = data.save_images(random_set, tmp_path / "mine.pkl")
    sparse = data.save_images(random_set, tmp_path / "sparse.npz")
    outs = [tmp_path / f"elixir-{k}.npz" for k in range(2)]
    for out in outs:
        assert cli.main(["defend", "--profile", "smoke", "--dataset", str(source), "--sparse-set", str(sparse),
                         "--sampler", "elixir", "--steps", "3", "--out", str(out), "--no-train",
                         "--device", "cpu"]) == 0
        assert json.loads(capsys.readouterr().out)["purified_set"] == str(out)
    first, second = (data.load_images(o) for o in outs)
    assert torch.equal(first.images, second.images) and torch.equal(first.labels, random_set.labels)
    assert not torch.equal(first.images, random_set.images)

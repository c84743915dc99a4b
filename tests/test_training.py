"""Victim training: seeded determinism, resumption after an interruption, tensor augmentation, defenses."""
from __future__ import annotations

import pytest
import torch

from eclipse import training
from eclipse.data import ImageSet
from eclipse.defenses import DEFENSES, make_defense
from eclipse.profiles import SMOKE
from eclipse.victims import VICTIMS, build_victim


@pytest.fixture(scope="module")
def small_sets(cifar_train, cifar_test):
    from eclipse.data import split_test, train_subset

    train = train_subset(cifar_train, 200, seed=0)
    evaluation = train_subset(split_test(cifar_test)[1], 200, seed=0)
    return train, evaluation


CONFIG = training.TrainConfig(arch="resnet18", width=8, epochs=2, batch_size=50, lr=0.05, schedule="onecycle",
                              eval_every=1)


def test_same_seed_same_result(small_sets):
    train, evaluation = small_sets
    a = training.train_victim(train, evaluation, CONFIG, defense="compensation", seed=3, progress=False)
    b = training.train_victim(train, evaluation, CONFIG, defense="compensation", seed=3, progress=False)
    c = training.train_victim(train, evaluation, CONFIG, defense="compensation", seed=4, progress=False)
    strip = lambda r: [{k: v for k, v in e.items() if k != "seconds"} for e in r["log"]]  # noqa: E731
    assert strip(a) == strip(b)
    assert strip(a) != strip(c)


def test_bf16_and_label_smoothing_are_deterministic_and_change_training(small_sets):
    train, evaluation = small_sets
    config = training.TrainConfig(**{**CONFIG.__dict__, "precision": "bf16", "label_smoothing": 0.2, "epochs": 1})
    a = training.train_victim(train, evaluation, config, seed=3, progress=False)
    b = training.train_victim(train, evaluation, config, seed=3, progress=False)
    fp32 = training.train_victim(train, evaluation, training.TrainConfig(**{**CONFIG.__dict__, "epochs": 1}), seed=3,
                                 progress=False)
    assert a["log"][0]["loss"] == b["log"][0]["loss"] and a["test_acc"] == b["test_acc"]
    assert a["log"][0]["loss"] != fp32["log"][0]["loss"]
    with pytest.raises(ValueError, match="precision"):
        training.train_victim(train, evaluation, training.TrainConfig(precision="fp16"), progress=False)


def test_interrupted_training_resumes(small_sets, tmp_path, monkeypatch):
    train, evaluation = small_sets
    config = training.TrainConfig(**{**CONFIG.__dict__, "epochs": 3})
    full = training.train_victim(train, evaluation, config, seed=1, out_dir=tmp_path / "full", progress=False)

    saves = []
    real_save = training._save_checkpoint

    def save_then_die(state, path):
        real_save(state, path)
        saves.append(state["epoch"])
        if state["epoch"] == 2:
            raise KeyboardInterrupt  # the process is killed right after epoch 2's checkpoint
    monkeypatch.setattr(training, "_save_checkpoint", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        training.train_victim(train, evaluation, config, seed=1, out_dir=tmp_path / "cut", progress=False)
    assert saves == [1, 2] and not (tmp_path / "cut" / "result.json").exists()
    monkeypatch.setattr(training, "_save_checkpoint", real_save)
    resumed = training.train_victim(train, evaluation, config, seed=1, out_dir=tmp_path / "cut", progress=False)
    assert [e["epoch"] for e in resumed["log"]] == [1, 2, 3]
    assert [e["loss"] for e in resumed["log"]] == [e["loss"] for e in full["log"]]
    assert resumed["test_acc"] == full["test_acc"]
    with pytest.raises(ValueError, match="different run"):
        training.train_victim(train, evaluation, config, seed=2, out_dir=tmp_path / "cut", progress=False)


def test_random_crop_and_flip_match_definitions():
    torch.manual_seed(0)
    x = torch.arange(2 * 3 * 32 * 32, dtype=torch.float32).view(2, 3, 32, 32)
    cropped = training.random_crop(x, 4)
    padded = torch.nn.functional.pad(x, (4, 4, 4, 4))
    for i in range(2):  # each output is some 32x32 window of its own padded image
        windows = [(dy, dx) for dy in range(9) for dx in range(9)
                   if torch.equal(padded[i, :, dy:dy + 32, dx:dx + 32], cropped[i])]
        assert len(windows) == 1
    flipped = training.random_flip(x)
    for i in range(2):
        assert torch.equal(flipped[i], x[i]) or torch.equal(flipped[i], x[i].flip(2))


def test_compensation_statistics():
    torch.manual_seed(0)
    x = torch.rand(4000, 3, 8, 8)
    out, _ = make_defense("compensation", gray_p=0.4, sigma=0.05).on_batch(x, torch.zeros(4000, dtype=torch.long))
    assert out.min() >= 0 and out.max() <= 1
    assert torch.allclose(out * 255, (out * 255).round(), atol=1e-3)  # re-quantised to 8 bits
    gray_only, _ = make_defense("grayscale", gray_p=0.4).on_batch(x, torch.zeros(4000, dtype=torch.long))
    is_gray = (gray_only[:, 0] == gray_only[:, 1]).flatten(1).all(1) & (gray_only[:, 1] == gray_only[:, 2]).flatten(1).all(1)
    assert 0.36 < is_gray.float().mean() < 0.44  # each image independently with p = 0.4
    noise_only, _ = make_defense("noise", sigma=0.05).on_batch(torch.full((100, 3, 32, 32), 0.5), torch.zeros(100))
    assert 0.045 < float((noise_only - 0.5).std()) < 0.055


def test_every_defense_runs_on_a_batch(random_set):
    x = random_set.images.float() / 255
    for name in DEFENSES:
        defense = make_defense(name)
        prepared = defense.prepare(random_set.images, random_set.labels) if defense.prepare else random_set.images
        assert prepared.dtype in (torch.uint8, torch.float32) and prepared.shape == random_set.images.shape
        if defense.on_batch:
            out, target = defense.on_batch(x, random_set.labels)
            assert out.shape == x.shape
            if name in ("mixup", "cutmix"):
                assert target.shape == (len(x), 10) and torch.allclose(target.sum(1), torch.ones(len(x)))
    jpeg = make_defense("iss-j").prepare(random_set.images, random_set.labels)
    assert not torch.equal(jpeg, random_set.images)  # JPEG-10 is lossy
    gray = make_defense("iss-g").prepare(random_set.images, random_set.labels)
    assert torch.equal(gray[:, 0], gray[:, 1])
    with pytest.raises(ValueError, match="unknown defense"):
        make_defense("magic")


def test_cutout_zeroes_one_square():
    torch.manual_seed(1)
    out, _ = make_defense("cutout", cutout_size=16).on_batch(torch.ones(50, 3, 32, 32), torch.zeros(50))
    zeros = (out[:, 0] == 0).flatten(1).sum(1)
    assert (zeros <= 256).all() and (zeros >= 64).all()  # a 16x16 box, possibly clipped at a corner


@pytest.mark.parametrize("arch", sorted(VICTIMS))
def test_victims_forward(arch):
    model = build_victim(arch, num_classes=10, width=8)
    assert model(torch.rand(2, 3, 32, 32)).shape == (2, 10)


def test_paper_resnet18_size():
    params = sum(p.numel() for p in build_victim("resnet18", 10, 64).parameters())
    assert 11.1e6 < params < 11.2e6  # the CIFAR ResNet-18 of the paper's code: 11.17M


def test_smoke_profile_runs(small_sets):
    train, evaluation = small_sets
    result = training.train_victim(train, evaluation, SMOKE.victim, seed=0, progress=False)
    assert len(result["log"]) == SMOKE.victim.epochs
    assert result["log"][-1]["loss"] < result["log"][0]["loss"]  # it learns something even at smoke scale

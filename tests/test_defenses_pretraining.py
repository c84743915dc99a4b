"""UEraser and OP: each changes training the way it claims, deterministic and resumable."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from eclipse import training
from eclipse.defenses import make_defense
from eclipse.defenses.op import linear_directions, project_out
from eclipse.defenses.ueraser import augmented_copies, ueraser_policy, worst_copies


class _TinyNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.norm = torch.nn.BatchNorm2d(8)
        self.head = torch.nn.Linear(8, 10)

    def forward(self, x):
        return self.head(F.relu(self.norm(self.conv(x))).mean((2, 3)))


def test_ueraser_trains_on_the_worst_of_its_augmented_copies():
    torch.manual_seed(0)
    x = torch.randint(0, 256, (16, 3, 32, 32), dtype=torch.uint8).float() / 255
    y = torch.arange(16) % 10
    copies = augmented_copies(x, 5, ueraser_policy())
    assert copies.shape == (5, 16, 3, 32, 32)
    assert (copies[0] != copies[1]).flatten(1).any(1).float().mean() > 0.5   # the copies are independent draws
    model = _TinyNet().train()
    before = [b.clone() for b in (model.norm.running_mean, model.norm.running_var)]
    chosen = worst_copies(model, copies, y)
    assert torch.equal(model.norm.running_mean, before[0]) and torch.equal(model.norm.running_var, before[1])
    with torch.no_grad():
        losses = F.cross_entropy(model(copies.flatten(0, 1)), y.repeat(5), reduction="none").view(5, 16)
    for i in range(16):
        k = int(losses[:, i].argmax())
        assert torch.equal(chosen[i], copies[k, i]), f"image {i}: not the copy with the highest loss"


def test_ueraser_follows_its_schedule_and_is_seeded():
    defense = make_defense("ueraser")
    model = _TinyNet().train()
    x = torch.rand(8, 3, 32, 32).mul(255).round().div(255)
    y = torch.arange(8)
    runs = []
    for _ in range(2):
        torch.manual_seed(3)
        defense.on_epoch_start(0, 10)                 # adversarial phase: 3 of 10 epochs
        first, _ = defense.on_model_batch(model, x, y)
        defense.on_epoch_start(3, 10)                 # then one augmented copy
        later, _ = defense.on_model_batch(model, x, y)
        runs.append((first, later))
    assert torch.equal(runs[0][0], runs[1][0]) and torch.equal(runs[0][1], runs[1][1])
    assert not torch.equal(runs[0][0], x)
    calls = []
    import eclipse.defenses.ueraser as module
    original = module.worst_copies
    module.worst_copies = lambda *a: calls.append(a[1].shape[0]) or original(*a)
    try:
        defense.on_epoch_start(2, 10)
        defense.on_model_batch(model, x, y)
        defense.on_epoch_start(3, 10)
        defense.on_model_batch(model, x, y)
    finally:
        module.worst_copies = original
    assert calls == [5]   # the worst-of-5 pick in the adversarial phase only
    with pytest.raises(ValueError, match="hard labels"):
        defense.on_model_batch(model, x, torch.ones(8, 10) / 10)


def test_op_removes_most_of_urps_class_patterns_and_little_of_the_images(cifar_train):
    """URP is one pattern per class, so the linear model's class directions catch it: OP's projection (the
    official fit: batch 1024, 20 epochs) removes most of the poison's energy and a small share of the images'."""
    from eclipse.attacks import poison

    index = torch.randperm(len(cifar_train), generator=torch.Generator().manual_seed(0))[:2000]
    images, labels = cifar_train.images[index], cifar_train.labels[index]
    poisoned = poison("urp", images, labels, seed=0, num_classes=10)
    basis, _ = linear_directions(poisoned, labels, 10)
    assert basis.shape == (10, 3072) and torch.allclose(basis @ basis.T, torch.eye(10), atol=1e-4)
    projected = project_out(poisoned, basis)
    assert projected.dtype == torch.float32 and projected.shape == poisoned.shape
    assert float((projected.flatten(1) @ basis.T).abs().max()) < 1e-3      # nothing left along the fitted span

    def kept(v: torch.Tensor) -> float:
        return float((v - (v @ basis.T) @ basis).norm() ** 2 / v.norm() ** 2)
    delta = (poisoned.float() - images.float()).flatten(1) / 255
    clean = images.float().flatten(1) / 255
    poison_kept, clean_kept = kept(delta), kept(clean - clean.mean(0))
    assert poison_kept < 0.4 and clean_kept > 0.7 and poison_kept < clean_kept / 2, (poison_kept, clean_kept)


def test_op_ueraser_and_dp_sgd_train_end_to_end_and_resume(cifar_train, cifar_test, tmp_path, monkeypatch):
    from eclipse.data import split_test, train_subset

    train = train_subset(cifar_train, 120, seed=0)
    evaluation = train_subset(split_test(cifar_test)[1], 100, seed=0)
    config = training.TrainConfig(arch="resnet18", width=8, epochs=2, batch_size=40, lr=0.05, eval_every=1)
    for name in ("op", "ueraser", "dp-sgd"):
        full = training.train_victim(train, evaluation, config, defense=name, seed=1, out_dir=tmp_path / name,
                                     progress=False)
        real_save = training._save_checkpoint

        def save_then_die(state, path):
            real_save(state, path)
            raise KeyboardInterrupt
        monkeypatch.setattr(training, "_save_checkpoint", save_then_die)
        with pytest.raises(KeyboardInterrupt):
            training.train_victim(train, evaluation, config, defense=name, seed=1, out_dir=tmp_path / f"{name}-cut",
                                  progress=False)
        monkeypatch.setattr(training, "_save_checkpoint", real_save)
        resumed = training.train_victim(train, evaluation, config, defense=name, seed=1,
                                        out_dir=tmp_path / f"{name}-cut", progress=False)
        assert [e["loss"] for e in resumed["log"]] == [e["loss"] for e in full["log"]], name
        plain = training.train_victim(train, evaluation, config, seed=1, progress=False)
        assert full["log"][0]["loss"] != plain["log"][0]["loss"], name


def test_dp_sgd_clips_per_sample_gradients_adds_noise_and_reports_epsilon(cifar_train, cifar_test, tmp_path):
    from eclipse.data import split_test, train_subset
    from eclipse.defenses.dp_sgd import dp_epsilon
    from eclipse.victims import build_victim

    def one_step(noise: float, clip: float, seed: int = 0):
        torch.manual_seed(seed)
        defense = make_defense("dp-sgd", dp_noise_multiplier=noise, dp_max_grad_norm=clip)
        net = defense.adapt_model(build_victim("resnet18", 10, 8))
        assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in net.modules())
        model, optimizer = defense.wrap_training(net, torch.optim.SGD(net.parameters(), lr=0.1), 16, 1000)
        x, y = torch.rand(16, 3, 32, 32), torch.arange(16) % 10
        training.sgd_step(model, optimizer, x, y)
        return torch.cat([p.grad.flatten() for p in net.parameters()])

    clipped = one_step(0.0, 1e-3)
    assert float(clipped.norm()) <= 1e-3 * (1 + 1e-4)      # the mean of per-sample gradients each of norm <= C
    free = one_step(0.0, 1e6)
    assert float(free.norm()) > 100 * float(clipped.norm())  # the unclipped gradient is far larger
    noisy_a, noisy_b, noisy_c = one_step(1.0, 1e-3), one_step(1.0, 1e-3), one_step(1.0, 1e-3, seed=1)
    assert torch.equal(noisy_a, noisy_b) and not torch.equal(noisy_a, noisy_c)
    assert float((noisy_a - clipped).std()) == pytest.approx(1e-3 / 16, rel=0.05)   # sigma * C / batch

    assert dp_epsilon(1.0, 0.01, 1000, 1e-5) < dp_epsilon(1.0, 0.01, 4000, 1e-5)
    assert dp_epsilon(2.0, 0.01, 1000, 1e-5) < dp_epsilon(1.0, 0.01, 1000, 1e-5)
    train = train_subset(cifar_train, 120, seed=0)
    evaluation = train_subset(split_test(cifar_test)[1], 100, seed=0)
    config = training.TrainConfig(arch="resnet18", width=8, epochs=2, batch_size=40, lr=0.05, eval_every=1)
    result = training.train_victim(train, evaluation, config, defense="dp-sgd", seed=0, out_dir=tmp_path / "dp",
                                   progress=False)
    assert result["dp_epsilon"] == pytest.approx(dp_epsilon(1.0, 40 / 120, 6, 1e-5)) and result["dp_delta"] == 1e-5
    again = training.train_victim(train, evaluation, config, defense="dp-sgd", seed=0, progress=False)
    assert [e["loss"] for e in again["log"]] == [e["loss"] for e in result["log"]]
    model = training.trained_model(tmp_path / "dp", config, 10)
    assert any(isinstance(m, torch.nn.GroupNorm) for m in model.modules())


def test_avatar_purifies_with_a_diffusion_model_trained_on_the_poisoned_set_itself():
    import json

    from eclipse import method
    from eclipse.cli import build_parser
    from eclipse.experiments import clean_data, poisoned_set
    from eclipse.storage import cache_dir

    sets = clean_data("smoke")
    poisoned = poisoned_set(sets["train"], "urp", 0, profile="smoke")
    result = method.PURIFYING_DEFENSES["avatar"](poisoned, sets["eval"], "smoke", progress=False)
    assert result["modules"] == "avatar" and result["defense"] == "none"
    models = [json.loads(p.read_text()) for p in (cache_dir() / "diffusion").glob("*/done.json")]
    on_the_set = [m for m in models if m["sparse_images"] == len(poisoned) and m["config"]["replicas"] == 0]
    assert on_the_set, models                      # the whole poisoned set, not a sparse clean one
    assert result["n_train"] == len(poisoned)
    args = build_parser().parse_args(["table", "--defenses", "avatar", "op", "ueraser", "dp-sgd", "at"])
    assert args.defenses == ["avatar", "op", "ueraser", "dp-sgd", "at"]
    assert build_parser().parse_args(["train", "--defense", "avatar"]).defense == "avatar"


def test_a_profiles_cheaper_defense_settings_key_the_run_and_label_the_table():
    from eclipse.experiments import victim_run
    from eclipse.profiles import SMOKE, defense_settings_label
    from eclipse.data import ImageSet

    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (40, 3, 32, 32), dtype=torch.uint8, generator=generator)
    train = ImageSet(images, torch.arange(40) % 10, source="random")
    tiny = SMOKE.with_overrides(victim={"epochs": 1, "width": 8, "batch_size": 20})
    published = victim_run(train, train, tiny, "at", progress=False)
    cheap_profile = tiny.with_overrides(defense_params={"at": {"at_steps": 1, "at_step_size": 8 / 255}})
    cheap = victim_run(train, train, cheap_profile, "at", progress=False)
    assert published["defense_params"]["steps"] == 10 and cheap["defense_params"]["steps"] == 1
    assert not cheap["cached"] and cheap["log"][0]["loss"] != published["log"][0]["loss"]
    assert defense_settings_label(cheap_profile, "at") == "at_steps=1, at_step_size=0.0314"
    assert defense_settings_label(cheap_profile, "none") == ""


def test_a_profiles_per_defense_victim_settings_train_that_defense_only_and_label_it():
    """``Profile.defense_victim`` (quick DP-SGD's optimiser) changes the victim of that defense and no other,
    keys its run, shows in the table's label, is in the plan's run, and an explicit override still wins."""
    from eclipse.data import ImageSet
    from eclipse.experiments import victim_run
    from eclipse.plan import DataId, Planner
    from eclipse.profiles import SMOKE, defense_settings_label

    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (40, 3, 32, 32), dtype=torch.uint8, generator=generator)
    train = ImageSet(images, torch.arange(40) % 10, source="random")
    tiny = SMOKE.with_overrides(victim={"epochs": 1, "width": 8, "batch_size": 20})
    tuned = tiny.with_overrides(defense_victim={"dp-sgd": {"lr": 0.5, "momentum": 0.0}})
    plain = victim_run(train, train, tiny, "dp-sgd", progress=False)
    dp = victim_run(train, train, tuned, "dp-sgd", progress=False)
    assert (plain["config"]["lr"], plain["config"]["momentum"]) == (tiny.victim.lr, tiny.victim.momentum)
    assert (dp["config"]["lr"], dp["config"]["momentum"]) == (0.5, 0.0) and not dp["cached"]
    assert dp["log"][0]["loss"] != plain["log"][0]["loss"]
    assert victim_run(train, train, tuned, "none", progress=False)["config"]["lr"] == tiny.victim.lr
    assert victim_run(train, train, tuned, "dp-sgd", progress=False, lr=0.2)["config"]["lr"] == 0.2
    assert defense_settings_label(tuned, "dp-sgd") == "lr=0.5, momentum=0"
    planner = Planner(tiny)
    for profile in (tuned, tiny, tuned):
        planner.victim(profile, DataId("train40", 40), "dp-sgd", {})
    runs = [task for (kind, _), task in planner.tasks.items() if kind == "runs"]
    assert len(runs) == 2                          # the tuned and the plain run, each once, as the cache holds them


def test_defense_param_overrides_one_setting_over_the_profile_and_rejects_bad_ones(tmp_path, capsys):
    """``--defense-param DEFENSE NAME VALUE`` (train, table) changes that setting only, keys the run by it, and
    names the defense, the setting and the value it cannot take."""
    import json as json_

    from eclipse.cli import _profile, build_parser, main

    args = build_parser().parse_args(["table", "--profile", "quick", "--defenses", "at", "--defense-param", "at",
                                      "at_steps", "5", "--defense-param", "dp-sgd", "dp_noise_multiplier", "0.3"])
    profile = _profile(args)
    assert profile.defense_settings("at") == {"at_steps": 5, "at_step_size": 3 / 255}   # quick's step size kept
    assert profile.defense_settings("dp-sgd") == {"dp_noise_multiplier": 0.3}
    assert isinstance(profile.defense_settings("at")["at_steps"], int)
    for triple, words in ((["at", "at_steps", "2.5"], ["at_steps", "'2.5'", "integer"]),
                          (["at", "no_such", "1"], ["no_such", "DefenseParams"]),
                          (["nope", "at_steps", "1"], ["unknown defense", "'nope'"]),
                          (["dp-sgd", "dp_noise_multiplier", "high"], ["dp_noise_multiplier", "'high'", "number"])):
        assert main(["train", "--profile", "smoke", "--defense", "at", "--defense-param", *triple]) != 0
        err = capsys.readouterr().err
        assert all(w in err for w in words), (triple, err)
    results = {}
    for noise in ("1.0", "0.5"):
        out = tmp_path / f"dp-{noise}.json"
        assert main(["train", "--profile", "smoke", "--defense", "dp-sgd", "--epochs", "1", "--defense-param",
                     "dp-sgd", "dp_noise_multiplier", noise, "--out", str(out)]) == 0
        results[noise] = json_.loads(out.read_text())
    capsys.readouterr()
    assert results["0.5"]["defense_params"]["noise_multiplier"] == 0.5
    assert results["1.0"]["defense_params"]["noise_multiplier"] == 1.0
    assert results["0.5"]["dp_epsilon"] > results["1.0"]["dp_epsilon"]    # less noise, more privacy spent
    assert results["0.5"]["log"][0]["loss"] != results["1.0"]["log"][0]["loss"]


def test_train_lr_option_sets_the_victims_learning_rate(tmp_path, capsys):
    """``eclipse train --lr`` reaches the victim's TrainConfig (a DP-SGD run wants a larger one); bad values are
    argparse errors."""
    import json as json_

    from eclipse.cli import build_parser, main

    out = tmp_path / "run.json"
    assert main(["train", "--profile", "smoke", "--epochs", "1", "--lr", "0.3", "--out", str(out)]) == 0
    capsys.readouterr()
    assert json_.loads(out.read_text())["config"]["lr"] == 0.3

    args = build_parser().parse_args(["train", "--lr", "2"])
    assert args.lr == 2.0
    for bad in ("0", "-1", "nan", "inf", "fast"):
        with pytest.raises(SystemExit):
            build_parser().parse_args(["train", "--lr", bad])


def test_per_sample_gradients_are_each_samples_own_gradient():
    """``per_sample_gradients`` (Opacus's, as DP-SGD clips them) equals each sample's gradient of its own loss,
    computed one sample at a time, and leaves the network without gradients."""
    from eclipse.defenses.dp_sgd import dp_model, per_sample_gradients
    from eclipse.victims import build_victim

    torch.manual_seed(0)
    net = dp_model(build_victim("resnet18", 10, 8)).train()
    x, y = torch.rand(4, 3, 32, 32), torch.tensor([0, 3, 3, 9])
    rows = per_sample_gradients(net, x, y)
    assert rows.shape == (4, sum(p.numel() for p in net.parameters()))
    assert all(p.grad is None and getattr(p, "grad_sample", None) is None for p in net.parameters())
    for i in range(4):
        net.zero_grad(set_to_none=True)
        F.cross_entropy(net(x[i:i + 1]), y[i:i + 1]).backward()
        own = torch.cat([p.grad.flatten() for p in net.parameters()])
        assert (rows[i] - own).norm() < 1e-4 * own.norm(), i     # the same vector, to float error
    assert not torch.allclose(rows[0], rows[1])            # one row per sample, not the batch's mean

"""Smoke-scale tests of diffusion training, resumption, samplers and chunked purification."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from eclipse.diffusion import samplers as S
from eclipse.diffusion.checkpoints import load_checkpoint
from eclipse.diffusion.schedule import make_schedule, purification_timesteps, respace
from eclipse.diffusion.train import ENLARGEMENTS, DiffusionTrainConfig, enlarge, train_diffusion
from eclipse.diffusion.unet import UNetConfig, build_unet
from eclipse.diffusion.checkpoints import load_model_and_schedule
from eclipse.diffusion.gaussian import forward_noise
from eclipse.purify import purify

REPO = Path(__file__).resolve().parents[1]
TINY_UNET = UNetConfig(num_channels=32, num_res_blocks=1, attention_resolutions="16", channel_mult=(1, 2))


def _cfg(iterations: int, checkpoint_every: int = 2, **kw) -> DiffusionTrainConfig:
    return DiffusionTrainConfig(unet=TINY_UNET, replicas=1, batch_size=4, iterations=iterations,
                                checkpoint_every=checkpoint_every, ema_rate=0.5, seed=3, **kw)


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.randint(0, 256, (8, 3, 32, 32), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)


@pytest.fixture(scope="module")
def baseline(images, tmp_path_factory):
    """An uninterrupted 4-step run."""
    return train_diffusion(images, _cfg(4), tmp_path_factory.mktemp("base"), device="cpu", progress=False)


def _same_weights(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_training_step_runs(baseline):
    assert baseline.step == 4 and len(baseline.losses) == 4
    assert all(torch.isfinite(torch.tensor(baseline.losses)))
    ck = load_checkpoint(baseline.checkpoint)
    assert ck["step"] == 4 and ck["unet_config"]["num_channels"] == 32
    assert _same_weights(ck["model"], baseline.model.state_dict())
    assert not _same_weights(ck["ema"], ck["model"])  # EMA lags the online weights
    assert _same_weights(ck["ema"], baseline.ema.state_dict())
    model, schedule = load_model_and_schedule(baseline.checkpoint)
    assert schedule.num_timesteps == 4000 and _same_weights(model.state_dict(), ck["ema"])


def test_resume_equals_uninterrupted(images, baseline, tmp_path):
    first = train_diffusion(images, _cfg(2), tmp_path, device="cpu", progress=False)
    assert first.step == 2 and first.losses == baseline.losses[:2]
    second = train_diffusion(images, _cfg(4), tmp_path, device="cpu", progress=False)
    assert second.losses == baseline.losses
    assert _same_weights(second.model.state_dict(), baseline.model.state_dict())
    assert _same_weights(second.ema.state_dict(), baseline.ema.state_dict())
    ck, ref = load_checkpoint(second.checkpoint), load_checkpoint(baseline.checkpoint)
    assert torch.equal(ck["extra"]["generator"], ref["extra"]["generator"])


def test_resume_refuses_other_config(images, baseline, tmp_path):
    train_diffusion(images, _cfg(1), tmp_path, device="cpu", progress=False)
    with pytest.raises(ValueError, match="another run"):
        train_diffusion(images, _cfg(2, lr=2e-4), tmp_path, device="cpu", progress=False)


CHILD = textwrap.dedent("""
    import sys, time, torch
    from eclipse.diffusion.train import DiffusionTrainConfig, train_diffusion
    from eclipse.diffusion.unet import UNetConfig
    images = torch.load(sys.argv[1], weights_only=True)
    cfg = DiffusionTrainConfig(unet=UNetConfig(num_channels=32, num_res_blocks=1, attention_resolutions="16",
                               channel_mult=(1, 2)), replicas=1, batch_size=4, iterations=4, checkpoint_every=1,
                               ema_rate=0.5, seed=3)
    train_diffusion(images, cfg, sys.argv[2], device="cpu", progress=False,
                    on_step=lambda step, model: time.sleep(3))
""")


def test_sigkill_then_rerun_equals_uninterrupted(images, baseline, tmp_path):
    torch.save(images, tmp_path / "images.pt")
    out = tmp_path / "run"
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(tmp_path / "images.pt"), str(out)], env=env)
    try:
        deadline = time.time() + 120
        while not (out / "checkpoint.pt").exists():
            assert child.poll() is None, "training subprocess exited before writing a checkpoint"
            assert time.time() < deadline, "no checkpoint within 120 s"
            time.sleep(0.05)
        child.send_signal(signal.SIGKILL)
    finally:
        child.wait()
    assert child.returncode == -signal.SIGKILL
    killed_at = load_checkpoint(out / "checkpoint.pt")["step"]
    assert 1 <= killed_at < 4
    resumed = train_diffusion(images, _cfg(4, checkpoint_every=1), out, device="cpu", progress=False)
    assert resumed.losses == baseline.losses
    assert _same_weights(resumed.model.state_dict(), baseline.model.state_dict())
    assert _same_weights(resumed.ema.state_dict(), baseline.ema.state_dict())


@pytest.mark.parametrize("every", [1, 2])
def test_nan_loss_stops_and_keeps_last_checkpoint(images, tmp_path, every):
    """The losses are read before each checkpoint (every 2 steps: steps 3 and 4 together), so a NaN from step 3 on
    is named at its own step and the checkpoint of step 2 is the one kept."""
    def poison(step, model):
        if step == 2:  # from step 3 on the network outputs NaN
            model.out.register_forward_hook(lambda mod, inp, out: out * float("nan"))

    with pytest.raises(FloatingPointError, match=r"non-finite loss.*step 3;.*last good checkpoint"):
        train_diffusion(images, _cfg(6, checkpoint_every=every), tmp_path, device="cpu", progress=False, on_step=poison)
    ck = load_checkpoint(tmp_path / "checkpoint.pt")
    assert ck["step"] == 2 and len(ck["extra"]["losses"]) == 2
    assert all(torch.isfinite(v).all() for v in ck["model"].values())


def test_enlargement_modes(images):
    rep = enlarge(images, 2, "replicate")
    assert torch.equal(rep, torch.cat([images] * 3))
    for mode in ENLARGEMENTS[1:]:
        big = enlarge(images, 2, mode, seed=1)
        assert big.shape == (24, 3, 32, 32) and big.dtype == torch.uint8
        assert torch.equal(big[:8], images) and not torch.equal(big[8:16], images)
        assert torch.equal(big, enlarge(images, 2, mode, seed=1))
    with pytest.raises(ValueError, match="unknown enlargement"):
        enlarge(images, 1, "cutout")


def test_t_max_limits_timesteps(images, tmp_path, monkeypatch):
    seen = []
    import eclipse.diffusion.train as T

    real = T.training_losses
    monkeypatch.setattr(T, "training_losses", lambda m, s, x0, t, n: (seen.append(t.clone()), real(m, s, x0, t, n))[1])
    train_diffusion(images, _cfg(1, t_max=9), tmp_path, device="cpu", progress=False)
    assert int(torch.cat(seen).max()) <= 9


# ---------------------------------------------------------------- samplers and purification

@pytest.fixture(scope="module")
def random_model():
    model = build_unet(TINY_UNET)
    gen = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.05)
    return model.eval()


@pytest.fixture(scope="module")
def schedule():
    return make_schedule("cosine", 4000)


class CountingModel(torch.nn.Module):
    def __init__(self, model, fail_after: int | None = None):
        super().__init__()
        self.model, self.calls, self.fail_after = model, 0, fail_after

    def forward(self, x, t):
        if self.fail_after is not None and self.calls >= self.fail_after:
            raise RuntimeError("simulated crash")
        self.calls += 1
        return self.model(x, t)


@pytest.mark.parametrize("sampler,steps", [("ancestral", None), ("respaced", 3), ("ddim", 3), ("one_shot", None),
                                           ("chained", None), ("chained", 2), ("masked", 2), ("elixir", 3)])
def test_samplers_shape_dtype_and_nfe(random_model, schedule, images, sampler, steps):
    counter = CountingModel(random_model)
    out = purify(images[:3], counter, schedule, t_star=6, sampler=sampler, steps=steps, seed=1, batch_size=8,
                 progress=False)
    assert out.shape == (3, 3, 32, 32) and out.dtype == torch.uint8
    assert counter.calls == S.network_evaluations(sampler, 6, steps)


def test_respaced_full_equals_ancestral(random_model, schedule, images):
    x0 = images[:2].float() / 127.5 - 1
    x_t = forward_noise(schedule, x0, 6, torch.Generator().manual_seed(0))
    a = S.ancestral(random_model, schedule, x_t, 5, torch.Generator().manual_seed(1))
    b = S.respaced(random_model, schedule, x_t, 5, torch.Generator().manual_seed(1), S.SamplerOptions(steps=6))
    torch.testing.assert_close(a, b, rtol=0, atol=1e-5)
    c = S.respaced(random_model, schedule, x_t, 5, torch.Generator().manual_seed(1), S.SamplerOptions(steps=3))
    assert (a - c).abs().max() > 1e-4  # fewer steps really differ


def test_respace_semantics(schedule):
    keep = purification_timesteps(100, 10)
    assert keep[0] == 0 and keep[-1] == 99 and len(keep) == 10
    sub, index_map = respace(schedule, keep)
    assert index_map.tolist() == keep and sub.num_timesteps == 10
    torch.testing.assert_close(sub.alphas_cumprod, schedule.alphas_cumprod[keep], rtol=1e-12, atol=0)


def test_ddim_eta0_is_deterministic(random_model, schedule, images):
    x0 = images[:2].float() / 127.5 - 1
    x_t = forward_noise(schedule, x0, 6, torch.Generator().manual_seed(0))
    a = S.ddim(random_model, schedule, x_t, 5, torch.Generator().manual_seed(1), S.SamplerOptions(steps=3, eta=0.0))
    b = S.ddim(random_model, schedule, x_t, 5, torch.Generator().manual_seed(2), S.SamplerOptions(steps=3, eta=0.0))
    c = S.ddim(random_model, schedule, x_t, 5, torch.Generator().manual_seed(2), S.SamplerOptions(steps=3, eta=1.0))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_purify_keeps_order_and_is_deterministic(random_model, schedule, images):
    out = purify(images, random_model, schedule, t_star=2, seed=7, batch_size=3, progress=False)
    again = purify(images, random_model, schedule, t_star=2, seed=7, batch_size=3, progress=False)
    assert torch.equal(out, again)
    other = purify(images, random_model, schedule, t_star=2, seed=8, batch_size=3, progress=False)
    assert not torch.equal(out, other)
    # at t*=2 purification barely moves an image: each output is nearest to its own input
    dist = torch.cdist(out.flatten(1).float(), images.flatten(1).float())
    assert torch.equal(dist.argmin(dim=1), torch.arange(len(images)))


@pytest.mark.parametrize("sampler,steps", [("ancestral", None), ("chained", 2), ("masked", 2), ("elixir", 2)])
def test_purify_resumes_from_chunks(random_model, schedule, images, tmp_path, sampler, steps):
    kw = dict(t_star=3, sampler=sampler, steps=steps, seed=4, batch_size=3, progress=False)
    nfe = S.network_evaluations(sampler, 3, steps)
    full = purify(images, random_model, schedule, **kw)
    crashing = CountingModel(random_model, fail_after=2 * nfe)  # dies in the third chunk
    with pytest.raises(RuntimeError, match="simulated crash"):
        purify(images, crashing, schedule, resume_dir=tmp_path, **kw)
    assert sorted(p.name for p in tmp_path.glob("chunk_*.pt")) == ["chunk_000000.pt", "chunk_000001.pt"]
    counter = CountingModel(random_model)
    resumed = purify(images, counter, schedule, resume_dir=tmp_path, **kw)
    assert counter.calls == nfe  # only the last chunk was recomputed
    assert torch.equal(resumed, full)
    with pytest.raises(ValueError, match="another purification run"):
        purify(images, random_model, schedule, resume_dir=tmp_path, **{**kw, "seed": 5})


PURIFY_CHILD = textwrap.dedent("""
    import sys, time, torch
    from eclipse.diffusion.schedule import make_schedule
    from eclipse.diffusion.unet import UNetConfig, build_unet
    from eclipse.purify import purify

    class Slow(torch.nn.Module):  # 0.3 s a network evaluation: the kill lands between chunks
        def __init__(self, model):
            super().__init__()
            self.model = model
        def forward(self, x, t):
            time.sleep(0.3)
            return self.model(x, t)

    model = build_unet(UNetConfig(num_channels=32, num_res_blocks=1, attention_resolutions="16", channel_mult=(1, 2)))
    gen = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.05)
    images = torch.load(sys.argv[1], weights_only=True)
    purify(images, Slow(model.eval()), make_schedule("cosine", 4000), t_star=3, sampler=sys.argv[3], steps=2, seed=4,
           batch_size=3, progress=False, resume_dir=sys.argv[2])
""")


@pytest.mark.parametrize("sampler", ["masked", "elixir"])
def test_purify_killed_with_sigkill_resumes_to_the_identical_result(random_model, schedule, images, tmp_path,
                                                                    sampler):
    """A real SIGKILL (no exception handler runs) after the first chunk: the rerun keeps the saved chunks,
    recomputes the rest and gives the uninterrupted result."""
    torch.save(images, tmp_path / "images.pt")
    run = tmp_path / "run"
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    child = subprocess.Popen([sys.executable, "-c", PURIFY_CHILD, str(tmp_path / "images.pt"), str(run), sampler],
                             env=env)
    try:
        deadline = time.time() + 180
        while not (run / "chunk_000000.pt").exists():
            assert child.poll() is None, "purification subprocess exited before writing a chunk"
            assert time.time() < deadline, "no chunk within 180 s"
            time.sleep(0.05)
        child.send_signal(signal.SIGKILL)
    finally:
        child.wait()
    assert child.returncode == -signal.SIGKILL
    kept = sorted(p.name for p in run.glob("chunk_*.pt"))
    assert kept and "chunk_000002.pt" not in kept  # killed before the last of three chunks
    kw = dict(t_star=3, sampler=sampler, steps=2, seed=4, batch_size=3, progress=False)
    counter = CountingModel(random_model)
    resumed = purify(images, counter, schedule, resume_dir=run, **kw)
    nfe = S.network_evaluations(sampler, 3, 2)
    assert counter.calls == (3 - len(kept)) * nfe  # only the missing chunks recomputed
    assert torch.equal(resumed, purify(images, random_model, schedule, **kw))


def test_one_round_of_chained_is_one_shot_and_more_rounds_move_on(random_model, schedule, images):
    x0 = images[:3].float() / 127.5 - 1
    x_t = forward_noise(schedule, x0, 6, torch.Generator().manual_seed(0))
    once = S.one_shot(random_model, schedule, x_t, 5)
    chain1 = S.chained(random_model, schedule, x_t, 5, torch.Generator().manual_seed(1), S.SamplerOptions(steps=1))
    assert torch.equal(once, chain1)
    rounds = []
    chain3 = S.chained(random_model, schedule, x_t, 5, torch.Generator().manual_seed(1),
                       S.SamplerOptions(steps=3, callback=lambda state: rounds.append(state["x"].clone())))
    assert len(rounds) == 3 and torch.equal(rounds[0], once) and torch.equal(rounds[-1], chain3)
    assert (chain3 - once).abs().max() > 1e-4
    again = S.chained(random_model, schedule, x_t, 5, torch.Generator().manual_seed(1), S.SamplerOptions(steps=3))
    assert torch.equal(again, chain3)


def test_masked_regenerates_each_patch_once_from_its_context(random_model, schedule, images):
    """The two checkerboard masks are complementary and every output patch comes from the pass that
    regenerated it (not the held context, which ends as the input itself): changing the input only inside
    mask 0's patches changes the patches pass 1 regenerated from that context."""
    masks = S.checkerboard_masks(32, 32)
    assert masks.shape == (2, 1, 32, 32) and torch.equal(masks.sum(0), torch.ones(1, 32, 32))
    assert masks[0, 0, :8, :8].eq(1).all() and masks[0, 0, :8, 8:16].eq(0).all()
    x0 = images[:2].float() / 127.5 - 1

    def run(inp, seed=1):
        x_t = forward_noise(schedule, inp, 400, torch.Generator().manual_seed(0))   # deep: the model matters
        return S.masked(random_model, schedule, x_t, 399, torch.Generator().manual_seed(seed),
                        S.SamplerOptions(steps=2, x0=inp))
    out = run(x0)
    assert torch.equal(out, run(x0)) and not torch.equal(out, run(x0, seed=2))
    for mask in masks:                                         # every patch regenerated, none left as the input
        assert ((out - x0) * mask).abs().mean() > 1e-2
    shifted = run((x0 + 0.5 * masks[0]).clamp(-1, 1))          # another input only where pass 0 regenerates
    assert ((shifted - out) * masks[1]).abs().max() > 1e-3     # pass 1 regenerated its patches from that context
    with pytest.raises(ValueError, match="un-noised input"):
        S.masked(random_model, schedule, x0, 399, None, S.SamplerOptions(steps=2))

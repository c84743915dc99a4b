"""The UNet's execution switches (bf16 autocast, channels_last, torch.compile): what each changes in purification
and diffusion training, that each keys what it makes, and that a shared model is never altered by them."""
from __future__ import annotations

import pytest
import torch

from eclipse.diffusion.checkpoints import DiffusionSettings, schedule_from_settings
from eclipse.diffusion.runtime import UNetRuntime, base_module, prepare_unet
from eclipse.diffusion.train import DiffusionTrainConfig, train_diffusion
from eclipse.diffusion.unet import UNetConfig, build_unet
from eclipse.purify import purify, purify_batch

TINY_UNET = UNetConfig(num_channels=32, num_res_blocks=1, attention_resolutions="16", channel_mult=(1, 2))


@pytest.fixture(scope="module")
def model_and_images():
    torch.manual_seed(0)
    model = build_unet(TINY_UNET).eval()
    for p in model.parameters():   # non-zero everywhere (the zero-initialised output convs would hide the UNet)
        p.data.normal_(0, 0.02)
    images = torch.randint(0, 256, (6, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    return model, schedule_from_settings(DiffusionSettings(diffusion_steps=4000)), images


def _purify(model, schedule, images, runtime=None):
    return purify(images, model, schedule, t_star=12, seed=0, batch_size=6, progress=False, runtime=runtime)


def test_channels_last_and_bf16_purify_as_fp32_does_within_a_level_and_leave_the_model_alone(model_and_images):
    model, schedule, images = model_and_images
    before = {k: v.clone() for k, v in model.state_dict().items()}
    fp32 = _purify(model, schedule, images)
    nhwc = _purify(model, schedule, images, UNetRuntime(channels_last=True))
    bf16 = _purify(model, schedule, images, UNetRuntime(precision="bf16"))
    assert int((nhwc.int() - fp32.int()).abs().max()) <= 1       # same arithmetic, other kernels
    assert int((bf16.int() - fp32.int()).abs().max()) <= 2
    x0 = images.float() / 127.5 - 1   # before quantisation, bf16 did round the network's activations
    runs = [purify_batch(x0, model, schedule, t_star=12, generator=torch.Generator().manual_seed(0), autocast_dtype=d)
            for d in (None, torch.bfloat16)]
    assert not torch.equal(*runs) and float((runs[0] - runs[1]).abs().max()) < 0.05
    assert all(p.is_contiguous() for p in model.parameters())    # the shared model keeps its NCHW layout
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    with pytest.raises(ValueError, match="not both"):
        purify(images, model, schedule, t_star=2, seed=0, batch_size=6, progress=False,
               runtime=UNetRuntime(precision="bf16"), autocast_dtype=torch.bfloat16)


def test_runtime_settings_are_validated_and_compile_wraps_a_copy(model_and_images):
    model = model_and_images[0]
    with pytest.raises(ValueError, match="precision"):
        UNetRuntime(precision="fp8")
    with pytest.raises(ValueError, match="unknown UNet runtime"):
        UNetRuntime.from_dict({"channel_last": True})
    assert UNetRuntime().key() == {} and prepare_unet(model, UNetRuntime()) is model
    compiled = prepare_unet(model, UNetRuntime(compile=True))   # compiles lazily, on the first call
    assert compiled is not model and base_module(compiled) is not model
    assert base_module(compiled).state_dict().keys() == model.state_dict().keys()


def test_each_switch_keys_the_purified_set_and_the_diffusion_model(monkeypatch):
    """A bf16 or NHWC artifact is never served for an fp32 one (and back); fp32 keys as without the field."""
    import eclipse.experiments as E
    from eclipse.data import ImageSet
    from eclipse.profiles import SMOKE

    class Looked(Exception):
        pass

    seen: dict = {"purified": [], "diffusion": []}

    def cache_lookup(kind, inputs, compute, **kw):
        seen[kind].append(inputs)
        raise Looked   # the key is what is checked; nothing is computed

    monkeypatch.setattr(E, "cached", cache_lookup)
    data = ImageSet(torch.zeros(4, 3, 32, 32, dtype=torch.uint8), torch.arange(4), source="zeros")
    for runtime in ({}, {"precision": "bf16"}, {"channels_last": True}):
        profile = SMOKE.with_overrides(unet_runtime=runtime)
        with pytest.raises(Looked):
            E.purified_set(data, profile, None, None, "model-key", progress=False)
        with pytest.raises(Looked):
            E.diffusion_model(profile, None, sparse=data, progress=False)
    for keys in seen.values():
        assert "unet_runtime" not in keys[0]
        assert keys[1]["unet_runtime"] == {"precision": "bf16"} and keys[2]["unet_runtime"] == {"channels_last": True}
        assert keys[1] != keys[0] and keys[2] != keys[0]


def test_cli_switches_reach_the_profile():
    from eclipse.cli import _profile, build_parser

    parser = build_parser()
    args = parser.parse_args(["purify", "--input", "a.npz", "--out", "b.npz", "--profile", "smoke",
                              "--unet-precision", "bf16", "--channels-last"])
    assert _profile(args).runtime() == UNetRuntime(precision="bf16", channels_last=True)
    plain = parser.parse_args(["train-diffusion", "--profile", "smoke"])
    assert _profile(plain).runtime() == UNetRuntime()
    assert _profile(parser.parse_args(["table", "--profile", "smoke", "--compile"])).runtime().compile
    with pytest.raises(SystemExit):
        parser.parse_args(["purify", "--input", "a.npz", "--out", "b.npz", "--unet-precision", "fp16"])


def test_bf16_diffusion_training_runs_differs_and_resumes_only_under_its_own_runtime(tmp_path):
    images = torch.randint(0, 256, (8, 3, 32, 32), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    cfg = DiffusionTrainConfig(unet=TINY_UNET, replicas=1, batch_size=4, iterations=2, checkpoint_every=1,
                               ema_rate=0.5, seed=3)
    fp32 = train_diffusion(images, cfg, tmp_path / "fp32", device="cpu", progress=False)
    bf16 = train_diffusion(images, cfg, tmp_path / "bf16", device="cpu", progress=False,
                           runtime=UNetRuntime(precision="bf16", channels_last=True))
    assert all(torch.isfinite(torch.tensor(bf16.losses))) and bf16.losses != fp32.losses
    assert bf16.losses == pytest.approx(fp32.losses, rel=0.05)   # the same training, rounded
    longer = DiffusionTrainConfig(**{**cfg.__dict__, "iterations": 3})
    with pytest.raises(ValueError, match="UNet runtime"):
        train_diffusion(images, longer, tmp_path / "bf16", device="cpu", progress=False)
    again = train_diffusion(images, longer, tmp_path / "bf16", device="cpu", progress=False,
                            runtime=UNetRuntime(precision="bf16", channels_last=True))
    assert again.step == 3 and again.losses[:2] == bf16.losses


def test_reproduce_hands_the_switches_to_the_notebooks_through_the_environment(monkeypatch):
    from eclipse.profiles import RUNTIME_ENV, get_profile, runtime_env_value

    assert runtime_env_value({"precision": "bf16", "compile": True}) == "bf16,compile"
    monkeypatch.setenv(RUNTIME_ENV, "bf16,channels_last")
    assert get_profile("smoke").runtime() == UNetRuntime(precision="bf16", channels_last=True)
    monkeypatch.setenv(RUNTIME_ENV, "bf16,fast")
    with pytest.raises(ValueError, match="ECLIPSE_UNET_RUNTIME.*fast"):
        get_profile("smoke")
    monkeypatch.delenv(RUNTIME_ENV)
    assert get_profile("smoke").runtime() == UNetRuntime()

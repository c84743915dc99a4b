"""Conformance with the official ECLIPSE / improved-diffusion code, on ../shared/reference/."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from eclipse.diffusion import gaussian as G
from eclipse.diffusion.checkpoints import load_weights, parse_config, schedule_from_settings
from eclipse.diffusion.schedule import make_schedule
from eclipse.diffusion.unet import UNetConfig, build_unet, count_parameters
from eclipse.purify import purify, purify_batch, to_uint8

REF_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "reference"
TINY = REF_DIR / "tiny_reference.pt"
TSV = REF_DIR / "paper_unet_state_dict.tsv"

pytestmark = pytest.mark.skipif(not TINY.exists(), reason=f"conformance reference not found at {TINY}")


@pytest.fixture(scope="module")
def ref() -> dict:
    return torch.load(TINY, weights_only=True)


@pytest.fixture(scope="module")
def tiny_model(ref):
    model = build_unet(ref["config"])
    load_weights(model, ref["state_dict"], str(TINY))
    return model.eval()


@pytest.fixture(scope="module")
def schedule(ref):
    _, settings = parse_config(ref["config"])
    return schedule_from_settings(settings)


def test_tiny_config_and_param_count(ref, tiny_model):
    assert count_parameters(tiny_model) == 1_629_478
    assert ref["config"]["noise_schedule"] == "cosine" and ref["config"]["diffusion_steps"] == 4000


def test_betas_match(ref, schedule):
    assert schedule.num_timesteps == 4000 and schedule.betas.dtype == torch.float64
    torch.testing.assert_close(schedule.betas, ref["betas"], rtol=0, atol=1e-12)
    torch.testing.assert_close(make_schedule("cosine", 4000).betas, ref["betas"], rtol=0, atol=1e-12)


def test_q_sample(ref, schedule):
    x_t = G.q_sample(schedule, ref["x0"], ref["t"], ref["noise"])
    torch.testing.assert_close(x_t, ref["x_t"], rtol=0, atol=1e-6)


def test_model_output(ref, tiny_model, schedule):
    # The stored `model_output` is the UNet evaluated on the raw integer t (not t*1000/4000, as the
    # reference README says); the stored p_* tensors come from the rescaled input, checked below.
    with torch.no_grad():
        raw = tiny_model(ref["x_t"], ref["t"].float())
        scaled = tiny_model(ref["x_t"], G.model_timesteps(schedule, ref["t"]))
    torch.testing.assert_close(raw, ref["model_output"], rtol=0, atol=1e-5)
    assert (scaled[1:] - ref["model_output"][1:]).abs().max() > 1e-3  # the two inputs really differ
    torch.testing.assert_close(G.model_timesteps(schedule, ref["t"]), ref["t"].float() * 0.25)


def test_p_mean_variance(ref, tiny_model, schedule):
    t = ref["t"]
    with torch.no_grad():
        out = G.p_mean_variance(schedule, tiny_model(ref["x_t"], G.model_timesteps(schedule, t)), ref["x_t"], t)
    torch.testing.assert_close(out["mean"], ref["p_mean"], rtol=0, atol=1e-5)
    torch.testing.assert_close(out["log_variance"], ref["p_log_variance"], rtol=0, atol=1e-5)
    torch.testing.assert_close(out["pred_xstart"], ref["pred_xstart"], rtol=0, atol=1e-5)


@pytest.mark.parametrize("t_star", [1, 20, 100])
def test_purified_matches_official(ref, tiny_model, schedule, t_star):
    # the official code seeds the global RNG then uses randn_like; a fresh generator is the same stream
    generator = torch.Generator().manual_seed(ref["purify_seed"])
    with torch.no_grad():
        y = purify_batch(ref["x0"], tiny_model, schedule, t_star=t_star, generator=generator)
    torch.testing.assert_close(y, ref["purified"][t_star], rtol=0, atol=1e-4)


def test_purify_uint8_contract(ref, tiny_model, schedule):
    # one chunk holding all images: purify() must consume the seed exactly like the official loop
    images = to_uint8(ref["x0"])
    x0 = images.float() / 127.5 - 1
    with torch.no_grad():
        expected = purify_batch(x0, tiny_model, schedule, t_star=1,
                                generator=torch.Generator().manual_seed(ref["purify_seed"]))
    out = purify(images, tiny_model, schedule, t_star=1, seed=ref["purify_seed"], batch_size=64, progress=False)
    assert out.dtype == torch.uint8 and out.shape == images.shape
    assert torch.equal(out, to_uint8(expected))


def _tsv_rows() -> list[tuple[str, tuple[int, ...]]]:
    rows = []
    for line in TSV.read_text().strip().splitlines()[1:]:
        key, shape = line.split("\t")
        rows.append((key, tuple(int(s) for s in shape.strip("()").split(",") if s.strip())))
    return rows


@pytest.mark.skipif(not TSV.exists(), reason=f"{TSV} not found")
def test_paper_config_state_dict_layout():
    import json

    cfg, settings = parse_config(json.loads((REF_DIR / "paper_unet_config.json").read_text())["config"])
    assert cfg == UNetConfig()  # our defaults are the paper's configuration
    assert settings.diffusion_steps == 4000 and settings.noise_schedule == "cosine" and settings.learn_sigma
    model = build_unet(cfg)
    assert count_parameters(model) == 52_546_438
    mine = [(k, tuple(v.shape)) for k, v in model.state_dict().items()]
    assert mine == _tsv_rows()
    # a state dict with exactly those keys and shapes loads strictly
    fake = {k: torch.zeros(s) for k, s in _tsv_rows()}
    load_weights(model, fake, "fake")
    assert all(float(p.detach().abs().sum()) == 0 for p in model.parameters())


def test_strict_load_errors_name_file(ref):
    model = build_unet(ref["config"])
    bad = dict(ref["state_dict"])
    bad.pop("out.2.bias")
    bad["out.2.weight"] = torch.zeros(3, 32, 3, 3)
    with pytest.raises(ValueError, match=r"somefile\.pt.*missing keys: out\.2\.bias.*shape mismatches: out\.2\.weight"):
        load_weights(model, bad, "somefile.pt")


OFFICIAL_YAML = """\
data:
    dataset: "CIFAR 10"
    category: "cifar10"

model:
    attention_resolutions: '16,8'
    class_cond: False
    diffusion_steps: 4000
    rescale_timesteps: True
    timestep_respacing: '4000'  # Modify this value to decrease the number of timesteps.
    image_size: 32
    learn_sigma: True
    noise_schedule: 'cosine'
    num_channels: 128
    num_res_blocks: 3
    use_scale_shift_norm: True

sampling:
    batch_size: 32
    last_only: True
"""


def test_parse_official_yaml_nested_and_flat(tmp_path, ref):
    nested = tmp_path / "cifar10.yml"
    nested.write_text(OFFICIAL_YAML)
    cfg, settings = parse_config(nested)
    assert cfg == UNetConfig() and settings.timestep_respacing == "4000" and settings.rescale_timesteps
    sched = schedule_from_settings(settings)
    torch.testing.assert_close(sched.betas, ref["betas"], rtol=0, atol=1e-12)
    flat = tmp_path / "flat.yml"
    flat.write_text("image_size: 32\nnum_channels: 32\nnum_res_blocks: 1\nattention_resolutions: '16'\n"
                    "learn_sigma: true\nnoise_schedule: cosine\ndiffusion_steps: 4000\n")
    cfg, settings = parse_config(flat)
    assert (cfg.num_channels, cfg.num_res_blocks, cfg.attention_resolutions, cfg.num_heads) == (32, 1, "16", 4)
    assert count_parameters(build_unet(cfg)) == 1_629_478
    with pytest.raises(ValueError, match="nope.yml"):
        parse_config(tmp_path / "nope.yml")

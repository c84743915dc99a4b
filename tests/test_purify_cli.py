"""`eclipse purify` with an official-format checkpoint + YAML reproduces the official purification."""
from __future__ import annotations

import pytest
import torch

from eclipse import cli, data
from eclipse.diffusion.checkpoints import load_model_and_schedule
from eclipse.purify import to_uint8

from test_diffusion_conformance import TINY

pytestmark = pytest.mark.skipif(not TINY.exists(), reason=f"conformance reference not found at {TINY}")

TINY_YAML = """\
data:
  dataset: "CIFAR10"
  image_size: 32
  num_channels: 3
model:
  image_size: 32
  num_channels: 32
  num_res_blocks: 1
  attention_resolutions: "16"
  learn_sigma: True
  noise_schedule: "cosine"
  diffusion_steps: 4000
  timestep_respacing: "4000"
  rescale_timesteps: True
  use_scale_shift_norm: True
  num_heads: 4
  dropout: 0.0
"""


@pytest.mark.parametrize("t_star", [1, 100])
def test_cli_purify_matches_official_within_one_level(tmp_path, t_star):
    ref = torch.load(TINY, weights_only=True)
    checkpoint = tmp_path / "ema_0.9999_000000.pt"
    torch.save(ref["state_dict"], checkpoint)  # an improved-diffusion EMA file: a plain state dict
    (tmp_path / "cifar10.yml").write_text(TINY_YAML)
    images = to_uint8(ref["x0"])
    assert torch.equal(images.float() / 127.5 - 1, ref["x0"])  # the reference images are 8-bit
    data.save_images(data.ImageSet(images, torch.arange(4), source="ref"), tmp_path / "in.pkl")
    code = cli.main(["purify", "--checkpoint", str(checkpoint), "--config", str(tmp_path / "cifar10.yml"),
                     "--input", str(tmp_path / "in.pkl"), "--out", str(tmp_path / "out.pkl"),
                     "--t-star", str(t_star), "--seed", str(ref["purify_seed"]), "--sampler", "ancestral",
                     "--batch-size", "4"])
    assert code == 0
    out = data.load_images(tmp_path / "out.pkl")
    assert torch.equal(out.labels, torch.arange(4))  # input order kept
    # The official loop draws its noise with randn_like on the batch, so the draws follow the batch's
    # memory layout. Its DataLoader (ToTensor) yields contiguous NCHW batches, as our file reader does;
    # tiny_reference.pt's x0 happens to be channels_last, so its `purified` is reproduced from that layout.
    model, schedule = load_model_and_schedule(checkpoint, tmp_path / "cifar10.yml")
    with torch.no_grad():
        torch.manual_seed(ref["purify_seed"])
        official_contiguous = official_loop(model, schedule, images.contiguous().float() / 127.5 - 1, t_star)
        torch.manual_seed(ref["purify_seed"])
        official_reference = official_loop(model, schedule, ref["x0"], t_star)
    assert (official_reference - ref["purified"][t_star]).abs().max() < 1e-4  # the loop below is the official one
    assert (out.images.int() - to_uint8(official_contiguous).int()).abs().max() <= 1
    assert not torch.equal(out.images, images)  # it did change the images


def official_loop(model, schedule, x0: torch.Tensor, t_star: int) -> torch.Tensor:
    """The official purification written out step by step (reference README), using torch's global RNG."""
    from eclipse.diffusion.gaussian import p_mean_variance, model_timesteps

    abar = torch.cumprod(1 - schedule.betas.float(), 0)
    noise = torch.randn_like(x0)
    x = abar[t_star - 1].sqrt() * x0 + (1 - abar[t_star - 1]).sqrt() * noise
    for i in range(t_star - 1, -1, -1):
        t = torch.full((x.shape[0],), i, dtype=torch.long)
        out = p_mean_variance(schedule, model(x, model_timesteps(schedule, t)), x, t, clip_denoised=True)
        z = torch.randn_like(x)
        x = out["mean"] + (i != 0) * torch.exp(0.5 * out["log_variance"]) * z
    return x

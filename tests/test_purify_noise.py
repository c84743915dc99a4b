"""Purification noise modes: ``per-image`` gives each image its own stream, so the result does not depend on
how the set is batched or sharded; ``official`` keeps the official code's draws (and depends on the batching)."""
from __future__ import annotations

import pytest
import torch

from eclipse.diffusion.checkpoints import DiffusionSettings, schedule_from_settings
from eclipse.diffusion.gaussian import PerImageNoise, image_seed
from eclipse.diffusion.unet import UNetConfig, build_unet
from eclipse.purify import purify


@pytest.fixture(scope="module")
def tiny_model():
    torch.manual_seed(0)
    model = build_unet(UNetConfig(num_channels=32, num_res_blocks=1, attention_resolutions="16",
                                  channel_mult=(1, 2, 2))).eval()
    return model, schedule_from_settings(DiffusionSettings(diffusion_steps=4000))


@pytest.mark.parametrize("sampler,steps", [("ancestral", None), ("respaced", 3)])
def test_per_image_noise_is_invariant_to_batch_size_and_sharding(tiny_model, sampler, steps):
    model, schedule = tiny_model
    images = torch.randint(0, 256, (7, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))

    def run(x, batch_size, first_index=0, noise="per-image"):
        return purify(x, model, schedule, t_star=6, sampler=sampler, steps=steps, seed=5, batch_size=batch_size,
                      noise=noise, first_index=first_index, progress=False)
    whole = run(images, 7)
    assert all(torch.equal(whole, run(images, b)) for b in (3, 2, 1))
    shards = torch.cat([run(images[:4], 3), run(images[4:], 2, first_index=4)])   # two "processes"
    assert torch.equal(whole, shards)
    assert not torch.equal(whole, purify(images, model, schedule, t_star=6, sampler=sampler, steps=steps, seed=6,
                                         batch_size=7, noise="per-image", progress=False))
    official = [run(images, b, noise="official") for b in (7, 3)]
    assert not torch.equal(official[0], official[1])          # the official draws depend on the batching
    with pytest.raises(ValueError, match="noise mode"):
        run(images, 7, noise="shared")


def test_each_image_stream_is_its_own():
    x = torch.zeros(3, 3, 4, 4)
    a = PerImageNoise(0, [0, 1, 2]).randn_like(x)
    b = PerImageNoise(0, [2]).randn_like(x[:1])
    assert torch.equal(a[2], b[0]) and not torch.equal(a[0], a[1])
    assert image_seed(0, 1) != image_seed(1, 0)
    with pytest.raises(ValueError, match="noise streams"):
        PerImageNoise(0, [0]).randn_like(x)


def test_purify_and_defend_take_the_noise_mode():
    from eclipse.cli import build_parser

    parser = build_parser()
    assert parser.parse_args(["purify", "--input", "a.npz", "--out", "b.npz"]).noise is None   # official in one process
    assert parser.parse_args(["purify", "--input", "a.npz", "--out", "b.npz", "--noise", "per-image"]).noise == "per-image"
    assert parser.parse_args(["defend", "--attack", "urp", "--noise", "per-image"]).noise == "per-image"
    with pytest.raises(SystemExit):
        parser.parse_args(["purify", "--input", "a.npz", "--out", "b.npz", "--noise", "shared"])


def _run_cli(args, env_extra=None, nproc=None, cwd=None):
    import os
    import subprocess
    import sys

    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env_extra or {})}
    prefix = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc), "--master-port", "29561",
              "-m", "eclipse"] if nproc else [sys.executable, "-m", "eclipse"]
    done = subprocess.run(prefix + args, env=env, capture_output=True, text=True, timeout=600, cwd=cwd)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    return done


def test_torchrun_sharded_purification_equals_the_single_process_one_byte_for_byte(tmp_path):
    """`torchrun --nproc-per-node 2 -m eclipse purify --noise per-image` (gloo, CPU) writes the same file as
    one process, at another batch size; official noise under torchrun is refused."""
    from eclipse.data import ImageSet, save_images
    from eclipse.diffusion.checkpoints import DiffusionSettings, save_checkpoint

    torch.manual_seed(0)
    config = UNetConfig(num_channels=32, num_res_blocks=1, attention_resolutions="16", channel_mult=(1, 2))
    weights = build_unet(config).state_dict()
    ema = {k: v.clone() for k, v in weights.items()}   # not shared with the weights (the loader checks sizes)
    save_checkpoint(tmp_path / "model.pt", model=weights, ema=ema, unet_config=config, diffusion=DiffusionSettings())
    images = torch.randint(0, 256, (7, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(2))
    save_images(ImageSet(images, torch.arange(7) % 10, source="random"), tmp_path / "in.npz")
    common = ["purify", "--profile", "smoke", "--checkpoint", str(tmp_path / "model.pt"), "--input",
              str(tmp_path / "in.npz"), "--t-star", "4", "--sampler", "ancestral", "--device", "cpu"]
    _run_cli(common + ["--noise", "per-image", "--batch-size", "7", "--out", str(tmp_path / "one.npz")])
    _run_cli(common + ["--batch-size", "3", "--out", str(tmp_path / "two.npz")], nproc=2)
    assert (tmp_path / "one.npz").read_bytes() == (tmp_path / "two.npz").read_bytes()
    import subprocess
    import sys
    refused = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port",
                              "29562", "-m", "eclipse", *common, "--noise", "official", "--out",
                              str(tmp_path / "three.npz")], capture_output=True, text=True, timeout=600)
    assert refused.returncode != 0 and "per-image" in refused.stdout + refused.stderr

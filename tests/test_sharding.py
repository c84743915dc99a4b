"""Results that do not depend on how work is split: ``per-image`` purification noise (each image its own stream;
``official`` keeps the official code's draws and depends on the batching), torchrun-sharded purification and
DDP diffusion training (gloo, 2 CPU processes)."""
from __future__ import annotations

import os
from pathlib import Path

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


@pytest.mark.parametrize("sampler,steps", [("ancestral", None), ("respaced", 3), ("chained", 2), ("masked", 2),
                                           ("elixir", 3)])
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


def test_torchrun_ddp_diffusion_training_follows_one_process_with_the_global_batch(tmp_path):
    """2 DDP ranks of batch 2 (gloo, CPU) train the weights 1 process trains with batch 4, within float
    tolerance; rank 0 writes the one checkpoint."""
    from eclipse.data import ImageSet, save_images
    from eclipse.storage import safe_torch_load

    images = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(3))
    save_images(ImageSet(images, torch.arange(8) % 10, source="random"), tmp_path / "sparse.npz")
    common = ["train-diffusion", "--profile", "smoke", "--sparse-set", str(tmp_path / "sparse.npz"), "--iterations",
              "3", "--replicas", "0", "--device", "cpu"]
    _run_cli(common + ["--batch-size", "4"], env_extra={"ECLIPSE_CACHE": str(tmp_path / "one")})
    _run_cli(common + ["--batch-size", "2"], env_extra={"ECLIPSE_CACHE": str(tmp_path / "two")}, nproc=2)
    (one,), (two,) = [list((tmp_path / c / "diffusion").glob("*/checkpoint.pt")) for c in ("one", "two")]
    a, b = safe_torch_load(one), safe_torch_load(two)
    assert a["step"] == b["step"] == 3 and b["extra"]["world_size"] == 2
    for name, value in a["ema"].items():
        assert torch.allclose(value, b["ema"][name], atol=1e-5, rtol=1e-4), name
    assert a["extra"]["losses"] == pytest.approx(b["extra"]["losses"], rel=1e-4)
    _run_cli(common + ["--batch-size", "2"], env_extra={"ECLIPSE_CACHE": str(tmp_path / "small")})
    (small,) = list((tmp_path / "small" / "diffusion").glob("*/checkpoint.pt"))
    c = safe_torch_load(small)
    assert not all(torch.allclose(v, c["model"][k], atol=1e-5, rtol=1e-4) for k, v in b["model"].items())  # batch 2 is not 4


def test_torchrun_table_shares_the_grid_one_victim_per_process(tmp_path):
    """`torchrun --nproc-per-node 2 -m eclipse table` (gloo, CPU) computes the poison, the diffusion model, the
    purified set and each victim once, the two victims in two processes; then one process on the same cache
    finds every artifact under the identity it would have made (nothing is keyed by the number of processes)
    and writes the same table byte for byte."""
    from collections import Counter

    from eclipse.artifacts import read_cache_log

    args = ["table", "--profile", "smoke", "--attacks", "urp", "--defenses", "none", "eclipse:A", "--no-reference",
            "--no-progress", "--device", "cpu", "--name", "shared"]
    (tmp_path / "cache").mkdir()   # a fresh artifact cache sharing the session's decoded CIFAR-10
    (tmp_path / "cache" / "decoded").symlink_to(Path(os.environ["ECLIPSE_CACHE"]) / "decoded", target_is_directory=True)
    shared, single = tmp_path / "torchrun.jsonl", tmp_path / "one.jsonl"
    _run_cli(args + ["--out-dir", str(tmp_path / "two")], nproc=2,
             env_extra={"ECLIPSE_CACHE": str(tmp_path / "cache"), "ECLIPSE_CACHE_LOG": str(shared)})
    computed = [e for e in read_cache_log(shared) if not e["hit"]]
    assert Counter(e["artifact"].split("/")[0] for e in computed) == {"poisons": 1, "diffusion": 1, "purified": 1,
                                                                        "runs": 2}
    assert max(Counter(e["artifact"] for e in computed).values()) == 1      # nothing made twice
    assert len({e["pid"] for e in computed if e["artifact"].startswith("runs/")}) == 2   # one victim per process
    assert not (tmp_path / "two" / "shared-smoke-manifest.json").read_text().count('"processes": 1')
    _run_cli(args + ["--out-dir", str(tmp_path / "one")],
             env_extra={"ECLIPSE_CACHE": str(tmp_path / "cache"), "ECLIPSE_CACHE_LOG": str(single)})
    looked_up = read_cache_log(single)
    assert {e["artifact"] for e in looked_up} == {e["artifact"] for e in computed}
    assert all(e["hit"] for e in looked_up), [e["artifact"] for e in looked_up if not e["hit"]]
    assert (tmp_path / "one" / "shared-smoke.csv").read_bytes() == (tmp_path / "two" / "shared-smoke.csv").read_bytes()

"""The command line: info, inspect (with perturbation norms), clear errors on bad files."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from eclipse import data


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "eclipse.cli", *args], capture_output=True, text=True,
                          env={**os.environ}, timeout=300)


def test_info_reports_data():
    proc = run("info")
    assert proc.returncode == 0, proc.stderr
    assert "cifar10-jpeg.tar.gz" in proc.stdout or "ECLIPSE_DATA" in os.environ


def test_inspect_reports_counts_and_norms(random_set, tmp_path):
    clean = data.save_images(random_set, tmp_path / "clean.npz")
    images = random_set.images.clone()
    images[:, :, 5, 7] = (images[:, :, 5, 7].int() + 3).clamp(0, 255).to(torch.uint8)
    data.save_images(random_set.with_images(images, "poisoned"), tmp_path / "poisoned.pkl")
    proc = run("inspect", str(tmp_path / "poisoned.pkl"), "--reference", str(clean), "--json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["count"] == 40 and report["shape"] == [3, 32, 32]
    assert sum(report["label_histogram"].values()) == 40
    changed = (images.int() - random_set.images.int()).abs()
    assert report["perturbation"]["linf_max_255"] == float(changed.max())
    assert report["perturbation"]["l0_max_pixels"] == 1  # one pixel position (all 3 channels) changed


def test_inspect_bad_file_exits_nonzero_naming_it(tmp_path):
    bad = tmp_path / "broken.npz"
    bad.write_bytes(b"PK\x03\x04 not really a zip")
    proc = run("inspect", str(bad))
    assert proc.returncode == 2
    assert "broken.npz" in proc.stderr and "Traceback" not in proc.stderr
    missing = run("inspect", str(tmp_path / "nope.pkl"))
    assert missing.returncode == 2 and "nope.pkl" in missing.stderr


def test_inspect_reference_mismatch(random_set, tmp_path):
    data.save_images(random_set, tmp_path / "a.npz")
    data.save_images(random_set.subset(torch.arange(10)), tmp_path / "b.npz")
    proc = run("inspect", str(tmp_path / "a.npz"), "--reference", str(tmp_path / "b.npz"))
    assert proc.returncode == 2 and "b.npz" in proc.stderr


def test_unknown_attack_is_a_clean_error():
    proc = run("poison", "--profile", "smoke", "--attack", "em-not-here", "--out", "/tmp/never.pkl")
    assert proc.returncode == 2 and "em-not-here" in proc.stderr and "Traceback" not in proc.stderr


def test_reproduce_parameters_are_read_as_yaml():
    from eclipse.cli import build_parser, parse_parameters

    args = build_parser().parse_args(["reproduce", "--only", "05", "-p", "attacks", "[lsp, ar]", "-p", "gray_p", "0.4"])
    assert parse_parameters(args.parameter) == {"attacks": ["lsp", "ar"], "gray_p": 0.4}
    import pytest

    with pytest.raises(ValueError, match="not a Python identifier"):
        parse_parameters([["bad-name", "1"]])


def test_precision_flag_overrides_the_profile_victim_and_says_when_bf16_is_emulated(monkeypatch):
    import warnings

    from eclipse import cli, seeding, training

    args = cli.build_parser().parse_args(["table", "--profile", "quick", "--precision", "fp32"])
    assert cli._profile(args).victim.precision == "fp32"
    args = cli.build_parser().parse_args(["table", "--profile", "quick"])
    assert cli._profile(args).victim.precision == "bf16"
    monkeypatch.setattr(training, "native_bf16", lambda: False)
    small = data.ImageSet(torch.zeros(20, 3, 32, 32, dtype=torch.uint8), torch.arange(20) % 10, source="zeros")
    config = training.TrainConfig(width=8, epochs=1, batch_size=10, precision="bf16")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        training.train_victim(small, small, config, progress=False)
    assert any("emulated" in str(w.message) for w in caught)
    assert isinstance(seeding.native_bf16(), bool)


def test_every_command_prints_its_help_and_the_compute_commands_take_a_device(capsys):
    """Help text is formatted with %-substitution: a registry description with a bare '%' breaks it."""
    from eclipse.cli import build_parser

    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices
    for name in commands:
        with pytest.raises(SystemExit) as done:
            parser.parse_args([name, "--help"])
        assert done.value.code == 0, name
    capsys.readouterr()
    for name in ("train", "table", "poison", "train-diffusion", "purify", "defend", "reproduce"):
        assert "--device" in commands[name].format_help(), name

"""Hostile and malformed inputs, one test per class of defect (issue 14), on files the tests build.

Each class runs its cases in one child process (``tests/hostile_harness.py``): every case must end within
seconds, as exit status 2 (or a DataError, for library calls) with one line naming the file and no
traceback, the child's peak memory must stay under 1 GB, nothing named by a file may run, and the inputs
and any earlier output must be intact afterwards.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import shutil
import struct
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from eclipse import cli, data, storage
from eclipse.diffusion.unet import UNetConfig, build_unet
from eclipse.errors import DataError
from eclipse.perturbations import apply_perturbation

REPO = Path(__file__).resolve().parents[1]
HARNESS = Path(__file__).with_name("hostile_harness.py")
PEAK_MIB = 1024
CASE_SECONDS = 10

TINY_UNET = UNetConfig(num_channels=32, num_res_blocks=1, attention_resolutions="16")
TINY_YAML = ("model:\n  image_size: 32\n  num_channels: 32\n  num_res_blocks: 1\n  attention_resolutions: '16'\n"
             "  learn_sigma: True\n  noise_schedule: cosine\n  diffusion_steps: 4000\n")


def run_hostile(cases: list[dict], tmp_path: Path) -> list[dict]:
    """Run ``cases`` in a child process; check time, memory and the absence of tracebacks; return results."""
    spec = tmp_path / "cases.json"
    spec.write_text(json.dumps(cases))
    env = {**os.environ, "ECLIPSE_CACHE": str(tmp_path / "cache"),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    env.pop("ECLIPSE_DEBUG", None)
    proc = subprocess.run([sys.executable, str(HARNESS), str(spec)], capture_output=True, text=True, env=env,
                          cwd=tmp_path, timeout=60 + CASE_SECONDS * len(cases))
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = [json.loads(line) for line in proc.stdout.splitlines()]
    assert len(results) == len(cases)
    for result in results:
        assert result["seconds"] < CASE_SECONDS, result
        assert "Traceback" not in result["stderr"], result
    assert results[-1]["peak_mib"] < PEAK_MIB, results[-1]
    return results


def expect_refused(results: list[dict], *names_in_message: str) -> None:
    """Every result is a clean refusal (exit 2 / DataError) whose message names what it should."""
    for result, needle in zip(results, names_in_message, strict=True):
        assert result["outcome"] in (2, "DataError"), result
        lines = result["stderr"].strip().splitlines()
        if result["outcome"] == 2:  # the last line is the one error line (progress notes or usage may precede it)
            assert sum("error:" in line for line in lines) == 1 and "error:" in lines[-1], result
        else:
            assert len(lines) == 1, result
        assert needle in lines[-1], (needle, result)


def digest(path: Path) -> str:
    if path.is_dir():
        return hashlib.sha256(b"".join(f.read_bytes() for f in sorted(path.rglob("*")) if f.is_file())).hexdigest()
    return hashlib.sha256(path.read_bytes()).hexdigest()


def png(image: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, "PNG")
    return buffer.getvalue()


def add_member(tar: tarfile.TarFile, name: str, payload: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(payload)
    tar.addfile(info, io.BytesIO(payload))


def small_set(n: int = 4, seed: int = 0) -> data.ImageSet:
    g = torch.Generator().manual_seed(seed)
    return data.ImageSet(torch.randint(0, 256, (n, 3, 32, 32), generator=g, dtype=torch.uint8),
                         torch.arange(n) % 10, source="test")


@pytest.fixture()
def checkpoint(tmp_path: Path) -> tuple[Path, Path]:
    """An improved-diffusion-format state dict of a tiny UNet and its YAML."""
    torch.manual_seed(0)
    path = tmp_path / "ema.pt"
    torch.save(build_unet(TINY_UNET).state_dict(), path)
    (tmp_path / "tiny.yml").write_text(TINY_YAML)
    return path, tmp_path / "tiny.yml"


# ------------------------------------------------------------------------------ 1. the release-pickle unpickler
def test_release_pickle_cannot_exhaust_cpu_or_memory_or_run_code(tmp_path):
    text = ("\u00e9" * 90_000).encode("utf-8")  # punycode of this is quadratic: minutes
    punycode = (b"\x80\x02c_codecs\nencode\nX" + struct.pack("<I", len(text)) + text
                + b"X\x08\x00\x00\x00punycode\x86R.")
    (tmp_path / "punycode.pkl").write_bytes(punycode)
    entry = b"B" + struct.pack("<I", 3072) + bytes(3072) + b"K\x00\x86q\x01"
    (tmp_path / "memo-refs.pkl").write_bytes(b"\x80\x03]q\x00(" + entry + b"h\x01" * 1_000_000 + b"e.")
    (tmp_path / "memo-index.pkl").write_bytes(b"\x80\x02Nr" + struct.pack("<I", 2**26) + b".")
    (tmp_path / "huge-label.pkl").write_bytes(pickle.dumps([(bytes(3072), 2**70)], protocol=2))
    marker = tmp_path / "code-ran"

    class Exploit:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    (tmp_path / "exploit.pkl").write_bytes(pickle.dumps([(bytes(3072), Exploit())], protocol=2))
    (tmp_path / "build.pkl").write_bytes(b"\x80\x02]q\x00}q\x01b.")
    names = ["punycode", "memo-refs", "memo-index", "huge-label", "exploit", "build"]
    before = {n: digest(tmp_path / f"{n}.pkl") for n in names}
    results = run_hostile([{"cli": ["inspect", str(tmp_path / f"{n}.pkl")]} for n in names], tmp_path)
    expect_refused(results, "latin1", "cannot fit", "memo index", "label of 71 bits", "posix.system", "BUILD")
    assert all(str(tmp_path / f"{n}.pkl") in r["stderr"] for n, r in zip(names, results))
    assert not marker.exists()
    assert before == {n: digest(tmp_path / f"{n}.pkl") for n in names}


# ------------------------------------------------------------------------------ 2. archives and folders
class _Zeros(io.RawIOBase):
    """``size`` zero bytes, streamed (a bomb member without holding it in memory)."""

    def __init__(self, size: int):
        self.left = size

    def readinto(self, buffer) -> int:
        n = min(len(buffer), self.left)
        buffer[:n] = bytes(n)
        self.left -= n
        return n

    def readable(self) -> bool:
        return True


def test_archive_and_folder_readers_check_size_and_type_before_reading(tmp_path):
    from PIL import Image

    good = png(np.zeros((32, 32, 3), np.uint8))
    with tarfile.open(tmp_path / "sparse.tar.gz", "w:gz") as tar:  # a header claiming 20 GB, no data
        info = tarfile.TarInfo("train/cat/0.png")
        info.size = 20 * 2**30
        tar.addfile(info)
    with tarfile.open(tmp_path / "bomb.tar.gz", "w:gz", compresslevel=1) as tar:
        add_member(tar, "train/cat/0.png", good)
        info = tarfile.TarInfo("train/junk.bin")
        info.size = 150 * 2**20
        tar.addfile(info, _Zeros(info.size))
    with tarfile.open(tmp_path / "big-png.tar.gz", "w:gz", compresslevel=1) as tar:
        info = tarfile.TarInfo("train/cat/0.png")
        info.size = 8 * 2**20
        tar.addfile(info, _Zeros(info.size))
    buffer = io.BytesIO()
    Image.new("1", (13000, 13000)).save(buffer, "PNG")
    with tarfile.open(tmp_path / "huge-header.tar.gz", "w:gz") as tar:
        add_member(tar, "train/cat/0.png", buffer.getvalue())
    folder = tmp_path / "folder"
    (folder / "cat").mkdir(parents=True)
    (folder / "cat" / "0.png").write_bytes(good)
    (folder / "cat" / "zero.png").symlink_to("/dev/zero")
    fifo = tmp_path / "fifo" / "cat"
    fifo.mkdir(parents=True)
    os.mkfifo(fifo / "0.png")
    with tarfile.open(tmp_path / "links.tar", "w") as tar:  # a hard link and a symlink to a member: read
        add_member(tar, "cat/0.png", good)
        for kind, name in ((tarfile.LNKTYPE, "dog/1.png"), (tarfile.SYMTYPE, "dog/2.png")):
            info = tarfile.TarInfo(name)
            info.type, info.linkname = kind, "cat/0.png" if kind == tarfile.LNKTYPE else "../cat/0.png"
            tar.addfile(info)
    cases = [{"cli": ["inspect", str(tmp_path / n), "--split", "train"]}
             for n in ("sparse.tar.gz", "bomb.tar.gz", "big-png.tar.gz", "huge-header.tar.gz")]
    cases += [{"cli": ["inspect", str(folder)]}, {"cli": ["inspect", str(tmp_path / "fifo")]},
              {"cli": ["inspect", str(tmp_path / "links.tar"), "--json"]}]
    results = run_hostile(cases, tmp_path)
    expect_refused(results[:6], "more than a", "decompression bomb", "8,388,608 bytes", "13000x13000",
                   "zero.png: is a character device", "0.png: is a FIFO")
    assert results[6]["outcome"] == 0, results[6]
    assert len(data.load_images(tmp_path / "links.tar")) == 3


# ------------------------------------------------------------------------------ 3. wrong output with exit 0
def test_inputs_that_used_to_give_wrong_output_are_errors(tmp_path, checkpoint):
    ckpt, yaml_path = checkpoint
    state = torch.load(ckpt, weights_only=True)
    state["out.2.weight"] = torch.full_like(state["out.2.weight"], float("nan"))
    torch.save(state, tmp_path / "nan.pt")
    (tmp_path / "typo.yml").write_text(TINY_YAML.replace("noise_schedule", "noise_shedule"))
    source = data.save_images(small_set(), tmp_path / "in.pkl")
    batches = tmp_path / "batches" / "cifar-10-batches-py"
    batches.mkdir(parents=True)
    (batches / "test_batch").write_bytes(pickle.dumps(
        {b"data": np.full((2, 3072), 300.0, np.float32), b"labels": [0, 1]}, protocol=2))
    purify = ["purify", "--profile", "smoke", "--input", str(source), "--device", "cpu", "--t-star", "2"]
    cases = [
        {"cli": [*purify, "--checkpoint", str(tmp_path / "nan.pt"), "--config", str(yaml_path),
                 "--out", str(tmp_path / "nan-out.pkl")]},
        {"cli": [*purify, "--checkpoint", str(ckpt), "--config", str(yaml_path), "--eta", "nan",
                 "--out", str(tmp_path / "eta.pkl")]},
        {"cli": [*purify, "--checkpoint", str(ckpt), "--config", str(tmp_path / "typo.yml"),
                 "--out", str(tmp_path / "typo.pkl")]},
        {"cli": ["inspect", str(tmp_path / "batches"), "--split", "test"]},
        {"cli": ["inspect", str(tmp_path / "batches"), "--split", "bogus"]},
        {"call": "eclipse.data:load_images", "args": [str(batches)], "kwargs": {"split": "bogus"}},
        {"cli": [*purify, "--checkpoint", str(ckpt), "--config", str(yaml_path), "--steps", "0",
                 "--out", str(tmp_path / "steps.pkl")]},
    ]
    results = run_hostile(cases, tmp_path)
    expect_refused(results, "NaN or infinite", "--eta: expected a number in [0, 1]", "did you mean 'noise_schedule'",
                   "test_batch: data must be a uint8 array, got float32", "--split: invalid choice: 'bogus'",
                   "not 'bogus'", "--steps: expected a whole number >= 1")
    assert not any((tmp_path / n).exists() for n in ("nan-out.pkl", "eta.pkl", "typo.pkl", "steps.pkl"))

    # N images == K classes: a perturbation file of N entries is ambiguous, and must be named
    ten = small_set(10)
    delta = torch.full((10, 3, 32, 32), 4 / 255)
    with pytest.raises(DataError, match="fit both"):
        apply_perturbation(ten, delta, "delta.pt")
    per_class = apply_perturbation(ten, delta * torch.arange(10).view(10, 1, 1, 1).flip(0), "delta.pt", per="class")
    per_sample = apply_perturbation(ten, delta * torch.arange(10).view(10, 1, 1, 1).flip(0), "delta.pt", per="sample")
    assert torch.equal(per_sample.images, per_class.images) == torch.equal(ten.labels, torch.arange(10))
    # a training set whose classes differ from the evaluation set's is refused before any training
    five = data.ImageSet(ten.images[:5], torch.arange(5), classes=("a", "b", "c", "d", "e"), source="five")
    with pytest.raises(DataError, match="differ from the evaluation set's"):
        cli._check_same_classes(five, ten, "five.pkl")


# ------------------------------------------------------------------------------ 4. checkpoint and YAML metadata
def test_config_and_checkpoint_metadata_are_validated_before_anything_is_built(tmp_path, checkpoint):
    ckpt, _ = checkpoint
    source = data.save_images(small_set(), tmp_path / "in.pkl")
    bomb = "".join(f"{c}: &{c} [{', '.join(['*' + p] * 9)}]\n" for p, c in zip("abcdefgh", "bcdefghi"))
    configs = {
        "steps-1e9.yml": TINY_YAML.replace("diffusion_steps: 4000", "diffusion_steps: 1e9"),
        "steps-int.yml": TINY_YAML.replace("diffusion_steps: 4000", "diffusion_steps: 1000000000"),
        "alias.yml": "a: &a ['16', '16', '16', '16', '16', '16', '16', '16', '16']\n" + bomb
                     + TINY_YAML.replace("attention_resolutions: '16'", "attention_resolutions: *i"),
        "abc.yml": TINY_YAML.replace("num_channels: 32", "num_channels: abc"),
        "float.yml": TINY_YAML.replace("num_channels: 32", "num_channels: 32.5"),
        "wide.yml": TINY_YAML.replace("num_channels: 32", "num_channels: 200000"),
    }
    for name, text in configs.items():
        (tmp_path / name).write_text(text)
    ours = {"format": "eclipse-diffusion-v1", "model": torch.load(ckpt, weights_only=True), "ema": None,
            "unet_config": {**TINY_UNET.to_dict(), "num_channels": 200000}, "diffusion": {}, "step": 0}
    torch.save(ours, tmp_path / "ours.pt")
    purify = ["purify", "--profile", "smoke", "--input", str(source), "--device", "cpu", "--t-star", "2",
              "--out", str(tmp_path / "out.pkl")]
    cases = [{"cli": [*purify, "--checkpoint", str(ckpt), "--config", str(tmp_path / n)]} for n in configs]
    cases.append({"cli": [*purify, "--checkpoint", str(tmp_path / "ours.pt")]})
    results = run_hostile(cases, tmp_path)
    expect_refused(results, "diffusion_steps must be an integer", "diffusion_steps must lie in 1..100000",
                   "alias *a is not allowed", "num_channels must be an integer", "num_channels must be an integer",
                   "num_channels must lie in 32..1024", "ours.pt (its saved config): num_channels")
    assert all(name in r["stderr"] for name, r in zip(configs, results))
    assert not (tmp_path / "out.pkl").exists()


# ------------------------------------------------------------------------------ 5. tensor files
def test_tensor_files_cannot_claim_more_memory_than_they_hold(tmp_path, checkpoint):
    ckpt, yaml_path = checkpoint
    torch.save(torch.zeros(1, 1, 1, 1).expand(1_000_000, 3, 32, 32), tmp_path / "stride0.pt")
    assert (tmp_path / "stride0.pt").stat().st_size < 4096
    header = {"descr": "<f4", "fortran_order": False, "shape": (1_000_000, 3, 32, 32)}
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, header)
    (tmp_path / "short.npy").write_bytes(buffer.getvalue() + bytes(16))
    import zipfile

    with zipfile.ZipFile(ckpt) as src, zipfile.ZipFile(tmp_path / "deflated.pt", "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            dst.writestr(info.filename, src.read(info))
    source = data.save_images(small_set(), tmp_path / "in.pkl")
    cases = [{"call": "eclipse.perturbations:load_perturbation", "args": [str(tmp_path / "stride0.pt")]},
             {"call": "eclipse.perturbations:load_perturbation", "args": [str(tmp_path / "short.npy")]},
             {"cli": ["purify", "--profile", "smoke", "--input", str(source), "--checkpoint",
                      str(tmp_path / "deflated.pt"), "--config", str(yaml_path), "--out", str(tmp_path / "o.pkl")]}]
    results = run_hostile(cases, tmp_path)
    expect_refused(results, "overlapping strides", "only 16 bytes follow", "compressed members")


# ------------------------------------------------------------------------------ 6. output handling
def test_outputs_are_checked_before_any_work_and_never_replace_an_input(tmp_path, checkpoint):
    ckpt, yaml_path = checkpoint
    source = data.save_images(small_set(), tmp_path / "in.pkl")
    (tmp_path / "existing").mkdir()
    (tmp_path / "folder.pkl").mkdir()
    earlier = data.save_images(small_set(seed=1), tmp_path / "earlier.npz")
    before = {p: digest(p) for p in (source, earlier, ckpt, yaml_path)}
    purify = ["purify", "--profile", "smoke", "--input", str(source), "--checkpoint", str(ckpt),
              "--config", str(yaml_path), "--device", "cpu", "--t-star", "2"]
    (tmp_path / "alias.pkl").symlink_to(source)
    outs = [source, tmp_path / "alias.pkl", tmp_path / "x.png", tmp_path / "existing", Path("/sys/x.pkl"), tmp_path / "folder.pkl"]
    cases = [{"cli": [*purify, "--out", str(out)]} for out in outs]
    cases.append({"cli": ["defend", "--profile", "smoke", "--dataset", str(source), "--checkpoint", str(ckpt),
                          "--config", str(yaml_path), "--out", str(source), "--no-train"]})
    results = run_hostile(cases, tmp_path)
    expect_refused(results, "would destroy the input", "would destroy the input", ".png is not one of them",
                   "already exists", "cannot write in /sys", "is an existing folder", "would destroy the input")
    assert before == {p: digest(p) for p in before}

    old = os.umask(0o027)
    try:
        written = storage.atomic_write_bytes(tmp_path / "perm" / "out.bin", b"x")
    finally:
        os.umask(old)
    assert written.stat().st_mode & 0o777 == 0o640  # the user's umask, not mkstemp's 0600


# ------------------------------------------------------------------------------ 7. one line, exit 2 or 130
@pytest.mark.parametrize("error, status, text", [
    (KeyboardInterrupt(), 130, "interrupted"), (MemoryError(), 2, "out of memory"),
    (OverflowError("int too large"), 2, "unexpected OverflowError: int too large"),
    (TypeError("bad type"), 2, "unexpected TypeError: bad type"),
    (PermissionError(13, "Permission denied", "/some/file"), 2, "/some/file: Permission denied"),
])
def test_every_failure_is_one_line_without_traceback(monkeypatch, capsys, error, status, text):
    def boom(args):
        raise error

    monkeypatch.setattr(cli, "cmd_info", boom)
    monkeypatch.delenv("ECLIPSE_DEBUG", raising=False)
    assert cli.main(["info"]) == status
    err = capsys.readouterr().err
    assert text in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_ctrl_c_while_writing_an_image_folder_leaves_nothing(tmp_path, monkeypatch):
    import torchvision.io

    calls = []

    def interrupted(image):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return torch.zeros(8, dtype=torch.uint8)

    monkeypatch.setattr(torchvision.io, "encode_png", interrupted)
    with pytest.raises(KeyboardInterrupt):
        data.save_images(small_set(), tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


def test_error_messages_name_the_resume_manifest(tmp_path):
    from eclipse.diffusion.schedule import make_schedule
    from eclipse.purify import purify

    (tmp_path / "resume").mkdir()
    (tmp_path / "resume" / "manifest.json").write_text("{not json")
    with pytest.raises(ValueError, match="resume/manifest.json: unreadable resume manifest"):
        purify(small_set().images, lambda x, t: torch.zeros_like(x), make_schedule("cosine", 100), t_star=2,
               seed=0, batch_size=2, resume_dir=tmp_path / "resume", progress=False)


# ------------------------------------------------------------------------------ 8. leftovers and staleness
def test_temp_files_of_killed_writers_are_cleaned(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f".out.pkl.{dead.pid}.abc123.tmp"
    live = tmp_path / f".out.pkl.{os.getpid()}.def456.tmp"
    stale_folder = tmp_path / f".images.{dead.pid}.xyz789.tmp"
    stale.write_bytes(b"partial")
    live.write_bytes(b"in progress")
    (stale_folder / "cat").mkdir(parents=True)
    (stale_folder / "cat" / "0.png").write_bytes(b"half")
    storage.atomic_write_bytes(tmp_path / "out.pkl", b"done")
    assert not stale.exists() and not stale_folder.exists() and live.exists()
    assert (tmp_path / "out.pkl").read_bytes() == b"done"


def test_decode_cache_is_keyed_on_content_not_size_and_mtime(tmp_path, monkeypatch):
    from PIL import Image

    monkeypatch.setenv("ECLIPSE_CACHE", str(tmp_path / "cache"))

    def bmp_tar(path: Path, value: int) -> None:
        with tarfile.open(path, "w") as tar:
            buffer = io.BytesIO()
            Image.fromarray(np.full((32, 32, 3), value, np.uint8)).save(buffer, "BMP")
            add_member(tar, "cat/0.bmp", buffer.getvalue())

    bmp_tar(tmp_path / "a.tar", 10)
    bmp_tar(tmp_path / "b.tar", 200)
    assert (tmp_path / "a.tar").stat().st_size == (tmp_path / "b.tar").stat().st_size
    assert int(data.load_images(tmp_path / "a.tar").images.max()) == 10
    stamp = (tmp_path / "a.tar").stat()
    shutil.copyfile(tmp_path / "b.tar", tmp_path / "a.tar")
    os.utime(tmp_path / "a.tar", ns=(stamp.st_atime_ns, stamp.st_mtime_ns))  # as `cp -p` would leave it
    assert int(data.load_images(tmp_path / "a.tar").images.max()) == 200


def test_a_resume_chunk_swapped_for_another_valid_one_is_recomputed(tmp_path):
    from eclipse.diffusion.schedule import make_schedule
    from eclipse.purify import purify

    images = small_set(4).images
    schedule = make_schedule("cosine", 100)

    def run():
        return purify(images, lambda x, t: 0.1 * x, schedule, t_star=5, seed=3, batch_size=2,
                      resume_dir=tmp_path / "resume", progress=False)

    first = run()
    chunks = sorted((tmp_path / "resume").glob("chunk_*.pt"))
    assert len(chunks) == 2 and not torch.equal(first[:2], first[2:])
    shutil.copyfile(chunks[0], chunks[1])  # a valid chunk, of the wrong place
    assert torch.equal(run(), first)

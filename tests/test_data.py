"""Loaders round-trip, hostile and malformed files are refused with the file named."""
from __future__ import annotations

import os
import pickle
import subprocess
import sys
import tarfile

import numpy as np
import pytest
import torch

from eclipse import data, perturbations
from eclipse.data import DataError, ImageSet


def test_offline_cifar10_is_complete(cifar_train, cifar_test):
    assert cifar_train.images.shape == (50000, 3, 32, 32) and cifar_train.images.dtype == torch.uint8
    assert cifar_train.class_counts() == [5000] * 10
    assert cifar_test.class_counts() == [1000] * 10
    assert cifar_train.classes == data.CIFAR10_CLASSES
    # not a constant image set: real pixels vary
    assert cifar_train.images[:100].float().std() > 40


def test_release_pickle_roundtrip(random_set, tmp_path):
    path = data.save_images(random_set, tmp_path / "set.pkl")
    back = data.load_images(path)
    assert torch.equal(back.images, random_set.images) and torch.equal(back.labels, random_set.labels)
    # the bytes are PIL-style HWC RGB, as the official release stores them
    raw = pickle.loads(path.read_bytes())
    assert raw[0][0] == random_set.images[0].permute(1, 2, 0).contiguous().numpy().tobytes()


def test_release_pickle_protocol2_bytes(random_set, tmp_path):
    records = [(random_set.images[i].permute(1, 2, 0).numpy().tobytes(), int(random_set.labels[i])) for i in range(5)]
    path = tmp_path / "p2.pkl"
    path.write_bytes(pickle.dumps(records, protocol=2))
    assert torch.equal(data.load_images(path).images, random_set.images[:5])


def test_npz_roundtrip_nhwc_and_nchw(random_set, tmp_path):
    path = data.save_images(random_set, tmp_path / "set.npz")
    back = data.load_images(path)
    assert torch.equal(back.images, random_set.images)
    np.savez(tmp_path / "nchw.npz", data=random_set.images.numpy(), targets=random_set.labels.numpy())
    assert torch.equal(data.load_images(tmp_path / "nchw.npz").images, random_set.images)


def test_image_folder_and_tar_roundtrip(random_set, tmp_path):
    from PIL import Image

    root = tmp_path / "folder"
    for i in range(len(random_set)):
        cls = data.CIFAR10_CLASSES[int(random_set.labels[i])]
        (root / "train" / cls).mkdir(parents=True, exist_ok=True)
        Image.fromarray(random_set.images[i].permute(1, 2, 0).numpy()).save(root / "train" / cls / f"{i:04d}.png")
    folder = data.load_images(root, split="train")
    with tarfile.open(tmp_path / "folder.tar.gz", "w:gz") as tar:
        tar.add(root / "train", arcname="train")
    archive = data.load_images(tmp_path / "folder.tar.gz", split="train")
    for loaded in (folder, archive):
        assert loaded.class_counts() == random_set.class_counts()
        # PNG is lossless: every loaded image is one of the originals with the right label
        originals = {random_set.images[i].numpy().tobytes(): int(random_set.labels[i]) for i in range(len(random_set))}
        for img, label in zip(loaded.images, loaded.labels):
            assert originals[img.numpy().tobytes()] == int(label)


def test_cifar_batches_folder_roundtrip(random_set, tmp_path):
    batches = tmp_path / "cifar-10-batches-py"
    batches.mkdir()
    flat = random_set.images.reshape(len(random_set), -1).numpy()
    for i in range(1, 6):
        (batches / f"data_batch_{i}").write_bytes(pickle.dumps(
            {b"data": flat[(i - 1) * 8:i * 8], b"labels": random_set.labels[(i - 1) * 8:i * 8].tolist()}, protocol=2))
    loaded = data.load_images(tmp_path, split="train")
    assert torch.equal(loaded.images, random_set.images) and torch.equal(loaded.labels, random_set.labels)


def test_perturbation_per_sample_and_per_class(random_set, tmp_path):
    delta = torch.full((10, 3, 32, 32), 4 / 255)
    delta[:, 0] = -4 / 255
    torch.save(delta, tmp_path / "classwise.pt")
    loaded = perturbations.load_perturbation(tmp_path / "classwise.pt")
    poisoned = perturbations.apply_perturbation(random_set, loaded)
    expected = (random_set.images.float() + torch.tensor([-4.0, 4.0, 4.0]).view(1, 3, 1, 1)).clamp(0, 255)
    assert torch.equal(poisoned.images, expected.to(torch.uint8))
    np.save(tmp_path / "int8.npy", np.full((40, 3, 32, 32), -8, dtype=np.int8))  # REM: pixel units
    rem = perturbations.apply_perturbation(random_set, perturbations.load_perturbation(tmp_path / "int8.npy"))
    assert torch.equal(rem.images, (random_set.images.int() - 8).clamp(0, 255).to(torch.uint8))


class _Hostile:
    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (open, (self.target, "w"))


def test_hostile_pickle_is_refused_and_creates_nothing(tmp_path):
    victim_file = tmp_path / "pwned.txt"
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps([(b"\0" * 3072, 0), _Hostile(str(victim_file))]))
    with pytest.raises(DataError, match="evil.pkl.*refusing"):
        data.load_images(path)
    assert not victim_file.exists()
    # the same through the CLI: non-zero exit, the file named, no traceback
    proc = subprocess.run([sys.executable, "-m", "eclipse.cli", "inspect", str(path)], capture_output=True, text=True,
                          env={**os.environ})
    assert proc.returncode == 2 and "evil.pkl" in proc.stderr and "Traceback" not in proc.stderr
    assert not victim_file.exists()


def _bad_files(tmp_path, random_set):
    good = pickle.dumps([(random_set.images[0].permute(1, 2, 0).numpy().tobytes(), 3)])
    files = {
        "truncated.pkl": good[: len(good) // 2],
        "empty.pkl": b"",
        "emptylist.pkl": pickle.dumps([]),
        "shortbytes.pkl": pickle.dumps([(b"\0" * 100, 1)]),
        "badlabel.pkl": pickle.dumps([(b"\0" * 3072, 11)]),
        "strlabel.pkl": pickle.dumps([(b"\0" * 3072, "cat")]),
    }
    for name, payload in files.items():
        (tmp_path / name).write_bytes(payload)
    np.savez(tmp_path / "float.npz", data=np.zeros((2, 32, 32, 3), np.float32), targets=np.zeros(2, np.int64))
    np.savez(tmp_path / "shape.npz", data=np.zeros((2, 28, 28, 3), np.uint8), targets=np.zeros(2, np.int64))
    np.savez(tmp_path / "labels.npz", data=np.zeros((2, 32, 32, 3), np.uint8), targets=np.array([0, -1]))
    np.savez(tmp_path / "count.npz", data=np.zeros((2, 32, 32, 3), np.uint8), targets=np.zeros(3, np.int64))
    np.savez(tmp_path / "keys.npz", images=np.zeros((2, 32, 32, 3), np.uint8))
    (tmp_path / "truncated.npz").write_bytes((tmp_path / "shape.npz").read_bytes()[:50])
    (tmp_path / "broken.tar.gz").write_bytes(b"\x1f\x8b\x08garbage")
    return sorted(set(files) | {"float.npz", "shape.npz", "labels.npz", "count.npz", "keys.npz", "truncated.npz",
                                "broken.tar.gz"})


def test_malformed_files_name_the_file(tmp_path, random_set):
    for name in _bad_files(tmp_path, random_set):
        with pytest.raises(DataError) as info:
            data.load_images(tmp_path / name)
        assert name in str(info.value), (name, str(info.value))


def test_bad_perturbations(tmp_path, random_set):
    torch.save(torch.zeros(3, 3, 32, 32), tmp_path / "count.pt")
    with pytest.raises(DataError, match="fit neither"):
        perturbations.apply_perturbation(random_set, perturbations.load_perturbation(tmp_path / "count.pt"), "count.pt")
    torch.save(torch.full((10, 3, 32, 32), float("nan")), tmp_path / "nan.pt")
    with pytest.raises(DataError, match="nan.pt.*NaN"):
        perturbations.load_perturbation(tmp_path / "nan.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a torch file")
    with pytest.raises(DataError, match="junk.pt"):
        perturbations.load_perturbation(tmp_path / "junk.pt")


def test_validation_messages():
    with pytest.raises(DataError, match="uint8"):
        ImageSet(torch.zeros(2, 3, 32, 32), torch.zeros(2, dtype=torch.int64), source="x")
    with pytest.raises(DataError, match=r"\(N, 3, 32, 32\)"):
        ImageSet(torch.zeros(2, 32, 32, 3, dtype=torch.uint8), torch.zeros(2, dtype=torch.int64), source="x")
    with pytest.raises(DataError, match="2 images but 3 labels"):
        ImageSet(torch.zeros(2, 3, 32, 32, dtype=torch.uint8), torch.zeros(3, dtype=torch.int64), source="x")


def test_atomic_write_keeps_old_file_on_failure(random_set, tmp_path, monkeypatch):
    path = data.save_images(random_set, tmp_path / "set.npz")
    before = path.read_bytes()

    def boom(*args, **kwargs):
        raise RuntimeError("disk full")
    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(RuntimeError):
        data.save_images(random_set.subset(torch.arange(3)), path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["set.npz"]  # no temporary left behind


def test_splits_are_disjoint_and_balanced(cifar_test):
    pool, evaluation = data.split_test(cifar_test)
    assert len(pool) == 2000 and len(evaluation) == 8000
    assert pool.class_counts() == [200] * 10
    pool_keys = {bytes(x.numpy().tobytes()) for x in pool.images}
    assert not any(bytes(x.numpy().tobytes()) in pool_keys for x in evaluation.images[:2000])
    sparse_a = data.sparse_set(pool, 100, seed=1)
    sparse_b = data.sparse_set(pool, 100, seed=1)
    sparse_c = data.sparse_set(pool, 100, seed=2)
    assert sparse_a.class_counts() == [10] * 10
    assert torch.equal(sparse_a.images, sparse_b.images) and not torch.equal(sparse_a.images, sparse_c.images)


def test_folder_cache_sees_rewritten_files_and_missing_split(random_set, tmp_path):
    from PIL import Image

    root = tmp_path / "folder"
    (root / "train" / "cat").mkdir(parents=True)
    target = root / "train" / "cat" / "0000.png"
    Image.fromarray(random_set.images[0].permute(1, 2, 0).numpy()).save(target)
    first = data.load_images(root, split="train")
    Image.fromarray(random_set.images[1].permute(1, 2, 0).numpy()).save(target)  # rewritten in place
    os.utime(target, ns=(target.stat().st_mtime_ns + 10**9,) * 2)
    second = data.load_images(root, split="train")
    assert torch.equal(first.images[0], random_set.images[0]) and torch.equal(second.images[0], random_set.images[1])
    with pytest.raises(DataError, match="no 'test' folder"):
        data.load_images(root, split="test")


def test_missing_cifar10_says_how_to_get_it_and_ECLIPSE_DOWNLOAD_asks_torchvision(tmp_path, monkeypatch):
    import torchvision

    import eclipse.data as data

    monkeypatch.setattr(data, "find_offline_cifar10", lambda: None)
    monkeypatch.setenv("ECLIPSE_CACHE", str(tmp_path))  # no torchvision copy there
    monkeypatch.delenv("ECLIPSE_DOWNLOAD", raising=False)
    with pytest.raises(DataError, match="ECLIPSE_DOWNLOAD=1"):
        data.load_cifar10("test")
    asked = []

    def fake_cifar10(root, train, download):  # stands in for the network: record the request, fetch nothing
        asked.append((root, train, download))
        raise RuntimeError("no network in tests")

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", fake_cifar10)
    monkeypatch.setenv("ECLIPSE_DOWNLOAD", "1")  # how a notebook run (papermill) or the CLI asks for the download
    with pytest.raises(RuntimeError, match="no network"):
        data.load_cifar10("test")
    assert asked == [(str(tmp_path / "torchvision"), False, True)]

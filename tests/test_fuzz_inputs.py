"""Seeded fuzzing of the dataset readers: mutations of a valid release pickle, ``.npz`` and ``.tar.gz``.

Every mutated file must load or fail with :class:`eclipse.errors.DataError` (never another exception, a
hang or a memory blow-up): each within a few seconds, the whole child process under 1 GB.
"""
from __future__ import annotations

import gzip
import io
import pickle
import pickletools
import random
import tarfile

import numpy as np
import torch

from eclipse import data

from test_untrusted import PEAK_MIB, add_member, png, run_hostile, small_set

MUTANTS = {"release-p4.pkl": 100, "release-p2.pkl": 100, "set.npz": 80, "compressed.npz": 40, "set.tar.gz": 160}
OPCODES = [op.code.encode("latin-1") for op in pickletools.opcodes]


def _valid_files(tmp_path) -> dict[str, bytes]:
    dataset = small_set(12)
    hwc = dataset.images.permute(0, 2, 3, 1).contiguous().numpy()
    records = [(hwc[i].tobytes(), int(label)) for i, label in enumerate(dataset.labels.tolist())]
    plain, packed = io.BytesIO(), io.BytesIO()
    np.savez(plain, data=hwc, targets=dataset.labels.numpy())
    np.savez_compressed(packed, data=hwc, targets=dataset.labels.numpy())
    tar = io.BytesIO()
    with tarfile.open(fileobj=tar, mode="w") as archive:
        for i, image in enumerate(hwc):
            add_member(archive, f"{dataset.classes[int(dataset.labels[i])]}/{i}.png", png(image))
    return {"release-p4.pkl": pickle.dumps(records, protocol=4), "release-p2.pkl": pickle.dumps(records, protocol=2),
            "set.npz": plain.getvalue(), "compressed.npz": packed.getvalue(), "set.tar.gz": tar.getvalue()}


def _mutate(blob: bytes, rng: random.Random, pickle_like: bool) -> bytes:
    buf = bytearray(blob)
    kind = rng.choice(["flip", "truncate", "insert", "overwrite", "duplicate"])
    if kind == "flip":
        for _ in range(rng.randint(1, 8)):
            i = rng.randrange(len(buf))
            buf[i] ^= 1 << rng.randrange(8)
    elif kind == "truncate":
        del buf[rng.randrange(len(buf)):]
    elif kind == "insert":
        at = rng.randrange(len(buf))
        extra = b"".join(rng.choice(OPCODES) for _ in range(rng.randint(1, 4))) if pickle_like else \
            bytes(rng.randrange(256) for _ in range(rng.randint(1, 16)))
        buf[at:at] = extra + bytes(rng.randrange(256) for _ in range(rng.randint(0, 5)))
    elif kind == "overwrite":
        at = rng.randrange(len(buf))
        buf[at:at + 8] = bytes(rng.randrange(256) for _ in range(8))
    else:
        at = rng.randrange(len(buf))
        buf[at:at] = buf[at:at + rng.randint(1, 4096)]
    return bytes(buf)


def _mutate_npz_member(blob: bytes, rng: random.Random) -> bytes:
    """Damage one ``.npy`` member (its header, often) inside an otherwise valid zip (CRCs recomputed)."""
    import zipfile

    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(blob)) as src, zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as dst:
        victim = rng.choice(src.namelist())
        for member in src.namelist():
            payload = src.read(member)
            if member == victim:
                head = rng.random() < 0.5
                payload = (_mutate(payload[:128], rng, False) + payload[128:]) if head else _mutate(payload, rng, False)
            dst.writestr(member, payload)
    return out.getvalue()


def test_mutated_release_pickle_npz_and_tar_gz_load_or_fail_cleanly(tmp_path):
    rng = random.Random(0)
    valid = _valid_files(tmp_path)
    cases = []
    for name, count in MUTANTS.items():
        for i in range(count):
            blob = valid[name]
            if name.endswith(".npz") and i % 2:
                blob = _mutate_npz_member(blob, rng)
            elif name.endswith(".tar.gz"):
                # half the mutants damage the tar inside an intact gzip, half the gzip stream itself
                blob = gzip.compress(_mutate(blob, rng, False)) if i % 2 else _mutate(gzip.compress(blob), rng, False)
            else:
                blob = _mutate(blob, rng, name.endswith(".pkl"))
            path = tmp_path / f"{i:03d}-{name}"
            path.write_bytes(blob)
            cases.append({"name": path.name, "call": "eclipse.data:load_images", "args": [str(path)]})
    results = run_hostile(cases, tmp_path)
    outcomes = [r["outcome"] for r in results]
    assert set(outcomes) <= {"ok", "DataError"}, [r for r in results if r["outcome"] not in ("ok", "DataError")][:3]
    assert 0.2 < outcomes.count("DataError") / len(outcomes) < 1.0  # the mutations do break files, not all
    assert results[-1]["peak_mib"] < PEAK_MIB
    for name in MUTANTS:  # the unmutated files still load
        (tmp_path / name).write_bytes(valid[name] if not name.endswith(".gz") else gzip.compress(valid[name]))
        loaded = data.load_images(tmp_path / name)
        assert len(loaded) == 12 and loaded.images.dtype == torch.uint8

"""The model-based poisons' public formats: each round-trips through ``load_images``, and a hostile file in
each format is refused without running code."""
from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from eclipse.data import DataError, ImageSet, load_images

EPS = 8 / 255


@pytest.fixture()
def clean() -> ImageSet:
    g = torch.Generator().manual_seed(0)
    images = torch.randint(20, 236, (30, 3, 32, 32), dtype=torch.uint8, generator=g)
    return ImageSet(images, torch.arange(30) % 10, source="clean")


def _delta(shape, seed=1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return ((torch.rand(shape, generator=g) * 2 - 1) * EPS * 255).round() / 255


def _expected(clean: ImageSet, per_image: torch.Tensor) -> torch.Tensor:
    return (clean.images.float() / 255 + per_image).clamp(0, 1).mul(255).round().to(torch.uint8)


def test_em_perturbation_pt_samplewise_and_classwise(clean, tmp_path):
    sample = _delta((30, 3, 32, 32))
    torch.save(sample, tmp_path / "perturbation.pt")
    got = load_images(tmp_path / "perturbation.pt", base=clean)
    assert torch.equal(got.images, _expected(clean, sample)) and torch.equal(got.labels, clean.labels)
    classwise = _delta((10, 3, 32, 32), seed=2)
    torch.save(classwise, tmp_path / "classwise.pt")
    got = load_images(tmp_path / "classwise.pt", base=clean)
    assert torch.equal(got.images, _expected(clean, classwise[clean.labels]))


def test_rem_int8_noise_pickle(clean, tmp_path):
    delta = _delta((30, 3, 32, 32))
    noise = np.round(delta.numpy() * 255).astype(np.int8)
    with open(tmp_path / "rem-fin-def-noise.pkl", "wb") as handle:
        pickle.dump(noise, handle)  # the official writer: pickle.dump of the int8 array
    got = load_images(tmp_path / "rem-fin-def-noise.pkl", base=clean)
    assert torch.equal(got.images, _expected(clean, torch.from_numpy(noise.astype(np.float32) / 255)))


def test_tap_numpy_export_with_its_float_labels(clean, tmp_path):
    poisoned = _expected(clean, _delta((30, 3, 32, 32)))
    np.save(tmp_path / "poisoned_training_data.npy", poisoned.permute(0, 2, 3, 1).numpy().astype(np.float64))
    np.save(tmp_path / "poisoned_training_labels.npy", clean.labels.numpy().astype(np.float64))
    got = load_images(tmp_path / "poisoned_training_data.npy")  # labels from the file beside it
    assert torch.equal(got.images, poisoned) and torch.equal(got.labels, clean.labels)


def test_sep_npy_images_in_unit_range(clean, tmp_path):
    poisoned = _expected(clean, _delta((30, 3, 32, 32)))
    np.save(tmp_path / "eps8-1_iter30.npy", poisoned.numpy().astype(np.float32) / 255)
    got = load_images(tmp_path / "eps8-1_iter30.npy", base=clean)
    assert torch.equal(got.images, poisoned) and torch.equal(got.labels, clean.labels)


def test_indexed_png_folder_replaces_only_the_images_it_holds(clean, tmp_path):
    poisoned = _expected(clean, _delta((30, 3, 32, 32)))
    (tmp_path / "tap" / "data").mkdir(parents=True)
    for i in range(0, 30, 2):  # a poison budget of 50%: odd images stay clean
        Image.fromarray(poisoned[i].permute(1, 2, 0).numpy()).save(tmp_path / "tap" / "data" / f"{i}.png")
    got = load_images(tmp_path / "tap", base=clean)
    assert torch.equal(got.images[::2], poisoned[::2]) and torch.equal(got.images[1::2], clean.images[1::2])


@pytest.mark.parametrize("name", ["perturbation.pt", "rem.pkl", "sep.npy", "pngs"])
def test_formats_that_need_the_clean_set_say_so(clean, tmp_path, name):
    path = tmp_path / name
    if name.endswith(".pt"):
        torch.save(_delta((30, 3, 32, 32)), path)
    elif name.endswith(".pkl"):
        pickle.dump(np.zeros((30, 3, 32, 32), np.int8), open(path, "wb"))
    elif name.endswith(".npy"):
        np.save(path, np.zeros((30, 3, 32, 32), np.float32))
    else:
        path.mkdir()
        Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(path / "0.png")
    with pytest.raises(DataError, match="--reference"):
        load_images(path)


def _global_pickle(module: str, name: str, arg: str) -> bytes:
    """A protocol-2 pickle that calls ``module.name(arg)`` when loaded by plain pickle."""
    return (b"\x80\x02c" + module.encode() + b"\n" + name.encode() + b"\n" + b"X" + len(arg).to_bytes(4, "little")
            + arg.encode() + b"\x85R.")


def test_hostile_rem_pickles_are_refused_without_running_code(clean, tmp_path):
    marker = tmp_path / "ran"
    hostile = tmp_path / "noise.pkl"
    # starts like a numpy pickle, then asks for os.system
    payload = (b"\x80\x02cnumpy.core.multiarray\n_reconstruct\n0" + _global_pickle("os", "system", f"touch {marker}")[2:])
    hostile.write_bytes(payload)
    with pytest.raises(DataError, match="refusing"):
        load_images(hostile, base=clean)
    assert not marker.exists()
    objects = tmp_path / "objects.pkl"
    pickle.dump(np.array([object()] * 3, dtype=object), open(objects, "wb"))
    with pytest.raises(DataError, match="object"):
        load_images(objects, base=clean)
    wrong = tmp_path / "float.pkl"
    pickle.dump(np.zeros((30, 3, 32, 32), np.float32), open(wrong, "wb"))
    with pytest.raises(DataError, match="int8"):
        load_images(wrong, base=clean)


def test_hostile_npy_pt_and_png_files_are_refused(clean, tmp_path):
    pickled = tmp_path / "objects.npy"
    np.save(pickled, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(DataError, match="object arrays are refused"):
        load_images(pickled, base=clean)
    nan = tmp_path / "nan.npy"
    bad = np.full((30, 3, 32, 32), 0.5, np.float32)
    bad[0, 0, 0, 0] = np.nan
    np.save(nan, bad)
    with pytest.raises(DataError, match="NaN"):
        load_images(nan, base=clean)
    off_grid = tmp_path / "poisoned_training_data.npy"
    np.save(off_grid, np.full((30, 32, 32, 3), 100.5))
    with pytest.raises(DataError, match="whole pixel levels"):
        load_images(off_grid, base=clean)
    code = tmp_path / "perturbation.pt"
    torch.save({"delta": _delta((30, 3, 32, 32)), "hook": print}, code)  # a pickled callable
    with pytest.raises(DataError):
        load_images(code, base=clean)
    pngs = tmp_path / "pngs"
    pngs.mkdir()
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(pngs / "99.png")
    with pytest.raises(DataError, match="index 99"):
        load_images(pngs, base=clean)
    (pngs / "99.png").unlink()
    (pngs / "0.png").symlink_to("/dev/zero")
    with pytest.raises(DataError):
        load_images(pngs, base=clean)


def test_inspect_applies_a_perturbation_file_to_the_reference(clean, tmp_path, capsys):
    import json

    from eclipse.cli import main
    from eclipse.data import save_images

    reference = save_images(clean, tmp_path / "clean.npz")
    delta = _delta((30, 3, 32, 32))
    torch.save(delta, tmp_path / "perturbation.pt")
    assert main(["inspect", str(tmp_path / "perturbation.pt"), "--reference", str(reference), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["count"] == 30
    assert report["perturbation"]["linf_max_255"] == pytest.approx(float(delta.abs().max()) * 255, abs=1e-3)
    assert main(["inspect", str(tmp_path / "perturbation.pt")]) == 2
    assert "--reference" in capsys.readouterr().err

"""Tests for eclipse.frequency: spectra, low-frequency ratio, Fig. 2a assimilation, Theorem 1 checks."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from eclipse import frequency as fr
from eclipse.attacks import poison
from eclipse.data import ImageSet, train_subset

AREA_FRACTION_R4 = 49 / 1024  # lattice points with radius <= 4 on a 32x32 FFT grid


@pytest.fixture(autouse=True, scope="module")
def _single_thread():
    """These tensors are tiny: one intra-op thread is much faster on the shared 2-core machines."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def _cosine_abar(steps: int = 4000, s: float = 0.008) -> torch.Tensor:
    k = torch.arange(steps + 1, dtype=torch.float64) / steps
    f = torch.cos((k + s) / (1 + s) * math.pi / 2) ** 2
    return (f / f[0])[1:].clamp(min=1e-12)


def _synthetic_poisons(n: int = 16, seed: int = 0):
    """Clean images and two poisoned copies whose perturbations have (nearly) equal L2:
    smooth (bilinear-upsampled 4x4 patch) and per-pixel random-sign +-8/255."""
    g = torch.Generator().manual_seed(seed)
    clean = torch.randint(40, 216, (n, 3, 32, 32), dtype=torch.uint8, generator=g)
    high = (torch.randint(0, 2, (n, 3, 32, 32), generator=g).float() * 2 - 1) * 8.0
    patch = torch.rand(n, 3, 4, 4, generator=g) * 2 - 1
    low = F.interpolate(patch, size=32, mode="bilinear", align_corners=False)
    low = low / low.flatten(1).norm(dim=1)[:, None, None, None] * high.flatten(1).norm(dim=1)[:, None, None, None]
    low_p = (clean.float() + low.round()).clamp(0, 255).to(torch.uint8)
    high_p = (clean.float() + high).clamp(0, 255).to(torch.uint8)
    return clean, low_p, high_p


def _delta(p: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    return p.float() / 255 - c.float() / 255


# ------------------------------------------------------------------------------------------ spectra
def test_constant_offset_is_all_dc():
    delta = torch.full((5, 3, 32, 32), 0.02)
    spec = fr.power_spectrum(delta)
    assert spec.shape == (32, 32)
    dc = spec[16, 16]
    assert dc == pytest.approx(0.02**2 * 1024, rel=1e-5)
    off = spec.clone()
    off[16, 16] = 0
    assert float(off.abs().max()) < 1e-9 * float(dc)


def test_power_spectrum_parseval():
    delta = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1)) * 0.03
    total = float(fr.power_spectrum(delta).sum())
    assert total == pytest.approx(float(delta.square().sum(dim=(2, 3)).mean()), rel=1e-4)


def test_radial_spectrum_of_white_noise_is_flat():
    g = torch.Generator().manual_seed(2)
    delta = torch.randn(300, 3, 32, 32, generator=g) * 0.05
    radii, power = fr.radial_power_spectrum(delta)
    assert radii.dim() == power.dim() == 1 and radii.shape == power.shape
    assert torch.equal(radii, torch.arange(len(radii), dtype=radii.dtype))
    assert len(radii) == round(16 * math.sqrt(2)) + 1
    expected = 0.05**2
    assert torch.all((power / expected - 1).abs() < 0.2), power / expected
    # and a smooth pattern is far from flat: most power at small radius
    smooth = F.interpolate(torch.rand(50, 3, 4, 4, generator=g), size=32, mode="bilinear", align_corners=False)
    _, sp = fr.radial_power_spectrum(smooth - smooth.mean(dim=(2, 3), keepdim=True))
    assert sp[1:4].mean() > 100 * sp[10:16].mean()


def test_radial_spectrum_bins_argument():
    delta = torch.randn(10, 3, 32, 32)
    radii, power = fr.radial_power_spectrum(delta, bins=8)
    assert len(radii) == len(power) == 8
    assert torch.all(radii[1:] > radii[:-1])
    with pytest.raises(ValueError, match="bins"):
        fr.radial_power_spectrum(delta, bins=0)


def test_low_frequency_ratio_smooth_vs_white():
    g = torch.Generator().manual_seed(3)
    smooth = F.interpolate(torch.rand(40, 3, 4, 4, generator=g) * 2 - 1, size=32, mode="bilinear", align_corners=False)
    r_smooth = fr.low_frequency_ratio(smooth)
    assert r_smooth.shape == (40,)
    assert float(r_smooth.min()) > 0.85
    white = torch.randn(200, 3, 32, 32, generator=g)
    r_white = fr.low_frequency_ratio(white)
    assert float(r_white.mean()) == pytest.approx(AREA_FRACTION_R4, abs=0.005)
    # the cutoff is honoured: Nyquist-corner radius keeps everything, and a constant is all at r=0
    assert torch.allclose(fr.low_frequency_ratio(white, cutoff=23.0), torch.ones(200), atol=1e-5)
    assert torch.allclose(fr.low_frequency_ratio(torch.full((2, 3, 32, 32), 0.1), cutoff=0.0), torch.ones(2))
    assert torch.isnan(fr.low_frequency_ratio(torch.zeros(1, 3, 32, 32))).all()
    assert fr.default_cutoff(32, 32) == 4.0


def test_low_pass_keeps_low_band_energy():
    x = torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    lp = fr.low_pass(x)
    assert lp.shape == x.shape
    energy_ratio = lp.square().sum(dim=(1, 2, 3)) / x.square().sum(dim=(1, 2, 3))
    assert torch.allclose(energy_ratio, fr.low_frequency_ratio(x), atol=1e-5)


def test_frequency_summary_labels():
    clean, low_p, high_p = _synthetic_poisons()
    table = fr.frequency_summary({"smooth": _delta(low_p, clean), "noise": _delta(high_p, clean)})
    assert list(table.index) == ["smooth", "noise"]
    assert {"low_freq_ratio", "l2", "linf", "linf_255", "band"} <= set(table.columns)
    assert table.loc["smooth", "band"] == "low" and table.loc["noise", "band"] == "high"
    assert table.loc["noise", "linf_255"] == pytest.approx(8.0, abs=1e-3)
    assert table.loc["smooth", "l2"] == pytest.approx(table.loc["noise", "l2"], rel=0.02)
    with pytest.raises(ValueError):
        fr.frequency_summary({})


# ------------------------------------------------------------------------------- Fig. 2a assimilation
def test_high_frequency_poison_is_assimilated_faster():
    clean, low_p, high_p = _synthetic_poisons()
    low = fr.noise_assimilation(clean, low_p, rounds=30)
    high = fr.noise_assimilation(clean, high_p, rounds=30)
    assert list(low["k"]) == list(range(1, 31))
    assert low["noise_std"].iloc[-1] == pytest.approx(0.01 * math.sqrt(30))
    # both decay with k, the high-frequency one much faster
    assert low["residual_fraction"].iloc[-1] < low["residual_fraction"].iloc[0]
    assert high["residual_fraction"].iloc[-1] < high["residual_fraction"].iloc[0]
    assert np.all(high["residual_fraction"].to_numpy()[1:] < low["residual_fraction"].to_numpy()[1:])
    assert low["residual_fraction"].iloc[-1] > 0.8
    assert high["residual_fraction"].iloc[-1] < 0.35
    assert fr.assimilation_round(high) is not None and fr.assimilation_round(high) <= 15
    assert fr.assimilation_round(low) is None
    # the frequency-blind energy share cannot tell them apart (equal L2); same draws cancel without clipping
    assert np.allclose(low["full_band_fraction"], high["full_band_fraction"], atol=0.03)
    assert np.allclose(low["paired_l2_ratio"], 1.0, atol=1e-4)
    cos_low = fr.noise_assimilation(clean, low_p, rounds=10, metric="cosine")
    cos_high = fr.noise_assimilation(clean, high_p, rounds=10, metric="cosine")
    assert np.all(cos_high["residual_fraction"].to_numpy() < cos_low["residual_fraction"].to_numpy())
    assert np.allclose(cos_low["residual_fraction"], cos_low["cosine"])


def test_noised_perturbations_match_assimilation_draws():
    clean, _, high_p = _synthetic_poisons(n=6)
    delta = _delta(high_p, clean)
    panels = fr.noised_perturbations(delta, ks=[0, 4, 9], sigma=0.01, seed=5)
    assert panels.shape == (3,) + tuple(delta.shape) and panels.dtype == torch.float32
    assert torch.equal(panels[0], delta)
    noise = panels[2] - delta
    assert float(noise.std()) == pytest.approx(0.01 * 3, rel=0.05)
    frame = fr.noise_assimilation(clean, high_p, rounds=9, seed=5)
    lp_delta, lp_seen = fr.low_pass(delta), fr.low_pass(panels[1])
    fraction = (lp_delta.square().sum(dim=(1, 2, 3)) / lp_seen.square().sum(dim=(1, 2, 3))).mean()
    assert float(frame.loc[frame["k"] == 4, "energy_fraction"].iloc[0]) == pytest.approx(float(fraction), rel=1e-3)


def test_assimilation_clip_option_shrinks_paired_difference():
    clean = torch.full((4, 3, 32, 32), 254, dtype=torch.uint8)
    poisoned = torch.full((4, 3, 32, 32), 247, dtype=torch.uint8)
    poisoned[..., ::2, :] = 255  # some structure so the low band is non-empty either way
    frame = fr.noise_assimilation(clean, poisoned, rounds=5, clip=True)
    assert (frame["paired_l2_ratio"] < 1.0).all()


# ------------------------------------------------------------------------------------- Theorem 1 KL
def test_kl_non_increasing_with_cosine_schedule():
    clean, low_p, _ = _synthetic_poisons(n=40, seed=6)
    abar = _cosine_abar()
    ts = [0, 50, 100, 200, 400, 1000, 2000, 3000, 3900]
    frame = fr.gaussian_kl_divergence_check(clean, low_p, alphas_cumprod=abar, ts=ts, dims=4)
    kl = frame["kl"].to_numpy()
    assert list(frame["t"]) == ts
    assert np.all(np.isfinite(kl)) and np.all(kl > 0)
    assert np.all(np.diff(kl) <= 1e-12 * kl.max())
    assert kl[-1] < 0.5 * kl[0]
    closed = frame["kl_paired_closed_form"].to_numpy()
    assert np.all(np.isfinite(closed)) and np.all(closed > 0) and np.all(np.diff(closed) < 0)
    energy = float((2 * _delta(low_p, clean).double()).flatten(1).square().sum(dim=1).mean())
    a = float(abar[100])
    assert closed[2] == pytest.approx(a * energy / (2 * (1 - a)), rel=1e-6)


def test_kl_sample_estimator_and_noise_stds():
    clean, _, high_p = _synthetic_poisons(n=40, seed=7)
    stds = [0.0, 0.02, 0.05, 0.1, 0.3, 1.0, 3.0]
    frame = fr.gaussian_kl_divergence_check(clean, high_p, noise_stds=stds, dims=4, method="sample")
    kl = frame["kl"].to_numpy()
    assert np.all(np.isfinite(kl)) and np.all(kl > 0)
    assert np.all(np.diff(kl) <= 0.1 * kl.max())  # Monte-Carlo: non-increasing up to estimator noise
    assert kl[-1] < 0.5 * kl[0]
    analytic = fr.gaussian_kl_divergence_check(clean, high_p, noise_stds=stds, dims=4)["kl"].to_numpy()
    assert np.all(np.diff(analytic) <= 1e-12 * analytic.max())
    closed = frame["kl_paired_closed_form"].to_numpy()
    assert closed[0] == np.inf and np.all(np.diff(closed[1:]) < 0)


# ------------------------------------------------------------------- Theorem 1, sample-based divergence
TS = [0, 800, 1600, 3200]  # abar = 1, 0.90, 0.61, 0.095 on the cosine schedule with T = 4000


def _real_poison(cifar: ImageSet, attack: str, n: int = 500) -> tuple[torch.Tensor, torch.Tensor]:
    clean = train_subset(cifar, n, seed=0)
    return clean.images, poison(attack, clean.images, clean.labels, seed=0)


def test_sample_divergence_detects_urp_and_falls_as_noise_assimilates_it(cifar_train):
    clean, urp = _real_poison(cifar_train, "urp")  # class-wise +-8/255 on 500 real CIFAR-10 images
    frame = fr.sample_divergence(clean, urp, _cosine_abar(), TS, seed=0).set_index("t")
    div, base = frame["divergence"], frame["baseline"]
    assert list(frame.index) == TS and np.all(np.isfinite(div)) and np.all(base > 0)
    # at small t the poison is plain to see: far above clean vs clean (other images, other noise draw) ...
    assert div[0] > 10 * base[0]
    # ... then, measured from fresh noised samples at each t (nothing forces it), the divergence falls ...
    assert div[0] > div[800] > div[1600] > div[3200]
    assert div[800] < 0.5 * div[0] and div[3200] < 0.1 * div[0]
    # ... until the poison is assimilated: at t = 3200 it is within estimator noise of clean vs clean
    assert div[3200] < 1.3 * base[3200]
    # the poison's own class-wise directions (the mean delta of each class) see the same
    delta = (urp.double() - clean.double()).flatten(1)
    labels = train_subset(cifar_train, 500, seed=0).labels
    per_class = torch.stack([delta[labels == k].mean(dim=0) for k in range(10)])
    by_class = fr.sample_divergence(clean, urp, _cosine_abar(), [0, 3200], seed=1, direction=per_class)
    by_class = by_class.set_index("t")
    assert by_class.loc[0, "divergence"] > 10 * by_class.loc[0, "baseline"]
    assert by_class.loc[3200, "divergence"] < 1.3 * by_class.loc[3200, "baseline"]


def test_low_frequency_poison_keeps_its_divergence_longer(cifar_train):
    # the paper's reading of Theorem 1 (Sec. 3.2): noise assimilates high-frequency poisons (URP) fast and
    # low-frequency ones (LSP, 8x8 patches) slowly; here as the share of the divergence left at t = 800
    kept = {}
    for attack in ("urp", "lsp"):
        clean, poisoned = _real_poison(cifar_train, attack)
        frame = fr.sample_divergence(clean, poisoned, _cosine_abar(), [0, 800], seed=0).set_index("t")
        excess = frame["divergence"] - frame["baseline"]
        assert excess[0] > 0.3 * frame.loc[0, "baseline"], attack  # detectable at t = 0
        kept[attack] = excess[800] / excess[0]
    assert kept["urp"] < 0.5 and kept["lsp"] > kept["urp"] + 0.25, kept


def test_sample_divergence_without_poison_is_its_baseline_and_not_monotone():
    g = torch.Generator().manual_seed(11)
    clean = torch.randint(0, 256, (120, 3, 32, 32), dtype=torch.uint8, generator=g)
    direction = torch.randn(3, 3, 32, 32, generator=g)
    ts = list(range(0, 4000, 400))
    frame = fr.sample_divergence(clean, clean, _cosine_abar(), ts, seed=2, direction=direction)
    div = frame["divergence"].to_numpy()
    assert np.allclose(div, frame["baseline"].to_numpy())  # poisoned B == clean B: same samples, same draw
    assert np.all(div < 0.5)  # two halves of one distribution
    assert np.any(np.diff(div) > 0)  # a sample estimate fluctuates; the analytic check cannot
    assert frame.equals(fr.sample_divergence(clean, clean, _cosine_abar(), ts, seed=2, direction=direction))
    assert not frame.equals(fr.sample_divergence(clean, clean, _cosine_abar(), ts, seed=3, direction=direction))


def test_poison_subspace_spans_a_class_wise_poison():
    g = torch.Generator().manual_seed(12)
    clean = torch.randint(40, 216, (60, 3, 32, 32), dtype=torch.uint8, generator=g)
    patterns = torch.randint(-8, 9, (3, 3, 32, 32), generator=g)
    labels = torch.arange(60) % 3
    poisoned = (clean.int() + patterns[labels]).to(torch.uint8)
    basis = fr.poison_subspace(clean, poisoned, dims=8)
    assert basis.shape == (3, 3072)  # rank 3: three class patterns, whatever dims asks for
    assert torch.allclose(basis @ basis.T, torch.eye(3, dtype=torch.float64), atol=1e-9)
    flat = patterns.flatten(1).double()
    inside = (flat @ basis.T @ basis).norm(dim=1) / flat.norm(dim=1)
    assert torch.allclose(inside, torch.ones(3, dtype=torch.float64), atol=1e-9)


# ------------------------------------------------------------------------------- Fig. 6 and errors
def test_residual():
    clean = torch.full((2, 3, 32, 32), 100, dtype=torch.uint8)
    purified = clean.clone()
    purified[0, 0, 0, 0] = 110
    purified[1, 1, 5, 5] = 95
    res = fr.residual(purified, clean)
    assert res.dtype == torch.float32 and res.shape == clean.shape
    assert float(res[0, 0, 0, 0]) == pytest.approx(10 / 255)
    assert float(res[1, 1, 5, 5]) == pytest.approx(-5 / 255)
    assert int((res != 0).sum()) == 2


def test_residual_energy_table_separates_a_surviving_poison_from_a_removed_one():
    g = torch.Generator().manual_seed(0)
    poison = 0.03 * torch.randn(4, 3, 8, 8, generator=g)
    baseline = 0.01 * torch.randn(4, 3, 8, 8, generator=g)  # what purification does to clean images
    table = fr.residual_energy_table({"kept": poison, "removed": poison},
                                     {"kept": baseline + poison, "removed": baseline}, baseline)
    assert list(table.index) == ["kept", "removed"]
    assert table.loc["kept", "poison left (cosine)"] == pytest.approx(1.0)
    assert table.loc["removed", "poison left (cosine)"] == pytest.approx(0.0, abs=1e-6)
    assert table.loc["kept", "surviving L2"] == pytest.approx(table.loc["kept", "poison L2"], rel=1e-5)
    assert table.loc["removed", "surviving L2"] == pytest.approx(0.0, abs=1e-6)
    assert table.loc["removed", "residual L2"] == pytest.approx(table.loc["removed", "clean-purification L2"])
    assert table.loc["kept", "poison L2"] == pytest.approx(float(poison.flatten(1).norm(dim=1).mean()))
    with pytest.raises(ValueError, match="same keys"):
        fr.residual_energy_table({"kept": poison}, {"other": poison}, baseline)
    with pytest.raises(ValueError, match="same shape"):
        fr.residual_energy_table({"kept": poison}, {"kept": poison[:2]}, baseline)


def test_validation_errors():
    images = torch.zeros(4, 3, 32, 32, dtype=torch.uint8)
    with pytest.raises(ValueError, match="float"):
        fr.power_spectrum(images)
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        fr.low_frequency_ratio(torch.zeros(3, 32, 32))
    with pytest.raises(ValueError, match="uint8"):
        fr.noise_assimilation(images.float(), images)
    with pytest.raises(ValueError, match="same shape"):
        fr.noise_assimilation(images, images[:2])
    with pytest.raises(ValueError, match="metric"):
        fr.noise_assimilation(images, images + 1, metric="psnr")
    with pytest.raises(ValueError, match="rounds"):
        fr.noise_assimilation(images, images + 1, rounds=0)
    with pytest.raises(ValueError, match="identical"):
        fr.noise_assimilation(images, images)
    with pytest.raises(ValueError, match="exactly one"):
        fr.gaussian_kl_divergence_check(images, images + 1)
    with pytest.raises(ValueError, match="exactly one"):
        fr.gaussian_kl_divergence_check(images, images + 1, alphas_cumprod=_cosine_abar(10), noise_stds=[0.1])
    with pytest.raises(ValueError, match="dims"):
        fr.gaussian_kl_divergence_check(images, images + 1, noise_stds=[0.1], dims=10)
    with pytest.raises(ValueError, match="ts"):
        fr.gaussian_kl_divergence_check(images, images + 1, alphas_cumprod=_cosine_abar(10), ts=[20], dims=1)
    with pytest.raises(ValueError, match="cutoff"):
        fr.low_frequency_ratio(torch.zeros(1, 3, 32, 32), cutoff=-1)
    eight = images.repeat(2, 1, 1, 1)
    with pytest.raises(ValueError, match="identical"):
        fr.sample_divergence(eight, eight, _cosine_abar(10), [0], seed=0)
    with pytest.raises(ValueError, match="at least 6 images"):
        fr.sample_divergence(images, images + 1, _cosine_abar(10), [0], seed=0)
    with pytest.raises(ValueError, match=r"k \+ 2"):
        fr.sample_divergence(eight, eight + 1, _cosine_abar(10), [0], seed=0, direction=torch.eye(8, 3072))
    with pytest.raises(ValueError, match="direction"):
        fr.sample_divergence(eight, eight + 1, _cosine_abar(10), [0], seed=0, direction=torch.ones(5))
    with pytest.raises(ValueError, match="ks"):
        fr.noised_perturbations(torch.zeros(1, 3, 32, 32), ks=[])

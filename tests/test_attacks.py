"""Model-free attacks and the attack registry: budgets after quantisation, seeding, structure, validation."""
from __future__ import annotations

import math

import pytest
import torch

from eclipse.attacks import ATTACKS, AttackSpec, get_attack, perturbation_norms, poison, register
from eclipse.attacks.ar import ar_filters, ar_response, find_ar_coefficients, generate_ar_noise, load_ar_coefficients
from eclipse.attacks.lsp import LSP_L2_BUDGET
from eclipse.attacks.ops import ops_pixel_search
from eclipse.attacks.quantise import quantise_l2
from eclipse.data import train_subset
from eclipse.seeding import make_generator

N, K = 400, 10


def random_set(n: int = N, num_classes: int = K, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = make_generator(seed)
    images = torch.randint(0, 256, (n, 3, 32, 32), generator=generator, dtype=torch.uint8)
    labels = torch.arange(n) % num_classes
    return images, labels[torch.randperm(n, generator=generator)]


@pytest.fixture(scope="module")
def data() -> tuple[torch.Tensor, torch.Tensor]:
    return random_set()


@pytest.fixture(scope="module")
def poisons(data) -> dict[str, torch.Tensor]:
    images, labels = data
    return {name: poison(name, images, labels, seed=1) for name in ("urp", "lsp", "ar", "ops")}


def test_registry_lists_model_free_attacks_with_norms():
    expected = {"urp": ("linf", 8 / 255), "lsp": ("l2", 1.30), "ar": ("l2", 1.0), "ops": ("l0", 1.0)}
    for name, (norm, budget) in expected.items():
        spec = ATTACKS[name]
        assert spec.name == name and spec.family == "model-free" and spec.norm == norm
        assert math.isclose(spec.budget, budget) and spec.description
    assert get_attack("URP") is ATTACKS["urp"]


def test_unknown_attack_lists_known_names():
    with pytest.raises(KeyError, match="urp.*|.*lsp"):
        get_attack("nope")


def test_register_rejects_duplicates_and_bad_specs():
    with pytest.raises(ValueError, match="already registered"):
        register(ATTACKS["urp"])
    with pytest.raises(ValueError, match="norm"):
        AttackSpec("x", lambda *a, **k: None, "model-based", "l1", 1.0, "")
    with pytest.raises(ValueError, match="family"):
        AttackSpec("x", lambda *a, **k: None, "other", "linf", 1.0, "")


def test_outputs_are_uint8_and_change_images(data, poisons):
    images, _ = data
    for name, poisoned in poisons.items():
        assert poisoned.dtype == torch.uint8 and poisoned.shape == images.shape, name
        assert not torch.equal(poisoned, images), name


def test_urp_within_linf_budget(data, poisons):
    norms = perturbation_norms(poisons["urp"], data[0])
    assert float(norms["linf"].max()) <= 8 / 255 + 1e-9
    assert float(norms["linf"].min()) >= 7 / 255


def test_lsp_within_l2_budget_and_close_to_it(data, poisons):
    l2 = perturbation_norms(poisons["lsp"], data[0])["l2"]
    assert float(l2.max()) <= LSP_L2_BUDGET + 1e-6
    assert float((l2 > 1.2).float().mean()) > 0.95


def test_ar_within_l2_budget_and_close_to_it(data, poisons):
    l2 = perturbation_norms(poisons["ar"], data[0])["l2"]
    assert float(l2.max()) <= 1.0 + 1e-6
    assert float((l2 > 0.9).float().mean()) > 0.95


def test_ops_changes_one_pixel(data, poisons):
    l0 = perturbation_norms(poisons["ops"], data[0])["l0"]
    assert int(l0.max()) <= 1
    assert float((l0 == 1).float().mean()) > 0.9


def test_quantise_l2_never_exceeds_radius():
    clean = torch.randint(0, 256, (200, 3, 32, 32), generator=make_generator(3), dtype=torch.uint8)
    delta = torch.randn(200, 3, 32, 32, generator=make_generator(4))
    delta = delta / delta.flatten(1).norm(dim=1).view(-1, 1, 1, 1) * 0.5
    l2 = perturbation_norms(quantise_l2(clean, delta, 0.5), clean)["l2"]
    assert float(l2.max()) <= 0.5 + 1e-9 and float(l2.min()) > 0.45


@pytest.mark.parametrize("name", ["urp", "lsp", "ar"])
def test_seeding(data, poisons, name):
    images, labels = data
    assert torch.equal(poison(name, images, labels, seed=1), poisons[name])
    assert not torch.equal(poison(name, images, labels, seed=2), poisons[name])


def test_ops_is_deterministic(data, poisons):
    assert torch.equal(poison("ops", *data, seed=5), poisons["ops"])


def test_urp_is_class_wise_before_clipping():
    labels = torch.arange(60) % 3
    gray = torch.full((60, 3, 32, 32), 128, dtype=torch.uint8)
    delta = poison("urp", gray, labels, seed=0).int() - 128
    for k in range(3):
        members = delta[labels == k]
        assert torch.equal(members, members[:1].expand_as(members))
    assert not torch.equal(delta[labels == 0][0], delta[labels == 1][0])
    assert int(delta.abs().max()) == 8


def test_lsp_is_patchwise_and_class_clustered():
    labels = torch.arange(200) % 4
    gray = torch.full((200, 3, 32, 32), 128, dtype=torch.uint8)
    delta = poison("lsp", gray, labels, seed=0).float() - 128
    patches = delta.unfold(2, 8, 8).unfold(3, 8, 8)  # (n, 3, 4, 4, 8, 8)
    spread = patches.flatten(-2).amax(-1) - patches.flatten(-2).amin(-1)
    assert float(spread.max()) <= 1.0  # one colour per 8x8 patch and channel, up to rounding
    flat = delta.flatten(1)
    flat = flat / flat.norm(dim=1, keepdim=True)
    centres = torch.stack([flat[labels == k].mean(0) for k in range(4)])
    nearest = (flat @ centres.T).argmax(dim=1)
    assert float((nearest == labels).float().mean()) > 0.95
    assert not torch.equal(delta[0], delta[4])  # sample-wise: same class, different noise


def test_ar_noise_is_annihilated_by_its_own_filter():
    coefficients = find_ar_coefficients(3, seed=0)
    samples, log_norm = generate_ar_noise(coefficients.repeat_interleave(4, dim=0), make_generator(1))
    assert torch.isfinite(samples).all() and torch.isfinite(log_norm).all()
    response = ar_response(samples, ar_filters(coefficients)).view(3, 4, 3)
    own = response[torch.arange(3), :, torch.arange(3)]
    assert float(own.max()) < 1e-2 * float(response.max())


def test_ar_search_meets_the_authors_separability_criterion():
    coefficients = find_ar_coefficients(4, seed=0)
    assert torch.equal(coefficients, find_ar_coefficients(4, seed=0))  # seeded
    # fresh samples: each process's own filter annihilates them, the others respond strongly, so the
    # matched-filter rule (lowest response) recovers the class of every sample
    samples, _ = generate_ar_noise(coefficients.repeat_interleave(25, dim=0), make_generator(9))
    response = ar_response(samples, ar_filters(coefficients))
    labels = torch.arange(4).repeat_interleave(25)
    assert torch.equal(response.argmin(dim=1), labels)
    others = response[torch.nn.functional.one_hot(labels, 4) == 0]
    assert float(others.median()) >= 10.0  # the authors' CIFAR-10 threshold, typical sample
    with pytest.raises(RuntimeError, match="found only"):
        find_ar_coefficients(4, seed=0, min_response=1e6, max_candidates=256)


def test_ar_processes_stable_for_many_classes():
    coefficients = find_ar_coefficients(40, seed=3)
    assert coefficients.shape == (40, 3, 3, 3) and torch.isfinite(coefficients).all()
    assert float(coefficients[:, :, 2, 2].abs().max()) == 0.0
    assert torch.allclose(coefficients.sum(dim=(2, 3)), torch.ones(40, 3), atol=1e-4)
    samples, log_norm = generate_ar_noise(coefficients.repeat_interleave(5, dim=0), make_generator(2))
    assert torch.isfinite(samples).all() and torch.isfinite(log_norm).all()
    assert float(log_norm.exp().max()) < 500  # pre-scaling norms stay bounded
    images, labels = random_set(200, 40)
    l2 = perturbation_norms(poison("ar", images, labels, seed=0, coefficients=coefficients), images)["l2"]
    assert float(l2.max()) <= 1.0 + 1e-6


def test_exploding_ar_process_is_renormalised_not_nan():
    exploding = torch.full((2, 3, 3, 3), 2.0)
    exploding[:, :, 2, 2] = 0.0
    samples, log_norm = generate_ar_noise(exploding, make_generator(0))
    assert torch.isfinite(samples).all()
    assert float(log_norm.min()) > math.log(1e6)


@pytest.fixture(scope="module")
def ar_coefficients() -> torch.Tensor:
    return find_ar_coefficients(K, seed=0)  # the search is most of an AR poison's cost: done once


def test_ar_user_coefficients_validated(tmp_path, data, ar_coefficients):
    images, labels = data
    good = ar_coefficients
    path = tmp_path / "coefficients.pt"
    torch.save(list(good), path)
    assert torch.equal(load_ar_coefficients(str(path), K), good)
    from_file = poison("ar", images, labels, seed=1, coefficients=path)
    assert torch.equal(from_file, poison("ar", images, labels, seed=1, coefficients=good))
    bad = good.clone()
    bad[9, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        poison("ar", images, labels, seed=1, coefficients=bad)
    with pytest.raises(ValueError, match="shape"):
        poison("ar", images, labels, seed=1, coefficients=good[:, :2])
    with pytest.raises(ValueError, match="classes"):
        poison("ar", images, labels, seed=1, coefficients=good[:5])
    nonzero = good.clone()
    nonzero[0, 0, 2, 2] = 0.5
    with pytest.raises(ValueError, match="current pixel"):
        poison("ar", images, labels, seed=1, coefficients=nonzero)


def test_ops_picks_the_obvious_pixel_and_distinct_pairs():
    images, labels = random_set(200, 2)
    images[labels == 0, :, 5, 7] = 0  # a constant black pixel: white there has mean 1, std 0
    positions, colours = ops_pixel_search(images, labels, 2)
    assert int(positions[0]) == 5 * 32 + 7 and colours[0].tolist() == [1.0, 1.0, 1.0]
    same = images.clone()
    same[:, :, 5, 7] = 0
    positions, colours = ops_pixel_search(same, labels, 2)
    assert (int(positions[0]), colours[0].tolist()) != (int(positions[1]), colours[1].tolist())


def test_ops_sets_class_pixel_to_cube_corner(data, poisons):
    images, labels = data
    changed = (poisons["ops"] != images).any(dim=1)  # (n, 32, 32)
    for k in range(K):
        where = changed[labels == k].any(dim=0)
        assert int(where.sum()) == 1
        row, col = torch.nonzero(where)[0].tolist()
        values = poisons["ops"][labels == k][:, :, row, col]
        assert torch.equal(values, values[:1].expand_as(values)) and set(values.unique().tolist()) <= {0, 255}


@pytest.mark.parametrize(
    "images, labels, message",
    [
        (torch.rand(4, 3, 32, 32), torch.zeros(4, dtype=torch.int64), "uint8"),
        (torch.zeros(4, 32, 32, 3, dtype=torch.uint8), torch.zeros(4, dtype=torch.int64), "shape"),
        (torch.zeros(4, 3, 32, dtype=torch.uint8), torch.zeros(4, dtype=torch.int64), "shape"),
        (torch.zeros(4, 3, 32, 32, dtype=torch.uint8), torch.zeros(5, dtype=torch.int64), "labels must have shape"),
        (torch.zeros(4, 3, 32, 32, dtype=torch.uint8), torch.tensor([0, 1, 2, -1]), "labels must lie"),
        (torch.zeros(4, 3, 32, 32, dtype=torch.uint8), torch.zeros(4), "integer"),
    ],
)
def test_bad_inputs_raise(images, labels, message):
    with pytest.raises(ValueError, match=message):
        poison("urp", images, labels, seed=0)


def test_labels_beyond_num_classes_raise(data):
    images, labels = data
    with pytest.raises(ValueError, match="labels must lie in 0..4"):
        poison("lsp", images, labels, seed=0, num_classes=5)
    with pytest.raises(ValueError, match="seed"):
        poison("lsp", images, labels, seed=1.5)


def test_budget_check_catches_a_larger_radius(data):
    images, labels = data
    with pytest.raises(RuntimeError, match="exceed"):
        poison("urp", images, labels, seed=0, epsilon=16 / 255)
    poisoned = poison("urp", images, labels, seed=0, epsilon=16 / 255, check_budget=False)
    linf = perturbation_norms(poisoned, images)["linf"]
    assert float(linf.max()) <= 16 / 255 + 1e-9 and round(float(linf.max()) * 255) == 16  # the larger radius is used


# ------------------------------------------------------------------------------------ on real CIFAR-10 images
@pytest.fixture(scope="module")
def real(cifar_train) -> tuple[torch.Tensor, torch.Tensor]:
    subset = train_subset(cifar_train, 300, seed=0)
    return subset.images, subset.labels


def test_budgets_are_used_to_the_full_on_real_images(real, ar_coefficients):
    images, labels = real
    params = {"ar": {"coefficients": ar_coefficients}}
    norms = {name: perturbation_norms(poison(name, images, labels, seed=0, **params.get(name, {})), images)
             for name in ("urp", "lsp", "ar", "ops")}
    # URP: every image reaches the L-inf budget in whole 8-bit steps, 8/255 exactly (never 7 or 9)
    assert torch.equal((norms["urp"]["linf"] * 255).round(), torch.full((len(labels),), 8.0, dtype=torch.float64))
    assert torch.allclose(norms["urp"]["linf"] * 255, torch.full((len(labels),), 8.0, dtype=torch.float64))
    # the L2 poisons never exceed their radius and the typical image sits within a rounding step of it
    for name, radius in (("lsp", LSP_L2_BUDGET), ("ar", 1.0)):
        l2 = norms[name]["l2"]
        assert float(l2.max()) <= radius + 1e-6 and float(l2.median()) > radius - 0.01, name
    # OPS changes exactly one pixel position of every image
    assert torch.equal(norms["ops"]["l0"], torch.ones(len(labels), dtype=torch.int64))


def test_urp_on_real_images_is_one_pattern_per_class(real):
    images, labels = real
    delta = poison("urp", images, labels, seed=0).int() - images.int()
    unclipped = (images >= 8) & (images <= 247)  # where clipping to [0, 255] cannot touch a +-8 step
    patterns = []
    for k in range(K):
        d, free = delta[labels == k], unclipped[labels == k]
        highest = torch.where(free, d, torch.full_like(d, -99)).amax(dim=0)
        lowest = torch.where(free, d, torch.full_like(d, 99)).amin(dim=0)
        seen = free.any(dim=0)
        assert torch.equal(highest[seen], lowest[seen]), k  # all images of class k carry the same pattern
        assert float(seen.double().mean()) > 0.99
        patterns.append(torch.where(seen, highest, torch.full_like(highest, 99)))
    for j in range(K):
        for k in range(j + 1, K):
            both = (patterns[j] != 99) & (patterns[k] != 99)
            assert float((patterns[j] != patterns[k])[both].double().mean()) > 0.85, (j, k)  # patterns differ

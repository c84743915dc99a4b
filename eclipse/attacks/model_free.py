"""Model-free clean-label poisons: URP, LSP, AR and OPS (no network is trained to craft them).

All four are seeded through a CPU ``torch.Generator`` (``eclipse.seeding.make_generator``), vectorised over
whole batches, and return uint8 images. The perturbation is computed on the [0, 1] scale, added to ``x / 255``,
clipped to [0, 1] and rounded to 8 bits; the rounding is then corrected so that the *quantised* perturbation
stays inside the attack's budget (see ``quantise_linf`` and ``quantise_l2``).

Call them through ``eclipse.attacks.poison(name, images, labels, seed=...)``, which validates the inputs.
"""
from __future__ import annotations

import math
import os
from contextlib import contextmanager
from typing import Iterator, Sequence

import torch
import torch.nn.functional as F

from eclipse.attacks.registry import AttackSpec, register, validate_poison_inputs
from eclipse.seeding import make_generator

URP_LINF_BUDGET = 8 / 255
LSP_L2_BUDGET = 1.30  # ECLIPSE's budget; the LSP authors' "L-inf-equivalent 6/255" is sqrt(3072) * 6/255 = 1.3043
AR_L2_BUDGET = 1.0
OPS_L0_BUDGET = 1

CHUNK = 8192  # images processed at once (bounds memory at roughly 0.5 GB for 32x32 images)


def _chunks(n: int, size: int = CHUNK) -> Iterator[slice]:
    for start in range(0, n, size):
        yield slice(start, min(start + size, n))


# --------------------------------------------------------------------------------------------------------------
# Quantisation that respects the budget
# --------------------------------------------------------------------------------------------------------------
def quantise_linf(clean: torch.Tensor, delta: torch.Tensor, epsilon: float) -> torch.Tensor:
    """``round(clip(clean/255 + delta) * 255)`` with every pixel kept within ``epsilon`` of ``clean``.

    ``delta`` is float on the [0, 1] scale with ``|delta| <= epsilon``. Rounding to the nearest level can only
    leave the ball when ``epsilon * 255`` is not an integer; the result is then pulled back to the largest
    representable step ``floor(epsilon * 255)``.
    """
    base = clean.float()
    poisoned = (base + delta * 255.0).clamp_(0.0, 255.0).round_()
    max_step = math.floor(epsilon * 255.0 + 1e-6)
    poisoned = torch.minimum(torch.maximum(poisoned, base - max_step), base + max_step)
    return poisoned.to(torch.uint8)


def quantise_l2(clean: torch.Tensor, delta: torch.Tensor, radius: float) -> torch.Tensor:
    """8-bit poison from ``clean`` (uint8) and ``delta`` (float, [0, 1] scale, per-image L2 <= ``radius``).

    Rounding to the nearest level adds about ``sqrt(D / 12) / 255`` in quadrature to an image's L2 norm, so for
    images that end up over ``radius`` the coordinates that rounding pushed furthest away from the clean pixel
    are moved one level back, most-overshooting first, just until the image is inside the ball (vectorised with
    a sort and a cumulative sum). The quantised perturbation therefore never exceeds ``radius`` and stays within
    a rounding step of it.
    """
    base = clean.float()
    target = radius * 255.0 * (1.0 - 1e-6)
    step = delta * 255.0
    step_norm = step.flatten(1).norm(dim=1)
    too_long = step_norm > target
    if too_long.any():
        step = step.clone()
        step[too_long] *= (target / step_norm[too_long]).view(-1, 1, 1, 1)
    poisoned = (base + step).clamp_(0.0, 255.0).round_()
    achieved_sq = (poisoned - base).flatten(1).pow(2).sum(dim=1)
    over = torch.nonzero(achieved_sq > target**2).squeeze(1)
    if over.numel() == 0:
        return poisoned.to(torch.uint8)
    diff = (poisoned[over] - base[over]).flatten(1)
    overshoot = diff.abs() - step[over].flatten(1).abs()  # > 0 where rounding moved away from the clean pixel
    order = overshoot.argsort(dim=1, descending=True)
    movable = overshoot.gather(1, order) > 0
    gain = (2.0 * diff.abs().gather(1, order) - 1.0) * movable  # squared-norm saved by one level back
    needed = achieved_sq[over] - target**2
    enough = gain.cumsum(dim=1) >= needed.unsqueeze(1)
    count = torch.where(enough.any(dim=1), enough.float().argmax(dim=1) + 1, torch.full_like(needed, -1).long())
    take_sorted = torch.arange(diff.shape[1]).unsqueeze(0) < count.unsqueeze(1)
    take = torch.zeros_like(take_sorted).scatter_(1, order, take_sorted)
    diff -= diff.sign() * take
    fallback = count < 0  # cannot happen in practice: round toward the clean pixel (only shrinks coordinates)
    if fallback.any():
        rows = over[fallback]
        diff[fallback] = ((base[rows] + step[rows]).clamp(0.0, 255.0) - base[rows]).trunc().flatten(1)
    poisoned[over] = base[over] + diff.view(-1, *base.shape[1:])
    return poisoned.to(torch.uint8)


def _scale_to_l2(noise: torch.Tensor, radius: float) -> torch.Tensor:
    norms = noise.flatten(1).norm(dim=1).view(-1, *([1] * (noise.dim() - 1)))
    return noise * (radius / norms)


# --------------------------------------------------------------------------------------------------------------
# URP: class-wise uniform random noise
# --------------------------------------------------------------------------------------------------------------
def urp(
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    seed: int,
    num_classes: int,
    epsilon: float = URP_LINF_BUDGET,
) -> torch.Tensor:
    """URP, class-wise universal random noise. Budget: L-inf ``epsilon`` = 8/255.

    One pattern per class, ``delta_k ~ U(-epsilon, epsilon)`` per pixel and channel, added to every image of
    class ``k`` (before clipping). Source: Huang et al. (ICLR'21) code, ``perturbation.py --attack_type random
    --perturb_type classwise`` (``uniform_(-eps, eps)``); ECLIPSE's URP.
    """
    labels, num_classes = validate_poison_inputs(images, labels, num_classes)
    if not 0 < epsilon:
        raise ValueError(f"epsilon must be positive, got {epsilon}")
    _, channels, height, width = images.shape
    generator = make_generator(seed)
    patterns = (torch.rand(num_classes, channels, height, width, generator=generator) * 2.0 - 1.0) * epsilon
    poisoned = torch.empty_like(images)
    for part in _chunks(images.shape[0]):
        poisoned[part] = quantise_linf(images[part], patterns[labels[part]], epsilon)
    return poisoned


# --------------------------------------------------------------------------------------------------------------
# LSP: linearly separable synthetic patch noise
# --------------------------------------------------------------------------------------------------------------
def _distinct_hypercube_vertices(count: int, dims: int, generator: torch.Generator) -> torch.Tensor:
    """``count`` distinct random vertices of ``{0, 1}^dims`` (as sklearn's ``_generate_hypercube`` draws them)."""
    if dims < 63 and count > 2**dims:
        raise ValueError(f"cannot draw {count} distinct class centres from a {dims}-dimensional hypercube")
    vertices = torch.randint(0, 2, (count, dims), generator=generator)
    while torch.unique(vertices, dim=0).shape[0] < count:
        vertices = torch.randint(0, 2, (count, dims), generator=generator)
    return vertices.double()


def lsp_features(
    labels: torch.Tensor, num_classes: int, num_features: int, generator: torch.Generator, class_sep: float = 10.0
) -> torch.Tensor:
    """Per-sample class-clustered Gaussian features, ``(N, num_features)`` float64.

    The recipe of ``sklearn.datasets.make_classification(n_informative=F, n_redundant=0, n_repeated=0,
    n_clusters_per_class=1, class_sep=10, flip_y=0)`` as the LSP authors call it: class ``k`` has centre
    ``c_k`` in ``{-class_sep, +class_sep}^F`` (distinct hypercube vertices) and a random linear map
    ``A_k ~ U(-1, 1)^{F x F}``; a sample of class ``k`` is ``z @ A_k + c_k`` with ``z ~ N(0, I_F)``.
    """
    centres = _distinct_hypercube_vertices(num_classes, num_features, generator) * (2 * class_sep) - class_sep
    mixing = torch.rand(num_classes, num_features, num_features, generator=generator, dtype=torch.float64) * 2 - 1
    gaussian = torch.randn(labels.shape[0], num_features, generator=generator, dtype=torch.float64)
    features = torch.empty_like(gaussian)
    for k in range(num_classes):
        members = labels == k
        if members.any():
            features[members] = gaussian[members] @ mixing[k] + centres[k]
    return features


def lsp(
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    seed: int,
    num_classes: int,
    patch_size: int = 8,
    l2_radius: float = LSP_L2_BUDGET,
    class_sep: float = 10.0,
) -> torch.Tensor:
    """LSP, linearly separable synthetic perturbations (Yu et al., KDD'22). Budget: L2 ``l2_radius`` = 1.30.

    Sample-wise noise clustered by class: one ``make_classification``-style point per image
    (``lsp_features``, ``F = ceil(H/p) * ceil(W/p) * 3`` features, 48 for 32x32 and p=8), reshaped to a
    ``(H/p, W/p, 3)`` grid so that each ``p x p`` patch is one uniform colour per channel, upsampled by
    repetition to ``H x W`` (cropped when ``p`` does not divide the size), scaled to L2 = ``l2_radius`` and
    added. Source: dayu11/Availability-Attacks-Create-Shortcuts ``synthetic_perturbations/cifar_train.py``
    (``--patchsize 8 --eps 6``, i.e. L2 = sqrt(3072) * 6/255 = 1.304; ECLIPSE and APBench quote 1.30).
    """
    labels, num_classes = validate_poison_inputs(images, labels, num_classes)
    if patch_size < 1:
        raise ValueError(f"patch_size must be >= 1, got {patch_size}")
    if not l2_radius > 0:
        raise ValueError(f"l2_radius must be positive, got {l2_radius}")
    n, channels, height, width = images.shape
    grid_h, grid_w = math.ceil(height / patch_size), math.ceil(width / patch_size)
    generator = make_generator(seed)
    features = lsp_features(labels, num_classes, grid_h * grid_w * channels, generator, class_sep)
    # The authors reshape each point as (rows, cols, channels) (HWC images), then we move channels first.
    patches = features.view(n, grid_h, grid_w, channels).permute(0, 3, 1, 2).float()
    poisoned = torch.empty_like(images)
    for part in _chunks(n):
        noise = patches[part].repeat_interleave(patch_size, dim=2).repeat_interleave(patch_size, dim=3)
        noise = _scale_to_l2(noise[:, :, :height, :width].contiguous(), l2_radius)
        poisoned[part] = quantise_l2(images[part], noise, l2_radius)
    return poisoned


# --------------------------------------------------------------------------------------------------------------
# AR: autoregressive-process perturbations
# --------------------------------------------------------------------------------------------------------------
AR_CROP = 4  # the authors generate on (H+4) x (W+4) = 36x36 and drop the first 4 rows and columns
_AR_RENORMALISE_ABOVE = 1e4


@contextmanager
def _single_thread() -> Iterator[None]:
    """Run torch ops on one intra-op thread: the AR scan is ~1,000 tiny ops per row sweep, where thread
    hand-offs cost more than they save (measured 5-15x slower with 2 threads on a busy 2-core machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _run_ar_processes(
    coefficients: torch.Tensor, generator: torch.Generator, height: int, width: int, crop: int, max_norm: float | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The raw AR recurrence: ``(crop (n, 3, height, width), log_scale (n,), stopped (n, 3))``; see
    ``generate_ar_noise``. ``stopped`` marks channels halted for exceeding ``max_norm``."""
    with _single_thread():
        return _ar_scan(coefficients, generator, height, width, crop, max_norm)


def _ar_scan(
    coefficients: torch.Tensor, generator: torch.Generator, height: int, width: int, crop: int, max_norm: float | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    n = coefficients.shape[0]
    rows, cols = height + crop, width + crop
    weights = coefficients.float().clone()
    # Layout (rows, cols, n, 3): one pixel of every sample and channel is a contiguous (n, 3) block.
    signal = torch.randn(rows, cols, n, 3, generator=generator)
    tap = [[weights[:, :, a, b].contiguous() for b in range(3)] for a in range(3)]
    log_scale = torch.zeros(n, dtype=torch.float64)
    peak = signal.abs().amax(dim=(0, 1, 3)) if max_norm is None else None
    stopped = torch.zeros(n, 3, dtype=torch.bool)
    above = torch.empty(cols - 2, n, 3)
    for r in range(2, rows):
        torch.mul(signal[r - 2, 0 : cols - 2], tap[0][0], out=above)
        for a, b in ((0, 1), (0, 2), (1, 0), (1, 1), (1, 2)):
            above.addcmul_(signal[r - 2 + a, b : b + cols - 2], tap[a][b])
        row = signal[r]
        for t in range(2, cols):
            torch.addcmul(above[t - 2], tap[2][0], row[t - 2], out=row[t])
            row[t].addcmul_(tap[2][1], row[t - 1])
        if max_norm is not None:
            if r >= crop:
                newly = (row[crop:].abs().amax(dim=0) > max_norm) & ~stopped  # (n, 3)
                if newly.any():
                    stopped |= newly
                    for window_row in tap:
                        for weight in window_row:
                            weight[newly] = 0.0
            continue
        row_peak = row.abs().amax(dim=(0, 2))
        peak = torch.maximum(peak, row_peak)
        grown = row_peak > _AR_RENORMALISE_ABOVE
        if grown.any():
            factor = torch.where(grown, peak, torch.ones(n))
            signal.div_(factor.view(1, 1, n, 1))
            log_scale += factor.double().log()
            peak = peak / factor
    return signal[crop:, crop:].permute(2, 3, 0, 1).contiguous(), log_scale, stopped


def generate_ar_noise(
    coefficients: torch.Tensor,
    generator: torch.Generator,
    height: int = 32,
    width: int = 32,
    crop: int = AR_CROP,
    max_norm: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One AR sample per row of ``coefficients`` (``(n, 3, 3, 3)``): unit-L2 noise and the pre-scaling log-norm.

    Channel ``c`` of a sample is its own 2-D process: starting from ``N(0, 1)`` noise of size
    ``(height+crop) x (width+crop)``, pixels are visited in raster order from (2, 2) and set to the dot product
    of ``coefficients[:, c]`` with the 3x3 window ending at that pixel (the window's own pixel has weight 0, no
    innovation noise). Returns ``(noise, log_norm)``: ``noise`` ``(n, 3, height, width)`` is the bottom-right
    crop scaled to L2 = 1 and ``log_norm`` ``(n,)`` the log L2 norm of the crop before scaling (NaN/inf marks an
    unstable process).

    Vectorised: per row, the two rows above contribute through batched products; only the 2nd-order recurrence
    along the row is sequential, over ``(n, 3)`` tensors. The process is linear, so a sample whose values grow
    past 1e4 is divided by its current maximum (the factor is added to ``log_norm``) to avoid overflow without
    changing the unit-norm result. With ``max_norm`` (stability screening), a sample with any value in the crop
    above ``max_norm`` (so a crop norm above it) is stopped instead and gets ``log_norm = inf``.
    """
    noise, log_scale, stopped = _run_ar_processes(coefficients, generator, height, width, crop, max_norm)
    norms = noise.flatten(1).norm(dim=1)
    log_norm = norms.double().log() + log_scale
    log_norm[stopped.any(dim=1)] = math.inf
    return noise / norms.view(-1, 1, 1, 1), log_norm


def ar_filters(coefficients: torch.Tensor) -> torch.Tensor:
    """Matching filters ``(K, 3, 3, 3)``: the coefficients with -1 at the current pixel (they annihilate the
    process's own samples; a full 3-channel conv of a sample with another class's filter responds strongly)."""
    filters = coefficients.clone().float()
    filters[:, :, 2, 2] = -1.0
    return filters


def ar_response(signals: torch.Tensor, filters: torch.Tensor) -> torch.Tensor:
    """``sum ReLU(conv2d(signal, filter))`` for every signal ``(m, 3, H, W)`` and filter ``(k, 3, 3, 3)``: ``(m, k)``.

    Computed in chunks of signals so that the intermediate ``(chunk, k, H-2, W-2)`` map stays under ~256 MB."""
    per_signal = filters.shape[0] * (signals.shape[2] - 2) * (signals.shape[3] - 2) * 4
    chunk = max(1, (256 << 20) // max(1, per_signal))
    return torch.cat([F.relu(F.conv2d(part, filters)).sum(dim=(2, 3)) for part in signals.split(chunk)])


def sample_ar_coefficients(count: int, generator: torch.Generator) -> torch.Tensor:
    """Random coefficients as the authors draw them: ``N(0, 1)`` entries, the current pixel set to 0, and each
    channel's 8 weights divided by their sum (so they sum to 1). ``(count, 3, 3, 3)``."""
    coefficients = torch.randn(count, 3, 3, 3, generator=generator)
    coefficients[:, :, 2, 2] = 0.0
    return coefficients / coefficients.sum(dim=(2, 3), keepdim=True)


def _stable_channel_windows(count: int, generator: torch.Generator, max_norm: float, batch: int) -> tuple[torch.Tensor, int]:
    """``count`` single-channel windows (``(count, 3, 3)``) whose trial sample has pre-scaling L2 <= ``max_norm``.

    Channels of an AR process evolve independently and the authors draw them i.i.d., so screening channels one
    at a time and combining survivors is the authors' sampling conditioned on stability, ~20x cheaper than
    drawing whole 3-channel candidates (about 1 in 75 of which is stable). Returns the windows and the number drawn.
    """
    kept: list[torch.Tensor] = []
    total, drawn = 0, 0
    while total < count:
        windows = sample_ar_coefficients(batch, generator)  # batch x 3 independent channel windows
        noise, _, stopped = _run_ar_processes(windows, generator, 32, 32, AR_CROP, max_norm)
        channel_norm = noise.flatten(2).norm(dim=2)  # (batch, 3)
        stable = ~stopped & torch.isfinite(channel_norm) & (channel_norm <= max_norm)
        kept.append(windows.reshape(-1, 3, 3)[stable.flatten()])
        total += int(stable.sum())
        drawn += batch * 3
    return torch.cat(kept)[:count], drawn


def _stable_candidates(
    count: int, generator: torch.Generator, max_norm: float, trials: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """``count`` stable 3-channel candidates ``(count, 3, 3, 3)`` and their samples ``(count, trials, 3, 32, 32)``.

    Stable as in the authors' finder: every one of ``trials`` samples finite with pre-scaling L2 <= ``max_norm``.
    """
    kept: list[torch.Tensor] = []
    kept_samples: list[torch.Tensor] = []
    total = 0
    log_max_norm = math.log(max_norm)
    while total < count:
        want = 5 * (count - total) + 8  # about 1 in 5 triples of stable channels is jointly stable
        windows, _ = _stable_channel_windows(3 * want, generator, max_norm, batch=3 * want + 64)  # ~1 in 3 channels is stable
        candidates = windows.view(want, 3, 3, 3)
        samples, log_norm = generate_ar_noise(candidates.repeat_interleave(trials, dim=0), generator, max_norm=max_norm)
        finite = torch.isfinite(samples).flatten(1).all(dim=1) & torch.isfinite(log_norm)
        stable = (finite & (log_norm <= log_max_norm)).view(want, trials).all(dim=1)
        kept.append(candidates[stable])
        kept_samples.append(samples.view(want, trials, *samples.shape[1:])[stable])
        total += int(stable.sum())
    return torch.cat(kept)[:count], torch.cat(kept_samples)[:count]


def authors_min_response(num_classes: int) -> float:
    """The authors' separability threshold: 10 for CIFAR-10 (10 classes), 3 for CIFAR-100."""
    return 10.0 if num_classes <= 10 else 3.0


def find_ar_coefficients(
    num_classes: int,
    *,
    seed: int | None = None,
    generator: torch.Generator | None = None,
    min_response: float | None = None,
    max_norm: float = 50.0,
    trials: int = 3,
    batch: int = 256,
    max_candidates: int = 20_000,
) -> torch.Tensor:
    """Seeded search for ``num_classes`` stable, mutually separable AR processes, ``(K, 3, 3, 3)``.

    The authors' ``autoregressive_param_finder.py`` procedure: candidates drawn by ``sample_ar_coefficients``
    are examined in order; one is stable if each of ``trials`` samples (36x36, crop 4) is finite with
    pre-scaling L2 norm <= ``max_norm`` (their ``gen_norm_upper_bound``, 50); a stable candidate is accepted if
    its unit-norm samples respond to every already accepted process's filter with ``ar_response >=
    min_response`` (default ``authors_min_response``: 10 for CIFAR-10, 3 for CIFAR-100). The authors test the
    last trial's sample only; here every trial must pass (stricter). Speed-ups that do not change the
    distribution: channels are screened for stability one at a time (``_stable_channel_windows``) and
    candidates are generated and scored in batches. ``RuntimeError`` after ``max_candidates`` stable
    candidates (the authors stop after 1e6 raw draws, about 13,000 stable ones).
    """
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    if generator is None:
        if seed is None:
            raise ValueError("find_ar_coefficients needs a seed or a generator")
        generator = make_generator(seed)
    threshold = authors_min_response(num_classes) if min_response is None else float(min_response)
    accepted: list[torch.Tensor] = []
    examined = 0
    while len(accepted) < num_classes:
        if examined >= max_candidates:
            raise RuntimeError(
                f"found only {len(accepted)} of {num_classes} AR processes with response >= {threshold} among "
                f"{examined} stable candidates; lower min_response or raise max_candidates"
            )
        candidates, samples = _stable_candidates(batch, generator, max_norm, trials)
        examined += batch
        flat = samples.flatten(0, 1)  # (batch * trials, 3, 32, 32)
        if accepted:
            lowest = ar_response(flat, ar_filters(torch.stack(accepted))).view(batch, trials, -1).amin(dim=(1, 2))
        else:
            lowest = torch.full((batch,), math.inf)
        for index in range(batch):
            if not bool(lowest[index] >= threshold):
                continue
            accepted.append(candidates[index])
            if len(accepted) == num_classes:
                break
            # later candidates in this batch must also pass the new process's filter
            new = ar_response(flat, ar_filters(candidates[index : index + 1])).view(batch, trials).amin(dim=1)
            lowest = torch.minimum(lowest, new)
    return torch.stack(accepted).contiguous()


def load_ar_coefficients(coefficients: torch.Tensor | Sequence[torch.Tensor] | str | os.PathLike, num_classes: int) -> torch.Tensor:
    """Validate user-given AR coefficients: a tensor (or list of ``(3, 3, 3)`` tensors, or a path to a file
    saved with ``torch.save`` holding either) of shape ``(K, 3, 3, 3)``, ``K >= num_classes``.

    ``coefficients[k, c]`` is the 3x3 window of class ``k``'s channel ``c`` (row-major, the current pixel at
    ``[2, 2]``, which must be 0). They are used as given (the authors' published sets have each channel summing
    to about 1). To use the authors' CIFAR-10 set, stack their ``RANDOM_3C_AR_PARAMS_RNMR_10`` list and save it.
    """
    if isinstance(coefficients, (str, os.PathLike)):
        try:
            coefficients = torch.load(coefficients, map_location="cpu", weights_only=True)
        except FileNotFoundError as error:
            raise ValueError(f"AR coefficient file not found: {coefficients}") from error
    if isinstance(coefficients, (list, tuple)):
        coefficients = torch.stack([torch.as_tensor(c) for c in coefficients])
    if not isinstance(coefficients, torch.Tensor):
        raise ValueError(f"AR coefficients must be a tensor of shape (K, 3, 3, 3), got {type(coefficients).__name__}")
    coefficients = coefficients.detach().to("cpu", torch.float32)
    if coefficients.dim() != 4 or tuple(coefficients.shape[1:]) != (3, 3, 3):
        raise ValueError(f"AR coefficients must have shape (K, 3, 3, 3), got {tuple(coefficients.shape)}")
    if coefficients.shape[0] < num_classes:
        raise ValueError(f"AR coefficients cover {coefficients.shape[0]} classes but num_classes={num_classes}")
    bad = torch.nonzero(~torch.isfinite(coefficients).flatten(1).all(dim=1)).flatten().tolist()
    if bad:
        raise ValueError(f"AR coefficients contain NaN/inf for classes {bad}")
    if coefficients[:, :, 2, 2].abs().max() > 1e-6:
        raise ValueError("AR coefficients must be 0 at the current pixel [k, c, 2, 2]")
    return coefficients[:num_classes]


def ar(
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    seed: int,
    num_classes: int,
    coefficients: torch.Tensor | Sequence[torch.Tensor] | str | os.PathLike | None = None,
    l2_radius: float = AR_L2_BUDGET,
    min_response: float | None = None,
    max_norm: float = 50.0,
) -> torch.Tensor:
    """AR poisons (Sandoval-Segura et al., NeurIPS'22). Budget: L2 ``l2_radius`` = 1.0.

    One 3-channel autoregressive process per class (``coefficients`` ``(K, 3, 3, 3)``, see
    ``load_ar_coefficients``; by default found by ``find_ar_coefficients`` from ``seed``); every image gets a
    fresh sample (``generate_ar_noise``: Gaussian start on 36x36, crop to 32x32) scaled to L2 = ``l2_radius``.
    ``max_norm`` is the search's stability bound (see ``find_ar_coefficients``); larger admits rougher,
    higher-frequency processes.
    Raises ``ValueError`` if a class's process produces non-finite or zero noise.
    Source: psandovalsegura/autoregressive-poisoning ``autoregressive.py``, ``create_ar_poisons_3channel.py``
    (``--epsilon 1.0 --p_norm 2``), ``autoregressive_param_finder.py``.
    """
    labels, num_classes = validate_poison_inputs(images, labels, num_classes)
    if not l2_radius > 0:
        raise ValueError(f"l2_radius must be positive, got {l2_radius}")
    generator = make_generator(seed)
    if coefficients is None:
        class_coefficients = find_ar_coefficients(num_classes, generator=generator, min_response=min_response,
                                                  max_norm=max_norm)
    else:
        class_coefficients = load_ar_coefficients(coefficients, num_classes)
    _, _, height, width = images.shape
    poisoned = torch.empty_like(images)
    for part in _chunks(images.shape[0]):
        noise, log_norm = generate_ar_noise(class_coefficients[labels[part]], generator, height, width)
        unstable = ~(torch.isfinite(log_norm) & torch.isfinite(noise).flatten(1).all(dim=1))
        if unstable.any():
            classes = sorted(set(labels[part][unstable].tolist()))
            raise ValueError(f"AR process of classes {classes} is unstable (NaN/inf or zero noise)")
        poisoned[part] = quantise_l2(images[part], noise * l2_radius, l2_radius)
    return poisoned


# --------------------------------------------------------------------------------------------------------------
# OPS: one-pixel shortcut
# --------------------------------------------------------------------------------------------------------------
CUBE_CORNERS = torch.tensor([[(v >> 2) & 1, (v >> 1) & 1, v & 1] for v in range(8)], dtype=torch.float64)
"""The 8 colours OPS may write, indexed like the authors' ``pixel_value`` (R = bit 2, G = bit 1, B = bit 0)."""


def ops_scores(class_images: torch.Tensor) -> torch.Tensor:
    """OPS search objective for one class, ``(H*W, 8)``: for every position and cube-corner colour ``c``,
    mean / std of ``|c - x[p]|`` over the class's images and the 3 channels (population std, [0, 1] scale).

    Vectorised through per-channel first and second moments (``|c - x| = x`` for ``c = 0`` and ``1 - x`` for
    ``c = 1``). Zero spread scores +inf when the colour changes every image by the same amount, and 0 when it
    changes nothing.
    """
    x = class_images.double().flatten(2) / 255.0  # (n, 3, P)
    mean_x, mean_x2 = x.mean(dim=0), (x * x).mean(dim=0)  # (3, P)
    corner = CUBE_CORNERS.T.unsqueeze(-1)  # (3, 8, 1): channel value of each colour
    # E|c - x| and E|c - x|^2 per channel, for c in {0, 1} chosen by each colour.
    first = torch.where(corner > 0, 1.0 - mean_x.unsqueeze(1), mean_x.unsqueeze(1))  # (3, 8, P)
    second = torch.where(corner > 0, 1.0 - 2.0 * mean_x.unsqueeze(1) + mean_x2.unsqueeze(1), mean_x2.unsqueeze(1))
    mean = first.mean(dim=0)  # (8, P): channels pooled with the images
    std = (second.mean(dim=0) - mean * mean).clamp_min(0.0).sqrt()
    scores = torch.where(std > 1e-12, mean / std.clamp_min(1e-12), torch.where(mean > 1e-12, math.inf, 0.0))
    return scores.T.contiguous()  # (P, 8)


def ops_pixel_search(images: torch.Tensor, labels: torch.Tensor, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per class, the best (position, colour) pair not taken by an earlier class.

    Returns ``positions`` ``(K,)`` (row-major index ``row * W + col``, -1 for a class without images) and
    ``colours`` ``(K, 3)`` in {0, 1}. Source: cychomatica/One-Pixel-Shotcut ``perturb.py::pixel_search``
    (``sparsity=1``), which excludes used (position, colour) pairs, not positions.
    """
    _, _, height, width = images.shape
    positions = torch.full((num_classes,), -1, dtype=torch.int64)
    colours = torch.zeros(num_classes, 3, dtype=torch.float64)
    taken: list[tuple[int, int]] = []
    for k in range(num_classes):
        members = labels == k
        if not members.any():
            continue
        scores = ops_scores(images[members])
        for position, colour in taken:
            scores[position, colour] = -math.inf
        best = int(torch.argmax(scores))  # first of ties, in row-major (position, colour) order
        position, colour = divmod(best, scores.shape[1])
        taken.append((position, colour))
        positions[k] = position
        colours[k] = CUBE_CORNERS[colour]
    return positions, colours


def ops(images: torch.Tensor, labels: torch.Tensor, *, seed: int, num_classes: int) -> torch.Tensor:
    """OPS, one-pixel shortcut (Wu et al., ICLR'23). Budget: L0 = 1 pixel position (L-inf unbounded).

    ``ops_pixel_search`` picks one (position, cube-corner colour) per class; that pixel is set to the colour in
    every image of the class. Deterministic: ``seed`` is accepted for a uniform interface and not used.
    """
    labels, num_classes = validate_poison_inputs(images, labels, num_classes)
    positions, colours = ops_pixel_search(images, labels, num_classes)
    _, _, height, width = images.shape
    poisoned = images.clone()
    flat = poisoned.view(images.shape[0], 3, height * width)
    values = (colours * 255).to(torch.uint8)
    for k in torch.nonzero(positions >= 0).flatten().tolist():
        members = torch.nonzero(labels == k).squeeze(1)
        flat[members, :, int(positions[k])] = values[k]
    return poisoned


# --------------------------------------------------------------------------------------------------------------
register(AttackSpec("urp", urp, "model-free", "linf", URP_LINF_BUDGET,
                    "class-wise uniform random noise U(-8/255, 8/255), one pattern per class"))
register(AttackSpec("lsp", lsp, "model-free", "l2", LSP_L2_BUDGET,
                    "linearly separable synthetic 8x8-patch noise, sample-wise around class centres, L2 = 1.30"))
register(AttackSpec("ar", ar, "model-free", "l2", AR_L2_BUDGET,
                    "class-wise 3-channel autoregressive processes, a fresh sample per image, L2 = 1.0"))
register(AttackSpec("ops", ops, "model-free", "l0", float(OPS_L0_BUDGET),
                    "one-pixel shortcut: one class-wise pixel set to a cube-corner colour"))

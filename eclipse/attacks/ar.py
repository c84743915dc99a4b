"""AR: class-wise autoregressive-process perturbations (Sandoval-Segura et al., NeurIPS'22). Registers ``"ar"``.

The AR recurrence (``generate_ar_noise``), the matched filters that separate the processes (``ar_filters``,
``ar_response``), the seeded search for stable separable processes (``find_ar_coefficients``), loading a given
set (``load_ar_coefficients``) and the attack (``ar``).
"""
from __future__ import annotations

import math
import os
from contextlib import contextmanager
from typing import Iterator, Sequence

import torch
import torch.nn.functional as F

from eclipse.attacks.quantise import chunks, quantise_l2
from eclipse.attacks.registry import AttackSpec, register, validate_poison_inputs
from eclipse.seeding import make_generator

AR_L2_BUDGET = 1.0
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
    for part in chunks(images.shape[0]):
        noise, log_norm = generate_ar_noise(class_coefficients[labels[part]], generator, height, width)
        unstable = ~(torch.isfinite(log_norm) & torch.isfinite(noise).flatten(1).all(dim=1))
        if unstable.any():
            classes = sorted(set(labels[part][unstable].tolist()))
            raise ValueError(f"AR process of classes {classes} is unstable (NaN/inf or zero noise)")
        poisoned[part] = quantise_l2(images[part], noise * l2_radius, l2_radius)
    return poisoned


register(AttackSpec("ar", ar, "model-free", "l2", AR_L2_BUDGET,
                    "class-wise 3-channel autoregressive processes, a fresh sample per image, L2 = 1.0"))

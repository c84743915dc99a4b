"""Diffusion purification of uint8 image sets: noise to t*, denoise, quantise; chunked and resumable.

With one chunk (``batch_size >= N``) and the ancestral sampler this consumes randomness exactly
as the official ECLIPSE code under ``torch.manual_seed(seed)``: one ``randn_like`` for the
forward noise with ``abar[t* - 1]``, then one ``randn_like`` per reverse step i = t*-1..0.
Chunk ``i > 0`` draws from a generator seeded by ``(seed, i)``, so a rerun that resumes from
the chunks saved in ``resume_dir`` gives the same result as an uninterrupted run.

Two noise modes (``NOISE_MODES``): ``official`` (above: conformance with the official code; the result
depends on ``batch_size``) and ``per-image`` (image ``k`` draws every number from its own generator seeded by
``(seed, k)``: the noise is the same whatever the batch size, chunking, resume point or number of processes,
which is what sharding needs).
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .diffusion import samplers as S
from .diffusion.gaussian import Model, PerImageNoise, forward_noise, to_model_range, to_uint8
from .diffusion.runtime import UNetRuntime, prepare_unet
from .diffusion.schedule import NoiseSchedule
from .diffusion.selection import FeatureMap
from .storage import atomic_torch_save, atomic_write_json, config_key, safe_torch_load, tensor_hash
from .validation import check_images


NOISE_MODES = {
    "official": "one generator per chunk, seeded by (seed, chunk): the official code's draws with one chunk "
                "(conformance), but the result depends on the batch size",
    "per-image": "each image's own generator, seeded by (seed, image index): the same result at any batch size, "
                 "chunking, resume point or number of processes (torchrun)",
}


def chunk_seed(seed: int, chunk: int) -> int:
    """Seed of chunk ``chunk``: ``seed`` itself for chunk 0, a hash of (seed, chunk) otherwise."""
    if chunk == 0:
        return int(seed)
    digest = hashlib.sha256(f"eclipse-purify:{int(seed)}:{int(chunk)}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def purify_batch(x0: torch.Tensor, model: Model, schedule: NoiseSchedule, *, t_star: int,
                 sampler: str = "ancestral", steps: int | None = None, eta: float = 0.0,
                 generator: torch.Generator | None = None, autocast_dtype: torch.dtype | None = None,
                 callback: S.Callback | None = None, features: FeatureMap | None = None) -> torch.Tensor:
    """Purify one float batch in [-1, 1]: noise to ``t_star`` (:func:`forward_noise`), then run the
    registered ``sampler`` back to 0; returns the float result (before quantisation). ``features``: the
    feature map of a sampler that chooses among candidates (``elixir``). ``callback`` sees
    the noised batch first (``{"stage": "noised", "t": t_star - 1, "x": x_t}``), then every reverse step
    (``stage`` ``"reverse"``, with ``i``, ``t``, ``x``, ``pred_xstart``)."""
    spec = S.SAMPLERS[sampler]  # unknown names fail before any noise is drawn
    x_t = forward_noise(schedule, x0, t_star, generator)
    if callback is not None:
        callback({"stage": "noised", "i": t_star - 1, "t": t_star - 1, "x": x_t, "pred_xstart": None})
    reverse = None if callback is None else lambda state: callback({"stage": "reverse", **state})
    options = S.SamplerOptions(steps=steps, eta=eta, autocast_dtype=autocast_dtype, callback=reverse, x0=x0,
                               features=None if features is None else features.fn)
    return spec.fn(model, schedule, x_t, t_star - 1, generator, options)


def _model_fingerprint(model: Model) -> str:
    """Hash of a module's weights (so a resume folder is never reused with another model)."""
    if not isinstance(model, torch.nn.Module):
        return "callable"
    state = model.state_dict()
    return tensor_hash(*state.values()) + "-" + hashlib.sha256("|".join(state).encode()).hexdigest()[:8]


def purify(images_uint8: torch.Tensor, model: Model, schedule: NoiseSchedule, *, t_star: int,
           sampler: str = "ancestral", steps: int | None = None, eta: float = 0.0, seed: int,
           batch_size: int, resume_dir: str | os.PathLike | None = None, progress: bool = True,
           device: torch.device | str | None = None, autocast_dtype: torch.dtype | None = None,
           noise: str = "official", first_index: int = 0, features: FeatureMap | None = None,
           runtime: UNetRuntime | None = None) -> torch.Tensor:
    """Purify a uint8 (N,3,H,W) set; returns uint8 in input order.

    ``runtime``: the UNet's precision, memory format and compilation (:mod:`eclipse.diffusion.runtime`; default
    fp32 eager), part of the resume identity; give it or ``autocast_dtype``, not both.

    ``features``: the feature map of a sampler that chooses among candidates (``elixir``; without one it
    compares pixels only), part of the resume identity.

    ``noise``: a ``NOISE_MODES`` name. Under ``per-image`` the images are numbered from ``first_index`` (a
    shard of a larger set passes its offset, so that each image keeps its own noise).

    Chunks of ``batch_size`` run on ``device`` (default: the model's); each finished chunk is
    saved atomically in ``resume_dir`` and reused by a rerun with the same arguments.
    """
    check_images(images_uint8, name="images_uint8", channels=None, allow_empty=True)
    if batch_size < 1:
        raise ValueError("batch_size must be >= 1")
    if noise not in NOISE_MODES:
        raise ValueError(f"unknown noise mode {noise!r}; choose from {', '.join(NOISE_MODES)}")
    images = images_uint8.cpu()
    if device is None:
        params = list(model.parameters()) if isinstance(model, torch.nn.Module) else []
        device = params[0].device if params else torch.device("cpu")
    device = torch.device(device)
    n = images.shape[0]
    starts = list(range(0, n, batch_size))
    folder = Path(resume_dir) if resume_dir is not None else None
    S.SamplerOptions(steps=steps, eta=eta)  # bad settings fail before any work
    if runtime is not None and autocast_dtype is not None:
        raise ValueError("give the UNet's precision once: runtime or autocast_dtype, not both")
    runtime = runtime or UNetRuntime()
    autocast_dtype = autocast_dtype or runtime.autocast_dtype
    manifest = dict(n=n, shape=list(images.shape), images=tensor_hash(images), t_star=t_star,
                    sampler=sampler, steps=steps, eta=eta, seed=seed, batch_size=batch_size,
                    model=_model_fingerprint(model) if folder is not None else "-", betas=tensor_hash(schedule.betas),
                    device=device.type, autocast=str(autocast_dtype), noise=noise, first_index=first_index)
    if features is not None:
        manifest["features"] = features.key
    if runtime.key():
        manifest["runtime"] = runtime.key()
    if folder is not None:
        _check_manifest(folder, manifest)
    model = prepare_unet(model, runtime) if isinstance(model, torch.nn.Module) else model
    run_key = config_key(manifest)
    out = torch.empty_like(images)
    for ci, start in enumerate(tqdm(starts, disable=not progress, desc=f"purify t*={t_star} {sampler}")):
        stop = min(start + batch_size, n)
        path = folder / f"chunk_{ci:06d}.pt" if folder is not None else None
        # a chunk is bound to this run, its index and its input images: a valid chunk of another run, or
        # of another place in this one, copied over it is recomputed, never spliced into the result
        binding = f"{run_key}:{ci}:{tensor_hash(images[start:stop])}"
        if path is not None and path.exists():
            try:
                saved = safe_torch_load(path)
            except ValueError:
                saved = None
            chunk = saved.get("purified") if isinstance(saved, dict) and saved.get("binding") == binding else None
            if isinstance(chunk, torch.Tensor) and chunk.dtype == torch.uint8 and chunk.shape == images[start:stop].shape:
                out[start:stop] = chunk
                continue
        generator = (PerImageNoise(seed, range(first_index + start, first_index + stop)) if noise == "per-image"
                     else torch.Generator(device=device).manual_seed(chunk_seed(seed, ci)))
        x0 = to_model_range(images[start:stop].to(device))
        with torch.no_grad():
            y = purify_batch(x0, model, schedule, t_star=t_star, sampler=sampler, steps=steps, eta=eta,
                             generator=generator, autocast_dtype=autocast_dtype, features=features)
        if not bool(torch.isfinite(y).all()):
            raise FloatingPointError(f"purification produced NaN or infinite values in chunk {ci} (images "
                                     f"{start}..{stop - 1}); the model's weights or the sampler settings are broken")
        chunk = to_uint8(y).cpu()
        if path is not None:
            atomic_torch_save({"purified": chunk, "binding": binding}, path)
        out[start:stop] = chunk
    return out


def _check_manifest(folder: Path, manifest: dict) -> None:
    path = folder / "manifest.json"
    if path.exists():
        try:
            old = json.loads(path.read_text())
        except (OSError, ValueError) as err:
            raise ValueError(f"{path}: unreadable resume manifest ({err}); use a fresh --resume-dir") from None
        if old != json.loads(json.dumps(manifest)):
            diff = {k: (old.get(k), manifest.get(k)) for k in manifest if old.get(k) != manifest.get(k)}
            raise ValueError(f"{folder}: resume folder belongs to another purification run (differs in {diff}); "
                             "use a fresh folder")
    else:
        atomic_write_json(manifest, path)

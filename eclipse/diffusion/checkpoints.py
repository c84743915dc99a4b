"""Read improved-diffusion / ECLIPSE checkpoints and YAML configs; write and read our own.

Official files are plain state dicts (``model250000.pt``, ``ema_0.9999_250000.pt``) of
improved-diffusion's ``UNetModel``; official configs are ECLIPSE/DiffPure YAML files whose
``model:`` section holds improved-diffusion argument names, merged over
``model_and_diffusion_defaults()``. Our checkpoints are one dict (see :func:`save_checkpoint`).
"""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch

from ..errors import DataError
from ..storage import atomic_torch_save, safe_torch_load
from .config_schema import read_yaml, validate_config
from .schedule import NoiseSchedule, make_schedule, respace, space_timesteps
from .unet import UNetConfig, UNetModel, build_unet

FORMAT = "eclipse-diffusion-v1"

# improved-diffusion's script_util.model_and_diffusion_defaults(), which official configs update
IMPROVED_DIFFUSION_DEFAULTS: dict[str, Any] = dict(
    image_size=64, num_channels=128, num_res_blocks=2, num_heads=4, num_heads_upsample=-1,
    attention_resolutions="16,8", dropout=0.0, learn_sigma=False, sigma_small=False, class_cond=False,
    diffusion_steps=1000, noise_schedule="linear", timestep_respacing="", use_kl=False, predict_xstart=False,
    rescale_timesteps=True, rescale_learned_sigmas=True, use_checkpoint=False, use_scale_shift_norm=True,
)


@dataclass
class DiffusionSettings:
    """Diffusion-process settings, named as improved-diffusion's arguments."""

    noise_schedule: str = "cosine"
    diffusion_steps: int = 4000
    timestep_respacing: str = ""
    rescale_timesteps: bool = True
    learn_sigma: bool = True
    sigma_small: bool = False
    use_kl: bool = False
    predict_xstart: bool = False
    rescale_learned_sigmas: bool = True

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "DiffusionSettings":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


def schedule_from_settings(settings: DiffusionSettings) -> NoiseSchedule:
    """The schedule the official code would build (respaced when ``timestep_respacing`` asks for it)."""
    if settings.predict_xstart:
        raise NotImplementedError("predict_xstart=True (x0-predicting models) is not supported; ECLIPSE predicts epsilon")
    if settings.use_kl:
        raise NotImplementedError("use_kl=True (pure L_vlb training) is not supported; ECLIPSE uses the hybrid loss")
    if not settings.learn_sigma and settings.sigma_small:
        raise NotImplementedError("sigma_small=True (FIXED_SMALL variance) is not supported; use learn_sigma or FIXED_LARGE")
    full = make_schedule(settings.noise_schedule, int(settings.diffusion_steps), settings.rescale_timesteps)
    spacing = str(settings.timestep_respacing or "").strip()
    if not spacing or spacing == str(settings.diffusion_steps):
        return full
    sched, _ = respace(full, space_timesteps(full.num_timesteps, spacing))
    return sched


def _flatten_config(data: dict[str, Any]) -> dict[str, Any]:
    """Merge the sections that may hold model/diffusion keys (``model``, ``diffusion``) or a flat file."""
    flat: dict[str, Any] = {k: v for k, v in data.items() if not isinstance(v, dict)}
    for section in ("diffusion", "model"):
        if isinstance(data.get(section), dict):
            flat.update(data[section])
    return flat


def parse_config(source: str | os.PathLike | dict[str, Any]) -> tuple[UNetConfig, DiffusionSettings]:
    """Official-style YAML (or a dict) -> (UNetConfig, DiffusionSettings), over improved-diffusion defaults.

    Accepts nested (``model: {...}``, optionally ``diffusion: {...}``) and flat layouts; other sections
    (``data``, ``sampling``, ...) are not read. Every model/diffusion key is checked by
    :func:`eclipse.diffusion.config_schema.validate_config` (unknown keys, types, ranges) first.
    """
    name = "<dict>"
    if not isinstance(source, dict):
        name = str(source)
        data = read_yaml(source)
        if not isinstance(data, dict):
            raise DataError(f"{name}: expected a mapping at the top level of the config")
    else:
        data = source
    merged = dict(IMPROVED_DIFFUSION_DEFAULTS)
    merged.update(validate_config(_flatten_config(data), name))
    if merged.get("class_cond"):
        raise NotImplementedError(f"{name}: class_cond=True models are not supported")
    for key in ("attention_resolutions", "timestep_respacing"):
        if isinstance(merged.get(key), (list, tuple)):
            merged[key] = ",".join(str(v) for v in merged[key])
        elif merged.get(key) is not None:
            merged[key] = str(merged[key])
    try:
        return UNetConfig.from_dict(merged), DiffusionSettings.from_dict(merged)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{name}: invalid model/diffusion settings ({err})") from err


def _strip_prefix(sd: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    if sd and all(k.startswith(prefix) for k in sd):
        return {k[len(prefix):]: v for k, v in sd.items()}
    return sd


def read_state_dict(path: str | os.PathLike, *, use_ema: bool = True) -> dict[str, torch.Tensor]:
    """UNet weights from an improved-diffusion file (plain/EMA state dict) or one of our checkpoints."""
    return _state_dict_from(safe_torch_load(path), str(path), use_ema)


def _state_dict_from(obj: Any, path: str, use_ema: bool) -> dict[str, torch.Tensor]:
    if isinstance(obj, dict) and obj.get("format") == FORMAT:
        sd = obj["ema"] if use_ema and obj.get("ema") is not None else obj["model"]
    elif isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        sd = obj["state_dict"]
    elif isinstance(obj, dict) and all(torch.is_tensor(v) for v in obj.values()):
        sd = obj
    else:
        raise ValueError(f"{path}: not a UNet state dict nor an eclipse checkpoint")
    return _strip_prefix(_strip_prefix(dict(sd), "module."), "_orig_mod.")


def load_weights(model: UNetModel, state_dict: dict[str, torch.Tensor], source: str = "<state dict>", *,
                 check_only: bool = False) -> UNetModel:
    """``load_state_dict(strict=True)`` with an error naming the file and the offending keys (``check_only``:
    compare names and shapes only, e.g. against a model built on the meta device)."""
    own = model.state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    mismatched = [f"{k}: file {tuple(state_dict[k].shape)} vs model {tuple(v.shape)}"
                  for k, v in own.items() if k in state_dict and tuple(state_dict[k].shape) != tuple(v.shape)]
    if missing or unexpected or mismatched:
        parts = []
        for label, items in (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", mismatched)):
            if items:
                more = f" (+{len(items) - 5} more)" if len(items) > 5 else ""
                parts.append(f"{len(items)} {label}: {', '.join(items[:5])}{more}")
        raise ValueError(f"{source}: checkpoint does not fit the UNet config; " + "; ".join(parts))
    if check_only:
        return model
    model.load_state_dict(state_dict, strict=True)
    return model


def save_checkpoint(path: str | os.PathLike, *, model: dict[str, torch.Tensor], ema: dict[str, torch.Tensor] | None,
                    unet_config: UNetConfig, diffusion: DiffusionSettings, step: int = 0,
                    optimizer: dict[str, Any] | None = None, extra: dict[str, Any] | None = None) -> Path:
    """Write our checkpoint atomically: weights, EMA, optimiser, step, configs (+ ``extra``, e.g. RNG states)."""
    payload = {
        "format": FORMAT, "model": model, "ema": ema, "optimizer": optimizer, "step": int(step),
        "unet_config": unet_config.to_dict(), "diffusion": asdict(diffusion), "extra": extra or {},
    }
    return atomic_torch_save(payload, path)


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read one of our checkpoints (``weights_only``); raises naming the file if it is not one."""
    obj = safe_torch_load(path)
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        raise ValueError(f"{path}: not an eclipse diffusion checkpoint (format {FORMAT!r})")
    for key in ("model", "unet_config", "diffusion", "step"):
        if key not in obj:
            raise ValueError(f"{path}: checkpoint lacks {key!r}")
    return obj


def load_model_and_schedule(checkpoint: str | os.PathLike, config: str | os.PathLike | dict | None = None, *,
                            use_ema: bool = True, device: torch.device | str = "cpu") -> tuple[UNetModel, NoiseSchedule]:
    """(eval-mode UNet, schedule) from our checkpoint or an official one.

    For an official state dict ``config`` is an official-style YAML; without one the ECLIPSE
    paper settings (``configs/cifar10.yml``) are assumed.
    """
    parsed = parse_config(config) if config is not None else None  # a bad config fails before the weights load
    obj = safe_torch_load(checkpoint)
    if isinstance(obj, dict) and obj.get("format") == FORMAT and config is None:
        meta = {**(obj.get("unet_config") or {}), **(obj.get("diffusion") or {})}
        if not all(isinstance(k, str) for k in meta):
            raise DataError(f"{checkpoint}: checkpoint config keys must be strings")
        validate_config(meta, f"{checkpoint} (its saved config)")
        ucfg = UNetConfig.from_dict(obj["unet_config"])
        dset = DiffusionSettings.from_dict(obj["diffusion"])
    elif parsed is not None:
        ucfg, dset = parsed
    else:
        ucfg, dset = UNetConfig(), DiffusionSettings()
    state_dict = _state_dict_from(obj, str(checkpoint), use_ema)
    with torch.device("meta"):  # the shapes are compared before any memory is spent on the model
        load_weights(build_unet(ucfg), state_dict, str(checkpoint), check_only=True)
    broken = [k for k, v in state_dict.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if broken:
        raise DataError(f"{checkpoint}: weights hold NaN or infinite values ({', '.join(broken[:3])}"
                        f"{', ...' if len(broken) > 3 else ''}); purifying with them gives black images")
    model = build_unet(ucfg)
    load_weights(model, state_dict, str(checkpoint))
    model.requires_grad_(False).eval().to(device)
    return model, schedule_from_settings(dset)

"""The one validator of diffusion configs (official YAML files, our checkpoints' metadata), run before
anything is built: every key must be known, every value of the right type and within range.

A typo (``noise_shedule: cosine``) would otherwise fall back to a default and give another result with
exit 0; ``diffusion_steps: 1e9`` would build a list of a billion betas; ``num_channels: 200000`` would ask
for 640 GB. YAML is read with a loader that refuses aliases (a 1 KB alias bomb expands to gigabytes).
"""
from __future__ import annotations

import difflib
import os
from pathlib import Path
from typing import Any, Callable

import yaml

from ..bounded import read_regular_file
from ..errors import DataError
from ..limits import MAX_CONFIG_BYTES

__all__ = ["read_yaml", "validate_config", "MODEL_KEYS", "IGNORED_KEYS"]


def _int(low: int, high: int) -> Callable[[str, Any], Any]:
    def check(key: str, value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{key} must be an integer, got {value!r}")
        if not low <= value <= high:
            raise ValueError(f"{key} must lie in {low}..{high}, got {value}")
        return value
    return check


def _float(low: float, high: float) -> Callable[[str, Any], Any]:
    def check(key: str, value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
            raise ValueError(f"{key} must be a number in [{low}, {high}], got {value!r}")
        return float(value)
    return check


def _bool(key: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{key} must be true or false, got {value!r}")
    return value


def _choice(*names: str) -> Callable[[str, Any], Any]:
    def check(key: str, value: Any) -> str:
        if value not in names:
            raise ValueError(f"{key} must be one of {', '.join(names)}, got {value!r}")
        return value
    return check


def _int_list(max_len: int, low: int, high: int, *, empty: bool) -> Callable[[str, Any], Any]:
    """A comma string (``"16,8"``), an int, or a YAML list of ints."""
    def check(key: str, value: Any) -> Any:
        if isinstance(value, str):
            items = [v.strip() for v in value.split(",")] if value.strip() else []
            if len(value) > 16 * max_len or not all(v.isdigit() for v in items):
                raise ValueError(f"{key} must be comma-separated integers, got {value[:60]!r}")
            items = [int(v) for v in items]
        elif isinstance(value, int) and not isinstance(value, bool):
            items = [value]
        elif isinstance(value, (list, tuple)):
            items = list(value)
        else:
            raise ValueError(f"{key} must be a list of integers, got {type(value).__name__}")
        if len(items) > max_len or (not items and not empty):
            raise ValueError(f"{key} must hold {'0' if empty else '1'}..{max_len} values, got {len(items)}")
        for item in items:
            _int(low, high)(key, item)
        return value
    return check


def _respacing(key: str, value: Any) -> Any:
    if isinstance(value, str) and value.startswith("ddim"):
        return _int(1, 100_000)(key, int(value[4:]) if value[4:].isdigit() else value)
    return _int_list(64, 1, 100_000, empty=True)(key, value if value is not None else "")


MODEL_KEYS: dict[str, Callable[[str, Any], Any]] = {
    "image_size": _int(8, 512), "num_channels": _int(32, 1024), "num_res_blocks": _int(1, 16),
    "attention_resolutions": _int_list(8, 1, 512, empty=True), "num_heads": _int(1, 64),
    "num_heads_upsample": _int(-1, 64), "learn_sigma": _bool, "use_scale_shift_norm": _bool,
    "dropout": _float(0.0, 0.99), "channel_mult": lambda k, v: v if v is None else _int_list(8, 1, 16, empty=False)(k, v),
    "in_channels": _int(1, 4), "class_cond": _bool, "use_checkpoint": _bool, "use_fp16": _bool,
    "diffusion_steps": _int(1, 100_000), "noise_schedule": _choice("cosine", "linear"),
    "timestep_respacing": _respacing, "rescale_timesteps": _bool, "sigma_small": _bool, "use_kl": _bool,
    "predict_xstart": _bool, "rescale_learned_sigmas": _bool,
}
"""improved-diffusion's model and diffusion arguments, each with its check."""

IGNORED_KEYS = frozenset({
    "lr", "batch_size", "microbatch", "ema_rate", "log_interval", "save_interval", "resume_checkpoint",
    "fp16_scale_growth", "weight_decay", "lr_anneal_steps", "schedule_sampler", "data_dir", "num_samples",
    "use_ddim", "clip_denoised", "model_path",
})
"""Training and sampling flags of improved-diffusion's scripts that may sit in a flat config; they do not
change the model or the schedule and are read without effect."""


def validate_config(config: dict[str, Any], source: str) -> dict[str, Any]:
    """Check every key and value of a flat model/diffusion config; raise :class:`DataError` naming
    ``source``, the key and the problem (with the nearest known key for a typo)."""
    for key, value in config.items():
        if key in IGNORED_KEYS:
            continue
        if key not in MODEL_KEYS:
            near = difflib.get_close_matches(str(key), list(MODEL_KEYS), n=1)
            hint = f"; did you mean {near[0]!r}?" if near else f"; known keys: {', '.join(sorted(MODEL_KEYS))}"
            raise DataError(f"{source}: unknown config key {key!r}{hint}")
        try:
            MODEL_KEYS[key](key, value)
        except ValueError as err:
            raise DataError(f"{source}: {err}") from None
    sizes = config.get("attention_resolutions")
    image_size = config.get("image_size", 32)
    if isinstance(sizes, str) and sizes.strip():
        bad = [r for r in (int(v) for v in sizes.split(",")) if image_size % r]
        if bad:
            raise DataError(f"{source}: attention_resolutions {bad} do not divide image_size {image_size}")
    return config


class _NoAliasLoader(yaml.SafeLoader):
    """PyYAML's safe loader without aliases: configs never need ``*name``, alias bombs always do."""

    def compose_node(self, parent, index):  # noqa: D102
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.composer.ComposerError(None, None, f"alias *{event.anchor} is not allowed in a config",
                                              event.start_mark)
        return super().compose_node(parent, index)


def read_yaml(path: str | os.PathLike) -> Any:
    """A YAML file of at most ``MAX_CONFIG_BYTES`` bytes, without aliases; :class:`DataError` naming the file."""
    path = Path(path)
    text = read_regular_file(path, MAX_CONFIG_BYTES, what="a config file")
    try:
        return yaml.load(text.decode("utf-8"), Loader=_NoAliasLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise DataError(f"{path}: cannot read YAML config: {err.problem or err.context}{where}") from None
    except (yaml.YAMLError, UnicodeDecodeError, RecursionError) as err:
        raise DataError(f"{path}: cannot read YAML config ({' '.join(str(err).split())})") from None

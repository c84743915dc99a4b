"""improved-diffusion UNet, schedules, Gaussian-diffusion math, samplers, checkpoints, training."""
from .checkpoints import DiffusionSettings, load_model_and_schedule, parse_config
from .samplers import ancestral, ddim, one_shot, respaced
from .schedule import NoiseSchedule, make_schedule, purification_timesteps, respace
from .unet import PAPER_UNET, UNetConfig, UNetModel, build_unet

__all__ = [
    "DiffusionSettings", "NoiseSchedule", "PAPER_UNET", "UNetConfig", "UNetModel", "ancestral", "build_unet",
    "ddim", "load_model_and_schedule", "make_schedule", "one_shot", "parse_config", "purification_timesteps",
    "respace", "respaced",
]

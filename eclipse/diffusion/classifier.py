"""The diffusion UNet turned classifier, as ECLIPSE's adaptive attack (ADP, §4.4) describes it: the last
layer of the UNet replaced by a convolution to one channel per class, followed by global average pooling.

The UNet is evaluated at timestep 0 on images mapped to [-1, 1]; it takes [0, 1] images like every victim.
"""
from __future__ import annotations

import torch
from torch import nn

from ..victims import VICTIMS
from .unet import UNetConfig, UNetModel, _norm


class UNetClassifier(nn.Module):
    """``UNetModel`` with its output head replaced by conv(ch -> num_classes) + global average pooling."""

    def __init__(self, config: UNetConfig, num_classes: int) -> None:
        super().__init__()
        self.unet = UNetModel(config)
        channels = config.num_channels
        self.unet.out = nn.Sequential(_norm(channels), nn.SiLU(), nn.Conv2d(channels, num_classes, 3, padding=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = torch.zeros(x.shape[0], device=x.device)
        return self.unet(x * 2.0 - 1.0, t).mean(dim=(2, 3))


def unet_classifier(num_classes: int, width: int) -> UNetClassifier:
    """The improved-diffusion CIFAR-10 UNet layout (3 residual blocks per level, attention at 16 and 8 pixels)
    with ``2 * width`` base channels rounded up to a multiple of 32 (its group norms have 32 groups; width 64:
    the paper's 128-channel UNet), as a classifier."""
    config = UNetConfig(num_channels=32 * -(-2 * width // 32), num_res_blocks=3, attention_resolutions="16,8", num_heads=4,
                        learn_sigma=False)
    return UNetClassifier(config, num_classes)


def small_unet_classifier(num_classes: int, width: int) -> UNetClassifier:
    """The quick profile's diffusion layout (1 residual block per level, attention at 16 pixels, channel
    multipliers 1, 2, 2) with ``2 * width`` base channels (rounded up to 32), as a classifier: the purifier's own
    layout under ``quick`` (width 16: the 32-channel quick UNet, 1.19M parameters), about a quarter of the paper
    layout's cost per image at the same width, yet 9x a width-16 ResNet-18 (so ``quick``'s ADP uses the ResNet;
    eclipse/profiles.py)."""
    config = UNetConfig(num_channels=32 * -(-2 * width // 32), num_res_blocks=1, attention_resolutions="16",
                        num_heads=4, learn_sigma=False, channel_mult=(1, 2, 2))
    return UNetClassifier(config, num_classes)


VICTIMS.register("unet-small", small_unet_classifier,
                 description="the quick profile's diffusion UNet layout as a classifier (a cheaper ADP surrogate), "
                             "2 x width base channels")
VICTIMS.register("unet", unet_classifier,
                 description="the diffusion UNet as a classifier (conv + global pooling head; ADP's surrogate), "
                             "2 x width base channels")

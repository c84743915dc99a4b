"""CIFAR-style victim networks (3x3 stem, no max-pool) with a width multiplier for CPU profiles.

``width`` is the channel count of the first stage: 64 is the standard ResNet/VGG size, 32 for
DenseNet's growth rate is scaled by ``width / 64``.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn
import torch.nn.functional as F

from .registry import Registry


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, in_ch: int, ch: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, ch, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(ch)
        self.conv2 = nn.Conv2d(ch, ch, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(ch)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_ch != ch:
            self.shortcut = nn.Sequential(nn.Conv2d(in_ch, ch, 1, stride, bias=False), nn.BatchNorm2d(ch))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, in_ch: int, ch: int, stride: int) -> None:
        super().__init__()
        out_ch = ch * self.expansion
        self.conv1 = nn.Conv2d(in_ch, ch, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(ch)
        self.conv2 = nn.Conv2d(ch, ch, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(ch)
        self.conv3 = nn.Conv2d(ch, out_ch, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_ch)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_ch != out_ch:
            self.shortcut = nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, stride, bias=False), nn.BatchNorm2d(out_ch))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        return F.relu(self.bn3(self.conv3(out)) + self.shortcut(x))


class ResNet(nn.Module):
    def __init__(self, block, num_blocks: list[int], num_classes: int, width: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        layers, in_ch = [], width
        for stage, blocks in enumerate(num_blocks):
            ch = width * 2**stage
            for i in range(blocks):
                layers.append(block(in_ch, ch, 2 if (i == 0 and stage > 0) else 1))
                in_ch = ch * block.expansion
        self.layers = nn.Sequential(*layers)
        self.linear = nn.Linear(in_ch, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.layers(F.relu(self.bn1(self.conv1(x))))
        return self.linear(torch.flatten(F.adaptive_avg_pool2d(out, 1), 1))


_VGG_LAYOUT = {
    "vgg16": [1, 1, "M", 2, 2, "M", 4, 4, 4, "M", 8, 8, 8, "M", 8, 8, 8, "M"],
    "vgg19": [1, 1, "M", 2, 2, "M", 4, 4, 4, 4, "M", 8, 8, 8, 8, "M", 8, 8, 8, 8, "M"],
}


def vgg(name: str, num_classes: int, width: int) -> nn.Sequential:
    """CIFAR VGG with batch norm; channel counts are multiples of ``width`` (64 standard)."""
    layers: list[nn.Module] = []
    in_ch = 3
    for item in _VGG_LAYOUT[name]:
        if item == "M":
            layers.append(nn.MaxPool2d(2))
        else:
            ch = width * int(item)
            layers += [nn.Conv2d(in_ch, ch, 3, padding=1, bias=False), nn.BatchNorm2d(ch), nn.ReLU(inplace=True)]
            in_ch = ch
    return nn.Sequential(*layers, nn.Flatten(), nn.Linear(in_ch, num_classes))


class _DenseLayer(nn.Module):
    def __init__(self, in_ch: int, growth: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.BatchNorm2d(in_ch), nn.ReLU(inplace=True), nn.Conv2d(in_ch, 4 * growth, 1, bias=False),
            nn.BatchNorm2d(4 * growth), nn.ReLU(inplace=True), nn.Conv2d(4 * growth, growth, 3, padding=1, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.net(x), x], 1)


def densenet121(num_classes: int, width: int) -> nn.Sequential:
    """CIFAR DenseNet-121 (blocks 6/12/24/16, reduction 0.5); growth rate 32 * width / 64."""
    growth = max(4, 32 * width // 64)
    ch = 2 * growth
    layers: list[nn.Module] = [nn.Conv2d(3, ch, 3, padding=1, bias=False)]
    for i, blocks in enumerate((6, 12, 24, 16)):
        for _ in range(blocks):
            layers.append(_DenseLayer(ch, growth))
            ch += growth
        if i < 3:
            out = ch // 2
            layers += [nn.BatchNorm2d(ch), nn.ReLU(inplace=True), nn.Conv2d(ch, out, 1, bias=False), nn.AvgPool2d(2)]
            ch = out
    layers += [nn.BatchNorm2d(ch), nn.ReLU(inplace=True), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(ch, num_classes)]
    return nn.Sequential(*layers)


MIN_WIDTH = 8

VICTIMS: Registry[Callable[[int, int], nn.Module]] = Registry("victim")
"""Victim networks by name: ``VICTIMS[arch](num_classes, width) -> nn.Module`` (width 64 = the standard model)."""
VICTIMS.register("resnet18", lambda k, w: ResNet(BasicBlock, [2, 2, 2, 2], k, w), description="ResNet-18 (CIFAR stem); the paper's main victim")
VICTIMS.register("resnet50", lambda k, w: ResNet(Bottleneck, [3, 4, 6, 3], k, w), description="ResNet-50 (CIFAR stem)")
VICTIMS.register("vgg16", lambda k, w: vgg("vgg16", k, w), description="VGG-16 with batch norm")
VICTIMS.register("vgg19", lambda k, w: vgg("vgg19", k, w), description="VGG-19 with batch norm")
VICTIMS.register("densenet121", densenet121, description="DenseNet-121 (CIFAR), growth 32 at width 64")



def build_victim(arch: str, num_classes: int = 10, width: int = 64) -> nn.Module:
    """A victim network by name (see ``VICTIMS``)."""
    if width < MIN_WIDTH:
        raise ValueError(f"width must be at least {MIN_WIDTH}, got {width} (below 8 channels oneDNN's CPU 1x1 "
                         "convolution backward hangs or crashes on AVX2-only CPUs, torch 2.14)")
    return VICTIMS[arch](num_classes, width)

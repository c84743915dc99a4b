"""Shared fixtures. Tests use the offline CIFAR-10 copy in ../shared/data (never a download); the
repository's conftest.py gives each session a fresh cache (ECLIPSE_CACHE)."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]

from eclipse.data import ImageSet, find_offline_cifar10  # noqa: E402


@pytest.fixture(scope="session")
def cifar_train() -> ImageSet:
    from eclipse.data import load_cifar10

    if find_offline_cifar10() is None:
        pytest.fail("offline CIFAR-10 (../shared/data/cifar10-jpeg.tar.gz) not found; set ECLIPSE_DATA")
    return load_cifar10("train")


@pytest.fixture(scope="session")
def cifar_test() -> ImageSet:
    from eclipse.data import load_cifar10

    return load_cifar10("test")


@pytest.fixture()
def random_set() -> ImageSet:
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (40, 3, 32, 32), dtype=torch.uint8, generator=generator)
    labels = torch.arange(40) % 10
    return ImageSet(images, labels, source="random")

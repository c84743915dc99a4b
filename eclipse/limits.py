"""The bounds every reader of untrusted files works within, in one place.

Datasets and checkpoints come from strangers. A reader may spend time and memory in proportion to the
bytes it was given, and no more: a file cannot claim more images, tensor elements, memo slots or
decompressed bytes than its own size could hold. The constants below are generous for real data
(CIFAR-10 as 60,000 PNGs, the official 500 MB checkpoint) and refuse what only a crafted file needs.
"""
from __future__ import annotations

import os

__all__ = ["MAX_IMAGE_FILE_BYTES", "MAX_CONFIG_BYTES", "MAX_ARCHIVE_MEMBERS", "expansion_budget"]

MAX_IMAGE_FILE_BYTES = 1 << 20
"""One image file (PNG/JPEG/BMP) of a 32x32 dataset: CIFAR-10's are under 4 KB; 1 MiB is far above any."""

MAX_IMAGE_PIXELS = 4096 * 4096
"""Largest image header accepted before the size check names the mismatch (never decoded beyond it)."""

MAX_CONFIG_BYTES = 1 << 20
"""A YAML config: the official ``configs/cifar10.yml`` is under 1 KB."""

MAX_ARCHIVE_MEMBERS = 2_000_000
"""Entries of one tar archive (CIFAR-10 as an ImageFolder has 60,000)."""

EXPANSION_FACTOR = 50
EXPANSION_SLACK = 64 << 20


def expansion_budget(stored_bytes: int) -> int:
    """Bytes a compressed container of ``stored_bytes`` may expand to: 50x its size plus 64 MiB.

    Images compress about 1-5x (PNG, JPEG or raw uint8 in a zip/gzip); a decompression bomb needs 100x
    or more. ``ECLIPSE_MAX_EXPANSION`` (a factor) raises the bound for an unusual but trusted file.
    """
    factor = float(os.environ.get("ECLIPSE_MAX_EXPANSION", EXPANSION_FACTOR))
    return int(stored_bytes * factor) + EXPANSION_SLACK

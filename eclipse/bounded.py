"""Readers of untrusted bytes that check size and type before reading, one per container format.

- :func:`read_regular_file`: a file in a folder, only if it is a regular file (a FIFO, ``/dev/zero`` or a
  link to one is refused before a byte is read) and no larger than allowed;
- :func:`tar_image_members`: image members of a tar archive, each bounded, the archive's total declared
  size bounded by :func:`eclipse.limits.expansion_budget` of its stored size (a 176-byte archive cannot
  hold a 20 GB member, a 6.5 MB gzip cannot inflate to 1.5 GB);
- :func:`decode_image`: the image header is read and its size checked before any pixel is decoded;
- :func:`check_npy_header`: the shape a ``.npy`` header claims must fit the bytes behind it.

Every refusal is a :class:`eclipse.errors.DataError` naming the file (and the member).
"""
from __future__ import annotations

import io
import os
import stat
import tarfile
from pathlib import Path
from typing import IO, Iterator

import numpy as np

from .errors import DataError
from .limits import MAX_ARCHIVE_MEMBERS, MAX_IMAGE_FILE_BYTES, MAX_IMAGE_PIXELS, expansion_budget

__all__ = ["read_regular_file", "tar_image_members", "decode_image", "check_npy_header", "IMAGE_FORMATS"]

IMAGE_FORMATS = frozenset({"PNG", "JPEG", "BMP"})
_KINDS = {stat.S_IFIFO: "a FIFO", stat.S_IFCHR: "a character device", stat.S_IFBLK: "a block device",
          stat.S_IFSOCK: "a socket", stat.S_IFDIR: "a folder"}


def read_regular_file(path: str | os.PathLike, max_bytes: int = MAX_IMAGE_FILE_BYTES,
                      what: str = "an image file") -> bytes:
    """The bytes of ``path`` if it is a regular file of at most ``max_bytes`` (links are followed, then
    the target is checked); otherwise :class:`DataError`. Never blocks on a FIFO."""
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0)
    try:
        fd = os.open(path, flags)
    except OSError as err:
        raise DataError(f"{path}: cannot open ({err.strerror or err})") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            kind = _KINDS.get(stat.S_IFMT(info.st_mode), "not a regular file")
            raise DataError(f"{path}: is {kind}, not a regular file; refusing to read it")
        if info.st_size > max_bytes:
            raise DataError(f"{path}: {info.st_size:,} bytes, more than the {max_bytes:,} {what} may have")
        with os.fdopen(os.dup(fd), "rb") as handle:
            payload = handle.read(max_bytes + 1)
    finally:
        os.close(fd)
    if len(payload) > max_bytes:
        raise DataError(f"{path}: grew past {max_bytes:,} bytes while being read")
    return payload


def tar_image_members(path: Path, extensions: tuple[str, ...],
                      max_member_bytes: int = MAX_IMAGE_FILE_BYTES) -> Iterator[tuple[str, bytes]]:
    """``(member name, bytes)`` of every member of the archive whose name ends in ``extensions``.

    Regular members, hard links and symbolic links to other members are read (at most
    ``max_member_bytes`` each); devices and FIFOs with an image name are refused. The sum of all members'
    declared sizes (skipped ones too: passing them costs decompression) may not exceed the archive's
    expansion budget, and the archive may not hold more than ``MAX_ARCHIVE_MEMBERS`` entries.
    """
    stored = path.stat().st_size
    budget = expansion_budget(stored)
    declared = 0
    count = 0
    try:
        with tarfile.open(path, "r:*") as tar:
            for member in tar:
                count += 1
                declared += tarfile.BLOCKSIZE + max(member.size, 0)
                where = f"{path}:{member.name}"
                if count > MAX_ARCHIVE_MEMBERS:
                    raise DataError(f"{path}: more than {MAX_ARCHIVE_MEMBERS:,} archive entries")
                if declared > budget:
                    raise DataError(f"{path}: its members declare {declared:,} bytes, more than a {stored:,}-byte "
                                    f"archive may expand to ({budget:,}; a decompression bomb?)")
                if not member.name.lower().endswith(extensions) or member.isdir():
                    continue
                if not (member.isfile() or member.islnk() or member.issym()):
                    raise DataError(f"{where}: is a device or FIFO entry, not an image file")
                if member.isfile() and member.size > max_member_bytes:
                    raise DataError(f"{where}: {member.size:,} bytes, more than the {max_member_bytes:,} an image "
                                    "file may have")
                try:
                    handle = tar.extractfile(member)
                except KeyError:
                    raise DataError(f"{where}: link to {member.linkname!r}, which the archive does not hold") from None
                if handle is None:
                    raise DataError(f"{where}: not a readable file entry")
                payload = handle.read(max_member_bytes + 1)
                if len(payload) > max_member_bytes:
                    raise DataError(f"{where}: more than the {max_member_bytes:,} bytes an image file may have")
                yield member.name, payload
    except DataError:
        raise
    except (tarfile.TarError, EOFError, OSError, ValueError, OverflowError) as err:
        raise DataError(f"{path}: not a readable tar archive ({type(err).__name__}: {err})") from None


def decode_image(payload: bytes, where: str, size: tuple[int, int] = (32, 32)) -> np.ndarray:
    """``(H, W, 3)`` uint8 RGB of a PNG/JPEG/BMP file whose header says ``size`` (width, height); the
    header is checked before decoding, so a 13000x13000 image in 393 bytes costs nothing."""
    import warnings

    from PIL import Image

    try:
        with warnings.catch_warnings():  # the size is checked below, before any decoding
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(payload), formats=sorted(IMAGE_FORMATS))
        with img:
            if img.width * img.height > MAX_IMAGE_PIXELS or img.size != size:
                raise DataError(f"{where}: image must be {size[0]}x{size[1]}, the file says {img.width}x{img.height}")
            arr = np.asarray(img.convert("RGB"))
    except DataError:
        raise
    except Exception as err:  # noqa: BLE001 - PIL raises many kinds on a corrupt file
        raise DataError(f"{where}: cannot decode image ({type(err).__name__}: {err})") from None
    if arr.shape != (size[1], size[0], 3):
        raise DataError(f"{where}: image decodes to shape {arr.shape}, expected {(size[1], size[0], 3)}")
    return arr


def check_npy_header(handle: IO[bytes], total: int, where: str) -> tuple[tuple[int, ...], np.dtype]:
    """Read a ``.npy`` header from ``handle`` (a stream of ``total`` bytes, header included) and check that
    the array it claims fits in the bytes behind the header; returns ``(shape, dtype)``. Object dtypes are
    refused."""
    from numpy.lib import format as npy

    try:
        version = npy.read_magic(handle)
        reader = npy.read_array_header_1_0 if version == (1, 0) else npy.read_array_header_2_0
        shape, _, dtype = reader(handle)
    except Exception as err:  # noqa: BLE001
        raise DataError(f"{where}: not a valid .npy array ({type(err).__name__}: {err})") from None
    if dtype.hasobject:
        raise DataError(f"{where}: object arrays are refused (they would need pickle)")
    available = total - handle.tell()
    claimed = int(np.prod(shape, dtype=object)) * dtype.itemsize
    if claimed > available:
        raise DataError(f"{where}: header claims shape {shape} of {dtype} ({claimed:,} bytes), but only "
                        f"{available:,} bytes follow")
    return tuple(shape), dtype

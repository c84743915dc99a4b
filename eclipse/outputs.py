"""The output guard: an output path is checked before any work starts, and never replaces an input.

A bad ``--out`` (an unknown extension, an existing folder, a place that cannot be written, the input file
itself) is reported at once, not after an hour of purification; writing happens through
:func:`eclipse.storage.atomic_write_bytes`, so an interrupted command leaves the old file or none.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Iterable

from .errors import DataError

__all__ = ["check_output", "DATASET_SUFFIXES"]

DATASET_SUFFIXES = (".pkl", ".pickle", ".npz", "")
"""What a dataset output may be: the ECLIPSE pickle, ``.npz``, or a new PNG ImageFolder (no suffix)."""


def _same_or_inside(out: Path, other: Path) -> bool:
    """Whether writing ``out`` would touch ``other``: the same file (links included), or inside that folder."""
    try:
        if out.exists() and other.exists() and os.path.samefile(out, other):
            return True
    except OSError:
        pass
    out_r, other_r = out.resolve(), other.resolve()
    return out_r == other_r or (other.is_dir() and other_r in out_r.parents)


def check_output(path: str | os.PathLike, inputs: Iterable[str | os.PathLike | None] = (), *,
                 suffixes: tuple[str, ...] = DATASET_SUFFIXES, flag: str = "--out") -> Path:
    """Check that ``path`` can be written as one of ``suffixes`` without harming ``inputs``; return it.

    Raises :class:`DataError` naming the path and the problem. Nothing is created except, if needed, the
    missing parent folders (where the write would put them anyway).
    """
    out = Path(path).expanduser()
    suffix = out.suffix.lower()
    if suffix not in suffixes:
        kinds = ", ".join(s for s in suffixes if s) + (" or a folder (a path without a suffix)" if "" in suffixes else "")
        raise DataError(f"{out}: {flag} must be {kinds}; {suffix or 'no suffix'} is not one of them")
    if suffix and out.is_dir():
        raise DataError(f"{out}: {flag} is an existing folder; name a file ending in {suffix}")
    if not suffix and out.exists():
        raise DataError(f"{out}: {flag} already exists; an ImageFolder output goes to a new folder "
                        "(nothing is overwritten)")
    for source in inputs:
        if source is not None and _same_or_inside(out, Path(source).expanduser()):
            raise DataError(f"{out}: {flag} is the input {source} (or inside it); writing there would destroy "
                            "the input, choose another path")
    parent = out.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=parent, prefix=f".{out.name}.probe.")
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise DataError(f"{out}: cannot write in {parent} ({err.strerror or err})") from None
    return out

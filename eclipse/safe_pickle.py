"""A bounded, restricted unpickler for the two pickle formats datasets ship in.

The ECLIPSE release pickle (a list of ``(3072 RGB bytes, label)`` tuples) and torchvision's
``cifar-10-batches-py`` files (dicts holding a numpy array) are read with :func:`restricted_load`:

1. the whole opcode stream is first walked with :func:`pickletools.genops` (time and memory linear in
   the file's size): opcodes that build arbitrary objects (``INST``, ``OBJ``, ``NEWOBJ``, ``EXT*``,
   persistent ids, and ``BUILD`` outside numpy files) are refused, and memo indices may not run ahead
   of the memo actually written (a 9-byte ``LONG_BINPUT 2**26`` would otherwise allocate 1.6 GB);
2. only then does the C unpickler run, with ``find_class`` admitting a short list of globals, each
   replaced by a guarded version: ``_codecs.encode`` only for latin-1 (what protocol-2 bytes need;
   ``punycode`` is quadratic) and ``numpy.dtype`` never for object dtypes.

Callers bound what the result may claim (entries times 3072 bytes may not exceed the file); see
:mod:`eclipse.data`. Nothing here ever imports or calls code named by the file.
"""
from __future__ import annotations

import codecs
import io
import os
import pickle
import pickletools
from pathlib import Path

from .errors import DataError

__all__ = ["restricted_load", "RELEASE_GLOBALS", "NUMPY_GLOBALS"]

_OBJECT_OPCODES = frozenset({"INST", "OBJ", "NEWOBJ", "NEWOBJ_EX", "EXT1", "EXT2", "EXT4", "PERSID",
                             "BINPERSID", "BUILD"})
_PUT = frozenset({"PUT", "BINPUT", "LONG_BINPUT"})
_GET = frozenset({"GET", "BINGET", "LONG_BINGET"})


def _latin1_encode(text, encoding="utf-8", errors="strict"):
    """``_codecs.encode`` as protocol-2 pickles of bytes call it: ``encode(str, 'latin1')`` only."""
    name = codecs.lookup(str(encoding)).name if isinstance(encoding, str) else None
    if name != "iso8859-1" or not isinstance(text, str) or errors != "strict":
        raise DataError(f"_codecs.encode is admitted only as encode(str, 'latin1'), got encoding {encoding!r}")
    return codecs.encode(text, "latin-1")


def _numpy_globals() -> dict[tuple[str, str], object]:
    import numpy as np

    def dtype(*args, **kwargs):
        result = np.dtype(*args, **kwargs)
        if result.hasobject:
            raise DataError(f"refusing numpy object dtype {result} (only plain numeric arrays are read)")
        return result

    reconstruct = np.ndarray.__reduce__(np.zeros(0))[0]  # numpy's own _reconstruct, wherever it lives
    scalar = np.float64(0).__reduce__()[0]
    return {**{(m, "_reconstruct"): reconstruct for m in ("numpy.core.multiarray", "numpy._core.multiarray")},
            **{(m, "scalar"): scalar for m in ("numpy.core.multiarray", "numpy._core.multiarray")},
            ("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): dtype}


RELEASE_GLOBALS = frozenset({("_codecs", "encode")})
"""Globals the ECLIPSE release pickle may name."""
NUMPY_GLOBALS = frozenset({("_codecs", "encode"), ("numpy", "ndarray"), ("numpy", "dtype"),
                           ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
                           ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar")})
"""Globals a ``cifar-10-batches-py`` batch may name (numpy arrays of plain dtypes)."""


def scan(payload: bytes, source: str, *, allow_build: bool) -> int:
    """Walk the opcodes of ``payload``; raise :class:`DataError` on an opcode that builds objects or a memo
    index the file has not earned. Returns the number of opcodes."""
    memo_size = 0
    count = 0
    try:
        for opcode, arg, pos in pickletools.genops(io.BytesIO(payload)):
            count += 1
            name = opcode.name
            if name in _OBJECT_OPCODES and not (allow_build and name == "BUILD"):
                raise DataError(f"{source}: refusing pickle opcode {name} at byte {pos} (it builds arbitrary objects)")
            if name in _PUT:
                if not isinstance(arg, int) or arg < 0 or arg > memo_size:
                    raise DataError(f"{source}: pickle memo index {arg} at byte {pos} runs ahead of the "
                                    f"{memo_size} entries written (a crafted file)")
                memo_size = max(memo_size, arg + 1)
            elif name == "MEMOIZE":
                memo_size += 1
            elif name in _GET and (not isinstance(arg, int) or not 0 <= arg < memo_size):
                raise DataError(f"{source}: pickle reads memo entry {arg} at byte {pos}, never written")
    except DataError:
        raise
    except Exception as err:  # noqa: BLE001 - pickletools raises ValueError/UnicodeError/... on bad streams
        raise DataError(f"{source}: not a valid pickle ({type(err).__name__}: {err})") from None
    return count


def starts_with_numpy(path: str | os.PathLike, opcodes: int = 8) -> bool:
    """Whether the first ``opcodes`` opcodes of the pickle at ``path`` name a numpy global (a pickled array,
    e.g. REM's noise) rather than plain containers (the release list). Reads at most 512 bytes."""
    with open(path, "rb") as handle:
        head = handle.read(512)
    try:
        for i, (opcode, arg, _) in enumerate(pickletools.genops(io.BytesIO(head))):
            if i >= opcodes:
                break
            if isinstance(arg, str) and arg.split(".")[0].split(" ")[0] == "numpy":
                return True
    except Exception:  # noqa: BLE001 - a truncated or malformed head: not a numpy pickle
        return False
    return False


class _Restricted(pickle.Unpickler):
    def __init__(self, handle, source: str, admitted: dict[tuple[str, str], object]):
        super().__init__(handle, encoding="bytes")
        self._source = source
        self._admitted = admitted

    def find_class(self, module: str, name: str):
        try:
            return self._admitted[(module, name)]
        except KeyError:
            raise DataError(f"{self._source}: refusing to unpickle {module}.{name} "
                            "(only plain lists, tuples, dicts, bytes, ints and numpy arrays are read)") from None

    def persistent_load(self, pid):
        raise DataError(f"{self._source}: refusing a pickle persistent id")


def restricted_load(path: str | os.PathLike, allowed: frozenset[tuple[str, str]] = RELEASE_GLOBALS):
    """Unpickle ``path`` within the bounds above, admitting only the globals in ``allowed``.

    Any failure is a :class:`DataError` naming the file; no code named by the file is ever run.
    """
    path = Path(path)
    source = str(path)
    try:
        payload = path.read_bytes()
    except OSError as err:
        raise DataError(f"{source}: cannot read ({err.strerror or err})") from None
    numpy_file = bool(allowed - RELEASE_GLOBALS)
    scan(payload, source, allow_build=numpy_file)
    admitted: dict[tuple[str, str], object] = {("_codecs", "encode"): _latin1_encode}
    if numpy_file:
        admitted.update(_numpy_globals())
    admitted = {key: value for key, value in admitted.items() if key in allowed}
    try:
        return _Restricted(io.BytesIO(payload), source, admitted).load()
    except DataError as err:
        if str(err).startswith(source):
            raise
        raise DataError(f"{source}: {err}") from None
    except (MemoryError, RecursionError) as err:
        raise DataError(f"{source}: pickle needs more memory than its size allows ({type(err).__name__})") from None
    except Exception as err:  # noqa: BLE001 - every malformed stream is a data error, named
        raise DataError(f"{source}: not a valid pickle ({type(err).__name__}: {err})") from None

"""ECLIPSE: expunging clean-label indiscriminate poisons via sparse diffusion purification (ESORICS 2024).

Stages, one module each: ``data`` (load/validate/save), ``attacks`` (poisons), ``diffusion`` + ``purify``
(the purifier), ``defenses`` (training-time transforms incl. corruption compensation), ``victims`` +
``training`` (evaluation), ``frequency`` (analysis), ``profiles`` and ``experiments`` (cached runs).
"""
__version__ = "0.1.0"

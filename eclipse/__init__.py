"""ECLIPSE: expunging clean-label indiscriminate poisons via sparse diffusion purification (ESORICS 2024).

Stages, one module each: ``data`` (load/validate/save) and ``validation``, ``attacks`` (poisons, a registry),
``diffusion`` (UNet, schedule, Gaussian math, samplers registry, checkpoints, training) and ``purify`` (module
A), ``defenses`` (training-time defenses incl. corruption compensation, a registry), ``victims`` +
``training`` (evaluation), ``method`` (ECLIPSE itself: its modules, settings and pipeline), ``frequency``
(analysis), ``profiles`` (every scale and its grids), ``artifacts`` + ``experiments`` (cached runs),
``sweeps`` (grids of runs), ``viz``, ``paper`` (the paper's numbers) and ``cli``.
"""
__version__ = "0.2.0"

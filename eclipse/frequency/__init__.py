"""Frequency analysis of poison perturbations (``spectra``), noise assimilation (Fig. 2a, ``assimilation``),
numerical checks of Theorem 1 (``theorem1``) and residual perturbations (``residuals``).

Conventions: images are ``torch.uint8`` ``(N, 3, H, W)`` (CIFAR-10: 32x32); perturbations ``delta`` are
float ``(N, C, H, W)`` on the [0, 1] scale (``delta = poisoned / 255 - clean / 255``). Display helpers
(``amplify_for_display``) live in ``eclipse.viz``.
"""
from eclipse.frequency.assimilation import assimilation_round, noise_assimilation, noised_perturbations
from eclipse.frequency.inputs import as_unit
from eclipse.frequency.residuals import pass_through, residual, residual_energy_table
from eclipse.frequency.spectra import (
    DEFAULT_CUTOFF_FRACTION,
    LOW_FREQUENCY_THRESHOLD,
    default_cutoff,
    frequency_radius,
    frequency_summary,
    low_frequency_ratio,
    low_pass,
    nyquist_radius,
    power_spectrum,
    radial_power_spectrum,
)
from eclipse.frequency.theorem1 import (
    gaussian_kl_divergence_check,
    paired_gaussian_kl,
    poison_subspace,
    sample_divergence,
)

__all__ = [
    "pass_through",
    "DEFAULT_CUTOFF_FRACTION",
    "LOW_FREQUENCY_THRESHOLD",
    "as_unit",
    "frequency_radius",
    "nyquist_radius",
    "default_cutoff",
    "power_spectrum",
    "radial_power_spectrum",
    "low_pass",
    "low_frequency_ratio",
    "frequency_summary",
    "noised_perturbations",
    "noise_assimilation",
    "assimilation_round",
    "paired_gaussian_kl",
    "gaussian_kl_divergence_check",
    "poison_subspace",
    "sample_divergence",
    "residual",
    "residual_energy_table",
]

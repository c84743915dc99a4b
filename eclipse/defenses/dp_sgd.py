"""DP-SGD (Abadi et al. 2016) as a defense against availability poisons, with Opacus. Registers ``"dp-sgd"``.

No public code runs DP-SGD against unlearnable examples; the settings are the common ones (ECLIPSE's Table 1
row, APBench): per-sample gradients clipped to ``dp_max_grad_norm`` = 1 and Gaussian noise of
``dp_noise_multiplier`` = 1 times that norm added to their sum, on a ResNet whose batch norms are replaced by
group norms (batch norm mixes samples, which per-sample clipping cannot bound; Opacus's
``ModuleValidator.fix``). Opacus computes the per-sample gradients (``GradSampleModule``) and clips and noises
them (``DPOptimizer``); the noise comes from torch's global generator, which the training loop seeds and
checkpoints, so a run is deterministic and resumes exactly.

The privacy spent is reported as ``dp_epsilon`` at ``dp_delta`` = 1e-5 by Opacus's RDP accountant for the
steps taken at sampling rate batch / N. The batches here are a shuffled partition of the set each epoch (as
Opacus's own ``poisson_sampling=False``), not the Poisson sampling the accountant assumes: the epsilon is the
customary approximation, not a guarantee.
"""
from __future__ import annotations

import warnings

import torch

from . import DEFENSES, Defense, DefenseParams


def dp_model(model: torch.nn.Module) -> torch.nn.Module:
    """``model`` with its batch norms replaced by group norms (Opacus's fix), checked to be DP-compatible."""
    from opacus.validators import ModuleValidator

    model = ModuleValidator.fix(model)
    errors = ModuleValidator.validate(model, strict=False)
    if errors:
        raise ValueError(f"DP-SGD cannot train this network: {errors}")
    return model


def dp_wrap(noise_multiplier: float, max_grad_norm: float):
    """Opacus's per-sample-gradient module and DP optimizer around ``(model, optimizer)``."""
    def wrap(model: torch.nn.Module, optimizer: torch.optim.Optimizer, batch_size: int, n_train: int):
        from opacus import GradSampleModule
        from opacus.optimizers import DPOptimizer

        # Opacus's per-sample hooks fire on the first layer, whose input needs no gradient: expected, not a fault
        warnings.filterwarnings("ignore", message="Full backward hook is firing when gradients are computed")

        return GradSampleModule(model), DPOptimizer(optimizer, noise_multiplier=noise_multiplier,
                                                    max_grad_norm=max_grad_norm, expected_batch_size=batch_size)
    return wrap


def per_sample_gradients(net: torch.nn.Module, x: torch.Tensor, y: torch.Tensor,
                         precision: str = "fp32") -> torch.Tensor:
    """Each sample's gradient of its own cross-entropy on ``(x, y)``, all parameters flattened into one row
    (``[len(x), n_params]``), as Opacus's ``GradSampleModule`` computes them for DP-SGD's clipping; their norms
    against ``dp_max_grad_norm`` say how much the clipping shrinks the step. ``net`` is left without gradients."""
    from opacus import GradSampleModule

    from ..training import _autocast

    warnings.filterwarnings("ignore", message="Full backward hook is firing when gradients are computed")
    model = GradSampleModule(net)
    try:
        with _autocast(precision, x.device):
            loss = torch.nn.functional.cross_entropy(model(x).float(), y)
        loss.backward()
        return torch.cat([p.grad_sample.flatten(1).float() for p in net.parameters() if p.requires_grad], dim=1)
    finally:
        model._close()
        for p in net.parameters():
            p.grad_sample = None
            p.grad = None


def dp_epsilon(noise_multiplier: float, sample_rate: float, steps: int, delta: float) -> float:
    """Epsilon spent by ``steps`` DP-SGD steps at ``sample_rate`` (Opacus's RDP accountant)."""
    from opacus.accountants import RDPAccountant

    accountant = RDPAccountant()
    accountant.history = [(noise_multiplier, sample_rate, steps)]
    return float(accountant.get_epsilon(delta))


@DEFENSES.register("dp-sgd", description="DP-SGD (Abadi et al. 2016) with Opacus: per-sample clipping 1, noise "
                                         "multiplier 1, group-norm network; reports epsilon at delta 1e-5")
def _dp_sgd(p: DefenseParams) -> Defense:
    def summary(steps: int, batch_size: int, n_train: int) -> dict:
        return {"dp_epsilon": dp_epsilon(p.dp_noise_multiplier, batch_size / n_train, steps, p.dp_delta),
                "dp_delta": p.dp_delta}
    return Defense("dp-sgd", adapt_model=dp_model, wrap_training=dp_wrap(p.dp_noise_multiplier, p.dp_max_grad_norm),
                   summary=summary, params=(("noise_multiplier", p.dp_noise_multiplier),
                                            ("max_grad_norm", p.dp_max_grad_norm), ("delta", p.dp_delta)))

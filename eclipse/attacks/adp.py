"""ADP: ECLIPSE's adaptive poison (the paper, §4.4). Registers ``"adp"``.

An attacker who knows the defense crafts error-minimising noise *through the corruption compensation*:
``argmin_delta E_C min_theta L(U(C(x + delta); theta), y)`` with ``U`` the diffusion UNet turned classifier
(:mod:`eclipse.diffusion.classifier`) and ``C`` the compensation (grayscale with probability ``gray_p``,
Gaussian noise ``sigma``), the expectation taken over ``eot`` random draws of ``C`` per noise step. The
purifier itself is not in the objective (the paper's attacker knows the architecture, not the purifier's
gradients). Nothing beyond the paper is public; the loop is EM's (:func:`eclipse.attacks.em.min_min`).

A stronger variant (not in the paper) puts a purifier in the objective too: with ``purifier`` (a diffusion
checkpoint the attacker holds: ours, or an official improved-diffusion one with its ``purifier_config`` YAML)
each draw is ``C(P(x + delta))``, ``P`` the differentiable purification from ``t_star`` with ``sampler`` (one
shot, or a few respaced/DDIM steps: every step is back-propagated), its forward noise drawn afresh per draw.

Choices the paper leaves open, made here: L-inf 8/255 (the paper gives no radius), EM's sample-wise schedule
(20 steps of 0.8/255, 10 training batches of 512 a round, stop at 1% error), ``eot`` = 5, and the Gaussian
noise without 8-bit re-quantisation inside the objective (rounding has no gradient; the defense applies it).
"""
from __future__ import annotations

from dataclasses import replace

import torch
from torchvision.transforms.v2 import functional as TF

from eclipse.attacks.craft import finish, identity_of, surrogate_config
from eclipse.attacks.em import MinMin, min_min
from eclipse.attacks.registry import AttackSpec, register
from eclipse.diffusion import classifier  # noqa: F401  (registers the "unet" victim, ADP's surrogate)
from eclipse.training import TrainConfig

ADP_LINF_BUDGET = 8 / 255
ADP_SURROGATE = TrainConfig(arch="unet", width=64, batch_size=512, lr=0.1, momentum=0.9, weight_decay=5e-4,
                            max_grad_norm=5.0)


def soft_compensation(gray_p: float, sigma: float):
    """ECLIPSE's compensation, differentiable: each image grayscale with probability ``gray_p``, then
    ``N(0, sigma^2)`` noise, clipped to [0, 1] (no re-quantisation)."""
    def transform(x: torch.Tensor) -> torch.Tensor:
        chosen = (torch.rand(x.shape[0]) < gray_p).view(-1, 1, 1, 1).to(x.device)
        x = torch.where(chosen, TF.rgb_to_grayscale(x, num_output_channels=3), x)
        return (x + sigma * torch.randn_like(x)).clamp(0, 1) if sigma > 0 else x
    return transform


def differentiable_purifier(checkpoint: str, config: str | None = None, *, t_star: int = 100,
                            sampler: str = "one_shot", steps: int | None = None):
    """``x -> P(x)`` on [0, 1] images, differentiable in ``x``: forward noise to ``t_star`` (a fresh draw from
    the global RNG each call), then ``sampler`` back to 0 with gradients on. The network's own weights are
    frozen. ``checkpoint``/``config``: as :func:`eclipse.diffusion.checkpoints.load_model_and_schedule`."""
    from eclipse.diffusion.checkpoints import load_model_and_schedule
    from eclipse.diffusion.gaussian import forward_noise
    from eclipse.diffusion.samplers import SAMPLERS, SamplerOptions
    from eclipse.seeding import default_device

    spec = SAMPLERS[sampler]
    if spec.purifier != "diffusion":
        raise ValueError(f"ADP's purifier runs the checkpoint it is given: sampler {sampler!r} needs "
                         f"{spec.purifier}-fine-tuned weights, which a checkpoint file does not say it holds; use "
                         "one_shot (on the fine-tuned weights) instead")
    device = default_device()
    model, schedule = load_model_and_schedule(checkpoint, config, device=device)
    model.requires_grad_(False)
    options = SamplerOptions(steps=steps, grad=True)

    def transform(x: torch.Tensor) -> torch.Tensor:
        x0 = x.to(device) * 2 - 1
        x_t = forward_noise(schedule, x0, t_star, None)
        out = spec.fn(model, schedule, x_t, t_star - 1, None, replace(options, x0=x0))
        return ((out + 1) / 2).clamp(0, 1)
    return transform


def adp(images: torch.Tensor, labels: torch.Tensor, *, seed: int, num_classes: int,
        epsilon: float = ADP_LINF_BUDGET, step_size: float = 0.8 / 255, steps: int = 20, train_steps: int = 10,
        stop_error: float = 0.01, max_rounds: int = 100, eot: int = 5, gray_p: float = 0.4, sigma: float = 0.05,
        surrogate: dict | None = None, purifier: str | None = None, purifier_config: str | None = None,
        t_star: int = 100, sampler: str = "one_shot", sampler_steps: int | None = None, state_dir=None,
        progress: bool = True) -> torch.Tensor:
    """ADP, error-minimising noise through ECLIPSE's compensation on a UNet classifier. Budget: L-inf 8/255.

    ``gray_p`` and ``sigma`` are the compensation the attacker expects (the paper's defaults 0.4, 0.05);
    ``surrogate``: TrainConfig fields over the UNet classifier (``width`` 64 = 128 channels). ``purifier``: a
    diffusion checkpoint for the stronger variant, through purification (``t_star``, ``sampler``,
    ``sampler_steps``) and then the compensation; its content is part of the generation's identity."""
    params = dict(epsilon=epsilon, step_size=step_size, steps=steps, train_steps=train_steps, stop_error=stop_error,
                  max_rounds=max_rounds, eot=eot, gray_p=gray_p, sigma=sigma, surrogate=surrogate)
    compensation = soft_compensation(gray_p, sigma)
    transform = compensation
    if purifier is not None:
        from eclipse.data import content_key

        purify = differentiable_purifier(purifier, purifier_config, t_star=t_star, sampler=sampler,
                                         steps=sampler_steps)
        params.update(purifier=content_key(purifier), purifier_config=None if purifier_config is None
                      else content_key(purifier_config), t_star=t_star, sampler=sampler, sampler_steps=sampler_steps)

        def transform(x: torch.Tensor) -> torch.Tensor:
            return compensation(purify(x))
    settings = MinMin(epsilon=epsilon, step_size=step_size, steps=steps, train_steps=train_steps,
                      stop_error=stop_error, max_rounds=max_rounds, per="sample", eot=eot)
    delta = min_min(images, labels, num_classes=num_classes, seed=seed, settings=settings,
                    surrogate=surrogate_config(ADP_SURROGATE, surrogate),
                    identity=identity_of("adp", images, labels, seed, params), state_dir=state_dir,
                    transform=transform, name="adp", progress=progress)
    return finish(images, delta, epsilon)


register(AttackSpec("adp", adp, "model-based", "linf", ADP_LINF_BUDGET,
                    "ECLIPSE's adaptive attack: error-minimising noise through the corruption compensation, "
                    "on the diffusion UNet as a classifier", resumable=True,
                    file_params=("purifier", "purifier_config")))

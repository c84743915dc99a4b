"""REM: robust error-minimising noise (Fu et al., ICLR'22). Registers ``"rem"``.

EM made to survive adversarial training: the noise minimises the loss of the surrogate on *adversarial*
examples of the perturbed images (radius ``adv_epsilon`` = 4/255), in expectation over the augmentation.
Facts from the authors' ``gen_rem.sh`` / ``robust_workers.py`` (fshp971/robust-unlearnable-examples); the
loop is written here. Each of ``train_steps`` = 5,000 steps:

1. draw a batch of 128 (shuffled, cycling); compute its noise afresh: uniform start in the 8/255 ball, then
   ``def_steps`` = 10 signed steps of 1.6/255 that lower the loss; each step sums, over ``eot`` = 5 draws of
   crop + flip, the gradient through the augmentation of the loss at the PGD adversarial example of the
   augmented perturbed batch (10 steps of 0.8/255 in the 4/255 ball; Danskin: the adversarial point is held
   fixed); store the noise rounded to 8 bits;
2. train the surrogate (SGD 0.1, momentum 0.9, weight decay 5e-4, lr x0.1 every 2,000 steps) one step on
   adversarial examples of the augmented perturbed batch.

After training, every image's noise is computed once more with the final surrogate (the official pass skips
the 80 images its drop-last loader leaves out; here every image is covered). The official code normalises
inputs to [-0.5, 0.5] inside the loader; here the surrogate sees [0, 1] (its first batch norm absorbs it).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from eclipse.attacks.craft import Checkpoint, augment, finish, identity_of, start, surrogate_config, to_unit
from eclipse.attacks.quantise import chunks
from eclipse.attacks.registry import AttackSpec, register
from eclipse.defenses import pgd_examples
from eclipse.training import TrainConfig, sgd_step
from eclipse.victims import build_victim

REM_LINF_BUDGET = 8 / 255
REM_SURROGATE = TrainConfig(arch="resnet18", width=64, batch_size=128, lr=0.1, momentum=0.9, weight_decay=5e-4)


def _defensive_noise(model, clean: torch.Tensor, labels: torch.Tensor, *, epsilon: float, steps: int,
                     step_size: float, adv_epsilon: float, adv_steps: int, adv_step_size: float, eot: int,
                     device) -> torch.Tensor:
    """The min-min-max noise of one batch (float, [0, 1] scale), quantised to whole 8-bit levels."""
    delta = torch.empty_like(clean).uniform_(-epsilon, epsilon)
    target = labels.to(device)
    for _ in range(steps):
        delta.requires_grad_(True)
        grad = torch.zeros_like(clean)
        for _ in range(eot):
            x_def = augment((clean + delta).clamp(0, 1))
            x_adv = pgd_examples(model, x_def, labels, epsilon=adv_epsilon, steps=adv_steps, step_size=adv_step_size)
            x_adv.requires_grad_(True)
            loss = F.cross_entropy(model(x_adv.contiguous(memory_format=torch.channels_last)), target)
            (g_adv,) = torch.autograd.grad(loss, x_adv)
            grad += torch.autograd.grad((x_def * g_adv.cpu()).sum(), delta)[0]  # Danskin: d loss / d x_def
        delta = (delta.detach() - step_size * grad.sign()).clamp_(-epsilon, epsilon)
    return (delta * 255).round_() / 255


def rem(images: torch.Tensor, labels: torch.Tensor, *, seed: int, num_classes: int,
        epsilon: float = REM_LINF_BUDGET, def_steps: int = 10, def_step_size: float = 1.6 / 255,
        adv_epsilon: float = 4 / 255, adv_steps: int = 10, adv_step_size: float = 0.8 / 255, eot: int = 5,
        train_steps: int = 5000, lr_decay_every: int = 2000, surrogate: dict | None = None, state_dir=None,
        progress: bool = True) -> torch.Tensor:
    """REM, robust error-minimising noise (sample-wise). Budget: L-inf ``epsilon`` = 8/255; the adversarial
    radius ``adv_epsilon`` = 4/255 (the paper's rho_a). ``surrogate``: TrainConfig fields over ResNet-18."""
    params = dict(epsilon=epsilon, def_steps=def_steps, def_step_size=def_step_size, adv_epsilon=adv_epsilon,
                  adv_steps=adv_steps, adv_step_size=adv_step_size, eot=eot, train_steps=train_steps,
                  lr_decay_every=lr_decay_every, surrogate=surrogate)
    config = surrogate_config(REM_SURROGATE, surrogate)
    state_dir, device = start(seed, state_dir)
    checkpoint = Checkpoint(state_dir, identity_of("rem", images, labels, seed, params))
    clean = to_unit(images)
    n = clean.shape[0]
    model = build_victim(config.arch, num_classes, config.width).to(device, memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum,
                                weight_decay=config.weight_decay, nesterov=config.nesterov)
    noise_args = dict(epsilon=epsilon, steps=def_steps, step_size=def_step_size, adv_epsilon=adv_epsilon,
                      adv_steps=adv_steps, adv_step_size=adv_step_size, eot=eot, device=device)
    state = {"step": 0, "order": torch.randperm(n), "cursor": 0, "delta": torch.zeros_like(clean), "final": 0}
    saved = checkpoint.load()
    if saved is not None:
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        state.update({k: saved[k] for k in state})

    def save(force: bool = False) -> None:
        checkpoint.save(force=force, model=model.state_dict(), optimizer=optimizer.state_dict(), **state)

    batch = min(config.batch_size, n)
    for step in tqdm(range(state["step"], train_steps), initial=state["step"], total=train_steps, desc="rem",
                     disable=not progress, leave=False):
        if state["cursor"] + batch > n:  # drop-last, then a fresh permutation
            state["order"], state["cursor"] = torch.randperm(n), 0
        index = state["order"][state["cursor"]: state["cursor"] + batch]
        state["cursor"] += batch
        for group in optimizer.param_groups:
            group["lr"] = config.lr * 0.1 ** (step // lr_decay_every)
        model.eval()
        state["delta"][index] = _defensive_noise(model, clean[index], labels[index], **noise_args)
        x = augment((clean[index] + state["delta"][index]).clamp(0, 1))
        x = pgd_examples(model, x, labels[index], epsilon=adv_epsilon, steps=adv_steps, step_size=adv_step_size)
        model.train()
        sgd_step(model, optimizer, x.cpu(), labels[index], precision=config.precision, device=device)
        state["step"] = step + 1
        save()
    model.eval()
    parts = list(chunks(n, batch))
    for i in tqdm(range(state["final"], len(parts)), initial=state["final"], total=len(parts), desc="rem final pass",
                  disable=not progress, leave=False):
        state["delta"][parts[i]] = _defensive_noise(model, clean[parts[i]], labels[parts[i]], **noise_args)
        state["final"] = i + 1
        save()
    save(force=True)
    return finish(images, state["delta"], epsilon)


register(AttackSpec("rem", rem, "model-based", "linf", REM_LINF_BUDGET,
                    "robust error-minimising noise (Fu et al. 2022): min-min-max against 4/255 adversarial training",
                    resumable=True))

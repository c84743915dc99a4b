"""Named experiment scales as plain data: ``smoke`` (tests, seconds), ``quick`` (2 CPU cores, hours,
a subset with small models) and ``paper`` (the paper's settings, GPU). Every command takes a profile;
the code path is the same for all of them. A profile holds everything that changes between scales,
the notebooks' grids included (``Profile.grids``, read with :meth:`Profile.grid`)."""
from __future__ import annotations

import copy
import os
from dataclasses import dataclass, field, replace

from .registry import Registry
from .training import TrainConfig

GRID_NAMES = ("noise_assimilation", "sparse_diffusion", "gallery", "main_results", "ablation", "hyperparameters",
              "residuals", "purifiers")
"""The notebooks' grids, one per notebook (01 ... 08), each a dict of notebook parameters."""


@dataclass(frozen=True)
class Profile:
    """Everything that changes between scales."""

    name: str
    train_size: int | None          # training images (class-balanced subset; None = all 50,000)
    eval_size: int | None           # evaluation images from the 8,000 held-out test images (None = all)
    victim: TrainConfig
    seed: int = 0
    # ECLIPSE: sparse set, diffusion model, purification
    sparse_size: int = 2000         # B, clean images the defender holds
    replicas: int = 4               # M, the sparse set is repeated M + 1 times
    t_star: int = 100               # purification depth (forward steps of diffusion_steps)
    sampler: str = "ancestral"
    sampler_steps: int | None = None
    diffusion_steps: int = 4000     # T
    unet: dict = field(default_factory=dict)            # UNetConfig fields
    diffusion_train: dict = field(default_factory=dict)  # DiffusionTrainConfig fields
    purify_batch_size: int = 256
    # UNetRuntime fields (eclipse.diffusion.runtime): bf16 autocast, channels_last, torch.compile for purification
    # and diffusion training; empty = fp32 eager, what the official code runs (every profile's default)
    unet_runtime: dict = field(default_factory=dict)
    # ConsistencyConfig fields of the one-step purifier's fine-tuning (sampler "consistency"; not in the paper)
    consistency: dict = field(default_factory=dict)
    gray_p: float = 0.4
    sigma: float = 0.05
    # Per-attack victim TrainConfig overrides, a clearly labelled part of the profile (empty for paper),
    # e.g. {"urp": {"crop_padding": 0}}: tables show the setting next to the attack.
    attack_victim: dict = field(default_factory=dict)
    # Per-attack generation settings over each attack's published recipe (empty for paper): the model-based
    # poisons' cuts of steps, restarts, surrogate width and epochs, labelled here, e.g. {"tap": {"restarts": 1}}.
    attack_params: dict = field(default_factory=dict)
    # Per-defense settings over the published ones (DefenseParams fields; empty for paper), the cheaper
    # variants of costly defenses, labelled here, e.g. {"at": {"at_steps": 3}}; their values key the runs.
    defense_params: dict = field(default_factory=dict)
    # Per-defense victim TrainConfig overrides (empty for paper), labelled like ``attack_victim``: a defense whose
    # training wants another optimiser setting at this scale, e.g. quick's {"dp-sgd": {"lr": 4.0, "momentum": 0.0}}
    # (clipped per-sample gradients are ~30x smaller than the victim's own); the settings key the runs.
    defense_victim: dict = field(default_factory=dict)
    # Training images the model-based poisons are crafted on (None: ``train_size``). A sweep profile keeps its
    # parent's size here, so that its victims train on rows of the main tables' poison (the 5,000 sweep images
    # are a subset of the 10,000) instead of a second, smaller generation. See ``experiments.poisoned_set``.
    craft_train_size: int | None = None
    # Victim training images for the sweep notebooks (02: Fig. 3, Tables 5-6, Fig. 5a; 05: Table 4; 06: Fig. 5b-c,
    # Table 7), which train many victims each; None: ``train_size``. See :func:`sweep_profile`.
    sweep_train_size: int | None = None
    # The notebooks' grids by GRID_NAMES entry: the values a notebook parameter left at None takes.
    grids: dict = field(default_factory=dict)
    description: str = ""

    def grid(self, name: str) -> dict:
        """A copy of the notebook grid ``name`` (see ``GRID_NAMES``)."""
        if name not in GRID_NAMES:
            raise ValueError(f"unknown grid {name!r}; choose from {', '.join(GRID_NAMES)}")
        return copy.deepcopy(self.grids.get(name, {}))

    def victim_overrides(self, attack: str) -> dict:
        """The TrainConfig overrides this profile trains ``attack``'s victim with (usually none)."""
        return dict(self.attack_victim.get(attack, {}))

    def defense_victim_overrides(self, defense: str) -> dict:
        """The TrainConfig overrides this profile trains a victim under ``defense`` with (usually none)."""
        return dict(self.defense_victim.get(defense, {}))

    def attack_settings(self, attack: str) -> dict:
        """The generation settings this profile gives ``attack`` over its recipe (usually none)."""
        return copy.deepcopy(self.attack_params.get(attack, {}))

    def defense_settings(self, defense: str) -> dict:
        """The DefenseParams this profile gives ``defense`` over its published settings (usually none)."""
        return dict(self.defense_params.get(defense, {}))

    def runtime(self):
        """The :class:`~eclipse.diffusion.runtime.UNetRuntime` of ``unet_runtime``."""
        from .diffusion.runtime import UNetRuntime

        return UNetRuntime.from_dict(self.unet_runtime)

    def with_overrides(self, **changes) -> "Profile":
        """A copy with some fields changed (``victim`` accepts a dict of TrainConfig fields)."""
        if isinstance(changes.get("victim"), dict):
            changes["victim"] = replace(self.victim, **changes["victim"])
        return replace(self, **changes)


# The paper's eight poisons (Table 1) and OPS (an L0 poison it also evaluates), for the figures of every poison.
_PAPER_POISONS = ["em", "rem", "tap", "sep", "efp", "urp", "lsp", "ar", "ops"]
# smoke: the model-free four and one model-based poison, so that the tests run the model-based path in each notebook
_SMOKE_POISONS = ["urp", "lsp", "ar", "ops", "sep"]
# quick: the model-free four and the model-based poisons measured to bite at quick scale (figures/README.md)
_QUICK_POISONS = ["urp", "lsp", "ar", "ops", "em", "rem", "tap", "sep"]
# Table 1's rows in the paper's order (lines 473-496): the failing baselines, the image-shrinking and
# augmentation defenses, the purifier, adversarial training, ISS-J and ECLIPSE
_TABLE1_METHODS = ["none", "cutout", "mixup", "cutmix", "dp-sgd", "iss-g", "ueraser", "op", "avatar", "at", "iss-j",
                   "eclipse:A+B+C"]

PAPER = Profile(
    name="paper", train_size=None, eval_size=None,
    victim=TrainConfig(arch="resnet18", width=64, epochs=80, batch_size=128, lr=0.1, schedule="constant"),
    sparse_size=2000, replicas=4, t_star=100, sampler="ancestral", diffusion_steps=4000,
    unet=dict(num_channels=128, num_res_blocks=3, attention_resolutions="16,8", num_heads=4, dropout=0.0),
    diffusion_train=dict(iterations=250_000, batch_size=128, lr=1e-4, ema_rate=0.9999, t_max=None),
    purify_batch_size=256,
    consistency=dict(iterations=10_000, batch_size=128),   # our setting (the paper has no consistency purifier)
    grids=dict(
        noise_assimilation=dict(n_images=5000, attacks=_PAPER_POISONS),
        gallery=dict(attacks=_PAPER_POISONS),
        sparse_diffusion=dict(attacks=["urp", "lsp", "ar"], enlargements=["replicate", "crop", "flip", "rotation", "mixup"],
                              replicas=[0, 2, 4, 6], sparse_sizes=[500, 1000, 1500, 2000],
                              iterations=[50_000, 100_000, 150_000, 200_000, 250_000], variant_iterations=250_000),
        main_results=dict(attacks=["em", "tap", "rem", "sep", "efp", "urp", "lsp", "ar", "adp", "ops"],
                          methods=_TABLE1_METHODS, archs=["resnet18", "resnet50", "vgg16", "vgg19", "densenet121"],
                          table3_methods=["none", "at", "iss-j", "eclipse:A+B+C"], second_arch="vgg19"),
        ablation=dict(attacks=["em", "tap", "rem", "sep", "efp", "urp", "lsp", "ar"]),
        hyperparameters=dict(attacks={"p": ["lsp", "ar", "urp"], "sigma": ["lsp", "ar", "urp"], "t*": ["lsp", "ar", "urp"]},
                             gray_ps=[0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8], sigmas=[0.025, 0.05, 0.075, 0.1],
                             t_stars=[50, 100, 150]),
        residuals=dict(n_images=1000, attacks=_PAPER_POISONS),
        # notebook 08 (issue 18; not in the paper): purifiers as "sampler" or "sampler-steps"
        purifiers=dict(attacks=["urp", "lsp", "ar", "em", "tap", "sep"], modules=["A", "A+B+C"],
                       purifiers=["ancestral", "respaced-10", "ddim-10", "one_shot", "consistency", "chained-3",
                                  "elixir-5", "masked-10"]),
    ),
    description="the paper's settings: 50,000 images, ResNet-18 80 epochs, 128-channel UNet 250k iterations (GPU)",
)

# The quick victim's recipe, used as the surrogate of the model-based poisons under quick.
# fp32: bf16 autocast is emulated (7x slower) on CPUs without AVX512-BF16, and a surrogate need not match the victim.
_QUICK_SURROGATE = dict(width=16, epochs=20, lr=0.1, weight_decay=5e-4, schedule="onecycle", milestones=(),
                        nesterov=False)
_QUICK_MIN_MIN = dict(width=16)

QUICK = Profile(
    name="quick", train_size=10_000, eval_size=None,
    # Calibrated by scripts/sweep_quick.py (figures/quick-calibration-sweep.csv, 2 cores): 20 epochs of a
    # width-16 ResNet18 with crop+flip reach 75.1% clean in ~4.5 min (bf16 autocast: 1.47x over fp32 on
    # AVX512-BF16 CPUs; 10 epochs gave 63.9%, 30 epochs 77.8% in 10 min).
    victim=TrainConfig(arch="resnet18", width=16, epochs=20, batch_size=128, lr=0.1, weight_decay=5e-4,
                       schedule="onecycle", precision="bf16", eval_every=10),
    # URP's class-wise pattern does not survive random crops at CPU scale (crop: no effect, 65.3 vs 63.9% at
    # 10 epochs; no crop: 12.7%), so URP's victim trains without random crop, labelled in every table.
    attack_victim={"urp": {"crop_padding": 0}},
    # Model-based poisons at CPU scale (each cut from its recipe, module docstrings in eclipse/attacks/): the
    # surrogates are the quick victim's recipe (ResNet-18 width 16, 20 one-cycle epochs; fp32) instead of the
    # recipes' full-width 40-120-epoch runs. PROVISIONAL: not yet calibrated by a measured sweep (issue 15).
    attack_params={
        # EM: 50 training batches a round (the recipe: 10) and 5 noise steps of 1.6/255 (20 of 0.8/255). Measured
        # with the shuffled min-min (2 cores, AMX): the stop condition (error < 1%) held after 2 rounds (error 0.122,
        # then 0.0008), 5.5 min; undefended 35.65% (figures/table1-model-based-quick.csv).
        "em": {"train_steps": 50, "steps": 5, "step_size": 1.6 / 255, "max_rounds": 12,
               "surrogate": dict(_QUICK_MIN_MIN)},
        "rem": {"train_steps": 300, "def_steps": 5, "def_step_size": 3.2 / 255, "adv_steps": 3,
                "adv_step_size": 2 / 255, "eot": 1, "surrogate": dict(_QUICK_MIN_MIN)},
        "tap": {"iterations": 50, "restarts": 1, "surrogate": dict(_QUICK_SURROGATE)},
        "sep": {"num_models": 5, "iterations": 10, "step_size": 2 / 255, "surrogate": dict(_QUICK_SURROGATE)},
        "efp": {"iterations": 50, "at_steps": 3, "at_step_size": 2 / 255, "reference": dict(_QUICK_SURROGATE)},
        # ADP: EM's quick cut through the compensation (eot 2 draws per step, quick's gray_p 0.8), at most 6 rounds,
        # on the quick victim's ResNet-18 (width 16) instead of the paper's UNet turned classifier: measured 2026-12-03
        # (2 cores, AMX, fp32, one forward + backward pass, benchmarks/poison_cost.pass_time) the quick purifier's
        # UNet layout as a classifier ("unet-small", 1.19M parameters) costs 9.1x the ResNet's 7.9 ms per image-pass
        # (72.2 ms; both beside a diffusion training), and its first min-min round took 58 min and left the
        # surrogate's error at 0.627 (it would run 4+ rounds, ~4 h); the ResNet's round costs ~5 min.
        "adp": {"train_steps": 50, "steps": 5, "step_size": 1.6 / 255, "max_rounds": 6, "eot": 2, "gray_p": 0.8,
                "surrogate": {"arch": "resnet18", "width": 16}},
    },
    # AT: PGD-3 of 3/255 (the published PGD-10 of 2/255 costs 11 victim trainings, ~35 min a run here; three
    # steps of 3/255 still reach the 8/255 boundary) at ~4x a victim. PROVISIONAL: not yet chosen by a sweep.
    defense_params={"at": {"at_steps": 3, "at_step_size": 3 / 255}},
    # DP-SGD's optimiser: every per-sample gradient of the group-norm victim has norm 27-33 at initialisation (C = 1
    # clips them all, ~30x), so at the victim's lr 0.1 it does not learn (sigma 0: 10.2% after 5 epochs). Chosen by
    # scripts/dp_sgd_diagnosis.py recipes at sigma 0 (5 epochs, clean, figures/dp-sgd-recipes-quick.csv): lr 4
    # without momentum or weight decay 23.2%, lr 3 with momentum 22.0, lr 1 16.2-16.6 (group norm without DP 41.6).
    defense_victim={"dp-sgd": {"lr": 4.0, "momentum": 0.0, "weight_decay": 0.0}},
    # Sampler chosen by benchmarks/sampler_accuracy.py (2 cores, LSP, A+B+C): at t* = 200, p = 0.8
    # (figures/quick-sampler-accuracy.csv) one_shot (the x0 prediction at t*, 1 network call) purified the
    # 10,000 images in 2.0 min and gave 71.0%, respaced-4 7.6 min and 70.2%; at t* = 100, p = 0.4
    # (-t100-p04.csv) one_shot 64.2% vs respaced-8 62.3% (15 min); 100 ancestral steps would take ~3 h here.
    # Diffusion training: 1,200 iterations at batch 64 took 22 min (t <= 200 only, a documented deviation).
    # t* = 200 (the paper: 100), a CPU deviation: the small quick denoiser leaves more of the poison at t* = 100
    # (at p = 0.4, notebook 06 before the p change: URP 56.4 / 60.4 / 61.4, LSP 64.2 / 63.4 / 65.0 at t* = 100 / 150 / 200).
    sparse_size=2000, replicas=4, t_star=200, sampler="one_shot", sampler_steps=None, diffusion_steps=4000,
    unet=dict(num_channels=32, num_res_blocks=1, attention_resolutions="16", num_heads=4, dropout=0.0,
              channel_mult=(1, 2, 2)),
    diffusion_train=dict(iterations=1200, batch_size=64, lr=2e-4, ema_rate=0.999, t_max=200),
    # 100, not 500: on the 2-core CPU the quick UNet evaluates 351 images/s at batch 100, 206 at 250 and 135-153 at
    # 500 (respaced-4 on 1,000 images, 2026-12-05); the batch sets the official noise mode's chunk seeds
    purify_batch_size=100,
    # the one-step consistency purifier (issue 18, not in the paper): 600 fine-tuning steps of batch 64 (856 s measured
    # 2026-12-03 on 2 cores; loss 2.80 -> 2.28, first and last 20 steps)
    consistency=dict(iterations=600, batch_size=64),
    # gray_p = 0.8 (the paper: 0.4), a CPU deviation chosen by the quick Fig. 5b sweep at t* = 200: with the weak
    # quick denoiser the compensation carries more of the load (LSP 65.0 -> 71.0, URP 61.4 -> 62.1 from p 0.4 to 0.8).
    gray_p=0.8,
    # The sweep notebooks (02, 05, 06: ~28 victims) train on 5,000 images (~2 min a victim instead of ~4): at 20
    # epochs clean 61.0%, URP (no crop) 12.9%, LSP 25.4% (figures/quick-calibration-sweep.csv, size 5000).
    sweep_train_size=5_000,
    grids=dict(
        noise_assimilation=dict(n_images=1000, attacks=_QUICK_POISONS),
        gallery=dict(attacks=_QUICK_POISONS),
        # 02 on URP only, its variants at I/4 = 300 iterations (Fig. 5a: 300/600/1200 continue one training)
        sparse_diffusion=dict(attacks=["urp"], enlargements=["replicate", "crop"], replicas=[0, 4],
                              sparse_sizes=[1000, 2000], iterations=[300, 600, 1200], variant_iterations=300),
        # the paper's Table 1 summary columns (AT aside); ISS-G, compensation, cutout, mixup and cutmix:
        # `eclipse table` and the paper profile (3-hour budget)
        main_results=dict(attacks=["urp", "lsp", "ar", "em", "rem", "tap", "sep"], methods=["none", "iss-j", "eclipse:A+B+C"],
                          archs=["resnet18"], table3_methods=["none", "iss-j", "eclipse:A+B+C"]),
        # one poison of each of the paper's frequency families: LSP low, SEP robust high, URP fragile high (AR does
        # not poison the 5,000-image sweep victim)
        ablation=dict(attacks=["urp", "lsp", "sep"]),
        hyperparameters=dict(attacks={"p": ["lsp", "sep"], "sigma": ["lsp", "sep"], "t*": ["urp"]}, gray_ps=[0.1, 0.4, 0.8],
                             sigmas=[0.025, 0.05, 0.1], t_stars=[100, 150, 200]),
        residuals=dict(n_images=200, attacks=_QUICK_POISONS),
        # notebook 08: 100 ancestral steps at t* = 200 would take ~3 h a poison here (README's sampler table).
        # AR does not poison the 5,000-image sweep victim (figures/purifiers-ar-quick.md), so TAP stands for the
        # fragile high-frequency family beside URP; EM and SEP are the model-based poisons A alone fails in the paper
        purifiers=dict(attacks=["urp", "lsp", "em", "tap", "sep"], modules=["A", "A+B+C"],
                       purifiers=["respaced-4", "ddim-4", "one_shot", "consistency", "chained-3", "elixir-3",
                                  "masked-2"]),
    ),
    description="2 CPU cores: 10,000 images, ResNet-18 width 16 for 20 epochs, a 32-channel UNet (about 5-6 h cold, projected by benchmarks/reproduce_cost.py)",
)

SMOKE = Profile(
    name="smoke", train_size=500, eval_size=500,
    victim=TrainConfig(arch="resnet18", width=8, epochs=2, batch_size=100, lr=0.05, schedule="onecycle",
                       eval_every=1),
    attack_params={
        "em": {"steps": 2, "train_steps": 2, "max_rounds": 2, "surrogate": {"width": 8, "batch_size": 100}},
        "rem": {"train_steps": 2, "def_steps": 2, "adv_steps": 1, "eot": 1, "surrogate": {"width": 8}},
        "tap": {"iterations": 2, "restarts": 1, "batch_size": 250, "surrogate": {"width": 8, "epochs": 1}},
        "sep": {"iterations": 2, "num_models": 2, "batch_size": 250, "surrogate": {"width": 8, "epochs": 2}},
        "efp": {"iterations": 2, "batch_size": 250, "at_steps": 1, "reference": {"width": 8, "epochs": 1}},
        "adp": {"steps": 1, "train_steps": 1, "max_rounds": 1, "eot": 1,
                "surrogate": {"arch": "resnet18", "width": 8, "batch_size": 100}},
    },
    sparse_size=50, replicas=1, t_star=10, sampler="ancestral", diffusion_steps=4000,
    unet=dict(num_channels=32, num_res_blocks=1, attention_resolutions="16", num_heads=2, dropout=0.0,
              channel_mult=(1, 1)),
    diffusion_train=dict(iterations=10, batch_size=16, lr=1e-4, ema_rate=0.99, t_max=20),
    purify_batch_size=250,
    consistency=dict(iterations=12, batch_size=16, checkpoint_every=5),
    grids=dict(
        noise_assimilation=dict(n_images=64, attacks=_SMOKE_POISONS),
        gallery=dict(attacks=_SMOKE_POISONS),
        sparse_diffusion=dict(attacks=["lsp"], enlargements=["replicate", "crop"], replicas=[1], sparse_sizes=[50],
                              iterations=[10], variant_iterations=10),
        main_results=dict(attacks=["urp"], methods=["none", "iss-j", "eclipse:A+B+C"], archs=["resnet18"],
                          table3_methods=["none", "iss-j", "eclipse:A+B+C"], second_arch="vgg19"),
        ablation=dict(attacks=["urp"]),
        hyperparameters=dict(attacks={"p": ["lsp"], "sigma": ["lsp"], "t*": ["lsp"]}, gray_ps=[0.2, 0.4],
                             sigmas=[0.05], t_stars=[10]),
        residuals=dict(n_images=20, attacks=_SMOKE_POISONS),
        purifiers=dict(attacks=["urp"], modules=["A+B+C"], purifiers=["one_shot", "consistency", "chained-2", "elixir-2",
                                                                       "masked-2"]),
    ),
    description="tests: 500 images, 2 epochs, a 10-iteration diffusion model (seconds; accuracies near chance)",
)

# About 6 minutes on 2 cores (330 s measured, CIFAR-10 decode aside), one real effect:
#   eclipse table --profile demo --attacks lsp --defenses none compensation
# trains two victims of the quick recipe on 5,000 images: LSP undefended 25.65% vs corruption compensation
# 60.925%, exactly the quick Table 4 cells at 5,000 images (same runs, same cache entries). Its grids are
# quick's: the notebooks under demo cost what they cost under quick.
DEMO = QUICK.with_overrides(
    name="demo", train_size=5_000, sweep_train_size=None,
    description="about 6 min on 2 CPU cores: quick's victim on 5,000 images, for `eclipse table` "
                "(LSP: none vs compensation)")

PROFILES: Registry[Profile] = Registry("profile")
for _profile in (SMOKE, DEMO, QUICK, PAPER):
    PROFILES.register(_profile.name, _profile, description=_profile.description)


def setting_label(overrides: dict) -> str:
    """A short human label for victim overrides (``{"crop_padding": 0}`` -> ``"no crop"``)."""
    parts = ["no crop" if key == "crop_padding" and value == 0 else f"{key}={value}" for key, value in sorted(overrides.items())]
    return ", ".join(parts)


def attack_settings_label(profile: "str | Profile", attack: str) -> str:
    """The profile's cuts of ``attack``'s recipe as one line (``""``: the published recipe), e.g.
    ``"iterations=50, restarts=1, surrogate: width=16, epochs=20"``; tables carry it beside the attack."""
    settings = get_profile(profile).attack_settings(attack)
    flat = [f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in settings.items() if not isinstance(v, dict)]
    nested = [f"{k}: " + ", ".join(f"{kk}={vv}" for kk, vv in v.items()) for k, v in settings.items()
              if isinstance(v, dict) and v]
    return ", ".join(flat + nested)


def defense_settings_label(profile: "str | Profile", defense: str) -> str:
    """The profile's cheaper settings of ``defense`` as one line (``""``: the published ones), e.g.
    ``"at_steps=3, at_step_size=0.0118"``; tables carry it beside the method."""
    profile = get_profile(profile)
    settings = {**profile.defense_settings(defense), **profile.defense_victim_overrides(defense)}
    return ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in settings.items())


def sweep_profile(profile: "str | Profile") -> Profile:
    """The profile the sweep notebooks train their victims under: ``train_size`` set to ``sweep_train_size``
    (``quick``: 5,000 of the main tables' 10,000 images, so that each sweep victim costs half a main-table one on 2
    CPU cores); every other setting, the diffusion model included, is the profile's own, and the model-based
    poisons are still crafted on the profile's own training set (``craft_train_size``)."""
    profile = get_profile(profile)
    if profile.sweep_train_size is None or profile.sweep_train_size == profile.train_size:
        return profile
    return profile.with_overrides(train_size=profile.sweep_train_size,
                                  craft_train_size=profile.craft_train_size or profile.train_size)


def victim_label(profile: "str | Profile") -> str:
    """A short description of the victim's scale for titles, e.g. ``"quick: ResNet18-w16, 20 epochs, 5,000 images"``."""
    profile = get_profile(profile)
    images = "50,000" if profile.train_size is None else f"{profile.train_size:,}"
    return f"{profile.name}: {profile.victim.arch}-w{profile.victim.width}, {profile.victim.epochs} epochs, {images} images"


# The UNet's execution switches for every profile looked up by name (how `eclipse reproduce --unet-precision bf16
# --channels-last --compile` reaches the notebooks' kernels, as ECLIPSE_DEVICE carries --device): comma-separated
# words, e.g. "bf16,channels_last,compile" (see eclipse.diffusion.runtime).
RUNTIME_ENV = "ECLIPSE_UNET_RUNTIME"
_RUNTIME_WORDS = {"fp32": ("precision", "fp32"), "bf16": ("precision", "bf16"), "channels_last": ("channels_last", True),
                  "compile": ("compile", True)}


def runtime_env_value(runtime: dict) -> str:
    """``{"precision": "bf16", "compile": True}`` -> ``"bf16,compile"`` (the RUNTIME_ENV spelling)."""
    words = [word for word, (key, value) in _RUNTIME_WORDS.items() if runtime.get(key) == value]
    return ",".join(words)


def _runtime_from_env() -> dict:
    text = os.environ.get(RUNTIME_ENV, "").strip()
    runtime: dict = {}
    for word in filter(None, (w.strip() for w in text.split(","))):
        if word not in _RUNTIME_WORDS:
            raise ValueError(f"{RUNTIME_ENV}={text!r}: unknown switch {word!r}; use {', '.join(_RUNTIME_WORDS)}")
        key, value = _RUNTIME_WORDS[word]
        runtime[key] = value
    return runtime


def get_profile(name: str | Profile) -> Profile:
    """A profile by name (see ``PROFILES``), with the UNet switches of ``ECLIPSE_UNET_RUNTIME`` when set; a Profile
    passes through."""
    if isinstance(name, Profile):
        return name
    profile = PROFILES[name]
    runtime = _runtime_from_env()
    return profile.with_overrides(unet_runtime={**profile.unet_runtime, **runtime}) if runtime else profile

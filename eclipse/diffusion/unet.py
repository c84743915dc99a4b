"""The improved-diffusion UNet (Nichol & Dhariwal 2021), model only.

Written from the architecture description so that the state-dict names and shapes are the
ones of openai/improved-diffusion's ``UNetModel``: checkpoints trained with that code (and
the released ECLIPSE ``ema_0.9999_250000.pt``) load here with ``strict=True``.

The network takes ``(x, t)`` where ``t`` is the float model-input timestep, already rescaled
(``t * 1000 / T`` with ``rescale_timesteps``; see :func:`eclipse.diffusion.gaussian.model_timesteps`).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

# channel multipliers improved-diffusion's ``create_model`` picks from the image size
DEFAULT_CHANNEL_MULT = {256: (1, 1, 2, 2, 4, 4), 64: (1, 2, 3, 4), 32: (1, 2, 2, 2)}


@dataclass
class UNetConfig:
    """UNet settings, named as improved-diffusion's command-line arguments."""

    image_size: int = 32
    num_channels: int = 128
    num_res_blocks: int = 3
    attention_resolutions: str = "16,8"
    num_heads: int = 4
    num_heads_upsample: int = -1
    learn_sigma: bool = True
    use_scale_shift_norm: bool = True
    dropout: float = 0.0
    channel_mult: tuple[int, ...] | None = None
    in_channels: int = 3

    def resolved_channel_mult(self) -> tuple[int, ...]:
        if self.channel_mult is not None:
            return tuple(int(m) for m in self.channel_mult)
        if self.image_size not in DEFAULT_CHANNEL_MULT:
            raise ValueError(f"no default channel_mult for image_size={self.image_size}; set channel_mult")
        return DEFAULT_CHANNEL_MULT[self.image_size]

    def attention_downsample_factors(self) -> tuple[int, ...]:
        """``"16,8"`` at 32 px -> downsample factors (2, 4)."""
        text = str(self.attention_resolutions).strip()
        if not text:
            return ()
        return tuple(self.image_size // int(res) for res in text.split(","))

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        if out["channel_mult"] is not None:
            out["channel_mult"] = list(out["channel_mult"])
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "UNetConfig":
        names = set(cls.__dataclass_fields__)
        kwargs = {k: v for k, v in data.items() if k in names}
        if kwargs.get("channel_mult") is not None:
            cm = kwargs["channel_mult"]
            kwargs["channel_mult"] = tuple(int(m) for m in (cm.split(",") if isinstance(cm, str) else cm))
        return cls(**kwargs)


PAPER_UNET = UNetConfig()  # ECLIPSE configs/cifar10.yml over improved-diffusion defaults


class GroupNorm32(nn.GroupNorm):
    """GroupNorm computed in float32 and cast back to the input dtype."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.float()).type(x.dtype)


def _norm(channels: int) -> GroupNorm32:
    return GroupNorm32(32, channels)


def _zero(module: nn.Module) -> nn.Module:
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding ``cat[cos, sin]`` of float timesteps, shape (N, dim)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t[:, None].float() * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


class EmbedSequential(nn.Sequential):
    """Sequential that hands the timestep embedding to the blocks that take one."""

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        for layer in self:
            x = layer(x, emb) if isinstance(layer, ResBlock) else layer(x)
        return x


class ResBlock(nn.Module):
    """GN-SiLU-conv, timestep scale/shift (or add), GN-SiLU-dropout-zero conv, plus skip."""

    def __init__(self, channels: int, emb_channels: int, dropout: float, out_channels: int,
                 use_scale_shift_norm: bool) -> None:
        super().__init__()
        self.use_scale_shift_norm = use_scale_shift_norm
        self.in_layers = nn.Sequential(_norm(channels), nn.SiLU(), nn.Conv2d(channels, out_channels, 3, padding=1))
        emb_out = 2 * out_channels if use_scale_shift_norm else out_channels
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_channels, emb_out))
        self.out_layers = nn.Sequential(
            _norm(out_channels), nn.SiLU(), nn.Dropout(p=dropout),
            _zero(nn.Conv2d(out_channels, out_channels, 3, padding=1)),
        )
        self.skip_connection = (
            nn.Identity() if out_channels == channels else nn.Conv2d(channels, out_channels, 1)
        )

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.in_layers(x)
        e = self.emb_layers(emb).type(h.dtype)[:, :, None, None]
        if self.use_scale_shift_norm:
            scale, shift = e.chunk(2, dim=1)
            h = self.out_layers[0](h) * (1 + scale) + shift
            h = self.out_layers[3](self.out_layers[2](self.out_layers[1](h)))
        else:
            h = self.out_layers(h + e)
        return self.skip_connection(x) + h


class AttentionBlock(nn.Module):
    """Spatial self-attention with the legacy head-major qkv layout ([q_h, k_h, v_h] per head)."""

    def __init__(self, channels: int, num_heads: int) -> None:
        super().__init__()
        if channels % num_heads:
            raise ValueError(f"channels {channels} not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.norm = _norm(channels)
        self.qkv = nn.Conv1d(channels, 3 * channels, 1)
        self.proj_out = _zero(nn.Conv1d(channels, channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, *spatial = x.shape
        flat = x.reshape(b, c, -1)
        n = flat.shape[-1]
        # head-major split, laid out (B*heads, T, 3d) in memory: scaled_dot_product_attention takes its fused
        # kernel only when the feature dimension is contiguous (on 2 CPU cores, 6x faster than the strided
        # views of (B*heads, 3d, T), which fall back to the unfused path; benchmarks/official_loop.py --profile)
        qkv = self.qkv(self.norm(flat)).reshape(b * self.num_heads, -1, n).transpose(1, 2).contiguous()
        q, k, v = qkv.chunk(3, dim=-1)  # each (B*heads, T, d)
        # softmax(q k^T / sqrt(d)) v, i.e. improved-diffusion's d^-1/4 on both q and k
        h = F.scaled_dot_product_attention(q, k, v)
        h = h.transpose(1, 2).reshape(b, c, n)
        return (flat + self.proj_out(h)).reshape(b, c, *spatial)


class Downsample(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.op = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class Upsample(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))


class UNetModel(nn.Module):
    """improved-diffusion's unconditional UNet; ``forward(x, t_model_input)``."""

    def __init__(self, cfg: UNetConfig) -> None:
        super().__init__()
        self.config = cfg
        ch0 = cfg.num_channels
        mult = cfg.resolved_channel_mult()
        attn_ds = set(cfg.attention_downsample_factors())
        heads_up = cfg.num_heads if cfg.num_heads_upsample == -1 else cfg.num_heads_upsample
        emb_dim = 4 * ch0
        self.out_channels = 2 * cfg.in_channels if cfg.learn_sigma else cfg.in_channels

        def res(cin: int, cout: int) -> ResBlock:
            return ResBlock(cin, emb_dim, cfg.dropout, cout, cfg.use_scale_shift_norm)

        self.time_embed = nn.Sequential(nn.Linear(ch0, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.input_blocks = nn.ModuleList([EmbedSequential(nn.Conv2d(cfg.in_channels, ch0, 3, padding=1))])
        skip_chans = [ch0]
        ch, ds = ch0, 1
        for level, m in enumerate(mult):
            for _ in range(cfg.num_res_blocks):
                layers: list[nn.Module] = [res(ch, m * ch0)]
                ch = m * ch0
                if ds in attn_ds:
                    layers.append(AttentionBlock(ch, cfg.num_heads))
                self.input_blocks.append(EmbedSequential(*layers))
                skip_chans.append(ch)
            if level != len(mult) - 1:
                self.input_blocks.append(EmbedSequential(Downsample(ch)))
                skip_chans.append(ch)
                ds *= 2
        self.middle_block = EmbedSequential(res(ch, ch), AttentionBlock(ch, cfg.num_heads), res(ch, ch))
        self.output_blocks = nn.ModuleList()
        for level, m in reversed(list(enumerate(mult))):
            for i in range(cfg.num_res_blocks + 1):
                layers = [res(ch + skip_chans.pop(), m * ch0)]
                ch = m * ch0
                if ds in attn_ds:
                    layers.append(AttentionBlock(ch, heads_up))
                if level and i == cfg.num_res_blocks:
                    layers.append(Upsample(ch))
                    ds //= 2
                self.output_blocks.append(EmbedSequential(*layers))
        self.out = nn.Sequential(_norm(ch), nn.SiLU(), _zero(nn.Conv2d(ch0, self.out_channels, 3, padding=1)))

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if t.ndim == 0:
            t = t.expand(x.shape[0])
        emb = self.time_embed(timestep_embedding(t, self.config.num_channels).to(x.dtype))
        skips = []
        h = x
        for block in self.input_blocks:
            h = block(h, emb)
            skips.append(h)
        h = self.middle_block(h, emb)
        for block in self.output_blocks:
            h = block(torch.cat([h, skips.pop()], dim=1), emb)
        return self.out(h)


def build_unet(cfg: UNetConfig | dict[str, Any]) -> UNetModel:
    """Build the UNet from a :class:`UNetConfig` (or a dict of improved-diffusion argument names)."""
    if isinstance(cfg, dict):
        cfg = UNetConfig.from_dict(cfg)
    return UNetModel(cfg)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())

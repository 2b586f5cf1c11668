"""Class-conditioned U-Net that predicts the noise added to an image, a diffusers model (``save_pretrained`` /
``from_pretrained``)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config
from torch import Tensor, nn


def sinusoidal_embedding(t: Tensor, dim: int, max_period: float = 10_000.0) -> Tensor:
    """``[B]`` timesteps -> ``[B, dim]`` sine/cosine features at geometric frequencies."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


def _group_norm(channels: int, max_groups: int = 8) -> nn.GroupNorm:
    groups = math.gcd(channels, max_groups)
    return nn.GroupNorm(groups, channels)


_ACTIVATIONS = {"silu": nn.SiLU, "gelu": nn.GELU}


class ResBlock(nn.Module):
    """GroupNorm-act-conv twice, with the embedding as a per-channel scale and shift."""

    def __init__(self, in_ch: int, out_ch: int, emb_dim: int, activation: str, dropout: float) -> None:
        super().__init__()
        self.norm1 = _group_norm(in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.emb = nn.Linear(emb_dim, 2 * out_ch)
        self.norm2 = _group_norm(out_ch)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)
        self.act = _ACTIVATIONS[activation]()
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.conv1(self.act(self.norm1(x)))
        scale, shift = self.emb(emb)[:, :, None, None].chunk(2, dim=1)
        h = self.norm2(h) * (1 + scale) + shift
        h = self.conv2(self.dropout(self.act(h)))
        return h + self.skip(x)


class SelfAttention(nn.Module):
    """Multi-head self-attention over the pixels of a feature map, with a residual connection."""

    def __init__(self, channels: int, num_heads: int = 4) -> None:
        super().__init__()
        if channels % num_heads:
            raise ValueError(f"attention needs channels ({channels}) divisible by num_heads ({num_heads})")
        self.num_heads = num_heads
        self.norm = _group_norm(channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.out = nn.Conv2d(channels, channels, 1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(b, 3, self.num_heads, c // self.num_heads, h * w).unbind(1)
        out = F.scaled_dot_product_attention(q.transpose(-1, -2), k.transpose(-1, -2), v.transpose(-1, -2))
        return x + self.out(out.transpose(-1, -2).reshape(b, c, h, w))


class StyleEmbedding(nn.Module):
    """Continuous style conditions ``[B, S]`` (normalised; NaN = not given) -> ``[B, emb_dim]``.

    The MLP sees each value beside a flag saying whether it was given, so any subset of the
    attributes can be asked for; with none given the output is a learned constant, the
    "no style" embedding that classifier-free guidance contrasts with.
    """

    def __init__(self, num_styles: int, emb_dim: int, activation: str) -> None:
        super().__init__()
        self.num_styles = num_styles
        self.mlp = nn.Sequential(
            nn.Linear(2 * num_styles, emb_dim), _ACTIVATIONS[activation](), nn.Linear(emb_dim, emb_dim)
        )

    def forward(self, styles: Tensor) -> Tensor:
        given = styles.isfinite()
        values = torch.where(given, styles, torch.zeros_like(styles))
        return self.mlp(torch.cat([values, given.to(values.dtype)], dim=-1))


class ConditionalUNet(ModelMixin, ConfigMixin):
    """U-Net eps-predictor conditioned on a timestep, a class label and optionally style attributes.

    A diffusers model: its constructor arguments are its ``config``, so ``save_pretrained(DIR)`` writes
    ``config.json`` and ``diffusion_pytorch_model.safetensors`` and ``ConditionalUNet.from_pretrained(DIR)``
    rebuilds it; its parameter names are those of a plain ``nn.Module``, as checkpoints hold them.

    Label ``num_classes`` is the null class: the unconditional model used by classifier-free
    guidance. With ``num_styles > 0`` the network also takes continuous style conditions
    (``diffusion_lab.data.styles``), embedded and added to the time and class embedding. Inputs whose
    side is not a multiple of ``2 ** (len(down_chs) - 1)`` are padded and the output is cropped
    back, so any depth works on 28x28.

    Args:
        down_chs: channels per resolution level, e.g. ``(32, 64, 128)``.
        num_classes: number of real classes.
        in_channels: image channels.
        num_res_blocks: residual blocks per level on the way down (one more on the way up).
        attention_levels: level indices (0 = full resolution) that get self-attention.
        time_emb_dim: conditioning embedding width (defaults to ``4 * down_chs[0]``).
        activation: ``silu`` or ``gelu``.
        dropout: dropout inside residual blocks.
        num_heads: attention heads.
        num_styles: continuous style conditions taken (0: none; 2 for slant and thickness).
    """

    @register_to_config
    def __init__(
        self,
        down_chs: Sequence[int] = (32, 64, 128),
        num_classes: int = 10,
        in_channels: int = 1,
        num_res_blocks: int = 1,
        attention_levels: Sequence[int] = (),
        time_emb_dim: int | None = None,
        activation: str = "silu",
        dropout: float = 0.0,
        num_heads: int = 4,
        num_styles: int = 0,
    ) -> None:
        super().__init__()
        down_chs = tuple(int(c) for c in down_chs)
        if not down_chs or min(down_chs) <= 0:
            raise ValueError(f"model.unet.down_chs must be a non-empty list of positive ints, got {list(down_chs)}")
        if activation not in _ACTIVATIONS:
            raise ValueError(f"model.unet.activation must be one of {sorted(_ACTIVATIONS)}, got {activation!r}")
        bad_levels = [lvl for lvl in attention_levels if not 0 <= lvl < len(down_chs)]
        if bad_levels:
            raise ValueError(f"model.unet.attention_levels {bad_levels} out of range 0..{len(down_chs) - 1}")
        # The config as plain lists: Hydra passes ListConfig, which config.json cannot hold.
        self.register_to_config(down_chs=list(down_chs), attention_levels=[int(lvl) for lvl in attention_levels])
        self.down_chs = down_chs
        self.num_classes = num_classes
        self.in_channels = in_channels
        emb_dim = time_emb_dim or 4 * down_chs[0]
        self.time_dim = down_chs[0]
        self.time_mlp = nn.Sequential(
            nn.Linear(self.time_dim, emb_dim), _ACTIVATIONS[activation](), nn.Linear(emb_dim, emb_dim)
        )
        self.class_emb = nn.Embedding(num_classes + 1, emb_dim)
        self.num_styles = num_styles
        self.style_emb = StyleEmbedding(num_styles, emb_dim, activation) if num_styles else None
        self.stem = nn.Conv2d(in_channels, down_chs[0], 3, padding=1)

        def block(cin: int, cout: int, level: int) -> nn.ModuleList:
            layers = [ResBlock(cin, cout, emb_dim, activation, dropout)]
            if level in attention_levels:
                layers.append(SelfAttention(cout, num_heads))
            return nn.ModuleList(layers)

        self.down = nn.ModuleList()
        self.downsample = nn.ModuleList()
        skip_chs = [down_chs[0]]
        ch = down_chs[0]
        for level, out_ch in enumerate(down_chs):
            for _ in range(num_res_blocks):
                self.down.append(block(ch, out_ch, level))
                ch = out_ch
                skip_chs.append(ch)
            if level < len(down_chs) - 1:
                self.downsample.append(nn.Conv2d(ch, ch, 3, stride=2, padding=1))
                skip_chs.append(ch)
        self.mid = nn.ModuleList([ResBlock(ch, ch, emb_dim, activation, dropout) for _ in range(2)])
        self.mid_attn = SelfAttention(ch, num_heads) if attention_levels else nn.Identity()

        self.up = nn.ModuleList()
        self.upsample = nn.ModuleList()
        for level in reversed(range(len(down_chs))):
            for _ in range(num_res_blocks + 1):
                self.up.append(block(ch + skip_chs.pop(), down_chs[level], level))
                ch = down_chs[level]
            if level > 0:
                self.upsample.append(nn.Conv2d(ch, ch, 3, padding=1))
        self.out_norm = _group_norm(ch)
        self.out_act = _ACTIVATIONS[activation]()
        self.out = nn.Conv2d(ch, in_channels, 3, padding=1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)
        self.num_res_blocks = num_res_blocks

    @property
    def null_class(self) -> int:
        """Label of the unconditional (dropped) class."""
        return self.num_classes

    def forward(self, x: Tensor, t: Tensor, labels: Tensor, styles: Tensor | None = None) -> Tensor:
        """Predict the noise in ``x``.

        Args:
            x: ``[B, C, H, W]`` noisy images x_t.
            t: ``[B]`` timesteps (integer indices, any float works).
            labels: ``[B]`` class indices in ``[0, num_classes]``; ``num_classes`` is the null class.
            styles: ``[B, num_styles]`` normalised style conditions, NaN where one is not given;
                None gives none (a model with styles then samples as without them).

        Returns:
            ``[B, C, H, W]`` predicted noise.
        """
        height, width = x.shape[-2:]
        multiple = 2 ** (len(self.down_chs) - 1)
        pad_h, pad_w = (-height) % multiple, (-width) % multiple
        if pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h))
        emb = self.time_mlp(sinusoidal_embedding(t, self.time_dim)) + self.class_emb(labels)
        if self.style_emb is not None:
            if styles is None:
                styles = emb.new_full((len(labels), self.num_styles), math.nan)
            elif styles.shape != (len(labels), self.num_styles):
                raise ValueError(f"styles must be [{len(labels)}, {self.num_styles}], got {list(styles.shape)}")
            emb = emb + self.style_emb(styles.float())
        elif styles is not None:
            raise ValueError("this model was trained without style conditions (model.style_conditioning=false)")

        h = self.stem(x)
        skips = [h]
        blocks = iter(self.down)
        for level in range(len(self.down_chs)):
            for _ in range(self.num_res_blocks):
                h = _run(next(blocks), h, emb)
                skips.append(h)
            if level < len(self.down_chs) - 1:
                h = self.downsample[level](h)
                skips.append(h)
        h = self.mid[0](h, emb)
        h = self.mid_attn(h)
        h = self.mid[1](h, emb)
        blocks = iter(self.up)
        for i, level in enumerate(reversed(range(len(self.down_chs)))):
            for _ in range(self.num_res_blocks + 1):
                h = _run(next(blocks), torch.cat([h, skips.pop()], dim=1), emb)
            if level > 0:
                h = self.upsample[i](F.interpolate(h, scale_factor=2.0, mode="nearest"))
        out = self.out(self.out_act(self.out_norm(h)))
        return out[..., :height, :width]


def _run(layers: nn.ModuleList, h: Tensor, emb: Tensor) -> Tensor:
    """Apply a residual block and its optional attention."""
    h = layers[0](h, emb)
    for layer in layers[1:]:
        h = layer(h)
    return h

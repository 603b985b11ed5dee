"""A small, clean 3D U-Net with time and (optional) vector-condition embedding.

``UNet3D(in_ch, out_ch, base, mults, cond_dim=None)(x, t, cond=None)``:

- ``x``: ``(B, in_ch, D, D, D)`` volumes; every spatial size must be divisible by
  ``2 ** (len(mults) - 1)`` (one stride-2 downsampling between consecutive levels).
- ``t``: ``(B,)`` or scalar time (any real scale: flow time in [0, 1], DDPM step index…),
  embedded with sinusoidal features at ``time_scale · t`` followed by an MLP.
- ``cond``: ``(B, cond_dim)`` vector (e.g. an anchor's latent code, or zeros for the
  unconditional branch of classifier-free guidance); it is embedded by an MLP and added to
  the time embedding. Spatial conditions are the caller's business: concatenate them to
  ``x`` as extra input channels.
- returns ``(B, out_ch, D, D, D)``. The output convolution is zero-initialised, so an untrained
  network predicts 0.

Each level has ``num_res_blocks`` residual blocks (GroupNorm → SiLU → Conv3d, with a
FiLM scale/shift from the embedding), the lowest level adds self-attention when
``attention=True`` (global over the voxels of that level, so keep it for small grids).
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["UNet3D", "timestep_embedding"]


def timestep_embedding(t: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """Sinusoidal features ``(B, dim)`` of real times ``t`` ``(B,)`` (transformer positional style)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb


def _groups(ch: int) -> int:
    for g in (8, 4, 2, 1):
        if ch % g == 0:
            return g
    return 1


class ResBlock3d(nn.Module):
    def __init__(self, cin: int, cout: int, emb_dim: int, dropout: float = 0.0):
        super().__init__()
        self.norm1 = nn.GroupNorm(_groups(cin), cin)
        self.conv1 = nn.Conv3d(cin, cout, 3, padding=1)
        self.emb = nn.Linear(emb_dim, 2 * cout)
        self.norm2 = nn.GroupNorm(_groups(cout), cout)
        self.drop = nn.Dropout(dropout)
        self.conv2 = nn.Conv3d(cout, cout, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)
        self.skip = nn.Conv3d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.emb(F.silu(emb))[:, :, None, None, None].chunk(2, dim=1)
        h = self.norm2(h) * (1 + scale) + shift
        h = self.conv2(self.drop(F.silu(h)))
        return self.skip(x) + h


class Attention3d(nn.Module):
    """Global multi-head self-attention over the voxels of one level."""

    def __init__(self, ch: int, head_dim: int = 32):
        super().__init__()
        self.heads = max(1, ch // head_dim)
        self.norm = nn.GroupNorm(_groups(ch), ch)
        self.qkv = nn.Conv3d(ch, 3 * ch, 1)
        self.out = nn.Conv3d(ch, ch, 1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: Tensor) -> Tensor:
        B, C, D, H, W = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(B, 3, self.heads, C // self.heads, D * H * W).unbind(1)
        o = F.scaled_dot_product_attention(q.transpose(-1, -2), k.transpose(-1, -2), v.transpose(-1, -2))
        return x + self.out(o.transpose(-1, -2).reshape(B, C, D, H, W))


class UNet3D(nn.Module):
    """3D U-Net ``(x, t, cond=None) → (B, out_ch, D, D, D)`` (see module docstring).

    in_ch / out_ch: channels; base: channels of the first level; mults: channel multiplier per
    level (``base * m``); cond_dim: size of the optional condition vector; num_res_blocks:
    residual blocks per level and direction; attention: self-attention at the lowest level;
    time_scale: multiplies ``t`` before the sinusoidal embedding (1000 suits t in [0, 1]).
    """

    def __init__(self, in_ch: int, out_ch: int, base: int = 32, mults: Sequence[int] = (1, 2, 4),
                 cond_dim: int | None = None, *, num_res_blocks: int = 1, attention: bool = True,
                 dropout: float = 0.0, time_scale: float = 1000.0):
        super().__init__()
        mults = tuple(int(m) for m in mults)
        if not mults:
            raise ValueError("mults must name at least one level")
        self.in_ch, self.out_ch, self.cond_dim = in_ch, out_ch, cond_dim
        self.levels = len(mults)
        self.time_scale = float(time_scale)
        emb_dim = 4 * base
        self.base = base
        self.time_mlp = nn.Sequential(nn.Linear(base, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.cond_mlp = (nn.Sequential(nn.Linear(cond_dim, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
                         if cond_dim else None)
        self.conv_in = nn.Conv3d(in_ch, base, 3, padding=1)

        chans = [base * m for m in mults]
        self.down = nn.ModuleList()
        self.downsample = nn.ModuleList()
        skips = [base]
        ch = base
        for i, c in enumerate(chans):
            blocks = nn.ModuleList()
            for _ in range(num_res_blocks):
                blocks.append(ResBlock3d(ch, c, emb_dim, dropout))
                ch = c
                skips.append(ch)
            self.down.append(blocks)
            if i < len(chans) - 1:
                self.downsample.append(nn.Conv3d(ch, ch, 3, stride=2, padding=1))
                skips.append(ch)
        self.mid1 = ResBlock3d(ch, ch, emb_dim, dropout)
        self.mid_attn = Attention3d(ch) if attention else nn.Identity()
        self.mid2 = ResBlock3d(ch, ch, emb_dim, dropout)

        self.up = nn.ModuleList()
        self.upsample = nn.ModuleList()
        for i, c in reversed(list(enumerate(chans))):
            blocks = nn.ModuleList()
            for _ in range(num_res_blocks + 1):
                blocks.append(ResBlock3d(ch + skips.pop(), c, emb_dim, dropout))
                ch = c
            self.up.append(blocks)
            if i > 0:
                self.upsample.append(nn.Conv3d(ch, ch, 3, padding=1))
        self.norm_out = nn.GroupNorm(_groups(ch), ch)
        self.conv_out = nn.Conv3d(ch, out_ch, 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)

    @property
    def divisor(self) -> int:
        """Spatial sizes must be multiples of this."""
        return 2 ** (self.levels - 1)

    def forward(self, x: Tensor, t: Tensor | float, cond: Tensor | None = None) -> Tensor:
        B = x.shape[0]
        if any(s % self.divisor for s in x.shape[2:]):
            raise ValueError(f"UNet3D: spatial size {tuple(x.shape[2:])} is not divisible by {self.divisor}")
        t = torch.as_tensor(t, device=x.device, dtype=torch.float32)
        if t.ndim == 0:
            t = t.expand(B)
        emb = self.time_mlp(timestep_embedding(t * self.time_scale, self.base).to(x.dtype))
        if self.cond_mlp is not None and cond is not None:
            emb = emb + self.cond_mlp(cond.to(emb.dtype))
        elif cond is not None:
            raise ValueError("UNet3D was built without cond_dim; no condition can be given")

        h = self.conv_in(x)
        hs = [h]
        for i, blocks in enumerate(self.down):
            for blk in blocks:
                h = blk(h, emb)
                hs.append(h)
            if i < len(self.downsample):
                h = self.downsample[i](h)
                hs.append(h)
        h = self.mid2(self.mid_attn(self.mid1(h, emb)), emb)
        for j, blocks in enumerate(self.up):
            for blk in blocks:
                h = blk(torch.cat([h, hs.pop()], dim=1), emb)
            if j < len(self.upsample):
                h = self.upsample[j](F.interpolate(h, scale_factor=2, mode="nearest"))
        return self.conv_out(F.silu(self.norm_out(h)))

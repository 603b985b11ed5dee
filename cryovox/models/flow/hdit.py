"""A 3D hourglass diffusion transformer (HDiT, Crowson et al. 2024) as used by CryoFM.

Layout of :class:`HDiT3D` ``(x (B, C, D, D, D), t (B,)) → (B, C, D, D, D)``:

1. patchify: ``p³`` voxels become one token (pixel-unshuffle + linear), ``(B, D/p, D/p, D/p, w₀)``;
2. levels ``0 … L-2`` going down: ``depths[i]`` transformer blocks, then a 2× token merge
   (pixel-unshuffle of 2³ neighbouring tokens + linear to ``widths[i+1]``);
3. the bottom level: ``depths[-1]`` blocks;
4. going up: a 2× token split (linear + pixel-shuffle) blended with the skip of that level
   through a learnt interpolation factor, then ``depths[i]`` blocks;
5. RMSNorm and un-patchify (zero-initialised, so an untrained model predicts 0).

A block is ``x + Attn(AdaRMSNorm(x, c))`` then ``x + GEGLU-FF(AdaRMSNorm(x, c))``, where ``c`` is
the time embedding from a small mapping network. Attention is cosine-similarity attention
(q and k L2-normalised, learnt per-head temperature) with 3D axial rotary position
embeddings; each level uses either *neighbourhood* attention (each token attends to the
``k³`` tokens around it, windows clamped at the borders as NATTEN does) or *global*
attention. Presets: :func:`hdit_config` ``("tiny" | "cryofm-s" | "cryofm-l")``; CryoFM-S is
64³ at 1.5 Å, patch 4, depths [4, 8], widths [768, 1536], neighbourhood kernel 7 then global,
head dim 64; CryoFM-L is 128³ at 3 Å, depths [2, 2, 12], widths [320, 640, 1280].
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint as _checkpoint

from cryovox.models.unet3d import timestep_embedding

__all__ = ["HDiTConfig", "HDiT3D", "hdit_config", "neighborhood_attention_3d", "axial_rope_3d"]


@dataclass
class HDiTConfig:
    """Architecture of :class:`HDiT3D` (all levels: lists of equal length).

    patch_size: voxels per token edge; widths: token width per level; depths: blocks per level
    (down and up each, bottom level once); attention: ``"neighborhood"`` or ``"global"`` per
    level; kernel_size: neighbourhood edge (odd); head_dim: channels per head; ff_mult: GEGLU
    hidden width / token width; mapping_width / mapping_depth: time-embedding network;
    time_scale: flow time t ∈ [0, 1] is embedded at ``time_scale · t``; checkpointing: recompute
    block activations in the backward pass (less memory, ~30 % slower).
    """

    in_channels: int = 1
    patch_size: int = 4
    widths: list[int] = field(default_factory=lambda: [768, 1536])
    depths: list[int] = field(default_factory=lambda: [4, 8])
    attention: list[str] = field(default_factory=lambda: ["neighborhood", "global"])
    kernel_size: int = 7
    head_dim: int = 64
    ff_mult: int = 3
    mapping_width: int = 256
    mapping_depth: int = 2
    time_scale: float = 1000.0
    checkpointing: bool = False

    def __post_init__(self) -> None:
        self.widths, self.depths, self.attention = list(self.widths), list(self.depths), list(self.attention)
        if not (len(self.widths) == len(self.depths) == len(self.attention)) or not self.widths:
            raise ValueError("HDiTConfig: widths, depths and attention need one entry per level")
        for a in self.attention:
            if a not in ("neighborhood", "global"):
                raise ValueError(f"HDiTConfig: attention must be 'neighborhood' or 'global', not {a!r}")
        for w in self.widths:
            if w % self.head_dim:
                raise ValueError(f"HDiTConfig: width {w} is not a multiple of head_dim {self.head_dim}")
        if self.kernel_size % 2 == 0:
            raise ValueError("HDiTConfig: kernel_size must be odd")

    @property
    def divisor(self) -> int:
        """Input edge lengths must be multiples of this (patch × 2^(levels-1))."""
        return self.patch_size * 2 ** (len(self.widths) - 1)

    def to_dict(self) -> dict:
        return asdict(self)


def hdit_config(name: str, **overrides) -> HDiTConfig:
    """A named preset (``tiny``, ``small``, ``cryofm-s``, ``cryofm-l``) with optional field overrides."""
    presets = {
        # a few seconds per 16³ sample on a laptop CPU; for tests
        "tiny": dict(patch_size=2, widths=[32, 64], depths=[1, 1], attention=["neighborhood", "global"],
                     kernel_size=3, head_dim=16, ff_mult=2, mapping_width=32, mapping_depth=1),
        # CPU-scale prior for 32³ maps
        "small": dict(patch_size=2, widths=[64, 128], depths=[2, 2], attention=["neighborhood", "global"],
                      kernel_size=5, head_dim=32, ff_mult=3, mapping_width=128, mapping_depth=1),
        "cryofm-s": dict(patch_size=4, widths=[768, 1536], depths=[4, 8], attention=["neighborhood", "global"],
                         kernel_size=7, head_dim=64),
        "cryofm-l": dict(patch_size=4, widths=[320, 640, 1280], depths=[2, 2, 12],
                         attention=["neighborhood", "neighborhood", "global"], kernel_size=7, head_dim=64),
    }
    if name not in presets:
        raise ValueError(f"unknown HDiT preset {name!r}; choose from {', '.join(presets)}")
    return HDiTConfig(**{**presets[name], **overrides})


# ---------------------------------------------------------------------------------------------
# layers


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.scale = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        return _rms(x, self.eps) * self.scale.to(x.dtype)


def _rms(x: Tensor, eps: float) -> Tensor:
    dtype = x.dtype
    x = x.float()
    return (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)).to(dtype)


class AdaRMSNorm(nn.Module):
    """RMSNorm whose per-channel scale is ``1 + Linear(c)`` (zero-initialised)."""

    def __init__(self, dim: int, cond_dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.linear = nn.Linear(cond_dim, dim, bias=False)
        nn.init.zeros_(self.linear.weight)

    def forward(self, x: Tensor, cond: Tensor) -> Tensor:
        scale = 1 + self.linear(cond)  # (B, dim)
        return _rms(x, self.eps) * scale.reshape(scale.shape[0], *([1] * (x.ndim - 2)), -1).to(x.dtype)


class GEGLU(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        a, gate = x.chunk(2, dim=-1)
        return a * F.gelu(gate)


class FeedForward(nn.Module):
    def __init__(self, dim: int, hidden: int, cond_dim: int):
        super().__init__()
        self.norm = AdaRMSNorm(dim, cond_dim)
        self.up = nn.Linear(dim, 2 * hidden, bias=False)
        self.act = GEGLU()
        self.down = nn.Linear(hidden, dim, bias=False)
        nn.init.zeros_(self.down.weight)

    def forward(self, x: Tensor, cond: Tensor) -> Tensor:
        return x + self.down(self.act(self.up(self.norm(x, cond))))


def axial_rope_3d(shape: tuple[int, int, int], head_dim: int, device=None) -> tuple[Tensor, int]:
    """Rotation angles ``(Z, Y, X, n_rot)`` of 3D axial RoPE for a token grid, and ``n_rot``.

    ``n_rot = 3 · f`` rotation pairs with ``f = max(1, head_dim // 12)`` frequencies per axis
    (so about half the head channels are rotated, as HDiT does in 2D). Positions are integer
    token indices centred on the grid; frequencies are log-spaced with wavelengths from 4 to
    256 tokens.
    """
    f = max(1, head_dim // 12)
    if 6 * f > head_dim:
        raise ValueError(f"head_dim {head_dim} too small for 3D axial RoPE")
    wavelengths = torch.logspace(math.log10(4.0), math.log10(256.0), f, device=device) if f > 1 else \
        torch.tensor([8.0], device=device)
    freqs = 2 * math.pi / wavelengths
    grids = torch.meshgrid(*[torch.arange(n, device=device, dtype=torch.float32) - n // 2 for n in shape],
                           indexing="ij")
    theta = torch.cat([g[..., None] * freqs for g in grids], dim=-1)  # (Z, Y, X, 3f)
    return theta, 3 * f


def _apply_rope(x: Tensor, theta: Tensor) -> Tensor:
    """Rotate the first ``2 · n_rot`` channels of ``x (..., Z, Y, X, d)`` in pairs by ``theta (Z, Y, X, n_rot)``."""
    n = theta.shape[-1]
    x_rot, x_pass = x[..., : 2 * n], x[..., 2 * n:]
    x1, x2 = x_rot[..., :n], x_rot[..., n:]
    cos, sin = theta.cos().to(x.dtype), theta.sin().to(x.dtype)
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin, x_pass], dim=-1)


def _window_index(n: int, k: int, device) -> Tensor:
    """NATTEN windows along one axis: ``(n, k)`` indices, start = clamp(i - k//2, 0, n - k)."""
    k = min(k, n)
    start = (torch.arange(n, device=device) - k // 2).clamp(0, n - k)
    return start[:, None] + torch.arange(k, device=device)[None]


def neighborhood_attention_3d(q: Tensor, k: Tensor, v: Tensor, kernel_size: int, scale: float = 1.0,
                              max_elements: int = 2 ** 26) -> Tensor:
    """3D neighbourhood attention: each query attends to the ``k³`` keys around it.

    q, k, v: ``(B, H, Z, Y, X, d)``. Windows along each axis are ``[s, s + k)`` with
    ``s = clamp(i - k//2, 0, n - k)`` (NATTEN's border handling: every window is full-size;
    an axis shorter than ``k`` is attended whole). Logits are ``scale · q·k``. Queries are
    processed in z-slabs so that the gathered keys stay below ``max_elements`` values.
    Returns ``(B, H, Z, Y, X, d)``.
    """
    B, H, Z, Y, X, d = q.shape
    iz, iy, ix = (_window_index(n, kernel_size, q.device) for n in (Z, Y, X))
    kz, ky, kx = iz.shape[1], iy.shape[1], ix.shape[1]
    per_slice = B * H * Y * X * kz * ky * kx * d * 2
    chunk = max(1, min(Z, max_elements // max(per_slice, 1)))
    out = []
    for z0 in range(0, Z, chunk):
        z1 = min(Z, z0 + chunk)
        zi = iz[z0:z1]
        # gather (B, H, c, Y, X, kz, ky, kx, d)
        idx = (zi[:, None, None, :, None, None], iy[None, :, None, None, :, None], ix[None, None, :, None, None, :])
        kk = k[:, :, idx[0], idx[1], idx[2]]
        vv = v[:, :, idx[0], idx[1], idx[2]]
        qq = q[:, :, z0:z1]
        c = z1 - z0
        kk = kk.reshape(B, H, c, Y, X, -1, d)
        vv = vv.reshape(B, H, c, Y, X, -1, d)
        logits = torch.einsum("bhzyxd,bhzyxnd->bhzyxn", qq, kk) * scale
        attn = torch.softmax(logits, -1, dtype=torch.promote_types(logits.dtype, torch.float32)).to(vv.dtype)
        out.append(torch.einsum("bhzyxn,bhzyxnd->bhzyxd", attn, vv))
    return torch.cat(out, dim=2)


class SelfAttention(nn.Module):
    """Cosine-similarity multi-head attention with 3D axial RoPE, global or neighbourhood."""

    def __init__(self, dim: int, head_dim: int, cond_dim: int, kind: str, kernel_size: int):
        super().__init__()
        self.heads = dim // head_dim
        self.head_dim = head_dim
        self.kind = kind
        self.kernel_size = kernel_size
        self.norm = AdaRMSNorm(dim, cond_dim)
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.log_scale = nn.Parameter(torch.full((self.heads,), math.log(10.0)))
        self.out = nn.Linear(dim, dim, bias=False)
        nn.init.zeros_(self.out.weight)

    def forward(self, x: Tensor, cond: Tensor) -> Tensor:
        B, Z, Y, X, C = x.shape
        qkv = self.qkv(self.norm(x, cond)).reshape(B, Z, Y, X, 3, self.heads, self.head_dim)
        q, k, v = qkv.permute(4, 0, 5, 1, 2, 3, 6).unbind(0)  # (B, H, Z, Y, X, d)
        # cosine similarity with a learnt temperature: split √scale between q and k
        s = self.log_scale.exp().sqrt().reshape(1, -1, 1, 1, 1, 1).to(q.dtype)
        q = F.normalize(q, dim=-1, eps=1e-6) * s
        k = F.normalize(k, dim=-1, eps=1e-6) * s
        theta, _ = axial_rope_3d((Z, Y, X), self.head_dim, device=x.device)
        q, k = _apply_rope(q, theta), _apply_rope(k, theta)
        if self.kind == "global":
            o = F.scaled_dot_product_attention(q.reshape(B, self.heads, -1, self.head_dim),
                                               k.reshape(B, self.heads, -1, self.head_dim),
                                               v.reshape(B, self.heads, -1, self.head_dim), scale=1.0)
            o = o.reshape(B, self.heads, Z, Y, X, self.head_dim)
        else:
            o = neighborhood_attention_3d(q, k, v, self.kernel_size, scale=1.0)
        o = o.permute(0, 2, 3, 4, 1, 5).reshape(B, Z, Y, X, C)
        return x + self.out(o)


class Block(nn.Module):
    def __init__(self, dim: int, cfg: HDiTConfig, cond_dim: int, kind: str):
        super().__init__()
        self.attn = SelfAttention(dim, cfg.head_dim, cond_dim, kind, cfg.kernel_size)
        self.ff = FeedForward(dim, cfg.ff_mult * dim, cond_dim)

    def forward(self, x: Tensor, cond: Tensor) -> Tensor:
        return self.ff(self.attn(x, cond), cond)


def _unshuffle(x: Tensor, p: int) -> Tensor:
    """``(B, Z, Y, X, C) → (B, Z/p, Y/p, X/p, C·p³)``."""
    B, Z, Y, X, C = x.shape
    x = x.reshape(B, Z // p, p, Y // p, p, X // p, p, C)
    return x.permute(0, 1, 3, 5, 2, 4, 6, 7).reshape(B, Z // p, Y // p, X // p, p ** 3 * C)


def _shuffle(x: Tensor, p: int) -> Tensor:
    """Inverse of :func:`_unshuffle`."""
    B, Z, Y, X, Cp = x.shape
    C = Cp // p ** 3
    x = x.reshape(B, Z, Y, X, p, p, p, C)
    return x.permute(0, 1, 4, 2, 5, 3, 6, 7).reshape(B, Z * p, Y * p, X * p, C)


class TokenMerge(nn.Module):
    def __init__(self, cin: int, cout: int, p: int):
        super().__init__()
        self.p = p
        self.proj = nn.Linear(cin * p ** 3, cout, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(_unshuffle(x, self.p))


class TokenSplit(nn.Module):
    """Linear + pixel-shuffle; with a skip, the result is ``lerp(skip, x, fac)`` (fac learnt, 0.5 at start)."""

    def __init__(self, cin: int, cout: int, p: int, skip: bool = True, zero_init: bool = False):
        super().__init__()
        self.p = p
        self.proj = nn.Linear(cin, cout * p ** 3, bias=False)
        if zero_init:
            nn.init.zeros_(self.proj.weight)
        self.fac = nn.Parameter(torch.tensor(0.5)) if skip else None

    def forward(self, x: Tensor, skip: Tensor | None = None) -> Tensor:
        x = _shuffle(self.proj(x), self.p)
        if self.fac is not None and skip is not None:
            x = torch.lerp(skip, x, self.fac.to(x.dtype))
        return x


class MappingNetwork(nn.Module):
    def __init__(self, width: int, depth: int):
        super().__init__()
        self.inp = nn.Linear(width, width, bias=False)
        self.norms = nn.ModuleList([RMSNorm(width) for _ in range(depth)])
        self.ups = nn.ModuleList([nn.Linear(width, 2 * width, bias=False) for _ in range(depth)])
        self.downs = nn.ModuleList([nn.Linear(width, width, bias=False) for _ in range(depth)])
        for d in self.downs:
            nn.init.zeros_(d.weight)
        self.out_norm = RMSNorm(width)

    def forward(self, x: Tensor) -> Tensor:
        x = self.inp(x)
        for n, u, d in zip(self.norms, self.ups, self.downs):
            a, g = u(n(x)).chunk(2, -1)
            x = x + d(a * F.gelu(g))
        return self.out_norm(x)


class HDiT3D(nn.Module):
    """The hourglass transformer ``(x, t) → velocity`` (see module docstring)."""

    def __init__(self, cfg: HDiTConfig):
        super().__init__()
        self.cfg = cfg
        W, L = cfg.widths, len(cfg.widths)
        cdim = cfg.mapping_width
        self.mapping = MappingNetwork(cdim, cfg.mapping_depth)
        self.patch_in = TokenMerge(cfg.in_channels, W[0], cfg.patch_size)
        self.down = nn.ModuleList()
        self.up = nn.ModuleList()
        self.merges = nn.ModuleList()
        self.splits = nn.ModuleList()
        for i in range(L - 1):
            self.down.append(nn.ModuleList([Block(W[i], cfg, cdim, cfg.attention[i]) for _ in range(cfg.depths[i])]))
            self.up.append(nn.ModuleList([Block(W[i], cfg, cdim, cfg.attention[i]) for _ in range(cfg.depths[i])]))
            self.merges.append(TokenMerge(W[i], W[i + 1], 2))
            self.splits.append(TokenSplit(W[i + 1], W[i], 2, skip=True))
        self.mid = nn.ModuleList([Block(W[-1], cfg, cdim, cfg.attention[-1]) for _ in range(cfg.depths[-1])])
        self.out_norm = RMSNorm(W[0])
        self.patch_out = TokenSplit(W[0], cfg.in_channels, cfg.patch_size, skip=False, zero_init=True)

    def _run(self, blocks: nn.ModuleList, x: Tensor, cond: Tensor) -> Tensor:
        for blk in blocks:
            if self.cfg.checkpointing and self.training and torch.is_grad_enabled():
                x = _checkpoint(blk, x, cond, use_reentrant=False)
            else:
                x = blk(x, cond)
        return x

    def forward(self, x: Tensor, t: Tensor | float) -> Tensor:
        B = x.shape[0]
        div = self.cfg.divisor
        if any(s % div for s in x.shape[2:]):
            raise ValueError(f"HDiT3D: spatial size {tuple(x.shape[2:])} is not divisible by {div}")
        t = torch.as_tensor(t, device=x.device, dtype=torch.float32)
        if t.ndim == 0:
            t = t.expand(B)
        cond = self.mapping(timestep_embedding(t * self.cfg.time_scale, self.cfg.mapping_width).to(x.dtype))
        h = self.patch_in(x.permute(0, 2, 3, 4, 1))
        skips = []
        for blocks, merge in zip(self.down, self.merges):
            h = self._run(blocks, h, cond)
            skips.append(h)
            h = merge(h)
        h = self._run(self.mid, h, cond)
        for blocks, split, skip in reversed(list(zip(self.up, self.splits, skips))):
            h = split(h, skip)
            h = self._run(blocks, h, cond)
        h = self.patch_out(self.out_norm(h))
        return h.permute(0, 4, 1, 2, 3)

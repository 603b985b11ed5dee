"""Cryo-SWAN autoencoder and its baselines (``--arch swan | vq | rq | swan-single``).

Shapes (box ``D``, base width ``w``, code length ``C``; the fine latent grid is ``D/4``, the
coarse one ``D/8``)::

    x (B,1,D³) ⊕ γ(p) (60 ch, L = 10) ─conv→ w ─res, down→ 2w @D/2 ─res, down→ 4w @D/4 = enc_1
    enc_1 ─down, res→ 4w @D/8 = enc_2                                     (two levels only)

    level 2 (coarse):  q_2 = Q_2(quant_conv_2(enc_2));  r_2 = up(res(post_quant_2(q_2)))  → 4w @D/4
    level 1 (fine):    q_1 = Q_1(quant_conv_1(combi_conv(concat(r_2, enc_1))))
    decoder:           concat(post_quant_1(q_1), r_2) ─conv, res, up→ 2w @D/2 ─res, up→ w @D ─conv→ 1

This is the paper's Alg. 1 with K = 2 levels decoded coarse to fine; ``Q_k`` are
:class:`~cryovox.models.swan.quantisers.MultiScaleResidualQuantiser` with the level's perception
scales. The single-level archs drop level 2 (``r_2`` is absent, ``combi_conv`` is skipped) and
differ only in ``Q_1``: one lookup (``vq``), the multi-scale quantiser (``swan-single``, the
paper's RQ1-only ablation), or ``rq_depth`` residual lookups (``rq``). Encoder and decoder
widths are identical for all four, so comparisons are fair.

The ``rq`` baseline follows RQ-VAE's layout (Lee et al., CVPR 2022) by default
(``rq_latent="coarse"``): its point is to quantise a feature map of *lower* spatial resolution
by several residual codes per position (their 8×8×4 codes replace VQGAN's 16×16), so it
quantises the coarse grid ``D/8`` (encoder and decoder paths of SWAN's coarse level) with
``rq_depth`` = 8 codes per position, the same number of codes per map as the VQ baseline
(``8 · (D/8)³ = (D/4)³``). ``rq_latent="fine"`` quantises the ``D/4`` grid instead (``rq_depth``
codes per fine position: 4 × the VQ baseline's codes at depth 4).

Initialisation of the two-level model: ``combi_conv`` starts as the identity on ``enc_1``
(zero weights on ``r_2``) and the decoder's input convolution starts with zero weights on
``r_2``, so SWAN starts as its single-level ablation and learns how much of the coarse level to
use (zero-initialised conditioning branches, as in ReZero/ControlNet); randomly initialised,
the coarse path adds noise to the fine latent early on and the two-level model trained behind
the single-level one at equal steps.

Perception scales are given for 64³ boxes (fine ``[1,4,6,8,10,12,14,16]`` on a 16³ latent,
coarse ``[1,2,4,8]`` on 8³) and scaled with the latent grid for other boxes
(:func:`scale_schedule`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cryovox.models.swan.posenc import positional_encoding
from cryovox.models.swan.quantisers import (CodebookStats, MultiScaleResidualQuantiser, QuantOut,
                                            ResidualQuantiser, VectorQuantiser)

ARCHS = ("swan", "vq", "rq", "swan-single")
FINE_SCALES_64 = (1, 4, 6, 8, 10, 12, 14, 16)
COARSE_SCALES_64 = (1, 2, 4, 8)


def scale_schedule(scales_at_64: Sequence[int], latent: int, reference: int) -> list[int]:
    """Rescale perception scales defined for a ``reference`` latent grid to a ``latent`` grid.

    Each scale becomes ``max(1, round(s · latent / reference))``, capped at ``latent``;
    repeats are dropped (order kept), and the last scale is always the full grid.
    Example: the fine scales at 64³ (latent 16) on a 32³ box (latent 8) → ``[1, 2, 3, 4, 5, 6, 7, 8]``.
    """
    out: list[int] = []
    for s in scales_at_64:
        v = min(latent, max(1, int(round(s * latent / reference))))
        if v not in out:
            out.append(v)
    if out[-1] != latent:
        out.append(latent)
    return out


@dataclass
class SwanConfig:
    """Everything needed to rebuild a model (stored in its checkpoint).

    box: input edge length D (a multiple of 8); width: base channel count w; latent_dim: code
    length C; codebook_size: codes per level; beta: commitment weight; pe_levels: positional
    encoding frequencies L; fine_scales / coarse_scales: perception scales (None → the paper's,
    rescaled to the box); rq_depth: lookups per position of the RQ baseline; rq_latent: grid the
    RQ baseline quantises, ``"coarse"`` (``D/8``, RQ-VAE's layout) or ``"fine"`` (``D/4``);
    groups: GroupNorm groups.
    """

    arch: str = "swan"
    box: int = 64
    width: int = 32
    latent_dim: int = 32
    codebook_size: int = 4096
    beta: float = 0.25
    pe_levels: int = 10
    fine_scales: list[int] | None = None
    coarse_scales: list[int] | None = None
    rq_depth: int = 8
    rq_latent: str = "coarse"
    groups: int = 8
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.arch not in ARCHS:
            raise ValueError(f"unknown arch {self.arch!r}; one of {', '.join(ARCHS)}")
        if self.rq_latent not in ("coarse", "fine"):
            raise ValueError(f"rq_latent must be 'coarse' or 'fine', not {self.rq_latent!r}")
        if self.box % 8:
            raise ValueError(f"box {self.box} must be a multiple of 8 (two levels of 2× and 4× down-sampling)")
        if self.fine_scales is None:
            self.fine_scales = scale_schedule(FINE_SCALES_64, self.box // 4, 16)
        if self.coarse_scales is None:
            self.coarse_scales = scale_schedule(COARSE_SCALES_64, self.box // 8, 8)
        self.fine_scales = [int(s) for s in self.fine_scales]
        self.coarse_scales = [int(s) for s in self.coarse_scales]

    @property
    def levels(self) -> int:
        return 2 if self.arch == "swan" else 1

    @property
    def coarse_only(self) -> bool:
        """True for the RQ baseline on the ``D/8`` grid (RQ-VAE's layout)."""
        return self.arch == "rq" and self.rq_latent == "coarse"

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _norm(ch: int, groups: int) -> nn.GroupNorm:
    g = groups
    while ch % g:
        g -= 1
    return nn.GroupNorm(g, ch)


class ResBlock(nn.Module):
    """GroupNorm–SiLU–Conv3d ×2 with a skip (1×1×1 conv when the width changes)."""

    def __init__(self, cin: int, cout: int, groups: int = 8):
        super().__init__()
        self.n1, self.c1 = _norm(cin, groups), nn.Conv3d(cin, cout, 3, padding=1)
        self.n2, self.c2 = _norm(cout, groups), nn.Conv3d(cout, cout, 3, padding=1)
        self.skip = nn.Conv3d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        h = self.c1(F.silu(self.n1(x)))
        h = self.c2(F.silu(self.n2(h)))
        return self.skip(x) + h


class Down(nn.Module):
    """Stride-2 Conv3d (4³ kernel): ``(B, cin, S³)`` → ``(B, cout, (S/2)³)``."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv = nn.Conv3d(cin, cout, 4, stride=2, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x)


class Up(nn.Module):
    """Nearest 2× up-sampling then Conv3d: ``(B, cin, S³)`` → ``(B, cout, (2S)³)``."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv = nn.Conv3d(cin, cout, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))


class InputConv(nn.Module):
    """First Conv3d on ``concat(x, γ(p))``, computed as ``conv_x(x) + conv_γ(γ)``.

    The positional part does not depend on the batch, so it is evaluated once per forward
    and broadcast — the same result as one convolution over the concatenated channels at a
    fraction of the cost (γ has 60 channels, the density 1).
    """

    def __init__(self, box: int, pe_levels: int, cout: int):
        super().__init__()
        self.conv_x = nn.Conv3d(1, cout, 3, padding=1)
        self.pe_levels = pe_levels
        self.conv_pe = nn.Conv3d(6 * pe_levels, cout, 3, padding=1, bias=False) if pe_levels else None
        self.register_buffer("pe", positional_encoding(box, pe_levels)[None], persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv_x(x)
        if self.conv_pe is not None:
            if self.pe.shape[-1] != x.shape[-1]:
                raise ValueError(f"model built for {self.pe.shape[-1]}³ boxes, got {x.shape[-1]}³")
            h = h + self.conv_pe(self.pe.to(h.dtype))
        return h


@dataclass
class SwanOut:
    """Forward pass result: recon ``(B, 1, D, D, D)``; loss terms are scalars;
    quant: one :class:`QuantOut` per level, fine (level 1) first."""

    recon: Tensor
    vq_loss: Tensor
    quant: list[QuantOut]


class SwanAutoencoder(nn.Module):
    """The autoencoder of :class:`SwanConfig` (see the module docstring for the layout)."""

    def __init__(self, cfg: SwanConfig):
        super().__init__()
        self.cfg = cfg
        w, c, g = cfg.width, cfg.latent_dim, cfg.groups
        w2, w4 = 2 * w, 4 * w
        self.conv_in = InputConv(cfg.box, cfg.pe_levels, w)
        self.enc1 = nn.Sequential(ResBlock(w, w, g), Down(w, w2), ResBlock(w2, w2, g), Down(w2, w4),
                                  ResBlock(w4, w4, g))
        self.quant_conv1 = nn.Conv3d(w4, c, 1)
        self.post_quant1 = nn.Conv3d(c, w4, 1)
        lat = cfg.box // 4
        if cfg.coarse_only:      # RQ-VAE layout: one more 2× down-sampling before, one up-sampling after Q_1
            self.enc2 = nn.Sequential(Down(w4, w4), ResBlock(w4, w4, g))
            self.dec2 = nn.Sequential(ResBlock(w4, w4, g), Up(w4, w4))
        if cfg.arch == "vq":
            self.q1: MultiScaleResidualQuantiser = VectorQuantiser(c, cfg.codebook_size, beta=cfg.beta)
        elif cfg.arch == "rq":
            self.q1 = ResidualQuantiser(c, cfg.codebook_size, depth=cfg.rq_depth, beta=cfg.beta)
        else:
            self.q1 = MultiScaleResidualQuantiser(c, cfg.codebook_size, _full(cfg.fine_scales, lat), beta=cfg.beta)
        if cfg.levels == 2:
            self.enc2 = nn.Sequential(Down(w4, w4), ResBlock(w4, w4, g))
            self.quant_conv2 = nn.Conv3d(w4, c, 1)
            self.q2 = MultiScaleResidualQuantiser(c, cfg.codebook_size, _full(cfg.coarse_scales, lat // 2),
                                                  beta=cfg.beta)
            self.post_quant2 = nn.Conv3d(c, w4, 1)
            self.dec2 = nn.Sequential(ResBlock(w4, w4, g), Up(w4, w4))
            self.combi_conv = nn.Conv3d(2 * w4, w4, 3, padding=1)
            dec_in = 2 * w4
        else:
            dec_in = w4
        self.dec_in = nn.Conv3d(dec_in, w4, 3, padding=1)
        if cfg.levels == 2:     # start as the single-level model (module docstring)
            with torch.no_grad():
                self.combi_conv.weight.zero_()
                self.combi_conv.bias.zero_()
                self.combi_conv.weight[torch.arange(w4), w4 + torch.arange(w4), 1, 1, 1] = 1.0
                self.dec_in.weight[:, w4:].zero_()
        self.dec = nn.Sequential(ResBlock(w4, w4, g), Up(w4, w2), ResBlock(w2, w2, g), Up(w2, w),
                                 ResBlock(w, w, g), _norm(w, g), nn.SiLU(), nn.Conv3d(w, 1, 3, padding=1))

    # --------------------------------------------------------------- parts
    @property
    def quantisers(self) -> list[MultiScaleResidualQuantiser]:
        """Quantisers, fine level first."""
        return [self.q1] + ([self.q2] if self.cfg.levels == 2 else [])

    def _check(self, x: Tensor) -> Tensor:
        if x.dim() == 4:
            x = x[:, None]
        if x.dim() != 5 or x.shape[1] != 1 or not (x.shape[2] == x.shape[3] == x.shape[4] == self.cfg.box):
            b = self.cfg.box
            raise ValueError(f"expected (B, 1, {b}, {b}, {b}) maps, got {tuple(x.shape)}")
        return x

    def encode(self, x: Tensor) -> tuple[list[Tensor], list[QuantOut], Tensor | None]:
        """Encode and quantise ``x`` ``(B, [1,] D, D, D)``.

        Returns (pre-quantisation latents ``z_k``, quantiser outputs, ``r_2`` or None), fine
        level first; ``z_1`` is ``(B, C, D/4, D/4, D/4)`` and ``z_2`` ``(B, C, D/8, …)``.
        """
        x = self._check(x)
        e1 = self.enc1(self.conv_in(x))
        if self.cfg.levels == 2:
            e2 = self.enc2(e1)
            z2 = self.quant_conv2(e2)
            qo2 = self.q2(z2)
            r2 = self.dec2(self.post_quant2(qo2.z_q.to(e1.dtype)))
            z1 = self.quant_conv1(self.combi_conv(torch.cat([r2, e1], 1)))
            qo1 = self.q1(z1)
            return [z1, z2], [qo1, qo2], r2
        z1 = self.quant_conv1(self.enc2(e1) if self.cfg.coarse_only else e1)
        return [z1], [self.q1(z1)], None

    def decode(self, q: Sequence[Tensor]) -> Tensor:
        """Decode quantised latents (fine first; for ``swan`` also the coarse one) to ``(B, 1, D³)``."""
        h = self.post_quant1(q[0])
        if self.cfg.coarse_only:
            h = self.dec2(h)
        if self.cfg.levels == 2:
            r2 = self.dec2(self.post_quant2(q[1].to(h.dtype)))
            h = torch.cat([h, r2], 1)
        return self.dec(self.dec_in(h))

    def forward(self, x: Tensor) -> SwanOut:
        _, quant, r2 = self.encode(x)
        h = self.post_quant1(quant[0].z_q.to(self.post_quant1.weight.dtype))
        if self.cfg.coarse_only:
            h = self.dec2(h)
        if r2 is not None:
            h = torch.cat([h, r2.to(h.dtype)], 1)
        recon = self.dec(self.dec_in(h))
        vq = sum(q.loss for q in quant) / len(quant)
        return SwanOut(recon=recon, vq_loss=vq, quant=quant)

    @torch.no_grad()
    def reconstruct(self, x: Tensor) -> Tensor:
        """Encode, snap to the codebooks, decode: ``(B, [1,] D³)`` → ``(B, D, D, D)``."""
        return self.forward(x).recon[:, 0]

    @torch.no_grad()
    def latents(self, x: Tensor, quantised: bool = True) -> list[Tensor]:
        """Latent grids, fine first: ``(B, C, D/4³)`` and, for ``swan``, ``(B, C, D/8³)``; the quantised
        ones (codebook approximations), or with ``quantised=False`` the encoder's continuous outputs
        before quantisation."""
        z, quant, _ = self.encode(x)
        return [q.z_q for q in quant] if quantised else z

    @property
    def latent_channels(self) -> int:
        """Channels of :meth:`latent_grid`: ``C`` per level."""
        return self.cfg.latent_dim * self.cfg.levels

    @torch.no_grad()
    def latent_grid(self, x: Tensor) -> Tensor:
        """All quantised latents on the fine grid: ``(B, C·levels, D/4, D/4, D/4)``.

        For ``swan`` the coarse latent ``(B, C, D/8³)`` is up-sampled (nearest, 2×) and stacked
        after the fine one (the ``rq`` baseline's ``D/8`` latent is up-sampled the same way);
        :meth:`decode_grid` undoes this. Used by ``embed`` and the diffusion.
        """
        lat = self.latents(x)
        fine = self.cfg.box // 4
        lat = [g if g.shape[-1] == fine else F.interpolate(g, scale_factor=2, mode="nearest") for g in lat]
        return torch.cat(lat, 1)

    @torch.no_grad()
    def split_grid(self, grid: Tensor) -> list[Tensor]:
        """Inverse of the stacking in :meth:`latent_grid` (the coarse part is 2×2×2 block-averaged)."""
        c = self.cfg.latent_dim
        parts = [F.avg_pool3d(grid[:, :c], 2) if self.cfg.coarse_only else grid[:, :c]]
        if self.cfg.levels == 2:
            parts.append(F.avg_pool3d(grid[:, c:2 * c], 2))
        return parts

    @torch.no_grad()
    def snap(self, parts: Sequence[Tensor]) -> list[Tensor]:
        """Project latents (fine first) onto the codebooks: re-run each level's residual
        quantiser on them and return the quantised approximations."""
        was = [q.training for q in self.quantisers]
        for q in self.quantisers:
            q.eval()
        try:
            return [q(p).z_q for q, p in zip(self.quantisers, parts)]
        finally:
            for q, w in zip(self.quantisers, was):
                q.train(w)

    @torch.no_grad()
    def decode_grid(self, grid: Tensor, snap: bool = True) -> Tensor:
        """Maps ``(B, D, D, D)`` from stacked latent grids ``(B, C·levels, D/4³)``, optionally
        snapped to the codebooks first."""
        parts = self.split_grid(grid)
        if snap:
            parts = self.snap(parts)
        return self.decode(parts)[:, 0]

    def codebook_stats(self) -> list[CodebookStats]:
        return [q.stats() for q in self.quantisers]


def _full(scales: Sequence[int], latent: int) -> list[int | None]:
    """Scales ≥ the latent grid mean full resolution (None)."""
    return [None if s >= latent else int(s) for s in scales]


def build_model(arch: str = "swan", **overrides: Any) -> SwanAutoencoder:
    """The model for ``--arch`` with :class:`SwanConfig` fields overridden by keyword."""
    return SwanAutoencoder(SwanConfig(arch=arch, **overrides))


def model_from_state(state: dict[str, Any]) -> SwanAutoencoder:
    """Rebuild a model from a ``swan`` checkpoint dict (``config`` + ``model`` weights)."""
    config = dict(state["config"])
    config.setdefault("rq_latent", "fine")      # checkpoints written before rq_latent existed
    cfg = SwanConfig(**config)
    model = SwanAutoencoder(cfg)
    model.load_state_dict(state["model"])
    return model

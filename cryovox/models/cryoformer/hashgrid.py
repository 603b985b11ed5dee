"""Multi-resolution hash-grid encoding (Müller et al., Instant-NGP 2022), pure PyTorch, vectorised.

A point ``u ∈ [0, 1]³`` is encoded by ``L`` levels. Level ``l`` has the grid resolution
``N_l = floor(N_min · b^l)`` with ``b = exp((ln N_max − ln N_min) / (L − 1))`` (cells per unit
length; ``N_l + 1`` vertices per axis). Each level owns a table of ``T`` feature vectors of
``F`` numbers. A vertex ``v = (i, j, k)`` of level ``l`` reads entry

* ``i + j (N_l + 1) + k (N_l + 1)²`` when ``(N_l + 1)³ <= T`` (a dense grid: no collisions), else
* ``(i·π₁ ⊕ j·π₂ ⊕ k·π₃) mod T`` with ``π = (1, 2654435761, 805459861)`` (the spatial hash of
  Teschner et al. that Instant-NGP uses; ``T`` a power of two so ``mod`` is a bit mask).

The features of ``u`` at level ``l`` are the trilinear interpolation of its cell's eight
vertices: weights ``Π_d (f_d if corner_d = 1 else 1 − f_d)`` with ``f = N_l u − floor(N_l u)``.
The output concatenates the levels: ``(…, L · F)``, level 0 first. It is differentiable in the
tables and in ``u`` (the interpolation weights), which is what pose refinement needs.

Implementation: one autograd function walks the eight corners one at a time on ``(L, N)``
arrays (indices, weights, gathers, fused multiply-adds), so nothing of size ``(L, N, 8)`` is ever
stored, and its backward recomputes them (scatter-add into the tables; the gradient in ``u``
from the analytic derivative of the trilinear weights). Memory per point is ``O(L · F)``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

PRIMES = (1, 2654435761, 805459861)


def level_resolutions(levels: int, base_resolution: int, max_resolution: int) -> list[int]:
    """``N_l = floor(N_min · b^l)``, ``b = (N_max / N_min)^(1 / (L − 1))`` (one level: ``[N_min]``)."""
    if levels < 1 or base_resolution < 1 or max_resolution < base_resolution:
        raise ValueError("need levels >= 1 and 1 <= base_resolution <= max_resolution")
    if levels == 1:
        return [int(base_resolution)]
    b = math.exp((math.log(max_resolution) - math.log(base_resolution)) / (levels - 1))
    return [int(math.floor(base_resolution * b ** l + 1e-9)) for l in range(levels)]


class _Layout:
    """Static description of the levels: resolutions, which are dense, table size."""

    def __init__(self, resolutions: list[int], table_size: int):
        self.res = list(resolutions)
        self.T = int(table_size)
        self.n_dense = sum((r + 1) ** 3 <= self.T for r in self.res)
        if [(r + 1) ** 3 <= self.T for r in self.res] != [True] * self.n_dense + [False] * (len(self.res) - self.n_dense):
            raise ValueError("resolutions must not decrease with the level")

    def groups(self):
        """(first level, last level + 1, dense?) of the dense and the hashed levels."""
        out = []
        if self.n_dense:
            out.append((0, self.n_dense, True))
        if self.n_dense < len(self.res):
            out.append((self.n_dense, len(self.res), False))
        return out


def _cells(u: Tensor, res: Tensor) -> tuple[list[Tensor], list[Tensor]]:
    """Per axis (x, y, z): the cell ``(L, N)`` int64 and the fraction ``(L, N)`` (dtype of u) of ``u`` (N, 3)."""
    cells, fracs = [], []
    for a in range(3):
        pos = res[:, None] * u[None, :, a]
        cell = torch.minimum(torch.floor(pos), res[:, None] - 1).clamp_(min=0)   # u = 1: last cell, frac 1
        fracs.append(pos - cell)
        cells.append(cell.long())
    return cells, fracs


def _corners(cells: list[Tensor], fracs: list[Tensor], lo: int, hi: int, dense: bool, layout: _Layout):
    """Yield ``(bits, index (Lg, N) int64, weight (Lg, N), per-axis weights)`` for the eight corners of
    levels ``lo:hi``; index into the flattened ``(L·T)`` tables, weight the trilinear weight."""
    dev = cells[0].device
    c = [x[lo:hi] for x in cells]
    f = [x[lo:hi] for x in fracs]
    off = (torch.arange(lo, hi, device=dev, dtype=torch.int64) * layout.T)[:, None]
    if dense:
        n1 = torch.tensor(layout.res[lo:hi], device=dev, dtype=torch.int64)[:, None] + 1
        stride = (1, n1, n1 * n1)
        terms = [[(c[a] + b) * stride[a] for b in (0, 1)] for a in range(3)]
        op = torch.add
    else:
        mask = layout.T - 1
        terms = [[torch.bitwise_and((c[a] + b) * PRIMES[a], mask) for b in (0, 1)] for a in range(3)]
        op = torch.bitwise_xor          # the level offset has no bits below T: adding it equals XOR-ing it
    terms[0] = [t + off for t in terms[0]]
    w = [[1.0 - f[a], f[a]] for a in range(3)]
    yz_i = {(by, bz): op(terms[1][by], terms[2][bz]) for by in (0, 1) for bz in (0, 1)}
    yz_w = {(by, bz): w[1][by] * w[2][bz] for by in (0, 1) for bz in (0, 1)}
    for corner in range(8):
        bx, by, bz = corner & 1, (corner >> 1) & 1, (corner >> 2) & 1
        yield (bx, by, bz), op(terms[0][bx], yz_i[by, bz]), w[0][bx] * yz_w[by, bz], w


class _HashInterp(torch.autograd.Function):
    """``out[l, n, f] = Σ_corners w · tables[f, index]`` for points ``u`` ``(N, 3)`` → ``(L, N, F)``."""

    @staticmethod
    def forward(ctx, tables: Tensor, u: Tensor, res: Tensor, layout: _Layout) -> Tensor:
        cells, fracs = _cells(u, res.to(u.dtype))
        F_, L, N = tables.shape[0], len(layout.res), u.shape[0]
        out = tables.new_zeros(F_, L, N)
        for lo, hi, dense in layout.groups():
            for _, idx, w, _ in _corners(cells, fracs, lo, hi, dense, layout):
                for k in range(F_):
                    out[k, lo:hi].addcmul_(w, torch.take(tables[k], idx))
        ctx.save_for_backward(tables, u, res)
        ctx.layout = layout
        return out.permute(1, 2, 0)

    @staticmethod
    def backward(ctx, grad: Tensor):
        tables, u, res = ctx.saved_tensors
        layout = ctx.layout
        cells, fracs = _cells(u, res.to(u.dtype))
        g = grad.permute(2, 0, 1)                                     # (F, L, N)
        F_ = tables.shape[0]
        g_tab = torch.zeros_like(tables) if ctx.needs_input_grad[0] else None
        need_u = ctx.needs_input_grad[1]
        g_frac = [torch.zeros_like(fracs[0]) for _ in range(3)] if need_u else None
        for lo, hi, dense in layout.groups():
            gl = g[:, lo:hi]
            gw: dict[tuple[int, int, int], Tensor] = {}
            for bits, idx, w, wa in _corners(cells, fracs, lo, hi, dense, layout):
                if g_tab is not None:
                    flat = idx.reshape(-1)
                    for k in range(F_):
                        g_tab[k].scatter_add_(0, flat, (w * gl[k]).reshape(-1))
                if need_u:                                            # dL/dw of this corner
                    gw[bits] = sum(gl[k] * torch.take(tables[k], idx) for k in range(F_))
            if need_u:
                # w = Π_a wa[a][bit_a], wa[a] = (1 − f_a, f_a): dL/df_a = Σ over the other two axes' bits of
                # (their weights) · (dL/dw at bit_a = 1 − dL/dw at bit_a = 0)
                for a in range(3):
                    b1, b2 = [b for b in range(3) if b != a]
                    for i in (0, 1):
                        for j in (0, 1):
                            hi_bits, lo_bits = [0, 0, 0], [0, 0, 0]
                            hi_bits[b1] = lo_bits[b1] = i
                            hi_bits[b2] = lo_bits[b2] = j
                            hi_bits[a] = 1
                            diff = gw[tuple(hi_bits)] - gw[tuple(lo_bits)]
                            g_frac[a][lo:hi].addcmul_(diff, wa[b1][i] * wa[b2][j])
        g_u = None
        if need_u:
            r = res.to(u.dtype)[:, None]
            g_u = torch.stack([(g_frac[a] * r).sum(0) for a in range(3)], -1)
        return g_tab, g_u, None, None


class HashGridEncoding(nn.Module):
    """Multi-resolution hash encoding of points in ``[0, 1]³`` (see the module docstring).

    levels: ``L`` (16); features: ``F`` per level (2); log2_table: ``log2 T`` (15);
    base_resolution: ``N_min`` (16); max_resolution: ``N_max``, the finest level (give the number of
    voxels across the unit cube for voxel-level detail); init_scale: table entries start uniform in
    ``±init_scale`` (1e-4 as in Instant-NGP). The tables are one parameter ``(F, L·T)``: feature
    ``k`` of entry ``e`` of level ``l`` is ``tables[k, l·T + e]``.
    """

    def __init__(self, levels: int = 16, features: int = 2, log2_table: int = 15, base_resolution: int = 16,
                 max_resolution: int = 512, init_scale: float = 1e-4, dtype=torch.float32):
        super().__init__()
        self.levels, self.features = int(levels), int(features)
        self.table_size = 1 << int(log2_table)
        self.resolutions = level_resolutions(levels, base_resolution, max_resolution)
        self.layout = _Layout(self.resolutions, self.table_size)
        self.dense = [(r + 1) ** 3 <= self.table_size for r in self.resolutions]
        self.tables = nn.Parameter(torch.empty(self.features, self.levels * self.table_size, dtype=dtype))
        nn.init.uniform_(self.tables, -init_scale, init_scale)
        self.register_buffer("_res", torch.tensor(self.resolutions, dtype=torch.float64), persistent=False)

    @property
    def out_dim(self) -> int:
        return self.levels * self.features

    def indices_and_weights(self, u: Tensor) -> tuple[Tensor, Tensor]:
        """Table entries and trilinear weights of the eight corners at every level (for inspection).

        u: ``(N, 3)`` points in ``[0, 1]³`` (clamped). Returns entries ``(L, N, 8)`` int64 into the
        flattened ``(L·T)`` tables and weights ``(L, N, 8)``; corner ``c`` is the vertex
        ``cell + (c & 1, (c >> 1) & 1, (c >> 2) & 1)``.
        """
        cells, fracs = _cells(u.clamp(0.0, 1.0), self._res.to(u.dtype))
        idx = torch.empty(self.levels, u.shape[0], 8, dtype=torch.int64, device=u.device)
        w = torch.empty(self.levels, u.shape[0], 8, dtype=u.dtype, device=u.device)
        for lo, hi, dense in self.layout.groups():
            for (bx, by, bz), i, ww, _ in _corners(cells, fracs, lo, hi, dense, self.layout):
                idx[lo:hi, :, bx + 2 * by + 4 * bz] = i
                w[lo:hi, :, bx + 2 * by + 4 * bz] = ww
        return idx, w

    def forward(self, u: Tensor) -> Tensor:
        """``(..., 3)`` points in ``[0, 1]³`` (clamped) → ``(..., L·F)`` features (level 0 first)."""
        shape = u.shape[:-1]
        u = u.reshape(-1, 3).clamp(0.0, 1.0).to(self.tables.dtype)
        feats = _HashInterp.apply(self.tables, u, self._res, self.layout)       # (L, N, F)
        return feats.permute(1, 0, 2).reshape(*shape, self.out_dim)

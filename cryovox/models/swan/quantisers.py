"""Vector quantisers for latent volume grids: one implementation, three configurations.

:class:`MultiScaleResidualQuantiser` is the Cryo-SWAN quantiser (the paper's Alg. 2): the
latent grid ``z`` of shape ``(B, C, S, S, S)`` is approximated coarse to fine over *perception
scales* ``s_1 < s_2 < … ≤ S``. At each scale the current residual is downsampled to ``s³``
(area average), every vector is replaced by its nearest code of one shared codebook, the
codes are interpolated back to ``S³`` (trilinear) and passed through a per-scale Conv3d
``φ_k`` (``h ↦ h + conv(h)``); the result ``h_k`` is added to the approximation and
subtracted from the residual::

    ẑ_0 = 0,  r_0 = z
    for k:  e_k = lookup(down_{s_k}(r_{k-1}));  h_k = φ_k(up(e_k));  ẑ_k = ẑ_{k-1} + h_k;  r_k = r_{k-1} - h_k

The loss is averaged over the K steps: ``L = 1/K Σ_k ||sg[z] - ẑ_k||² + β ||z - sg[ẑ_k]||²``
(codebook loss + β × commitment loss, both as voxel means); the output passes gradients
straight through to ``z`` (``z + sg[ẑ_K - z]``). Codes are looked up on detached residuals.

The baselines are the same module with other settings, so all archs share one code path:

- :class:`VectorQuantiser` (VQ-VAE): one step at full resolution, no ``φ`` —
  ``L = ||sg[z] - e||² + β ||z - sg[e]||²``.
- :class:`ResidualQuantiser` (RQ-VAE): ``depth`` steps at full resolution, no ``φ``; the loss
  compares the cumulative approximation ``ẑ_d`` at each depth, as in RQ-VAE.

Codebook health: every lookup in training mode is counted (``counts``, reset by the training
loop each epoch); :meth:`stats` gives usage, perplexity and the number of dead codes, and
:meth:`reinit_dead` replaces dead codes by random recent quantiser inputs (kept in a small
reservoir), the usual cure for codebook collapse.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@dataclass
class QuantOut:
    """Result of a quantiser forward pass.

    z_q: ``(B, C, S, S, S)`` quantised latent (value ``ẑ_K``, gradient straight through to z);
    indices: one ``(B, s_k, s_k, s_k)`` long tensor of code indices per step;
    loss: scalar ``codebook_loss + β · commit_loss``; codebook_loss, commit_loss: scalars,
    each the mean over steps of the voxel-mean squared error between ``ẑ_k`` and ``z``.
    """

    z_q: Tensor
    indices: list[Tensor]
    loss: Tensor
    codebook_loss: Tensor
    commit_loss: Tensor
    steps: list[Tensor] = field(default_factory=list)  # h_k, (B, C, S, S, S) each


@dataclass
class CodebookStats:
    """Codebook health over the lookups counted since the last reset.

    usage: fraction of codes used at least once; perplexity: ``exp(entropy)`` of the code
    frequencies (equals the number of codes when all are used equally); dead: unused codes.
    """

    size: int
    used: int
    usage: float
    perplexity: float
    dead: int
    lookups: int

    def as_dict(self) -> dict[str, float]:
        return {"size": self.size, "used": self.used, "usage": self.usage,
                "perplexity": self.perplexity, "dead": self.dead, "lookups": self.lookups}


def nearest_code(x: Tensor, codebook: Tensor, chunk: int = 8192) -> Tensor:
    """Index of the nearest codebook row (Euclidean) for each row of ``x``.

    x: ``(N, C)``; codebook: ``(K, C)``. Returns ``(N,)`` long; ties go to the lowest index.
    Works in chunks of ``chunk`` rows so an ``N × K`` distance matrix is never held whole.
    """
    c2 = codebook.pow(2).sum(1)
    out = []
    for part in x.split(chunk):
        d = part.pow(2).sum(1, keepdim=True) - 2.0 * (part @ codebook.t()) + c2[None]
        out.append(d.argmin(1))
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.long, device=x.device)


def _to_rows(x: Tensor) -> Tensor:
    """``(B, C, s, s, s)`` → ``(B·s³, C)``."""
    return x.permute(0, 2, 3, 4, 1).reshape(-1, x.shape[1])


def _from_rows(rows: Tensor, b: int, s: int) -> Tensor:
    """``(B·s³, C)`` → ``(B, C, s, s, s)``."""
    return rows.reshape(b, s, s, s, -1).permute(0, 4, 1, 2, 3).contiguous()


class _Phi(nn.Module):
    """Per-scale refinement ``h ↦ h + conv3(h)`` (zero-initialised: identity at the start)."""

    def __init__(self, dim: int, kernel: int = 3):
        super().__init__()
        self.conv = nn.Conv3d(dim, dim, kernel, padding=kernel // 2)
        nn.init.zeros_(self.conv.weight)
        nn.init.zeros_(self.conv.bias)

    def forward(self, h: Tensor) -> Tensor:
        return h + self.conv(h)


class MultiScaleResidualQuantiser(nn.Module):
    """Recursive residual quantisation over perception scales (see the module docstring).

    dim: code vector length C; codebook_size: K codes (one codebook shared by all steps);
    scales: grid size of each step, coarse to fine; ``None`` (or a size ≥ the latent grid)
    means the full latent resolution; beta: commitment weight β; phi: use the per-scale
    Conv3d refinement; reservoir: how many recent inputs are kept for dead-code re-init.
    """

    def __init__(self, dim: int, codebook_size: int, scales: Sequence[int | None], beta: float = 0.25,
                 phi: bool = True, phi_kernel: int = 3, reservoir: int = 8192):
        super().__init__()
        if not scales:
            raise ValueError("a quantiser needs at least one scale")
        self.dim = int(dim)
        self.codebook_size = int(codebook_size)
        self.scales = [None if s is None else int(s) for s in scales]
        self.beta = float(beta)
        self.codebook = nn.Parameter(torch.randn(codebook_size, dim) / math.sqrt(dim))
        self.phis = nn.ModuleList([_Phi(dim, phi_kernel) for _ in self.scales]) if phi else None
        self.register_buffer("counts", torch.zeros(codebook_size, dtype=torch.float64), persistent=False)
        self.reservoir_size = int(reservoir)
        self._reservoir: Tensor | None = None

    # ----------------------------------------------------------------- core
    def _size(self, k: int, full: int) -> int:
        s = self.scales[k]
        return full if s is None or s >= full else s

    def _expand(self, k: int, e: Tensor, full: int) -> Tensor:
        """Codes on the step's grid ``(B, C, s, s, s)`` → contribution ``h_k`` at ``full³``."""
        if e.shape[-1] != full:
            e = F.interpolate(e, size=(full, full, full), mode="trilinear", align_corners=False)
        return self.phis[k](e) if self.phis is not None else e

    def forward(self, z: Tensor) -> QuantOut:
        """Quantise ``z`` ``(B, C, S, S, S)``; see :class:`QuantOut`."""
        with torch.autocast(device_type=z.device.type, enabled=False):
            return self._forward(z.float())

    def _forward(self, z: Tensor) -> QuantOut:
        b, c, full = z.shape[0], z.shape[1], z.shape[-1]
        if c != self.dim:
            raise ValueError(f"quantiser expects {self.dim} channels, got {c}")
        z_ng = z.detach()
        residual = z_ng.clone()
        z_hat = torch.zeros_like(z)
        indices, steps = [], []
        cb_loss = z.new_zeros(())
        commit = z.new_zeros(())
        for k in range(len(self.scales)):
            s = self._size(k, full)
            r_s = residual if s == full else F.interpolate(residual, size=(s, s, s), mode="area")
            rows = _to_rows(r_s)
            idx = nearest_code(rows, self.codebook.detach())
            if self.training:
                self._record(rows, idx)
            e = _from_rows(self.codebook[idx], b, s)
            h = self._expand(k, e, full)
            z_hat = z_hat + h
            residual = residual - h.detach()
            cb_loss = cb_loss + F.mse_loss(z_hat, z_ng)
            commit = commit + F.mse_loss(z_hat.detach(), z)
            indices.append(idx.reshape(b, s, s, s))
            steps.append(h)
        n = len(self.scales)
        cb_loss, commit = cb_loss / n, commit / n
        z_q = z + (z_hat - z).detach()
        return QuantOut(z_q=z_q, indices=indices, loss=cb_loss + self.beta * commit,
                        codebook_loss=cb_loss, commit_loss=commit, steps=steps)

    @torch.no_grad()
    def decode_indices(self, indices: Sequence[Tensor], full: int) -> Tensor:
        """The approximation ``ẑ_K`` ``(B, C, S, S, S)`` from per-step code indices."""
        z_hat = None
        for k, idx in enumerate(indices):
            b, s = idx.shape[0], idx.shape[-1]
            e = _from_rows(self.codebook[idx.reshape(-1)], b, s)
            h = self._expand(k, e, full)
            z_hat = h if z_hat is None else z_hat + h
        return z_hat

    # ----------------------------------------------------- codebook health
    @torch.no_grad()
    def _record(self, rows: Tensor, idx: Tensor) -> None:
        self.counts += torch.bincount(idx, minlength=self.codebook_size).to(self.counts)
        take = max(1, self.reservoir_size // (4 * len(self.scales)))
        if rows.shape[0] > take:
            rows = rows[torch.randperm(rows.shape[0], device=rows.device)[:take]]
        keep = rows.detach().float()
        self._reservoir = keep if self._reservoir is None else torch.cat([self._reservoir, keep])[-self.reservoir_size:]

    def reset_counts(self) -> None:
        """Start a new counting period (an epoch): zero the counts and empty the reservoir."""
        self.counts.zero_()
        self._reservoir = None

    def stats(self) -> CodebookStats:
        counts = self.counts.double()
        total = float(counts.sum())
        used = int((counts > 0).sum())
        if total > 0:
            p = counts[counts > 0] / total
            perplexity = float(torch.exp(-(p * p.log()).sum()))
        else:
            perplexity = 0.0
        return CodebookStats(size=self.codebook_size, used=used, usage=used / self.codebook_size,
                             perplexity=perplexity, dead=self.codebook_size - used, lookups=int(total))

    @torch.no_grad()
    def reinit_dead(self, generator: torch.Generator | None = None) -> int:
        """Replace every code unused since the last reset by a random recent input vector.

        Returns the number of codes replaced (0 when nothing was counted or no inputs are kept).
        """
        dead = (self.counts == 0).nonzero().flatten()
        if self.counts.sum() == 0 or dead.numel() == 0 or self._reservoir is None:
            return 0
        pool = self._reservoir.to(self.codebook.device)
        pick = torch.randint(pool.shape[0], (dead.numel(),), generator=generator).to(pool.device)
        self.codebook.data[dead] = pool[pick].to(self.codebook.dtype)
        return int(dead.numel())

    @torch.no_grad()
    def init_from(self, z: Tensor, generator: torch.Generator | None = None) -> None:
        """Data-dependent initialisation: every code becomes a random vector of ``z``'s grid.

        z: ``(B, C, S, S, S)`` encoder outputs. Called once before training starts.
        """
        rows = _to_rows(z.detach().float())
        pick = torch.randint(rows.shape[0], (self.codebook_size,), generator=generator).to(rows.device)
        self.codebook.data.copy_(rows[pick])


class VectorQuantiser(MultiScaleResidualQuantiser):
    """VQ-VAE quantiser: one nearest-code lookup per latent vector at full resolution."""

    def __init__(self, dim: int, codebook_size: int, beta: float = 0.25, reservoir: int = 8192):
        super().__init__(dim, codebook_size, [None], beta=beta, phi=False, reservoir=reservoir)


class ResidualQuantiser(MultiScaleResidualQuantiser):
    """RQ-VAE quantiser: ``depth`` residual lookups per vector, one shared codebook."""

    def __init__(self, dim: int, codebook_size: int, depth: int = 4, beta: float = 0.25, reservoir: int = 8192):
        super().__init__(dim, codebook_size, [None] * int(depth), beta=beta, phi=False, reservoir=reservoir)

"""Euler samplers for a rectified-flow prior: unconditional and posterior (CryoFM Alg. 1 & 2).

Flow convention of :mod:`cryovox.models.flow.flow`: ``x̂_0 = x_t + t·v`` and one Euler step from
``t`` to ``t − Δ`` is ``x ← x + Δ·v``, on the uniform grid ``t = 1, 1 − 1/N, …, 0``.

Posterior sampling (Alg. 1, flow posterior sampling): at each step the likelihood term
``L(x̂_0)`` (a negative log-likelihood of the observation, given as a closure) is
differentiated with respect to ``x_t`` *through the network* (DPS), the gradient is normalised
and subtracted from the velocity:

    v' = v − ζ(t) · s · g / rms(g),     ζ(t) = min(ζ_max, t / (1 − t)),

``rms(g)`` is the root-mean-square over the voxels of one sample, so ``g / rms(g)`` has unit
size per voxel whatever the box, and ``s`` is the ``guidance_scale`` (default 1). The public
CryoFM2 code divides the gradient by its Euclidean norm and multiplies by ``lamb_base = 1000``,
i.e. ``s = 1000 / √n`` for ``n`` voxels per sample (:func:`default_guidance_scale`: 1.95 at 64³,
8.5 at 24³; pass ``guidance_scale=None`` for it). On our CPU-scale benchmark (24³ windows, a
weak prior) that made the samples reproduce the noisy data; ``s = 1`` did best of 1, 2, 4, 8.5.
With ``backprop=False`` the gradient is taken with respect to ``x̂_0`` directly (no backward
pass through the network; about 3× cheaper, a cruder direction).

Alg. 2 (data consistency by projection): ``projection(x̂_0)`` replaces the observed part of
``x̂_0`` (e.g. the measured Fourier components, through the degradation operator's
pseudo-inverse) and the velocity is recomputed as ``v' = (x̃_0 − x_t) / t``, which is the
rectified-flow velocity that lands on ``x̃_0``.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

__all__ = ["time_grid", "guidance_weight", "default_guidance_scale", "flow_sample", "Likelihood", "Projection"]

Velocity = Callable[[Tensor, Tensor], Tensor]
Likelihood = Callable[[Tensor, float], Tensor]     # (x̂_0 (B, 1, D, D, D), t) → loss (B,) or scalar
Projection = Callable[[Tensor, float], Tensor]     # (x̂_0, t) → x̃_0 with the observed part filled in


def time_grid(steps: int) -> list[float]:
    """``steps + 1`` times from 1 down to 0, equally spaced."""
    if steps < 1:
        raise ValueError(f"steps must be ≥ 1, got {steps}")
    return [1.0 - i / steps for i in range(steps + 1)]


def guidance_weight(t: float, zeta_max: float = 5.0) -> float:
    """``min(ζ_max, t / (1 − t))``: strong guidance near noise, none at the data end."""
    if t >= 1.0:
        return float(zeta_max)
    return float(min(zeta_max, t / (1.0 - t)))


def default_guidance_scale(n_voxels: int) -> float:
    """``1000 / √n``: the public CryoFM2 code's ``lamb_base = 1000`` times a unit-norm gradient, per voxel."""
    return 1000.0 / float(n_voxels) ** 0.5


def _rms(g: Tensor) -> Tensor:
    return g.flatten(1).pow(2).mean(1).sqrt().clamp_min(1e-30).reshape(-1, *([1] * (g.ndim - 1)))


def flow_sample(velocity: Velocity, x1: Tensor, steps: int = 1000, *,
                likelihood: Likelihood | None = None, projection: Projection | None = None,
                zeta_max: float = 5.0, guidance_scale: float | None = 1.0, backprop: bool = True,
                on_step: Callable[[int, float], None] | None = None) -> Tensor:
    """Integrate the (guided) flow from ``x1`` ``(B, 1, D, D, D)`` at t = 1 to t = 0.

    velocity: ``v_θ(x, t (B,))``; likelihood / projection: see the module docstring (either,
    both or neither: without them this is unconditional generation). ``on_step(i, t)`` is called
    after each step (progress reporting). Returns the samples at t = 0 (detached).
    """
    ts = time_grid(steps)
    x = x1.detach()
    B = x.shape[0]
    scale = default_guidance_scale(x[0].numel()) if guidance_scale is None else float(guidance_scale)
    for i in range(steps):
        t, t_next = ts[i], ts[i + 1]
        dt = t - t_next
        tb = torch.full((B,), t, device=x.device, dtype=torch.float32)
        if likelihood is not None:
            with torch.enable_grad():
                xg = x.detach().requires_grad_(backprop)
                v = velocity(xg, tb).float()
                x0 = xg + t * v
                if not backprop:
                    x0 = x0.detach().requires_grad_(True)
                loss = likelihood(x0, t)
                g, = torch.autograd.grad(loss.sum(), xg if backprop else x0)
            v = v.detach() - guidance_weight(t, zeta_max) * scale * g / _rms(g)
        else:
            with torch.no_grad():
                v = velocity(x, tb).float()
        if projection is not None and t > 0:
            with torch.no_grad():
                x0 = projection((x + t * v).detach(), t)
                v = (x0 - x) / t
        x = (x + dt * v).detach()
        if on_step is not None:
            on_step(i, t_next)
    return x

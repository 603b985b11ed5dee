"""Latent diffusion on Cryo-SWAN latent grids, conditioned on an anchor (classifier-free guidance).

The data ``x_0`` is a map's quantised latent grid ``(B, C_lat, S, S, S)`` (for ``swan`` the fine
latent stacked with the up-sampled coarse one, see
:meth:`~cryovox.models.swan.autoencoder.SwanAutoencoder.latent_grid`), normalised per channel by
the training set's mean and standard deviation (stored in the model).

The condition is the anchor's latent grid low-passed by average pooling over ``cond_pool³``
blocks (then up-sampled back, nearest): the anchor's overall shape, leaving the details to the
sampler. It enters the 3D U-Net (:class:`cryovox.models.unet3d.UNet3D`) as extra input
channels, plus a flag (1 = conditioned, 0 = null) through the U-Net's condition vector.
During training the condition is dropped (zeros, flag 0) with probability ``p_uncond``, so one
network learns both ε(x_t, c) and ε(x_t, ∅). Sampling uses classifier-free guidance
(Ho & Salimans 2022)::

    ε̃ = (1 + w) · ε(x_t, c) − w · ε(x_t, ∅)

``w = 0`` is the plain conditional model, larger ``w`` sticks closer to the anchor, ``w = -1``
ignores it (unconditional samples).

Forward process: DDPM with the cosine schedule of Nichol & Dhariwal (2021), ``T`` steps,
ε-prediction, MSE loss. Sampling: DDIM-style strided updates over ``steps`` ≤ T steps with
stochasticity ``eta`` (``eta = 1`` and ``steps = T`` is the ancestral DDPM sampler). Near
``t = T`` the schedule's ᾱ is tiny (≈ 2·10⁻⁶), so the predicted ``x̂_0 = (x_t − √(1−ᾱ) ε̂)/√ᾱ``
amplifies any error of ε̂ a hundredfold; as in DDPM/DDIM practice (``clip_denoised``) x̂_0 is
clipped to the range of the training latents (``bound``, stored with the model) and ε̂ is
recomputed from the clipped x̂_0.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cryovox.models.unet3d import UNet3D


@dataclass
class DiffusionConfig:
    """latent_channels / latent_size: shape of ``x_0`` (C_lat, S); cond_pool: pooling of the
    anchor condition (1 = the anchor's full latent); timesteps: T; base / mults /
    num_res_blocks / attention: U-Net layout; p_uncond: condition drop rate in training."""

    latent_channels: int
    latent_size: int
    cond_pool: int = 2
    timesteps: int = 1000
    base: int = 64
    mults: tuple[int, ...] = (1, 2)
    num_res_blocks: int = 1
    attention: bool = True
    p_uncond: float = 0.1

    def __post_init__(self) -> None:
        self.mults = tuple(int(m) for m in self.mults)
        if self.latent_size % self.cond_pool:
            raise ValueError(f"latent grid {self.latent_size} is not divisible by cond_pool {self.cond_pool}")
        if self.latent_size % (2 ** (len(self.mults) - 1)):
            raise ValueError(f"latent grid {self.latent_size} is not divisible by the U-Net's "
                             f"{2 ** (len(self.mults) - 1)} (mults {self.mults})")

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["mults"] = list(self.mults)
        return d


def cosine_alphas_cumprod(timesteps: int, s: float = 0.008) -> Tensor:
    """ᾱ_t for t = 1 … T (Nichol & Dhariwal's cosine schedule, betas clipped at 0.999), float64 ``(T,)``."""
    steps = torch.arange(timesteps + 1, dtype=torch.float64) / timesteps
    f = torch.cos((steps + s) / (1 + s) * math.pi / 2) ** 2
    abar = f / f[0]
    betas = (1 - abar[1:] / abar[:-1]).clamp(max=0.999)
    return torch.cumprod(1 - betas, 0)


class LatentDDPM(nn.Module):
    """Anchor-conditioned DDPM on latent grids (see the module docstring)."""

    def __init__(self, cfg: DiffusionConfig):
        super().__init__()
        self.cfg = cfg
        c = cfg.latent_channels
        self.net = UNet3D(2 * c, c, base=cfg.base, mults=cfg.mults, cond_dim=1,
                          num_res_blocks=cfg.num_res_blocks, attention=cfg.attention, time_scale=1000.0)
        self.register_buffer("alphas_cumprod", cosine_alphas_cumprod(cfg.timesteps).float())
        self.register_buffer("mean", torch.zeros(c))
        self.register_buffer("std", torch.ones(c))
        self.register_buffer("bound", torch.tensor(float("inf")))

    # ---------------------------------------------------------- data space
    def set_normalisation(self, mean: Tensor, std: Tensor, bound: float | None = None) -> None:
        """Per-channel statistics ``(C_lat,)`` of the training latents and the largest absolute
        value of the normalised training latents (the clip range of x̂_0 in sampling)."""
        self.mean.copy_(mean)
        self.std.copy_(std.clamp_min(1e-6))
        if bound is not None:
            self.bound.fill_(float(bound))

    def normalise(self, latent: Tensor) -> Tensor:
        return (latent - self.mean[:, None, None, None]) / self.std[:, None, None, None]

    def denormalise(self, x: Tensor) -> Tensor:
        return x * self.std[:, None, None, None] + self.mean[:, None, None, None]

    def condition(self, x0: Tensor) -> Tensor:
        """The anchor condition of normalised latents ``(B, C, S³)``: block average over
        ``cond_pool³``, up-sampled back to ``S³`` (nearest)."""
        p = self.cfg.cond_pool
        if p == 1:
            return x0
        return F.interpolate(F.avg_pool3d(x0, p), scale_factor=p, mode="nearest")

    # ------------------------------------------------------------- network
    def _eps(self, x_t: Tensor, t: Tensor, cond: Tensor, flag: Tensor) -> Tensor:
        tt = t.float() / self.cfg.timesteps
        return self.net(torch.cat([x_t, cond * flag[:, None, None, None, None]], 1), tt, flag[:, None])

    def loss(self, x0: Tensor, cond: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """ε-prediction MSE on normalised latents ``x0`` with conditions ``cond`` (both ``(B, C, S³)``)."""
        b = x0.shape[0]
        dev = x0.device
        t = torch.randint(0, self.cfg.timesteps, (b,), generator=generator).to(dev)
        noise = torch.randn(x0.shape, generator=generator).to(dev, x0.dtype)
        keep = (torch.rand(b, generator=generator) >= self.cfg.p_uncond).to(dev, x0.dtype)
        ab = self.alphas_cumprod[t].to(x0.dtype)[:, None, None, None, None]
        x_t = ab.sqrt() * x0 + (1 - ab).sqrt() * noise
        return F.mse_loss(self._eps(x_t, t, cond, keep).float(), noise.float())

    def forward(self, x0: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Training loss of normalised latents ``x0``, each conditioned on itself as the anchor
        (:meth:`condition`); the method DDP calls."""
        return self.loss(x0, self.condition(x0), generator)

    def guided_eps(self, x_t: Tensor, t: Tensor, cond: Tensor, guidance: float) -> Tensor:
        """``(1 + w) ε(x_t, c) − w ε(x_t, ∅)`` (one batched network call)."""
        b = x_t.shape[0]
        if guidance == 0:
            return self._eps(x_t, t, cond, torch.ones(b, device=x_t.device, dtype=x_t.dtype))
        flag = torch.cat([torch.ones(b), torch.zeros(b)]).to(x_t.device, x_t.dtype)
        both = self._eps(torch.cat([x_t, x_t]), torch.cat([t, t]), torch.cat([cond, cond]), flag)
        eps_c, eps_u = both[:b], both[b:]
        return (1 + guidance) * eps_c - guidance * eps_u

    @torch.no_grad()
    def sample(self, cond: Tensor, steps: int = 100, guidance: float = 1.0, eta: float = 1.0,
               generator: torch.Generator | None = None) -> Tensor:
        """Draw normalised latents ``(B, C, S³)`` given conditions ``cond`` ``(B, C, S³)``.

        steps: number of denoising steps (evenly spaced over T); guidance: w (module docstring);
        eta: 0 = deterministic DDIM, 1 = DDPM-like ancestral noise.
        """
        T = self.cfg.timesteps
        steps = max(1, min(int(steps), T))
        ts = torch.linspace(T - 1, 0, steps).round().long().unique_consecutive()
        x = torch.randn(cond.shape, generator=generator).to(cond.device, cond.dtype)
        abar = self.alphas_cumprod.double()
        for i, t in enumerate(ts):
            tb = torch.full((cond.shape[0],), int(t), device=cond.device, dtype=torch.long)
            eps = self.guided_eps(x, tb, cond, guidance).to(x.dtype)
            a_t = float(abar[t])
            a_prev = float(abar[ts[i + 1]]) if i + 1 < len(ts) else 1.0
            x0 = (x - math.sqrt(1 - a_t) * eps) / math.sqrt(a_t)
            if torch.isfinite(self.bound):
                x0 = x0.clamp(-float(self.bound), float(self.bound))
                eps = (x - math.sqrt(a_t) * x0) / math.sqrt(1 - a_t)
            sigma = eta * math.sqrt(max(0.0, (1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev)))
            direction = math.sqrt(max(0.0, 1 - a_prev - sigma**2)) * eps
            x = math.sqrt(a_prev) * x0 + direction
            if sigma > 0:
                x = x + sigma * torch.randn(x.shape, generator=generator).to(x.device, x.dtype)
        return x


def diffusion_from_state(state: dict[str, Any]) -> LatentDDPM:
    """Rebuild a model from a ``swan-diffusion`` checkpoint dict (``config`` + ``model``)."""
    model = LatentDDPM(DiffusionConfig(**state["config"]))
    model.load_state_dict(state["model"])
    return model

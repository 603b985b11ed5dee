"""Rectified flow on density maps: objective, EMA weights, density normalisation, the prior object.

Flow convention (CryoFM's): ``x_t = (1 − t)·x_0 + t·x_1`` with ``x_0`` a (normalised) map and
``x_1 ~ N(0, I)``; the network ``v_θ(x_t, t)`` regresses the velocity ``x_0 − x_1`` (pointing
from noise to data), so the clean-map estimate at any ``t`` is ``x̂_0 = x_t + t·v`` and sampling
integrates from ``t = 1`` (noise) to ``t = 0`` (data): ``x_{t−Δ} = x_t + Δ·v``.

Density normalisation (:class:`DensityNorm`), per map, as CryoFM's "ClipNorm" plus a
dataset-level standardisation: subtract the map's background level (median of the voxels
outside a sphere of radius 0.45·D: 0 for EMDB maps, the constant solvent value of the
zero-mean maps written by ``cryovox curate``), clip to ``[0, q]`` where ``q`` is the map's
99.999th percentile, divide by ``q`` (→ [0, 1]) and standardise with the training set's mean
and standard deviation of those values (CryoFM's constants 0.04 / 0.09 by default; measured on
the corpus by ``train-flow`` and stored in the model file). Observations given to the samplers
are transformed with the same affine map but never clipped (clipping a noisy map biases it).
"""

from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from cryovox.utils.files import to_plain

__all__ = ["DensityNorm", "MapScale", "flow_loss", "sample_flow_time", "EMA", "FlowPrior", "build_velocity_model",
           "PRIOR_KIND"]

PRIOR_KIND = "flow-prior"


@dataclass
class MapScale:
    """Per-map affine normalisation: ``normalised = ((x − offset) / scale − mean) / std``."""

    offset: float
    scale: float


@dataclass
class DensityNorm:
    """Normalisation of density maps (see module docstring); ``mean``/``std`` are dataset-level."""

    percentile: float = 99.999
    mean: float = 0.04
    std: float = 0.09
    background_radius: float = 0.45

    def fit(self, vol: Tensor) -> MapScale:
        """Background offset and peak scale of one map ``(D, D, D)`` (or a stack ``(..., D, D, D)``: first map)."""
        v = vol.detach().reshape(-1, *vol.shape[-3:])[0].to(torch.float32)
        D = v.shape[-1]
        k = torch.arange(D, device=v.device, dtype=torch.float32) - D // 2
        r = torch.sqrt(k[:, None, None] ** 2 + k[None, :, None] ** 2 + k[None, None, :] ** 2)
        outside = v[r > self.background_radius * D]
        offset = float(outside.median()) if outside.numel() > 0 else 0.0
        shifted = (v - offset).flatten()
        q = float(torch.quantile(shifted[:: max(1, shifted.numel() // 2_000_000)].double(), self.percentile / 100.0))
        if not math.isfinite(q) or q <= 0:
            q = float(shifted.abs().max()) or 1.0
        return MapScale(offset=offset, scale=q)

    def normalize(self, vol: Tensor, s: MapScale, clip: bool = False) -> Tensor:
        x = (vol - s.offset) / s.scale
        if clip:
            x = x.clamp(0.0, 1.0)
        return (x - self.mean) / self.std

    def denormalize(self, z: Tensor, s: MapScale) -> Tensor:
        return (z * self.std + self.mean) * s.scale + s.offset

    def noise_scale(self, s: MapScale) -> float:
        """Factor by which normalisation multiplies noise amplitudes (variances: its square)."""
        return 1.0 / (s.scale * self.std)

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


def sample_flow_time(n: int, *, strategy: str = "uniform", generator: torch.Generator | None = None,
                     device=None) -> Tensor:
    """Training times ``(n,)`` in [0, 1]: ``uniform`` (CryoFM's default) or ``logit-normal`` (SD3)."""
    if strategy == "uniform":
        t = torch.rand(n, generator=generator)
    elif strategy == "logit-normal":
        t = torch.sigmoid(torch.randn(n, generator=generator))
    else:
        raise ValueError(f"unknown time sampling {strategy!r} (uniform | logit-normal)")
    return t.to(device)


def flow_loss(model: nn.Module, x0: Tensor, *, t: Tensor | None = None, noise: Tensor | None = None,
              strategy: str = "uniform", generator: torch.Generator | None = None) -> Tensor:
    """Rectified-flow regression loss (mean squared error per voxel), a scalar.

    x0: ``(B, 1, D, D, D)`` normalised maps; ``t`` ``(B,)`` and ``noise`` (like x0) are drawn when
    not given. Loss = mean ``|v_θ(x_t, t) − (x_0 − x_1)|²``.
    """
    B = x0.shape[0]
    if t is None:
        t = sample_flow_time(B, strategy=strategy, generator=generator, device=x0.device)
    if noise is None:
        noise = torch.randn(x0.shape, generator=generator).to(x0.device, x0.dtype) if generator is not None \
            else torch.randn_like(x0)
    tt = t.to(x0.dtype).reshape(B, *([1] * (x0.ndim - 1)))
    xt = (1 - tt) * x0 + tt * noise
    v = model(xt, t)
    return (v.float() - (x0 - noise).float()).pow(2).mean()


class EMA:
    """Exponential moving average of a model's parameters (and a copy of its buffers).

    ``decay_t = min(decay, (1 + n) / (10 + n))`` after ``n`` updates (warm-up, so early
    averages are not dominated by the random initialisation).
    """

    def __init__(self, model: nn.Module, decay: float = 0.999):
        self.decay = float(decay)
        self.updates = 0
        self.shadow = copy.deepcopy(model).eval()
        for p in self.shadow.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.updates += 1
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        for s, p in zip(self.shadow.parameters(), model.parameters()):
            s.lerp_(p.detach().to(s.dtype), 1 - d)
        for s, b in zip(self.shadow.buffers(), model.buffers()):
            s.copy_(b)

    def state_dict(self) -> dict[str, Any]:
        return {"decay": self.decay, "updates": self.updates, "weights": self.shadow.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.decay = float(state["decay"])
        self.updates = int(state["updates"])
        self.shadow.load_state_dict(state["weights"])


def build_velocity_model(arch: str, config: dict[str, Any]) -> nn.Module:
    """The network ``(x (B,1,D,D,D), t (B,)) → (B,1,D,D,D)`` for ``arch`` ``hdit`` or ``unet``.

    ``config``: for ``hdit`` the fields of :class:`~cryovox.models.flow.hdit.HDiTConfig`; for
    ``unet`` the keyword arguments of :class:`~cryovox.models.unet3d.UNet3D` (``base``, ``mults``,
    ``num_res_blocks``, ``attention``); in/out channels are 1.
    """
    if arch == "hdit":
        from cryovox.models.flow.hdit import HDiT3D, HDiTConfig

        return HDiT3D(HDiTConfig(**config))
    if arch == "unet":
        from cryovox.models.unet3d import UNet3D

        cfg = dict(config)
        return UNet3D(1, 1, cfg.pop("base", 32), tuple(cfg.pop("mults", (1, 2, 4))), None, **cfg)
    raise ValueError(f"unknown flow architecture {arch!r} (hdit | unet)")


def model_divisor(model: nn.Module) -> int:
    """Spatial sizes the velocity network accepts are multiples of this."""
    cfg = getattr(model, "cfg", None)
    if cfg is not None and hasattr(cfg, "divisor"):
        return int(cfg.divisor)
    return int(getattr(model, "divisor", 1))


@dataclass
class FlowPrior:
    """A trained flow prior: the (EMA) velocity network plus what is needed to use it.

    box: edge length of the training crops (the sampling window); apix: pixel size in Å of the
    training maps (inputs are resampled to it); norm: the density normalisation.
    """

    model: nn.Module
    arch: str
    config: dict[str, Any]
    norm: DensityNorm = field(default_factory=DensityNorm)
    box: int = 64
    apix: float = 1.5

    @property
    def divisor(self) -> int:
        return model_divisor(self.model)

    def velocity(self, x: Tensor, t: Tensor | float) -> Tensor:
        """``v_θ(x_t, t)`` for ``x`` ``(B, 1, D, D, D)`` and ``t`` scalar or ``(B,)``."""
        t = torch.as_tensor(t, dtype=torch.float32, device=x.device)
        if t.ndim == 0:
            t = t.expand(x.shape[0])
        return self.model(x, t)

    def state(self) -> dict[str, Any]:
        """The checkpoint payload (kind ``flow-prior``) of this prior's weights and metadata."""
        return {"arch": self.arch, "config": to_plain(self.config), "norm": self.norm.to_dict(),
                "box": int(self.box), "apix": float(self.apix), "weights": self.model.state_dict()}

    @classmethod
    def from_state(cls, state: dict[str, Any], device=None) -> "FlowPrior":
        model = build_velocity_model(state["arch"], state["config"])
        model.load_state_dict(state["weights"])
        model.to(device or "cpu").eval()
        for p in model.parameters():
            p.requires_grad_(False)
        return cls(model=model, arch=state["arch"], config=state["config"], norm=DensityNorm(**state["norm"]),
                   box=int(state["box"]), apix=float(state["apix"]))

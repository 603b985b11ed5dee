"""Heterogeneity models: the interface that ``train-hetero``, ``analyze`` and ``eval-vol`` use.

A model is a :class:`HeteroModel` (a ``torch.nn.Module``) with a class attribute ``kind`` (the
string stored in its checkpoints, e.g. ``"sfbp"``) and four jobs:

* :meth:`HeteroModel.encode` — a batch of particles → posterior ``(mu, logvar)`` of ``z``,
  each ``(B, zdim)``;
* :meth:`HeteroModel.loss` — the training objective of one batch (:class:`LossTerms`);
* :meth:`HeteroModel.decode_fourier` — ``z`` ``(n, zdim)`` → Fourier volumes
  ``(n, D, D, D // 2 + 1)`` complex in the :func:`cryovox.core.fft.rfftn_c` layout, in the units
  of the images' transforms (the central slice at a pose is the noise-free, CTF-free image);
* :meth:`HeteroModel.decode_volume` — ``z`` → real-space maps ``(n, D, D, D)`` ``[z, y, x]``,
  at the input pixel size, ready to write as MRC.

A batch is the dict made by :class:`cryovox.data.particles.ParticleDataset` (see there: centred
Fourier images, CTF, rotations, shifts, indices). ``config()`` returns plain values from which
``build_model(kind, config)`` rebuilds the model; checkpoints store ``kind``, ``config`` and the
``state_dict``, so any registered model loads with :func:`model_from_checkpoint`.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor

from cryovox.errors import InputError

# kind → "module:Class"; models register here (a second model adds one line)
MODELS: dict[str, str] = {
    "sfbp": "cryovox.models.hetero:SFBPModel",
    "cryoformer": "cryovox.models.cryoformer:CryoFormerModel",
}


@dataclass
class LossTerms:
    """One batch's objective.

    total: scalar to minimise (mean over the batch of ``nll + beta * kl``);
    nll, kl: ``(B,)`` per-particle negative log-likelihood and KL divergence (nats);
    mu, logvar: ``(B, zdim)`` posterior parameters (``mu`` is what ``z.N.pkl`` stores).
    """

    total: Tensor
    nll: Tensor
    kl: Tensor
    mu: Tensor
    logvar: Tensor


class HeteroModel(torch.nn.Module):
    """Base class of heterogeneity models (see the module docstring)."""

    kind: ClassVar[str] = ""
    zdim: int
    box: int
    apix: float

    def config(self) -> dict[str, Any]:
        raise NotImplementedError

    def encode(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def loss(self, batch: dict[str, Tensor], *, beta: float = 1.0,
             generator: torch.Generator | None = None) -> LossTerms:
        raise NotImplementedError

    def decode_fourier(self, z: Tensor) -> Tensor:
        raise NotImplementedError

    def decode_volume(self, z: Tensor) -> Tensor:
        raise NotImplementedError

    def param_groups(self, lr: float, basis_lr: float | None = None) -> list[dict[str, Any]]:
        """Optimizer parameter groups (default: one group at ``lr``)."""
        return [{"params": [p for p in self.parameters() if p.requires_grad], "lr": lr}]

    def prepare(self, stats: dict[str, Tensor], consensus: Tensor | None = None, batches=None,
                n_particles: int = 1) -> None:
        """Set data-derived quantities before training.

        stats: sums of :func:`cryovox.models.hetero.loss.data_spectra` over (a subset of) the
        particles; consensus: a ``(D, D, D)`` map reconstructed from the same particles (or None);
        batches: an iterable of dataset batches of that subset; n_particles: the data set's size.
        """


def model_class(kind: str) -> type[HeteroModel]:
    """The registered class for ``kind``; InputError for an unknown kind."""
    if kind not in MODELS:
        known = ", ".join(sorted(MODELS))
        raise InputError(f"model kind {kind!r} is not a cryovox heterogeneity model (known: {known})")
    module, name = MODELS[kind].split(":")
    return getattr(importlib.import_module(module), name)


def build_model(kind: str, config: dict[str, Any]) -> HeteroModel:
    """A fresh model of ``kind`` from its ``config()`` values."""
    return model_class(kind)(**config)


def model_from_checkpoint(state: dict[str, Any], source: str = "checkpoint") -> HeteroModel:
    """Rebuild the model stored in a loaded checkpoint dict (``kind``, ``config``, ``model``).

    InputError (naming ``source``) when the checkpoint is not a heterogeneity model's.
    """
    kind = state.get("kind")
    if kind not in MODELS or "config" not in state or "model" not in state:
        known = ", ".join(sorted(MODELS))
        raise InputError(f"{source}: checkpoint of a {kind} model; a heterogeneity model ({known}) is needed")
    model = build_model(kind, dict(state["config"]))
    model.load_state_dict(state["model"])
    return model

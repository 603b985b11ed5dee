"""Voxel-wise comparison of a map with a reference: MSE, PSNR, IoU and F1 of binarised maps.

All functions take ``pred`` and ``target`` of the same shape ``(..., D, D, D)`` (any number of
leading batch axes) and return one value per map, shape ``(...)``.

- MSE is the voxel mean of ``(pred - target)²``.
- PSNR is ``10 log10(range² / MSE)`` dB with ``range = max(target) - min(target)`` of each
  reference map (the dynamic range of the ground truth, as in image-restoration papers;
  normalised maps have no fixed peak value).
- IoU and F1 compare the binary maps ``pred > τ`` and ``target > τ``. The threshold τ is the
  same for both maps; by default (:func:`default_threshold`) it is ``mean + 1 σ`` of each
  *reference* map, which on zero-mean, unit-variance corpus maps is τ = 1.0 — a contour that
  encloses the molecule and excludes solvent noise. IoU = |P∩T| / |P∪T|,
  F1 = 2|P∩T| / (|P| + |T|) (the Dice coefficient). Both are 1.0 when both masks are empty.

FSC-based figures (resolution at 0.5, FSC-AUC) are in :mod:`cryovox.core.fsc`.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["mse", "psnr", "default_threshold", "binarise", "iou", "f1"]

SIGMA_THRESHOLD = 1.0  # τ = mean + SIGMA_THRESHOLD · std of the reference map


def _check(pred: Tensor, target: Tensor) -> None:
    if pred.shape != target.shape:
        raise ValueError(f"maps differ in shape: {tuple(pred.shape)} vs {tuple(target.shape)}")
    if pred.dim() < 3:
        raise ValueError(f"expected (..., D, D, D) maps, got {tuple(pred.shape)}")


def mse(pred: Tensor, target: Tensor) -> Tensor:
    """Voxel-mean squared error per map, ``(...)``."""
    _check(pred, target)
    return (pred.double() - target.double()).pow(2).mean(dim=(-3, -2, -1))


def psnr(pred: Tensor, target: Tensor) -> Tensor:
    """Peak signal-to-noise ratio in dB per map, with the peak = the reference's dynamic range."""
    err = mse(pred, target)
    t = target.double().flatten(-3)
    rng = t.amax(-1) - t.amin(-1)
    return 10.0 * torch.log10(rng.pow(2) / err)


def default_threshold(target: Tensor, sigmas: float = SIGMA_THRESHOLD) -> Tensor:
    """``mean + sigmas · std`` of each reference map, ``(...)`` (1.0 for normalised maps)."""
    t = target.double().flatten(-3)
    return t.mean(-1) + sigmas * t.std(-1, unbiased=False)


def binarise(x: Tensor, threshold: Tensor | float) -> Tensor:
    """Boolean map ``x > threshold``; ``threshold`` is a number or one value per map ``(...)``."""
    thr = torch.as_tensor(threshold, dtype=torch.float64, device=x.device)
    return x.double() > thr[..., None, None, None]


def _masks(pred: Tensor, target: Tensor, threshold: Tensor | float | None) -> tuple[Tensor, Tensor]:
    _check(pred, target)
    thr = default_threshold(target) if threshold is None else threshold
    return binarise(pred, thr).flatten(-3), binarise(target, thr).flatten(-3)


def iou(pred: Tensor, target: Tensor, threshold: Tensor | float | None = None) -> Tensor:
    """Intersection over union of the maps binarised at ``threshold`` (default: module docstring)."""
    p, t = _masks(pred, target, threshold)
    inter = (p & t).sum(-1).double()
    union = (p | t).sum(-1).double()
    return torch.where(union > 0, inter / union.clamp_min(1), torch.ones_like(union))


def f1(pred: Tensor, target: Tensor, threshold: Tensor | float | None = None) -> Tensor:
    """F1 score (Dice) of the maps binarised at ``threshold`` (default: module docstring)."""
    p, t = _masks(pred, target, threshold)
    inter = (p & t).sum(-1).double()
    total = (p.sum(-1) + t.sum(-1)).double()
    return torch.where(total > 0, 2 * inter / total.clamp_min(1), torch.ones_like(total))

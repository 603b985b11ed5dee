"""CryoFormer's orientation encoder: a particle → rotation (6D representation) and 2D shift.

Rotations are predicted in the continuous 6D representation of Zhou et al. (CVPR 2019): two
3-vectors ``a₁, a₂`` → Gram–Schmidt ``b₁ = a₁/|a₁|``, ``b₂ = normalise(a₂ − (b₁·a₂) b₁)``,
``b₃ = b₁ × b₂``; the matrix has columns ``(b₁, b₂, b₃)``. The 6D vector of a matrix is its first
two columns, so ``sixd_to_matrix(matrix_to_sixd(R)) = R``.

:class:`OrientationEncoder` is an MLP on the particle's encoder image (see
:func:`cryovox.models.hetero.encoder.encoder_images`) and its input pose (6D of ``R`` and the shift
as a fraction of the box). Its output is read as a correction of the input pose:
``R̂ = sixd_to_matrix(6D(R_in) + Δ)``, ``t̂ = t_in + D · δ`` (pixels), so that a network that has
learnt to output zero reproduces the input poses. It is first trained on the input poses with
the pose loss of CryoFormer (:func:`pose_loss`, ``‖R̂ − R_in‖²_F + ‖(t̂ − t_in)/D‖²``), then the image
loss refines it (in :class:`cryovox.models.cryoformer.CryoFormerModel` by following the poses of the
model's local pose search through the same pose loss; its output is one of the search's candidates).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def sixd_to_matrix(d6: Tensor) -> Tensor:
    """``(..., 6)`` (first column, then second column) → ``(..., 3, 3)`` rotation matrices (Gram–Schmidt)."""
    a1, a2 = d6[..., :3], d6[..., 3:]
    b1 = F.normalize(a1, dim=-1)
    b2 = F.normalize(a2 - (b1 * a2).sum(-1, keepdim=True) * b1, dim=-1)
    b3 = torch.cross(b1, b2, dim=-1)
    return torch.stack([b1, b2, b3], -1)


def matrix_to_sixd(R: Tensor) -> Tensor:
    """``(..., 3, 3)`` → ``(..., 6)``: the first two columns."""
    return torch.cat([R[..., :, 0], R[..., :, 1]], -1)


def pose_loss(R_hat: Tensor, t_hat: Tensor, R: Tensor, t: Tensor, box: int) -> Tensor:
    """CryoFormer's pose loss per particle: ``‖R̂ − R‖²_F + ‖(t̂ − t)/D‖²`` → ``(B,)``.

    R_hat, R: ``(B, 3, 3)``; t_hat, t: ``(B, 2)`` shifts in pixels; box: ``D``.
    """
    return ((R_hat - R) ** 2).sum((-2, -1)) + (((t_hat - t) / box) ** 2).sum(-1)


class OrientationEncoder(nn.Module):
    """MLP: encoder image ``(B, n_in)`` + input pose → refined pose (see the module docstring).

    n_in: image features; width/layers: hidden layers; box: ``D`` (px), to scale the shifts;
    out_scale: initial scale of the last layer (small: the encoder starts near the input poses).
    """

    def __init__(self, n_in: int, box: int, width: int = 256, layers: int = 3, out_scale: float = 0.01):
        super().__init__()
        dims = [n_in + 8] + [width] * layers
        mods: list[nn.Module] = []
        for a, b in zip(dims[:-1], dims[1:]):
            mods += [nn.Linear(a, b), nn.ReLU()]
        last = nn.Linear(width, 8)
        with torch.no_grad():
            last.weight.mul_(out_scale)
            last.bias.mul_(out_scale)
        mods.append(last)
        self.net = nn.Sequential(*mods)
        self.box = int(box)

    def forward(self, feats: Tensor, rot: Tensor, shift: Tensor) -> tuple[Tensor, Tensor]:
        """feats ``(B, n_in)``; rot ``(B, 3, 3)``; shift ``(B, 2)`` px → ``(R̂ (B, 3, 3), t̂ (B, 2) px)``."""
        d6 = matrix_to_sixd(rot.to(feats.dtype))
        t = shift.to(feats.dtype)
        out = self.net(torch.cat([feats, d6, t / self.box], -1))
        return sixd_to_matrix(d6 + out[:, :6]), t + self.box * out[:, 6:]

"""core.metrics against NumPy computations."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cryovox.core import metrics


def test_mse_psnr_against_numpy():
    rng = np.random.default_rng(0)
    t = rng.normal(size=(3, 6, 6, 6))
    p = t + rng.normal(scale=0.3, size=t.shape)
    mse = ((p - t) ** 2).mean(axis=(1, 2, 3))
    rng_t = t.max(axis=(1, 2, 3)) - t.min(axis=(1, 2, 3))
    assert np.allclose(metrics.mse(torch.tensor(p), torch.tensor(t)).numpy(), mse)
    assert np.allclose(metrics.psnr(torch.tensor(p), torch.tensor(t)).numpy(), 10 * np.log10(rng_t**2 / mse))


def test_iou_f1_hand_made():
    t = torch.zeros(4, 4, 4)
    p = torch.zeros(4, 4, 4)
    t[0, 0, :4] = 2.0          # 4 voxels on
    p[0, 0, 2:4] = 2.0         # 2 of them
    p[1, 1, 1] = 2.0           # and one extra
    # threshold 1: |P∩T| = 2, |P∪T| = 5, |P| + |T| = 7
    assert metrics.iou(p, t, threshold=1.0).item() == pytest.approx(2 / 5)
    assert metrics.f1(p, t, threshold=1.0).item() == pytest.approx(4 / 7)
    # default threshold = mean + 1 std of the reference
    tn = t.double().numpy()
    thr = tn.mean() + tn.std()
    P, T = p.numpy() > thr, tn > thr
    assert metrics.iou(p, t).item() == pytest.approx((P & T).sum() / (P | T).sum())
    assert metrics.default_threshold(t).item() == pytest.approx(thr)
    # both empty → 1
    assert metrics.iou(torch.zeros(2, 2, 2), torch.zeros(2, 2, 2), threshold=0.5).item() == 1.0


def test_shape_mismatch_is_refused():
    with pytest.raises(ValueError):
        metrics.mse(torch.zeros(4, 4, 4), torch.zeros(4, 4, 5))

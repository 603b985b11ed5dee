"""FSC against a plain NumPy FSC; phase randomisation, RELION-style correction, resolution, AUC."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cryovox.core.fft import rfftn_c
from cryovox.core.fsc import crossing_shell, fsc, fsc_auc, fsc_corrected, phase_randomize, resolution_at
from cryovox.core.masks import spherical_mask


def numpy_fsc(a, b):
    """Plain FSC: full centred FFT, shells = rounded |k| in voxels, 0 … D // 2."""
    D = a.shape[-1]
    nd = a.ndim
    A = np.fft.fftshift(np.fft.fftn(np.fft.ifftshift(a)))
    B = np.fft.fftshift(np.fft.fftn(np.fft.ifftshift(b)))
    k = np.arange(D) - D // 2
    r = np.sqrt(sum(g.astype(float) ** 2 for g in np.meshgrid(*([k] * nd), indexing="ij")))
    shells = np.round(r).astype(int)
    out = []
    for i in range(D // 2 + 1):
        sel = shells == i
        num = np.real(np.sum(A[sel] * np.conj(B[sel])))
        out.append(num / np.sqrt(np.sum(np.abs(A[sel]) ** 2) * np.sum(np.abs(B[sel]) ** 2)))
    return np.array(out)


def noisy_pair(D, seed, noise=1.0, ndim=3):
    g = np.random.default_rng(seed)
    k = np.arange(D) - D // 2
    r = np.sqrt(sum(x.astype(float) ** 2 for x in np.meshgrid(*([k] * ndim), indexing="ij")))
    sig = np.real(np.fft.ifftn(np.fft.fftn(g.standard_normal((D,) * ndim)) * np.fft.ifftshift(np.exp(-r ** 2 / (2 * (D / 6) ** 2)))))
    sig /= sig.std()
    return (sig + noise * g.standard_normal(sig.shape)).astype(np.float32), \
           (sig + noise * g.standard_normal(sig.shape)).astype(np.float32)


@pytest.mark.parametrize("D", [32, 33])
def test_fsc_equals_numpy_oracle(D):
    a, b = noisy_pair(D, D)
    got = fsc(torch.from_numpy(a), torch.from_numpy(b))
    assert got.shape == (D // 2 + 1,)
    want = numpy_fsc(a.astype(np.float64), b.astype(np.float64))
    np.testing.assert_allclose(got.numpy(), want, atol=1e-4)
    assert want[1] > 0.9 and abs(want[-1]) < 0.3                  # the test data span the curve
    mask = spherical_mask(D, D / 3, 3.0).numpy()
    np.testing.assert_allclose(fsc(torch.from_numpy(a), torch.from_numpy(b), torch.from_numpy(mask)).numpy(),
                               numpy_fsc(a * mask, b * mask), atol=1e-4)


def test_frc_2d_and_batched():
    a, b = noisy_pair(40, 5, ndim=2)
    got = fsc(torch.from_numpy(np.stack([a, b])), torch.from_numpy(np.stack([b, a])), ndim=2)
    want = numpy_fsc(a.astype(np.float64), b.astype(np.float64))
    np.testing.assert_allclose(got[0].numpy(), want, atol=1e-4)
    np.testing.assert_allclose(got[1].numpy(), want, atol=1e-4)
    with pytest.raises(ValueError):
        fsc(torch.zeros(8, 8, 8), torch.zeros(8, 8, 9))


def test_phase_randomize_keeps_amplitudes_and_low_shells():
    D, n = 24, 5
    x = torch.from_numpy(noisy_pair(D, 1)[0]).double()
    y = phase_randomize(x, n, torch.Generator().manual_seed(0))
    X, Y = rfftn_c(x), rfftn_c(y)
    k = torch.arange(D, dtype=torch.float64) - D // 2
    kx = torch.arange(D // 2 + 1, dtype=torch.float64)
    r2 = k[:, None, None] ** 2 + k[None, :, None] ** 2 + kx[None, None, :] ** 2
    low = r2 < n * n
    torch.testing.assert_close(Y[low], X[low], atol=1e-9, rtol=0)
    # amplitudes kept (kx = 0 plane and Nyquist are made Hermitian by the real inverse: skip them)
    inner = (~low) & (kx[None, None, :] > 0) & (kx[None, None, :] < D // 2)
    torch.testing.assert_close(Y[inner].abs(), X[inner].abs(), atol=1e-9, rtol=1e-9)
    c = fsc(x, y)
    assert torch.allclose(c[:n], torch.ones(n, dtype=torch.float64), atol=1e-9)
    assert c[n + 1:].abs().max() < 0.35 and c[n + 1:].mean().abs() < 0.1
    y2 = phase_randomize(x, n, torch.Generator().manual_seed(0))
    torch.testing.assert_close(y, y2)                                  # seeded: repeatable


def test_fsc_corrected_follows_relion_rules():
    D = 32
    a, b = (torch.from_numpy(v) for v in noisy_pair(D, 7, noise=0.7))
    mask = spherical_mask(D, 9.0, 3.0)
    curves = fsc_corrected(a, b, mask, torch.Generator().manual_seed(3))
    unmasked = numpy_fsc(a.double().numpy(), b.double().numpy())
    n = int(np.nonzero(unmasked[1:] < 0.8)[0][0]) + 1
    assert curves.randomize_from == n
    np.testing.assert_allclose(curves.unmasked.numpy(), unmasked, atol=1e-4)
    np.testing.assert_allclose(curves.masked.numpy(), numpy_fsc((a * mask).double().numpy(), (b * mask).double().numpy()),
                               atol=1e-4)
    # phases below n untouched: the randomised curve equals the masked one well inside
    np.testing.assert_allclose(curves.randomized_masked[:max(n - 3, 1)].numpy(), curves.masked[:max(n - 3, 1)].numpy(),
                               atol=0.05)
    m, r, c = curves.masked.numpy(), curves.randomized_masked.numpy(), curves.corrected.numpy()
    np.testing.assert_array_equal(c[:n + 2], m[:n + 2])
    np.testing.assert_allclose(c[n + 2:], (m[n + 2:] - r[n + 2:]) / (1 - r[n + 2:]), rtol=1e-12)
    assert curves.final is curves.corrected


def test_fsc_corrected_identical_maps_never_randomises():
    a = torch.from_numpy(noisy_pair(16, 2)[0])
    curves = fsc_corrected(a, a, spherical_mask(16, 5.0, 2.0))
    assert curves.randomize_from is None and curves.randomized_masked is None
    torch.testing.assert_close(curves.corrected, curves.masked)


def relion_resolution(curve, threshold, apix, size):
    """relion_postprocess: resolution of the last shell before the curve first drops below."""
    res = 999.0
    for i, v in enumerate(curve):
        if v < threshold:
            break
        if i > 0:
            res = size * apix / i
    return res


def test_resolution_interpolates_first_crossing():
    size, apix = 64, 1.25
    curve = torch.tensor(1.0 - np.arange(33) / 20.0)                  # 0.5 at shell 10, 0.143 at 17.14
    assert resolution_at(curve, 0.5, apix, size) == pytest.approx(size * apix / 10.0)
    assert resolution_at(curve, 0.143, apix, size) == pytest.approx(size * apix / 17.14)
    # first crossing wins even if the curve rises again later
    bumpy = torch.tensor([1.0, 0.9, 0.6, 0.4, 0.7, 0.6, 0.1, 0.0])
    assert crossing_shell(bumpy, 0.5) == pytest.approx(2 + 0.1 / 0.2)
    # RELION's number is the shell before the crossing: ours is finer by less than one shell
    a, b = noisy_pair(48, 11)
    c = fsc(torch.from_numpy(a), torch.from_numpy(b))
    ours = resolution_at(c, 0.143, 1.0, 48)
    relion = relion_resolution(c.numpy(), 0.143, 1.0, 48)
    shell = crossing_shell(c, 0.143)
    assert ours <= relion and 48 / relion <= shell < 48 / relion + 1
    # never crossing: the last shell's resolution (Nyquist for even boxes)
    assert resolution_at(torch.ones(33), 0.143, 1.1, 64) == pytest.approx(2.2)


def test_auc():
    assert fsc_auc(torch.ones(17)) == pytest.approx(1.0)
    lin = 1.0 - np.arange(33) / 32.0
    assert fsc_auc(torch.tensor(lin)) == pytest.approx(0.5)
    curve = np.cos(np.linspace(0, 2, 25)) ** 2
    assert fsc_auc(torch.tensor(curve)) == pytest.approx(np.trapezoid(curve, dx=1 / 24) if hasattr(np, "trapezoid")
                                                         else np.trapz(curve, dx=1 / 24))

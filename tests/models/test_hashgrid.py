"""The multi-resolution hash-grid encoding against hand computations and Python-integer oracles."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from cryovox.models.cryoformer.hashgrid import PRIMES, HashGridEncoding, level_resolutions


def test_level_resolutions_by_hand():
    assert level_resolutions(3, 16, 64) == [16, 32, 64]                 # b = 2
    assert level_resolutions(2, 16, 512) == [16, 512]
    assert level_resolutions(1, 16, 16) == [16]
    r = level_resolutions(16, 16, 128)
    assert r[0] == 16 and r[-1] == 128 and all(a <= b for a, b in zip(r, r[1:]))
    assert r[8] == math.floor(16 * 8 ** (8 / 15))                       # 16 · 2^(3·8/15) = 48.5 → 48


def test_dense_and_hashed_indices_match_python_integers():
    """Every corner's table entry equals the definition computed with Python's unbounded integers."""
    enc = HashGridEncoding(levels=3, features=2, log2_table=10, base_resolution=4, max_resolution=64)
    assert enc.resolutions == [4, 16, 64] and enc.dense == [True, False, False]   # 5³ <= 1024 < 17³
    T = 1 << 10
    u = torch.rand(50, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    idx, _ = enc.indices_and_weights(u)
    for lvl, N in enumerate(enc.resolutions):
        for n in range(0, 50, 7):
            cell = [min(int(math.floor(float(u[n, a]) * N)), N - 1) for a in range(3)]
            for c in range(8):
                i, j, k = cell[0] + (c & 1), cell[1] + ((c >> 1) & 1), cell[2] + ((c >> 2) & 1)
                if enc.dense[lvl]:
                    want = i + j * (N + 1) + k * (N + 1) ** 2
                else:
                    want = ((i * PRIMES[0]) ^ (j * PRIMES[1]) ^ (k * PRIMES[2])) % T
                assert int(idx[lvl, n, c]) == want + lvl * T, (lvl, n, c)


def test_collisions_dense_none_hashed_like_random():
    """A dense level maps its vertices one-to-one; a hashed level fills the table as uniform random
    hashing would: the expected share of used entries is 1 − exp(−V/T) for V vertices."""
    enc = HashGridEncoding(levels=2, features=1, log2_table=12, base_resolution=15, max_resolution=40)
    N0, N1 = enc.resolutions
    T = 1 << 12
    # all vertices of each level, probed through the cell corners of the cell centres
    for lvl, N in enumerate((N0, N1)):
        g = (torch.arange(N, dtype=torch.float64) + 0.5) / N
        u = torch.stack(torch.meshgrid(g, g, g, indexing="ij"), -1).reshape(-1, 3)
        idx, _ = enc.indices_and_weights(u)
        used = torch.unique(idx[lvl].reshape(-1)) - lvl * T
        V = (N + 1) ** 3
        if enc.dense[lvl]:
            assert used.numel() == V and int(used.max()) == V - 1       # every vertex its own entry
        else:
            expected = T * (1 - math.exp(-V / T))
            assert abs(used.numel() - expected) < 0.02 * T, (used.numel(), expected)
            assert 0 <= int(used.min()) and int(used.max()) < T


def test_trilinear_weights_by_hand():
    enc = HashGridEncoding(levels=1, features=2, log2_table=10, base_resolution=4, max_resolution=4)
    u = torch.tensor([[0.3, 0.55, 0.9]], dtype=torch.float64)        # pos (1.2, 2.2, 3.6): cell (1, 2, 3)
    idx, w = enc.indices_and_weights(u)
    fx, fy, fz = 0.2, 0.2, 0.6
    for c in range(8):
        bx, by, bz = c & 1, (c >> 1) & 1, (c >> 2) & 1
        want = (fx if bx else 1 - fx) * (fy if by else 1 - fy) * (fz if bz else 1 - fz)
        assert float(w[0, 0, c]) == pytest.approx(want, abs=1e-12)
        assert int(idx[0, 0, c]) == (1 + bx) + (2 + by) * 5 + (3 + bz) * 25
    assert float(w.sum()) == pytest.approx(1.0, abs=1e-12)
    # the encoding is the weighted sum of the table rows
    with torch.no_grad():
        enc.tables.copy_(torch.randn(enc.tables.shape, generator=torch.Generator().manual_seed(1)))
    f = enc(u.float())[0].double()
    tab = enc.tables.detach().double()
    manual = sum(float(w[0, 0, c]) * tab[:, int(idx[0, 0, c])] for c in range(8))
    assert torch.allclose(f, manual, atol=1e-6)


def test_dense_level_reproduces_a_linear_function_exactly():
    """Vertices holding a·v + b make the trilinear interpolation equal a·(N u) + b everywhere (also at u = 1)."""
    N = 8
    enc = HashGridEncoding(levels=1, features=1, log2_table=10, base_resolution=N, max_resolution=N, dtype=torch.float64)
    a, b = np.array([0.7, -1.3, 2.1]), 0.4
    k = np.arange(N + 1)
    zz, yy, xx = np.meshgrid(k, k, k, indexing="ij")
    vals = a[0] * xx + a[1] * yy + a[2] * zz + b                          # entry i + j(N+1) + k(N+1)² ↔ [k, j, i]
    with torch.no_grad():
        enc.tables.zero_()
        enc.tables[0, : (N + 1) ** 3] = torch.from_numpy(vals.reshape(-1))
    u = torch.rand(200, 3, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    u[0] = 1.0
    u[1] = 0.0
    got = enc(u)[:, 0]
    want = torch.from_numpy((N * u.numpy()) @ a + b)
    assert torch.allclose(got, want, atol=1e-10)


def test_gradients_in_tables_and_points_pass_gradcheck():
    enc = HashGridEncoding(levels=3, features=2, log2_table=5, base_resolution=2, max_resolution=5, init_scale=1.0,
                           dtype=torch.float64)
    assert enc.resolutions == [2, 3, 5] and enc.dense == [True, False, False]   # both index paths are checked
    u = (torch.rand(12, 3, generator=torch.Generator().manual_seed(3), dtype=torch.float64) * 0.9 + 0.05)
    u.requires_grad_(True)
    tables = enc.tables.detach().clone().requires_grad_(True)

    def encode(t, uu):
        return torch.func.functional_call(enc, {"tables": t}, (uu,))

    assert torch.autograd.gradcheck(encode, (tables, u), atol=1e-7, fast_mode=True)

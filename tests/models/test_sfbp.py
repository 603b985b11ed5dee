"""The SFBP structural-basis VAE's pieces against independent oracles."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cryovox.core.fft import rfftn_c
from cryovox.core.rotations import random_rotations
from cryovox.core.slicing import project, project_volume
from cryovox.errors import InputError
from cryovox.models import build_model, model_from_checkpoint
from cryovox.models.hetero import SFBPModel
from cryovox.models.hetero.loss import data_spectra, gaussian_nll, kl_standard_normal
from tests.models.hetero_data import blob_states


def _stats(box: int, power=1.0, ctf2=1.0) -> dict:
    n = box // 2 + 1
    return {"power": torch.full((n,), float(power), dtype=torch.float64),
            "ctf2": torch.full((n,), float(ctf2), dtype=torch.float64),
            "count": torch.ones(n, dtype=torch.float64)}


def _random_inside(model: SFBPModel, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    dec = model.decoder
    inside = dec._sphere3(dec.pad * dec.box)
    with torch.no_grad():
        dec.basis.copy_(torch.randn(dec.basis.shape, generator=g) * inside[..., None, None])
        dec.bias.copy_(torch.randn(dec.bias.shape, generator=g) * inside[..., None])


def test_slices_are_central_slices_of_the_decoded_volume():
    """decoder.slices (fused project of the basis) == project_volume of decoder.fourier (explicit volume)."""
    model = SFBPModel(box=16, apix=2.0, zdim=3, n_basis=4)
    model.set_data_statistics(_stats(16, power=6.25))  # σ̄ = 2.5 on every shell
    _random_inside(model, 0)
    z = torch.randn(5, 3, generator=torch.Generator().manual_seed(1))
    rot = random_rotations(5, generator=torch.Generator().manual_seed(2), dtype=torch.float32)
    with torch.no_grad():
        fused = model.decoder.slices(z, rot)
        vols = model.decoder.fourier(z)
        direct = torch.cat([project_volume(vols[i], rot[i:i + 1]) for i in range(5)])
    err = (fused - direct).abs().max() / direct.abs().max()
    assert err < 1e-5


def test_decoded_map_of_a_consensus_bias_is_the_map():
    """set_bias_from_map then decode_volume (basis zero) returns the map: scale and gridding consistent."""
    vol = torch.from_numpy(blob_states(24)[1]).double()
    model = SFBPModel(box=24, apix=3.0, zdim=2, n_basis=2)
    model.set_data_statistics(_stats(24, power=4.0, ctf2=0.25))
    with torch.no_grad():
        model.decoder.basis.zero_()
    model.set_bias_from_map(vol)
    out = model.decode_volume(torch.zeros(1, 2))[0].double()
    assert (out - vol).abs().max() / vol.abs().max() < 2e-3


@pytest.mark.parametrize("box", [24, 25])
def test_nll_is_the_full_plane_weighted_sum(box):
    """½ Σ |R(k)|² / σ²(|k|) over the full 2D transform (NumPy) == gaussian_nll on the half layout."""
    rng = np.random.default_rng(box)
    resid = rng.standard_normal((3, box, box))
    model = SFBPModel(box=box, apix=1.0, zdim=1, n_basis=1)
    noise = torch.linspace(1.0, 5.0, box // 2 + 1)
    model.noise_var.copy_(noise)
    inv, _, _ = model._inv_var("cpu", torch.float64)
    half = rfftn_c(torch.from_numpy(resid), 2)
    got = gaussian_nll(torch.zeros_like(half), half, inv).numpy()
    full = np.fft.fftshift(np.fft.fft2(np.fft.ifftshift(resid, axes=(-2, -1))), axes=(-2, -1))
    k = np.arange(box) - box // 2
    r = np.sqrt(k[:, None] ** 2 + k[None, :] ** 2)
    sel = r <= box / 2
    sig = noise.numpy().astype(np.float64)[np.round(r).astype(int).clip(max=box // 2)]
    want = 0.5 * (np.abs(full) ** 2 / sig * sel).sum((-2, -1))
    np.testing.assert_allclose(got, want, rtol=2e-5)


def test_basis_features_recover_the_coefficients_of_noise_free_images():
    """For images made by the linear model itself, (H + I)⁻¹ g ≈ the true coefficients when H ≫ I."""
    box, K, B = 16, 3, 6
    model = SFBPModel(box=box, apix=2.0, zdim=2, n_basis=K)
    model.set_data_statistics(_stats(box))
    model.noise_var.fill_(1e-4)
    _random_inside(model, 3)
    g = torch.Generator().manual_seed(4)
    s = torch.randn(B, K, generator=g)
    rot = random_rotations(B, generator=g, dtype=torch.float32)
    ctf = 0.5 + torch.rand(B, box, box // 2 + 1, generator=g)
    with torch.no_grad():
        dec = model.decoder
        clean = project(dec.basis_c(), s, dec.bias_c(), rot) * dec.scale_2d().float()
        feats = model.basis_features({"image": clean * ctf, "ctf": ctf, "rot": rot}, exact=True)
    np.testing.assert_allclose(feats[:, :K].numpy(), s.numpy(), atol=2e-3)


def test_expected_information_is_the_orientation_average():
    """The shell-Gram approximation of H equals the exact H averaged over many random orientations.

    The basis volumes are transforms of compact densities (random, within a Gaussian envelope a
    quarter of the box wide), as molecules are; the share of their power that trilinear slices
    keep comes from a consensus volume of the same extent (set_bias_from_map)."""
    from cryovox.core.slicing import volume_to_fourier

    box, K, B = 16, 3, 400
    model = SFBPModel(box=box, apix=2.0, zdim=2, n_basis=K)
    model.set_data_statistics(_stats(box))
    g = torch.Generator().manual_seed(8)
    k = torch.arange(box, dtype=torch.float64) - box // 2
    env = torch.exp(-(k[:, None, None] ** 2 + k[None, :, None] ** 2 + k[None, None, :] ** 2) / (2 * (box / 8) ** 2))
    vols = torch.randn(K, box, box, box, generator=g, dtype=torch.float64) * env
    inside = model.decoder._sphere3(box)
    with torch.no_grad():
        model.decoder.basis_c().copy_(volume_to_fourier(vols, pad=1, gridding=False).to(torch.complex64) * inside)
    consensus = torch.randn(box, box, box, generator=g, dtype=torch.float64) * env
    model.set_bias_from_map(consensus)
    rot = random_rotations(B, generator=g, dtype=torch.float32)
    ctf = torch.ones(B, box, box // 2 + 1)
    batch = {"image": torch.zeros(B, box, box // 2 + 1, dtype=torch.complex64), "ctf": ctf, "rot": rot}
    exact = model.basis_features(batch, exact=True)[:, K:].exp().mean(0)     # 1 + mean diag H
    approx = model.basis_features(batch)[:, K:].exp().mean(0)
    np.testing.assert_allclose(approx.numpy(), exact.numpy(), rtol=0.05)


def test_kl_matches_torch_distributions():
    g = torch.Generator().manual_seed(5)
    mu, logvar = torch.randn(4, 3, generator=g, dtype=torch.float64), torch.randn(4, 3, generator=g, dtype=torch.float64)
    q = torch.distributions.Normal(mu, torch.exp(0.5 * logvar))
    p = torch.distributions.Normal(torch.zeros_like(mu), torch.ones_like(mu))
    want = torch.distributions.kl_divergence(q, p).sum(-1)
    assert torch.allclose(kl_standard_normal(mu, logvar), want, atol=1e-12)


def test_data_spectra_are_shell_means_of_the_full_transform():
    """power / count == mean |Y|² over each shell of the full 2D transform (NumPy); ctf2 / count == mean C²."""
    box = 20
    rng = np.random.default_rng(6)
    imgs = rng.standard_normal((4, box, box))
    half = rfftn_c(torch.from_numpy(imgs), 2)
    stats = data_spectra([{"image": half, "ctf": torch.full(half.shape, -0.5)}], box, box / 2)
    full = np.fft.fftshift(np.fft.fft2(np.fft.ifftshift(imgs, axes=(-2, -1))), axes=(-2, -1))
    k = np.arange(box) - box // 2
    r = np.sqrt(k[:, None] ** 2 + k[None, :] ** 2)
    shell = np.round(r).astype(int)
    for s in range(box // 2 + 1):
        sel = (shell == s) & (r <= box / 2)   # samples inside the radius only
        want = (np.abs(full[:, sel]) ** 2).mean()
        assert stats["power"][s] / stats["count"][s] == pytest.approx(want, rel=1e-6)
        assert stats["ctf2"][s] / stats["count"][s] == pytest.approx(0.25, rel=1e-12)


def test_unknown_model_kind_is_an_input_error():
    with pytest.raises(InputError, match="heterogeneity model"):
        model_from_checkpoint({"kind": "reconstruct", "config": {}, "model": {}}, source="w.pt")
    with pytest.raises(InputError, match="not a cryovox heterogeneity model"):
        build_model("cryodrgn", {})


def test_config_rebuilds_the_same_model():
    a = SFBPModel(box=12, apix=1.5, zdim=4, n_basis=3, enc_features="both")
    b = build_model("sfbp", a.config())
    b.load_state_dict(a.state_dict())
    batch = {"image": torch.randn(2, 12, 7, dtype=torch.complex64), "ctf": torch.ones(2, 12, 7),
             "rot": random_rotations(2, dtype=torch.float32)}
    with torch.no_grad():
        assert torch.equal(a.encode(batch)[0], b.encode(batch)[0])

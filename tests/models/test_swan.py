"""Cryo-SWAN model pieces against independent computations: positional encoding, scale
schedules, the split input convolution, latent stacking, and the diffusion sampler."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cryovox.models.swan import SwanConfig, build_model, scale_schedule
from cryovox.models.swan.autoencoder import InputConv
from cryovox.models.swan.diffusion import DiffusionConfig, LatentDDPM, cosine_alphas_cumprod
from cryovox.models.swan.posenc import positional_encoding


def test_positional_encoding_values():
    D, L = 8, 3
    pe = positional_encoding(D, L)
    assert pe.shape == (6 * L, D, D, D)
    z, y, x = 1, 6, 3  # array index [z, y, x]
    p = np.array([(x - 4) / 4, (y - 4) / 4, (z - 4) / 4])
    expect = []
    for level in range(L):
        expect += list(np.sin(2**level * np.pi * p)) + list(np.cos(2**level * np.pi * p))
    assert np.allclose(pe[:, z, y, x].numpy(), expect, atol=1e-6)
    assert torch.allclose(pe[:, 4, 4, 4], torch.tensor([0.0, 0, 0, 1, 1, 1] * L), atol=1e-7)  # the centre


def test_scale_schedules():
    assert SwanConfig(box=64).fine_scales == [1, 4, 6, 8, 10, 12, 14, 16]
    assert SwanConfig(box=64).coarse_scales == [1, 2, 4, 8]
    assert scale_schedule((1, 4, 6, 8, 10, 12, 14, 16), 8, 16) == [1, 2, 3, 4, 5, 6, 7, 8]
    assert SwanConfig(box=32).coarse_scales == [1, 2, 4]
    assert SwanConfig(box=16).fine_scales == [1, 2, 3, 4]
    assert SwanConfig(box=128).fine_scales == [2, 8, 12, 16, 20, 24, 28, 32]
    with pytest.raises(ValueError):
        SwanConfig(box=20)
    with pytest.raises(ValueError):
        SwanConfig(arch="vqgan")


def test_split_input_conv_equals_one_conv_over_concatenation():
    torch.manual_seed(0)
    conv = InputConv(box=8, pe_levels=2, cout=5)
    x = torch.randn(3, 1, 8, 8, 8)
    weight = torch.cat([conv.conv_x.weight, conv.conv_pe.weight], 1)
    full = torch.cat([x, positional_encoding(8, 2)[None].expand(3, -1, -1, -1, -1)], 1)
    ref = F.conv3d(full, weight, conv.conv_x.bias, padding=1)
    assert torch.allclose(conv(x), ref, atol=1e-5)


@pytest.mark.parametrize("arch,extra", [("swan", {}), ("vq", {}), ("rq", {}), ("rq", {"rq_latent": "fine", "rq_depth": 4}),
                                        ("swan-single", {})])
def test_autoencoder_shapes_and_latent_stacking(arch, extra):
    torch.manual_seed(1)
    m = build_model(arch, box=16, width=8, latent_dim=4, codebook_size=16, pe_levels=2, **extra).eval()
    x = torch.randn(2, 16, 16, 16)
    out = m(x)
    assert out.recon.shape == (2, 1, 16, 16, 16)
    levels = 2 if arch == "swan" else 1
    assert len(out.quant) == levels
    side = 2 if m.cfg.coarse_only else 4          # the RQ-VAE layout quantises the D/8 grid
    assert out.quant[0].z_q.shape == (2, 4, side, side, side)
    n_steps = {"swan": 4, "swan-single": 4, "vq": 1, "rq": m.cfg.rq_depth}[arch]
    assert len(out.quant[0].indices) == n_steps
    grid = m.latent_grid(x)
    assert grid.shape == (2, 4 * levels, 4, 4, 4)
    parts = m.split_grid(grid)
    for p, q in zip(parts, out.quant):
        assert torch.allclose(p, q.z_q, atol=1e-6)  # stacking is undone exactly
    assert torch.allclose(m.decode_grid(grid, snap=False), out.recon[:, 0], atol=1e-5)


def test_rq_baseline_is_rate_matched_with_vq_by_default():
    """RQ-VAE layout: 8 codes at each D/8 position = as many codes per map as VQ at D/4."""
    rq, vq = build_model("rq", box=16, width=8, latent_dim=4, codebook_size=16), build_model("vq", box=16, width=8,
                                                                                          latent_dim=4, codebook_size=16)
    x = torch.randn(1, 16, 16, 16)
    n_rq = sum(i.numel() for i in rq.eval()(x).quant[0].indices)
    n_vq = sum(i.numel() for i in vq.eval()(x).quant[0].indices)
    assert n_rq == n_vq == 64


def test_two_level_swan_starts_as_its_single_level_ablation():
    """At initialisation the coarse level neither enters the fine latent nor the decoder (zero-initialised
    conditioning), yet the decoder's weights on it receive gradients, so training can switch it on."""
    torch.manual_seed(2)
    m = build_model("swan", box=16, width=8, latent_dim=4, codebook_size=16, pe_levels=2).eval()
    x = torch.randn(2, 16, 16, 16)
    before = m(x)
    with torch.no_grad():
        m.q2.codebook.add_(torch.randn_like(m.q2.codebook))     # a different coarse latent …
    after = m(x)
    assert torch.equal(before.recon, after.recon)                    # … changes nothing yet
    assert not torch.equal(before.quant[1].z_q, after.quant[1].z_q)
    F.mse_loss(after.recon[:, 0], x).backward()
    w4 = 4 * 8
    assert m.dec_in.weight.grad[:, w4:].abs().sum() > 0
    assert m.combi_conv.weight.grad[:, :w4].abs().sum() > 0


def test_cosine_schedule():
    ab = cosine_alphas_cumprod(1000)
    assert ab.shape == (1000,)
    assert torch.all(ab[1:] < ab[:-1])
    # Nichol & Dhariwal: abar(t) = f(t)/f(0), f(t) = cos²((t/T + s)/(1 + s) · π/2)
    f = lambda t: math.cos((t / 1000 + 0.008) / 1.008 * math.pi / 2) ** 2
    assert ab[499].item() == pytest.approx(f(500) / f(0), rel=1e-6)
    assert ab[-1].item() < 1e-4


def _ddpm(T=100, guidance_net=None):
    cfg = DiffusionConfig(latent_channels=2, latent_size=4, cond_pool=2, timesteps=T, base=8, mults=(1, 2))
    return LatentDDPM(cfg)


def test_ddim_sampler_recovers_a_point_mass_with_the_exact_noise_predictor():
    """For data = one point x*, the exact ε(x_t, t) = (x_t − √ᾱ x*)/√(1−ᾱ); deterministic DDIM
    must then land on x* from any start."""
    m = _ddpm()
    target = torch.randn(1, 2, 4, 4, 4, generator=torch.Generator().manual_seed(0))

    def exact(x_t, t, cond, flag):
        ab = m.alphas_cumprod[t].double()[:, None, None, None, None]
        return ((x_t.double() - ab.sqrt() * target) / (1 - ab).sqrt()).float()

    m._eps = exact
    for steps in (100, 10):
        x = m.sample(torch.zeros(3, 2, 4, 4, 4), steps=steps, eta=0.0, guidance=0.0,
                     generator=torch.Generator().manual_seed(1))
        assert torch.allclose(x, target.expand(3, -1, -1, -1, -1), atol=1e-4)
    x = m.sample(torch.zeros(3, 2, 4, 4, 4), steps=50, eta=1.0, guidance=0.0,
                 generator=torch.Generator().manual_seed(2))
    assert torch.allclose(x, target.expand(3, -1, -1, -1, -1), atol=1e-3)


def test_classifier_free_guidance_combination():
    m = _ddpm()
    seen = {}

    def fake(x_t, t, cond, flag):
        seen["flag"] = flag.clone()
        # conditional branch predicts 3, unconditional 1
        return torch.where(flag[:, None, None, None, None] > 0, torch.full_like(x_t, 3.0), torch.ones_like(x_t))

    m._eps = fake
    x = torch.zeros(2, 2, 4, 4, 4)
    t = torch.tensor([5, 7])
    assert torch.allclose(m.guided_eps(x, t, x, guidance=2.0), torch.full_like(x, 3 * 3.0 - 2 * 1.0))
    assert seen["flag"].tolist() == [1.0, 1.0, 0.0, 0.0]
    assert torch.allclose(m.guided_eps(x, t, x, guidance=0.0), torch.full_like(x, 3.0))


def test_condition_is_block_average():
    m = _ddpm()
    x = torch.arange(2 * 64, dtype=torch.float32).reshape(1, 2, 4, 4, 4)
    c = m.condition(x)
    ref = x.reshape(1, 2, 2, 2, 2, 2, 2, 2).mean(dim=(3, 5, 7))  # [z0, dz, y0, dy, x0, dx]
    assert torch.allclose(c[:, :, ::2, ::2, ::2], ref)
    assert torch.allclose(c[:, :, 1::2, 1::2, 1::2], ref)


def test_diffusion_loss_and_normalisation_round_trip():
    torch.manual_seed(0)
    m = _ddpm()
    m.set_normalisation(torch.tensor([1.0, -2.0]), torch.tensor([2.0, 0.5]))
    lat = torch.randn(2, 2, 4, 4, 4)
    assert torch.allclose(m.denormalise(m.normalise(lat)), lat, atol=1e-6)
    # untrained net predicts 0 (zero-initialised output): loss = E[ε²] ≈ 1
    loss = m(m.normalise(lat), torch.Generator().manual_seed(0))
    assert 0.7 < loss.item() < 1.3

"""Flow prior building blocks: HDiT layers, neighbourhood attention, rectified flow, EMA, normalisation, samplers."""

import math

import pytest
import torch


from cryovox.core.degrade import wedge_mask
from cryovox.core.fft import fftn_c
from cryovox.models.flow import (EMA, DensityNorm, FlowPrior, HDiT3D, build_velocity_model, flow_loss, flow_sample,
                                 guidance_weight, hdit_config, time_grid)
from cryovox.models.flow.hdit import _shuffle, _unshuffle, _window_index, axial_rope_3d, neighborhood_attention_3d


def test_window_index_is_natten_clamped():
    idx = _window_index(6, 3, "cpu")
    assert idx.tolist() == [[0, 1, 2], [0, 1, 2], [1, 2, 3], [2, 3, 4], [3, 4, 5], [3, 4, 5]]
    assert _window_index(2, 5, "cpu").tolist() == [[0, 1], [0, 1]]   # axis shorter than the kernel: whole axis


def test_neighborhood_attention_equals_masked_dense_attention():
    g = torch.Generator().manual_seed(0)
    B, H, Z, Y, X, d, k = 1, 2, 5, 4, 6, 8, 3
    q, kk, v = (torch.randn(B, H, Z, Y, X, d, generator=g, dtype=torch.float64) for _ in range(3))
    out = neighborhood_attention_3d(q, kk, v, k, scale=0.7, max_elements=200)   # forces several z-slabs
    # oracle: dense attention where key j is allowed iff it lies in query i's clamped window on every axis
    coords = torch.stack(torch.meshgrid(torch.arange(Z), torch.arange(Y), torch.arange(X), indexing="ij"), -1).reshape(-1, 3)
    allowed = torch.ones(len(coords), len(coords), dtype=torch.bool)
    for ax, n in enumerate((Z, Y, X)):
        start = (coords[:, ax] - k // 2).clamp(0, n - k)
        allowed &= (coords[None, :, ax] >= start[:, None]) & (coords[None, :, ax] < start[:, None] + k)
    qf, kf, vf = (t.reshape(B, H, -1, d) for t in (q, kk, v))
    logits = (qf @ kf.transpose(-1, -2)) * 0.7
    logits = logits.masked_fill(~allowed, -math.inf)
    dense = (logits.softmax(-1) @ vf).reshape(B, H, Z, Y, X, d)
    assert torch.allclose(out, dense, atol=1e-12)
    assert allowed.sum(1).eq(k ** 3).all()


def test_axial_rope_is_relative():
    # rotating q and k by their positions makes q·k depend only on the offset between positions
    theta, n = axial_rope_3d((4, 4, 4), 24)
    assert n == 6 and theta.shape == (4, 4, 4, 6)
    from cryovox.models.flow.hdit import _apply_rope

    g = torch.Generator().manual_seed(1)
    q = torch.randn(24, generator=g).expand(4, 4, 4, 24)
    k = torch.randn(24, generator=g).expand(4, 4, 4, 24)
    qr, kr = _apply_rope(q, theta), _apply_rope(k, theta)
    a = (qr[0, 1, 2] * kr[1, 1, 3]).sum()
    b = (qr[2, 0, 1] * kr[3, 0, 2]).sum()          # same offset (1, 0, 1)
    c = (qr[0, 1, 2] * kr[2, 3, 0]).sum()          # another offset
    assert torch.allclose(a, b, atol=1e-5) and not torch.allclose(a, c, atol=1e-3)
    assert torch.allclose(qr.norm(dim=-1), q.norm(dim=-1), atol=1e-5)


def test_pixel_shuffle_roundtrip():
    x = torch.randn(2, 4, 6, 8, 3)
    assert torch.equal(_shuffle(_unshuffle(x, 2), 2), x)
    u = _unshuffle(x, 2)
    assert u.shape == (2, 2, 3, 4, 24)
    assert torch.equal(u[0, 0, 0, 0, :3], x[0, 0, 0, 0])       # first sub-voxel of the first token


def test_hdit_tiny_shapes_zero_init_and_presets():
    torch.manual_seed(0)
    cfg = hdit_config("tiny")
    net = HDiT3D(cfg)
    x = torch.randn(2, 1, 16, 16, 16)
    out = net(x, torch.tensor([0.2, 0.9]))
    assert out.shape == x.shape and out.abs().max() == 0          # zero-initialised output projection
    with pytest.raises(ValueError, match="divisible"):
        net(torch.randn(1, 1, 10, 10, 10), 0.5)
    s = hdit_config("cryofm-s")
    assert (s.patch_size, s.depths, s.widths, s.kernel_size, s.head_dim) == (4, [4, 8], [768, 1536], 7, 64)
    assert s.attention == ["neighborhood", "global"]
    big = hdit_config("cryofm-l")
    assert (big.depths, big.widths) == ([2, 2, 12], [320, 640, 1280])
    with pytest.raises(ValueError):
        hdit_config("cryofm-s", widths=[100, 200])                # not a multiple of the head dim


def test_hdit_learns_and_checkpointing_matches():
    torch.manual_seed(1)
    net = HDiT3D(hdit_config("tiny", checkpointing=True))
    x0 = torch.randn(2, 1, 8, 8, 8)
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    losses = []
    for _ in range(10):
        loss = flow_loss(net, x0, t=torch.tensor([0.3, 0.6]), noise=torch.zeros_like(x0))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.6 * losses[0]
    # gradient checkpointing changes memory, not results
    net.zero_grad()
    net2 = HDiT3D(hdit_config("tiny", checkpointing=False))
    net2.load_state_dict(net.state_dict())
    t = torch.tensor([0.4, 0.7])
    l1 = flow_loss(net, x0, t=t, noise=torch.ones_like(x0))
    l2 = flow_loss(net2, x0, t=t, noise=torch.ones_like(x0))
    l1.backward()
    l2.backward()
    g1 = torch.cat([p.grad.flatten() for p in net.parameters()])
    g2 = torch.cat([p.grad.flatten() for p in net2.parameters()])
    assert torch.allclose(l1, l2) and torch.allclose(g1, g2, atol=1e-6)


def test_flow_loss_is_the_rectified_flow_regression():
    class Const(torch.nn.Module):
        def forward(self, x, t):
            return torch.zeros_like(x)

    x0 = torch.full((1, 1, 2, 2, 2), 3.0)
    noise = torch.full_like(x0, -1.0)
    # target x0 − x1 = 4 everywhere; a zero network has loss 16 whatever t
    assert flow_loss(Const(), x0, t=torch.tensor([0.37]), noise=noise).item() == pytest.approx(16.0)


def test_ema_tracks_with_warmup():
    net = torch.nn.Linear(1, 1, bias=False)
    torch.nn.init.zeros_(net.weight)
    ema = EMA(net, decay=0.9)
    with torch.no_grad():
        net.weight.fill_(1.0)
    ema.update(net)                       # decay_1 = min(0.9, 2/11)
    assert ema.shadow.weight.item() == pytest.approx(1 - 2 / 11)
    state = ema.state_dict()
    ema2 = EMA(net, decay=0.5)
    ema2.load_state_dict(state)
    assert ema2.updates == 1 and ema2.decay == 0.9 and ema2.shadow.weight.item() == pytest.approx(1 - 2 / 11)


def test_density_norm_background_percentile_roundtrip():
    D = 16
    g = torch.Generator().manual_seed(2)
    vol = torch.full((D, D, D), -0.3)
    vol[5:11, 5:11, 5:11] = torch.rand(6, 6, 6, generator=g) * 2 + 0.5
    norm = DensityNorm(mean=0.04, std=0.09)
    s = norm.fit(vol)
    assert s.offset == pytest.approx(-0.3)
    assert s.scale == pytest.approx(torch.quantile((vol + 0.3).flatten().double(), 0.99999).item(), rel=1e-6)
    z = norm.normalize(vol, s)
    assert z[0, 0, 0].item() == pytest.approx((0 - 0.04) / 0.09)
    assert torch.allclose(norm.denormalize(z, s), vol, atol=1e-5)
    assert norm.normalize(vol, s, clip=True).max().item() <= (1 - 0.04) / 0.09 + 1e-5


def test_prior_state_roundtrip():
    net = build_velocity_model("unet", dict(base=8, mults=[1, 2], attention=False))
    torch.nn.init.normal_(net.conv_out.weight)
    prior = FlowPrior(model=net, arch="unet", config=dict(base=8, mults=[1, 2], attention=False),
                      norm=DensityNorm(mean=0.1, std=0.2), box=16, apix=4.0)
    back = FlowPrior.from_state(prior.state())
    x = torch.randn(1, 1, 8, 8, 8)
    assert torch.equal(back.velocity(x, 0.3), prior.velocity(x, 0.3))
    assert (back.box, back.apix, back.norm.mean, back.divisor) == (16, 4.0, 0.1, 2)


def gaussian_velocity(mu: float, s: float):
    """Exact rectified-flow velocity for data x0 ~ N(mu, s²) per voxel and x1 ~ N(0, 1)."""
    def v(x, t):
        t = t.reshape(-1, *([1] * (x.ndim - 1))).to(x.dtype)
        var = (1 - t) ** 2 * s ** 2 + t ** 2
        r = x - (1 - t) * mu
        e0 = mu + (1 - t) * s ** 2 / var * r
        e1 = t / var * r
        return e0 - e1
    return v


def test_time_grid_and_guidance_weight():
    from cryovox.models.flow.sampling import default_guidance_scale

    assert default_guidance_scale(64 ** 3) == pytest.approx(1000 / 512)      # CryoFM2: lamb_base / ||g|| at 64³
    assert time_grid(4) == [1.0, 0.75, 0.5, 0.25, 0.0]
    assert guidance_weight(1.0) == 5.0 and guidance_weight(0.5) == 1.0
    assert guidance_weight(0.9, 5.0) == 5.0 and guidance_weight(0.2) == pytest.approx(0.25)


def test_unconditional_euler_sampler_reaches_the_data_distribution():
    x1 = torch.randn(400, 1, 4, 4, 4, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    out = flow_sample(gaussian_velocity(2.0, 0.5), x1, steps=100)
    assert out.mean().item() == pytest.approx(2.0, abs=0.02)
    assert out.std().item() == pytest.approx(0.5, abs=0.02)


def test_wedge_projection_sampler_keeps_data_and_varies_in_the_wedge():
    D = 8
    m = wedge_mask(D)
    g = torch.Generator().manual_seed(4)
    truth = torch.randn(1, 1, D, D, D, generator=g, dtype=torch.float64)
    y = torch.fft.ifftn(torch.fft.ifftshift(torch.fft.fftshift(torch.fft.fftn(truth, dim=(-3, -2, -1)),
                                                               dim=(-3, -2, -1)) * m, dim=(-3, -2, -1)),
                        dim=(-3, -2, -1)).real
    from cryovox.core.degrade import wedge_fill

    x1 = torch.randn(64, 1, D, D, D, generator=g, dtype=torch.float64)
    out = flow_sample(gaussian_velocity(0.0, 1.0), x1, steps=50, projection=lambda x0, t: wedge_fill(x0, y, m))
    F = fftn_c(out[:, 0])
    Fy = fftn_c(y[0, 0])
    assert torch.allclose(F[:, m], Fy[m].expand(64, -1), atol=1e-8)       # measured part: exactly the data
    spread = (F - F.mean(0)).abs().pow(2).mean(0)
    assert spread[m].max() < 1e-12 and spread[~m].mean() > 0.3 * D ** 3  # prior variance D³·1 inside the wedge


def test_likelihood_guidance_moves_samples_towards_the_data():
    g = torch.Generator().manual_seed(5)
    truth = 1.0 + 0.5 * torch.randn(1, 1, 6, 6, 6, generator=g, dtype=torch.float64)
    y = truth + 0.3 * torch.randn(truth.shape, generator=g, dtype=torch.float64)
    x1 = torch.randn(16, 1, 6, 6, 6, generator=g, dtype=torch.float64)
    v = gaussian_velocity(1.0, 0.5)
    free = flow_sample(v, x1, steps=100)
    guided = flow_sample(v, x1, steps=100, guidance_scale=1.0,
                         likelihood=lambda x0, t: ((x0 - y) ** 2).flatten(1).sum(1))
    err = lambda a: (a - y).pow(2).mean().item()          # data consistency
    assert err(guided) < 0.5 * err(free)
    # with a network, the gradient goes through it (backprop) or not; both guide
    net = build_velocity_model("unet", dict(base=4, mults=[1], attention=False)).double()
    torch.nn.init.normal_(net.conv_out.weight, std=0.01)
    x1 = x1[:2].contiguous()
    for bp in (True, False):
        out = flow_sample(net, x1, steps=10, backprop=bp, guidance_scale=1.0,
                          likelihood=lambda x0, t: ((x0 - y) ** 2).flatten(1).sum(1))
        assert err(out) < err(flow_sample(net, x1, steps=10))

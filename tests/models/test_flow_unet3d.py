"""UNet3D: shapes, zero-initialised output, condition embedding, and that it can fit a target."""

import pytest
import torch

from cryovox.models.unet3d import UNet3D, timestep_embedding


def test_timestep_embedding_matches_formula():
    t = torch.tensor([0.0, 3.0])
    e = timestep_embedding(t, 8)
    freqs = torch.exp(-torch.log(torch.tensor(10000.0)) * torch.arange(4) / 4)
    expected = torch.cat([torch.cos(3.0 * freqs), torch.sin(3.0 * freqs)])
    assert torch.allclose(e[1], expected, atol=1e-6)
    assert torch.allclose(e[0], torch.cat([torch.ones(4), torch.zeros(4)]))


def test_unet_shapes_zero_init_and_condition():
    torch.manual_seed(0)
    net = UNet3D(2, 3, base=8, mults=(1, 2), cond_dim=5)
    x = torch.randn(2, 2, 8, 8, 8)
    out = net(x, torch.tensor([0.1, 0.7]), torch.randn(2, 5))
    assert out.shape == (2, 3, 8, 8, 8)
    assert out.abs().max() == 0  # zero-initialised output layer
    with pytest.raises(ValueError, match="divisible"):
        net(torch.randn(1, 2, 5, 5, 5), torch.tensor([0.5]))
    with pytest.raises(ValueError, match="cond_dim"):
        UNet3D(1, 1, base=8, mults=(1,))(torch.randn(1, 1, 4, 4, 4), 0.5, torch.randn(1, 3))


def test_unet_condition_changes_output_after_training_step():
    torch.manual_seed(1)
    net = UNet3D(1, 1, base=8, mults=(1, 2), cond_dim=4, attention=True)
    x = torch.randn(2, 1, 8, 8, 8)
    c = torch.randn(2, 4)
    target = torch.randn(2, 1, 8, 8, 8)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    losses = []
    for _ in range(30):
        loss = (net(x, torch.tensor([0.2, 0.8]), c) - target).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
    with torch.no_grad():
        a = net(x, torch.tensor([0.2, 0.8]), c)
        b = net(x, torch.tensor([0.2, 0.8]), torch.zeros_like(c))
    assert (a - b).abs().mean() > 1e-4

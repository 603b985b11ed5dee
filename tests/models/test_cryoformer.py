"""CryoFormer's pieces against independent oracles: analytic projections of a Gaussian, the
simulator's particles, 6D rotations and the pose loss by hand, chunking, attention maps, and a
tiny pose-refinement run."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from cryovox.core.fft import rfftn_c
from cryovox.core.rotations import euler_to_matrix, geodesic_distance, random_rotations, rotvec_to_matrix
from cryovox.models import build_model, model_from_checkpoint
from cryovox.models.cryoformer import CryoFormerModel, render
from cryovox.models.cryoformer.poses import matrix_to_sixd, pose_loss, sixd_to_matrix

TINY = dict(channels=16, n_queries=8, blocks=1, heads=2, n_tokens=2, levels=4, log2_table=10, base_resolution=4,
            enc_width=32, enc_layers=1, init_steps=0)

# an anisotropic, off-centre Gaussian blob (pixels): its projections are known in closed form
CENTRE = torch.tensor([1.5, -1.0, 1.0], dtype=torch.float64)
AXES = rotvec_to_matrix(torch.tensor([0.3, -0.5, 0.8], dtype=torch.float64))
COV = AXES @ torch.diag(torch.tensor([1.6, 2.4, 1.9], dtype=torch.float64) ** 2) @ AXES.T


def gaussian(x: torch.Tensor) -> torch.Tensor:
    """The blob at volume coordinates ``x`` ``(..., 3)`` (px)."""
    d = x.double() - CENTRE
    return torch.exp(-0.5 * (d @ torch.linalg.inv(COV) * d).sum(-1))


def gaussian_projection(rot: torch.Tensor, box: int) -> torch.Tensor:
    """``∫ blob(Rᵀ r) dz`` on the image grid: a 2D Gaussian at ``(R c)_xy`` with covariance ``(R Σ Rᵀ)_xy``."""
    out = []
    k = torch.arange(box, dtype=torch.float64) - box // 2
    yy, xx = torch.meshgrid(k, k, indexing="ij")
    p = torch.stack([xx, yy], -1)
    for R in rot.double():
        c, S = R @ CENTRE, R @ COV @ R.T
        P = torch.linalg.inv(S)
        amp = math.sqrt(2 * math.pi / float(P[2, 2]))
        d = p - c[:2]
        out.append(amp * torch.exp(-0.5 * (d @ torch.linalg.inv(S[:2, :2]) * d).sum(-1)))
    return torch.stack(out)


def gaussian_map(box: int) -> torch.Tensor:
    return gaussian(render.grid_coords(box, dtype=torch.float64)).view(box, box, box)


def _rel(a, b) -> float:
    return float((a - b).norm() / b.norm())


def test_field_projection_equals_the_analytic_projection():
    """project() evaluates the field at Rᵀ r and sums along z (the RELION convention)."""
    rot = random_rotations(4, generator=torch.Generator().manual_seed(0))
    img = render.project(lambda x, c: gaussian(x), torch.zeros(4, 1), rot, 32, 16.0, chunk=5000)
    assert _rel(img, gaussian_projection(rot, 32)) < 1e-6


def test_voxel_projection_equals_the_analytic_projection():
    """project_volumes() trilinearly samples a voxel map at Rᵀ r: close to the exact projection."""
    rot = random_rotations(4, generator=torch.Generator().manual_seed(1))
    vols = gaussian_map(32)[None].expand(4, -1, -1, -1).float()
    img = render.project_volumes(vols, rot.float(), 16.0, chunk=3000)
    exact = gaussian_projection(rot, 32)
    assert _rel(img.double(), exact) < 0.04              # trilinear interpolation of a σ ≈ 2 px blob
    wrong = render.project_volumes(vols, rot.float().transpose(1, 2), 16.0)
    assert _rel(wrong.double(), exact) > 0.3


def test_predicted_particles_match_the_simulator(tmp_path):
    """The model's image formation (projection, CTF, shift) against ``simulate particles`` of the same map:
    noise-free images of the blob, read back through the ParticleDataset without re-centring."""
    from cryovox.data.particles import ParticleDataset
    from cryovox.io.mrc import write_map
    from cryovox.io.particles import read_particles
    from cryovox.pipelines.simulate import simulate_particles

    box = 24
    write_map(tmp_path / "blob.mrc", gaussian_map(box).float().numpy(), 3.0)
    sim = simulate_particles([tmp_path / "blob.mrc"], tmp_path / "sim", n=6, snr=float("inf"), shift=2.0, seed=3,
                             pad=3)
    table = read_particles(sim.files["star"])
    shifts = table.shifts_px.copy()
    ds = ParticleDataset(table.with_poses(table.rotations, np.zeros_like(shifts)), window=1.0)
    batch = ds.__getitems__(list(range(6)))
    model = CryoFormerModel(box=box, apix=3.0, zdim=2, projection="field", **TINY)
    model.field = lambda x, cond: gaussian(x).float()                   # the exact projection of the blob
    pred = model.predict(torch.zeros(6, 2), batch["rot"], batch["ctf"], -torch.from_numpy(shifts).float())
    assert _rel(pred, batch["image"]) < 0.015                           # the simulator's Fourier slicing error
    # the wrong shift sign or transposed rotations are far off
    assert _rel(model.predict(torch.zeros(6, 2), batch["rot"], batch["ctf"], torch.from_numpy(shifts).float()),
                batch["image"]) > 0.3
    assert _rel(model.predict(torch.zeros(6, 2), batch["rot"].transpose(1, 2), batch["ctf"],
                              -torch.from_numpy(shifts).float()), batch["image"]) > 0.3


def test_sixd_round_trip_and_orthonormality():
    R = random_rotations(20, generator=torch.Generator().manual_seed(4))
    assert torch.allclose(sixd_to_matrix(matrix_to_sixd(R)), R, atol=1e-12)
    M = sixd_to_matrix(torch.randn(50, 6, generator=torch.Generator().manual_seed(5), dtype=torch.float64))
    assert torch.allclose(M @ M.transpose(1, 2), torch.eye(3, dtype=torch.float64).expand(50, 3, 3), atol=1e-12)
    assert torch.allclose(torch.linalg.det(M), torch.ones(50, dtype=torch.float64), atol=1e-12)


def test_pose_loss_by_hand():
    """Rotation by θ about z: ‖R − I‖²_F = 4 (1 − cos θ); a shift of s px adds (s / D)²."""
    theta = 0.3
    R = euler_to_matrix(torch.tensor([math.degrees(theta)], dtype=torch.float64), 0.0, 0.0)
    I = torch.eye(3, dtype=torch.float64)[None]
    t0 = torch.zeros(1, 2, dtype=torch.float64)
    t1 = torch.tensor([[3.0, -4.0]], dtype=torch.float64)
    got = pose_loss(R, t1, I, t0, box=20)
    assert float(got) == pytest.approx(4 * (1 - math.cos(theta)) + (5.0 / 20) ** 2, rel=1e-12)


def test_model_projection_is_the_sum_of_the_decoded_map():
    """render at the identity = decoded map summed along z; at a 90° turn about z (grid points map onto
    grid points) = the turned map summed, in both projection modes; decode_fourier = rfftn_c(decode_volume)."""
    torch.manual_seed(0)
    model = CryoFormerModel(box=16, apix=2.0, zdim=3, **TINY).eval()
    z = torch.randn(2, 3)
    vol = model.decode_volume(z)
    quarter = euler_to_matrix(torch.tensor([90.0]), 0.0, 0.0).float()      # R = Rz(90°): x → −y …
    for proj in ("field", "voxel"):
        model.projection = proj
        with torch.no_grad():
            ident = model.render(z, torch.eye(3).expand(2, 3, 3))
            turned = model.render(z, quarter.expand(2, 3, 3))
        assert torch.allclose(ident, vol.sum(1), atol=1e-5 * float(vol.abs().max()) * 16)
        # oracle: P(x, y) = Σ_z V(Rᵀ r), evaluated by indexing the map
        k = torch.arange(16) - 8
        yy, xx = torch.meshgrid(k, k, indexing="ij")
        r = torch.stack([xx, yy, torch.zeros_like(xx)], -1).double() @ quarter[0].double()   # rows: Rᵀ r
        vx, vy = r[..., 0].round().long() + 8, r[..., 1].round().long() + 8
        ok = (vx >= 0) & (vx < 16) & (vy >= 0) & (vy < 16)
        want = torch.zeros(2, 16, 16)
        want[:, ok] = vol.sum(1)[:, vy[ok], vx[ok]]
        assert torch.allclose(turned, want, atol=1e-4 * float(vol.abs().max()) * 16), proj
    assert torch.allclose(model.decode_fourier(z), rfftn_c(vol, 3), atol=1e-4)


def test_chunking_and_checkpointing_do_not_change_images_or_gradients():
    torch.manual_seed(1)
    model = CryoFormerModel(box=12, apix=2.0, zdim=2, **TINY)
    z = torch.randn(3, 2)
    rot = random_rotations(3, generator=torch.Generator().manual_seed(2), dtype=torch.float32)
    for proj in ("field", "voxel"):
        model.projection = proj
        results = []
        for chunk in (1 << 20, 700):                  # one chunk, no checkpointing / many checkpointed chunks
            model.chunk = chunk
            r = rot.clone().requires_grad_(True)
            model.zero_grad()
            img = model.render(z, r)
            (img * torch.linspace(-1, 1, img.numel()).view_as(img)).sum().backward()
            results.append((img.detach(), r.grad.clone(), model.spatial.grid.tables.grad.clone()))
        (a, ga, ta), (b, gb, tb) = results
        assert torch.allclose(a, b, atol=1e-5 * float(a.abs().max())), proj
        assert torch.allclose(ga, gb, rtol=1e-4, atol=1e-4 * float(ga.abs().max())), proj
        assert torch.allclose(ta, tb, rtol=1e-4, atol=1e-4 * float(ta.abs().max())), proj


def test_attention_maps_and_ablations():
    torch.manual_seed(2)
    model = CryoFormerModel(box=12, apix=2.5, zdim=2, **TINY).eval()
    z = torch.randn(2, 2)
    att = model.attention_volume(z)                                   # all 8 queries
    assert att.shape == (2, 8, 12, 12, 12)
    inside = model.mask
    assert torch.allclose(att.sum(1)[:, inside], torch.ones(2, int(inside.sum())), atol=1e-5)
    assert float(att[:, :, ~inside].abs().max()) == 0.0
    one = model.attention_volume(z, [5], head=1)
    assert one.shape == (2, 1, 12, 12, 12) and float(one.min()) >= 0 and float(one.max()) <= 1
    with pytest.raises(ValueError):
        model.attention_volume(z, [8])
    flat = CryoFormerModel(box=12, apix=2.5, zdim=2, deformation=False, **TINY).eval()
    v = flat.decode_volume(torch.randn(3, 2))
    assert torch.allclose(v[0], v[1]) and torch.allclose(v[0], v[2])   # no deformation: one volume
    mlp = CryoFormerModel(box=12, apix=2.5, zdim=2, decoder="mlp", **TINY).eval()
    assert not torch.allclose(*mlp.decode_volume(torch.randn(2, 2)))
    with pytest.raises(ValueError):
        mlp.attention_volume(z, [0])


def test_checkpoint_round_trip():
    torch.manual_seed(3)
    model = CryoFormerModel(box=12, apix=2.5, zdim=2, **TINY).eval()
    with torch.no_grad():
        model.density_scale.fill_(3.5)
    state = {"kind": model.kind, "config": model.config(), "model": model.state_dict()}
    again = model_from_checkpoint(state)
    z = torch.randn(2, 2)
    assert isinstance(again, CryoFormerModel) and again.config() == model.config()
    assert torch.equal(again.decode_volume(z), model.decode_volume(z))
    assert isinstance(build_model("cryoformer", model.config()), CryoFormerModel)


def test_fit_map_reaches_a_map():
    """prepare's consensus fit: the field at z = 0 approaches the given map (relative error << 1)."""
    torch.manual_seed(4)
    model = CryoFormerModel(box=16, apix=2.0, zdim=2, **dict(TINY, levels=6, base_resolution=4, log2_table=12))
    target = gaussian_map(16).float() * 5.0
    model.fit_map(target, steps=80, points=1024, lr=2e-2)
    got = model.decode_volume(torch.zeros(1, 2))[0]
    assert _rel(got[model.mask], target[model.mask]) < 0.15
    assert float(model.density_scale) == pytest.approx(float(target[model.mask].std()), rel=1e-5)


# three blobs (the one above and two round ones off-centre, px): no symmetry a local search could confuse
BLOBS = [(CENTRE, COV, 1.0),
         (torch.tensor([-4.0, 3.0, -1.5], dtype=torch.float64), torch.eye(3, dtype=torch.float64) * 1.3 ** 2, 0.8),
         (torch.tensor([2.5, 4.0, -3.5], dtype=torch.float64), torch.eye(3, dtype=torch.float64) * 1.5 ** 2, 0.6)]


def blobs_map(box: int) -> torch.Tensor:
    x = render.grid_coords(box, dtype=torch.float64)
    out = 0
    for c, S, a in BLOBS:
        d = x - c
        out = out + a * torch.exp(-0.5 * (d @ torch.linalg.inv(S) * d).sum(-1))
    return out.view(box, box, box)


def blobs_projection(rot: torch.Tensor, box: int) -> torch.Tensor:
    """Exact projections of :data:`BLOBS` (each a 2D Gaussian, as :func:`gaussian_projection`)."""
    k = torch.arange(box, dtype=torch.float64) - box // 2
    yy, xx = torch.meshgrid(k, k, indexing="ij")
    p = torch.stack([xx, yy], -1)
    out = torch.zeros(rot.shape[0], box, box, dtype=torch.float64)
    for i, R in enumerate(rot.double()):
        for c, S, a in BLOBS:
            cc, SS = R @ c, R @ S @ R.T
            amp = a * math.sqrt(2 * math.pi / float(torch.linalg.inv(SS)[2, 2]))
            d = p - cc[:2]
            out[i] += amp * torch.exp(-0.5 * (d @ torch.linalg.inv(SS[:2, :2]) * d).sum(-1))
    return out


def _search_problem(n: int, box: int, turn_deg: float, true_shift: torch.Tensor, seed: int):
    """Noise-free images of the blobs at random true poses and shifts (exact projections, CTF), input poses
    turned by ``turn_deg`` about random axes, input shifts 0 (the images are centred by them)."""
    from cryovox.core.ctf import compute_ctf
    from cryovox.models.hetero.loss import data_spectra

    true = random_rotations(n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    axis = torch.randn(n, 3, generator=torch.Generator().manual_seed(seed + 1), dtype=torch.float64)
    given = true @ rotvec_to_matrix(axis / axis.norm(dim=1, keepdim=True) * math.radians(turn_deg))
    ctf = compute_ctf(box, 3.0, torch.full((n,), 8000.0), torch.full((n,), 8000.0), torch.zeros(n), 300.0, 2.7,
                      0.1, half=True, dtype=torch.float32)
    from cryovox.core.fft import phase_ramp_2d

    images = (rfftn_c(blobs_projection(true, box), 2) * phase_ramp_2d(-true_shift, box, half=True)).to(
        torch.complex64) * ctf
    batch = {"image": images, "ctf": ctf, "rot": given.float(), "shift": torch.zeros(n, 2), "index": torch.arange(n)}
    return batch, true, data_spectra([batch], box, box / 2)


@pytest.mark.parametrize("soft", [False, True])
def test_local_search_recovers_perturbed_poses(soft):
    """The search in a known map (the blobs, as a decoded map would be) from input poses 6° off and shifts
    0.7 px off: the rotation error against the true poses (an independent oracle: exact projections made the
    images) falls below 1°, the shifts are found to a quarter pixel; with a tight prior (0.05°) the poses stay.
    Both moves: to the best candidate, and to the candidates' posterior mean (``soft``)."""
    box, n = 24, 6
    true_shift = torch.tensor([[0.7, -0.5]]).expand(n, 2).double()
    batch, true, stats = _search_problem(n, box, 6.0, true_shift, seed=6)
    vols = blobs_map(box)[None].expand(n, -1, -1, -1).float()
    errs = {}
    for prior in (None, 0.05):
        model = CryoFormerModel(box=box, apix=3.0, zdim=2, pose_prior_deg=prior, **TINY)
        model.set_data_statistics(stats)
        rot, shift, score = model.local_search(vols, batch, batch["rot"].double(), batch["shift"].double(),
                                               step_deg=4.0, step_px=1.0, levels=5, soft=soft)
        errs[prior] = float(geodesic_distance(rot, true).mean())
        if prior is None:
            assert float((shift - true_shift).abs().max()) < 0.25, shift
    before = float(geodesic_distance(batch["rot"].double(), true).mean())
    assert before == pytest.approx(6.0, abs=1e-3)
    assert errs[None] < 1.0, errs
    assert errs[0.05] == pytest.approx(before, abs=0.2), errs


def test_pose_refinement_in_training_lowers_the_rotation_error():
    """Training with the map fixed (the model's decoded maps replaced by the blobs): one pose pre-training
    epoch, then refining epochs (coarse to fine search steps, 1 level per batch): the refined poses come back
    in the loss terms, are kept per particle, and approach the true poses epoch after epoch."""
    box, n = 24, 8
    batch, true, stats = _search_problem(n, box, 7.0, torch.zeros(n, 2, dtype=torch.float64), seed=9)
    torch.manual_seed(5)
    model = CryoFormerModel(box=box, apix=3.0, zdim=2, pose_pretrain_epochs=1, search_deg=4.0, search_levels=1,
                            pose_prior_deg=None, **TINY)
    model.set_particle_count(n)
    model.set_data_statistics(stats)
    model.volumes = lambda cond: blobs_map(box)[None].expand(cond[0].shape[0], -1, -1, -1).float()
    model.train()
    model.start_epoch(0)
    assert model.loss(batch, beta=0.0).rot is None               # pre-training: input poses
    errors = []
    for epoch in range(1, 5):
        model.start_epoch(epoch)
        assert model.search_steps()[0] == 4.0 * 0.5 ** (epoch - 1)
        out = model.loss(batch, beta=0.0)
        errors.append(float(geodesic_distance(out.rot, true).mean()))
        kept, _ = model.current_poses(batch)
        assert torch.allclose(kept, out.rot, atol=1e-12)         # the next search starts there
    assert errors[0] < 7.0 and all(b <= a + 1e-9 for a, b in zip(errors, errors[1:])), errors
    assert errors[-1] < 1.5, errors


def test_pose_prior_by_hand():
    """A turn by θ about z and a shift t from the input pose: the MAP prior is 4 (1 − cos θ) / 4σ_r² +
    |t|² / 2σ_t² nats; no prior: zero."""
    theta, t = 0.2, torch.tensor([1.5, -0.5], dtype=torch.float64)
    turn = euler_to_matrix(torch.tensor(math.degrees(theta), dtype=torch.float64), 0.0, 0.0)
    I, t0 = torch.eye(3, dtype=torch.float64), torch.zeros(2, dtype=torch.float64)
    kw = dict(box=12, apix=2.0, zdim=2, pose_prior_px=2.0, **TINY)
    with_prior = CryoFormerModel(pose_prior_deg=4.0, **kw).pose_prior_nats(turn, t, I, t0)
    sr = math.radians(4.0)
    want = 4 * (1 - math.cos(theta)) / (4 * sr * sr) + float((t ** 2).sum()) / (2 * 2.0 ** 2)
    assert float(with_prior) == pytest.approx(want, rel=1e-12)
    assert float(CryoFormerModel(pose_prior_deg=None, **kw).pose_prior_nats(turn, t, I, t0)) == 0.0


def test_transformer_decoder_learns_to_use_z():
    """Two different maps for z = −1 and z = +1 (no images): after a short fit the decoded maps follow z.
    The decoder of the previous release (no direct W_z z term, a one-layer head) fails this: its two maps
    stay equally far from both targets (relative errors 0.4456 and 0.4456 after 300 steps)."""
    torch.manual_seed(5)
    box = 16          # the default transformer (64 queries × 64, 3 blocks, 4 tokens) on a small hash grid
    model = CryoFormerModel(box=box, apix=2.0, zdim=2, levels=6, log2_table=12, base_resolution=4, enc_width=32,
                            enc_layers=1, init_steps=0)
    r = render.grid_coords(box)[model.mask.reshape(-1)]
    blob = lambda c: torch.exp(-((r - torch.tensor(c)) ** 2).sum(-1) / (2 * 1.5 ** 2))
    maps = torch.stack([blob([3.0, 0.0, 0.0]) + blob([0.0, 2.0, 0.0]), blob([-3.0, 0.0, 0.0]) + blob([0.0, 2.0, 0.0])])
    z = torch.tensor([[-1.0, 0.0], [1.0, 0.0]])
    opt = torch.optim.Adam(model.param_groups(3e-3, 1e-2))
    for _ in range(150):
        loss = ((model.shared_field(r, model.condition(z)) - maps) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        got = model.shared_field(r, model.condition(z))
    for k in range(2):
        assert _rel(got[k], maps[k]) < 0.5 * _rel(got[k], maps[1 - k]), k


def test_basis_features_are_the_sfbp_posterior_of_a_fixed_basis():
    """The deformation encoder's default input: the frozen SFBP model's basis features (2K numbers), which
    do not change with training (no gradients reach the feature basis) and are the image features' size
    only with enc_features="image"."""
    from cryovox.models.hetero.model import SFBPModel

    torch.manual_seed(6)
    box = 12
    model = CryoFormerModel(box=box, apix=2.5, zdim=2, feature_basis=5, **TINY)
    assert isinstance(model.feature_model, SFBPModel)
    assert not any(p.requires_grad for p in model.feature_model.parameters())
    assert all(p.requires_grad for g in model.param_groups(1e-3) for p in g["params"])
    g = torch.Generator().manual_seed(0)
    batch = {"image": rfftn_c(torch.randn(4, box, box, generator=g), 2), "ctf": torch.ones(4, box, box // 2 + 1),
             "rot": random_rotations(4, generator=g, dtype=torch.float32), "shift": torch.zeros(4, 2),
             "index": torch.arange(4)}
    feats = model.deformation_features(batch)
    assert feats.shape == (4, 10)
    assert torch.allclose(feats, model.feature_model.basis_features(batch))
    model.loss(batch, beta=0.1).total.backward()
    assert model.encoder.net[0].weight.grad is not None
    both = CryoFormerModel(box=box, apix=2.5, zdim=2, feature_basis=5, enc_features="both", **TINY)
    assert both.deformation_features(batch).shape == (4, 10 + both.enc_box ** 2)
    image = CryoFormerModel(box=box, apix=2.5, zdim=2, enc_features="image", **TINY)
    assert image.feature_model is None and image.deformation_features(batch).shape == (4, image.enc_box ** 2)
    with pytest.raises(ValueError):
        CryoFormerModel(box=box, apix=2.5, zdim=2, enc_features="pixels", **TINY)


def test_z_warmup_decodes_the_posterior_mean_first():
    """During the first z_warmup_epochs the loss does not depend on the reparameterisation noise (z = mu);
    afterwards it does; in eval mode it never does."""
    torch.manual_seed(7)
    box = 12
    model = CryoFormerModel(box=box, apix=2.5, zdim=2, z_warmup_epochs=2, refine_poses=False, **TINY)
    g = torch.Generator().manual_seed(0)
    batch = {"image": rfftn_c(torch.randn(3, box, box, generator=g), 2), "ctf": torch.ones(3, box, box // 2 + 1),
             "rot": random_rotations(3, generator=g, dtype=torch.float32), "shift": torch.zeros(3, 2),
             "index": torch.arange(3)}

    def nll(epoch, seed):
        model.start_epoch(epoch)
        with torch.no_grad():
            return model.loss(batch, generator=torch.Generator().manual_seed(seed)).nll

    model.train()
    assert torch.equal(nll(1, 0), nll(1, 1))
    assert not torch.equal(nll(2, 0), nll(2, 1))
    model.eval()
    assert torch.equal(nll(2, 0), nll(2, 1))
    # the noise comes in gradually: 0 during the warm-up, then 1/3, 2/3, 1 (w = 2)
    scales = []
    for epoch in range(6):
        model.start_epoch(epoch)
        scales.append(model.z_noise_scale())
    assert scales == pytest.approx([0, 0, 1 / 3, 2 / 3, 1, 1])
    assert CryoFormerModel(box=box, apix=2.5, zdim=2, z_warmup_epochs=0, refine_poses=False, **TINY).z_noise_scale() == 1
    with pytest.raises(ValueError):
        CryoFormerModel(box=box, apix=2.5, zdim=2, z_warmup_epochs=-1, **TINY)


def test_pose_search_uses_the_posterior_mean_map():
    """After the warm-up z is sampled for the image loss, but each particle's pose is searched in its map at
    z = mu: the searched poses do not depend on the reparameterisation noise."""
    torch.manual_seed(3)
    box = 12
    model = CryoFormerModel(box=box, apix=2.5, zdim=2, z_warmup_epochs=1, pose_pretrain_epochs=0, **TINY)
    model.set_particle_count(4)
    g = torch.Generator().manual_seed(0)
    batch = {"image": rfftn_c(torch.randn(4, box, box, generator=g), 2), "ctf": torch.ones(4, box, box // 2 + 1),
             "rot": random_rotations(4, generator=g, dtype=torch.float32), "shift": torch.zeros(4, 2),
             "index": torch.arange(4)}
    with torch.no_grad():                       # make the decoder depend on z strongly
        for p in model.decoder.parameters():
            p.add_(0.5 * torch.randn(p.shape, generator=g))
    model.train()
    model.start_epoch(3)
    assert model.z_noise_scale() == 1 and model.refining
    out = []
    for seed in (0, 1):
        model.set_particle_count(0)             # both searches start from the input poses
        model.set_particle_count(4)
        out.append(model.loss(batch, generator=torch.Generator().manual_seed(seed)))
    assert not torch.equal(out[0].nll, out[1].nll)          # z was sampled
    assert torch.equal(out[0].rot, out[1].rot) and torch.equal(out[0].shift, out[1].shift)

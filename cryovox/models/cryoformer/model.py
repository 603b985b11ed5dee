"""CryoFormer (Liu et al., ICLR 2024) as a cryovox heterogeneity model (``kind = "cryoformer"``).

Per particle (a batch of :class:`cryovox.data.particles.ParticleDataset`):

* the deformation encoder (an MLP) gives the posterior ``(mu, logvar)`` of the deformation
  embedding ``z`` (a VAE, as the other models, so that ``analyze`` and ``eval-vol`` read it the same
  way). Its input (``enc_features``) is by default ``"basis"``: the linear-Gaussian posterior of the
  coefficients of ``feature_basis`` fixed random basis volumes around the consensus map, at the
  particle's input pose (:meth:`cryovox.models.hetero.model.SFBPModel.basis_features`, computed by a
  frozen SFBP model that holds the basis; no gradients, nothing learnt). These numbers live in the
  volume's frame: the pose, CTF and noise are already accounted for, so particles of one state give
  similar features whatever their orientation. ``"image"`` is the paper's input, the particle's
  encoder image (recentred, phase-flipped, whitened, low-passed to ``enc_radius``:
  :func:`cryovox.models.hetero.encoder.encoder_images`), from which an MLP must learn to undo the
  pose before it can see the state; on the 500-particle hinge benchmark (box 32, SNR 0.1) a
  cross-validated linear read-out of the true state reaches Spearman ρ −0.04 from the image features
  and 0.53 from 16 basis features, and with image features the latent collapsed to the prior.
  ``"both"`` concatenates them;
* the orientation encoder (:mod:`.poses`) gives a pose ``(R̂, t̂)`` from the same image and the
  input pose. For the first ``pose_pretrain_epochs`` epochs it learns the input poses with the pose
  loss of the paper while images are rendered at the input poses. Afterwards (``refine_poses``) each
  batch runs a **local pose search** (:meth:`CryoFormerModel.local_search`): the particle's map, decoded
  once on the voxel grid, is projected (Fourier slices, :func:`cryovox.core.slicing.project_volume`)
  at a local SO(3) grid around the particle's current pose estimate (:func:`cryovox.core.so3.local_grid`,
  27 rotations at step ``s``) and at the orientation encoder's pose, each combined with the in-plane
  shifts ``t + s_t·{−1, 0, 1}²``, scored by the image loss (no gradients). With ``search_mean`` (the
  default) the pose moves to the candidates' posterior mean (weights ``exp(−score)``, the scores rescaled
  from the loss's σ², the data's power, to the noise power estimated from the particle's residual at its
  current pose; the mean rotation projected back onto SO(3)), otherwise to the best candidate. The map
  searched is the one at the posterior mean ``z = mu``, also once the loss decodes a sample of ``z`` (a
  sample's map is a noisier estimate of the particle's state). ``search_levels`` such levels run per
  batch, each at half the previous step. The step shrinks over the refining epochs, coarse to fine as
  RELION's local searches: ``s = max(search_deg / 2^k, search_min_deg)`` in the ``k``-th refining epoch
  (``s_t = search_px · min(1, s / search_deg)``). The result is kept per particle (buffers ``pose_delta``
  and ``pose_dshift``, saved in checkpoints: the next epoch's search starts there, and ``--resume``
  continues bit for bit), the training loss is computed at it, and the
  orientation encoder follows it through the pose loss (an amortised pose predictor, as in the paper,
  whose output is one of the candidates). Each particle is seen once per epoch; a gradient step on
  its pose per epoch cannot move it by degrees in a few epochs, a search can. With ``pose_prior_deg``
  the candidates' scores include a Gaussian prior around the input pose (``‖R − R_in‖²_F / 4σ_r² +
  ‖t − t_in‖² / 2σ_t²`` nats, i.e. ``θ²/2σ_r²`` for a turn by ``θ``: posterior-mean or MAP poses), which
  keeps the poses from drifting where the images say little (low SNR);
* the density field ``σ(x, z)`` (:mod:`.decoder`: hash-grid spatial features, query-based
  deformation transformer, spatial cross-attention, density head) is projected in real space along
  z of the rotated grid (:mod:`.render`; ``projection="voxel"``, the default, decodes each
  particle's map on the voxel grid, where the spatial features are shared by the batch, and samples
  it trilinearly at the rotated points — about 3× faster on a CPU; ``"field"`` evaluates the
  network at every rotated point, as the paper does), transformed
  (:func:`cryovox.core.fft.rfftn_c`), multiplied by the particle's CTF, shifted by ``t_in − t̂``
  (the dataset's images are already centred by the input shift ``t_in``), and compared with the
  image transform.

Objective per particle: ``nll = ½ Σ_k w_k |Y − Ŷ|² / σ²`` over the Fourier samples inside
``radius`` (``w`` the Hermitian weights; by Parseval this is the real-space squared error of the
low-passed images, i.e. the MSE image loss, in units of a white noise variance ``σ²`` taken as the
data's mean power per sample), plus ``β`` KL; with refinement plus the orientation encoder's pose loss
(towards the input poses while pre-training, towards the searched poses afterwards).

Before training (:meth:`CryoFormerModel.prepare`): the data power sets ``σ²`` and the encoder's
whitening; a consensus map (when given) sets the density scale and the field is fitted to it
(at ``z = 0``) for ``init_steps`` steps, so that training starts from the consensus, as the SFBP
model starts its ``V_0`` there.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from cryovox.core.fft import phase_ramp_2d, rfftn_c
from cryovox.core.rotations import geodesic_distance, project_to_so3
from cryovox.models import HeteroModel, LossTerms
from cryovox.models.cryoformer import render
from cryovox.models.cryoformer.decoder import MLPDecoder, QueryDecoder, SpatialFeatures
from cryovox.models.cryoformer.poses import OrientationEncoder, pose_loss
from cryovox.models.hetero.encoder import ImageEncoder, encoder_box, encoder_images
from cryovox.models.hetero.loss import gaussian_nll, kl_standard_normal, pixel_shells
from cryovox.models.hetero.model import ENC_FEATURES, SFBPModel

DECODERS = ("transformer", "mlp")
PROJECTIONS = ("field", "voxel")


@dataclass
class CryoFormerLoss(LossTerms):
    """:class:`~cryovox.models.LossTerms` plus the poses the images were rendered at when they were
    refined (``rot`` ``(B, 3, 3)``, ``shift`` ``(B, 2)`` px; None otherwise) and the mean pose loss."""

    rot: Tensor | None = None
    shift: Tensor | None = None
    pose: Tensor | None = None


class CryoFormerModel(HeteroModel):
    """CryoFormer: real-space hash-grid decoder, query-based deformation transformer, pose refinement.

    box: ``D`` (px); apix: Å/px; zdim: size of the deformation embedding; channels: feature width
    ``C`` (64); n_queries: learnable queries (64); blocks: transformer decoder blocks (3); heads:
    attention heads (4); n_tokens: deformation tokens made from ``z`` (4); levels, level_features,
    log2_table, base_resolution, max_resolution: hash grid (16, 2, 15, 16, default ``D``);
    enc_width/enc_layers: both encoders' MLPs; enc_features: the deformation encoder's input,
    ``"basis"``, ``"image"`` or ``"both"`` (module docstring); feature_basis: number of fixed random
    basis volumes of the ``"basis"`` features (16); enc_radius: highest frequency (px) of the encoder
    images (default ``D/4``); radius: Fourier radius (px) of the image loss (default ``D/2``);
    support: radius (px) of the ball where the density lives (default ``D/2``); decoder:
    ``"transformer"`` or ``"mlp"`` (ablation); deformation: False drops the deformation encoder
    (ablation: one volume for all particles); refine_poses / pose_pretrain_epochs / search_deg /
    search_min_deg / search_px / search_levels / search_pad / pose_prior_deg / pose_prior_px /
    search_mean: pose refinement (module docstring; steps and prior widths in degrees and pixels,
    ``pose_prior_deg=None``:
    no prior; ``search_pad``: oversampling of the search's Fourier slices); n_particles: rows of the
    per-particle pose estimates (set by :meth:`prepare`); projection: ``"voxel"`` or ``"field"``
    (:mod:`.render`); chunk: (particle × point) evaluations per rendering chunk (the memory bound; a
    batch that fits in one chunk runs without activation checkpointing: at 2^20 a step of 4 particles of
    box 64 does, 1.6 → 1.1 s per particle on one CPU thread for 1.1 → 1.9 GB peak, against 2^18);
    init_steps / init_points: consensus fit in :meth:`prepare`; z_warmup_epochs: the first epochs decode the
    encoder's posterior mean ``z = mu`` without the KL term (a plain autoencoder) instead of a sample; over
    as many epochs again the reparameterisation noise and the KL weight rise linearly to their full values
    (:meth:`z_noise_scale`). This decoder needs hundreds of steps before it uses ``z`` at all; sampled from
    the start, ``z`` is mostly noise (posterior σ ≈ 1 against means spread by ~0.05) and the decoder learns
    to ignore it. On the 500-particle hinge set at SNR 1 (12 epochs, batch 8, no refinement) |ρ| of PC1
    against the state reached 0.80 with 3 warm-up epochs (mean per-state FSC-AUC 0.862) against 0.37
    (0.829) without; SFBP on the same particles 0.78 (0.869). With the input rotations 5° off, the abrupt
    switch from ``mu`` to samples collapsed the latent (|ρ| 0.03); the autoencoder warm-up and its ramp
    keep it (|ρ| 0.78, FSC-AUC 0.818). At SNR 0.1 (1500 particles) it still collapses (|ρ| 0.02).
    """

    kind = "cryoformer"

    def __init__(self, box: int, apix: float, zdim: int = 8, channels: int = 64, n_queries: int = 64,
                 blocks: int = 3, heads: int = 4, n_tokens: int = 4, levels: int = 16, level_features: int = 2,
                 log2_table: int = 15, base_resolution: int = 16, max_resolution: int | None = None,
                 enc_width: int = 256, enc_layers: int = 3, enc_features: str = "basis", feature_basis: int = 16,
                 enc_radius: float | None = None, radius: float | None = None, support: float | None = None,
                 decoder: str = "transformer",
                 deformation: bool = True, refine_poses: bool = True, pose_pretrain_epochs: int = 6,
                 search_deg: float = 4.0, search_min_deg: float = 0.5, search_px: float = 1.0,
                 search_levels: int = 2, search_pad: int = 2, pose_prior_deg: float | None = 5.0,
                 pose_prior_px: float = 1.0, n_particles: int = 0,
                 projection: str = "voxel", chunk: int = 1 << 20, init_steps: int = 200, init_points: int = 8192,
                 z_warmup_epochs: int = 3, search_mean: bool = True):
        super().__init__()
        if zdim < 1:
            raise ValueError("zdim must be >= 1")
        if decoder not in DECODERS:
            raise ValueError(f"decoder must be one of {DECODERS}, not {decoder!r}")
        if enc_features not in ENC_FEATURES:
            raise ValueError(f"enc_features must be one of {ENC_FEATURES}, not {enc_features!r}")
        if feature_basis < 1:
            raise ValueError("feature_basis must be >= 1")
        if projection not in PROJECTIONS:
            raise ValueError(f"projection must be one of {PROJECTIONS}, not {projection!r}")
        if pose_pretrain_epochs < 0:
            raise ValueError("pose_pretrain_epochs must be >= 0")
        if z_warmup_epochs < 0:
            raise ValueError("z_warmup_epochs must be >= 0")
        if not (search_deg > 0 and search_min_deg > 0 and search_px >= 0 and search_levels >= 1 and search_pad >= 1):
            raise ValueError("search_deg and search_min_deg must be > 0, search_px >= 0, search_levels and "
                             "search_pad >= 1")
        self.box, self.apix, self.zdim = int(box), float(apix), int(zdim)
        self.radius = float(box / 2 if radius is None else radius)
        self.support = float(box / 2 if support is None else support)
        self.enc_radius = float(min(self.radius, box / 4 if enc_radius is None else enc_radius))
        self.enc_box = encoder_box(box, self.enc_radius)
        max_resolution = int(box if max_resolution is None else max_resolution)
        self._config = dict(box=self.box, apix=self.apix, zdim=self.zdim, channels=int(channels),
                            n_queries=int(n_queries), blocks=int(blocks), heads=int(heads), n_tokens=int(n_tokens),
                            levels=int(levels), level_features=int(level_features), log2_table=int(log2_table),
                            base_resolution=int(base_resolution), max_resolution=max_resolution,
                            enc_width=int(enc_width), enc_layers=int(enc_layers), enc_features=str(enc_features),
                            feature_basis=int(feature_basis), enc_radius=self.enc_radius,
                            radius=self.radius, support=self.support, decoder=str(decoder),
                            deformation=bool(deformation), refine_poses=bool(refine_poses),
                            pose_pretrain_epochs=int(pose_pretrain_epochs), search_deg=float(search_deg),
                            search_min_deg=float(search_min_deg), search_px=float(search_px),
                            search_levels=int(search_levels), search_pad=int(search_pad),
                            n_particles=int(n_particles), projection=str(projection),
                            pose_prior_deg=None if pose_prior_deg is None else float(pose_prior_deg),
                            pose_prior_px=float(pose_prior_px),
                            chunk=int(chunk),
                            init_steps=int(init_steps), init_points=int(init_points),
                            z_warmup_epochs=int(z_warmup_epochs), search_mean=bool(search_mean))
        self.deformation, self.refine_poses = bool(deformation), bool(refine_poses)
        self.pose_pretrain_epochs = int(pose_pretrain_epochs)
        self.chunk = int(chunk)
        self.z_warmup_epochs = int(z_warmup_epochs)
        self.projection = projection
        n_in = self.enc_box ** 2
        self.enc_features = enc_features if deformation else "image"
        # the frozen SFBP model that holds the fixed random basis of the "basis" features (module docstring);
        # only its basis, bias (the consensus) and noise model are used
        self.feature_model = None
        if deformation and self.enc_features in ("basis", "both"):
            self.feature_model = SFBPModel(box, apix, zdim=1, n_basis=feature_basis, enc_width=1, enc_layers=1,
                                           dec_width=1, dec_blocks=0, radius=self.radius)
            self.feature_model.requires_grad_(False)
        n_def = (n_in if self.enc_features in ("image", "both") else 0) + \
            (2 * feature_basis if self.enc_features in ("basis", "both") else 0)
        self.encoder = ImageEncoder(n_def, zdim, enc_width, enc_layers) if deformation else None
        self.orientation = OrientationEncoder(n_in, box, enc_width, enc_layers) if refine_poses else None
        self.search_deg, self.search_min_deg = float(search_deg), float(search_min_deg)
        self.search_px, self.search_levels, self.search_pad = float(search_px), int(search_levels), int(search_pad)
        self.search_mean = bool(search_mean)
        # each particle's current pose estimate relative to its input pose (R = pose_delta @ R_in,
        # t = t_in + pose_dshift px); rows: particles of the data set (sized by prepare())
        self.register_buffer("pose_delta", torch.eye(3, dtype=torch.float64).repeat(int(n_particles), 1, 1))
        self.register_buffer("pose_dshift", torch.zeros(int(n_particles), 2, dtype=torch.float64))
        self.register_buffer("pose_seen", torch.zeros(int(n_particles), dtype=torch.bool))  # searched this epoch
        # per-process state under DDP (each process searches its own particles): not broadcast from rank 0
        self._ddp_params_and_buffers_to_ignore = ["pose_delta", "pose_dshift", "pose_seen"]
        if pose_prior_deg is not None and not (pose_prior_deg > 0 and pose_prior_px > 0):
            raise ValueError("pose_prior_deg and pose_prior_px must be > 0 (or pose_prior_deg None: no prior)")
        self.pose_prior = None if pose_prior_deg is None else (math.radians(pose_prior_deg), float(pose_prior_px))
        self.spatial = SpatialFeatures(channels, levels, level_features, log2_table, base_resolution,
                                       max_resolution, hidden=channels)
        if decoder == "transformer":
            self.decoder = QueryDecoder(zdim, channels, n_queries, blocks, heads, n_tokens, deformation)
        else:
            self.decoder = MLPDecoder(zdim, channels, deformation=deformation)
        nshell = box // 2 + 1
        self.register_buffer("data_power", torch.ones(nshell))           # mean |Y|² per sample and shell
        self.register_buffer("noise_var", torch.ones(()))                 # σ² of the image loss
        self.register_buffer("density_scale", torch.ones(()))             # field output → image units per voxel
        self.register_buffer("mask", render.ball_mask(self.box, self.support))  # where the density lives
        self.epoch = 0
        self._cache: dict[tuple, Tensor] = {}

    def config(self) -> dict[str, Any]:
        return dict(self._config)

    # -- training phase --------------------------------------------------------------------------
    def start_epoch(self, epoch: int) -> None:
        """Called by ``train-hetero`` before each epoch: selects pose pre-training or refinement and the
        search step. Under ``torch.distributed`` the processes first exchange the pose estimates of the
        particles each searched in the previous epoch (a particle searched by two processes, as the
        sampler's padding does, gets the mean, projected back onto SO(3))."""
        self.epoch = int(epoch)
        import torch.distributed as tdist

        if tdist.is_available() and tdist.is_initialized() and tdist.get_world_size() > 1 and len(self.pose_seen):
            seen = self.pose_seen.to(torch.float64)
            parts = torch.cat([(self.pose_delta * seen[:, None, None]).reshape(-1, 9),
                               self.pose_dshift * seen[:, None], seen[:, None]], 1)
            tdist.all_reduce(parts)
            count = parts[:, -1]
            hit = count > 0
            if bool(hit.any()):
                mean = parts[hit, :9].reshape(-1, 3, 3) / count[hit, None, None]
                with torch.no_grad():
                    self.pose_delta[hit] = project_to_so3(mean)
                    self.pose_dshift[hit] = parts[hit, 9:11] / count[hit, None]
        with torch.no_grad():
            self.pose_seen.zero_()

    def search_steps(self) -> tuple[float, float]:
        """This epoch's first search level's rotation step (degrees) and shift step (px): halved each
        refining epoch, the rotation step down to ``search_min_deg``."""
        k = max(0, self.epoch - self.pose_pretrain_epochs)
        step = max(self.search_deg * 0.5 ** k, self.search_min_deg)
        return step, self.search_px * min(1.0, step / self.search_deg)

    def z_noise_scale(self) -> float:
        """This epoch's factor on the reparameterisation noise of ``z``: 0 for the first ``z_warmup_epochs``
        (``z = mu``), then rising linearly to 1 over as many epochs again (``z = mu + f·σ·ε``; no warm-up: 1)."""
        w = self.z_warmup_epochs
        if w == 0:
            return 1.0
        return min(1.0, max(0.0, (self.epoch - w + 1) / (w + 1)))

    @property
    def refining(self) -> bool:
        """True when images are rendered at the orientation encoder's poses (after pre-training)."""
        return self.refine_poses and self.epoch >= self.pose_pretrain_epochs

    # -- the field -------------------------------------------------------------------------------
    def features(self, x: Tensor) -> Tensor:
        """Spatial features ``(..., C)`` at volume coordinates ``x`` ``(..., 3)`` (px from the centre voxel)."""
        return self.spatial((x / (2.0 * self.support) + 0.5).reshape(-1, 3)).view(*x.shape[:-1], -1)

    def field(self, x: Tensor, cond) -> Tensor:
        """Densities ``(B, n)`` (image units per voxel) at per-particle coordinates ``x`` ``(B, n, 3)`` (px)
        for the particles' conditioning ``cond`` (:meth:`condition`)."""
        return self.decoder.density(self.features(x), cond) * self.density_scale

    def shared_field(self, x: Tensor, cond) -> Tensor:
        """Densities ``(B, n)`` of the B particles of ``cond`` at the same points ``x`` ``(n, 3)`` (px)."""
        return self.decoder.density(self.features(x)[None], cond) * self.density_scale

    def condition(self, z: Tensor):
        """Per-particle conditioning of the decoder from ``z`` ``(B, zdim)``."""
        return self.decoder.condition(z.to(self.density_scale.dtype))

    def _field_params(self) -> list[Tensor]:
        return list(self.spatial.parameters()) + list(self.decoder.parameters())

    def volumes(self, cond) -> Tensor:
        """The B particles' maps ``(B, D, D, D)`` on the voxel grid (zero outside the support), differentiable
        (chunked, checkpointed when large: :func:`.render.evaluate_points`)."""
        B = (cond[0] if isinstance(cond, tuple) else cond).shape[0]
        inside = self.mask.reshape(-1).nonzero().reshape(-1)
        coords = render.grid_coords(self.box, self.mask.device, self.density_scale.dtype)[inside]
        dens = render.evaluate_points(self.shared_field, cond, coords, batch=B, chunk=self.chunk,
                                      params=self._field_params())
        return dens.new_zeros(B, self.box ** 3).index_copy(1, inside, dens).view(B, self.box, self.box, self.box)

    def _project(self, cond, vols: Tensor | None, rot: Tensor) -> Tensor:
        """Real-space projections at ``rot``: of ``vols`` (voxel projection) or of the field (``vols`` None)."""
        rot = rot.to(self.density_scale.dtype)
        if vols is None:
            return render.project(self.field, cond, rot, self.box, self.support, chunk=self.chunk,
                                  params=self._field_params())
        return render.project_volumes(vols, rot, self.support)

    def render(self, z: Tensor, rot: Tensor) -> Tensor:
        """Real-space projections ``(B, D, D)`` of the particles' volumes at poses ``rot`` ``(B, 3, 3)``
        (``projection``: see :mod:`.render`)."""
        cond = self.condition(z)
        return self._project(cond, self.volumes(cond) if self.projection == "voxel" else None, rot)

    # -- data statistics -------------------------------------------------------------------------
    def set_data_statistics(self, stats: dict[str, Tensor]) -> None:
        """``data_power`` per shell and ``σ²`` (the mean power per Fourier sample inside ``radius``).

        stats: sums of :func:`cryovox.models.hetero.loss.data_spectra` over the particles.
        """
        count = stats["count"].clamp(min=1.0)
        power = stats["power"] / count
        valid = (stats["count"] > 0) & (power > 0)
        fill = power[valid].min() if bool(valid.any()) else torch.tensor(1.0, dtype=torch.float64)
        power = torch.where(valid, power, fill)
        with torch.no_grad():
            self.data_power.copy_(power.to(self.data_power.dtype))
            total = float(stats["power"].sum() / stats["count"].sum().clamp(min=1.0))
            self.noise_var.fill_(total if total > 0 else 1.0)
        self._cache.clear()

    def fit_map(self, volume: Tensor, steps: int | None = None, points: int | None = None, lr: float = 5e-3) -> float:
        """Fit the field at ``z = 0`` to a map ``(D, D, D)`` (image units per voxel) inside the support ball;
        sets ``density_scale`` to the map's standard deviation there. Returns the final relative MSE."""
        steps = self._config["init_steps"] if steps is None else int(steps)
        points = self._config["init_points"] if points is None else int(points)
        dev = self.density_scale.device
        vol = volume.to(device=dev, dtype=torch.float32)
        inside = self.mask.reshape(-1).nonzero().reshape(-1)
        r = render.grid_coords(self.box, dev)[inside]
        target = vol.reshape(-1)[inside]
        scale = float(target.std()) if target.numel() > 1 and float(target.std()) > 0 else 1.0
        with torch.no_grad():
            self.density_scale.fill_(scale)
        if steps <= 0:
            return float("nan")
        params = list(self.spatial.parameters()) + list(self.decoder.parameters())
        opt = torch.optim.Adam(params, lr=lr)
        z0 = torch.zeros(1, self.zdim, device=dev)
        gen = torch.Generator().manual_seed(0)
        rel = float("nan")
        for _ in range(steps):
            idx = torch.randint(0, r.shape[0], (min(points, r.shape[0]),), generator=gen).to(dev)
            pred = self.shared_field(r[idx], self.condition(z0))[0] / scale
            loss = ((pred - target[idx] / scale) ** 2).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            rel = float(loss.detach())
        return rel

    def set_particle_count(self, n: int) -> None:
        """Size the per-particle pose estimates for a data set of ``n`` particles (the input poses;
        recorded in the config)."""
        self._config["n_particles"] = int(n)
        if self.pose_delta.shape[0] != n:
            dev = self.pose_delta.device
            self.pose_delta = torch.eye(3, dtype=torch.float64, device=dev).repeat(int(n), 1, 1)
            self.pose_dshift = torch.zeros(int(n), 2, dtype=torch.float64, device=dev)
            self.pose_seen = torch.zeros(int(n), dtype=torch.bool, device=dev)

    def prepare(self, stats: dict[str, Tensor], consensus: Tensor | None = None, batches=None,
                n_particles: int = 1) -> None:
        """Data statistics (:meth:`set_data_statistics`); with a consensus map, the density scale and the
        field's starting point (:meth:`fit_map`); without one, the density scale from the data power;
        the per-particle pose estimates for ``n_particles``; the basis features' model (its consensus
        bias, noise spectrum from the residuals of ``batches`` and basis scale, as SFBP prepares them)."""
        self.set_particle_count(n_particles)
        self.set_data_statistics(stats)
        if self.feature_model is not None:
            self.feature_model.prepare(stats, consensus, batches, n_particles=n_particles)
        if consensus is not None:
            self.fit_map(consensus)
        else:
            # a particle of extent ~D/3 and voxel value v has |Y(k)| ~ v (D/3)³ at low frequency
            low = self.data_power[1: max(2, self.box // 8)].max()
            with torch.no_grad():
                self.density_scale.fill_(float(torch.sqrt(low)) / (self.box / 3) ** 3)

    # -- loss pieces -------------------------------------------------------------------------------
    def _inv_var(self, device, dtype) -> Tensor:
        key = ("inv_var", str(device), dtype, self.noise_var._version)
        if key not in self._cache:
            self._cache = {k: v for k, v in self._cache.items() if k[0] != "inv_var"}
            _, w = pixel_shells(self.box, self.radius, device=device)
            self._cache[key] = (w / self.noise_var.to(device=device, dtype=torch.float64)).to(dtype)
        return self._cache[key]

    def _encoder_filter(self, device, dtype) -> Tensor:
        key = ("enc", str(device), dtype, self.data_power._version)
        if key not in self._cache:
            self._cache = {k: v for k, v in self._cache.items() if k[0] != "enc"}
            shells, _ = pixel_shells(self.box, self.enc_radius, device=device)
            sd = torch.sqrt(self.data_power.to(device=device, dtype=torch.float64))[shells.clamp(min=0)]
            self._cache[key] = torch.where(shells >= 0, 1.0 / sd, torch.zeros_like(sd)).to(dtype)
        return self._cache[key]

    def encoder_features(self, batch: dict[str, Tensor]) -> Tensor:
        """The encoders' input: ``(B, d²)`` whitened, phase-flipped, low-passed images (``d = enc_box``)."""
        y = batch["image"]
        x = encoder_images(y, batch["ctf"], "phase-flip", self._encoder_filter(y.device, y.real.dtype), self.enc_box)
        return x.reshape(x.shape[0], -1)

    def deformation_features(self, batch: dict[str, Tensor]) -> Tensor:
        """The deformation encoder's input ``(B, n)`` (``enc_features``, module docstring)."""
        parts = []
        if self.enc_features in ("image", "both"):
            parts.append(self.encoder_features(batch))
        if self.feature_model is not None:
            parts.append(self.feature_model.basis_features(batch).to(batch["image"].real.dtype))
        return torch.cat(parts, 1)

    def encode(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        if self.encoder is None:
            zero = batch["image"].real.new_zeros(batch["image"].shape[0], self.zdim)
            return zero, zero
        return self.encoder(self.deformation_features(batch))

    def poses(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """The orientation encoder's poses ``(R̂ (B, 3, 3), t̂ (B, 2) px)`` (the input poses without refinement)."""
        if self.orientation is None:
            return batch["rot"], batch["shift"]
        return self.orientation(self.encoder_features(batch), batch["rot"], batch["shift"])

    def current_poses(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """The particles' current pose estimates ``(R (B, 3, 3), t (B, 2) px)``, float64 (the input poses
        until a search has moved them)."""
        idx = batch["index"].to(self.pose_delta.device)
        rot_in, t_in = batch["rot"].to(torch.float64), batch["shift"].to(torch.float64)
        if self.pose_delta.shape[0] == 0:
            return rot_in, t_in
        return self.pose_delta[idx].to(rot_in.device) @ rot_in, t_in + self.pose_dshift[idx].to(t_in.device)

    def pose_prior_nats(self, rot: Tensor, shift: Tensor, rot_in: Tensor, t_in: Tensor) -> Tensor:
        """The Gaussian pose prior (module docstring) of poses ``rot`` ``(..., 3, 3)``, ``shift`` ``(..., 2)`` px
        around the input poses (broadcast); zeros without a prior."""
        if self.pose_prior is None:
            return rot.new_zeros(rot.shape[:-2])
        sr, st = self.pose_prior
        return ((rot - rot_in) ** 2).sum((-2, -1)) / (4 * sr * sr) + ((shift - t_in) ** 2).sum(-1) / (2 * st * st)

    @torch.no_grad()
    def local_search(self, vols: Tensor, batch: dict[str, Tensor], rot0: Tensor, t0: Tensor, step_deg: float,
                     step_px: float, levels: int = 1, extra: tuple[Tensor, Tensor] | None = None,
                     max_moves: int = 2, soft: bool = False) -> tuple[Tensor, Tensor, Tensor]:
        """Local pose search of each particle in its own map (module docstring).

        vols: ``(B, D, D, D)`` real maps (image units per voxel); batch: the particles (``image``, ``ctf``,
        ``rot``/``shift`` the input poses, which the images are centred by); rot0, t0: the starting poses
        ``(B, 3, 3)``, ``(B, 2)`` px; step_deg / step_px: the first level's steps (each further level
        halves them; ``step_px`` 0: shifts kept). A level scores the current pose, the rotations of
        ``local_grid(R, s, 1.5 s)`` (57) and the shifts ``t + s_t·{−1, 0, 1}²`` (all pairs) and moves to
        the best (``soft``: to the posterior mean, module docstring); while it moves (``soft``: by more than
        ``s/2``), the level is repeated (at most ``max_moves`` times) before the step is halved, so that a
        pose can travel further than the steps' sum. Scores returned with ``soft`` are ``−log Σ exp(−score)``
        in the rescaled units. extra: one more candidate pose per particle (its rotation), tried at the
        first level. Returns the best poses (float64) and their scores ``(B,)`` (image loss + prior, nats).
        """
        from cryovox.core.slicing import project_volume, volume_to_fourier
        from cryovox.core.so3 import local_grid

        y, ctf = batch["image"], batch["ctf"]
        rot_in, t_in = batch["rot"].to(torch.float64), batch["shift"].to(torch.float64)
        inv_var = self._inv_var(y.device, y.real.dtype)
        w_sum = inv_var.to(torch.float64).sum() * self.noise_var.to(torch.float64)   # Σ w over the loss's samples
        B = vols.shape[0]
        best_rot, best_t = rot0.to(torch.float64).clone(), t0.to(torch.float64).clone()
        best = torch.full((B,), math.inf, dtype=torch.float64, device=vols.device)
        unit = torch.tensor([-1.0, 0.0, 1.0], dtype=torch.float64, device=vols.device)
        grid2 = torch.stack(torch.meshgrid(unit, unit, indexing="ij"), -1).reshape(-1, 2)     # (9, 2)
        for b in range(B):
            V = volume_to_fourier(vols[b].detach(), pad=self.search_pad)      # one transform, every level
            level = moves = 0
            while level < int(levels):
                s = step_deg * 0.5 ** level
                cand = [best_rot[b:b + 1], local_grid(best_rot[b], s, 1.5 * s)[0]]            # (1 + 57, 3, 3)
                if level == 0 and moves == 0 and extra is not None:
                    cand.append(extra[0][b:b + 1].to(torch.float64))
                cand = torch.cat(cand, 0)
                ts = best_t[b] + (grid2 * step_px * 0.5 ** level if step_px > 0 else grid2[4:5])  # (S, 2)
                img = project_volume(V, cand.to(V.real.dtype), pad=self.search_pad) * ctf[b]      # (K, D, D/2+1)
                ramp = phase_ramp_2d((t_in[b] - ts).to(img.real.dtype), self.box, half=True)   # (S, D, D/2+1)
                score = gaussian_nll(img[:, None] * ramp[None], y[b], inv_var).to(torch.float64)   # (K, S)
                if soft:
                    # σ² of the loss is the data's power (signal + noise); the posterior over the candidates
                    # needs the noise's: estimated from this particle's residual at its current pose
                    # (nll = ½ Σ w |Y − Ŷ|² / σ², so the residual power per sample over σ² is 2·nll / Σ w)
                    if level == 0 and moves == 0:
                        here = score[0, grid2.shape[0] // 2 if step_px > 0 else 0]          # the current pose
                        ratio = float((2 * here / w_sum).clamp(1e-3, 1.0))
                    score = score / ratio
                score = score + self.pose_prior_nats(cand[:, None], ts[None], rot_in[b], t_in[b])
                if soft:                # the posterior mean pose of the candidates (weights exp(−score))
                    w = torch.softmax(-score.reshape(-1), 0).reshape(score.shape)
                    new_rot = project_to_so3((w.sum(1)[:, None, None] * cand).sum(0))
                    turn = float(geodesic_distance(new_rot, best_rot[b]))
                    best_rot[b] = new_rot
                    best_t[b] = (w.sum(0)[:, None] * ts).sum(0)
                    best[b] = -torch.logsumexp(-score.reshape(-1), 0)
                    if turn > 0.5 * s and moves < max_moves:    # still travelling: same step again
                        moves += 1
                    else:
                        level, moves = level + 1, 0
                    continue
                j = int(score.reshape(-1).argmin())
                k, m = divmod(j, score.shape[1])
                moved = bool(score[k, m] < best[b]) and not math.isinf(float(best[b]))
                if float(score[k, m]) < float(best[b]):
                    best[b] = score[k, m]
                    best_rot[b], best_t[b] = cand[k], ts[m]
                if moved and moves < max_moves:       # the step still moves the pose: once more at this step
                    moves += 1
                else:
                    level, moves = level + 1, 0
        return best_rot, best_t, best

    def predict(self, z: Tensor, rot: Tensor, ctf: Tensor, shift: Tensor | None = None) -> Tensor:
        """Noise-free image transforms ``(B, D, D//2+1)`` (the :func:`~cryovox.core.fft.rfftn_c` layout):
        the projection at ``rot`` ``(B, 3, 3)``, times ``ctf`` ``(B, D, D//2+1)``, translated by ``shift``
        ``(B, 2)`` px (content at ``r`` moves to ``r + shift``; None: no translation)."""
        pred = rfftn_c(self.render(z, rot), 2) * ctf
        if shift is not None:
            pred = pred * phase_ramp_2d(shift, self.box, half=True)
        return pred

    def loss(self, batch: dict[str, Tensor], *, beta: float = 1.0,
             generator: torch.Generator | None = None) -> CryoFormerLoss:
        """One batch's objective (module docstring); ``z`` sampled when training, ``mu`` otherwise.

        generator: CPU generator for the reparameterisation noise (exact resumption).
        """
        mu, logvar = self.encode(batch)
        noise = self.z_noise_scale() if self.training and self.encoder is not None else 0.0
        if noise > 0:
            eps = torch.randn(mu.shape, generator=generator, dtype=mu.dtype).to(mu.device)
            z = mu + noise * eps * torch.exp(0.5 * logvar)
        else:
            z = mu
        y, ctf, rot_in, t_in = batch["image"], batch["ctf"], batch["rot"], batch["shift"]
        extra = y.real.new_zeros(())
        rot, shift, pose_term = rot_in, None, None
        cond = self.condition(z)
        vols = self.volumes(cond) if self.projection == "voxel" else None
        if self.orientation is not None:
            R_hat, t_hat = self.poses(batch)
            if self.refining:                       # local search around the current estimates (module docstring)
                if vols is not None and z is mu:
                    search_vols = vols.detach()
                else:                               # each particle's map at its posterior mean, not at a sample
                    with torch.no_grad():
                        search_vols = self.volumes(self.condition(mu))
                rot0, t0 = self.current_poses(batch)
                step, step_px = self.search_steps()
                rot, shift, _ = self.local_search(search_vols, batch, rot0, t0, step, step_px, self.search_levels,
                                                  extra=(R_hat.detach(), t_hat.detach()), soft=self.search_mean)
                if self.training and self.pose_delta.shape[0] > 0:
                    idx = batch["index"].to(self.pose_delta.device)
                    with torch.no_grad():
                        self.pose_delta[idx] = (rot @ rot_in.to(torch.float64).transpose(-1, -2)).to(
                            self.pose_delta.device)
                        self.pose_dshift[idx] = (shift - t_in.to(torch.float64)).to(self.pose_dshift.device)
                        self.pose_seen[idx] = True
                target_rot, target_t = rot, shift
            else:                                   # pre-training the encoder on the input poses
                target_rot, target_t = rot_in, t_in
            # the paper's pose loss: the encoder learns the input poses, then follows the searched ones
            pose_term = pose_loss(R_hat, t_hat, target_rot.to(R_hat.dtype), target_t.to(t_hat.dtype), self.box).mean()
            extra = extra + pose_term
        pred = rfftn_c(self._project(cond, vols, rot), 2) * ctf
        if shift is not None:
            pred = pred * phase_ramp_2d((t_in.to(torch.float64) - shift).to(pred.real.dtype), self.box, half=True)
        nll = gaussian_nll(pred, y, self._inv_var(y.device, y.real.dtype))
        kl = kl_standard_normal(mu, logvar)
        if self.training and self.encoder is not None:
            beta = beta * noise                     # the warm-up is a plain autoencoder (z_noise_scale)
        total = (nll + beta * kl).mean() + extra
        return CryoFormerLoss(total=total, nll=nll, kl=kl, mu=mu, logvar=logvar,
                              rot=None if shift is None else rot.detach(),
                              shift=None if shift is None else shift.detach(),
                              pose=None if pose_term is None else pose_term.detach())

    def forward(self, batch: dict[str, Tensor], beta: float = 1.0,
                generator: torch.Generator | None = None) -> CryoFormerLoss:
        return self.loss(batch, beta=beta, generator=generator)

    # -- decoding ------------------------------------------------------------------------------------
    def decode_volume(self, z: Tensor) -> Tensor:
        """Real-space maps ``(n, D, D, D)`` ``[z, y, x]``, image units per voxel (zero outside the support)."""
        dev = self.density_scale.device
        return render.evaluate_grid(self.shared_field, self.condition(z.to(dev)), self.box, self.mask,
                                    chunk=self.chunk)

    def decode_fourier(self, z: Tensor) -> Tensor:
        return rfftn_c(self.decode_volume(z).to(torch.float32), 3)

    def attention_volume(self, z: Tensor, queries: list[int] | None = None, head: int | None = None) -> Tensor:
        """Per-voxel spatial cross-attention weights of the chosen queries: ``(n, len(queries), D, D, D)``.

        z: ``(n, zdim)``; queries: query indices (default all); head: one head (default: mean over
        heads). Zero outside the support. Only for the transformer decoder.
        """
        if not isinstance(self.decoder, QueryDecoder):
            raise ValueError("attention maps need the transformer decoder (this model uses an MLP decoder)")
        nq = self.decoder.n_queries
        queries = list(range(nq)) if queries is None else [int(q) for q in queries]
        bad = [q for q in queries if not 0 <= q < nq]
        if bad or not queries:
            raise ValueError(f"queries {bad or queries}: each must lie in 0–{nq - 1}")
        if head is not None and not 0 <= head < self.decoder.heads:
            raise ValueError(f"head {head} is out of range (0–{self.decoder.heads - 1})")
        dev = self.density_scale.device
        cond = self.condition(z.to(dev))
        outs = []
        for q0 in range(0, len(queries), 8):
            part = torch.tensor(queries[q0:q0 + 8], device=dev)

            def att(x, c, part=part):
                a = self.decoder.attention(self.features(x)[None], c)[..., part]   # (B, H, n, q)
                a = a.mean(1) if head is None else a[:, head]
                return a.permute(0, 2, 1).reshape(-1, x.shape[0])                # (B·q, n)

            outs.append(render.evaluate_grid(att, cond, self.box, self.mask, chunk=self.chunk,
                                             per_particle=len(part)).view(-1, len(part), *self.mask.shape))
        return torch.cat(outs, 1)

    def param_groups(self, lr: float, basis_lr: float | None = None) -> list[dict[str, Any]]:
        """Hash-grid tables at ``basis_lr`` (default ``lr``; Instant-NGP trains them at 1e-2); the rest at ``lr``."""
        tables = self.spatial.grid.tables
        nets = [p for p in self.parameters() if p is not tables and p.requires_grad]
        return [{"params": nets, "lr": lr}, {"params": [tables], "lr": basis_lr if basis_lr is not None else lr}]


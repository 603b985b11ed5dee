"""CryoFormer (Liu et al., ICLR 2024) as a cryovox heterogeneity model (``kind = "cryoformer"``).

Per particle (a batch of :class:`cryovox.data.particles.ParticleDataset`):

* the deformation encoder (an MLP on the particle's encoder image — recentred, phase-flipped,
  whitened, low-passed to ``enc_radius``: :func:`cryovox.models.hetero.encoder.encoder_images`)
  gives the posterior ``(mu, logvar)`` of the deformation embedding ``z`` (a VAE, as the other
  models, so that ``analyze`` and ``eval-vol`` read it the same way);
* the orientation encoder (:mod:`.poses`) gives a refined pose ``(R̂, t̂)`` from the same image and
  the input pose; for the first ``pose_pretrain_epochs`` epochs it learns the input poses with
  the pose loss while images are rendered at the input poses, afterwards images are rendered at
  its poses and the image loss refines them (``refine_poses=False``: input poses throughout).
  With ``pose_offsets`` (default) each particle also has its own learnt offset of the encoder's
  output (8 numbers, zero at the start, trained by the image loss without momentum at
  ``pose_lr``): an amortised MLP alone cannot learn per-particle corrections in a few epochs
  (each particle is seen once per epoch), the offsets can (a semi-amortised scheme as in
  cryoSPIN and cryoDRGN's pose SGD; not in the CryoFormer paper). With ``pose_prior_deg`` the
  refined poses are maximum-a-posteriori estimates: a Gaussian prior around the input pose
  (``‖R̂ − R_in‖²_F / 4σ_r² + ‖t̂ − t_in‖² / 2σ_t²`` nats, i.e. ``θ²/2σ_r²`` for a turn by ``θ``)
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
data's mean power per sample), plus ``β`` KL; during pose pre-training plus the pose loss.

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
from cryovox.models import HeteroModel, LossTerms
from cryovox.models.cryoformer import render
from cryovox.models.cryoformer.decoder import MLPDecoder, QueryDecoder, SpatialFeatures
from cryovox.models.cryoformer.poses import OrientationEncoder, pose_loss
from cryovox.models.hetero.encoder import ImageEncoder, encoder_box, encoder_images
from cryovox.models.hetero.loss import gaussian_nll, kl_standard_normal, pixel_shells

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
    enc_width/enc_layers: both encoders' MLPs; enc_radius: highest frequency (px) of the encoder
    images (default ``D/4``); radius: Fourier radius (px) of the image loss (default ``D/2``);
    support: radius (px) of the ball where the density lives (default ``D/2``); decoder:
    ``"transformer"`` or ``"mlp"`` (ablation); deformation: False drops the deformation encoder
    (ablation: one volume for all particles); refine_poses / pose_pretrain_epochs / pose_offsets /
    pose_lr / pose_prior_deg / pose_prior_px: pose refinement (module docstring; prior widths in
    degrees and pixels, ``pose_prior_deg=None``: no prior); n_particles: rows of the pose offsets (set
    by :meth:`prepare`); projection: ``"voxel"`` or ``"field"`` (:mod:`.render`); chunk: (particle ×
    point) evaluations per rendering chunk (memory bound); init_steps / init_points: consensus fit in
    :meth:`prepare`.
    """

    kind = "cryoformer"

    def __init__(self, box: int, apix: float, zdim: int = 8, channels: int = 64, n_queries: int = 64,
                 blocks: int = 3, heads: int = 4, n_tokens: int = 4, levels: int = 16, level_features: int = 2,
                 log2_table: int = 15, base_resolution: int = 16, max_resolution: int | None = None,
                 enc_width: int = 256, enc_layers: int = 3, enc_radius: float | None = None,
                 radius: float | None = None, support: float | None = None, decoder: str = "transformer",
                 deformation: bool = True, refine_poses: bool = True, pose_pretrain_epochs: int = 1,
                 pose_offsets: bool = True, pose_lr: float = 3e-3, pose_prior_deg: float | None = 5.0,
                 pose_prior_px: float = 1.0, n_particles: int = 0,
                 projection: str = "voxel", chunk: int = 262144, init_steps: int = 200, init_points: int = 8192):
        super().__init__()
        if zdim < 1:
            raise ValueError("zdim must be >= 1")
        if decoder not in DECODERS:
            raise ValueError(f"decoder must be one of {DECODERS}, not {decoder!r}")
        if projection not in PROJECTIONS:
            raise ValueError(f"projection must be one of {PROJECTIONS}, not {projection!r}")
        if pose_pretrain_epochs < 0:
            raise ValueError("pose_pretrain_epochs must be >= 0")
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
                            enc_width=int(enc_width), enc_layers=int(enc_layers), enc_radius=self.enc_radius,
                            radius=self.radius, support=self.support, decoder=str(decoder),
                            deformation=bool(deformation), refine_poses=bool(refine_poses),
                            pose_pretrain_epochs=int(pose_pretrain_epochs), pose_offsets=bool(pose_offsets),
                            pose_lr=float(pose_lr), n_particles=int(n_particles), projection=str(projection),
                            pose_prior_deg=None if pose_prior_deg is None else float(pose_prior_deg),
                            pose_prior_px=float(pose_prior_px),
                            chunk=int(chunk),
                            init_steps=int(init_steps), init_points=int(init_points))
        self.deformation, self.refine_poses = bool(deformation), bool(refine_poses)
        self.pose_pretrain_epochs = int(pose_pretrain_epochs)
        self.chunk = int(chunk)
        self.projection = projection
        n_in = self.enc_box ** 2
        self.encoder = ImageEncoder(n_in, zdim, enc_width, enc_layers) if deformation else None
        self.orientation = OrientationEncoder(n_in, box, enc_width, enc_layers) if refine_poses else None
        # per-particle pose offsets (rows: particles of the data set; sized by prepare())
        self.pose_offsets = nn.Parameter(torch.zeros(int(n_particles), 8)) if refine_poses and pose_offsets else None
        self.pose_lr = float(pose_lr)
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
        """Called by ``train-hetero`` before each epoch: selects pose pre-training or refinement."""
        self.epoch = int(epoch)

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

    def render(self, z: Tensor, rot: Tensor) -> Tensor:
        """Real-space projections ``(B, D, D)`` of the particles' volumes at poses ``rot`` ``(B, 3, 3)``
        (``projection``: see :mod:`.render`)."""
        cond = self.condition(z)
        rot = rot.to(self.density_scale.dtype)
        params = list(self.spatial.parameters()) + list(self.decoder.parameters())
        if self.projection == "field":
            return render.project(self.field, cond, rot, self.box, self.support, chunk=self.chunk, params=params)
        inside = self.mask.reshape(-1).nonzero().reshape(-1)
        coords = render.grid_coords(self.box, rot.device, rot.dtype)[inside]
        dens = render.evaluate_points(self.shared_field, cond, coords, batch=rot.shape[0], chunk=self.chunk,
                                      params=params)
        vols = dens.new_zeros(rot.shape[0], self.box ** 3).index_copy(1, inside, dens)
        return render.project_volumes(vols.view(-1, self.box, self.box, self.box), rot, self.support)

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
        """Size the per-particle pose offsets for a data set of ``n`` particles (zeros; recorded in the config)."""
        self._config["n_particles"] = int(n)
        if self.pose_offsets is not None and self.pose_offsets.shape[0] != n:
            self.pose_offsets = nn.Parameter(torch.zeros(int(n), 8, device=self.pose_offsets.device))

    def prepare(self, stats: dict[str, Tensor], consensus: Tensor | None = None, batches=None,
                n_particles: int = 1) -> None:
        """Data statistics (:meth:`set_data_statistics`); with a consensus map, the density scale and the
        field's starting point (:meth:`fit_map`); without one, the density scale from the data power;
        the per-particle pose offsets for ``n_particles``."""
        self.set_particle_count(n_particles)
        self.set_data_statistics(stats)
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

    def encode(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        if self.encoder is None:
            zero = batch["image"].real.new_zeros(batch["image"].shape[0], self.zdim)
            return zero, zero
        return self.encoder(self.encoder_features(batch))

    def poses(self, batch: dict[str, Tensor], offsets: bool = True) -> tuple[Tensor, Tensor]:
        """Refined poses ``(R̂ (B, 3, 3), t̂ (B, 2) px)``: the orientation encoder's output plus, with
        ``offsets``, the particles' own learnt offsets (the input poses without refinement)."""
        if self.orientation is None:
            return batch["rot"], batch["shift"]
        offset = None
        if offsets and self.pose_offsets is not None and self.pose_offsets.shape[0] > 0:
            offset = self.pose_offsets[batch["index"]]
        return self.orientation(self.encoder_features(batch), batch["rot"], batch["shift"], offset)

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
        if self.training and self.encoder is not None:
            eps = torch.randn(mu.shape, generator=generator, dtype=mu.dtype).to(mu.device)
            z = mu + eps * torch.exp(0.5 * logvar)
        else:
            z = mu
        y, ctf, rot_in, t_in = batch["image"], batch["ctf"], batch["rot"], batch["shift"]
        extra = y.real.new_zeros(())
        rot, shift, pose_term = rot_in, None, None
        if self.orientation is not None:
            if self.refining:
                rot, shift = self.poses(batch)
                if self.pose_prior is not None:      # Gaussian prior around the input pose (MAP refinement)
                    sr, st = self.pose_prior
                    prior = ((rot - rot_in.to(rot.dtype)) ** 2).sum((-2, -1)) / (4 * sr * sr) \
                        + ((shift - t_in.to(shift.dtype)) ** 2).sum(-1) / (2 * st * st)
                    extra = extra + prior.mean()
            else:                                   # pre-training the encoder on the input poses (pose loss)
                R_hat, t_hat = self.poses(batch, offsets=False)
                pose_term = pose_loss(R_hat, t_hat, rot_in.to(R_hat.dtype), t_in.to(t_hat.dtype), self.box).mean()
                extra = extra + pose_term
                if self.pose_offsets is not None and self.pose_offsets.shape[0] > 0:
                    extra = extra + 0.0 * self.pose_offsets[batch["index"]].sum()   # in the graph (DDP)
        pred = self.predict(z, rot, ctf, None if shift is None else t_in.to(shift.dtype) - shift)
        nll = gaussian_nll(pred, y, self._inv_var(y.device, y.real.dtype))
        kl = kl_standard_normal(mu, logvar)
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
        """Hash-grid tables at ``basis_lr`` (default ``lr``; Instant-NGP trains them at 1e-2); the per-particle
        pose offsets at ``pose_lr`` without momentum (each row is seen once per epoch: momentum would keep
        moving it while other particles are trained); the rest at ``lr``."""
        tables = self.spatial.grid.tables
        special = {id(tables)}
        groups = [{"params": [tables], "lr": basis_lr if basis_lr is not None else lr}]
        if self.pose_offsets is not None:
            special.add(id(self.pose_offsets))
            groups.append({"params": [self.pose_offsets], "lr": self.pose_lr, "betas": (0.0, 0.999)})
        nets = [p for p in self.parameters() if id(p) not in special]
        return [{"params": nets, "lr": lr}] + groups


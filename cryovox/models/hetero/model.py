"""The structural-basis VAE with sparse Fourier backpropagation (``kind = "sfbp"``).

Encoder (:mod:`.encoder`) → ``z`` (reparameterised during training, ``mu`` otherwise) →
coefficients ``s(z) = tanh(MLP(z))`` → central slice of ``Σ_k s_k V_k + V_0`` at the particle's
pose (:mod:`.decoder`, :func:`cryovox.core.slicing.project`) → times its CTF → spectrally
weighted Gaussian likelihood against the particle's centred image transform, plus β·KL and the
volumes' prior (:mod:`.loss`).

Before training (:meth:`SFBPModel.prepare`, called by ``train-hetero``): the data spectra set
the spectral normalisation; a consensus map starts ``V_0``; the residuals against it give the
noise spectrum; the signal fraction gives the prior and the scale of the random initial basis.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from cryovox.models import HeteroModel, LossTerms
from cryovox.models.hetero.decoder import BasisDecoder
from cryovox.models.hetero.encoder import ENCODER_INPUTS, ImageEncoder, encoder_box, encoder_images
from cryovox.core import slicing
from cryovox.models.hetero.loss import gaussian_nll, kl_standard_normal, pixel_shells, shell_sums


ENC_FEATURES = ("basis", "image", "both")


class SFBPModel(HeteroModel):
    """Structural-basis VAE (Kimanius, Jamali & Scheres 2022).

    box: image box ``D`` (px); apix: pixel size (Å/px, kept for writing maps); zdim: latent
    dimension; n_basis: ``K``; enc_width/enc_layers: encoder MLP; dec_width/dec_blocks: the
    residual MLP ``s(z)``; pad: volume oversampling of the basis (1 as in the paper); radius:
    Fourier radius in image pixels used for training and decoding (default ``D / 2``);
    enc_features: the encoder's input, ``"basis"`` (the per-particle posterior of the basis
    coefficients, :meth:`basis_features`), ``"image"`` or ``"both"``; encoder_input (image features):
    ``"phase-flip"`` or ``"raw"``; enc_radius: highest frequency (image pixels) of the image features,
    default ``D / 4`` (see :mod:`.encoder`).
    """

    kind = "sfbp"

    def __init__(self, box: int, apix: float, zdim: int = 8, n_basis: int = 16, enc_width: int = 256,
                 enc_layers: int = 3, dec_width: int = 64, dec_blocks: int = 2, pad: int = 1,
                 radius: float | None = None, encoder_input: str = "phase-flip", enc_radius: float | None = None,
                 enc_features: str = "basis"):
        super().__init__()
        if zdim < 1:
            raise ValueError("zdim must be >= 1")
        if enc_features not in ENC_FEATURES:
            raise ValueError(f"enc_features must be one of {ENC_FEATURES}, not {enc_features!r}")
        if encoder_input not in ENCODER_INPUTS:
            raise ValueError(f"encoder_input must be one of {ENCODER_INPUTS}")
        self.box, self.apix, self.zdim = int(box), float(apix), int(zdim)
        self.radius = float(box / 2 if radius is None else radius)
        if not 1 <= self.radius <= box / 2:
            raise ValueError(f"radius {self.radius:g} px: must lie between 1 and box/2 = {box / 2:g}")
        if enc_radius is not None and not enc_radius >= 1:
            raise ValueError(f"encoder radius {enc_radius:g} px: must be at least 1")
        self.enc_radius = float(min(self.radius, box / 4 if enc_radius is None else enc_radius))
        self.enc_box = encoder_box(box, self.enc_radius)
        self._config = dict(box=int(box), apix=float(apix), zdim=int(zdim), n_basis=int(n_basis),
                            enc_width=int(enc_width), enc_layers=int(enc_layers), dec_width=int(dec_width),
                            dec_blocks=int(dec_blocks), pad=int(pad), radius=self.radius,
                            encoder_input=str(encoder_input), enc_radius=self.enc_radius,
                            enc_features=enc_features)
        self.encoder_input = encoder_input
        self.enc_features = enc_features
        n_in = (self.enc_box ** 2 if enc_features in ("image", "both") else 0) + \
            (2 * n_basis if enc_features in ("basis", "both") else 0)
        self.encoder = ImageEncoder(n_in, zdim, enc_width, enc_layers)
        self.decoder = BasisDecoder(box, zdim, n_basis, dec_width, dec_blocks, pad, self.radius)
        nshell = box // 2 + 1
        self.register_buffer("noise_var", torch.ones(nshell))
        self.register_buffer("data_power", torch.ones(nshell))
        self.register_buffer("prior_prec", torch.zeros(nshell))    # 1/τ̃²(s); 0: no prior
        self.register_buffer("n_data", torch.ones(()))
        self.register_buffer("interp_gain", torch.ones(nshell))
        self._cache: dict[tuple, Tensor] = {}

    def config(self) -> dict[str, Any]:
        return dict(self._config)

    # -- statistics from the data ------------------------------------------------------------
    def set_data_statistics(self, stats: dict[str, Tensor]) -> None:
        """Set σ̄ (spectral normalisation) and the initial noise spectrum (the data power).

        stats: the sums of :func:`cryovox.models.hetero.loss.data_spectra` (over all processes).
        """
        count = stats["count"].clamp(min=1.0)
        power = stats["power"] / count
        ctf2 = stats["ctf2"] / count
        tiny = torch.finfo(torch.float32).tiny
        valid = (stats["count"] > 0) & (power > 0)
        fill = power[valid].min() if bool(valid.any()) else torch.tensor(1.0, dtype=torch.float64)
        power = torch.where(valid, power, fill)
        sbar = torch.sqrt(power / ctf2.clamp(min=1e-6))
        with torch.no_grad():
            self.decoder.spectral_scale.copy_(sbar.to(self.decoder.spectral_scale.dtype))
            self.noise_var.copy_(power.clamp(min=tiny).to(self.noise_var.dtype))
            self.data_power.copy_(power.clamp(min=tiny).to(self.data_power.dtype))
        self._cache.clear()

    def set_bias_from_map(self, volume: Tensor) -> None:
        """Start ``V_0`` at a consensus map ``(D, D, D)`` (real space, image units per voxel, e.g. a
        Wiener reconstruction from the same particles): its gridding-pre-corrected transform in
        whitened units inside the sphere."""
        from cryovox.core.slicing import volume_to_fourier

        vol_ft = volume_to_fourier(volume.to(torch.float64), pad=self.decoder.pad, gridding=True)
        scale = self.decoder.scale_3d().to(torch.float64)
        v = torch.where(scale > 0, vol_ft / scale.clamp(min=1e-30), torch.zeros_like(vol_ft))
        with torch.no_grad():
            self.decoder.bias.copy_(torch.view_as_real(v.to(torch.complex64)))
        self.set_interpolation_gain(v)

    def noise_from_residuals(self, batches) -> None:
        """σ²_n(s) ← mean power per shell of ``Y − CTF · slice(V_0)`` over ``batches`` (RELION's
        noise estimate from the residuals of a consensus model; call after :meth:`set_bias_from_map`)."""
        nshell = self.box // 2 + 1
        shells, w = pixel_shells(self.box, self.radius)
        resid = torch.zeros(nshell, dtype=torch.float64)
        count = torch.zeros(nshell, dtype=torch.float64)
        scale = self.decoder.scale_2d().cpu()
        bias = self.decoder.bias_c().detach().cpu()
        with torch.no_grad():
            for b in batches:
                pred = slicing.project_volume(bias, b["rot"].cpu().to(torch.float32), radius=self.radius,
                                              pad=self.decoder.pad) * scale * b["ctf"].cpu()
                r = b["image"].cpu() - pred
                resid += shell_sums(r.real ** 2 + r.imag ** 2, shells, w, nshell)
                count += shell_sums(torch.ones(1, *r.shape[1:]), shells, w, nshell) * r.shape[0]
            ok = (count > 0) & (resid > 0)
            new = torch.where(ok, resid / count.clamp(min=1.0), self.noise_var.to(torch.float64).cpu())
            self.noise_var.copy_(new.to(self.noise_var.dtype))
        self._cache.clear()

    def set_prior(self, n_particles: int) -> None:
        """Gaussian prior on the volumes, per shell, from the signal fraction of the data.

        In whitened units the expected power of the signal per voxel is ``τ̃²(s) = 1 − σ²_n(s)/P(s)``
        (``P`` the data power, ``σ²_n`` the noise power; clamped to ``[1e-4, 1]``). The prior
        ``½ Σ |V|²/τ̃²`` over ``V_0`` and every ``V_k`` is added to the loss divided by the number of
        particles (a MAP term of the shared volumes, spread over the particles' losses). The random
        initial basis is rescaled to ``τ̃`` per shell (a draw from the prior, times the initial scale),
        so that it starts smooth and without a penalty.
        """
        with torch.no_grad():
            frac = (1.0 - self.noise_var.double() / self.data_power.double()).clamp(1e-4, 1.0)
            self.prior_prec.copy_((1.0 / frac).to(self.prior_prec.dtype))
            self.n_data.fill_(float(max(1, n_particles)))
            self._cache.clear()
            grid = self._prior_grid(self.prior_prec.device, torch.float64)
            herm = grid.new_full((grid.shape[-1],), 2.0)
            herm[0] = 1.0
            if (self.decoder.pad * self.box) % 2 == 0:
                herm[-1] = 1.0
            std = torch.where(grid > 0, torch.sqrt(herm / grid.clamp(min=1e-30)), torch.zeros_like(grid))
            self.decoder.basis.mul_(std.to(self.decoder.basis.dtype)[..., None, None])

    def prepare(self, stats: dict[str, Tensor], consensus: Tensor | None = None, batches=None,
                n_particles: int = 1) -> None:
        """Before training: spectra (:meth:`set_data_statistics`), then, with a consensus map,
        ``V_0`` from it, the noise spectrum from the residuals of ``batches`` and the prior on the
        volumes from the signal fraction (:meth:`set_prior`, ``n_particles`` in the data set)."""
        self.set_data_statistics(stats)
        if consensus is not None:
            self.set_bias_from_map(consensus)
            if batches is not None:
                self.noise_from_residuals(batches)
                self.set_prior(n_particles)

    def _prior_grid(self, device, dtype) -> Tensor:
        key = ("prior", str(device), dtype, self.prior_prec._version)
        if key not in self._cache:
            self._cache = {k: v for k, v in self._cache.items() if k[0] != "prior"}
            dec = self.decoder
            P = dec.pad * dec.box
            k = torch.arange(P, device=device, dtype=torch.float64) - P // 2
            kx = torch.arange(P // 2 + 1, device=device, dtype=torch.float64)
            r = torch.sqrt(k[:, None, None] ** 2 + k[None, :, None] ** 2 + kx[None, None, :] ** 2) / dec.pad
            idx = torch.round(r).long().clamp(max=self.box // 2)
            prec = self.prior_prec.to(device=device, dtype=torch.float64)[idx]
            herm = torch.full((P // 2 + 1,), 2.0, dtype=torch.float64, device=device)
            herm[0] = 1.0
            if P % 2 == 0:
                herm[-1] = 1.0
            self._cache[key] = torch.where(r <= dec.radius, prec * herm, torch.zeros_like(prec)).to(dtype)
        return self._cache[key]

    def _inv_var(self, device, dtype) -> tuple[Tensor, Tensor, Tensor]:
        key = ("inv_var", str(device), dtype, self.noise_var._version)
        if key not in self._cache:
            self._cache = {k: v for k, v in self._cache.items() if k[0] != "inv_var"}
            shells, w = pixel_shells(self.box, self.radius, device=device)
            nv = self.noise_var.to(device=device, dtype=torch.float64)[shells.clamp(min=0)]
            inv = torch.where(shells >= 0, w / nv, torch.zeros_like(w)).to(dtype)
            self._cache[key] = (inv, shells, w.to(dtype))
        return self._cache[key]

    # -- the VAE -----------------------------------------------------------------------------------
    def _encoder_filter(self, device, dtype) -> Tensor:
        key = ("enc", str(device), dtype, self.noise_var._version)
        if key not in self._cache:
            self._cache = {k: v for k, v in self._cache.items() if k[0] != "enc"}
            shells, _ = pixel_shells(self.box, self.enc_radius, device=device)
            sd = torch.sqrt(self.noise_var.to(device=device, dtype=torch.float64))[shells.clamp(min=0)]
            self._cache[key] = torch.where(shells >= 0, 1.0 / sd, torch.zeros_like(sd)).to(dtype)
        return self._cache[key]

    def _shell_order(self, device) -> tuple[Tensor, Tensor, list[int]]:
        """Volume samples inside the sphere sorted by shell: (flat indices, sqrt Hermitian weights, shell bounds)."""
        key = ("order", str(device))
        if key not in self._cache:
            dec = self.decoder
            P = dec.pad * dec.box
            k = torch.arange(P, device=device, dtype=torch.float64) - P // 2
            kx = torch.arange(P // 2 + 1, device=device, dtype=torch.float64)
            r = torch.sqrt(k[:, None, None] ** 2 + k[None, :, None] ** 2 + kx[None, None, :] ** 2) / dec.pad
            herm = torch.full((P // 2 + 1,), 2.0, dtype=torch.float64, device=device)
            herm[0] = 1.0
            if P % 2 == 0:
                herm[-1] = 1.0
            herm = herm.expand(P, P, -1).reshape(-1)
            shell = torch.round(r).long().reshape(-1)
            inside = torch.nonzero(r.reshape(-1) <= dec.radius).reshape(-1)
            order = inside[torch.argsort(shell[inside], stable=True)]
            counts = torch.bincount(shell[order], minlength=self.box // 2 + 1)[: self.box // 2 + 1]
            bounds = [0] + torch.cumsum(counts, 0).tolist()
            self._cache[key] = (order, torch.sqrt(herm[order]), bounds)
        return self._cache[key]

    def _shell_power(self, vol: Tensor) -> Tensor:
        """Mean per shell of ``|V|²`` over the samples inside the sphere: ``(…, P, P, P//2+1)`` → ``(…, nshell)``."""
        order, sw, bounds = self._shell_order(vol.device)
        v = vol.reshape(*vol.shape[:-3], -1)[..., order]
        p = (v.real ** 2 + v.imag ** 2) * (sw ** 2).to(v.real.dtype)
        return torch.stack([p[..., a:b].sum(-1) / (sw[a:b] ** 2).sum().to(p.dtype) if b > a
                            else p.new_zeros(p.shape[:-1]) for a, b in zip(bounds[:-1], bounds[1:])], -1)

    def set_interpolation_gain(self, vol_ft: Tensor) -> None:
        """``interp_gain(s)``: the power per shell of ``rfft(irfft(V) · Π sinc²(n/P))`` over that of ``V``
        for a representative volume ``V`` (the consensus): the mean power that trilinear slices of a
        volume of that extent keep, used by :meth:`shell_gram`."""
        from cryovox.core.fft import irfftn_c, rfftn_c

        P = self.decoder.pad * self.box
        grid = slicing.gridding_correction(P, 1, 3, dtype=torch.float64, device=vol_ft.device)
        seen = rfftn_c(irfftn_c(vol_ft.to(torch.complex128), P, 3) * grid, 3)
        raw, kept = self._shell_power(vol_ft.to(torch.complex128)), self._shell_power(seen)
        gain = torch.where(raw > 0, kept / raw.clamp(min=1e-300), torch.ones_like(raw)).clamp(0.0, 1.0)
        with torch.no_grad():
            self.interp_gain.copy_(gain.to(self.interp_gain.dtype))

    def shell_gram(self) -> Tensor:
        """``(nshell, K, K)``: per shell, the mean over its samples of ``Re(conj V_k · V_l)`` (full-volume
        mean, Hermitian weights, whitened units) times ``interp_gain`` (the share of that power that
        trilinear slices keep at off-grid points; :meth:`set_interpolation_gain`)."""
        dec = self.decoder
        flat = dec.basis.detach().reshape(-1, self.decoder.n_basis, 2)      # voxel-major (M, K, 2)
        order, sw, bounds = self._shell_order(flat.device)
        V = flat[order] * sw.to(flat.dtype)[:, None, None]                   # rows by shell, (m, K, 2)
        K, n = flat.shape[1], self.box // 2 + 1
        G = torch.zeros(n, K, K, dtype=flat.dtype, device=flat.device)
        gain = self.interp_gain.to(flat.dtype)
        for s in range(n):
            a, b = bounds[s], bounds[s + 1]
            if b > a:
                Vr, Vi = V[a:b, :, 0], V[a:b, :, 1]
                G[s] = (Vr.t() @ Vr + Vi.t() @ Vi) * (gain[s] / float((sw[a:b] ** 2).sum()))
        return G

    def basis_features(self, batch: dict[str, Tensor], exact: bool = False) -> Tensor:
        """Per particle, the posterior of the basis coefficients of a linear-Gaussian model, ``(B, 2K)``.

        With ``A_k = CTF · σ̄ · P_R V_k`` (the particle's slice of basis volume ``k``) and
        ``r = Y − CTF · σ̄ · P_R V_0``: ``g_k = ⟨A_k, r⟩`` and ``H_kl = ⟨A_k, A_l⟩``, inner products
        weighted by ``w/σ²_n`` (so ``g`` is the gradient of the log-likelihood with respect to the
        coefficients at ``s = 0`` and ``H`` its Fisher information). Returns
        ``[(H + I)⁻¹ g, log(1 + diag H)]``: the posterior mean of ``s`` under a ``N(0, I)`` prior and
        the information per coefficient. No gradient flows into the volumes.

        ``g`` is exact, computed in one fused pass (the gradient of ``project`` with respect to its
        coefficients). ``H`` is, unless ``exact``, its expectation over orientations: per shell
        ``s``, the particle's ``Σ_pixels w C² σ̄²/σ²_n`` times the basis volumes' mean Gram matrix in
        that shell (:meth:`shell_gram`); ``exact`` projects every basis volume (K passes).
        """
        y, rot = batch["image"], batch["rot"]
        dec = self.decoder
        cs = batch["ctf"] * dec.scale_2d().to(y.real.dtype)
        inv, shells, _ = self._inv_var(y.device, y.real.dtype)
        basis = dec.basis_c().detach()
        with torch.enable_grad():
            s0 = torch.zeros(y.shape[0], basis.shape[0], dtype=y.real.dtype, device=y.device, requires_grad=True)
            out = slicing.project(basis, s0, dec.bias_c().detach(), rot, radius=dec.radius, pad=dec.pad)
            q = (cs * inv * (y - cs * out)).detach()
            g, = torch.autograd.grad((out.conj() * q).real.sum(), s0)
        with torch.no_grad():
            if exact:
                A = torch.stack([cs * slicing.project_volume(basis[k], rot, radius=dec.radius, pad=dec.pad)
                                 for k in range(basis.shape[0])], 1)                # (B, K, D, H)
                H = torch.einsum("bkxy,blxy->bkl", A.conj() * inv, A).real
            else:
                n = self.box // 2 + 1
                wt = (cs * cs * inv).reshape(y.shape[0], -1)
                idx = shells.reshape(-1)
                keep = idx >= 0
                c = torch.zeros(y.shape[0], n, dtype=wt.dtype, device=wt.device)
                c.index_add_(1, idx[keep], wt[:, keep])
                H = torch.einsum("bs,skl->bkl", c, self.shell_gram().to(c.dtype))
            H = 0.5 * (H + H.transpose(1, 2))
            eye = torch.eye(H.shape[-1], dtype=H.dtype, device=H.device)
            s_hat = torch.linalg.solve(H + eye, g.detach()[..., None])[..., 0]
            return torch.cat([s_hat, torch.log1p(H.diagonal(dim1=1, dim2=2).clamp(min=0))], 1)

    def encode(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        y = batch["image"]
        parts = []
        if self.enc_features in ("image", "both"):
            x = encoder_images(y, batch["ctf"], self.encoder_input, self._encoder_filter(y.device, y.real.dtype),
                               self.enc_box)
            parts.append(x.reshape(x.shape[0], -1))
        if self.enc_features in ("basis", "both"):
            parts.append(self.basis_features(batch))
        return self.encoder(torch.cat(parts, 1))

    def loss(self, batch: dict[str, Tensor], *, beta: float = 1.0,
             generator: torch.Generator | None = None) -> LossTerms:
        """One batch's objective (see :mod:`.loss`); ``z`` is sampled when training, ``mu`` otherwise.

        generator: CPU generator for the reparameterisation noise (for exact resumption).
        """
        mu, logvar = self.encode(batch)
        if self.training:
            eps = torch.randn(mu.shape, generator=generator, dtype=mu.dtype).to(mu.device)
            z = mu + eps * torch.exp(0.5 * logvar)
        else:
            z = mu
        y, ctf = batch["image"], batch["ctf"]
        pred = self.decoder.slices(z, batch["rot"]) * ctf
        inv, shells, w = self._inv_var(y.device, y.real.dtype)
        nll = gaussian_nll(pred, y, inv)
        kl = kl_standard_normal(mu, logvar)
        total = (nll + beta * kl).mean()
        if bool(self.prior_prec.any()):
            total = total + self.decoder.prior_energy(self._prior_grid(y.device, self.decoder.basis.dtype)) / self.n_data
        return LossTerms(total=total, nll=nll, kl=kl, mu=mu, logvar=logvar)

    def forward(self, batch: dict[str, Tensor], beta: float = 1.0,
                generator: torch.Generator | None = None) -> LossTerms:
        return self.loss(batch, beta=beta, generator=generator)

    def decode_fourier(self, z: Tensor) -> Tensor:
        return self.decoder.fourier(z.to(self.decoder.basis.dtype))

    def decode_volume(self, z: Tensor) -> Tensor:
        return self.decoder.volume(z.to(self.decoder.basis.dtype))

    def param_groups(self, lr: float, basis_lr: float | None = None) -> list[dict[str, Any]]:
        """Networks at ``lr``; basis and bias volumes at ``basis_lr`` (default ``lr``)."""
        vols = [self.decoder.basis, self.decoder.bias]
        ids = {id(p) for p in vols}
        nets = [p for p in self.parameters() if id(p) not in ids]
        return [{"params": nets, "lr": lr}, {"params": vols, "lr": basis_lr if basis_lr is not None else lr}]

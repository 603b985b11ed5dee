"""``train-hetero --model cryoformer`` on the hinge set of ``bench_hetero.py``, side by side with SFBP.

Data: as :mod:`bench_hetero` makes it (chain B of 1A28 turning about the dimer interface by
``0 … --angle`` degrees in ``--states`` maps; ``cryovox simulate particles``: random poses, CTF,
shifts, white noise at ``--snr``), at a scale for a 2-core CPU (defaults: box 32, 1000 particles).

Sections (``--sections``, comma-separated):

* ``accuracy``: SFBP and CryoFormer (input poses, no refinement: both models use the given poses)
  on the clean poses, and with ``--cryodrgn`` cryoDRGN's ``train_vae`` (as ``bench_hetero.py`` runs it):
  |Spearman ρ| of PC1 of z against the true state, FSC-AUC per state of the map decoded at the mean z
  of the state's particles against its true map, seconds per epoch;
* ``poses``: the input rotations perturbed by a random rotation per particle (rotation vector
  with isotropic Gaussian components, mean angle ``--perturb`` degrees; shifts kept): CryoFormer with
  pose refinement (the default) and without; mean rotation error against the simulator's true poses
  before and after (from the last epoch's ``particles.N.star``), FSC-AUC per state; SFBP on the same
  perturbed poses for reference; and an oracle: the model's local pose search
  (:meth:`~cryovox.models.cryoformer.CryoFormerModel.local_search`, the training schedule's steps)
  run in the *true* map of each particle's state, which bounds what any refinement can reach at this
  SNR and box;
* ``ablations`` (on the perturbed set, with ``poses``): no deformation encoder, an MLP instead of the
  transformer, no refinement, against the full model;
* ``features``: how much of the state the deformation encoder's input carries, before any training: for
  the image features (``enc_features="image"``, the paper's input) and the basis features (``"basis"``,
  the default) of a freshly prepared model (consensus, noise spectrum, 16 random basis volumes), |Spearman ρ|
  of their first principal component against the true state and ρ of a 5-fold cross-validated ridge
  regression of the state on them (what a linear read-out can reach);
* ``decoder``: can the decoder represent the states at all? Each decoder (the transformer and the MLP
  ablation) is fitted directly to the true state maps with the true state as ``z`` (``z₁ = 2k/(K−1) − 1``,
  the other components 0; no images, no encoder): from the consensus fit of ``prepare``, ``--decoder-steps``
  Adam steps on 4 random states × 4096 random voxels each. Reported at steps 0, 300 and the last: mean
  FSC-AUC of the decoded state maps against their truths, of the two end states, the end-state map 0
  against the truth of the other end (equal to its own AUC when ``z`` is ignored), and the entropy of the
  spatial attention over the queries (``ln Q`` when uniform);
* ``timing``: seconds per particle of one training step (forward, backward, Adam) of the default
  model at ``--timing-boxes`` (random data, ``--timing-batch`` particles per step, both projection
  modes at the first box), peak resident memory of that process, and the implied time per epoch of
  ``--timing-particles`` particles.

    .venv/bin/python benchmarks/bench_cryoformer.py                                   # all sections
    .venv/bin/python benchmarks/bench_cryoformer.py --sections timing --timing-boxes 64,128
    .venv/bin/python benchmarks/bench_cryoformer.py --record                          # append to RESULTS.md
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SHARED = ROOT.parent / "shared" / "data"
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT))


def perturbed_star(star: Path, out: Path, mean_deg: float, seed: int) -> Path:
    """The particles of ``star`` with each rotation turned by a random small rotation (mean angle ``mean_deg``)."""
    import torch

    from cryovox.core.rotations import rotvec_to_matrix
    from cryovox.io.particles import read_particles, write_star

    if out.exists():
        return out
    table = read_particles(star)
    g = torch.Generator().manual_seed(seed)
    sigma = np.deg2rad(mean_deg) / np.sqrt(8 / np.pi)          # mean of a χ₃ variable is σ·√(8/π)
    v = torch.randn(len(table), 3, generator=g, dtype=torch.float64) * sigma
    R = torch.from_numpy(table.rotations) @ rotvec_to_matrix(v)
    write_star(out, table.with_poses(R.numpy(), table.shifts))
    return out


def rotation_error(rot: np.ndarray, truth: np.ndarray) -> float:
    import torch

    from cryovox.core.rotations import geodesic_distance

    return float(geodesic_distance(torch.from_numpy(rot), torch.from_numpy(truth)).mean())


def train(name: str, star: Path, work: Path, args, model: str, **options) -> dict:
    """Train one model; returns the run's latents, decoder, seconds per epoch and the refined poses."""
    from cryovox.io.particles import read_particles
    from cryovox.pipelines.eval_vol import decode, load_run
    from cryovox.pipelines.train_hetero import train_hetero

    out = work / name
    kw = dict(zdim=8, epochs=args.epochs, batch_size=args.batch_size, device=args.device, seed=args.seed, force=True)
    if model == "cryoformer":
        kw["lr"] = args.lr
        options.setdefault("search_deg", args.search_deg)
        options.setdefault("pose_pretrain_epochs", args.pose_pretrain_epochs)
        options.setdefault("pose_prior_deg", args.pose_prior)
    else:
        kw["batch_size"] = 64                      # the SFBP defaults of the command line (batch 64, lr 1e-3)
    reused = finished_run(out, star, args.epochs, model, options, kw) if args.reuse else None
    if reused is None:
        t0 = time.perf_counter()
        res = train_hetero(star, out, model=model, model_options=options, **kw)
        total = time.perf_counter() - t0
        seconds, losses = res.seconds, res.losses
    else:
        seconds, losses = reused
        total = float(np.sum(seconds))
        print(f"  {name}: reusing the finished run in {out}", flush=True)
    run = load_run(out)
    last = out / f"particles.{args.epochs}.star"
    rot = read_particles(last).rotations if last.exists() else None
    print(f"  {name}: {np.mean(seconds):.1f} s/epoch, loss {losses[0]:.5g} → {losses[-1]:.5g}, "
          f"{total:.0f} s in all", flush=True)
    return {"z": run.z, "decode": lambda zs, m=run.model: decode(m, zs), "seconds_per_epoch": float(np.mean(seconds)),
            "rot": rot, "losses": losses}


def finished_run(out: Path, star: Path, epochs: int, model: str, options: dict, kw: dict) -> tuple[list, list] | None:
    """``--reuse``: the per-epoch seconds and losses of a finished run in ``out`` made with these settings
    (particles, model kind, options, epochs, batch size, seed, lr), read from its checkpoints; None when
    there is none.
    A run made with other settings is an error (it would be reported as this one)."""
    import torch

    paths = [out / f"weights.{e}.pt" for e in range(1, epochs + 1)]
    if not all(p.exists() for p in paths) or (out / f"weights.{epochs + 1}.pt").exists():
        return None
    states = [torch.load(p, map_location="cpu", weights_only=True) for p in paths]
    cfg, info = states[-1]["config"], states[-1].get("train", {})
    wanted = {**options, "zdim": kw["zdim"]}
    if options.get("refine_poses") is False:      # the pose search's settings do not act without refinement
        for k in ("pose_pretrain_epochs", "search_deg", "pose_prior_deg", "search_mean"):
            wanted.pop(k, None)
    bad = {k: (cfg.get(k), v) for k, v in wanted.items() if k in cfg and cfg[k] != v}
    for k in ("batch_size", "seed", "lr"):
        if k in info and k in kw and info[k] != kw[k]:
            bad[k] = (info[k], kw[k])
    if Path(info.get("particles", star)).resolve() != Path(star).resolve():
        bad["particles"] = (info.get("particles"), str(star))
    if states[-1].get("kind", model) != model or bad:
        raise SystemExit(f"--reuse: {out} was trained with other settings ({bad or 'model kind'}); remove it")
    return [float(s["seconds"]) for s in states], [float(s["loss"][0]) for s in states]


def search_model(ds, batches, args):
    """A minimal cryoformer used only for its pose search (``local_search``) with the bench's search settings
    and the noise level of ``batches`` (the network is never evaluated)."""
    from cryovox.models.cryoformer import CryoFormerModel
    from cryovox.models.hetero.loss import data_spectra

    model = CryoFormerModel(box=ds.box, apix=ds.apix, zdim=2, channels=8, n_queries=4, blocks=1, heads=2,
                            n_tokens=2, levels=2, log2_table=8, enc_width=16, enc_layers=1, init_steps=0,
                            pose_pretrain_epochs=args.pose_pretrain_epochs, search_deg=args.search_deg,
                            pose_prior_deg=args.pose_prior if args.pose_prior > 0 else None)
    model.set_data_statistics(data_spectra(batches, ds.box, model.radius))
    return model


def oracle_search(star: Path, states: np.ndarray, truth: list[np.ndarray], args) -> np.ndarray:
    """The cryoformer's local pose search with each particle's true map in place of its decoded map, with
    the schedule of a training run (one search per refining epoch, steps halving from ``--search-deg``).
    The true maps are scaled by a least-squares fit of their projections at the input poses to the images.
    Returns the searched rotations ``(n, 3, 3)``."""
    import torch

    from cryovox.core.slicing import project_volume, volume_to_fourier
    from cryovox.data.particles import ParticleDataset
    from cryovox.io.particles import read_particles
    from cryovox.models.hetero.loss import pixel_shells

    table = read_particles(star)
    ds = ParticleDataset(table, window=0.85, preload=True)
    batches = [ds.__getitems__(list(range(s, min(len(ds), s + 64)))) for s in range(0, len(ds), 64)]
    model = search_model(ds, batches, args)
    model.set_particle_count(len(ds))
    maps = torch.from_numpy(np.stack(truth)).float()
    _, w = pixel_shells(ds.box, model.radius)
    num = den = 0.0
    with torch.no_grad():
        fts = [volume_to_fourier(m, pad=2) for m in maps]
        for b in batches[:4]:
            for i in range(b["image"].shape[0]):
                pred = project_volume(fts[int(states[int(b["index"][i])])], b["rot"][i:i + 1].float(), pad=2) * b["ctf"][i]
                num += float((w * (pred.conj() * b["image"][i]).real).sum())
                den += float((w * pred.abs() ** 2).sum())
    maps = maps * (num / den)
    model.eval()
    for epoch in range(args.pose_pretrain_epochs, args.epochs):
        model.start_epoch(epoch)
        step, step_px = model.search_steps()
        for b in batches:
            idx = b["index"]
            rot0, t0 = model.current_poses(b)
            rot, shift, _ = model.local_search(maps[torch.from_numpy(states[idx.numpy()])], b, rot0, t0, step, step_px,
                                               model.search_levels)
            model.pose_delta[idx] = rot @ b["rot"].double().transpose(-1, -2)
            model.pose_dshift[idx] = shift - b["shift"].double()
    rot, _ = model.current_poses({"index": torch.arange(len(ds)), "rot": torch.from_numpy(table.rotations),
                                  "shift": torch.from_numpy(table.shifts_px)})
    return rot.numpy()


def classical_refinement(star: Path, states: np.ndarray | None, args, work: Path) -> list[float]:
    """Iterative refinement without a learnt model, as a reference for the cryoformer's: reconstruct
    (``cryovox reconstruct``) from the current poses, run the cryoformer's local search (the training schedule's
    steps, rotation prior around the input rotations) of every particle in that map, repeat. ``states`` None: one consensus
    map for all particles; else one map per true state (reconstructed from that state's particles only:
    what a model that resolves the states perfectly could search in). Returns the mean rotation error against
    the true poses before and after each round."""
    import torch

    from cryovox.data.particles import ParticleDataset
    from cryovox.io.particles import read_particles, write_star
    from cryovox.pipelines.reconstruct import reconstruct

    gt = np.load(work / "sim" / "ground_truth.npz")
    t0 = read_particles(star)
    apix = float(t0.apix[0])
    rot, shift = t0.rotations.copy(), t0.shifts_px.copy()
    errors = [rotation_error(rot, gt["rotations"])]
    model = None
    steps = [max(args.search_deg * 0.5 ** k, 0.5) for k in range(args.epochs - args.pose_pretrain_epochs)]
    for k, step in enumerate(steps):
        table = t0.with_poses(rot, shift * apix)
        cur = work / "classical" / f"round{k}.star"
        cur.parent.mkdir(parents=True, exist_ok=True)
        write_star(cur, table)
        if states is None:
            maps, which = [torch.from_numpy(reconstruct(cur).full).float()], np.zeros(len(table), dtype=int)
        else:
            maps, which = [], states
            for s in range(int(states.max()) + 1):
                part = cur.with_name(f"round{k}_state{s}.star")
                write_star(part, table.take(np.nonzero(states == s)[0]))
                maps.append(torch.from_numpy(reconstruct(part).full).float())
        ds = ParticleDataset(read_particles(cur), window=0.85, preload=True)
        batches = [ds.__getitems__(list(range(i, min(len(ds), i + 64)))) for i in range(0, len(ds), 64)]
        if model is None:
            model = search_model(ds, batches, args)
        new_rot, new_shift = [], []
        for b in batches:
            idx = b["index"].numpy()
            # the images are centred by the current shifts (the search's t_in); the rotation prior is around the
            # input rotations
            prior = dict(b, rot=torch.from_numpy(t0.rotations[idx]).float())
            vols = torch.stack([maps[int(which[i])] for i in idx])
            r, t, _ = model.local_search(vols, prior, b["rot"].double(), b["shift"].double(), step,
                                         model.search_px * min(1.0, step / args.search_deg), model.search_levels,
                                         soft=model.search_mean)
            new_rot.append(r.numpy())
            new_shift.append(t.numpy())
        rot, shift = np.concatenate(new_rot), np.concatenate(new_shift)
        errors.append(rotation_error(rot, gt["rotations"]))
    return errors


def feature_probe(star: Path, states: np.ndarray, args) -> list[str]:
    """The ``features`` section: rows of (features, dimension, |ρ| of PC1, ρ of the cross-validated ridge fit)."""
    import torch
    from scipy.stats import spearmanr
    from sklearn.decomposition import PCA
    from sklearn.linear_model import RidgeCV
    from sklearn.model_selection import cross_val_predict

    from cryovox.data.particles import ParticleDataset
    from cryovox.io.particles import read_particles
    from cryovox.models.cryoformer import CryoFormerModel
    from cryovox.pipelines.train_hetero import _init_subset, prepare_model

    table = read_particles(star)
    ds = ParticleDataset(table, window=0.85, preload=True)
    torch.manual_seed(args.seed)
    model = CryoFormerModel(box=ds.box, apix=ds.apix, zdim=8, enc_features="both")
    prepare_model(model, ds, table, _init_subset(len(ds), args.seed, 10000), consensus=True, seed=args.seed,
                  device="cpu")
    batches = [ds.__getitems__(list(range(s, min(len(ds), s + 64)))) for s in range(0, len(ds), 64)]
    with torch.no_grad():
        image = torch.cat([model.encoder_features(b) for b in batches]).numpy()
        basis = torch.cat([model.feature_model.basis_features(b) for b in batches]).numpy()
    rows = []
    for name, F in (("image", image), ("basis", basis)):
        F = (F - F.mean(0)) / (F.std(0) + 1e-12)
        pc1 = PCA(n_components=1).fit_transform(F)[:, 0]
        pred = cross_val_predict(RidgeCV(alphas=np.logspace(-2, 4, 13)), F, states, cv=5)
        rows.append(f"{name:<8s} {F.shape[1]:5d} {abs(spearmanr(pc1, states)[0]):9.3f} {spearmanr(pred, states)[0]:9.3f}")
    return rows


def decoder_fit(truth: list[np.ndarray], args, decoder: str, steps: int, report_at: tuple[int, ...]) -> list[str]:
    """The ``decoder`` section for one decoder: rows of (step, mean AUC, end-state AUCs, cross AUC, entropy)."""
    import torch

    from cryovox.core.fsc import fsc, fsc_auc
    from cryovox.models.cryoformer import CryoFormerModel, render

    torch.manual_seed(args.seed)
    maps = torch.from_numpy(np.stack(truth)).float()
    K, box = maps.shape[0], maps.shape[-1]
    model = CryoFormerModel(box=box, apix=args.apix, zdim=8, decoder=decoder)
    model.fit_map(maps.mean(0))
    inside = model.mask.reshape(-1).nonzero().reshape(-1)
    r = render.grid_coords(box)[inside]
    scale = float(model.density_scale)
    target = maps.reshape(K, -1)[:, inside] / scale
    opt = torch.optim.Adam(model.param_groups(args.lr, 1e-2))
    g = torch.Generator().manual_seed(args.seed)

    def zs(k):
        z = torch.zeros(len(k), 8)
        z[:, 0] = 2 * k.float() / (K - 1) - 1
        return z

    rows = []

    def report(step):
        with torch.no_grad():
            vols = model.decode_volume(zs(torch.arange(K))).double()
            ent = float("nan")
            if decoder == "transformer":
                att = model.decoder.attention(model.features(r[::5])[None], model.condition(zs(torch.tensor([0]))))
                ent = float(-(att * att.clamp_min(1e-12).log()).sum(-1).mean())
        aucs = [fsc_auc(fsc(vols[k], torch.from_numpy(truth[k]).double())) for k in range(K)]
        cross = fsc_auc(fsc(vols[0], torch.from_numpy(truth[-1]).double()))
        rows.append(f"{decoder:<12s} {step:6d} {np.mean(aucs):8.3f} {aucs[0]:8.3f} {aucs[-1]:8.3f} {cross:10.3f} "
                    f"{ent:9.3f}")

    report(0)
    for step in range(1, steps + 1):
        k = torch.randint(0, K, (4,), generator=g)
        idx = torch.randint(0, r.shape[0], (4096,), generator=g)
        loss = ((model.shared_field(r[idx], model.condition(zs(k))) / scale - target[k][:, idx]) ** 2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step in report_at or step == steps:
            report(step)
    return rows


def timing_worker(box: int, batch: int, projection: str, steps: int) -> dict:
    """One process: the default model at ``box``; seconds per particle of a training step, peak RSS (GB)."""
    import resource

    import torch

    from cryovox.core.ctf import compute_ctf
    from cryovox.core.fft import rfftn_c
    from cryovox.core.rotations import random_rotations
    from cryovox.models.cryoformer import CryoFormerModel

    torch.manual_seed(0)
    model = CryoFormerModel(box=box, apix=128.0 / box, zdim=8, projection=projection, pose_pretrain_epochs=0)
    model.set_particle_count(batch)
    g = torch.Generator().manual_seed(1)
    b = {"image": rfftn_c(torch.randn(batch, box, box, generator=g), 2),
         "ctf": compute_ctf(box, 128.0 / box, torch.full((batch,), 15000.0), torch.full((batch,), 15000.0),
                            torch.zeros(batch), 300.0, 2.7, 0.1, half=True, dtype=torch.float32),
         "rot": random_rotations(batch, generator=g, dtype=torch.float32), "shift": torch.zeros(batch, 2),
         "index": torch.arange(batch)}
    opt = torch.optim.Adam(model.param_groups(1e-3, 1e-2))
    model.train()
    times = []
    for _ in range(steps + 1):
        t0 = time.perf_counter()
        out = model.loss(b, beta=0.1)
        opt.zero_grad()
        out.total.backward()
        opt.step()
        times.append(time.perf_counter() - t0)
    per = float(np.median(times[1:])) / batch
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2       # kB → GB
    return {"box": box, "projection": projection, "batch": batch, "seconds_per_particle": per, "peak_rss_gb": rss,
            "threads": torch.get_num_threads()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sections", default="features,decoder,accuracy,poses,ablations,timing")
    p.add_argument("--box", type=int, default=32)
    p.add_argument("--apix", type=float, default=None, help="Å/px (default: 128 Å / box)")
    p.add_argument("--particles", type=int, default=800)
    p.add_argument("--states", type=int, default=10)
    p.add_argument("--angle", type=float, default=40.0)
    p.add_argument("--snr", type=float, default=0.1)
    p.add_argument("--shift", type=float, default=2.0)
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=2e-3, help="cryoformer networks' learning rate")
    p.add_argument("--search-deg", type=float, default=4.0, help="cryoformer: first refining epoch's search step (°)")
    p.add_argument("--perturb", type=float, default=5.0, help="mean rotation error added to the input poses (°)")
    p.add_argument("--pose-pretrain-epochs", type=int, default=6, help="cryoformer: epochs before refinement")
    p.add_argument("--pose-prior", type=float, default=5.0, help="cryoformer: pose prior width (°)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cryodrgn", action="store_true",
                   help="accuracy section: also run cryoDRGN's train_vae (needs bash benchmarks/cryodrgn_env.sh)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu", help="device of the trainings (accuracy/poses/ablations): cpu, cuda, cuda:N")
    p.add_argument("--decoder-steps", type=int, default=1000, help="decoder section: Adam steps of the fit")
    p.add_argument("--timing-boxes", default="64,128")
    p.add_argument("--timing-batch", type=int, default=4)
    p.add_argument("--timing-steps", type=int, default=2)
    p.add_argument("--timing-particles", type=int, default=5000)
    p.add_argument("--model", type=Path, default=SHARED / "models" / "1a28.pdb.gz")
    p.add_argument("--workdir", type=Path, default=Path("/tmp/cryovox_bench_cryoformer"))
    p.add_argument("--record", action="store_true")
    p.add_argument("--reuse", action="store_true",
                   help="report finished runs found in the work directory (same settings) instead of training again")
    p.add_argument("--timing-worker", nargs=3, metavar=("BOX", "BATCH", "PROJECTION"), help=argparse.SUPPRESS)
    args = p.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    if args.timing_worker:
        box, batch, proj = args.timing_worker
        print(json.dumps(timing_worker(int(box), int(batch), proj, args.timing_steps)))
        return
    args.apix = args.apix or 128.0 / args.box
    sections = set(args.sections.split(","))
    lines: list[str] = []

    def show(text: str) -> None:
        print(text, flush=True)
        lines.append(text)

    work = args.workdir / f"box{args.box}_n{args.particles}_s{args.states}_snr{args.snr:g}"
    if sections & {"features", "decoder", "accuracy", "poses", "ablations"}:
        from bench_hetero import make_data

        work.mkdir(parents=True, exist_ok=True)
        star, states, truth = make_data(work, args)         # simulated once, reused by every section

    if "features" in sections:
        show(f"\nfeatures: the deformation encoder's input on {args.particles} particles ({args.states} hinge states, box "
             f"{args.box}, SNR {args.snr:g}) before training; state read-out")
        show(f"{'features':<8s} {'dim':>5s} {'|rho| PC1':>9s} {'rho ridge':>9s}")
        for line in feature_probe(star, states, args):
            show(line)

    if "decoder" in sections:
        show(f"\ndecoder: fitted to the {args.states} true hinge maps (box {args.box}, {args.apix:g} Å/px) with the true "
             f"state as z, lr {args.lr:g} (hash tables 1e-2), 4 states × 4096 voxels per step")
        show(f"{'decoder':<12s} {'step':>6s} {'AUC mean':>8s} {'state 0':>8s} {'state ' + str(args.states - 1):>8s} "
             f"{'map0/true' + str(args.states - 1):>10s} {'entropy':>9s}")
        for dec in ("transformer", "mlp"):
            for line in decoder_fit(truth, args, dec, args.decoder_steps, (300,)):
                show(line)

    if sections & {"accuracy", "poses", "ablations"}:
        from bench_hetero import evaluate

        gt = np.load(work / "sim" / "ground_truth.npz")
        show(f"data: {args.particles} particles, {args.states} hinge states (0–{args.angle:g}°, 1A28 chain B), box "
             f"{args.box}, {args.apix:g} Å/px, SNR {args.snr:g}, CTF, shifts ±{args.shift:g} px; {args.epochs} epochs, "
             f"zdim 8; cryoformer batch {args.batch_size}, lr {args.lr:g}, voxel projection, refinement from epoch "
             f"{args.pose_pretrain_epochs + 1} (local search from {args.search_deg:g}°, prior {args.pose_prior:g}°); sfbp at its "
             f"defaults (batch 64); torch threads {torch.get_num_threads()}")
        header = f"{'run':<34s} {'|rho|':>6s} {'AUC mean':>8s} {'min':>6s} {'rot err °':>9s} {'s/epoch':>8s}   per-state FSC-AUC"

        def row(name: str, r: dict, rot_err: float | None = None) -> None:
            ev = evaluate(r["z"], states, truth, r["decode"])
            r.update(ev)
            err = "" if rot_err is None else f"{rot_err:.2f}"
            show(f"{name:<34s} {ev['rho']:6.3f} {ev['auc'].mean():8.3f} {ev['auc'].min():6.3f} {err:>9s} "
                 f"{r['seconds_per_epoch']:8.1f}   {' '.join(f'{a:.3f}' for a in ev['auc'])}")

        if "accuracy" in sections:
            show("\naccuracy (input poses = the simulator's):")
            show(header)
            sf = train("sfbp_clean", star, work, args, "sfbp")
            row("sfbp", sf)
            cf = train("cryoformer_clean", star, work, args, "cryoformer", refine_poses=False)
            row("cryoformer (no refinement)", cf)
            if args.cryodrgn:
                from bench_hetero import _sign_aligned, run_cryodrgn

                args.reuse_cryodrgn = False
                cd = run_cryodrgn(star, work, args)
                aligned = _sign_aligned(cd["decode"], truth)
                row("cryoDRGN 4.3.1 (train_vae)", {"z": cd["z"], "decode": aligned,
                                                   "seconds_per_epoch": float(np.median(cd["epoch_times"]))})
        if sections & {"poses", "ablations"}:
            pstar = perturbed_star(star, work / f"perturbed{args.perturb:g}.star", args.perturb, args.seed + 1)
            from cryovox.io.particles import read_particles

            before = rotation_error(read_particles(pstar).rotations, gt["rotations"])
            show(f"\npose refinement and ablations (input rotations perturbed: mean error {before:.2f}° "
                 f"against the true poses; the rot err column is that of the last epoch's refined poses):")
            oracle = oracle_search(pstar, states, truth, args)
            show(f"oracle: the local search (same steps, prior {args.pose_prior:g}°) in the true map of each particle's "
                 f"state: mean rotation error {before:.2f}° → {rotation_error(oracle, gt['rotations']):.2f}°")
            for label, st in (("one consensus map", None), ("one map per true state", states)):
                errs = classical_refinement(pstar, st, args, work)
                show(f"classical refinement in {label} (reconstruct → local search, {len(errs) - 1} rounds): mean "
                     f"rotation error {' → '.join(f'{e:.2f}' for e in errs)}°")
            show(header)
            full = train("cryoformer_perturbed", pstar, work, args, "cryoformer")
            row("cryoformer (full, refinement)", full, rotation_error(full["rot"], gt["rotations"]))
            off = train("cryoformer_perturbed_norefine", pstar, work, args, "cryoformer", refine_poses=False)
            row("  no refinement", off, before)
            if "ablations" in sections:
                nodef = train("cryoformer_perturbed_nodeform", pstar, work, args, "cryoformer", deformation=False)
                row("  no deformation encoder", nodef, rotation_error(nodef["rot"], gt["rotations"]))
                mlp = train("cryoformer_perturbed_mlp", pstar, work, args, "cryoformer", decoder="mlp")
                row("  MLP instead of transformer", mlp, rotation_error(mlp["rot"], gt["rotations"]))
            sfp = train("sfbp_perturbed", pstar, work, args, "sfbp")
            row("sfbp (perturbed poses)", sfp, before)
            show(f"pose refinement: mean rotation error {before:.2f}° → {rotation_error(full['rot'], gt['rotations']):.2f}°; "
                 f"mean FSC-AUC with refinement {full['auc'].mean():.3f}, without {off['auc'].mean():.3f}")

    if "timing" in sections:
        show(f"\ntiming: one training step (forward, backward, Adam) of the default model (64 queries × 64, 3 blocks, "
             f"16×2 hash levels, 2^15 table), batch {args.timing_batch}, torch threads {args.threads}, "
             f"CPU {os.cpu_count()} cores (load average {os.getloadavg()[0]:.1f} at start)")
        show(f"{'box':>4s} {'projection':>10s} {'s/particle':>11s} {'s/epoch of ' + str(args.timing_particles):>16s} "
             f"{'peak RSS GB':>12s}")
        boxes = [int(b) for b in args.timing_boxes.split(",") if b]
        jobs = [(b, "voxel") for b in boxes] + ([(boxes[0], "field")] if boxes else [])
        for box, proj in jobs:
            cmd = [sys.executable, __file__, "--threads", str(args.threads), "--timing-steps", str(args.timing_steps),
                   "--timing-worker", str(box), str(args.timing_batch), proj]
            out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
            r = json.loads(out)
            show(f"{box:4d} {proj:>10s} {r['seconds_per_particle']:11.3f} "
                 f"{r['seconds_per_particle'] * args.timing_particles:16.0f} {r['peak_rss_gb']:12.2f}")

    if args.record:
        from _record import record

        record("train-hetero --model cryoformer (issue 8)", "\n".join(lines), args.threads,
               f", load average {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()

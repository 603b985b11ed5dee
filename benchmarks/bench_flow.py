#!/usr/bin/env python
"""Flow-prior restoration benchmark on held-out corpus maps (CryoFM tasks), and sampler/training speed.

Tasks (``--tasks``, comma-separated), each on the first ``--maps`` maps of the corpus's test
split (rotation 0 of each entry; never seen in training):

- ``denoise``: half maps = truth + white noise whose level puts the half-map FSC 0.143 at
  ``--levels`` pixels (default 4 and 6.67 px: CryoFM's 6 Å and 10 Å at 1.5 Å/px). FSC-AUC against
  the truth of (a) the half-map average, (b) relion_postprocess-like: FSC-weighted average ×
  automatic soft solvent mask (:func:`cryovox.core.masks.auto_solvent_mask`), (c) ``denoise``
  with the flow prior. Fail = flow AUC below the plain average.
- ``aniso``: as denoise at the first level, with the noise power ×``--amp`` inside a ±30° cone
  about z; flow with isotropic noise model and with ``--anisotropic``.
- ``wedge``: ±60° missing wedge about y (noise-free); FSC-AUC restricted to the missing Fourier
  region (the input has 0 there) of ``inpaint-wedge`` (mean of ``--samples``) and of a classical
  iterative fill (POCS: density ≥ background, zero outside an automatic support mask, measured
  Fourier part restored; 200 iterations). Also the posterior spread: mean Fourier variance of the
  samples inside the wedge / outside (measured part), and std/error correlation.
- ``abinitio``: 8 noise-free projections at random poses of ``--abinitio-maps`` maps; ``abinitio``
  then alignment to the truth (SO(3) grid + local refinement, shifts by FFT, both hands);
  FSC 0.5 resolution in pixels.
- ``speed``: seconds per Euler step (with backprop through the network, as Alg. 1) for a
  ``--speed-arch``/``--speed-preset`` network at ``--speed-box``³, extrapolated to 1000 steps, and
  training throughput (maps/s) at ``--batch-size``; untrained weights (speed only).

Example (the CPU-scale run in benchmarks/RESULTS.md):
  python benchmarks/bench_flow.py --corpus corpus/ --prior prior/prior.pt -o bench_flow/ --maps 8 --steps 100
GPU scale (CryoFM-S speed at 64³):
  python benchmarks/bench_flow.py -o speed/ --tasks speed --speed-arch hdit --speed-preset cryofm-s --speed-box 64 --device cuda
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from cryovox.core.degrade import add_noise, amplify_power, apply_fourier_mask, cone_mask, project_maps, \
    radial_power_grid, wedge_fill, wedge_mask  # noqa: E402
from cryovox.core.fft import fftn_c, radius_grid, rfftn_c  # noqa: E402
from cryovox.core.fsc import fsc, fsc_auc, resolution_at  # noqa: E402
from cryovox.core.masks import auto_solvent_mask  # noqa: E402
from cryovox.core.noise import halfmap_noise_power  # noqa: E402
from cryovox.core.spectral import shell_index  # noqa: E402
from cryovox.io.mrc import read_map, write_map, write_stack  # noqa: E402
from cryovox.pipelines.denoise import fsc_weighted_average  # noqa: E402


# ------------------------------------------------------------------------------------ metrics
def masked_fsc_auc(a: torch.Tensor, b: torch.Tensor, region: torch.Tensor) -> float:
    """FSC-AUC over the Fourier samples in ``region`` (full centred layout) only, shells 1 … D/2."""
    D = a.shape[-1]
    A, B = fftn_c(a.double()), fftn_c(b.double())
    idx = shell_index(D, 3)
    vals = []
    for s in range(1, D // 2 + 1):
        sel = (idx == s) & region
        if sel.sum() < 3:
            continue
        num = (A[sel] * B[sel].conj()).real.sum()
        den = torch.sqrt((A[sel].abs() ** 2).sum() * (B[sel].abs() ** 2).sum())
        vals.append(float(num / den) if den > 0 else 0.0)
    c = torch.tensor(vals)
    return float((c.sum() - 0.5 * (c[0] + c[-1])) / (len(vals) - 1))


def auc(a, b) -> float:
    return fsc_auc(fsc(a.double(), b.double()))


# ------------------------------------------------------------------------------------ data
def test_maps(corpus_path: Path, n: int, split: str = "test") -> tuple[list[torch.Tensor], float, list[str]]:
    """The first ``n`` maps of a split (rotation 0 of each entry first)."""
    from cryovox.io.corpus import open_corpus

    c = open_corpus(corpus_path)
    meta = c.metadata
    rows = [int(i) for i in c.indices(split) if int(meta["rotation"].iloc[int(i)]) == 0][:n]
    if len(rows) < n:
        rows = [int(i) for i in c.indices(split)][:n]
    return [torch.from_numpy(c[i]).double() for i in rows], c.apix, [str(meta["entry_id"].iloc[i]) for i in rows]


def white_noise_level(truth: torch.Tensor, shell: float) -> float:
    """Per-sample noise power putting the half-map FSC = S/(S+N) at 0.143 at ``shell`` (S: truth's power there)."""
    D = truth.shape[-1]
    X = fftn_c(truth)
    p = (X.real ** 2 + X.imag ** 2)
    idx = shell_index(D, 3).double()
    lo, hi = math.floor(shell), math.ceil(shell)
    s_lo = float(p[idx == lo].mean())
    s_hi = float(p[idx == hi].mean()) if hi != lo else s_lo
    f = shell - lo
    S = math.exp((1 - f) * math.log(s_lo) + f * math.log(s_hi))
    return S * (1 / 0.143 - 1)


def postprocess_baseline(h1, h2, apix) -> torch.Tensor:
    curve = fsc(h1, h2)
    fw = fsc_weighted_average(h1, h2, curve)
    mask, _ = auto_solvent_mask(fw, apix)
    return fw * mask


def pocs_fill(observed: torch.Tensor, mask: torch.Tensor, apix: float, iters: int = 200) -> torch.Tensor:
    """Classical missing-wedge fill: density ≥ background inside an automatic support, measured part restored."""
    D = observed.shape[-1]
    r = radius_grid(D, 3)
    bg = float(observed[r > 0.45 * D].median())
    support, _ = auto_solvent_mask(observed - bg, apix)
    support = (support > 0.5).double()
    x = observed.clone()
    for _ in range(iters):
        x = bg + (x - bg).clamp(min=0) * support
        x = wedge_fill(x, observed, mask)
    return x


# ------------------------------------------------------------------------------------ alignment
def align(vol: torch.Tensor, ref: torch.Tensor, step: float = 15.0) -> tuple[torch.Tensor, float]:
    """Best rotation (SO(3) grid + 2 local levels), translation (FFT) and hand of ``vol`` onto ``ref``."""
    from cryovox.core.so3 import local_grid, so3_grid
    from cryovox.core.transform import rotate

    D = ref.shape[-1]
    Rf = torch.fft.fftn(ref - ref.mean())

    def score(v, Rs):
        # cc[s] = Σ_r w(r) ref(r + s): rolling w by +s matches ref
        out = []
        for R in Rs:
            w = rotate(v, R, order=1)
            cc = torch.fft.ifftn(torch.fft.fftn(w - w.mean()).conj() * Rf).real
            out.append((float(cc.max()) / float(w.std() * ref.std() * D ** 3 + 1e-12), R, int(cc.argmax())))
        return max(out, key=lambda o: o[0])

    best = None
    for hand, v in (("original", vol), ("mirrored", vol.flip(-1))):
        b = score(v, so3_grid(step))
        s = step
        for _ in range(2):
            s /= 2
            b = max(b, score(v, local_grid(b[1], s, 1.5 * s)[0]), key=lambda o: o[0])
        if best is None or b[0] > best[0]:
            best = (*b, v, hand)
    sc, R, idx, v, hand = best
    w = rotate(v, R, order=3)
    shift = np.array(np.unravel_index(idx, (D, D, D)))
    w = torch.roll(w, tuple(int(s) for s in shift), dims=(0, 1, 2))
    return w, sc


# ------------------------------------------------------------------------------------ tasks
def run_denoise(maps, apix, prior, out, args, levels, amp=None, label="denoise"):
    from cryovox.pipelines import denoise

    rows = []
    for i, truth in enumerate(maps):
        D = truth.shape[-1]
        for lev in levels:
            g = torch.Generator().manual_seed(1000 * i + int(10 * lev))
            shell = D / lev
            P = torch.full((D, D, D), white_noise_level(truth, shell), dtype=torch.float64)
            if amp is not None:
                P = amplify_power(P, cone_mask(D, 30, "z"), amp)
            h1, h2 = add_noise(truth, P, g), add_noise(truth, P, g)
            d = out / f"{label}_map{i}_L{lev:g}"
            d.mkdir(parents=True, exist_ok=True)
            write_map(d / "h1.mrc", h1, apix)
            write_map(d / "h2.mrc", h2, apix)
            _, curve = halfmap_noise_power(h1, h2)
            row = dict(map=i, level_px=lev, fsc143_px=resolution_at(curve, 0.143, 1.0, D),
                       average=auc(0.5 * (h1 + h2), truth), postprocess=auc(postprocess_baseline(h1, h2, apix), truth))
            variants = [("flow", False)] + ([("flow_aniso", True)] if amp is not None else [])
            for name, aniso in variants:
                t0 = time.time()
                res = denoise.run(d / "h1.mrc", d / "h2.mrc", prior=args.prior, outdir=d / name, anisotropic=aniso,
                                  steps=args.steps, samples=args.samples, backprop=not args.no_backprop,
                                  guidance_scale=args.guidance_scale, halves=args.halves, seed=i, device=args.device,
                                  guidance=args.guidance)
                est = torch.from_numpy(read_map(res.output).data).double()
                row[name] = auc(est, truth)
                row[f"{name}_s"] = time.time() - t0
                if res.std is not None:
                    sd = torch.from_numpy(read_map(res.std).data).double()
                    err = (est - truth).abs()
                    row[f"{name}_std_err_corr"] = float(torch.corrcoef(torch.stack([sd.flatten(), err.flatten()]))[0, 1])
            rows.append(row)
            print(json.dumps(row), flush=True)
    return rows


def run_wedge(maps, apix, prior, out, args):
    from cryovox.pipelines import inpaint

    rows = []
    for i, truth in enumerate(maps):
        D = truth.shape[-1]
        m = wedge_mask(D, (-60, 60), "y")
        inside = radius_grid(D, 3) <= D // 2
        missing = (~m) & inside
        observed = apply_fourier_mask(truth, m)
        d = out / f"wedge_map{i}"
        d.mkdir(parents=True, exist_ok=True)
        write_map(d / "wedge.mrc", observed, apix)
        t0 = time.time()
        res = inpaint.run(d / "wedge.mrc", prior=args.prior, outdir=d / "flow", steps=args.steps,
                          samples=max(2, args.samples), seed=i, device=args.device, save_samples=True)
        secs = time.time() - t0
        est = torch.from_numpy(read_map(res.output).data).double()
        samples = torch.stack([torch.from_numpy(read_map(p).data).double()
                               for k, p in sorted(res.files.items()) if k.startswith("sample_")])
        F = fftn_c(samples)
        var = (F - F.mean(0)).abs().pow(2).mean(0)
        obs_region = m & inside & (radius_grid(D, 3) > 0)
        pocs = pocs_fill(observed, m, apix)
        sd = samples.std(0)
        row = dict(map=i, input_missing_auc=masked_fsc_auc(observed, truth, missing),
                   flow_missing_auc=masked_fsc_auc(est, truth, missing),
                   pocs_missing_auc=masked_fsc_auc(pocs, truth, missing),
                   flow_auc=auc(est, truth), pocs_auc=auc(pocs, truth), input_auc=auc(observed, truth),
                   var_ratio_missing_over_measured=float(var[missing].mean() / var[obs_region].mean().clamp_min(1e-30)),
                   var_missing=float(var[missing].mean()), var_measured=float(var[obs_region].mean()),
                   std_err_corr=float(torch.corrcoef(torch.stack([sd.flatten(), (est - truth).abs().flatten()]))[0, 1]),
                   seconds=secs)
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def run_abinitio(maps, apix, prior, out, args):
    from cryovox.core.rotations import random_rotations
    from cryovox.pipelines import abinitio

    rows = []
    for i, truth in enumerate(maps[: args.abinitio_maps]):
        D = truth.shape[-1]
        g = torch.Generator().manual_seed(77 + i)
        rot = random_rotations(8, g)
        r = radius_grid(D, 3)
        bg = float(truth[r > 0.45 * D].median())
        images = project_maps(truth - bg, rot)
        d = out / f"abinitio_map{i}"
        d.mkdir(parents=True, exist_ok=True)
        write_stack(d / "averages.mrcs", images, apix)
        t0 = time.time()
        res = abinitio.run(d / "averages.mrcs", prior=args.prior, outdir=d / "flow", steps=args.abinitio_steps,
                           samples=1, search_every=args.search_every, angular_step=args.angular_step,
                           stop_gradient=args.no_backprop, guidance_scale=args.guidance_scale, seed=i,
                           device=args.device)
        secs = time.time() - t0
        est = torch.from_numpy(read_map(res.output).data).double()
        aligned, cc = align(est, truth)
        write_map(d / "aligned.mrc", aligned, apix)
        curve = fsc(aligned, truth)
        row = dict(map=i, fsc05_px=resolution_at(curve, 0.5, 1.0, D), fsc143_px=resolution_at(curve, 0.143, 1.0, D),
                   auc=fsc_auc(curve), align_cc=cc, mean_ncc=res.mean_ncc, seconds=secs)
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def run_speed(args):
    from cryovox.models.flow import build_velocity_model, flow_loss
    from cryovox.models.flow.sampling import flow_sample
    from cryovox.pipelines.train_flow import model_config

    dev = torch.device(args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu"))
    cfg = model_config(args.speed_arch, args.speed_preset)
    net = build_velocity_model(args.speed_arch, cfg).to(dev)
    n_params = sum(p.numel() for p in net.parameters())
    B = args.speed_box
    amp = dev.type == "cuda"
    x1 = torch.randn(1, 1, B, B, B, device=dev)
    y = torch.randn(1, 1, B, B, B, device=dev)

    def vel(x, t):
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=amp):
            return net(x, t).float()

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize()

    flow_sample(vel, x1, 2, likelihood=lambda x0, t: ((x0 - y) ** 2).flatten(1).sum(1))   # warm-up
    sync()
    t0 = time.time()
    n = args.speed_steps
    flow_sample(vel, x1, n, likelihood=lambda x0, t: ((x0 - y) ** 2).flatten(1).sum(1))
    sync()
    per_step = (time.time() - t0) / n
    opt = torch.optim.AdamW(net.parameters(), lr=1e-4)
    x0 = torch.randn(args.batch_size, 1, B, B, B, device=dev)
    for k in range(3 + args.speed_steps):
        if k == 3:
            sync()
            t0 = time.time()
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=amp):
            loss = flow_loss(net, x0)
        opt.zero_grad()
        loss.backward()
        opt.step()
    sync()
    train = args.batch_size * args.speed_steps / (time.time() - t0)
    row = dict(arch=args.speed_arch, preset=args.speed_preset, box=B, params_M=n_params / 1e6, device=str(dev),
               seconds_per_step=per_step, seconds_per_1000_step_sample=1000 * per_step, train_maps_per_s=train,
               batch_size=args.batch_size, bf16=amp)
    print(json.dumps(row), flush=True)
    return [row]


def summarize(rows, keys):
    out = {}
    for k in keys:
        vals = [r[k] for r in rows if k in r and r[k] is not None and np.isfinite(r[k])]
        if vals:
            out[k] = (float(np.mean(vals)), float(np.std(vals)), len(vals))
    return out


def figure(results, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [k for k in ("denoise", "aniso", "wedge", "abinitio") if results.get(k)]
    if not panels:
        return None
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.4))
    axes = np.atleast_1d(axes)
    for ax, k in zip(axes, panels):
        rows = results[k]
        if k in ("denoise", "aniso"):
            levels = sorted({r["level_px"] for r in rows})
            names = [n for n in ("average", "postprocess", "flow", "flow_aniso") if n in rows[0]]
            for j, n in enumerate(names):
                m = [np.mean([r[n] for r in rows if r["level_px"] == L]) for L in levels]
                s = [np.std([r[n] for r in rows if r["level_px"] == L]) for L in levels]
                ax.bar(np.arange(len(levels)) + 0.2 * j, m, 0.2, yerr=s, label=n)
            ax.set_xticks(np.arange(len(levels)) + 0.1 * (len(names) - 1))
            ax.set_xticklabels([f"FSC 0.143 @ {L:g} px" for L in levels])
            ax.set_ylabel("FSC-AUC vs truth")
            ax.set_title("anisotropic noise (×amp, ±30° cone)" if k == "aniso" else "spectral denoising")
            ax.legend(fontsize=7)
        elif k == "wedge":
            names = ["input_missing_auc", "pocs_missing_auc", "flow_missing_auc"]
            ax.bar(range(3), [np.mean([r[n] for r in rows]) for n in names],
                   yerr=[np.std([r[n] for r in rows]) for n in names])
            ax.set_xticks(range(3))
            ax.set_xticklabels(["input", "POCS fill", "flow"])
            ax.set_ylabel("FSC-AUC in the missing wedge")
            ax.set_title("missing wedge ±60°")
        else:
            ax.bar(range(len(rows)), [r["fsc05_px"] for r in rows])
            ax.axhline(4, ls="--", c="k")
            ax.set_xlabel("map")
            ax.set_ylabel("FSC 0.5 resolution (px)")
            ax.set_title("ab initio, 8 projections")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--corpus", type=Path)
    p.add_argument("--prior", type=Path)
    p.add_argument("-o", "--outdir", type=Path, required=True)
    p.add_argument("--tasks", default="denoise,aniso,wedge,abinitio")
    p.add_argument("--maps", type=int, default=8)
    p.add_argument("--split", default="test", help="corpus split to evaluate on (val for tuning, test to report)")
    p.add_argument("--levels", type=float, nargs="+", default=[4.0, 6.67])
    p.add_argument("--amp", type=float, default=8.0)
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--samples", type=int, default=1)
    p.add_argument("--halves", default="average")
    p.add_argument("--guidance-scale", type=float, default=1.0)
    p.add_argument("--no-backprop", action="store_true")
    p.add_argument("--guidance", default="gradient", help="denoise guidance: gradient (Alg. 1) | wiener")
    p.add_argument("--abinitio-maps", type=int, default=2)
    p.add_argument("--abinitio-steps", type=int, default=None)
    p.add_argument("--search-every", type=int, default=10)
    p.add_argument("--angular-step", type=float, default=15.0)
    p.add_argument("--speed-arch", default="hdit")
    p.add_argument("--speed-preset", default="tiny")
    p.add_argument("--speed-box", type=int, default=16)
    p.add_argument("--speed-steps", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    args.abinitio_steps = args.abinitio_steps or args.steps
    args.outdir.mkdir(parents=True, exist_ok=True)
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    results: dict[str, list] = {}
    if any(t != "speed" for t in tasks):
        maps, apix, ids = test_maps(args.corpus, args.maps, args.split)
        print(f"# {len(maps)} test maps of {maps[0].shape[-1]}³ at {apix} Å/px: {', '.join(ids)}", flush=True)
    t_all = time.time()
    for t in tasks:
        if t == "denoise":
            results[t] = run_denoise(maps, apix, args.prior, args.outdir, args, args.levels)
        elif t == "aniso":
            results[t] = run_denoise(maps, apix, args.prior, args.outdir, args, args.levels[:1], amp=args.amp,
                                     label="aniso")
        elif t == "wedge":
            results[t] = run_wedge(maps, apix, args.prior, args.outdir, args)
        elif t == "abinitio":
            results[t] = run_abinitio(maps, apix, args.prior, args.outdir, args)
        elif t == "speed":
            results[t] = run_speed(args)
        else:
            raise SystemExit(f"unknown task {t}")
    summary = {}
    for t, rows in results.items():
        keys = sorted({k for r in rows for k, v in r.items() if isinstance(v, (int, float)) and k != "map"})
        if t in ("denoise", "aniso"):
            for L in sorted({r["level_px"] for r in rows}):
                sub = [r for r in rows if r["level_px"] == L]
                summary[f"{t}@{L:g}px"] = summarize(sub, keys)
                summary[f"{t}@{L:g}px"]["fail_rate"] = float(np.mean([r["flow"] < r["average"] for r in sub]))
        else:
            summary[t] = summarize(rows, keys)
    summary["seconds_total"] = time.time() - t_all
    summary["command"] = " ".join(sys.argv)
    (args.outdir / "results.json").write_text(json.dumps({"rows": results, "summary": summary}, indent=1))
    fig = figure(results, args.outdir / "bench_flow.png")
    print(json.dumps(summary, indent=1))
    if fig:
        print(f"figure: {fig}")


if __name__ == "__main__":
    main()

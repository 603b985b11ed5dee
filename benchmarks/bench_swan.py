#!/usr/bin/env python
"""Cryo-SWAN benchmark: the four archs side by side, embedding hit rate, anchored generation,
and denoising against a band-pass filter — on a corpus made by ``examples/make_mirror.py`` and
``cryovox curate``.

Steps (each skipped when its output already exists in WORKDIR, so a run can be continued):

1. corpus: ``make_mirror.py MIRROR --n N`` then ``cryovox curate MIRROR -o CORPUS --box B --apix A
   --rotations R`` (or ``--corpus`` to use an existing store);
2. ``cryovox train-swan CORPUS --arch a`` for a in swan, vq, rq, swan-single with identical
   epochs, widths, codebook size and seed; their ``metrics.json`` give test PSNR, FSC-0.5,
   FSC-AUC, IoU/F1 and codebook usage;
3. ``cryovox embed`` of the test split with the swan model: the nearest-neighbour same-entry
   hit rate (the test split holds R randomly rotated copies of each entry);
4. ``cryovox train-swan --stage diffusion`` on the swan model, then for each of ``--anchors``
   test maps ``--samples`` draws (``swan_generate.run``, what ``cryovox generate --swan`` calls):
   FSC-AUC of each sample with its anchor versus with a random test map of another entry;
5. denoising: every test map plus white Gaussian noise at SNR 0.5 (noise variance = 2 × the
   map's variance over the box), SWAN (``swan_denoise.denoise_tensor``, what
   ``cryovox denoise --method swan`` runs) versus the best band-pass (cut-off picked with
   the ground truth, an oracle): PSNR and FSC-AUC against the clean map.

``--throughput`` instead measures training throughput (maps/s) of one arch at ``--box`` with
random maps (bf16 autocast with ``--amp``), the figure asked for on a GPU.

Results are printed and appended to ``benchmarks/RESULTS.md`` with the exact commands.

Example (CPU scale used for RESULTS.md):
    python benchmarks/bench_swan.py --workdir /tmp/swanbench --n 220 --box 32 --apix 6 --rotations 3 \\
        --epochs 12 --width 16 --latent-dim 16 --codebook-size 512 --no-augment
GPU scale:
    python benchmarks/bench_swan.py --workdir /scratch/swanbench --n 2000 --box 64 --apix 4 --epochs 100 \\
        --width 32 --latent-dim 32 --codebook-size 4096 --batch-size 32 --amp --device cuda
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
ARCHS = ("swan", "vq", "rq", "rq:4:fine", "swan-single")


def sh(cmd: list[str], log: list[str]) -> None:
    line = " ".join(shlex.quote(str(c)) for c in cmd)
    print(f"$ {line}", flush=True)
    log.append(line)
    subprocess.run([str(c) for c in cmd], check=True, cwd=ROOT)


def cryovox() -> list[str]:
    return [sys.executable, "-m", "cryovox"]


def build_corpus(args, log) -> Path:
    if args.corpus:
        return Path(args.corpus)
    work = Path(args.workdir)
    mirror, corpus = work / "mirror", work / "corpus"
    if not (mirror / "manifest.json").exists():
        sh([sys.executable, "examples/make_mirror.py", mirror, "--n", args.n, "--plain", "--seed", args.seed,
            "--apix", *args.mirror_apix], log)
    if not (corpus / "corpus.json").exists():
        sh([*cryovox(), "curate", mirror, "-o", corpus, "--box", args.box, "--apix", args.apix,
            "--rotations", args.rotations, "--workers", args.workers, "--seed", args.seed, "--force"], log)
    return corpus


def train_archs(args, corpus: Path, log) -> dict[str, dict]:
    out = {}
    for spec in args.archs:
        arch, depth, grid = (spec.split(":") + ["", ""])[:3]  # "rq:4:fine" = RQ with depth 4 on the D/4 grid
        d = Path(args.workdir) / (f"ae_{arch}" + (f"-d{depth}" if depth else "") + (f"-{grid}" if grid else ""))
        if not (d / "metrics.json").exists():
            cmd = [*cryovox(), "train-swan", corpus, "-o", d, "--arch", arch, "--epochs", args.epochs,
                   "--batch-size", args.batch_size, "--width", args.width, "--latent-dim", args.latent_dim,
                   "--codebook-size", args.codebook_size, "--seed", args.seed, "--device", args.device,
                   "--resume" if d.exists() else "--force"]
            if depth:
                cmd += ["--rq-depth", depth]
            if grid:
                cmd += ["--rq-latent", grid]
            if not args.augment:
                cmd.append("--no-augment")
            if args.amp:
                cmd.append("--amp")
            sh(cmd, log)
        else:
            log.append(f"(reused {d}/metrics.json)")
        out[spec] = json.loads((d / "metrics.json").read_text())
    return out


def codes_per_map(cfg: dict) -> int:
    """Code indices that describe one map (the bits a model spends), from its config."""
    lat = cfg["box"] // 4
    if cfg["arch"] == "vq":
        return lat**3
    if cfg["arch"] == "rq":
        return cfg["rq_depth"] * (lat // 2 if cfg.get("rq_latent", "fine") == "coarse" else lat) ** 3
    n = sum(min(s, lat) ** 3 for s in cfg["fine_scales"])
    if cfg["arch"] == "swan":
        n += sum(min(s, lat // 2) ** 3 for s in cfg["coarse_scales"])
    return n


def embed(args, corpus: Path, log) -> dict:
    d = Path(args.workdir) / "embed"
    if not (d / "embed.json").exists():
        sh([*cryovox(), "embed", Path(args.workdir) / "ae_swan" / "model.pt", corpus, "-o", d, "--split", "test",
            "--neighbors", "5", "--device", args.device, "--force"], log)
    return json.loads((d / "embed.json").read_text())


def generate(args, corpus: Path, log) -> dict:
    import torch

    from cryovox.core.fsc import fsc, fsc_auc
    from cryovox.io.corpus import open_corpus
    from cryovox.io.mrc import read_map, write_map
    from cryovox.pipelines import swan_generate

    work = Path(args.workdir)
    d = work / "diffusion"
    if not (d / "diffusion.pt").exists():
        sh([*cryovox(), "train-swan", corpus, "--stage", "diffusion", "--model", work / "ae_swan" / "model.pt",
            "-o", d, "--epochs", args.diff_epochs, "--batch-size", args.diff_batch_size, "--unet-base", args.unet_base,
            "--device", args.device, "--seed", args.seed, "--force"], log)
    store = open_corpus(corpus)
    test = store.indices("test")
    ids = store.metadata["entry_id"].to_numpy()
    rng = np.random.default_rng(args.seed)
    anchors = rng.choice(test, size=min(args.anchors, len(test)), replace=False)
    own, other = [], []
    gen_dir = work / "generate"
    for k, a in enumerate(anchors):
        path = gen_dir / f"anchor_{k:02d}.mrc"
        write_map(path, store[int(a)], store.apix)
        res = swan_generate.run(swan_model=work / "ae_swan" / "model.pt", diffusion_model=d / "diffusion.pt",
                                anchor=path, n=args.samples, outdir=gen_dir / f"a{k:02d}", guidance=args.guidance,
                                steps=args.steps, device=args.device, seed=args.seed + k)
        if k == 0:
            log.append(f"cryovox generate --swan {work}/ae_swan/model.pt --diffusion {d}/diffusion.pt --anchor {path} "
                       f"-n {args.samples} --guidance {args.guidance} -o {gen_dir}/a00   (per anchor; via "
                       f"cryovox.pipelines.swan_generate.run, steps={args.steps})")
        anchor = torch.from_numpy(store[int(a)]).double()
        others = [r for r in test if ids[r] != ids[a]]
        for p in res.paths:
            s = torch.from_numpy(read_map(p).data).double()
            own.append(fsc_auc(fsc(s, anchor)))
            o = torch.from_numpy(store[int(rng.choice(others))]).double()
            other.append(fsc_auc(fsc(s, o)))
    return {"anchors": len(anchors), "samples_per_anchor": args.samples, "guidance": args.guidance,
            "steps": args.steps, "fsc_auc_anchor": float(np.mean(own)), "fsc_auc_random": float(np.mean(other)),
            "fraction_closer_to_anchor": float(np.mean(np.array(own) > np.array(other)))}


def denoise(args, corpus: Path) -> dict:
    import torch

    from cryovox.io.corpus import open_corpus
    from cryovox.pipelines.swan_denoise import best_bandpass, compare, denoise_tensor
    from cryovox.pipelines.train_swan import load_model
    from cryovox.utils.runtime import resolve_device

    store = open_corpus(corpus)
    rows = store.indices("test")[: args.max_denoise]
    model, _ = load_model(Path(args.workdir) / "ae_swan" / "model.pt", resolve_device(args.device))
    g = torch.Generator().manual_seed(args.seed)
    res = {"swan": [], "bandpass": [], "input": []}
    cut = []
    for r in rows:
        clean = torch.from_numpy(store[int(r)])
        noise = torch.randn(clean.shape, generator=g) * float(clean.var() / args.snr) ** 0.5
        noisy = clean + noise
        y = denoise_tensor(model, noisy[None])[0]
        bp, c = best_bandpass(noisy, clean, store.apix)
        cut.append(c)
        for name, v in (("swan", y), ("bandpass", bp), ("input", noisy)):
            res[name].append(compare(v, clean, store.apix))
    out = {"snr": args.snr, "maps": len(rows), "bandpass_cutoff_A_mean": float(np.mean(cut))}
    for name, lst in res.items():
        out[name] = {k: float(np.mean([m[k] for m in lst])) for k in ("psnr", "fsc_auc", "fsc05_A")}
    out["swan_better_psnr_fraction"] = float(np.mean([a["psnr"] > b["psnr"] for a, b in zip(res["swan"], res["bandpass"])]))
    return out


def throughput(args) -> dict:
    import torch
    import torch.nn.functional as F

    from cryovox.models.swan import build_model
    from cryovox.utils.runtime import resolve_device

    dev = resolve_device(args.device)
    out = {}
    for spec in args.archs:
        arch, depth, grid = (spec.split(":") + ["", ""])[:3]
        kw = {k: v for k, v in (("rq_depth", int(depth) if depth else None), ("rq_latent", grid or None)) if v}
        m = build_model(arch, box=args.box, width=args.width, latent_dim=args.latent_dim,
                        codebook_size=args.codebook_size, **kw).to(dev)
        opt = torch.optim.AdamW(m.parameters(), lr=1e-3)
        x = torch.randn(args.batch_size, 1, args.box, args.box, args.box, device=dev)

        def step():
            with torch.autocast(device_type=dev.type, dtype=torch.bfloat16, enabled=args.amp):
                o = m(x)
                loss = F.mse_loss(o.recon.float(), x) + o.vq_loss
            opt.zero_grad()
            loss.backward()
            opt.step()

        for _ in range(3):
            step()
        if dev.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        for _ in range(args.steps_throughput):
            step()
        if dev.type == "cuda":
            torch.cuda.synchronize()
        out[arch] = args.batch_size * args.steps_throughput / (time.perf_counter() - t)
        print(f"{arch:12s} {out[arch]:8.1f} maps/s  ({args.box}³, batch {args.batch_size}, amp={args.amp}, {dev})")
    return out


def machine() -> str:
    import torch

    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(0)}, torch {torch.__version__}"
    import os

    return f"{platform.processor() or platform.machine()} CPU, {os.cpu_count()} cores, torch {torch.__version__}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", required=True)
    p.add_argument("--corpus", help="use this corpus store instead of building one")
    p.add_argument("--n", type=int, default=220, help="mirror entries (distinct maps)")
    p.add_argument("--mirror-apix", nargs="+", default=["3.0", "3.5"])
    p.add_argument("--box", type=int, default=32)
    p.add_argument("--apix", type=float, default=6.0)
    p.add_argument("--rotations", type=int, default=3)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--archs", nargs="+", default=list(ARCHS), help="archs to train; rq:N[:fine|coarse] = RQ with depth N on that grid")
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--width", type=int, default=16)
    p.add_argument("--latent-dim", type=int, default=16)
    p.add_argument("--codebook-size", type=int, default=512)
    p.add_argument("--augment", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--amp", action="store_true")
    p.add_argument("--device", default="auto")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--diff-epochs", type=int, default=60)
    p.add_argument("--diff-batch-size", type=int, default=16)
    p.add_argument("--unet-base", type=int, default=32)
    p.add_argument("--anchors", type=int, default=10)
    p.add_argument("--samples", type=int, default=4)
    p.add_argument("--guidance", type=float, default=1.0)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--snr", type=float, default=0.5)
    p.add_argument("--max-denoise", type=int, default=200)
    p.add_argument("--skip", nargs="*", default=[], choices=["embed", "generate", "denoise"])
    p.add_argument("--throughput", action="store_true", help="only measure training maps/s")
    p.add_argument("--steps-throughput", type=int, default=20)
    p.add_argument("--no-results", action="store_true", help="do not append to benchmarks/RESULTS.md")
    args = p.parse_args()
    Path(args.workdir).mkdir(parents=True, exist_ok=True)
    stamp = datetime.date.today().isoformat()
    me = "python benchmarks/bench_swan.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    lines = [f"\n## Cryo-SWAN ({stamp}, {machine()})\n", f"`{me}`\n"]
    if args.throughput:
        tp = throughput(args)
        lines.append(f"Training throughput, {args.box}³ maps, batch {args.batch_size}, width {args.width}, "
                     f"bf16 autocast {args.amp}:\n")
        lines.append("| arch | maps/s |\n|---|---|")
        lines += [f"| {a} | {v:.1f} |" for a, v in tp.items()]
    else:
        log: list[str] = []
        t0 = time.time()
        corpus = build_corpus(args, log)
        from cryovox.io.corpus import open_corpus

        store = open_corpus(corpus)
        meta = store.metadata
        n_entries = meta["entry_id"].nunique()
        split_entries = {s: meta.loc[meta["split"] == s, "entry_id"].nunique() for s in ("train", "val", "test")}
        res = train_archs(args, corpus, log)
        lines.append(f"Corpus: {n_entries} distinct maps (entries) × {args.rotations} rotations = {len(store)} samples, "
                     f"{store.box}³ at {store.apix} Å; entries train/val/test {split_entries['train']}/"
                     f"{split_entries['val']}/{split_entries['test']}. Training: {args.epochs} epochs, batch "
                     f"{args.batch_size}, width {args.width}, code length {args.latent_dim}, codebook "
                     f"{args.codebook_size} per level, augmentation {'on' if args.augment else 'off'}, seed {args.seed}.\n")
        lines.append("| arch | params | codes/map | test PSNR (dB) | FSC-0.5 (Å) | FSC-AUC | IoU | F1 | "
                     "codebook usage train (test) | train maps/s |")
        lines.append("|---|---|---|---|---|---|---|---|---|---|")
        for arch, m in res.items():
            if arch.startswith("rq"):
                c = m["config"]
                arch = f"rq (depth {c['rq_depth']}, {c.get('rq_latent', 'fine')} grid)"
            t = m["test"]
            use = ", ".join(f"{c['usage']:.0%}" for c in m["codebook_train"])
            use_t = ", ".join(f"{c['usage']:.0%}" for c in m["codebook_test"])
            lines.append(f"| {arch} | {m['parameters'] / 1e6:.2f} M | {codes_per_map(m['config'])} | "
                         f"{t['psnr']:.2f} | {t['fsc05_A']:.1f} | "
                         f"{t['fsc_auc']:.3f} | {t['iou']:.3f} | {t['f1']:.3f} | {use} ({use_t}) | "
                         f"{m.get('train_maps_per_s') or 0:.1f} |")
            print(lines[-1])
        if "swan" in res:
            ref = {m["index"]: m for m in res["swan"]["per_map"]}
            pairs = []
            for arch, m in res.items():
                if arch == "swan":
                    continue
                other = [x for x in m["per_map"] if x["index"] in ref]
                wins_p = np.mean([ref[x["index"]]["psnr"] > x["psnr"] for x in other])
                wins_a = np.mean([ref[x["index"]]["fsc_auc"] > x["fsc_auc"] for x in other])
                pairs.append(f"{arch}: PSNR {wins_p:.0%}, FSC-AUC {wins_a:.0%}")
            lines.append(f"\nPaired, per test map — SWAN better than " + "; ".join(pairs) + ".")
            print(lines[-1])
        if "embed" not in args.skip:
            e = embed(args, corpus, log)
            lines.append(f"\nembed (swan, test split, {e['n_maps']} maps, {e['dims']}-d pooled latents): "
                         f"nearest-neighbour same-entry hit rate **{e['nn_hit_rate']:.3f}**.")
            print(lines[-1])
        if "generate" not in args.skip:
            g = generate(args, corpus, log)
            lines.append(f"\ngenerate (swan latent DDPM, {g['anchors']} test anchors × {g['samples_per_anchor']} "
                         f"samples, guidance {g['guidance']}, {g['steps']} steps): mean FSC-AUC with the anchor "
                         f"**{g['fsc_auc_anchor']:.3f}** vs with a random other test map **{g['fsc_auc_random']:.3f}** "
                         f"(sample closer to its anchor in {g['fraction_closer_to_anchor']:.0%} of pairs).")
            print(lines[-1])
        if "denoise" not in args.skip:
            d = denoise(args, corpus)
            lines.append(f"\ndenoise at SNR {d['snr']} ({d['maps']} test maps): PSNR input {d['input']['psnr']:.2f}, "
                         f"band-pass (oracle cut-off, mean {d['bandpass_cutoff_A_mean']:.1f} Å) "
                         f"{d['bandpass']['psnr']:.2f}, SWAN **{d['swan']['psnr']:.2f}** dB "
                         f"(SWAN better on {d['swan_better_psnr_fraction']:.0%} of maps); FSC-AUC input "
                         f"{d['input']['fsc_auc']:.3f}, band-pass {d['bandpass']['fsc_auc']:.3f}, SWAN "
                         f"{d['swan']['fsc_auc']:.3f}.")
            print(lines[-1])
        lines.append(f"\nWall time {(time.time() - t0) / 60:.0f} min. Commands:\n")
        lines += ["    " + c for c in log]
    text = "\n".join(lines) + "\n"
    print(text)
    if not args.no_results:
        with open(ROOT / "benchmarks" / "RESULTS.md", "a") as f:
            f.write(text)


if __name__ == "__main__":
    main()

#!/usr/bin/env python
"""``cryovox curate`` throughput: entries per second at --workers 1 and 2 on 200-px input maps.

Builds a mirror of ``--entries`` EMDB-style entries (EMD-N/header|map/ tree, ``.map.gz``):
assemblies from ``examples/make_mirror.py`` (1.6–2.4 Å/px) zero-padded to ``--size``³ voxels
as EMDB maps are (solvent around the particle), then runs ``cryovox curate`` on it in a
fresh output folder for each worker count and reports wall time, entries/s, samples/s and
CPU seconds per entry (user + system of the command and its workers; the CPU figure is the
one to compare on a shared, loaded machine).
The stores of all runs are checked to be byte-identical (worker-count independence).

Example: python benchmarks/bench_curate.py --entries 16 --size 200 --workers 1 2
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path


ROOT = Path(__file__).resolve().parent.parent


def _make_mirror_module():
    name = "cryovox_examples_make_mirror"
    spec = importlib.util.spec_from_file_location(name, ROOT / "examples" / "make_mirror.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


def build_mirror(out: Path, entries: int, size: int, seed: int) -> list[dict]:
    """``entries`` entries of ``size``³ voxels (assemblies padded with zeros about the centre)."""
    import torch

    from cryovox.core.transform import center_crop_pad
    from cryovox.io.emdb import header_xml
    from cryovox.io.mrc import write_map

    mm = _make_mirror_module()
    torch.set_num_threads(1)
    models = mm.find_models()
    specs = mm.plan(entries, False, seed, models, first_id=20001, max_kda=1000)
    cache = mm.MonomerCache()
    made = []
    for spec in specs:
        data, facts = mm.build_entry(spec, cache)
        data = center_crop_pad(torch.from_numpy(data), size).numpy()
        num = int(spec.entry_id.split("-")[1])
        d = out / spec.entry_id
        (d / "header").mkdir(parents=True)
        (d / "map").mkdir()
        (d / "header" / f"emd-{num}-v30.xml").write_text(
            header_xml(spec.entry_id, dims=(size, size, size), map_file=f"emd_{num}.map.gz", **facts), encoding="utf-8")
        write_map(d / "map" / f"emd_{num}.map.gz", data, spec.apix)
        made.append({"id": spec.entry_id, "apix": spec.apix, "mass": facts["mw_kda"]})
    return made


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--entries", type=int, default=16)
    ap.add_argument("--size", type=int, default=200, help="input map edge (voxels)")
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--apix", type=float, default=4.0)
    ap.add_argument("--box", type=int, default=64)
    ap.add_argument("--rotations", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--keep", type=Path, default=None, help="keep the mirror and stores here")
    args = ap.parse_args(argv)

    from cryovox.io.corpus import file_sha256

    work = Path(tempfile.mkdtemp(prefix="bench_curate_")) if args.keep is None else args.keep
    work.mkdir(parents=True, exist_ok=True)
    mirror = work / "mirror"
    if not mirror.exists():
        t0 = time.perf_counter()
        made = build_mirror(mirror, args.entries, args.size, args.seed)
        print(f"mirror: {len(made)} entries, {args.size}³ voxels at {sorted({m['apix'] for m in made})} Å/px, "
              f"{min(m['mass'] for m in made):.0f}–{max(m['mass'] for m in made):.0f} kDa "
              f"(built in {time.perf_counter() - t0:.0f} s)")
    exe = [sys.executable, "-m", "cryovox"]
    load0 = os.getloadavg()[0]
    results = []
    for w in args.workers:
        out = work / f"corpus_w{w}"
        shutil.rmtree(out, ignore_errors=True)
        cmd = exe + ["curate", str(mirror), "-o", str(out), "--apix", str(args.apix), "--box", str(args.box),
                     "--rotations", str(args.rotations), "--workers", str(w), "--seed", str(args.seed)]
        r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True)
        secs = time.perf_counter() - t0
        r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = (r1.ru_utime + r1.ru_stime) - (r0.ru_utime + r0.ru_stime)  # all waited-for descendants
        if proc.returncode != 0:
            print(proc.stderr[-2000:])
            return 1
        import json

        info = json.loads((out / "corpus.json").read_text())
        results.append((w, secs, info["n_entries"], info["n_samples"], file_sha256(out / "volumes.npy"), cpu))
    print(f"\ncryovox curate, {args.entries} entries of {args.size}³ → box {args.box} at {args.apix:g} Å/px, "
          f"{args.rotations} rotations; {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs")
    print(f"load average before the runs: {load0:.1f} (on {os.cpu_count()} CPUs)")
    print(f"{'workers':>8} {'wall s':>8} {'entries/s':>10} {'samples/s':>10} {'CPU s/entry':>12}")
    for w, secs, n_e, n_s, _, cpu in results:
        print(f"{w:>8} {secs:>8.1f} {n_e / secs:>10.2f} {n_s / secs:>10.2f} {cpu / max(n_e, 1):>12.2f}")
    if len(results) > 1:
        base = results[0][1]
        for w, secs, *_ in results[1:]:
            print(f"speed-up workers {w} vs {results[0][0]}: {base / secs:.2f}×")
        same = len({r[4] for r in results}) == 1
        print(f"stores byte-identical across worker counts: {same}")
    if args.keep is None:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

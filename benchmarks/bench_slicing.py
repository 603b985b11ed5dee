"""Throughput of Fourier-slice projection: compiled kernels vs the pure-PyTorch reference
(vs torch-fourier-slice when its venv exists), side by side in one run.

    python benchmarks/bench_slicing.py               # K in {1, 16}, box in {64, 128, 256}, B = 256
    python benchmarks/bench_slicing.py --quick       # box 32/64, B = 64: a smoke run
    python benchmarks/bench_slicing.py --setup-tfs   # make benchmarks/_venvs/tfs (pip, PyPI) and exit

What is timed (complex64 volumes, pad 1, radius D/2, random poses, on the tensors' device):
  fwd      project(basis (K, D, D, D/2+1), coeffs (B, K), rot (B, 3, 3)) -> (B, D, D/2+1)
  fwd+bwd  the same plus backward for basis, coeffs and rotations
Throughput is slices/s = B / time. "Effective GB/s" counts the bytes the algorithm must move
if nothing were cached, the same model for every implementation (cs = 8 bytes per complex64,
N = in-radius pixels per image): fwd = B·N·cs·(8K + 1) (8 trilinear corners × K volumes read,
one pixel written); fwd+bwd = fwd + B·N·cs·(8K + 2·8K + 1) (corner reads for the coeffs/rotation
gradients, read-modify-write of the scattered basis gradient, the output gradient read).
Ratios are other time / kernel time measured in the same run. The kernels get their preferred
basis layout (a (K, ...) view of a voxel-major (D, D, D/2+1, K) tensor: no transpose per call);
the reference and torch-fourier-slice get the plain (K, D, D, D/2+1) tensor. Where the reference would need
more than --ref-mem-gb of memory (its autograd keeps the gathered corners), it is measured on a
smaller batch and scaled per slice (marked '*').

torch-fourier-slice runs in benchmarks/_venvs/tfs (never in the project venv), in a subprocess
with the same sizes; K > 1 uses its multichannel extraction followed by the coefficient sum.
Its backward computes the same set of gradients as the kernels' (basis, coeffs and rotations:
the rotations reach grid_sample's sampling grid, whose gradient it returns), so fwd+bwd compares
like with like.
The column is skipped when that venv is absent.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
TFS_VENV = HERE / "_venvs" / "tfs"
TFS_PY = TFS_VENV / "bin" / "python"


# ---------------------------------------------------------------------------------- helpers
CLOCK = time.perf_counter  # --clock cpu: time.process_time (CPU seconds of all threads)
DEVICE = "cpu"


def _sync() -> None:
    if DEVICE.startswith("cuda"):
        import torch

        torch.cuda.synchronize(DEVICE)


def _time(fn, repeat: int, warmup: bool = True) -> float:
    """Best time of ``repeat`` calls (seconds)."""
    if warmup:
        fn()
        _sync()
    best = float("inf")
    for _ in range(repeat):
        t0 = CLOCK()
        fn()
        _sync()
        best = min(best, CLOCK() - t0)
    return best


def _pixels(box: int) -> int:
    half = box // 2 + 1
    return sum(1 for iy in range(box) for kx in range(half) if kx * kx + (iy - box // 2) ** 2 <= (box / 2) ** 2)


def _bytes(box: int, K: int, B: int, backward: bool) -> float:
    N, cs = _pixels(box), 8
    fwd = B * N * cs * (8 * K + 1)
    return fwd + (B * N * cs * (8 * K + 2 * 8 * K + 1) if backward else 0)


def _data(box: int, K: int, B: int, seed: int = 0, voxel_major: bool = False):
    import torch

    g = torch.Generator().manual_seed(seed)
    if voxel_major:  # the kernels' preferred layout: a (K, ...) view of a (D, D, D/2+1, K) tensor
        basis = torch.randn(box, box, box // 2 + 1, K, dtype=torch.complex64, generator=g).permute(3, 0, 1, 2)
    else:
        basis = torch.randn(K, box, box, box // 2 + 1, dtype=torch.complex64, generator=g)
    basis = basis.to(DEVICE)
    coeffs = torch.randn(B, K, generator=g).to(DEVICE)
    q = torch.randn(B, 4, generator=g).to(DEVICE)
    q = q / q.norm(dim=1, keepdim=True)
    w, x, y, z = q.unbind(1)
    rot = torch.stack([
        torch.stack([1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)], -1),
        torch.stack([2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)], -1),
        torch.stack([2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)], -1)], -2)
    return basis, coeffs, rot


def _measure(project, box: int, K: int, B: int, repeat: int, warmup: bool,
             voxel_major: bool = False) -> tuple[float, float]:
    """(fwd seconds, fwd+bwd seconds) of ``project(basis, coeffs, rot)``."""
    import torch

    basis, coeffs, rot = _data(box, K, B, voxel_major=voxel_major)
    with torch.no_grad():
        t_fwd = _time(lambda: project(basis, coeffs, rot), repeat, warmup)
    basis.requires_grad_(True)
    coeffs.requires_grad_(True)
    rot.requires_grad_(True)

    def fwd_bwd():
        out = project(basis, coeffs, rot)
        torch.autograd.grad(out, (basis, coeffs, rot), torch.ones_like(out))

    return t_fwd, _time(fwd_bwd, repeat, warmup)


# ---------------------------------------------------------------------------------- torch-fourier-slice worker
def _tfs_worker(spec: str) -> None:
    """Runs inside benchmarks/_venvs/tfs: prints JSON {fwd, fwdbwd} seconds or {error}."""
    import torch
    from torch_fourier_slice import extract_central_slices_rfft_3d, extract_central_slices_rfft_3d_multichannel

    global CLOCK, DEVICE
    a = json.loads(spec)
    CLOCK = time.process_time if a.get("clock") == "cpu" else time.perf_counter
    DEVICE = a.get("device", "cpu")
    if a.get("threads"):
        torch.set_num_threads(a["threads"])

    def project(basis, coeffs, rot):
        if basis.shape[0] == 1:
            return coeffs[:, 0, None, None] * extract_central_slices_rfft_3d(basis[0], rot, fftfreq_max=0.5)
        s = extract_central_slices_rfft_3d_multichannel(basis, rot, fftfreq_max=0.5)  # (B, K, h, w)
        return torch.einsum("bkhw,bk->bhw", s, coeffs.to(s.dtype))

    try:
        fwd, both = _measure(project, a["box"], a["K"], a["B"], a["repeat"], a["warmup"])
        print(json.dumps({"fwd": fwd, "fwdbwd": both}))
    except Exception as exc:  # report, never crash the main run
        print(json.dumps({"error": f"{type(exc).__name__}: {exc}"[:300]}))


def _run_tfs(box, K, B, repeat, warmup, threads) -> dict | None:
    if not TFS_PY.exists():
        return None
    spec = json.dumps({"box": box, "K": K, "B": B, "repeat": repeat, "warmup": warmup, "threads": threads,
                       "clock": "cpu" if CLOCK is time.process_time else "wall", "device": DEVICE})
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    res = subprocess.run([str(TFS_PY), str(Path(__file__).resolve()), "--tfs-worker", spec],
                         capture_output=True, text=True, env=env)
    try:
        return json.loads(res.stdout.strip().splitlines()[-1])
    except (IndexError, json.JSONDecodeError):
        return {"error": (res.stderr or res.stdout).strip()[-300:]}


def setup_tfs() -> int:
    """Create benchmarks/_venvs/tfs: torch-fourier-slice on top of this venv's torch (not copied)."""
    import sysconfig

    TFS_VENV.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(TFS_VENV)], check=True)
    subprocess.run([sys.executable, "-m", "venv", "--upgrade-deps", str(TFS_VENV)], check=False)
    site = subprocess.run([str(TFS_PY), "-c", "import site; print(site.getsitepackages()[0])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    # this venv's packages (torch, numpy...) appended after the tfs venv's own; cryovox stays
    # invisible there (its editable finder is a .pth, not processed on an appended path)
    Path(site, "zz_project_packages.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    # torch-ctf is imported by torch-fourier-slice 0.6 without being declared
    pkgs = ["torch-fourier-slice", "torch-grid-utils", "torch-image-interpolation", "torch-ctf", "einops"]
    cmd = [str(TFS_PY), "-m", "pip", "install", "-q", "--no-deps", "--ignore-installed", *pkgs]
    print("+", " ".join(cmd))
    return subprocess.run(cmd).returncode


# ---------------------------------------------------------------------------------- main
def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="small settings (box 32, 64; B 64)")
    p.add_argument("--boxes", type=int, nargs="+")
    p.add_argument("--ks", type=int, nargs="+")
    p.add_argument("--batch", type=int)
    p.add_argument("--repeat", type=int, default=3, help="timed calls per measurement (best is kept)")
    p.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    p.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                   help="wall time, or CPU time of the process (less sensitive to a busy machine)")
    p.add_argument("--device", default="cpu", help="cpu or cuda[:N] (kernels, reference and tfs alike)")
    p.add_argument("--peak-gbs", type=float,
                   help="memory bandwidth of the device in GB/s: adds the kernel's %% of this roofline")
    p.add_argument("--ref-mem-gb", type=float, default=3.0, help="memory cap for the reference's batch")
    p.add_argument("--no-reference", action="store_true")
    p.add_argument("--no-tfs", action="store_true")
    p.add_argument("--setup-tfs", action="store_true", help="create benchmarks/_venvs/tfs and exit")
    p.add_argument("--tfs-worker", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.tfs_worker:
        _tfs_worker(a.tfs_worker)
        return 0
    if a.setup_tfs:
        return setup_tfs()

    import torch

    from cryovox.core import _ext
    from cryovox.core._slicing_ref import project_ref

    global CLOCK, DEVICE
    CLOCK = time.process_time if a.clock == "cpu" else time.perf_counter
    DEVICE = a.device
    boxes = a.boxes or ([32, 64] if a.quick else [64, 128, 256])
    ks = a.ks or [1, 16]
    B = a.batch or (64 if a.quick else 256)
    if a.threads:
        torch.set_num_threads(a.threads)
    if not _ext.available(DEVICE):
        print(f"compiled kernels for {DEVICE} not built (pip install --no-build-isolation -e .)")
        return 1
    cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")),
               platform.processor()) if Path("/proc/cpuinfo").exists() else platform.processor()
    print(f"# {time.strftime('%Y-%m-%d %H:%M')}  {cpu}  cores={os.cpu_count()}  torch threads="
          f"{torch.get_num_threads()}  torch {torch.__version__}  load avg {os.getloadavg()[0]:.1f}")
    if DEVICE.startswith("cuda"):
        print(f"# device {torch.cuda.get_device_name(DEVICE)}")
    print(f"# B={B}, complex64, pad 1, radius D/2, {a.clock} clock; slices/s (effective GB/s); "
          "ratio = kernel speed-up; backward = grads of basis, coeffs and rotations")
    tfs_ok = TFS_PY.exists() and not a.no_tfs
    if not tfs_ok and not a.no_tfs:
        print(f"# torch-fourier-slice column skipped: {TFS_VENV} absent (make it with --setup-tfs)")

    def kernel(basis, coeffs, rot):
        return _ext.project(basis, coeffs, None, rot, basis.shape[-3] / 2, 1)

    def reference(basis, coeffs, rot):
        return project_ref(basis, coeffs, None, rot, basis.shape[-3] / 2, 1)

    head = f"{'box':>4} {'K':>3} {'pass':>8} | {'kernel':>20} | {'reference':>21} {'ratio':>7}"
    if tfs_ok:
        head += f" | {'torch-fourier-slice':>21} {'ratio':>7}"
    print(head)
    for box in boxes:
        for K in ks:
            tk = _measure(kernel, box, K, B, a.repeat, True, voxel_major=True)
            tr = None
            rb = B
            if not a.no_reference:
                # the reference's autograd keeps (K, B, N, 8) gathered corners + (B, N, 8) indices
                per_image = _pixels(box) * 8 * (K * 8 + 8 + 8 + 8) * 2
                rb = max(1, min(B, int(a.ref_mem_gb * 2**30 // per_image)))
                slow = box >= 128
                t = _measure(reference, box, K, rb, 1 if slow else a.repeat, not slow)
                tr = tuple(x * B / rb for x in t)
            tt = None
            if tfs_ok:
                slow = box >= 128
                tt = _run_tfs(box, K, B, 1 if slow else a.repeat, not slow, a.threads or torch.get_num_threads())
            for i, name in enumerate(("fwd", "fwd+bwd")):
                nbytes = _bytes(box, K, B, backward=i == 1)

                def cell(t):
                    return f"{B / t:10.1f} ({nbytes / t / 1e9:6.2f})"

                line = f"{box:>4} {K:>3} {name:>8} | {cell(tk[i])} |"
                if a.peak_gbs:
                    line = line[:-1] + f"{100 * nbytes / tk[i] / 1e9 / a.peak_gbs:5.1f}% of peak |"
                if tr is not None:
                    line += f" {cell(tr[i])}{'*' if rb < B else ' '} {tr[i] / tk[i]:6.1f}x"
                else:
                    line += f" {'-':>21} {'-':>7}"
                if tfs_ok:
                    if tt and "error" not in tt:
                        t = tt["fwd" if i == 0 else "fwdbwd"]
                        line += f" | {cell(t)}  {t / tk[i]:6.1f}x"
                    else:
                        line += f" | failed: {(tt or {}).get('error', '?')[:60]}"
                print(line, flush=True)
    print(f"# load avg at end {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

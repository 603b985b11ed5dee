"""Small heterogeneous particle sets for the train-hetero / analyze / eval-vol tests.

Two states of a blob model (a core, a side lobe, and an extra domain present only in state 1),
written as MRC maps and turned into particles by ``cryovox simulate particles`` (random poses,
CTF, small shifts, white noise at the given SNR).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def blob_states(box: int) -> list[np.ndarray]:
    """Two ``(D, D, D)`` float32 maps ``[z, y, x]``: state 0 and state 0 plus an extra domain."""
    k = np.arange(box) - box // 2
    Z, Y, X = np.meshgrid(k, k, k, indexing="ij")

    def blob(c, s):
        return np.exp(-((X - c[0]) ** 2 + (Y - c[1]) ** 2 + (Z - c[2]) ** 2) / (2 * s * s))

    base = blob((0, 0, 0), box / 10) + 0.7 * blob((box / 6, 0, 0), box / 14)
    extra = blob((-box / 6, -box / 8, box / 10), box / 12)
    return [base.astype(np.float32), (base + extra).astype(np.float32)]


def make_two_state_set(root: Path, *, box: int = 24, n: int = 300, snr: float = 0.3, seed: int = 0,
                       apix: float = 3.0) -> dict:
    """Write maps and simulated particles under ``root``; returns paths, states and maps."""
    from cryovox.io.mrc import write_map
    from cryovox.pipelines.simulate import simulate_particles

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    vols = blob_states(box)
    maps = []
    for i, v in enumerate(vols):
        maps.append(write_map(root / f"state{i}.mrc", v, apix))
    sim = simulate_particles(maps, root / "sim", n=n, snr=snr, shift=1.5, seed=seed, defocus=(10000.0, 25000.0))
    return {"star": sim.files["star"], "states": np.load(sim.files["states_npy"]), "maps": maps, "vols": vols,
            "apix": apix, "box": box}

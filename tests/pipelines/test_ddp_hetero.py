"""train-hetero under DDP: two gloo processes on the CPU hold identical weights after training steps."""

from __future__ import annotations

import pickle
import socket

import numpy as np
import torch

from tests.models.hetero_data import make_two_state_set


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, star: str, outdir: str, dumps: str) -> None:
    import os

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    from cryovox.pipelines.train_hetero import train_hetero

    result = train_hetero(star, outdir, zdim=2, epochs=1, model_options={"n_basis": 3}, batch_size=8,
                          device="cpu", seed=0)
    torch.save(result.model.state_dict(), f"{dumps}/rank{rank}.pt")


def test_two_gloo_processes_hold_identical_weights(tmp_path):
    import torch.multiprocessing as mp

    data = make_two_state_set(tmp_path / "data", box=16, n=40, snr=0.5)
    out = tmp_path / "run"
    mp.spawn(_worker, args=(2, _free_port(), str(data["star"]), str(out), str(tmp_path)), nprocs=2, join=True)
    w0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    w1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    assert w0.keys() == w1.keys()
    for k in w0:
        assert torch.equal(w0[k], w1[k]), k
    saved = torch.load(out / "weights.1.pt", weights_only=True)
    assert saved["train"]["world_size"] == 2
    for k in w0:
        assert torch.equal(saved["model"][k], w0[k]), k
    # 40 particles, batch 8 per process: 3 steps each; the weights moved from their start
    assert saved["optimizer"]["state"][0]["step"].item() == 3
    z = pickle.load(open(out / "z.1.pkl", "rb"))
    assert z.shape == (40, 2)
    assert np.all(np.abs(z).sum(1) > 0)  # every particle's mean came back from one of the two processes

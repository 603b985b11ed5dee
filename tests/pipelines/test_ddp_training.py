"""train-swan and train-flow under DDP: two gloo processes on the CPU end with identical weights (and,
for SWAN, identical codebooks after the rank-0 dead-code re-initialisation), and the run is written once."""

from __future__ import annotations

import csv
import socket

import pytest
import torch

from tests.synthetic import blob_corpus

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, job: str, corpus: str, outdir: str, dumps: str) -> None:
    import os

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    import cryovox.utils.distributed as dist_utils

    held = {}
    wrap = dist_utils.wrap_model

    def keep(model, ctx):            # the pipelines import wrap_model at call time: keep the bare model
        held["model"] = model
        return wrap(model, ctx)

    dist_utils.wrap_model = keep
    if job == "swan":
        from cryovox.pipelines.train_swan import run

        run(corpus, outdir, arch="swan", epochs=2, batch_size=2, width=8, latent_dim=4, codebook_size=16,
            device="cpu", seed=0, progress=False)
    else:
        from cryovox.pipelines.train_flow import run

        run(corpus, outdir, arch="unet", preset="tiny", epochs=2, batch_size=2, lr=2e-3, warmup=1, device="cpu",
            seed=0)
    torch.save(held["model"].state_dict(), f"{dumps}/rank{rank}.pt")


@pytest.mark.parametrize("job", ["swan", "flow"])
def test_two_gloo_processes_hold_identical_weights(tmp_path, job):
    import torch.multiprocessing as mp

    blob_corpus(tmp_path / "corpus", n=12, D=16)
    out = tmp_path / "run"
    mp.spawn(_worker, args=(2, _free_port(), job, str(tmp_path / "corpus"), str(out), str(tmp_path)), nprocs=2,
             join=True)
    w0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    w1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    assert w0.keys() == w1.keys()
    for k in w0:
        assert torch.equal(w0[k], w1[k]), k
    if job == "swan":
        # 8 train maps, 2 processes, batch 2: 2 steps per epoch on each; the history counts every map once
        rows = list(csv.DictReader(open(out / "history.csv")))
        assert [int(r["epoch"]) for r in rows] == [1, 2]
        saved = torch.load(out / "weights.2.pt", weights_only=True)
        assert saved["optimizer"]["state"][0]["step"].item() == 4
        codebooks = [k for k in w0 if "codebook" in k]
        assert codebooks and all(torch.equal(saved["model"][k], w0[k]) for k in codebooks)
    else:
        rows = list(csv.DictReader(open(out / "metrics.csv")))
        assert [int(r["epoch"]) for r in rows] == [1, 2]
        assert int(rows[-1]["step"]) == 4          # 8 train maps / (2 processes × batch 2) per epoch

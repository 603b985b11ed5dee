"""train-hetero --model cryoformer end to end on a tiny two-state set: the loss falls, refined poses are
written as RELION 3.1 STAR files, eval-vol decodes maps and attention maps, resumption is bit for bit,
bad options are one line and exit code 2."""

from __future__ import annotations

import pickle

import mrcfile
import numpy as np
import pytest
import torch

from cryovox.cli import main
from cryovox.core.rotations import geodesic_distance
from cryovox.io.checkpoint import load_checkpoint, save_checkpoint
from cryovox.io.particles import read_particles
from tests.models.hetero_data import make_two_state_set

EPOCHS = 3
TRAIN = ["--model", "cryoformer", "--zdim", "2", "--batch-size", "32", "--queries", "8", "--pose-pretrain-epochs", "1",
         "--device", "cpu", "--seed", "0"]
TINY = dict(channels=16, n_queries=8, blocks=1, heads=2, n_tokens=2, levels=4, log2_table=10, base_resolution=4,
            enc_width=32, enc_layers=1, init_steps=20, init_points=512)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_two_state_set(tmp_path_factory.mktemp("cf_data"), box=16, n=96, snr=0.5)


@pytest.fixture(scope="module")
def trained(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("cf_train") / "run"
    assert main(["train-hetero", str(data["star"]), "-o", str(out), "-n", str(EPOCHS), *TRAIN]) == 0
    return out


def test_training_writes_checkpoints_latents_and_refined_poses(trained, data):
    states = [load_checkpoint(trained / f"weights.{e}.pt", kind="cryoformer") for e in range(1, EPOCHS + 1)]
    assert states[0]["config"]["n_queries"] == 8 and states[0]["config"]["n_particles"] == 96
    nll = [s["loss"][1] for s in states]
    assert all(np.isfinite(nll)) and nll[-1] < nll[0], nll            # image loss per particle falls
    z = pickle.load(open(trained / f"z.{EPOCHS}.pkl", "rb"))
    assert isinstance(z, np.ndarray) and z.dtype == np.float32 and z.shape == (96, 2)
    # epoch 1 pre-trains the orientation encoder on the input poses: no refined poses yet
    assert not (trained / "particles.1.star").exists()
    given = read_particles(data["star"])
    for e in (2, 3):
        refined = read_particles(trained / f"particles.{e}.star")
        assert refined.image_index.tolist() == given.image_index.tolist()
        assert np.allclose(refined.ctf["defocus_u"], given.ctf["defocus_u"])
        moved = geodesic_distance(torch.from_numpy(refined.rotations), torch.from_numpy(given.rotations))
        assert 0.0 < float(moved.mean()) < 5.0                         # refined near the input poses
        dshift = np.linalg.norm(refined.shifts - given.shifts, axis=1) / data["apix"]    # px
        assert float(dshift.mean()) < 1.0, dshift.mean()                  # the 1 px shift prior holds them
    log = (trained / "run.log").read_text()
    assert "refined poses in particles.3.star" in log


def test_eval_vol_maps_and_attention_maps(trained, data, tmp_path):
    out = tmp_path / "maps"
    q = [str(i) for i in range(8)]
    args = ["eval-vol", str(trained), "-z", "0,0", "-z", "1,-1", "-o", str(out)]
    assert main(args + sum((["--attention-map", i] for i in q), [])) == 0
    for i in range(2):
        with mrcfile.open(out / f"vol_{i:03d}.mrc") as m:
            assert m.data.shape == (16, 16, 16) and float(m.voxel_size.x) == pytest.approx(data["apix"])
        total = np.zeros((16, 16, 16))
        for j in range(8):
            with mrcfile.open(out / f"vol_{i:03d}_attn_q{j:02d}.mrc") as m:
                assert float(m.voxel_size.x) == pytest.approx(data["apix"])
                assert m.data.min() >= 0.0 and m.data.max() <= 1.0
                total += m.data
        k = np.arange(16) - 8
        inside = (k[:, None, None] ** 2 + k[None, :, None] ** 2 + k[None, None, :] ** 2) < 64
        assert np.allclose(total[inside], 1.0, atol=1e-4) and np.all(total[~inside] == 0)   # softmax over queries


def test_resume_continues_bit_for_bit(tmp_path):
    from cryovox.pipelines.train_hetero import train_hetero

    small = make_two_state_set(tmp_path / "data", box=12, n=40, snr=0.5)
    opts = dict(zdim=2, model="cryoformer", batch_size=16, device="cpu", seed=0)
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    train_hetero(small["star"], straight, epochs=3, model_options=dict(TINY, pose_pretrain_epochs=1), **opts)
    train_hetero(small["star"], resumed, epochs=2, model_options=dict(TINY, pose_pretrain_epochs=1), **opts)
    train_hetero(small["star"], resumed, epochs=3, resume=True, **opts)
    a = torch.load(straight / "weights.3.pt", weights_only=True)
    b = torch.load(resumed / "weights.3.pt", weights_only=True)
    assert a["model"].keys() == b["model"].keys()
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    np.testing.assert_array_equal(pickle.load(open(straight / "z.3.pkl", "rb")),
                                  pickle.load(open(resumed / "z.3.pkl", "rb")))
    assert (straight / "particles.3.star").read_text() == (resumed / "particles.3.star").read_text()


def _one_line_error(res) -> None:
    assert res.code == 2, res
    assert res.err.strip() and res.err.strip().count("\n") == 0, res.err


@pytest.mark.parametrize("bad, message", [(["--pose-pretrain-epochs", "-1"], "--pose-pretrain-epochs -1"),
                                          (["--projection", "ray"], "--projection ray"),
                                          (["--queries", "0"], "--queries 0"),
                                          (["--pose-search-move", "max"], "--pose-search-move max")])
def test_bad_cryoformer_options_are_refused(cli, data, tmp_path, bad, message):
    res = cli("train-hetero", data["star"], "-o", tmp_path / "out", "-n", "1", "--model", "cryoformer", *bad)
    _one_line_error(res)
    assert message in res.err
    assert not (tmp_path / "out").exists()


def test_attention_maps_of_an_sfbp_run_are_refused(cli, tmp_path):
    from cryovox.models.hetero import SFBPModel

    run = tmp_path / "sfbp"
    run.mkdir()
    model = SFBPModel(box=12, apix=2.0, zdim=2, n_basis=2)
    save_checkpoint(run / "weights.1.pt", {"model": model.state_dict(), "config": model.config(), "epoch": 1},
                    kind="sfbp")
    pickle.dump(np.zeros((4, 2), np.float32), open(run / "z.1.pkl", "wb"))
    res = cli("eval-vol", run, "-z", "0,0", "-o", tmp_path / "v", "--attention-map", "0")
    _one_line_error(res)
    assert "attention maps need a cryoformer model" in res.err
    assert not (tmp_path / "v").exists()


def _ddp_worker(rank: int, world: int, port: int, port2: int, star: str, outdir: str, dumps: str) -> None:
    import os

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    import torch.distributed as tdist

    from cryovox.pipelines.train_hetero import train_hetero

    result = train_hetero(star, outdir, zdim=2, epochs=2, model="cryoformer", batch_size=8, device="cpu", seed=0,
                          model_options=dict(TINY, pose_pretrain_epochs=1), init="none")
    # train_hetero shut its group down: exchange as a next epoch would, in a new group on a fresh port (a
    # second rendezvous on the first group's port can pair the ranks with the torn-down store and hang)
    os.environ["MASTER_PORT"] = str(port2)
    tdist.init_process_group("gloo")
    result.model.start_epoch(2)
    torch.save({"delta": result.model.pose_delta, "dshift": result.model.pose_dshift}, f"{dumps}/rank{rank}.pt")
    tdist.destroy_process_group()


def test_two_gloo_processes_share_the_searched_poses(tmp_path):
    """Under DDP each process searches its own particles; at the next epoch's start the processes exchange
    the estimates: both then hold every particle's pose as written to particles.2.star (gathered by rank 0)."""
    import socket

    import torch.multiprocessing as mp

    small = make_two_state_set(tmp_path / "data", box=12, n=24, snr=0.5)
    with socket.socket() as s, socket.socket() as s2:
        s.bind(("127.0.0.1", 0))
        s2.bind(("127.0.0.1", 0))
        port, port2 = s.getsockname()[1], s2.getsockname()[1]
    out = tmp_path / "run"
    mp.spawn(_ddp_worker, args=(2, port, port2, str(small["star"]), str(out), str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert torch.allclose(r0["delta"], r1["delta"], atol=1e-12) and torch.allclose(r0["dshift"], r1["dshift"])
    given, refined = read_particles(small["star"]), read_particles(out / "particles.2.star")
    kept = r0["delta"] @ torch.from_numpy(given.rotations)
    assert float(geodesic_distance(kept, torch.from_numpy(refined.rotations)).max()) < 1e-3
    assert float(geodesic_distance(kept, torch.from_numpy(given.rotations)).mean()) > 0.0     # the search moved them

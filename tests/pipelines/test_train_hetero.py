"""train-hetero end to end on a small two-state set: the loss falls, the latent separates the states,
resumption is bit for bit, bad input is one line and exit code 2."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from cryovox.cli import main
from cryovox.io.checkpoint import load_checkpoint, save_checkpoint
from cryovox.io.particles import ParticleTable, read_particles, write_star
from tests.models.hetero_data import make_two_state_set

EPOCHS = 8
TRAIN = ["--zdim", "2", "--batch-size", "32", "--basis", "4", "--device", "cpu", "--seed", "0"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_two_state_set(tmp_path_factory.mktemp("hetero_data"), box=24, n=300, snr=0.3)


@pytest.fixture(scope="module")
def trained(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("hetero_train") / "run"
    assert main(["train-hetero", str(data["star"]), "-o", str(out), "-n", str(EPOCHS), *TRAIN]) == 0
    return out


def _kmeans_agreement(z: np.ndarray, states: np.ndarray) -> float:
    from sklearn.cluster import KMeans

    labels = KMeans(n_clusters=2, n_init=10, random_state=0).fit(z).labels_
    agree = float((labels == states).mean())
    return max(agree, 1.0 - agree)


def test_loss_falls_and_latent_separates_the_states(trained, data):
    # [total, nll, kl] per particle; the KL weight rises over the first epochs, the data term is comparable
    losses = np.array([load_checkpoint(trained / f"weights.{e}.pt", kind="sfbp")["loss"] for e in range(1, EPOCHS + 1)])
    assert losses[-1, 0] < losses[0, 0] - 2.0, losses     # nats per particle
    assert losses[-1, 1] < losses[0, 1] - 2.0, losses
    assert losses[-1, 1] < losses[:3, 1].min(), losses
    z = pickle.load(open(trained / f"z.{EPOCHS}.pkl", "rb"))
    assert isinstance(z, np.ndarray) and z.dtype == np.float32 and z.shape == (300, 2)
    np.testing.assert_array_equal(np.load(trained / f"z.{EPOCHS}.npz")["z"], z)
    assert _kmeans_agreement(z, data["states"]) >= 0.9
    z0 = pickle.load(open(trained / "z.1.pkl", "rb"))
    assert _kmeans_agreement(z0, data["states"]) < _kmeans_agreement(z, data["states"])


def test_checkpoint_describes_the_run(trained, data):
    state = load_checkpoint(trained / "weights.1.pt", kind="sfbp")
    assert state["epoch"] == 1 and state["config"]["zdim"] == 2 and state["config"]["box"] == 24
    assert state["train"]["n_particles"] == 300
    assert read_particles(state["train"]["particles"]).image_index.tolist() == list(range(300))
    log = (trained / "run.log").read_text()
    assert f"epoch {EPOCHS}/{EPOCHS}: loss" in log


def test_resume_continues_bit_for_bit(tmp_path):
    small = make_two_state_set(tmp_path / "data", box=16, n=64, snr=0.5)
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    star = str(small["star"])
    assert main(["train-hetero", star, "-o", str(straight), "-n", "2", *TRAIN]) == 0
    assert main(["train-hetero", star, "-o", str(resumed), "-n", "1", *TRAIN]) == 0
    assert (resumed / "weights.1.pt").exists() and not (resumed / "weights.2.pt").exists()
    assert main(["train-hetero", star, "-o", str(resumed), "-n", "2", "--resume", *TRAIN]) == 0
    a = torch.load(straight / "weights.2.pt", weights_only=True)
    b = torch.load(resumed / "weights.2.pt", weights_only=True)
    assert a["model"].keys() == b["model"].keys()
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    for i, sa in a["optimizer"]["state"].items():
        for k, v in sa.items():
            assert torch.equal(v, b["optimizer"]["state"][i][k]), (i, k)
    za = pickle.load(open(straight / "z.2.pkl", "rb"))
    zb = pickle.load(open(resumed / "z.2.pkl", "rb"))
    np.testing.assert_array_equal(za, zb)


def _one_line_error(res) -> None:
    assert res.code == 2, res
    assert res.err.strip() and res.err.strip().count("\n") == 0, res.err


def test_star_without_angles_is_refused(cli, data, tmp_path):
    table = read_particles(data["star"])
    p = table.particles.drop(columns=["rot", "tilt", "psi", "shift_x", "shift_y"])
    write_star(tmp_path / "noangles.star", ParticleTable(p, table.optics, source=table.source))
    res = cli("train-hetero", tmp_path / "noangles.star", "-o", tmp_path / "out", "-n", "1", "--device", "cpu")
    _one_line_error(res)
    assert "no particle orientations" in res.err
    assert not (tmp_path / "out").exists()


def test_images_of_another_box_than_the_optics_table_are_refused(cli, data, tmp_path):
    table = read_particles(data["star"])
    optics = table.optics.copy()
    optics["box"] = 32
    write_star(tmp_path / "box32.star", ParticleTable(table.particles, optics, source=table.source))
    res = cli("train-hetero", tmp_path / "box32.star", "-o", tmp_path / "out", "-n", "1", "--device", "cpu")
    _one_line_error(res)
    assert "images are 24 px but the optics table" in res.err
    assert not (tmp_path / "out").exists()


def test_zdim_zero_is_refused(cli, data, tmp_path):
    res = cli("train-hetero", data["star"], "-o", tmp_path / "out", "--zdim", "0", "-n", "1")
    _one_line_error(res)
    assert "--zdim 0" in res.err
    assert not (tmp_path / "out").exists()


def test_resume_from_another_models_checkpoint_is_refused(cli, data, tmp_path):
    out = tmp_path / "other"
    out.mkdir()
    save_checkpoint(out / "weights.0.pt", {"epoch": 0, "model": {}}, kind="reconstruct")
    res = cli("train-hetero", data["star"], "-o", out, "-n", "3", "--resume", "--device", "cpu")
    _one_line_error(res)
    assert "checkpoint of a reconstruct model" in res.err

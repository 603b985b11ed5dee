"""train-swan, embed, swan generate and swan denoise end to end on a tiny corpus (16³, codebook 64).

One autoencoder is trained for two epochs and shared by the tests; a second run of one epoch
plus ``--resume`` must reproduce it bit for bit. Figures written by the commands are checked
against independent recomputations (NumPy PSNR, Euclidean distances, FSC of the files).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

BOX = 16
APIX = 5.0
TRAIN_ARGS = ["--epochs", "2", "--batch-size", "4", "--width", "8", "--latent-dim", "8", "--codebook-size", "64",
              "--device", "cpu", "--seed", "3"]


def _blob_map(g: torch.Generator) -> np.ndarray:
    k = torch.arange(BOX, dtype=torch.float32) - BOX // 2
    z, y, x = torch.meshgrid(k, k, k, indexing="ij")
    v = torch.zeros(BOX, BOX, BOX)
    for _ in range(3):
        c = (torch.rand(3, generator=g) - 0.5) * BOX * 0.4
        s = 1.2 + 1.5 * torch.rand(1, generator=g).item()
        v += torch.exp(-((x - c[0]) ** 2 + (y - c[1]) ** 2 + (z - c[2]) ** 2) / (2 * s * s))
    return v.numpy()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """A finished corpus store (through cryovox.io.corpus): 7 entries × 2 rotations (90° turns)."""
    from cryovox.io.corpus import WorkDir, assemble, write_kept

    out = tmp_path_factory.mktemp("swan") / "corpus"
    wd = WorkDir(out)
    wd.create({}, resume=False)
    g = torch.Generator().manual_seed(0)
    ids = []
    for e in range(7):
        base = _blob_map(g)
        vols = []
        for r in range(2):
            v = np.rot90(base, r, axes=(1, 2))
            vols.append((v - v.mean()) / v.std())
        eid = f"EMD-{100 + e}"
        ids.append(eid)
        write_kept(wd, eid, np.stack(vols).astype(np.float32),
                   [{"entry_id": eid, "rotation": r, "apix": APIX, "box": BOX} for r in range(2)])
    assemble(out, ids, {}, (0.6, 0.2, 0.2), 0, APIX, BOX)
    return out


@pytest.fixture(scope="module")
def trained(corpus, tmp_path_factory) -> Path:
    from cryovox.cli import main

    out = tmp_path_factory.mktemp("swan") / "ae"
    assert main(["train-swan", str(corpus), "-o", str(out), *TRAIN_ARGS]) == 0
    return out


def test_train_metrics_match_an_independent_evaluation(trained, corpus):
    from cryovox.io.corpus import open_corpus
    from cryovox.pipelines.train_swan import load_model

    metrics = json.loads((trained / "metrics.json").read_text())
    store = open_corpus(corpus)
    test_rows = store.indices("test")
    assert metrics["split"] == "test" and metrics["n_maps"] == len(test_rows)
    model, state = load_model(trained / "model.pt")
    assert state["apix"] == APIX and model.cfg.codebook_size == 64
    x = torch.from_numpy(np.asarray(store.volumes[test_rows]))
    rec = model.reconstruct(x[:, None]).numpy().astype(np.float64)
    ref = x.numpy().astype(np.float64)
    mse = ((rec - ref) ** 2).mean(axis=(1, 2, 3))
    psnr = 10 * np.log10((ref.max(axis=(1, 2, 3)) - ref.min(axis=(1, 2, 3))) ** 2 / mse)
    assert metrics["test"]["mse"] == pytest.approx(mse.mean(), rel=1e-4)
    assert metrics["test"]["psnr"] == pytest.approx(psnr.mean(), rel=1e-4)
    thr = ref.mean(axis=(1, 2, 3)) + ref.std(axis=(1, 2, 3))
    P, T = rec > thr[:, None, None, None], ref > thr[:, None, None, None]
    iou = ((P & T).sum(axis=(1, 2, 3)) / (P | T).sum(axis=(1, 2, 3))).mean()
    assert metrics["test"]["iou"] == pytest.approx(iou, rel=1e-6)
    assert 0 < metrics["test"]["fsc_auc"] <= 1
    # codebook health is logged per epoch and level
    rows = list(csv.DictReader(open(trained / "history.csv")))
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    for r in rows:
        for lvl in (1, 2):
            used = round(float(r[f"usage_l{lvl}"]) * 64)
            assert used + int(r[f"dead_l{lvl}"]) == 64
            assert 1 <= float(r[f"perplexity_l{lvl}"]) <= used + 1e-6
    assert (trained / "montage.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_resume_continues_bit_for_bit(trained, corpus, tmp_path, cli):
    """A run killed after epoch 1 (only weights.1.pt left) and resumed ends where the
    uninterrupted run ended: same weights, same optimiser state."""
    import shutil

    from cryovox.io.checkpoint import load_checkpoint

    out = tmp_path / "ae"
    out.mkdir()
    shutil.copy(trained / "weights.1.pt", out / "weights.1.pt")
    res = cli("train-swan", corpus, "-o", out, *TRAIN_ARGS, "--resume")
    assert res.code == 0, res
    a = load_checkpoint(trained / "weights.2.pt")
    b = load_checkpoint(out / "weights.2.pt")
    assert a["model"].keys() == b["model"].keys()
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    for sa, sb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        assert torch.equal(sa["exp_avg_sq"], sb["exp_avg_sq"])
    assert a["history"][-1]["usage_l1"] == b["history"][-1]["usage_l1"]


def test_embed_neighbours_are_the_nearest_latent_vectors(trained, corpus, tmp_path, cli):
    out = tmp_path / "embed"
    res = cli("embed", trained / "model.pt", corpus, "-o", out, "--neighbors", "3", "--projection", "pca",
              "--rotations", "3", "--device", "cpu")
    assert res.code == 0, res
    z = np.load(out / "latents.npz")
    vec, names = z["vectors"].astype(np.float64), list(z["names"])
    assert vec.shape[0] == 14 and z["coords"].shape == (14, 2)
    d = np.sqrt(((vec[:, None] - vec[None]) ** 2).sum(-1))
    np.fill_diagonal(d, np.inf)
    rows = list(csv.DictReader(open(out / "hubs.csv")))
    occurrence = np.zeros(14, dtype=int)
    for i, row in enumerate(rows):
        order = np.argsort(d[i])[:3]
        assert [row[f"neighbor_{j + 1}"] for j in range(3)] == [names[o] for o in order]
        assert float(row["distance_1"]) == pytest.approx(d[i, order[0]], rel=1e-4)
        occurrence[order] += 1
    assert [int(r["k_occurrence"]) for r in rows] == occurrence.tolist()
    info = json.loads((out / "embed.json").read_text())
    ids = [n.split("#")[0] for n in names]
    hits = np.mean([ids[int(np.argmin(d[i]))] == ids[i] for i in range(14)])
    assert info["nn_hit_rate"] == pytest.approx(hits)


def test_descriptors_pool_the_chosen_latents(trained, corpus):
    """latent="encoder" pools the encoder's continuous outputs, "quantised" the codebook approximations."""
    from cryovox.io.corpus import open_corpus
    from cryovox.pipelines.embed import descriptors, pooled_descriptor
    from cryovox.pipelines.train_swan import load_model

    ae, _ = load_model(trained / "model.pt", torch.device("cpu"))
    store = open_corpus(corpus)
    maps = torch.stack([torch.as_tensor(store[i]) for i in range(3)]).float()
    z, quant, _ = ae.encode(maps)
    for latent, grids in (("encoder", z), ("quantised", [q.z_q for q in quant])):
        ref = torch.cat([pooled_descriptor(g) for g in grids], 1)
        got = descriptors(ae, maps, torch.device("cpu"), rotations=1, latent=latent, progress=False)
        assert torch.allclose(got, ref, atol=1e-5), latent
    assert not torch.allclose(descriptors(ae, maps, "cpu", rotations=1, latent="quantised", progress=False),
                              descriptors(ae, maps, "cpu", rotations=1, latent="encoder", progress=False))


def test_pooled_descriptor_values_and_invariance():
    """Shell means against a plain loop; exact invariance to axis permutations and to
    reflections about the centre voxel (which keep every voxel's distance from it)."""
    from cryovox.core.transform import flip
    from cryovox.pipelines.embed import pooled_descriptor

    g = torch.randn(2, 3, 6, 6, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    d = pooled_descriptor(g).double()
    assert d.shape == (2, 3 * (2 + 4))
    sums, counts = np.zeros((2, 3, 4)), np.zeros(4)
    for z in range(6):
        for y in range(6):
            for x in range(6):
                r = min(int(round(np.sqrt((z - 3) ** 2 + (y - 3) ** 2 + (x - 3) ** 2))), 3)
                sums[:, :, r] += g[:, :, z, y, x].numpy()
                counts[r] += 1
    ref = np.concatenate([g.flatten(2).mean(-1, keepdim=True).numpy(), g.flatten(2).std(-1, keepdim=True).numpy(),
                          sums / counts], -1).reshape(2, -1)
    assert np.allclose(d.numpy(), ref, atol=1e-5)
    moved = flip(g.permute(0, 1, 4, 2, 3), (0, 2))
    assert torch.allclose(pooled_descriptor(moved).double(), d, atol=1e-5)


def test_generate_writes_maps_on_the_anchor_grid(trained, corpus, tmp_path, cli):
    from cryovox.io.corpus import open_corpus
    from cryovox.io.mrc import read_map, write_map
    from cryovox.pipelines import swan_generate

    diff = tmp_path / "diff"
    res = cli("train-swan", corpus, "--stage", "diffusion", "--model", trained / "model.pt", "-o", diff,
              "--epochs", "1", "--batch-size", "4", "--unet-base", "8", "--timesteps", "20", "--device", "cpu")
    assert res.code == 0, res
    # anchor on another grid: 20³ at 4 Å (the model works at 16³, 5 Å)
    store = open_corpus(corpus)
    from cryovox.core.spectral import fourier_resize
    from cryovox.core.transform import center_crop_pad

    anchor = center_crop_pad(fourier_resize(torch.from_numpy(store[0]).double(), 20, ndim=3), 20)
    write_map(tmp_path / "anchor.mrc", anchor.float().numpy(), 4.0)
    out = tmp_path / "gen"
    result = swan_generate.run(swan_model=trained / "model.pt", diffusion_model=diff / "diffusion.pt",
                               anchor=tmp_path / "anchor.mrc", n=2, outdir=out, guidance=1.0, steps=5,
                               device="cpu", seed=1)
    assert len(result.paths) == 2
    maps = [read_map(p) for p in result.paths]
    assert all(m.data.shape == (20, 20, 20) and m.apix == pytest.approx(4.0) for m in maps)
    assert not np.allclose(maps[0].data, maps[1].data)  # two different draws
    rows = list(csv.DictReader(open(out / "samples.csv")))
    assert [r["file"] for r in rows] == ["sample_000.mrc", "sample_001.mrc"]
    assert all(0 <= float(r["fsc_auc_vs_anchor"]) <= 1 for r in rows)
    # same seed → same maps
    again = swan_generate.run(swan_model=trained / "model.pt", diffusion_model=diff / "diffusion.pt",
                              anchor=tmp_path / "anchor.mrc", n=2, outdir=tmp_path / "gen2", steps=5,
                              device="cpu", seed=1)
    assert np.array_equal(read_map(again.paths[1]).data, maps[1].data)


def test_denoise_reports_figures_that_match_the_files(trained, corpus, tmp_path):
    from cryovox.core.fsc import fsc, fsc_auc
    from cryovox.io.corpus import open_corpus
    from cryovox.io.mrc import read_map, write_map
    from cryovox.pipelines import swan_denoise

    store = open_corpus(corpus)
    clean = store[int(store.indices("test")[0])]
    rng = np.random.default_rng(0)
    noisy = clean + rng.normal(scale=np.sqrt(clean.var() / 0.5), size=clean.shape).astype(np.float32)
    write_map(tmp_path / "clean.mrc", clean, APIX)
    write_map(tmp_path / "noisy.mrc", noisy, APIX)
    result = swan_denoise.run(tmp_path / "noisy.mrc", model=trained / "model.pt", outdir=tmp_path / "dn",
                              reference=tmp_path / "clean.mrc", device="cpu")
    out = read_map(result.path)
    assert out.data.shape == (BOX,) * 3 and out.apix == pytest.approx(APIX)
    m = json.loads((tmp_path / "dn" / "metrics.json").read_text())
    for name, data in (("swan", out.data), ("bandpass", read_map(tmp_path / "dn" / "bandpass.mrc").data),
                       ("input", noisy)):
        mse = ((data.astype(np.float64) - clean) ** 2).mean()
        assert m[name]["psnr"] == pytest.approx(10 * np.log10(np.ptp(clean.astype(np.float64)) ** 2 / mse), rel=1e-4)
        auc = fsc_auc(fsc(torch.from_numpy(data).double(), torch.from_numpy(clean).double()))
        assert m[name]["fsc_auc"] == pytest.approx(auc, rel=1e-4)
    # the least-squares scale: the result's projection onto the noisy input equals its own power
    y = out.data.astype(np.float64) - out.data.mean()
    assert (y * (noisy - noisy.mean())).sum() == pytest.approx((y * y).sum(), rel=1e-3)


def test_bad_inputs_are_one_line_errors(trained, corpus, tmp_path, cli):
    res = cli("train-swan", tmp_path, "-o", tmp_path / "x")
    assert res.code == 2 and "corpus" in res.err and not (tmp_path / "x").exists()
    res = cli("embed", corpus / "metadata.csv", corpus, "-o", tmp_path / "e")
    assert res.code == 2 and "checkpoint" in res.err and not (tmp_path / "e").exists()
    res = cli("train-swan", corpus, "--stage", "diffusion", "-o", tmp_path / "d")
    assert res.code == 2 and "--model" in res.err
    res = cli("train-swan", corpus, "-o", tmp_path / "w", "--arch", "vqgan")
    assert res.code == 2 and "--arch" in res.err

"""cryovox curate: kept/rejected sets on a synthetic mirror, resampling faithfulness, resume,
worker-count independence, EMDB header parsing, mirror discovery and splits.

Mirrors come from examples/make_mirror.py (small models, coarse voxels, so they build in
seconds). Oracles: the mirror's own manifest (what each entry was built to be), maps
simulated directly at the target voxel size, NumPy FFTs and checksums, mrcfile.
"""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from cryovox.errors import InputError
from cryovox.io.corpus import Corpus, assign_splits, file_sha256
from cryovox.io.emdb import assembly_weight, discover, header_xml, parse_header, read_metadata_csv

ROOT = Path(__file__).resolve().parents[2]
MODELS = ROOT / "examples" / "data"


def load_make_mirror():
    name = "cryovox_examples_make_mirror"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, ROOT / "examples" / "make_mirror.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod  # dataclasses look their module up here
    spec.loader.exec_module(mod)
    return mod


make_mirror = load_make_mirror()


def small_models() -> list[Path]:
    found = [p for p in make_mirror.find_models() if p.name.lower().startswith(("1a28", "1hvr"))]
    if len({p.name[:4] for p in found}) < 2:
        pytest.skip("models 1a28 and 1hvr are not available (examples/data or ../shared/data/models)")
    return found


@pytest.fixture(scope="module")
def mirror(tmp_path_factory):
    """3 entries to keep + one of each bad kind, EMDB tree layout, 5 Å/px maps."""
    out = tmp_path_factory.mktemp("mirror")
    manifest = make_mirror.make_mirror(out, n_good=3, bad=True, layout="tree", seed=0, models=small_models(),
                                       apix_choices=(5.0,), max_kda=300, log=None)
    return out, manifest


CURATE_ARGS = ("--apix", "6", "--box", "24", "--rotations", "2", "--keep-original", "--max-resolution", "13",
               "--seed", "3")


@pytest.fixture(scope="module")
def curated(mirror, tmp_path_factory):
    """The mirror curated once, uninterrupted, one worker."""
    from cryovox.cli import main

    out = tmp_path_factory.mktemp("curated") / "corpus"
    assert main(["curate", str(mirror[0]), "-o", str(out), *CURATE_ARGS]) == 0
    return out


def fsc_numpy(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    D = a.shape[0]
    A, B = np.fft.fftshift(np.fft.fftn(a)), np.fft.fftshift(np.fft.fftn(b))
    r = _radii(D)
    num = np.bincount(r.ravel(), (A * B.conj()).real.ravel())
    den = np.sqrt(np.bincount(r.ravel(), (abs(A) ** 2).ravel()) * np.bincount(r.ravel(), (abs(B) ** 2).ravel()))
    return num / den


def shell_power(a: np.ndarray) -> np.ndarray:
    A = np.fft.fftshift(np.fft.fftn(a))
    return np.bincount(_radii(a.shape[0]).ravel(), (abs(A) ** 2).ravel())


def _radii(D: int) -> np.ndarray:
    k = np.arange(D) - D // 2
    kz, ky, kx = np.meshgrid(k, k, k, indexing="ij")
    return np.rint(np.sqrt(kx**2 + ky**2 + kz**2)).astype(int)


# ------------------------------------------------------------------ end to end on the mirror
def test_keeps_and_rejects_exactly_the_expected_entries(mirror, curated):
    from cryovox.core.rotations import euler_to_matrix
    from cryovox.core.transform import rotate

    src, manifest = mirror
    out = curated
    corpus = Corpus(out)
    md = corpus.metadata
    expect_keep = {m["entry_id"] for m in manifest if m["expect"] == "keep"}
    assert set(md["entry_id"]) == expect_keep
    rej = corpus.rejected()
    assert dict(zip(rej["entry_id"], rej["category"])) == {
        m["entry_id"]: m["category"] for m in manifest if m["expect"] == "reject"}
    reasons = dict(zip(rej["entry_id"], rej["reason"]))
    by_kind = {m["kind"]: m for m in manifest}
    assert f"{by_kind['mass_low']['mass_kda']:.1f} kDa" in reasons[by_kind["mass_low"]["entry_id"]]
    assert "helical" in reasons[by_kind["helical"]["entry_id"]]
    assert "15 Å" in reasons[by_kind["poor_resolution"]["entry_id"]]
    box = by_kind["non_cubic"]["box"]
    assert f"{box}×{box}×{box - 6}" in reasons[by_kind["non_cubic"]["entry_id"]]
    assert "voxel size 5.5 Å but the header says 5 Å" in reasons[by_kind["apix_mismatch"]["entry_id"]]

    # the store: 3 samples per kept entry, each zero mean / unit variance
    vols = np.load(out / "volumes.npy")
    assert vols.shape == (3 * len(expect_keep), 24, 24, 24) and vols.dtype == np.float32
    flat = vols.reshape(len(vols), -1).astype(np.float64)
    assert np.allclose(flat.mean(1), 0, atol=1e-5) and np.allclose(flat.std(1), 1, atol=1e-4)
    assert list(md["index"]) == list(range(len(vols)))
    # splits by entry: all samples of an entry share one split
    assert md.groupby("entry_id")["split"].nunique().max() == 1
    # metadata against the manifest: source voxel size, mass, resolution, Nyquist flag
    for m in manifest:
        if m["expect"] == "keep":
            rows = md[md.entry_id == m["entry_id"]]
            assert np.allclose(rows["source_apix"], 5.0)
            assert np.allclose(rows["mw_kda"], m["mass_kda"], rtol=1e-4)
            assert np.allclose(rows["resolution"], m["resolution"], rtol=1e-4)
            assert (rows["below_nyquist"] == (m["resolution"] > 12.0)).all()
    # the recorded Euler angles are the rotation applied: rotate sample 0 by them
    first = md[md.entry_id == sorted(expect_keep)[0]]
    base = torch.from_numpy(vols[int(first["index"].iloc[0])].astype(np.float64))
    sphere = _radii(24) <= 9
    for _, row in first.iloc[1:].iterrows():
        R = euler_to_matrix(row["rot"], row["tilt"], row["psi"])
        mine = rotate(base, R).numpy()[sphere]
        stored = vols[int(row["index"])][sphere]
        assert np.corrcoef(mine, stored)[0, 1] > 0.98
    # options and log
    info = json.loads((out / "corpus.json").read_text())
    assert info["n_samples"] == len(vols) and info["options"]["box"] == 24
    assert "rejected 10" in (out / "run.log").read_text()


def test_resume_after_interrupt_gives_the_same_store(mirror, curated, cli, tmp_path):
    """Kill (test hook) after 3 entries, resume with 2 workers: byte-identical to 1 uninterrupted worker."""
    from cryovox.pipelines import curate

    src, _ = mirror
    full, part = curated, tmp_path / "part"
    opts = curate.CurateOptions(apix=6.0, box=24, rotations=2, keep_original=True, max_resolution=13.0, seed=3)
    part.mkdir()
    with pytest.raises(curate.StopForTest):
        curate.run(src, part, opts, stop_after=3)
    assert not (part / "volumes.npy").exists()
    shards = list((part / ".work").rglob("*.json"))
    assert len(shards) == 1 + 3  # state.json + 3 finished entries
    res = cli("curate", src, "-o", part, *CURATE_ARGS, "--resume", "--workers", "2")
    assert res.code == 0, res
    assert "(3 already done)" in (part / "run.log").read_text()
    for name in ("volumes.npy", "metadata.csv", "rejected.csv", "corpus.json"):
        assert file_sha256(full / name) == file_sha256(part / name), name
    assert not (part / ".work").exists()
    # resuming a finished store does nothing and changes nothing
    assert cli("curate", src, "-o", part, *CURATE_ARGS, "--resume").code == 0
    assert file_sha256(full / "volumes.npy") == file_sha256(part / "volumes.npy")
    # different options are refused in one line
    res = cli("curate", src, "-o", part, *CURATE_ARGS[:2], "--box", "32", *CURATE_ARGS[4:], "--resume")
    assert res.code == 2 and "different options" in res.err and "box" in res.err


def test_resampling_is_faithful_and_unaliased(cli, tmp_path):
    """1.1 Å/px map curated to 4 Å/px vs the same model simulated at 4 Å/px directly."""
    from cryovox.core.transform import affine_resample
    from cryovox.io.mrc import write_map
    from cryovox.pipelines.simulate import simulate_map

    model = next((p for p in make_mirror.find_models() if p.name.lower().startswith("1hvr")), None)
    if model is None:
        pytest.skip("model 1hvr is not available")
    fine = simulate_map(model, apix=1.1, box=80)             # 88 Å box
    direct = simulate_map(model, apix=4.0, box=22).data.astype(np.float64)
    contour = make_mirror.contour_for_mass(fine.data, fine.mass_kda, 1.1)
    src = tmp_path / "mirror"
    src.mkdir()
    # a four-digit id, flat layout, no molecular weight in the header (estimated from the volume)
    (src / "emd-1234.xml").write_text(header_xml("EMD-1234", resolution=3.0, contour=contour, apix=1.1,
                                                 dims=(80, 80, 80), map_file="emd_1234.map.gz"), encoding="utf-8")
    write_map(src / "emd_1234.map.gz", fine.data, 1.1)
    out = tmp_path / "corpus"
    res = cli("curate", src, "-o", out, "--apix", "4", "--box", "22", "--rotations", "0", "--keep-original",
              "--mw-kda", "5", "500")
    assert res.code == 0, res
    corpus = Corpus(out)
    cur = corpus[0].astype(np.float64)
    row = corpus.metadata.iloc[0]
    assert row["mw_source"] == "volume at contour"
    assert row["mw_kda"] == pytest.approx(fine.mass_kda, rel=0.03)
    assert row["below_nyquist"] == False  # noqa: E712  (3 Å is finer than 8 Å)

    nyq = 11
    f = fsc_numpy(cur, direct)
    assert f[1:int(0.8 * nyq) + 1].min() >= 0.9
    # no aliasing: the spectrum's shape matches the direct map's up to Nyquist (no excess
    # power piling up near Nyquist) and nothing is left beyond the Nyquist sphere
    p_cur, p_dir = shell_power(cur), shell_power(direct)
    ratio = p_cur[1:nyq + 1] / p_dir[1:nyq + 1]
    assert (ratio / ratio[0]).max() < 1.02
    assert p_cur[nyq + 1:].sum() / p_cur.sum() < 1e-9
    # the check can fail: plain trilinear downsampling aliases (excess power near Nyquist)
    naive = affine_resample(torch.from_numpy(fine.data).double(), torch.eye(3, dtype=torch.float64) * (4 / 1.1),
                            out_size=22, order=1).numpy()
    p_naive = shell_power(naive)
    r_naive = p_naive[1:nyq + 1] / p_dir[1:nyq + 1]
    assert (r_naive / r_naive[0]).max() > 1.5


def test_csv_source_and_write_mrc(cli, tmp_path):
    import mrcfile

    src = tmp_path / "maps"
    manifest = make_mirror.make_mirror(src, n_good=2, bad=False, layout="csv", seed=5, models=small_models(),
                                       apix_choices=(5.0,), max_kda=250, log=None, gz=False)
    out = tmp_path / "corpus"
    res = cli("curate", src, "-o", out, "--apix", "6", "--box", "20", "--rotations", "1", "--write-mrc")
    assert res.code == 0, res
    corpus = Corpus(out)
    md = corpus.metadata
    assert sorted(md["entry_id"]) == sorted(m["entry_id"] for m in manifest)
    assert set(md["mw_source"]) == {"metadata csv"}
    for i, row in md.iterrows():
        with mrcfile.open(out / "mrc" / f"{row['entry_id']}_{row['rotation']}.mrc") as m:
            assert np.array_equal(m.data, corpus[int(row["index"])])
            assert float(m.voxel_size.x) == pytest.approx(6.0)


def test_bad_source_is_one_line_and_leaves_nothing(cli, tmp_path):
    out = tmp_path / "out"
    res = cli("curate", tmp_path / "nowhere", "-o", out)
    assert res.code == 2 and "no such file" in res.err
    assert not out.exists()
    empty = tmp_path / "empty"
    empty.mkdir()
    res = cli("curate", empty, "-o", out)
    assert res.code == 2 and "no EMDB headers" in res.err
    assert not out.exists()
    res = cli("curate", empty, "-o", out, "--split", "0.5", "0.5", "0.5")
    assert res.code == 2 and "--split" in res.err


# ------------------------------------------------------------------------- header parsing
A = "\u212b"


def test_header_xml_round_trip():
    text = header_xml("EMD-123456", method="subtomogramAveraging", resolution=7.5, mw_kda=812.0, contour=0.0123,
                      apix=(1.06, 1.06, 1.06), dims=(300, 300, 300), map_file="emd_123456.map.gz",
                      half_maps=["emd_123456_half_map_1.map.gz", "emd_123456_half_map_2.map.gz"])
    assert f'units="{A}"' in text  # U+212B, as EMDB writes it
    h = parse_header(text)
    assert h.entry_id == "EMD-123456" and h.method == "subtomogramAveraging"
    assert h.resolution == 7.5 and h.mw_kda == pytest.approx(812.0) and h.mw_source == "supramolecule theoretical"
    assert h.contour == 0.0123 and h.apix == (1.06, 1.06, 1.06) and h.dims == (300, 300, 300)
    assert h.map_file == "emd_123456.map.gz" and len(h.half_maps) == 2


def test_header_facts_from_a_hand_written_v3_header():
    """Namespaces, a supramolecule tree without a top-level weight, kDa units, nm spacing,
    several contours, several resolutions, half maps."""
    text = f"""<?xml version="1.0" encoding="UTF-8"?>
<emd xmlns="http://pdbe.org/empiar" emdb_id="EMD-45678" version="3.0.9.1">
  <sample>
    <supramolecule_list>
      <complex_supramolecule supramolecule_id="1"><name>whole</name><parent>0</parent></complex_supramolecule>
      <complex_supramolecule supramolecule_id="2"><name>core</name><parent>1</parent>
        <molecular_weight><experimental units="MDa">0.25</experimental></molecular_weight></complex_supramolecule>
      <complex_supramolecule supramolecule_id="3"><name>arm</name><parent>1</parent>
        <molecular_weight><theoretical units="kDa">120.5</theoretical></molecular_weight></complex_supramolecule>
    </supramolecule_list>
  </sample>
  <structure_determination_list><structure_determination structure_determination_id="1">
    <method>singleParticle</method>
    <singleparticle_processing image_processing_id="1"><final_reconstruction>
      <resolution res_type="OTHER" units="{A}">4.1</resolution>
      <resolution res_type="BY AUTHOR" units="\u00c5">3.4</resolution>
    </final_reconstruction></singleparticle_processing>
  </structure_determination></structure_determination_list>
  <map format="CCP4">
    <file>emd_45678.map.gz</file>
    <dimensions><col>256</col><row>256</row><sec>256</sec></dimensions>
    <pixel_spacing><x units="nm">0.083</x><y units="nm">0.083</y><z units="nm">0.083</z></pixel_spacing>
    <contour_list>
      <contour primary="false"><level>0.5</level></contour>
      <contour primary="true"><level>0.031</level><source>AUTHOR</source></contour>
    </contour_list>
  </map>
  <interpretation><half_map_list>
    <half_map format="CCP4"><file>emd_45678_half_map_1.map.gz</file></half_map>
    <half_map format="CCP4"><file>emd_45678_half_map_2.map.gz</file></half_map>
  </half_map_list></interpretation>
</emd>"""
    h = parse_header(text)
    assert h.entry_id == "EMD-45678" and h.method == "singleParticle"
    assert h.resolution == 3.4                     # BY AUTHOR first
    assert h.mw_kda == pytest.approx(250 + 120.5)  # top node has none: sum of its two children
    assert h.mw_source == "supramolecule sum of components"
    assert h.apix == pytest.approx((0.83, 0.83, 0.83)) and h.contour == 0.031
    assert h.dims == (256, 256, 256) and h.half_maps == ("emd_45678_half_map_1.map.gz", "emd_45678_half_map_2.map.gz")


def test_assembly_weight_rules():
    import xml.etree.ElementTree as ET

    def sample(inner: str):
        return ET.fromstring(f"<sample>{inner}</sample>")

    # two top-level assemblies: their sum; a child's weight is not added again
    s = sample("""<supramolecule_list>
      <complex_supramolecule supramolecule_id="1"><parent>0</parent>
        <molecular_weight><theoretical units="MDa">0.3</theoretical></molecular_weight></complex_supramolecule>
      <complex_supramolecule supramolecule_id="2"><parent>1</parent>
        <molecular_weight><theoretical units="MDa">0.1</theoretical></molecular_weight></complex_supramolecule>
      <complex_supramolecule supramolecule_id="3"><parent>0</parent>
        <molecular_weight><theoretical units="MDa">0.05</theoretical></molecular_weight></complex_supramolecule>
      </supramolecule_list>""")
    assert assembly_weight(s)[0] == pytest.approx(350.0)
    # no supramolecule weight, per-length helical weight ignored: macromolecules × copies
    s = sample("""<supramolecule_list><complex_supramolecule supramolecule_id="1"><parent>0</parent>
        <molecular_weight><theoretical units="kDa/nm">5</theoretical></molecular_weight>
      </complex_supramolecule></supramolecule_list>
      <macromolecule_list>
        <protein_or_peptide macromolecule_id="1"><molecular_weight><theoretical units="MDa">0.05</theoretical>
          </molecular_weight><number_of_copies>6</number_of_copies></protein_or_peptide>
        <protein_or_peptide macromolecule_id="2"><molecular_weight><theoretical units="Da">20000</theoretical>
          </molecular_weight></protein_or_peptide>
      </macromolecule_list>""")
    w, src = assembly_weight(s)
    assert w == pytest.approx(6 * 50 + 20) and src == "macromolecules × copies"
    # nothing usable
    assert assembly_weight(sample("<supramolecule_list><complex_supramolecule supramolecule_id='1'/>"
                                  "</supramolecule_list>")) == (None, "")


def test_not_a_v3_header_is_an_input_error():
    with pytest.raises(InputError, match="not an EMDB v3 header"):
        parse_header('<emdEntry accessCode="EMD-1010"><deposition/></emdEntry>')
    with pytest.raises(InputError, match="well-formed"):
        parse_header("<emd emdb_id='EMD-1'><map>")


# ------------------------------------------------------------------------------- discovery
def test_discovery_of_tree_flat_and_csv_layouts(tmp_path):
    tree = tmp_path / "tree" / "structures"
    for num, has_map, has_header in ((10001, True, True), (1234, True, False), (250001, False, True)):
        d = tree / f"EMD-{num}"
        if has_header:
            (d / "header").mkdir(parents=True)
            (d / "header" / f"emd-{num}-v30.xml").write_text(header_xml(f"EMD-{num}"))
            (d / "header" / f"emd-{num}.xml").write_text(f'<emdEntry accessCode="EMD-{num}"/>')  # v1.9
        if has_map:
            (d / "map").mkdir(parents=True)
            (d / "map" / f"emd_{num}.map.gz").write_bytes(b"")
            (d / "other").mkdir()
            (d / "other" / f"emd_{num}_half_map_1.map.gz").write_bytes(b"")
    entries = discover(tmp_path / "tree")
    assert [e.entry_id for e in entries] == ["EMD-1234", "EMD-10001", "EMD-250001"]  # numeric order
    e = {x.entry_id: x for x in entries}
    assert e["EMD-10001"].header_path.name == "emd-10001-v30.xml"  # the v3 one, not the v1.9 one
    assert e["EMD-10001"].map_path.name == "emd_10001.map.gz" and len(e["EMD-10001"].half_maps) == 1
    assert e["EMD-1234"].header_path is None and e["EMD-250001"].map_path is None

    flat = tmp_path / "flat"
    flat.mkdir()
    (flat / "emd-5.xml").write_text(header_xml("EMD-0005"))
    (flat / "emd_5.map").write_bytes(b"")
    (flat / "emd_5_half_map_2.map.gz").write_bytes(b"")
    entries = discover(flat)
    assert [(x.entry_id, x.map_path.name) for x in entries] == [("EMD-0005", "emd_5.map")]

    folder = tmp_path / "csv"
    folder.mkdir()
    (folder / "a.mrc").write_bytes(b"")
    (folder / "stray.map").write_bytes(b"")
    (folder / "meta.csv").write_text("ID,Method,Resolution,MW_kDa,Contour,Apix\n"
                                     "a,singleParticle,3.2,450,0.1,1.05\nb,singleParticle,,,0.2,1.1\n")
    entries = {x.entry_id: x for x in discover(folder)}
    assert entries["a"].map_path.name == "a.mrc" and entries["a"].meta.resolution == 3.2
    assert entries["a"].meta.mw_kda == 450 and entries["a"].meta.apix == (1.05, 1.05, 1.05)
    assert entries["b"].map_path is None and entries["b"].meta.resolution is None
    assert entries["stray"].meta is None  # map without a row
    with pytest.raises(InputError, match="not a number"):
        (folder / "bad.csv").write_text("id,resolution\nx,abc\n")
        read_metadata_csv(folder / "bad.csv")


def test_splits_are_by_entry_deterministic_and_proportional():
    ids = [f"EMD-{i}" for i in range(1000, 1100)]
    a = assign_splits(ids, (0.8, 0.1, 0.1), seed=1)
    assert [sum(v == s for v in a.values()) for s in ("train", "val", "test")] == [80, 10, 10]
    assert a == assign_splits(list(reversed(ids)), (0.8, 0.1, 0.1), seed=1)  # order-independent
    assert a != assign_splits(ids, (0.8, 0.1, 0.1), seed=2)
    small = assign_splits(["x", "y", "z"], (0.8, 0.1, 0.1), seed=0)
    assert sorted(small.values()) == ["test", "train", "val"]  # every split gets an entry
    assert set(assign_splits(["x", "y"], (1.0, 0.0, 0.0), seed=0).values()) == {"train"}
    assert math.isclose(sum((0.8, 0.1, 0.1)), 1.0)

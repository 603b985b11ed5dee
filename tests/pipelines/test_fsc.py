"""``cryovox fsc`` end to end: numbers against a NumPy oracle, RELION STAR columns, bad input."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest
import starfile

from cryovox.io.mrc import write_map
from tests.core.test_fsc import numpy_fsc

APIX = 1.5
D = 40


def synthetic_map(D: int) -> np.ndarray:
    """A few Gaussian blobs of different widths (a particle with low- and high-resolution detail)."""
    z, y, x = np.meshgrid(*([np.arange(D) - D // 2] * 3), indexing="ij")
    vol = np.zeros((D, D, D))
    for (cx, cy, cz), s, a in [((0, 0, 0), 4.0, 1.0), ((5, -3, 2), 1.5, 0.8), ((-6, 4, -1), 1.0, 0.6),
                               ((2, 6, -5), 2.0, 0.7)]:
        vol += a * np.exp(-((x - cx) ** 2 + (y - cy) ** 2 + (z - cz) ** 2) / (2 * s * s))
    return vol


@pytest.fixture(scope="module")
def maps(tmp_path_factory):
    d = tmp_path_factory.mktemp("maps")
    rng = np.random.default_rng(42)
    vol = synthetic_map(D)
    a = (vol + 0.15 * rng.standard_normal(vol.shape)).astype(np.float32)
    b = (vol + 0.15 * rng.standard_normal(vol.shape)).astype(np.float32)
    r = np.sqrt(sum(g.astype(float) ** 2 for g in np.meshgrid(*([np.arange(D) - D // 2] * 3), indexing="ij")))
    mask = np.clip(0.5 + 0.5 * np.cos(np.pi * np.clip((r - 12) / 5, 0, 1)), 0, 1).astype(np.float32)
    paths = {"a": d / "half1.mrc", "b": d / "half2.mrc", "mask": d / "mask.mrc", "b_other_apix": d / "other.mrc",
             "small": d / "small.mrc"}
    write_map(paths["a"], a, APIX)
    write_map(paths["b"], b, APIX)
    write_map(paths["mask"], mask, APIX)
    write_map(paths["b_other_apix"], b, 1.6)
    write_map(paths["small"], b[:32, :32, :32], APIX)
    return paths, a.astype(np.float64), b.astype(np.float64), mask.astype(np.float64)


def interpolated_resolution(curve, threshold):
    i = next(i for i in range(1, len(curve)) if curve[i] < threshold)
    shell = i - 1 + (curve[i - 1] - threshold) / (curve[i - 1] - curve[i])
    return D * APIX / shell


def reported(outdir, label):
    text = (outdir / "run.log").read_text()
    return float(re.search(rf"FSC={label}: ([0-9.]+) Å", text).group(1))


def test_cli_unmasked_matches_numpy(cli, maps, tmp_path):
    paths, a, b, _ = maps
    out = tmp_path / "fsc"
    res = cli("fsc", paths["a"], paths["b"], "-o", out)
    assert res.code == 0, res
    want = numpy_fsc(a, b)
    assert want[1] > 0.9 and want[-1] < 0.143                     # the curve crosses both thresholds
    table = pd.read_csv(out / "fsc.csv")
    np.testing.assert_allclose(table["fsc_unmasked"].to_numpy(), want, atol=1e-4)
    np.testing.assert_allclose(table["resolution_A"].to_numpy()[1:], D * APIX / np.arange(1, D // 2 + 1))
    assert reported(out, "0.143") == pytest.approx(interpolated_resolution(want, 0.143), abs=0.006)
    assert reported(out, "0.5") == pytest.approx(interpolated_resolution(want, 0.5), abs=0.006)
    star = starfile.read(out / "fsc.star")
    assert list(star.columns) == ["rlnSpectralIndex", "rlnResolution", "rlnAngstromResolution",
                                  "rlnFourierShellCorrelationUnmaskedMaps"]
    assert star["rlnAngstromResolution"].iloc[0] == pytest.approx(999.0)
    assert star["rlnAngstromResolution"].iloc[4] == pytest.approx(D * APIX / 4)
    np.testing.assert_allclose(star["rlnResolution"].to_numpy()[1:], np.arange(1, D // 2 + 1) / (D * APIX), rtol=1e-5)
    np.testing.assert_allclose(star["rlnFourierShellCorrelationUnmaskedMaps"].to_numpy(), want, atol=1e-4)
    png = (out / "fsc.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000


def test_cli_masked_writes_relion_columns(cli, maps, tmp_path):
    paths, a, b, mask = maps
    out = tmp_path / "masked"
    res = cli("fsc", paths["a"], paths["b"], "--mask", paths["mask"], "-o", out, "--seed", "3")
    assert res.code == 0, res
    star = starfile.read(out / "fsc.star")
    assert list(star.columns) == [
        "rlnSpectralIndex", "rlnResolution", "rlnAngstromResolution", "rlnFourierShellCorrelationCorrected",
        "rlnFourierShellCorrelationUnmaskedMaps", "rlnFourierShellCorrelationMaskedMaps",
        "rlnCorrectedFourierShellCorrelationPhaseRandomizedMaskedMaps"]
    np.testing.assert_allclose(star["rlnFourierShellCorrelationUnmaskedMaps"].to_numpy(), numpy_fsc(a, b), atol=1e-4)
    masked = numpy_fsc(a * mask, b * mask)
    np.testing.assert_allclose(star["rlnFourierShellCorrelationMaskedMaps"].to_numpy(), masked, atol=1e-4)
    unmasked = numpy_fsc(a, b)
    n = int(np.nonzero(unmasked[1:] < 0.8)[0][0]) + 1
    corrected = star["rlnFourierShellCorrelationCorrected"].to_numpy()
    rand = star["rlnCorrectedFourierShellCorrelationPhaseRandomizedMaskedMaps"].to_numpy()
    np.testing.assert_allclose(corrected[:n + 2], masked[:n + 2], atol=1e-4)
    np.testing.assert_allclose(corrected[n + 2:], (masked[n + 2:] - rand[n + 2:]) / (1 - rand[n + 2:]), atol=1e-4)
    assert reported(out, "0.143") == pytest.approx(interpolated_resolution(corrected, 0.143), abs=0.006)
    table = pd.read_csv(out / "fsc.csv")
    np.testing.assert_allclose(table["fsc_corrected"].to_numpy(), corrected, atol=1e-6)


def test_pixel_size_mismatch_is_one_line_and_writes_nothing(cli, maps, tmp_path):
    paths, *_ = maps
    out = tmp_path / "never"
    res = cli("fsc", paths["a"], paths["b_other_apix"], "-o", out)
    assert res.code == 2
    lines = [line for line in res.err.splitlines() if line.startswith("cryovox:")]
    assert len(lines) == 1 and lines[0].startswith("cryovox: error: ")
    assert str(paths["a"]) in lines[0] and str(paths["b_other_apix"]) in lines[0]
    assert "1.5" in lines[0] and "1.6" in lines[0]
    assert not out.exists()
    # --apix overrides the headers
    res = cli("fsc", paths["a"], paths["b_other_apix"], "--apix", "2.0", "-o", out)
    assert res.code == 0, res
    star = starfile.read(out / "fsc.star")
    assert star["rlnAngstromResolution"].iloc[10] == pytest.approx(D * 2.0 / 10)


def test_box_mismatch_and_missing_file(cli, maps, tmp_path):
    paths, *_ = maps
    res = cli("fsc", paths["a"], paths["small"], "-o", tmp_path / "x")
    assert res.code == 2 and "same box" in res.err and not (tmp_path / "x").exists()
    res = cli("fsc", paths["a"], tmp_path / "missing.mrc", "-o", tmp_path / "y")
    assert res.code == 2 and "missing.mrc" in res.err and not (tmp_path / "y").exists()

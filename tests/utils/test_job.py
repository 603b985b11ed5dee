"""Output-directory handling, atomic writes, progress lines and checkpoints."""

from __future__ import annotations

import logging
import random

import numpy as np
import pytest
import torch
import yaml

from cryovox.errors import InputError
from cryovox.io.checkpoint import latest_checkpoint, load_checkpoint, rng_state, save_checkpoint, set_rng_state
from cryovox.utils.files import write_atomic
from cryovox.utils.job import job
from cryovox.utils.progress import Progress


def test_job_writes_log_command_and_config(tmp_path):
    out = tmp_path / "deep" / "run"          # parents are created (cryoDRGN crashed here)
    with job(out, config={"apix": 1.5, "path": tmp_path}, command="test") as run:
        logging.getLogger("cryovox").info("hello from the run")
        (run.dir / "result.txt").write_text("42")
    assert "hello from the run" in (out / "run.log").read_text()
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    assert cfg["command"] == "test" and cfg["options"]["apix"] == 1.5
    assert cfg["options"]["path"] == str(tmp_path)
    assert "cryovox" in (out / "command.txt").read_text()


def test_job_refuses_nonempty_outdir_without_force(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "keep.mrc").write_text("precious")
    with pytest.raises(InputError, match="--force"):
        with job(out):
            pass
    assert (out / "keep.mrc").read_text() == "precious"
    with job(out, force=True):
        pass
    assert (out / "keep.mrc").read_text() == "precious"


def test_job_removes_directory_it_created_on_input_error(tmp_path):
    out = tmp_path / "run"
    with pytest.raises(InputError):
        with job(out):
            raise InputError("x.mrc: bad")
    assert not out.exists()


def test_write_atomic_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "map.mrc"
    target.write_text("old")

    def boom(p):
        p.write_text("partial")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        write_atomic(target, boom)
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["map.mrc"]


def test_progress_logs_plain_lines_when_not_a_terminal():
    records: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record):
            records.append(record.getMessage())

    logger = logging.getLogger("cryovox")
    handler = Collect()
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        with Progress("backproject", total=4, interval=0.0) as p:
            for _ in range(4):
                p.advance(1, loss=0.5)
    finally:
        logger.removeHandler(handler)
    lines = [r for r in records if "backproject" in r]
    assert len(lines) == 4 and "4/4 (100%)" in lines[-1] and "loss=0.5" in lines[-1]


def test_checkpoint_resume_restores_rng_and_checks_kind(tmp_path):
    torch.manual_seed(1); np.random.seed(2); random.seed(3)
    state = rng_state()
    expected = (torch.rand(3), np.random.rand(3), random.random())
    save_checkpoint(tmp_path / "weights.2.pt", {"rng": state}, kind="sfbp")
    save_checkpoint(tmp_path / "weights.10.pt", {"rng": state}, kind="sfbp")
    torch.manual_seed(9); np.random.seed(9); random.seed(9)
    set_rng_state(load_checkpoint(tmp_path / "weights.2.pt", kind="sfbp")["rng"])
    got = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(expected[0], got[0]) and np.array_equal(expected[1], got[1]) and expected[2] == got[2]
    assert latest_checkpoint(tmp_path).name == "weights.10.pt"
    with pytest.raises(InputError, match="cryoformer"):
        load_checkpoint(tmp_path / "weights.2.pt", kind="cryoformer")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(InputError, match="junk.pt"):
        load_checkpoint(tmp_path / "junk.pt")

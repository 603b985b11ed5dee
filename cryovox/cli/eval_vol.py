"""``cryovox eval-vol``: decode volumes from a trained heterogeneity model."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional, Tuple

import typer

from cryovox.cli._app import app, force_option


@app.command("eval-vol")
def eval_vol_command(
    traindir: Path = typer.Argument(..., help="A train-hetero output directory."),
    output: Path = typer.Option(..., "-o", "--output", help="Output .mrc (one volume) or directory (vol_000.mrc …)."),
    z: Optional[List[str]] = typer.Option(None, "-z", help="A latent point as comma-separated numbers "
                                                           "(repeat -z for several volumes)."),
    zfile: Optional[Path] = typer.Option(None, "--zfile", help="Latent points, one per line (text, .npy or .pkl)."),
    traversal: Optional[Tuple[int, int, int]] = typer.Option(None, "--traversal", help="A B STEPS: STEPS maps on "
                                                             "the line from particle A's z to particle B's z "
                                                             "(0-based particle rows)."),
    epoch: Optional[int] = typer.Option(None, "--epoch", help="Epoch (numbered from 1 as in cryoDRGN; default: the last)."),
    lowpass: Optional[float] = typer.Option(None, "--lowpass", help="Low-pass the maps at this resolution (Å)."),
    flip: bool = typer.Option(False, "--flip", help="Flip the handedness (mirror along z)."),
    attention: Optional[List[int]] = typer.Option(None, "--attention-map", help="cryoformer: also write the "
                                                  "per-voxel attention of this query (0-based; repeat for several) "
                                                  "as <volume>_attn_qNN.mrc, for colouring in ChimeraX."),
    attention_head: Optional[int] = typer.Option(None, "--attention-head", help="cryoformer: attention of one "
                                                 "head (default: the mean over heads)."),
    device: str = typer.Option("cpu", "--device", help="auto | cpu | cuda | cuda:N."),
    force: bool = force_option(),
) -> None:
    """Decode maps (real space, gridding-corrected, the particles' pixel size, float32 MRC).

    Example: cryovox eval-vol hetero/ -z 0.5,-1.2,0,0,0,0,0,0 -o state.mrc
    """
    import logging

    from cryovox.pipelines.eval_vol import eval_vol
    from cryovox.utils.job import job, setup_logging
    from cryovox.utils.runtime import resolve_device

    dev = resolve_device(device)
    kwargs = dict(z=z or None, zfile=zfile, traversal_points=traversal, epoch=epoch, lowpass=lowpass, flip=flip,
                  device=dev, attention=attention or None, attention_head=attention_head)
    single = output.suffix == ".mrc"
    if single:
        if output.exists() and not force:
            from cryovox.errors import InputError

            raise InputError(f"{output}: exists (use --force to overwrite)")
        setup_logging()
        result = eval_vol(traindir, output, **kwargs)
        logging.getLogger("cryovox").info(result.summary())
        return
    config = dict(traindir=traindir, z=z, zfile=zfile, traversal=traversal, epoch=epoch, lowpass=lowpass, flip=flip,
                  device=device, attention=attention, attention_head=attention_head)
    with job(output, force=force, config=config, command="eval-vol") as run:
        result = eval_vol(traindir, run.dir, **kwargs)
        run.report(result.summary())

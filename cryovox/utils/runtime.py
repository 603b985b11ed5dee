"""Device choice and seeding (torch imported lazily)."""

from __future__ import annotations

import os
import random

from cryovox.errors import InputError


def resolve_device(spec: str = "auto"):
    """``auto`` → the first visible CUDA device if any, else CPU; ``cpu``; ``cuda`` or ``cuda:N``.

    Never touches CUDA_VISIBLE_DEVICES (SLURM sets it). Under torchrun, ``auto`` and ``cuda``
    pick the process's LOCAL_RANK device.
    """
    import torch

    spec = (spec or "auto").strip().lower()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if spec == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", local_rank % torch.cuda.device_count())
        return torch.device("cpu")
    if spec == "cpu":
        return torch.device("cpu")
    if spec.startswith("cuda"):
        if not torch.cuda.is_available():
            raise InputError(f"--device {spec}: CUDA is not available on this machine (use --device cpu)")
        if spec == "cuda":
            return torch.device("cuda", local_rank % torch.cuda.device_count())
        try:
            index = int(spec.split(":", 1)[1])
        except (IndexError, ValueError):
            raise InputError(f"--device {spec}: expected auto, cpu, cuda or cuda:N") from None
        if index >= torch.cuda.device_count():
            raise InputError(f"--device {spec}: only {torch.cuda.device_count()} CUDA device(s) visible")
        return torch.device("cuda", index)
    raise InputError(f"--device {spec}: expected auto, cpu, cuda or cuda:N")


def seed_everything(seed: int | None) -> None:
    """Seed Python, NumPy and torch (all devices). ``None`` leaves them unseeded."""
    if seed is None:
        return
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)

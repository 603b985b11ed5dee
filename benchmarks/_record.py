"""Append a benchmark's printed result to benchmarks/RESULTS.md with the date, the machine and the command."""

from __future__ import annotations

import os
import platform
import shlex
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"


def record(title: str, text: str, threads: int, extra: str = "") -> None:
    """``## {title} — date`` then the machine (with torch ``threads``; ``extra`` appended), the exact
    command line of this process and ``text`` in a code block."""
    import torch

    cmd = f"python benchmarks/{Path(sys.argv[0]).name} " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    machine = (f"{platform.node()}, {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
               f"torch {torch.__version__} ({threads} thread(s)){extra}")
    with open(RESULTS, "a") as f:
        f.write(f"\n## {title} — {time.strftime('%Y-%m-%d %H:%M')}\n\n"
                f"Machine: {machine}. Command: `{cmd}`.\n\n```\n{text}\n```\n")

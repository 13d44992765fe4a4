"""Shared by the benchmark scripts: machine description, a printed table, the JSON result."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import sys
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results"


def machine() -> dict:
    """The CPU (and whether it has AVX-512: AMD EPYCs here come with and without, and oneDNN's
    speed differs), cores, threads, GPU, Python and torch."""
    lines: list[str] = []
    with contextlib.suppress(OSError):
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    cpu = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")),
               "unknown")  # fmt: skip
    flags = next((set(line.split()) for line in lines if line.startswith("flags")), None)
    return {
        "cpu": cpu,
        "avx512": None if flags is None else "avx512f" in flags,  # None: not readable here
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
    }


def print_table(rows: list[dict]) -> None:
    columns = list(dict.fromkeys(c for r in rows for c in r))  # rows may lack a column: "-"
    widths = [max(len(str(c)), *(len(str(r.get(c, "-"))) for r in rows)) for c in columns]
    print("  ".join(str(c).ljust(w) for c, w in zip(columns, widths)))
    for row in rows:
        print("  ".join(str(row.get(c, "-")).ljust(w) for c, w in zip(columns, widths)))


def write_result(name: str, rows: list[dict], **extra) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    record = {"command": " ".join([Path(sys.executable).name, *sys.argv]), "machine": machine()}
    path.write_text(json.dumps({**record, **extra, "rows": rows}, indent=2) + "\n")
    print(f"wrote {path}")
    return path

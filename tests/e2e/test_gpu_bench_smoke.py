"""bench/gpu.sh --smoke (and XMR_GPU_SMOKE=1): every part runs, tiny, on the CPU, and the summary
table has a row for each measurement. The script starts its own local Ray, so this process's Ray
is paused meanwhile (``ray_local_paused``)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ROWS = (
    "| float32 GEMM, square 256^3 |",
    "| float32 GEMMs of one SDML step",
    "| SDML step, ModalityTrainer.train_epoch |",
    "| XMedia-shaped job, 1 epochs, 2 actors sharing the GPU",
    "| XMedia-shaped job, 1 epochs, one actor at a time",
    "| XMedia-shaped job, one at a time / shared |",
    "| branch step: mtfn (batch 8), bench/branch_speed.py |",
    "| branch step: vse (batch 8), bench/branch_speed.py |",
    "| population sweep, bench/population_speed.py |",
    "| data-parallel W=1 (1 CPU), bench/train_scale.py --curve |",
    "| data-parallel W=2 (2 CPU), bench/train_scale.py --curve |",
)


@pytest.mark.usefixtures("ray_local_paused")
def test_gpu_bench_smoke_prints_every_row():
    env = {**os.environ, "PYTHON": sys.executable, "XMR_GPU_SMOKE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(["bash", str(ROOT / "bench" / "gpu.sh")], cwd=ROOT / "tests", env=env,
                          capture_output=True, text=True, timeout=1500)
    out = proc.stdout
    assert proc.returncode == 0, out[-3000:] + proc.stderr[-3000:]
    assert "### bench/gpu.sh summary (smoke run on the CPU: numbers meaningless)" in out
    for row in ROWS:
        assert row in out, f"missing summary row {row!r} in:\n{out[-3000:]}"
    if (ROOT / "bench" / "population_speed.py").is_file():
        assert "| population sweep, bench/population_speed.py | measured |" in out


def test_gpu_bench_refuses_unknown_arguments():
    proc = subprocess.run(["bash", str(ROOT / "bench" / "gpu.sh"), "--fast"], capture_output=True,
                          text=True, timeout=60, env={**os.environ, "PYTHON": sys.executable})
    assert proc.returncode == 2
    assert proc.stderr.strip() == "bench/gpu.sh: unknown argument --fast (only --smoke)"

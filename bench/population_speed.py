"""Population training speed: N SDML configurations as one population vs N separate trainings.

    .venv/bin/python bench/population_speed.py                  # full: ~5 minutes on 2 quiet cores
    .venv/bin/python bench/population_speed.py --modality audio # the 29-d network, N up to 64
    .venv/bin/python bench/population_speed.py --smoke          # tiny shapes, seconds (numbers meaningless)
    .venv/bin/python bench/population_speed.py --device cuda    # on a GPU (bench/gpu.sh calls it)

One XMedia-shaped modality (default the 4096-d image network of bench/train_speed.py: encoder
4096-1024-1024-512 and decoder back, batch 100) on SYNTHETIC features (speed does not depend on
content). The train split is cut to ``--steps`` batches so that an epoch of 64 configurations stays
short; cost per epoch is proportional to the steps, so the ratios are those of a full run.

Measured in one run:

1. The step-GEMM rate (bench/train_speed.py's method: every GEMM of one training step back to back)
   and, right before each population, one ModalityTrainer epoch (the cost of "one training", per
   epoch): each ratio pairs two measurements taken under the same load.
2. For N = 1, 2, 4, ..., 64: a population of N configurations (a λ x lr grid, one seed, as a sweep
   of one modality would have) through PopulationTrainer.train_epoch (steps + validation): seconds
   per epoch, that / one training's epoch ("cost in trainings"), that / N ("vs N separate"), and
   model FLOP/s = N x 6 x parameters x batch x steps / seconds against the step-GEMM rate.
   A size whose parameters, gradients, Adam state and selected copy would not fit in half of the
   available memory is skipped and said so.
3. The two batched kernels, ``bmm`` (baddbmm over stacked weights) and ``vmap``
   (torch.vmap over torch.func.functional_call of the model), at N = 2 and 4.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from _common import machine_info, print_info, print_table
from train_speed import step_gemm_rate

from scalable_xmr.config import SDMLConfig
from scalable_xmr.data.modality.dataset import write_dataset
from scalable_xmr.data.modality.info import DatasetInfo, ModalityInfo
from scalable_xmr.data.modality.synthetic import CLASS_NAMES, N_CLASSES, SHAPES, synthetic_modality
from scalable_xmr.sdml.modality_spec import ModalitySpec
from scalable_xmr.sdml.population import PopulationTrainer
from scalable_xmr.sdml.trainer import ModalityTrainer
from scalable_xmr.store.projection import create_projection, save_projection

LAMS = (0.1, 0.3, 0.5, 0.7, 0.9, 0.2, 0.4, 0.6)
LRS = (1e-4, 2e-4, 5e-5, 3e-4, 1e-5, 5e-4, 2e-5, 1e-3)


def make_data(out: Path, modality: str, scale: str, steps: int, batch: int) -> str:
    """One synthetic XMedia-shaped modality with ``steps`` train batches, 100 val, 20 test rows."""
    ids, splits, labels, features = synthetic_modality(modality, scale, seed=0)
    n_val = min(100, int((splits == "val").sum()))
    keep = np.concatenate([np.flatnonzero(splits == "train")[: steps * batch],
                           np.flatnonzero(splits == "val")[:n_val], np.flatnonzero(splits == "test")[:20]])
    info = DatasetInfo(f"population-bench-{modality}", N_CLASSES, False, CLASS_NAMES,
                       {modality: ModalityInfo(modality, features.shape[1])})
    write_dataset(str(out), info, {modality: (ids[keep], splits[keep], labels[keep], features[keep])})
    return str(out)


def grid(base: SDMLConfig, n: int) -> list[SDMLConfig]:
    """n configurations of a λ x lr grid (one seed): what a sweep of one modality trains."""
    pairs = list(itertools.product(LAMS, LRS))[:n]
    return [dataclasses.replace(base, lam=lam, lr=lr) for lam, lr in pairs]


def epoch_seconds(train_epoch, repeats: int) -> tuple[float, float]:
    """Median (wall, process CPU) seconds of ``train_epoch()`` after one warm-up epoch (each ends
    in a host sync). CPU seconds count every thread of this process: on a CPU shared with other
    work they move far less than wall time, so the ratios below are given on both."""
    train_epoch()
    wall, cpu = [], []
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        train_epoch()
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    return statistics.median(wall), statistics.median(cpu)


def fits(n: int, n_params: int, batch: int, width: int) -> tuple[bool, float]:
    """Whether N slots fit in half the available memory: params, grads, Adam m and v, the
    selected copy (5 x 4 bytes a parameter) and the batch activations."""
    need = n * (20 * n_params + 4 * 8 * batch * width)
    try:  # MemAvailable: free memory plus what the kernel can reclaim (page cache)
        with open("/proc/meminfo") as f:
            avail = next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:"))
    except (OSError, StopIteration):  # pragma: no cover - not Linux
        return True, need / 2**30
    if torch.cuda.is_available() and torch.device(DEVICE).type == "cuda":
        avail = torch.cuda.mem_get_info()[0]
    return need < avail / 2, need / 2**30


DEVICE = "cpu"


def main() -> None:
    global DEVICE
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--smoke", action="store_true", help="tiny shapes and sizes: runs in seconds")
    p.add_argument("--device", default="cpu", help="cpu, cuda or auto (default cpu)")
    p.add_argument("--modality", default="image", help="XMedia modality whose shape is used (image)")
    p.add_argument("--sizes", default="1,2,4,8,16,32,64", help="population sizes N (comma-separated)")
    p.add_argument("--steps", type=int, default=4, help="train batches per epoch (default 4)")
    p.add_argument("--repeats", type=int, default=2, help="timed epochs per measurement (median)")
    p.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)), help="torch threads")
    args = p.parse_args()
    DEVICE = "cuda" if args.device == "auto" and torch.cuda.is_available() else args.device
    if DEVICE == "auto":
        DEVICE = "cpu"
    torch.set_num_threads(args.threads)
    scale, sizes = ("small", [1, 2, 4]) if args.smoke else ("full", [int(s) for s in args.sizes.split(",")])
    base = (SDMLConfig(dim=32, hidden=64, batch_size=20, epochs=10**6) if args.smoke
            else SDMLConfig(epochs=10**6))  # epochs: never reached, we call train_epoch ourselves
    print_info("Machine", [*machine_info(torch.get_num_threads()), ("device", DEVICE),
                           ("mode", "SMOKE (tiny, numbers meaningless)" if args.smoke else "full")])

    with tempfile.TemporaryDirectory(prefix="population-bench-") as tmp:
        data = make_data(Path(tmp) / "data", args.modality, scale, args.steps, base.batch_size)
        run = Path(tmp) / "run"
        run.mkdir()
        digest = save_projection(run / "projection.arrow", create_projection(base.dim, N_CLASSES, 0))

        def job(cfg: SDMLConfig) -> ModalitySpec:
            return ModalitySpec(run_dir=str(run), modality=args.modality, config=cfg, dataset_uri=data,
                               n_classes=N_CLASSES, projection_sha256=digest, device=DEVICE,
                               eval_splits=("val",))

        single = ModalityTrainer(job(dataclasses.replace(base, lam=0.5, lr=1e-4)))  # "one training"
        dim = SHAPES[scale][args.modality][0]
        widths = [dim, base.hidden, base.hidden, base.dim, base.hidden, base.hidden, dim]
        n_params = sum(a * b + b for a, b in itertools.pairwise(widths))
        flops_step = 6.0 * n_params * base.batch_size
        gemm_rate = step_gemm_rate(widths, base.batch_size, 3)[0] if DEVICE == "cpu" else float("nan")
        rows = []
        for n in sizes:
            ok, gib = fits(n, n_params, base.batch_size, max(widths))
            if not ok:
                rows.append((n, f"skipped: needs ~{gib:.1f} GiB, over half the free memory", *[""] * 7))
                continue
            # Paired: one training's epoch is timed right before each population, so that the
            # ratio compares two measurements taken under the same load.
            one, one_cpu = epoch_seconds(single.train_epoch, args.repeats)
            pop = PopulationTrainer(job(base), grid(base, n))
            wall, cpu = epoch_seconds(pop.train_epoch, args.repeats)
            del pop
            rate = n * flops_step * args.steps / wall / 1e9
            rows.append((n, f"{wall:.3f}", f"{cpu:.3f}", f"{one:.3f} / {one_cpu:.3f}", f"{wall / one:.2f}",
                         f"{cpu / one_cpu:.2f}", f"{cpu / (n * one_cpu):.2f}", f"{rate:.1f}",
                         f"{rate / gemm_rate:.0%}" if gemm_rate == gemm_rate else "n/a"))
            print(f"N={n}: " + " | ".join(rows[-1][1:]), flush=True)
        print_table(
            f"Population of N {args.modality}-shaped SDML configurations ({n_params:,} parameters each, "
            f"batch {base.batch_size}, {args.steps} steps + validation per epoch, {DEVICE}); step-GEMM "
            f"rate {gemm_rate:.1f} GFLOP/s",
            ("N", "s/epoch", "CPU s/epoch", "one training s / CPU s", "cost in trainings (wall)",
             "cost in trainings (CPU)", "vs N separate (CPU)", "model GFLOP/s (wall)", "% of GEMM rate"),
            rows)

        kernel_rows = []
        for n in [s for s in sizes if s in (2, 4)] or sizes[:1]:
            times = {}
            for kernel in ("bmm", "vmap"):
                pop = PopulationTrainer(job(base), grid(base, n), kernel=kernel)
                times[kernel] = epoch_seconds(pop.train_epoch, args.repeats)[1]
                del pop
            kernel_rows.append((n, f"{times['bmm']:.3f}", f"{times['vmap']:.3f}",
                                f"{times['vmap'] / times['bmm']:.2f}"))
        print_table("Batched kernels: CPU s/epoch", ("N", "bmm", "vmap", "vmap / bmm"), kernel_rows)


if __name__ == "__main__":
    main()

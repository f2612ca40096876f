"""What one modality pays to train through Ray Train (TorchTrainer, W workers) instead of one process,
and how rows/s scale with W.

    .venv/bin/python bench/train_scale.py            # about 7 minutes on 2 quiet cores
    .venv/bin/python bench/train_scale.py --quick    # tiny data, a smoke test (numbers meaningless)

One modality of 4000 train / 500 val / 500 test rows of 256 random features, 20 classes (speed
does not depend on content), the default network (256-1024-1024-512 and back), global batch 100,
8 epochs, one torch thread per process, on a local Ray of 4 *logical* CPUs (the machine may have
fewer cores: W = 4 then shares them, which the table's core count says). The paths:

- in process: ``ModalityTrainer.fit`` in this process (no Ray; after a 1-epoch warm-up);
- Ray task: the same call in a Ray task of 1 CPU (what the SDML job's actor does, minus its hub);
- Train W: ``train_modality_parallel`` with W workers of 1 CPU each (gloo over loopback), the same
  global batch, our controller poll of 0.25 s.

Each round runs every path once, in this order; ``--rounds`` rounds (default 3) and the medians
over rounds are printed, and every ratio is taken within a round (the same load for both sides)
before its median. Per path: wall = the driver's call, train = the trainer's own ``train_seconds``
(in the worker: the epochs, validation, checkpoints, the outputs, Train's report waits), per epoch
= train / 8, per job = wall - train (starting the task or the workers and process group, reading
the data, tearing down), rows/s = 4000 x 8 / train. Train-vs-actor = Train W=1 against the Ray
task (issue #26's bar for one code path: <= 5 % per epoch and <= 10 s per job); scaling
efficiency = rows/s(W) / (W x rows/s(W=1)).

The W curve (``--curve``, what bench/gpu.sh runs on a GPU machine):

    .venv/bin/python bench/train_scale.py --curve --device cuda --json scale.json
    .venv/bin/python bench/train_scale.py --curve --device cpu --quick   # smoke: W = 1, 2 on CPUs

trains one modality with W = 1, 2, ..., N Ray Train workers (N: every GPU torch sees; 2 CPU
workers with ``--device cpu``), one GPU each, the same job each time (100,000 train rows of 4096
features, the default network, global batch 1024 split across the workers: strong scaling), and
gives rows/s (train rows x epochs / ``train_seconds``, start-up excluded) and the scaling
efficiency rows/s(W) / (W x rows/s(1)).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from _common import machine_info, print_info, print_table

os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
os.environ.setdefault("TQDM_DISABLE", "1")

from scalable_xmr.config import SDMLConfig  # noqa: E402
from scalable_xmr.data.modality.dataset import write_dataset  # noqa: E402
from scalable_xmr.data.modality.info import DatasetInfo, ModalityInfo  # noqa: E402
from scalable_xmr.sdml.data_parallel import train_modality_parallel  # noqa: E402
from scalable_xmr.sdml.modality_spec import ModalitySpec  # noqa: E402
from scalable_xmr.sdml.trainer import ModalityTrainer, TrainResult  # noqa: E402
from scalable_xmr.store.projection import create_projection, save_projection  # noqa: E402

MODALITY, CLASSES = "image", 20
EPOCHS = (2, 6)


def make_data(root: Path, n_train: int, dim: int) -> str:
    rng = np.random.default_rng(0)
    sizes = {"train": n_train, "val": n_train // 8, "test": n_train // 8}
    splits = np.concatenate([[s] * n for s, n in sizes.items()])
    n = len(splits)
    info = DatasetInfo("scale", CLASSES, False, [f"c{i}" for i in range(CLASSES)],
                       {MODALITY: ModalityInfo(MODALITY, dim)})
    tables = {MODALITY: ([f"r{i}" for i in range(n)], splits, rng.integers(0, CLASSES, n),
                         rng.standard_normal((n, dim), dtype=np.float32))}
    write_dataset(str(root / "data"), info, tables)
    return str(root / "data")


def make_job(root: Path, data: str, cfg: SDMLConfig) -> ModalitySpec:
    run = root / "run"
    run.mkdir(parents=True)
    digest = save_projection(run / "projection.arrow", create_projection(cfg.dim, CLASSES, 0))
    return ModalitySpec(run_dir=str(run), modality=MODALITY, config=cfg, dataset_uri=data, n_classes=CLASSES,
                       projection_sha256=digest, num_threads=1)


def fit_in_process(job: ModalitySpec) -> TrainResult:
    torch.set_num_threads(1)
    return ModalityTrainer(job).fit()


def timed(tag: str, path, root: Path, data: str, cfg: SDMLConfig) -> dict[int, tuple[float, TrainResult]]:
    out = {}
    for epochs in EPOCHS:
        job = make_job(root / f"{tag}-{epochs}", data, SDMLConfig(**{**cfg.to_dict(), "epochs": epochs}))
        start = time.perf_counter()
        result = path(job)
        out[epochs] = (time.perf_counter() - start, result)
        print(f"  {tag}: {epochs} epochs in {out[epochs][0]:.1f} s", flush=True)
    return out


def curve(args: argparse.Namespace) -> None:
    """rows/s and scaling efficiency of W = 1..N workers, one GPU (or CPU) each (``--curve``)."""
    import json

    import ray

    gpu = args.device == "cuda"
    if gpu and not torch.cuda.is_available():
        raise SystemExit("bench/train_scale.py: --device cuda but torch sees no GPU")
    n_max = args.max_workers or (torch.cuda.device_count() if gpu else 2)
    n_train, dim, batch, epochs = (400, 32, 40, 3) if args.quick else (100_000, 4096, 1024, 5)
    cfg = SDMLConfig(batch_size=batch, checkpoint_every=epochs, lr=1e-4, epochs=epochs,
                     **({"dim": 32, "hidden": 64} if args.quick else {}))
    print_info("Machine", machine_info(threads=1))
    root = Path(tempfile.mkdtemp(prefix="xmr-train-curve-"))
    data = make_data(root, n_train, dim)
    ray.init(address="local", include_dashboard=False, log_to_driver=False, logging_level="ERROR",
             **({} if gpu else {"num_cpus": n_max}))
    per_worker = {"CPU": 1, "GPU": 1} if gpu else {"CPU": 1}
    points = []
    for w in range(1, n_max + 1):
        result = train_modality_parallel(make_job(root / f"w{w}", data, cfg), w, use_gpu=gpu,
                                         resources_per_worker=per_worker, poll_interval_s=0.05)
        rate = n_train * epochs / result.train_seconds
        points.append({"workers": w, "rows_per_s": rate, "efficiency": rate / (w * points[0]["rows_per_s"])
                       if points else 1.0, "device": result.device})
        print(f"  W={w}: {rate:,.0f} rows/s", flush=True)
    ray.shutdown()
    print_table(f"One modality ({n_train} x {dim}, global batch {batch}, {epochs} epochs) on W workers, "
                f"one {'GPU' if gpu else 'CPU'} each",
                ["W", "rows/s", "efficiency"],
                [(p["workers"], f"{p['rows_per_s']:,.0f}", f"{100 * p['efficiency']:.0f}%") for p in points])
    if args.json:
        Path(args.json).write_text(json.dumps({"device": args.device, "smoke": args.quick, "rows": n_train,
                                               "dim": dim, "batch": batch, "epochs": epochs,
                                               "points": points}, indent=1))


def _median(values) -> float:
    return float(np.median(list(values)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny data and network (a smoke test)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of every path (medians over them)")
    parser.add_argument("--curve", action="store_true", help="the W = 1..N curve (bench/gpu.sh)")
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda", help="--curve: workers' device")
    parser.add_argument("--max-workers", type=int, help="--curve: N (default: the GPUs torch sees; 2 CPUs)")
    parser.add_argument("--json", help="--curve: write the points here")
    args = parser.parse_args()
    if args.curve:
        curve(args)
        return
    import ray

    n_train, dim, epochs = (400, 32, 2) if args.quick else (4000, 256, 8)
    cfg = SDMLConfig(batch_size=100, checkpoint_every=epochs, lr=1e-4, epochs=epochs,
                     **({"dim": 32, "hidden": 64} if args.quick else {}))
    print_info("Machine", machine_info(threads=1))
    root = Path(tempfile.mkdtemp(prefix="xmr-train-scale-"))
    data = make_data(root, n_train, dim)
    ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    task = ray.remote(num_cpus=1)(fit_in_process)

    def train(workers: int):
        return lambda job: train_modality_parallel(job, workers, resources_per_worker={"CPU": 1},
                                                   poll_interval_s=0.25)

    paths = {"in process": fit_in_process, "Ray task": lambda job: ray.get(task.remote(job)),
             "Train W=1": train(1), "Train W=2": train(2), "Train W=4": train(4)}
    fit_in_process(make_job(root / "warm-up", data, SDMLConfig(**{**cfg.to_dict(), "epochs": 1})))
    runs: dict[str, list[tuple[float, float]]] = {tag: [] for tag in paths}  # (wall, train) a round
    for r in range(args.rounds):
        for tag, path in paths.items():
            job = make_job(root / f"r{r}-{tag.replace(' ', '-')}", data, cfg)
            start = time.perf_counter()
            result = path(job)
            runs[tag].append((time.perf_counter() - start, result.train_seconds))
            wall = runs[tag][-1][0]
            print(f"  round {r + 1}: {tag}: {wall:.1f} s wall, {result.train_seconds:.1f} s train",
                  flush=True)
    ray.shutdown()
    rate = {tag: [n_train * epochs / train for _, train in v] for tag, v in runs.items()}
    print_table(f"One modality ({n_train} x {dim}, global batch 100, {epochs} epochs), medians of "
                f"{args.rounds} rounds", ["path", "wall s", "train s", "per epoch s", "per job s", "rows/s"],
                [(tag, f"{_median(w for w, _ in v):.1f}", f"{_median(t for _, t in v):.1f}",
                  f"{_median(t / epochs for _, t in v):.2f}", f"{_median(w - t for w, t in v):.1f}",
                  f"{_median(rate[tag]):,.0f}") for tag, v in runs.items()])
    pairs = list(zip(runs["Ray task"], runs["Train W=1"], strict=True))
    ratios = [("Train W=1 vs Ray task: per epoch", f"{_median(b[1] / a[1] for a, b in pairs):.3f}x"),
              ("Train W=1 vs Ray task: per job",
               f"{_median((b[0] - b[1]) - (a[0] - a[1]) for a, b in pairs):+.1f} s")]
    for w in (2, 4):
        eff = _median(b / (w * a) for a, b in zip(rate["Train W=1"], rate[f"Train W={w}"], strict=True))
        ratios.append((f"scaling efficiency W={w} (rows/s / {w} x W=1's)", f"{100 * eff:.0f}%"))
    print_table("Ratios (each taken within a round, then the median)", ["", ""], ratios)


if __name__ == "__main__":
    main()

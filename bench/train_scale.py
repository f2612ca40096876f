"""What one modality pays to train through Ray Train (TorchTrainer, W workers) instead of one process.

    .venv/bin/python bench/train_scale.py            # about 6 minutes on 2 quiet cores
    .venv/bin/python bench/train_scale.py --quick    # tiny data, a smoke test (numbers meaningless)

One modality of 4000 train / 500 val / 500 test rows of 256 random features, 20 classes (speed
does not depend on content), the default network (256-1024-1024-512 and back), batch 100, one torch
thread per process, on a local Ray with 2 CPUs. Each path trains the same job for 2 and for 6
epochs; the wall times t(2), t(6) of the driver's call give

    per epoch = (t(6) - t(2)) / 4          per job = t(2) - 2 x per epoch

(per job: everything that does not grow with the epochs -- starting workers and process group,
reading the data, writing model.pt and the embeddings, tearing down). The paths:

- in process: ``ModalityTrainer.fit`` in this process (no Ray; after a 1-epoch warm-up);
- Ray task: the same call in a Ray task of 1 CPU (what the SDML job's actor does, minus its hub);
- Train W=1: ``train_modality_parallel`` with one worker of 1 CPU, Ray's default controller poll
  (2 s) and ours (0.25 s): Train V2 takes one report per worker per poll, and this trainer reports
  every epoch, so with epochs shorter than the poll the run waits for its reports at the end;
- Train W=2: two workers of 1 CPU each (gloo over loopback), the same global batch of 100.

rows/s = 4000 train rows x epochs / the trainer's own ``train_seconds`` (inside the worker, report
waits included). Medians are not taken (one run each): the load average printed at the top says
how quiet the machine was.

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny data and network (a smoke test)")
    parser.add_argument("--curve", action="store_true", help="the W = 1..N curve (bench/gpu.sh)")
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda", help="--curve: workers' device")
    parser.add_argument("--max-workers", type=int, help="--curve: N (default: the GPUs torch sees; 2 CPUs)")
    parser.add_argument("--json", help="--curve: write the points here")
    args = parser.parse_args()
    if args.curve:
        curve(args)
        return
    import ray

    n_train, dim = (400, 32) if args.quick else (4000, 256)
    cfg = SDMLConfig(batch_size=100, checkpoint_every=5, lr=1e-4,
                     **({"dim": 32, "hidden": 64} if args.quick else {}))
    print_info("Machine", machine_info(threads=1))
    root = Path(tempfile.mkdtemp(prefix="xmr-train-scale-"))
    data = make_data(root, n_train, dim)
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    task = ray.remote(num_cpus=1)(fit_in_process)

    def train(workers: int, poll: float):
        return lambda job: train_modality_parallel(job, workers, resources_per_worker={"CPU": 1},
                                                   poll_interval_s=poll)

    paths = {
        "in process (ModalityTrainer.fit)": lambda job: fit_in_process(job),
        "Ray task, 1 CPU": lambda job: ray.get(task.remote(job)),
        "Train W=1, poll 2 s (Ray's default)": train(1, 2.0),
        "Train W=1, poll 0.25 s": train(1, 0.25),
        "Train W=2, poll 0.25 s": train(2, 0.25),
    }
    fit_in_process(make_job(root / "warm-up", data, SDMLConfig(**{**cfg.to_dict(), "epochs": 1})))
    rows = []
    for i, (tag, path) in enumerate(paths.items()):
        times = timed(f"p{i}", path, root, data, cfg)
        (t2, _), (t6, r6) = times[EPOCHS[0]], times[EPOCHS[1]]
        per_epoch = (t6 - t2) / (EPOCHS[1] - EPOCHS[0])
        per_job = t2 - EPOCHS[0] * per_epoch
        rows.append((tag, f"{t2:.1f}", f"{t6:.1f}", f"{per_epoch:.2f}", f"{per_job:.1f}",
                     f"{n_train * EPOCHS[1] / r6.train_seconds:,.0f}"))
    ray.shutdown()
    print_table(f"One modality ({n_train} x {dim}, batch 100): wall time of the driver's call, s",
                ["path", f"t({EPOCHS[0]})", f"t({EPOCHS[1]})", "per epoch", "per job",
                 "rows/s (train_seconds)"], rows)


if __name__ == "__main__":
    main()

"""One modality streamed by Ray Data (``xmr train --stream``) against held in memory: speed,
peak memory of the whole job, and test mAP over seeds.

    .venv/bin/python bench/train_stream.py                          # speed + memory, 20,000 x 256
    .venv/bin/python bench/train_stream.py --quality --seeds 3      # test mAP, 4,000 x 64, 3 seeds
    .venv/bin/python bench/train_stream.py --rows 2100000 --dim 1024 --epochs 1 --hidden 64 --only actor
        # the issue's size: float32 features of 2.1M x 1024 x 4 B = 8.6 GB (+ val/test = 10.8 GB)

Data (synthetic, written by a ParquetWriter a row group at a time, never whole in memory): 20
classes, a row = its class centre (N(0, 1) per feature, scaled by ``--signal``) + N(0, 1) noise,
one label; train / val / test = rows, rows / 8, rows / 8, in that order in one file (as
``write_dataset`` lays a table out). The default network (dim-1024-1024-512 and back), batch 100,
one torch thread a worker, a local Ray of 2 CPUs. Paths (memory and actor by default):

- memory: ``train_modality_parallel`` (``TorchTrainer``) with W workers of 1 CPU, each holding the
  modality;
- actor: W = 1 streamed as ``xmr train --stream`` runs it, in the modality's actor of 1 CPU
  (``train_stream_in_actor``) with Ray Data ``IngestLimits()`` (1 CPU, 256 MiB of object store, 64 MiB
  shuffle buffer);
- stream: ``train_modality_streaming`` (``TorchTrainer``), W workers of 1 CPU, the same limits (what
  ``--stream`` runs with W > 1).

rows/s = train rows x epochs / the trainer's ``train_seconds`` (inside the workers: the epochs,
validation and reports; not start-up, not the driver's standardisation pass, which ``wall`` has).
peak PSS = the largest sum, sampled every 0.25 s, of the proportional set size
(``/proc/<pid>/smaps_rollup``) of this process and all its descendants: Ray's GCS, raylet, every
worker, Ray Data's tasks and the object store's pages they touched. test mAP = the test split's
embeddings against the 20 class anchors (P's columns), the modality alone.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import pyarrow as pa
import pyarrow.parquet as pq
from _common import machine_info, print_info, print_table
from train_scale import CLASSES, MODALITY, make_job  # the same one-modality job

os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
os.environ.setdefault("TQDM_DISABLE", "1")

from scalable_xmr.config import IngestLimits, SDMLConfig  # noqa: E402
from scalable_xmr.data.modality.dataset import write_dataset  # noqa: E402
from scalable_xmr.data.modality.info import DatasetInfo, ModalityInfo  # noqa: E402
from scalable_xmr.functional.retrieval.average_precision import mean_average_precision  # noqa: E402
from scalable_xmr.sdml.data_parallel import train_modality_parallel  # noqa: E402
from scalable_xmr.sdml.streaming import train_modality_streaming  # noqa: E402
from scalable_xmr.store.projection import create_projection  # noqa: E402
from scalable_xmr.store.run_store import RunStore  # noqa: E402

GROUP_BYTES = 64 << 20  # features per row group


def make_data(root: Path, n_train: int, dim: int, signal: float, shards: bool = False) -> str:
    """The dataset, written a row group at a time (bounded memory at any size); ``shards``: the
    table as a directory of files of one row group each (docs/data.md allows either)."""
    out = root / "data"
    info = DatasetInfo("stream-bench", CLASSES, False, [f"c{i}" for i in range(CLASSES)],
                       {MODALITY: ModalityInfo(MODALITY, dim)})
    rng = np.random.default_rng(0)
    tiny = rng.standard_normal((3, dim), dtype=np.float32)
    write_dataset(str(out), info, {MODALITY: (["a", "b", "c"], ["train", "val", "test"], [0, 1, 2], tiny)})
    path = out / f"{MODALITY}.parquet"
    schema = pq.read_schema(path)
    centres = rng.standard_normal((CLASSES, dim), dtype=np.float32) * signal
    step = max(1, GROUP_BYTES // (4 * dim))
    groups = []
    for split, n in (("train", n_train), ("val", n_train // 8), ("test", n_train // 8)):
        groups += [(split, lo, min(step, n - lo)) for lo in range(0, n, step)]

    def group(split: str, lo: int, k: int) -> pa.Table:
        labels = rng.integers(0, CLASSES, k)
        x = centres[labels] + rng.standard_normal((k, dim), dtype=np.float32)
        return pa.table({"id": [f"{split}{lo + i}" for i in range(k)], "split": [split] * k,
                         "labels": pa.array(labels[:, None].tolist(), pa.list_(pa.int32())),
                         "features": pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), dim)},
                        schema=schema)

    os.remove(path)
    if shards:
        path.mkdir()
        for i, g in enumerate(groups):
            pq.write_table(group(*g), path / f"part-{i:05d}.parquet")
    else:
        with pq.ParquetWriter(str(path), schema) as writer:
            for g in groups:
                writer.write_table(group(*g))
    return str(out)


class PeakPss:
    """The largest total PSS of this process and its descendants while the block runs."""

    def __init__(self, interval_s: float = 0.25):
        self.interval_s, self.peak, self._stop = interval_s, 0, threading.Event()
        self.at_peak: dict[str, int] = {}  # bytes by process kind at the peak

    @staticmethod
    def by_process() -> dict[str, int]:
        me = psutil.Process()
        out: dict[str, int] = {}
        for p in [me, *me.children(recursive=True)]:
            try:
                with open(f"/proc/{p.pid}/smaps_rollup") as f:
                    pss = next(int(ln.split()[1]) for ln in f if ln.startswith("Pss:")) * 1024
                name = "driver" if p.pid == me.pid else p.name().removeprefix("ray::")[:28]
            except (OSError, StopIteration, psutil.Error):
                continue
            out[name] = out.get(name, 0) + pss
        return out

    def _run(self) -> None:
        while not self._stop.is_set():
            parts = self.by_process()
            if sum(parts.values()) > self.peak:
                self.peak, self.at_peak = sum(parts.values()), parts
            self._stop.wait(self.interval_s)

    def __enter__(self) -> PeakPss:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def run_path(path: str, root: Path, data: str, cfg: SDMLConfig, workers: int) -> dict:
    job = make_job(root, data, cfg)
    kwargs = {"resources_per_worker": {"CPU": 1}, "start_timeout_s": 120}
    start = time.perf_counter()
    with PeakPss() as pss:
        if path == "memory":
            result = train_modality_parallel(job, workers, **kwargs)
        elif path == "actor":  # W = 1 streamed in the modality's actor (no Ray Train), as `xmr train` runs it
            from scalable_xmr.distributed.actors import ActorResources, ActorTask, run_tasks
            from scalable_xmr.sdml.streaming import stream_inputs, train_stream_in_actor

            limits = IngestLimits()
            task = ActorTask(MODALITY, train_stream_in_actor, (job, stream_inputs(job, limits), limits))
            result = run_tasks([task], ActorResources(cpus=1), show_progress=False).value()[MODALITY]
        else:
            result = train_modality_streaming(job, workers, IngestLimits(), **kwargs)
    wall = time.perf_counter() - start
    _, labels, emb = RunStore(job.run_dir).read_embeddings(MODALITY, "test", CLASSES)
    anchors = np.array(create_projection(cfg.dim, CLASSES, 0)).T  # (c, d)
    test_map = mean_average_precision(emb, anchors, labels, np.arange(CLASSES))
    top = sorted(pss.at_peak.items(), key=lambda kv: -kv[1])
    print(f"  {path}: at the peak, PSS by process (MiB): "
          + ", ".join(f"{k} {v / 2**20:.0f}" for k, v in top), flush=True)
    return {"wall": wall, "train_seconds": result.train_seconds, "pss": pss.peak, "map": test_map,
            "epochs": result.epochs}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=None, help="train rows (default 20,000; --quality 4,000)")
    parser.add_argument("--dim", type=int, default=None, help="features (default 256; --quality 64)")
    parser.add_argument("--epochs", type=int, default=None, help="epochs (default 2; --quality 10)")
    parser.add_argument("--workers", type=int, default=1, help="W of both paths (default 1)")
    parser.add_argument("--hidden", type=int, default=1024, help="hidden width (1024: the default network)")
    parser.add_argument("--signal", type=float, default=0.3, help="class-centre scale (harder when lower)")
    parser.add_argument("--quality", action="store_true", help="test mAP of both paths over --seeds")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--only", choices=("memory", "stream", "actor"),
                        help="one path (a table that does not fit); actor: W = 1 streamed in an actor")
    parser.add_argument("--shards", action="store_true", help="the table as a directory of 64 MB files")
    parser.add_argument("--keep-data", action="store_true", help="keep the generated table")
    args = parser.parse_args()
    import ray

    rows = args.rows or (4000 if args.quality else 20000)
    dim = args.dim or (64 if args.quality else 256)
    epochs = args.epochs or (10 if args.quality else 2)
    print_info("Machine", machine_info(threads=1))
    root = Path(tempfile.mkdtemp(prefix="xmr-train-stream-", dir=os.environ.get("BENCH_TMP")))
    start = time.perf_counter()
    data = make_data(root, rows, dim, args.signal, args.shards)
    table_gb = sum(f.stat().st_size for f in Path(data).rglob("*.parquet") if f.is_file()) / 1e9
    print(f"data: {rows:,} train rows x {dim} (float32 train features {rows * dim * 4 / 1e9:.2f} GB; "
          f"Parquet {table_gb:.2f} GB) written in {time.perf_counter() - start:.0f} s", flush=True)
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    paths = [args.only] if args.only else ["memory", "actor"]
    if "actor" in paths and args.workers != 1:
        parser.error("the actor path is W = 1 (--workers 1); --only memory or stream for W > 1")
    seeds = range(args.seeds) if args.quality else [0]
    results: dict[str, list[dict]] = {p: [] for p in paths}
    try:
        for seed in seeds:
            cfg = SDMLConfig(batch_size=100, epochs=epochs, checkpoint_every=epochs, lr=1e-4, seed=seed,
                             hidden=args.hidden)
            for path in paths:
                r = run_path(path, root / f"{path}-{seed}", data, cfg, args.workers)
                results[path].append(r)
                print(f"  {path} seed {seed}: {r}", flush=True)
    finally:
        ray.shutdown()
        if not args.keep_data:
            import shutil

            shutil.rmtree(root, ignore_errors=True)
    table = []
    for path, rs in results.items():
        maps = [r["map"] for r in rs]
        spread = f"{min(maps):.4f}-{max(maps):.4f}"
        table.append((path, f"{statistics.median(r['wall'] for r in rs):.1f}",
                      f"{statistics.median(rows * r['epochs'] / r['train_seconds'] for r in rs):,.0f}",
                      f"{max(r['pss'] for r in rs) / 2**30:.2f}", f"{statistics.mean(maps):.4f}", spread))
    print_table(f"One modality ({rows:,} x {dim}, hidden {args.hidden}, {epochs} epochs, W={args.workers}, "
                f"seeds {len(seeds)})",
                ["path", "wall s (median)", "rows/s (median)", "peak PSS GiB (max)", "test mAP (mean)",
                 "test mAP (min-max)"], table)
    speed = {path: statistics.median(rows * r["epochs"] / r["train_seconds"] for r in rs)
             for path, rs in results.items()}
    for path in ("actor", "stream"):
        if path in speed and "memory" in speed:
            print(f"{path} rows/s / memory rows/s: {speed[path] / speed['memory']:.0%} (this run)")


if __name__ == "__main__":
    main()

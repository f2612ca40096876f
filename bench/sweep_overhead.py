"""Sweep overhead: trials per minute, and the share of wall time spent outside training.

    .venv/bin/python bench/sweep_overhead.py              # 16 short SDML trials (~2-4 min on 2 cores)
    .venv/bin/python bench/sweep_overhead.py --epochs 40  # longer trials: the overhead share drops

One SDML sweep on SYNTHETIC small XMedia-shaped data (``make_synthetic_xmedia(scale="small")``):
4 modalities x 4 samples of (λ, lr) = 16 trials of ``--epochs`` epochs, FIFO (every trial runs to
the end), ``--max-concurrent`` trials at once on a local Ray with that many CPUs, MLflow tracking on
(sqlite), as ``jobs/sweep.py`` runs it. Measured:

- wall: ``run_sweep`` from call to return (Ray already started; its start-up is listed apart),
- training: the sum over trials of the seconds inside ``train_epoch`` (reported by each trial),
- in-trial: the sum over trials of the seconds of the whole trial function (data loading, model
  construction, evaluation, embeddings, checkpoints included),

and the shares ``1 - training / (wall x concurrency)`` (everything that is not training: Ray, Tune,
MLflow, data loading, checkpoints) and ``1 - in-trial / (wall x concurrency)`` (what Ray, Tune and
MLflow cost around the trial functions). Short trials on tiny data are the worst case: the fixed
costs per trial (actor start, result and checkpoint syncing, MLflow child runs) dominate.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from _common import machine_info, print_info, print_table

os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
MODALITIES = ("image", "text", "audio", "video")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=10, help="epochs per trial (default 10)")
    p.add_argument("--samples", type=int, default=4, help="samples per modality (4 x 4 = 16 trials)")
    p.add_argument("--max-concurrent", type=int, default=2, help="trials at once = Ray CPUs (2)")
    args = p.parse_args()

    import ray

    from scalable_xmr.config import TrackingConfig
    from scalable_xmr.data.modality.synthetic import make_synthetic_xmedia
    from scalable_xmr.tuning import SweepRequest, run_sweep

    print_info("Machine", machine_info(threads=1))
    with tempfile.TemporaryDirectory(prefix="sweep-bench-") as tmp:
        data = str(Path(tmp) / "data")
        make_synthetic_xmedia(data, scale="small", seed=0)
        start = time.perf_counter()
        ray.init(address="local", num_cpus=args.max_concurrent, include_dashboard=False,
                 log_to_driver=False, logging_level="ERROR")
        ray_start = time.perf_counter() - start
        req = SweepRequest(
            "sdml", data, storage=str(Path(tmp) / "sweeps"), name="bench", num_samples=args.samples,
            epochs=args.epochs, scheduler="fifo", max_concurrent=args.max_concurrent,
            modalities=MODALITIES, base={"dim": 32, "hidden": 128, "batch_size": 20},
            tracking=TrackingConfig(f"sqlite:///{tmp}/mlflow.db", "bench"), verbose=0)
        summary = run_sweep(req)
        ray.shutdown()
    trials = summary.trials
    wall, conc = summary.seconds, args.max_concurrent
    train = sum(t.metrics.get("train_seconds", 0.0) for t in trials)
    in_trial = sum(t.metrics.get("trial_seconds", 0.0) for t in trials)
    print_table(
        f"SDML sweep: {len(trials)} trials x {args.epochs} epochs, {conc} at once (synthetic small data)",
        ("quantity", "value"),
        [("Ray start-up (not in wall)", f"{ray_start:.1f} s"),
         ("wall time of run_sweep", f"{wall:.1f} s"),
         ("trials per minute", f"{60 * len(trials) / wall:.1f}"),
         ("training seconds, summed over trials", f"{train:.1f} s"),
         ("in-trial seconds, summed over trials", f"{in_trial:.1f} s"),
         ("share of wall x concurrency outside training", f"{1 - train / (wall * conc):.0%}"),
         ("share of wall x concurrency outside the trial functions", f"{1 - in_trial / (wall * conc):.0%}"),
         ("mean training seconds per trial", f"{train / len(trials):.2f} s"),
         ("mean wall x concurrency per trial", f"{wall * conc / len(trials):.2f} s")],
    )


if __name__ == "__main__":
    main()

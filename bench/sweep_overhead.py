"""Sweep overhead: trials per minute, and the share of wall time spent outside training.

    .venv/bin/python bench/sweep_overhead.py               # the target case: 16 trials, ~10 s of
                                                           # training each (~2 min on 2 cores)
    .venv/bin/python bench/sweep_overhead.py --scale small --modalities image,text,audio,video \
        --samples 4 --epochs 10                            # tiny trials: fixed costs' worst case
    .venv/bin/python bench/sweep_overhead.py --population 1,4  # one trial per configuration vs
                                                           # populations of 4

One SDML sweep on SYNTHETIC XMedia-shaped data (``make_synthetic_xmedia(scale=--scale)``): by
default the full-size image and text tables (4000 train rows of 4096 / 3000 features) with the
default network, 2 modalities x 8 samples of (λ, lr) = 16 trials of 3 epochs (~10 s of training
each on this machine); ``--scale small`` uses the tiny tables with a tiny network (dim 32, hidden
128, batch 20). FIFO (every trial runs to the end), ``--max-concurrent`` trials at once on a local
Ray with that many CPUs, MLflow tracking on (sqlite), as ``jobs/sweep.py`` runs it. Measured:

- wall: ``run_sweep`` from call to return (Ray already started; its start-up is listed apart),
- training: the sum over trials of the seconds inside ``train_epoch`` (reported by each trial),
- in-trial: the sum over trials of the seconds of the whole trial function (data loading, model
  construction, evaluation, embeddings, checkpoints included),

and the shares ``1 - training / (wall x concurrency)`` (everything that is not training: Ray, Tune,
MLflow, data loading, checkpoints) and ``1 - in-trial / (wall x concurrency)`` (what Ray, Tune and
MLflow cost around the trial functions). Short trials on tiny data are the worst case: the fixed
costs per trial (actor start, result and checkpoint syncing, MLflow child runs) dominate.

``--population 1,4`` runs the sweep once per value, in one process on one Ray: with N > 1 each
modality's configurations train as populations of N in one Tune trial (tuning/population_trial.py),
so the fixed costs are paid per population instead of per configuration (the configurations are
then drawn on the driver, seeded: the two runs train different λ / lr values of the same space).
``--flush 0,5`` also repeats each sweep with the MLflow callback writing every result at once (0,
as before 2026-11-30) and buffering per-epoch metrics for up to 5 s (tuning/tracking.py).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from _common import machine_info, print_info, print_table

os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
SMALL_BASE = {"dim": 32, "hidden": 128, "batch_size": 20}  # tiny trials: the fixed costs' worst case


def phase_clock():
    """A Tune callback noting when the first trial started and when the last one ended."""
    from ray import tune

    class PhaseClock(tune.Callback):
        first_start: float | None = None
        last_end: float | None = None

        def on_trial_start(self, iteration, trials, trial, **info) -> None:
            self.first_start = self.first_start or time.perf_counter()

        def on_trial_complete(self, iteration, trials, trial, **info) -> None:
            self.last_end = time.perf_counter()

    return PhaseClock()


def run_one(data: str, root: Path, args, population: int, flush: float) -> dict[str, float]:
    """One sweep; its wall time and phases, training and in-trial seconds summed over configurations."""
    from scalable_xmr.config import TrackingConfig
    from scalable_xmr.tuning import SweepRequest, run_sweep, tracking

    tracking.FLUSH_SECONDS = flush  # the callback runs here, on the driver
    req = SweepRequest(
        "sdml", data, storage=str(root / "sweeps"), name=f"bench-pop{population}-flush{flush:g}",
        num_samples=args.samples, epochs=args.epochs, scheduler="fifo", max_concurrent=args.max_concurrent,
        modalities=tuple(args.modalities.split(",")), base=SMALL_BASE if args.scale == "small" else {},
        population=population,
        tracking=TrackingConfig(f"sqlite:///{root}/mlflow.db", "bench"), verbose=0)
    clock = phase_clock()
    start = time.perf_counter()
    summary = run_sweep(req, callbacks=(clock,))
    end = time.perf_counter()
    trials = summary.trials
    return {"configurations": len(trials), "wall": summary.seconds,
            "before": clock.first_start - start, "trials": clock.last_end - clock.first_start,
            "after": end - clock.last_end,
            "train": sum(t.metrics.get("train_seconds", 0.0) for t in trials),
            "in_trial": sum(t.metrics.get("trial_seconds", 0.0) for t in trials)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--scale", choices=("full", "small"), default="full",
                   help="synthetic data: full = XMedia-shaped, default networks (default); small = "
                        "tiny data and networks (dim 32, hidden 128, batch 20)")
    p.add_argument("--modalities", default="image,text", help="modalities swept (default image,text)")
    p.add_argument("--epochs", type=int, default=3, help="epochs per trial (default 3: ~10 s of training)")
    p.add_argument("--samples", type=int, default=8, help="samples per modality (2 x 8 = 16 trials)")
    p.add_argument("--max-concurrent", type=int, default=2, help="trials at once = Ray CPUs (2)")
    p.add_argument("--population", default="1", help="population sizes to run, comma-separated (1)")
    p.add_argument("--flush", default="5", help="MLflow metric buffering seconds to run, comma-separated")
    args = p.parse_args()
    variants = [(int(n), float(f)) for n in args.population.split(",") for f in args.flush.split(",")]

    import ray

    from scalable_xmr.data.modality.synthetic import make_synthetic_xmedia

    print_info("Machine", machine_info(threads=1))
    with tempfile.TemporaryDirectory(prefix="sweep-bench-") as tmp:
        data = str(Path(tmp) / "data")
        make_synthetic_xmedia(data, scale=args.scale, seed=0)
        start = time.perf_counter()
        ray.init(address="local", num_cpus=args.max_concurrent, include_dashboard=False,
                 log_to_driver=False, logging_level="ERROR")
        ray_start = time.perf_counter() - start
        runs = {v: run_one(data, Path(tmp), args, *v) for v in variants}
        ray.shutdown()
    conc = args.max_concurrent

    def column(r: dict[str, float]) -> list[str]:
        wall, n = r["wall"], r["configurations"]
        return [f"{wall:.1f} s", f"{r['before']:.1f} s", f"{r['trials']:.1f} s", f"{r['after']:.1f} s",
                f"{60 * n / wall:.1f}", f"{r['train']:.1f} s", f"{r['in_trial']:.1f} s",
                f"{1 - r['train'] / (wall * conc):.0%}", f"{1 - r['in_trial'] / (wall * conc):.0%}",
                f"{r['train'] / n:.2f} s", f"{wall * conc / n:.2f} s"]

    names = ["wall time of run_sweep", "  before the first trial (sweep.json, P, MLflow, Tune, actors)",
             "  first trial start to last trial end", "  after the trials (final test, summary, plots)",
             "configurations per minute", "training seconds, summed",
             "in-trial seconds, summed", "share of wall x concurrency outside training",
             "share of wall x concurrency outside the trial functions",
             "mean training seconds per configuration", "mean wall x concurrency per configuration"]
    cols = {n: column(r) for n, r in runs.items()}
    n_cfg = next(iter(runs.values()))["configurations"]
    print_table(
        f"SDML sweep: {n_cfg} configurations x {args.epochs} epochs, {conc} trials at once (synthetic "
        f"{args.scale} data); Ray start-up {ray_start:.1f} s (not in wall)",
        ("quantity", *(f"--population {n}, flush {f:g} s" for n, f in runs)),
        [(name, *(cols[n][i] for n in runs)) for i, name in enumerate(names)],
    )


if __name__ == "__main__":
    main()

"""``xmr sweep`` / ``jobs/sweep.py``: hyperparameter sweeps with Ray Tune, recorded in MLflow.

SDML sweeps λ and the learning rate per modality; each trial trains one modality against the
sweep's fixed P and is scored on that modality's validation split alone, so the best configuration
of every modality is chosen independently. Branch models (vse, mtfn, mmca, vsa) sweep the margin,
the learning rate and the model's own R (mtfn) / α (mmca); every trial also evaluates a grid of
re-ranking K / K' on its trained model, so K never multiplies the trials.

Examples:
  python jobs/sweep.py --model sdml --num-samples 8 --epochs 20
  python jobs/sweep.py --model sdml --grid lam=0.1,0.5,0.9 --range lr=1e-5:1e-3:log
  python jobs/sweep.py --model sdml --grid lam=0.1,0.5 --grid lr=1e-4,1e-3 --population 4
  python jobs/sweep.py --model mtfn --data pairs/ --num-samples 32 --range rank=4:32:log
  python jobs/sweep.py --model mtfn --name mtfn-1 --resume       (after an interruption)
  python jobs/train_xmedia.py --config sweeps/<name>/best.json  (train with the winners)
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from scalable_xmr.cli.common import (
    add_address_argument,
    add_job_subcommand,
    add_tracking_arguments,
    add_verbose_argument,
    check_data_path,
    job_script_parser,
    local_dir,
    run_job,
)
from scalable_xmr.cli.train import add_workers_arguments
from scalable_xmr.config import TrackingConfig
from scalable_xmr.distributed.logs import set_verbose, verbose
from scalable_xmr.errors import InputError

MODEL_CHOICES = ("sdml", "vse", "mtfn", "mmca", "vsa")
SWEEP_WORKERS_HELP = (
    "SDML: train each trial's modality on W data-parallel Ray Train workers (DDP, as `xmr train "
    "--workers-per-modality W`): a TorchTrainer inside each Tune trial, reporting every epoch to Tune "
    "(ASHA and MLflow see them as for W=1). Each worker asks --cpus-per-trial CPUs and "
    "--gpus-per-worker GPUs, the trial itself 0.25 CPU; as many trials run at once as the cluster "
    "holds whole (the start line says how many; --max-concurrent lowers it). Not with --population. "
    "Default 1: one trial actor per configuration (a Train run costs ~4x a trial's start-up)"
)


def add_sweep_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", choices=MODEL_CHOICES, required=True,
                   help="what to tune: sdml (per modality) or a branch model (vse, mtfn, mmca, vsa)")
    p.add_argument("--data", metavar="DIR",
                   help="dataset directory/URI (SDML: modality tables; branch: a paired dataset). "
                   "Default: SYNTHETIC data generated under <storage>/data (not real data)")
    s = p.add_argument_group("search space")
    s.add_argument("--num-samples", type=int, default=4,
                   help="samples of the space per grid point (SDML: per modality) (default 4)")
    s.add_argument("--grid", action="append", default=[], metavar="KEY=v1,v2",
                   help="try exactly these values of KEY (repeatable); e.g. lam=0.1,0.5,0.9 or k=5,10")
    s.add_argument("--range", action="append", default=[], metavar="KEY=lo:hi[:log]",
                   help="sample KEY in [lo, hi], log-uniformly with :log (repeatable); "
                   "e.g. lr=1e-5:1e-3:log. k / k_text ranges are evaluated in-trial, every integer")
    s.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="fix a config value for every trial (repeatable); SDML: dim, hidden, "
                   "batch_size, normalize, checkpoint_every; branch: trainer keys (batch_size, "
                   "lr_decay_epochs, lr_decay, text_epochs for mtfn, ...; unset: the model's own "
                   "paper schedule) or model keys (dim, embed_dim, ...)")
    s.add_argument("--modality", action="append", metavar="NAME",
                   help="SDML: sweep only this modality (repeatable; default: every modality)")
    s.add_argument("--epochs", type=int, default=10,
                   help="training epochs per trial (default 10). A branch trial shorter than its "
                   "model's schedule runs that schedule compressed: each lr step at the same fraction "
                   "of training, e.g. vse's x0.1 after 15 of 30 epochs -> after 5 of 10 "
                   "(docs/models.md); best.json trains the full schedule. SDML has no lr steps: a "
                   "trial runs the first N of the 200 epochs")
    s.add_argument("--metric", default=None,
                   help="what selects the best, always on the validation split: SDML anchor_map "
                   "(default) or label_loss; branch: rsum. Trials never see the test split; the "
                   "chosen configuration is scored on test once, at the end")
    s.add_argument("--seed", type=int, default=0, help="seed of P (SDML) and of every network (0)")
    r = p.add_argument_group("scheduling")
    r.add_argument("--scheduler", choices=("asha", "fifo"), default="asha",
                   help="asha: stop weak trials early on the validation metric (per modality for "
                   "SDML); fifo: run every trial to the end (default asha)")
    r.add_argument("--max-concurrent", type=int, default=None,
                   help="at most this many trials at once (default: as many as resources allow)")
    r.add_argument("--gpus-per-trial", type=float, default=None,
                   help="GPUs per trial (default: 1 when the cluster has GPUs, else 0); small SDML "
                   "modalities (input dim < 1024) take a quarter of it")
    r.add_argument("--cpus-per-trial", type=float, default=1.0, help="CPUs per trial (default 1)")
    r.add_argument("--population", type=int, default=1, metavar="N",
                   help="SDML: train up to N configurations of a modality that share their shapes "
                   "(batch size, hidden) in one trial, as one batched computation; each is still "
                   "its own result row and MLflow child run. The configurations are then drawn "
                   "before the sweep (seeded by --seed) and ASHA stops whole populations "
                   "(default 1: one trial per configuration)")
    add_workers_arguments(r, SWEEP_WORKERS_HELP)
    add_address_argument(r)
    o = p.add_argument_group("output")
    o.add_argument("--storage", default="sweeps", metavar="DIR",
                   help="directory of sweeps (default ./sweeps); the sweep goes to <storage>/<name>")
    o.add_argument("--name", default=None,
                   help="sweep name (default <model>-<date>-<time>; with --resume: the latest sweep)")
    o.add_argument("--resume", action="store_true",
                   help="continue an interrupted sweep (--storage/--name); finished trials are kept, "
                   "space flags are taken from the original run")
    o.add_argument("--quiet", action="store_true",
                   help="no line per finished trial while it runs (Tune's own status table shows only "
                   "with --verbose)")
    add_tracking_arguments(
        p, uri_help="MLflow URI (default: sqlite:///<abs working dir>/mlflow.db, the training jobs' "
        "store too; --resume: the sweep's own; http://... on a cluster)",
        progress=False,
    )
    add_verbose_argument(p)


def register(sub: argparse._SubParsersAction) -> None:
    add_job_subcommand(sub, "sweep", "hyperparameter sweep with Ray Tune (SDML per modality, or a branch "
                       "model)", __doc__, add_sweep_arguments, run_sweep_cli)


def job_parser() -> argparse.ArgumentParser:
    return job_script_parser("sweep.py", __doc__, add_sweep_arguments)


def _value(text: str):
    """A --set value: JSON (numbers, true/false, lists) when it parses, else the plain string."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def parse_set(items: list[str]) -> dict:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise InputError(f"--set {item!r}: expected KEY=VALUE")
        out[key.strip()] = _value(value.strip())
    return out


def resolve_sweep_data(args: argparse.Namespace) -> str:
    """--data, or synthetic data cached under <storage>/data (SDML: XMedia-shaped; branch: pairs)."""
    if args.data:
        check_data_path(args.data)
        return args.data
    root = local_dir(args.storage) / "data"
    print("NOTE: no --data given: sweeping on SYNTHETIC data (not real features), cached under "
          f"{root}", file=sys.stderr)
    if args.model == "sdml":
        from scalable_xmr.data.modality.synthetic import make_synthetic_xmedia

        out = root / f"synthetic-xmedia-seed{args.seed}"
        if not (out / "dataset.json").is_file():
            make_synthetic_xmedia(str(out), scale="full", seed=args.seed)
        return str(out)
    from scalable_xmr.data.paired import make_synthetic_pairs

    out = root / f"synthetic-pairs-seed{args.seed}"
    if not (out / "images.parquet").is_file():
        make_synthetic_pairs(out, seed=args.seed)
    return str(out)


def request_from_args(args: argparse.Namespace):
    from scalable_xmr.tuning.sweep import SweepRequest

    data = "" if args.resume else resolve_sweep_data(args)
    return SweepRequest(
        model=args.model, dataset_uri=data, storage=args.storage, name=args.name,
        num_samples=args.num_samples, max_concurrent=args.max_concurrent, scheduler=args.scheduler,
        grids=tuple(args.grid), ranges=tuple(args.range), epochs=args.epochs, metric=args.metric,
        modalities=tuple(args.modality) if args.modality else None,
        gpus_per_trial=args.gpus_per_trial, cpus_per_trial=args.cpus_per_trial,
        base=parse_set(args.set), seed=args.seed, resume=args.resume,
        tracking=TrackingConfig(args.tracking_uri, args.experiment, not args.no_tracking),
        verbose=1 if verbose() else 0, trial_lines=not args.quiet, population=args.population,
        workers_per_modality=args.workers_per_modality, gpus_per_worker=args.gpus_per_worker,
    )


def run_sweep_cli(args: argparse.Namespace) -> int:
    from scalable_xmr.tuning.branch_backend import rerank_line
    from scalable_xmr.tuning.sweep import run_sweep, schedule_line

    set_verbose(args.verbose)
    summary = run_sweep(request_from_args(args), address=args.address)
    print()
    if not summary.finished:
        print(f"sweep interrupted with {summary.n_trials} trials; finished trials are kept. Resume with:")
        print(f"  python jobs/sweep.py --model {args.model} --storage {Path(summary.sweep_dir).parent} "
              f"--name {Path(summary.sweep_dir).name} --resume")
        return 130
    print(summary.table)  # every figure in it is a validation one
    print(f"\n{schedule_line(summary.best)}")
    if "rerank" in summary.best:
        print(f"\n{rerank_line(summary.best)}")
    if summary.test_line:
        print(f"\n{summary.test_line}")
    print(f"\nsweep directory : {summary.sweep_dir} ({summary.n_trials} trials)")
    print(f"best config     : {summary.best_path}")
    for plot in summary.plots:
        print(f"plot            : {plot}")
    print(f"MLflow          : {summary.tracking}")
    print(f"wall time       : {summary.seconds:.1f} s")
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_job(job_parser(), run_sweep_cli, argv)

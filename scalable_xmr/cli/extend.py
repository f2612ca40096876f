"""``xmr add-modality`` / ``jobs/add_modality.py``: add modalities to a finished SDML run.

Trains only the new modality's autoencoder against the run's fixed projection P (SDML §3.2), one
Ray actor per new modality, then scores the new ordered pairs from the test embeddings already in
the run. Existing models are neither loaded nor re-encoded; their files stay byte-identical (only
run.json, metrics.json and plots/ are rewritten). Hyperparameters default to the run's own.

    python jobs/add_modality.py --run runs/sdml-x --modality 3d --data data/new
    python jobs/add_modality.py --run runs/sdml-x --modality lidar --table lidar.parquet
"""

from __future__ import annotations

import argparse

from scalable_xmr.cli.common import (
    add_address_argument,
    add_job_subcommand,
    add_tracking_arguments,
    add_verbose_argument,
    job_script_parser,
    print_run_footer,
    run_job,
)
from scalable_xmr.cli.train import (
    add_patience_argument,
    add_run_state_arguments,
    load_overrides,
    print_training_notes,
)
from scalable_xmr.config import ModalityOverrides, ResourceConfig, TrackingConfig
from scalable_xmr.distributed.logs import set_verbose
from scalable_xmr.errors import InputError

# Flags that change the run's SDML settings for the new modality; None = keep the run's value.
_SDML_FLAGS = ("epochs", "lam", "batch_size", "seed", "normalize", "checkpoint_every", "patience")  # and --lr


def add_extend_arguments(p: argparse.ArgumentParser) -> None:
    r = p.add_argument_group("run and data")
    r.add_argument("--run", metavar="DIR", required=True,
                   help="a finished SDML run directory (from `xmr train` / jobs/train_xmedia.py)")
    r.add_argument("--modality", action="append", metavar="NAME", required=True,
                   help="name of the modality to add (repeat to add several, trained in parallel actors)")
    r.add_argument("--data", metavar="DIR",
                   help="a converted dataset (directory or URI) holding <NAME>.parquet for each --modality; "
                   "its dataset.json must have the run's classes (same count and names, same order)")
    r.add_argument("--table", action="append", metavar="FILE",
                   help="a loose Parquet table (id, split, labels, features) instead of --data; one per "
                   "--modality, in the same order; labels are the run's class indices")
    r.add_argument("--replace", action="store_true",
                   help="allow retraining a modality the run already has (its old folder is replaced)")
    h = p.add_argument_group("SDML hyperparameters (default: the run's own, from run.json)")
    h.add_argument("--epochs", type=int, default=None, help="training epochs")
    h.add_argument("--lam", type=float, default=None, help="λ of SDML Eq. 1 in [0, 1]")
    h.add_argument("--lr", action="append", metavar="RATE|NAME=RATE",
                   help="Adam learning rate: RATE for every new modality, or NAME=RATE for one (repeat: "
                   "--lr lidar=5e-4 --lr sonar=1e-3; a modality's own beats the one for all). Order: "
                   "--lr NAME=RATE, --lr RATE, --config's lr, the run's --lr, the SDML reference code's "
                   "rule (1e-4 for 'image', 2e-4 for any other); the job prints each rate and why")
    h.add_argument("--batch-size", type=int, default=None, help="batch size (last partial batch dropped)")
    h.add_argument("--seed", type=int, default=None, help="seed of the new network (P is the run's)")
    h.add_argument("--normalize", action=argparse.BooleanOptionalAction, default=None,
                   help="per-feature standardisation of the inputs (--no-normalize: the paper's raw setting)")
    h.add_argument("--checkpoint-every", type=int, default=None, help="checkpoint every N epochs")
    add_patience_argument(h, "new modality", "the validation label loss, lower is better",
                          default="Default: the run's own (off unless it was trained with --patience)")
    add_run_state_arguments(r, "new modality", "modalities/<new>/checkpoints/")
    h.add_argument("--config", metavar="JSON",
                   help="best.json from `xmr sweep --model sdml`: per-modality λ / lr (flags above win)")
    c = p.add_argument_group("cluster")
    c.add_argument("--gpus-per-modality", type=float, default=0.0,
                   help="GPUs per modality actor (fractional packs small modalities; default 0 = CPU)")
    c.add_argument("--cpus-per-modality", type=float, default=None,
                   help="CPUs per modality actor (default: the cluster's CPUs shared out evenly)")
    add_address_argument(c)
    add_tracking_arguments(
        p,
        uri_help="MLflow URI (default: the run's own; the new modality becomes a child of the run's parent "
        "run, and a run trained without tracking stays untracked; another URI or experiment gets a new "
        "parent run linking to the old one)",
        experiment_default=None, experiment_help="MLflow experiment name (default: the run's)",
    )
    add_verbose_argument(p)


def register(sub: argparse._SubParsersAction) -> None:
    add_job_subcommand(sub, "add-modality", "add a modality to a finished SDML run (trains only its "
                       "network)", __doc__, add_extend_arguments, run_add)


def job_parser() -> argparse.ArgumentParser:
    return job_script_parser("add_modality.py", __doc__, add_extend_arguments)


def request_from_args(args: argparse.Namespace):
    from scalable_xmr.sdml.extend import AddRequest

    if args.data and args.table:
        raise InputError("give --data or --table, not both")
    changes = {k: getattr(args, k) for k in _SDML_FLAGS if getattr(args, k) is not None}
    best = load_overrides(args.config, args.lr)  # parses --lr: its rates beat best.json's lr
    overrides = ModalityOverrides({m: {**best.per_modality.get(m, {}), **changes} for m in args.modality},
                                  best.lr, best.source)
    if args.no_tracking:
        tracking = TrackingConfig(enabled=False)
    elif args.tracking_uri or args.experiment:
        tracking = TrackingConfig(args.tracking_uri, args.experiment or "scalable_xmr")
    else:
        tracking = None  # the run's own URI, experiment and parent run
    return AddRequest(
        run_dir=args.run, modalities=tuple(args.modality), dataset_uri=args.data,
        table_paths=tuple(args.table or ()), overrides=overrides,
        resources=ResourceConfig(gpus_per_modality=args.gpus_per_modality,
                                 cpus_per_modality=args.cpus_per_modality),
        tracking=tracking, replace=args.replace, show_progress=not args.no_progress,
        keep_checkpoints=args.keep_checkpoints,
    )


def run_add(args: argparse.Namespace) -> int:
    from scalable_xmr.sdml.evaluate import map_table, pairs_involving
    from scalable_xmr.sdml.extend import add_modalities

    set_verbose(args.verbose)
    summary = add_modalities(request_from_args(args), address=args.address)
    metrics = summary.metrics
    new = pairs_involving(list(summary.results), metrics.modalities)
    print()
    print(map_table(metrics))
    print()
    print(f"added         : {', '.join(summary.results)} ({len(new)} new ordered pairs, "
          f"{len(metrics.map)} in all)")
    for m, r in summary.results.items():
        print(f"  {m:<12}best epoch {r.best_epoch}/{r.epochs}, "
              f"trained in {r.train_seconds:.1f} s on {r.device}")
    print_run_footer(summary.run_dir, summary.tracking, summary.seconds)
    print_training_notes(summary.results, summary.training_state)
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_job(job_parser(), run_add, argv)

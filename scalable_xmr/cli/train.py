"""``xmr train`` / ``jobs/train_xmedia.py``: the SDML job.

The argument parser lives here so the job script stays a three-line wrapper that works both from
the repo and as ``python ~/train_xmedia.py`` on a head node where only the package is installed.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import sys
from collections.abc import Callable
from pathlib import Path

from scalable_xmr.cli.common import (
    add_address_argument,
    add_tracking_arguments,
    add_verbose_argument,
    check_data_path,
    local_dir,
    print_run_footer,
    run_job,
)
from scalable_xmr.config import (
    LearningRates,
    ModalityOverrides,
    ResourceConfig,
    SDMLConfig,
    TrackingConfig,
)
from scalable_xmr.distributed.logs import set_verbose
from scalable_xmr.errors import InputError
from scalable_xmr.sweep_best import SDML, SweepBest

DEMO_EPOCHS = 25  # `make run`: the full XMedia-shaped data, ~10 min on a 2-core CPU


LR_HELP = (
    "Adam learning rate: RATE for every modality, or NAME=RATE for one (repeat the flag: --lr image=1e-4 "
    "--lr text=5e-4). A modality's own rate beats the one for all (--lr 1e-4 --lr image=2e-4: image 2e-4, "
    "the rest 1e-4), and both beat the lr of --config's best.json. Default: best.json's, else the SDML "
    "reference code's rule, 1e-4 for the modality named 'image' and 2e-4 for every other one. The job "
    "prints each modality's rate and where it came from before training"
)


KEEP_CHECKPOINTS_HELP = (
    "keep every {unit}'s training state ({where}: the last checkpoints, with Adam's state) once the "
    "run has finished. Default: removed then; a finished run keeps its models, embeddings, metrics "
    "and plots, which is all that search, `xmr add-modality` and `xmr track` read. A failed or "
    "interrupted run always keeps what --resume needs"
)
PATIENCE_HELP = (
    "stop a {unit} once its selection score ({score}) has not improved for N epochs; the selected "
    "epoch's model is kept, run.json records where it stopped. {default}; without it the footer "
    "says when the selected epoch came in the first tenth of the epochs"
)
PATIENCE_OFF = "Default: off (every epoch trains, as in the paper{s})"


def whole_number_arg(unit: str) -> Callable[[str], int]:
    """An argparse type: a whole number of ``unit`` >= 1 (``--patience``, ``--workers-per-modality``)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < 1:
            raise argparse.ArgumentTypeError(f"must be a whole number of {unit} >= 1, got {text!r}")
        return value

    return parse


patience_arg = whole_number_arg("epochs")  # config.check_patience's domain
workers_arg = whole_number_arg("workers")


WORKERS_HELP = (
    "train each modality on W data-parallel Ray Train workers (DDP) that together give one process's "
    "result, for a modality too big or too slow for one actor; the modalities then train one after "
    "the other, each worker taking a slice of every batch and --cpus-per-modality (default: the "
    "cluster's CPUs) shared by the W workers. Default 1: one actor per modality (a Train job costs "
    "~15-30 s of start-up against ~2-10 s for an actor). Not with --strategy joint; a modality's batch "
    "size must be >= W; --resume keeps the W a modality started with"
)


STREAM_HELP = (
    "stream each modality's Parquet table (local or s3://) to its workers with Ray Data "
    "(read_parquet -> streaming_split -> batches) instead of loading it whole: for a table bigger than "
    "a worker's memory. One streamed pass fits the input standardisation first; each epoch shuffles the "
    "file order and a local buffer seeded by (seed, epoch, rank): reproducible for a fixed W, not across "
    "W. Ray Data gets 1 CPU beside the workers. With W = 1 the modality's actor streams (no Ray Train); "
    "modalities stream one after the other; resume is per epoch, and --resume keeps the setting a "
    "modality started with"
)


def add_run_state_arguments(group: argparse._ArgumentGroup, unit: str, where: str) -> None:
    """``--keep-checkpoints``, worded for ``unit`` (modality / member) and its folders ``where``."""
    group.add_argument("--keep-checkpoints", action="store_true",
                       help=KEEP_CHECKPOINTS_HELP.format(unit=unit, where=where))


def add_patience_argument(group: argparse._ArgumentGroup, unit: str, score: str,
                          default: str = PATIENCE_OFF.format(s="")) -> None:
    group.add_argument("--patience", type=patience_arg, default=None, metavar="N",
                       help=PATIENCE_HELP.format(unit=unit, score=score, default=default))


def print_training_notes(results: dict, training_state: str) -> None:
    """Footer lines after the run's: each trained unit's epochs when worth a line (early stop, or
    the hint that --patience would have saved epochs) and what became of the training state."""
    for result in results.values():
        note = result.footer_note()
        if note:
            print(f"epochs        : {note}")
    if training_state:
        print(f"training state: {training_state}")


def add_train_arguments(p: argparse.ArgumentParser) -> None:
    d = p.add_argument_group("data")
    d.add_argument("--data", metavar="DIR",
                   help="a converted dataset (directory or URI, see `xmr data`). Default: generate "
                   "synthetic XMedia-shaped data (20 classes, 5 modalities) — NOT real data")
    d.add_argument("--mat", metavar="FILE",
                   help="XMediaFeatures.mat: convert it on the fly (to <run parent>/data/xmedia) and train")
    d.add_argument("--modality", action="append", metavar="NAME",
                   help="train only this modality (repeat for several; default: all of the dataset)")
    r = p.add_argument_group("run store")
    r.add_argument("--run", metavar="DIR",
                   help="run directory to create (default: runs/sdml-<date>-<time>)")
    r.add_argument("--resume", action="store_true",
                   help="continue the run in --run (unfinished modalities resume from checkpoints)")
    r.add_argument("--overwrite", action="store_true", help="delete whatever is at --run first")
    r.add_argument("--projection", metavar="FILE",
                   help="use this existing P (Arrow file) instead of creating one from --seed")
    add_run_state_arguments(r, "modality", "modalities/<m>/checkpoints/")
    h = p.add_argument_group("SDML hyperparameters (paper defaults)")
    h.add_argument("--epochs", type=int, default=200, help="training epochs per modality (default 200)")
    h.add_argument("--lam", type=float, default=0.5,
                   help="λ of SDML Eq. 1 in [0, 1]: weight of reconstruction vs label loss (0.5)")
    h.add_argument("--lr", action="append", metavar="RATE|NAME=RATE", help=LR_HELP)
    h.add_argument("--dim", type=int, default=512, help="common-space dimension d = rows of P (512)")
    h.add_argument("--batch-size", type=int, default=100, help="batch size (100; last partial dropped)")
    h.add_argument("--seed", type=int, default=0, help="seed of P and of every network (0)")
    h.add_argument("--no-normalize", action="store_true",
                   help="feed raw features (paper setting) instead of per-feature standardisation")
    h.add_argument("--checkpoint-every", type=int, default=5, help="checkpoint every N epochs (5)")
    add_patience_argument(h, "modality", "the validation label loss, lower is better")
    h.add_argument("--config", metavar="JSON",
                   help="best.json from `xmr sweep --model sdml`: per-modality overrides (its λ beats "
                   "--lam, its lr loses to --lr)")
    h.add_argument("--top-k", type=int, default=None, help="also report mAP@k (reference definition)")
    h.add_argument("--top-k-no-relevant", default="zero", metavar="{zero,skip}",
                   help="mAP@k of a query with no relevant item in its top k: zero = AP 0, kept in the "
                   "mean (default; SDML reference code, single-label); skip = left out of the mean "
                   "(its multi-label code)")
    c = p.add_argument_group("cluster")
    c.add_argument("--strategy", choices=("parallel", "serial", "joint"), default="parallel",
                   help="parallel: one actor per modality at once (SDML-3, default); serial: one after "
                   "another (SDML-2); joint: all networks in one loop (SDML-1 baseline)")
    c.add_argument("--gpus-per-modality", type=float, default=0.0,
                   help="GPUs per modality actor (fractional packs small modalities; default 0 = CPU)")
    c.add_argument("--cpus-per-modality", type=float, default=None,
                   help="CPUs per modality actor (default: the cluster's CPUs shared out evenly)")
    add_workers_arguments(c, WORKERS_HELP)
    c.add_argument("--stream", action="store_true", help=STREAM_HELP)
    add_address_argument(c)
    add_tracking_arguments(p)
    add_verbose_argument(p)


def add_workers_arguments(group: argparse._ArgumentGroup, workers_help: str) -> None:
    """``--workers-per-modality W`` and ``--gpus-per-worker G``: ``xmr train``'s and ``xmr sweep``'s,
    parsed alike (ResourceConfig checks them again in the library)."""
    group.add_argument("--workers-per-modality", type=workers_arg, default=1, metavar="W", help=workers_help)
    group.add_argument("--gpus-per-worker", type=float, default=None, metavar="G", choices=(0.0, 1.0),
                       help="GPUs of each data-parallel worker with --workers-per-modality > 1: 0 (gloo "
                       "on CPUs) or 1 (nccl). Default: 1 when the cluster has GPUs, else 0")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train SDML: one supervised autoencoder per modality, in parallel",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_train_arguments(p)
    p.add_argument("--demo", action="store_true", help=argparse.SUPPRESS)
    p.set_defaults(func=run_train)


def job_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="train_xmedia.py",
        description="SDML cross-modal retrieval: one supervised autoencoder per modality, trained in "
        "parallel Ray actors against one fixed orthonormal projection P; ends with the cross-modal "
        "mAP table, plots, a run directory and an MLflow run.",
    )
    add_train_arguments(p)
    p.add_argument("--demo", action="store_true",
                   help=f"the `make run` demo: synthetic XMedia-shaped data, {DEMO_EPOCHS} epochs")
    return p


def _default_run_dir() -> str:
    return str(Path("runs") / _dt.datetime.now().strftime("sdml-%Y%m%d-%H%M%S"))


def resolve_data(args: argparse.Namespace, run_dir: str) -> str:
    from scalable_xmr.data.modality.dataset import open_dataset

    data_root = local_dir(run_dir).parent / "data"
    if args.data and args.mat:
        raise InputError("give --data or --mat, not both")
    if args.mat:
        from scalable_xmr.data.modality.xmedia import convert_xmedia

        out = data_root / "xmedia"
        convert_xmedia(args.mat, str(out), overwrite=True)
        return str(out)
    if args.data:
        check_data_path(args.data)
        open_dataset(args.data)  # validates: "not a dataset" fails here, before anything is written
        return args.data
    from scalable_xmr.data.modality.synthetic import make_synthetic_xmedia

    out = data_root / f"synthetic-xmedia-seed{args.seed}"
    print("=" * 78, file=sys.stderr)
    print("NOTE: no --data given: using SYNTHETIC XMedia-shaped data (not real features;", file=sys.stderr)
    print(f"      mAP here says nothing about XMedia). Cached at {out}", file=sys.stderr)
    print("=" * 78, file=sys.stderr)
    if not (out / "dataset.json").is_file():
        make_synthetic_xmedia(str(out), scale="full", seed=args.seed)
    return str(out)


def load_overrides(path: str | None, lr: list[str] | None = None) -> ModalityOverrides:
    """best.json's per-modality configs (``--config``) and the ``--lr`` flags, which beat its lr."""
    rates = LearningRates.parse(lr)
    if not path:
        return ModalityOverrides(lr=rates)
    best = SweepBest.read(path, f"--config {path}")
    if best.model != SDML:
        raise InputError(f"--config {path}: not an SDML best.json (model {best.model!r})")
    per = best.per_modality
    if per is None:
        raise InputError(f"--config {path}: no 'per_modality' section")
    return ModalityOverrides({m: dict(v["config"]) for m, v in per.items()}, rates,
                             source=f"--config {Path(path).name}")


def request_from_args(args: argparse.Namespace):
    from scalable_xmr.functional.retrieval import check_no_relevant
    from scalable_xmr.sdml.job import TrainRequest

    if args.demo and args.epochs == 200:
        args.epochs = DEMO_EPOCHS
    run_dir = args.run or _default_run_dir()
    overrides = load_overrides(args.config, args.lr)
    # run.json's own lr is --lr RATE: what `xmr add-modality` gives a new modality by default.
    sdml = SDMLConfig(dim=args.dim, lam=args.lam, lr=overrides.lr.every, batch_size=args.batch_size,
                      epochs=args.epochs, normalize=not args.no_normalize,
                      checkpoint_every=args.checkpoint_every, seed=args.seed, patience=args.patience)
    resources = ResourceConfig(strategy=args.strategy, gpus_per_modality=args.gpus_per_modality,
                               cpus_per_modality=args.cpus_per_modality,
                               workers_per_modality=args.workers_per_modality,
                               gpus_per_worker=args.gpus_per_worker, stream=args.stream)
    tracking = TrackingConfig(args.tracking_uri, args.experiment, not args.no_tracking)
    if args.top_k is not None and args.top_k < 1:
        raise InputError(f"--top-k must be >= 1, got {args.top_k}")
    check_no_relevant(args.top_k_no_relevant, "--top-k-no-relevant")
    data = resolve_data(args, run_dir)
    return TrainRequest(
        run_dir=run_dir, dataset_uri=data, sdml=sdml,
        modalities=tuple(args.modality) if args.modality else None,
        overrides=overrides, resources=resources, tracking=tracking,
        projection_file=args.projection, projection_seed=args.seed, resume=args.resume,
        overwrite=args.overwrite, top_k=args.top_k, top_k_no_relevant=args.top_k_no_relevant,
        show_progress=not args.no_progress, keep_checkpoints=args.keep_checkpoints,
    )


def run_train(args: argparse.Namespace) -> int:
    from scalable_xmr.sdml.evaluate import map_table
    from scalable_xmr.sdml.job import train_sdml

    set_verbose(args.verbose)
    req = request_from_args(args)
    summary = train_sdml(req, address=args.address)
    print()
    print(map_table(summary.metrics))
    print()
    print_run_footer(summary.run_dir, summary.tracking, summary.seconds)
    print_training_notes(summary.results, summary.training_state)
    if args.demo:
        print(f"\nThis was the {args.epochs}-epoch demo. The paper's full setting is 200 epochs:\n"
              "  python jobs/train_xmedia.py --epochs 200            (synthetic XMedia-shaped data)\n"
              "  python jobs/train_xmedia.py --mat XMediaFeatures.mat (the real XMedia features)")
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_job(job_parser(), run_train, argv)

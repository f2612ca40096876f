"""Flags shared by every job (cluster address, MLflow tracking), written once so they read alike."""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from pathlib import Path

from scalable_xmr.cli import run_cli
from scalable_xmr.distributed.logs import VERBOSE_HELP
from scalable_xmr.distributed.submission import check_submission_paths
from scalable_xmr.errors import InputError
from scalable_xmr.uris import is_remote, local_path

AddArguments = Callable[[argparse.ArgumentParser], None]


def check_data_path(data: str) -> None:
    """One line when ``--data`` is a local path (a ``file:///`` URI is one) that does not exist; a
    remote URI is checked when the dataset is opened."""
    if not is_remote(data) and not local_path(data).exists():
        raise InputError(f"--data {data}: dataset path does not exist")


def local_dir(target: str) -> Path:
    """A run or sweep directory as an absolute local directory, where synthetic data is cached
    beside it: a path or ``file:///`` URI is that directory; an object-storage URI is read as a
    relative path, as it always was (``./s3:/bucket/...``)."""
    return (Path(target) if is_remote(target) else local_path(target)).expanduser().resolve()


ADDRESS_HELP = (
    "Ray cluster address; default: attach to the cluster under `ray submit` (or when RAY_ADDRESS is "
    "set), else start a private local Ray; 'auto': attach to a cluster made with `ray start` on this "
    "machine; 'local': always start one"
)


def add_job_subcommand(
    sub: argparse._SubParsersAction, name: str, help: str, description: str | None,
    add_arguments: AddArguments, func: Callable[[argparse.Namespace], int],
) -> argparse.ArgumentParser:
    """``xmr <name>``: a subcommand with the same flags as the job script (``add_arguments``)."""
    p = sub.add_parser(name, help=help, description=description,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p)
    p.set_defaults(func=func)
    return p


def job_script_parser(
    prog: str, description: str | None, add_arguments: AddArguments
) -> argparse.ArgumentParser:
    """The parser of a thin script in jobs/ (``prog`` is its file name)."""
    p = argparse.ArgumentParser(prog=prog, description=description,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p)
    return p


def add_address_argument(group: argparse._ArgumentGroup) -> None:
    group.add_argument("--address", default=None, help=ADDRESS_HELP)


def add_verbose_argument(p: argparse.ArgumentParser) -> None:
    """``--verbose``: the libraries' own logs too (the command calls ``distributed.logs.set_verbose``)."""
    p.add_argument("--verbose", action="store_true", help=VERBOSE_HELP)


RUN_URI_HELP = ("MLflow URI (default: sqlite:///<abs working dir>/mlflow.db, one store for runs and sweeps; "
                "--resume: the run's own; http://... on a cluster)")


def add_tracking_arguments(
    p: argparse.ArgumentParser,
    uri_help: str = RUN_URI_HELP,
    experiment_default: str | None = "scalable_xmr",
    experiment_help: str = "MLflow experiment name",
    progress: bool = True,
) -> None:
    t = p.add_argument_group("tracking")
    t.add_argument("--tracking-uri", default=None, help=uri_help)
    t.add_argument("--experiment", default=experiment_default, help=experiment_help)
    t.add_argument("--no-tracking", action="store_true", help="do not log to MLflow")
    if progress:
        t.add_argument("--no-progress", action="store_true", help="no live progress bars")


def run_job(parser: argparse.ArgumentParser, func: Callable[[argparse.Namespace], int],
            argv: list[str] | None) -> int:
    """Parse ``argv`` and run ``func`` with the one-line error handling of ``xmr``."""

    args = parser.parse_args(argv)

    def checked() -> int:
        check_submission_paths(args)
        return func(args)

    return run_cli(checked)


def print_run_footer(run_dir: str, tracking: str, seconds: float, metrics_file: bool = False) -> None:
    """The last lines of a training job: where the run, its plots and its MLflow run are."""
    print(f"run directory : {run_dir}")
    if metrics_file:
        print(f"metrics       : {os.path.join(run_dir, 'metrics.json')}")
    print(f"plots         : {os.path.join(run_dir, 'plots')}")
    print(f"MLflow        : {tracking}")
    print(f"wall time     : {seconds:.1f} s")

"""Flags shared by every job (cluster address, MLflow tracking), written once so they read alike."""

from __future__ import annotations

import argparse

ADDRESS_HELP = (
    "Ray cluster address; default: attach to the cluster under `ray submit` (or when RAY_ADDRESS is "
    "set), else start a private local Ray; 'auto': attach to a cluster made with `ray start` on this "
    "machine; 'local': always start one"
)


def add_address_argument(group: argparse._ArgumentGroup) -> None:
    group.add_argument("--address", default=None, help=ADDRESS_HELP)


RUN_URI_HELP = "MLflow URI (default: sqlite:///<abs parent of --run>/mlflow.db; http://... on a cluster)"


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

"""Adding one modality to a trained SDML run vs retraining the whole run with it (SDML Table 7).

    .venv/bin/python bench/add_modality.py                    # full-size data, 10 epochs, add 3d
    .venv/bin/python bench/add_modality.py --modality video   # another modality to add
    .venv/bin/python bench/add_modality.py --quick            # tiny data, a smoke test (numbers meaningless)

Data: SYNTHETIC XMedia-shaped (``make_synthetic_xmedia(scale="full")``: SDML Table 1 shapes, random
content; training time does not depend on content). Everything runs in one process on one local Ray:

1. train the base run: every modality except M, parallel actors (untimed setup, reported);
2. time ``add_modalities``: M alone, one actor, its pairs scored from stored embeddings, plots;
3. time ``train_sdml`` from scratch on all modalities (M included, parallel actors = SDML-3).

Both timed jobs are whole jobs (validation, actor start-up, training, evaluation, plots, run store);
MLflow is off for both (``--tracking`` turns it on for both). The paper reports 75.04%-99.75% less
training time for a new modality than retraining the multimodal baselines (MvDN, MvLDAN) on
everything; here the retrain is SDML itself, which is already parallel, so the saving reflects
the work skipped (the other modalities' networks), shared out over the same CPU cores.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

from _common import machine_info, print_info, print_table

from scalable_xmr.config import SDMLConfig, TrackingConfig
from scalable_xmr.data.modality.synthetic import MODALITIES, make_synthetic_xmedia
from scalable_xmr.distributed.cluster import connect, describe_cluster
from scalable_xmr.sdml.extend import AddRequest, add_modalities
from scalable_xmr.sdml.job import TrainRequest, train_sdml


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--modality", default="3d", choices=MODALITIES, help="the modality to add (3d)")
    p.add_argument("--scale", default="full", choices=("full", "small"), help="synthetic data size (full)")
    p.add_argument("--epochs", type=int, default=10, help="training epochs of every modality (10)")
    p.add_argument("--dim", type=int, default=512, help="common-space dimension d (512, the paper's)")
    p.add_argument("--hidden", type=int, default=1024, help="hidden width of each network (1024)")
    p.add_argument("--batch-size", type=int, default=100, help="batch size (100)")
    p.add_argument("--workdir", default=None, help="where data and runs go (default: a temp dir, removed)")
    p.add_argument("--tracking", action="store_true", help="log both jobs to MLflow (sqlite in workdir)")
    p.add_argument("--quick", action="store_true", help="small data, 2 epochs, d 32, hidden 64")
    args = p.parse_args(argv)
    if args.quick:
        args.scale, args.epochs, args.dim, args.hidden, args.batch_size = "small", 2, 32, 64, 20
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="xmr-bench-add-"))
    data = work / f"synthetic-xmedia-{args.scale}"
    if not (data / "dataset.json").is_file():
        make_synthetic_xmedia(str(data), scale=args.scale, seed=0)
    cfg = SDMLConfig(dim=args.dim, hidden=args.hidden, epochs=args.epochs, batch_size=args.batch_size,
                     checkpoint_every=max(args.epochs, 1))
    tracking = TrackingConfig(f"sqlite:///{work}/mlflow.db", "bench-add") if args.tracking else \
        TrackingConfig(enabled=False)
    machine = [r for r in machine_info(threads=0) if r[0] != "torch threads"]  # load before we start
    connect("local")  # prints where it runs
    others = tuple(m for m in MODALITIES if m != args.modality)
    common = dict(dataset_uri=str(data), sdml=cfg, tracking=tracking, show_progress=False, overwrite=True)

    t0 = time.perf_counter()
    base = train_sdml(TrainRequest(run_dir=str(work / "base"), modalities=others, **common))
    base_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    added = add_modalities(AddRequest(base.run_dir, (args.modality,), dataset_uri=str(data),
                                      show_progress=False, tracking=None if args.tracking else tracking))
    add_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    full = train_sdml(TrainRequest(run_dir=str(work / "full"), modalities=MODALITIES, **common))
    full_s = time.perf_counter() - t0

    print_info("machine", [*machine, ("ray", describe_cluster()),
                           ("data", f"{data.name} (SYNTHETIC)"),
                           ("config", f"epochs {cfg.epochs}, d {cfg.dim}, hidden {cfg.hidden}, "
                                      f"batch {cfg.batch_size}")])

    def row(name, summary, wall):
        train = [r.train_seconds for r in summary.results.values()]
        return (name, f"{wall:.1f}", f"{max(train):.1f}", f"{sum(train):.1f}",
                len(summary.metrics.map), f"{summary.metrics.map_mean:.4f}")

    print_table(f"add {args.modality} vs retrain all {len(MODALITIES)} (wall seconds of the whole job)",
                ("job", "wall s", "train s (slowest actor)", "train s (all actors)", "pairs", "mAP mean"),
                [row(f"base run: {', '.join(others)} (setup)", base, base_s),
                 row(f"add {args.modality} to the base run", added, add_s),
                 row(f"retrain all: {', '.join(MODALITIES)}", full, full_s)])
    saving = 100 * (1 - add_s / full_s)
    train_saving = 100 * (1 - sum(r.train_seconds for r in added.results.values())
                          / sum(r.train_seconds for r in full.results.values()))
    print(f"\nadding {args.modality} takes {saving:.1f}% less wall time than retraining all "
          f"{len(MODALITIES)} modalities ({train_saving:.1f}% less actor training time; "
          f"paper Table 7: 75.04%-99.75% less vs multimodal baselines)")
    if not args.workdir:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

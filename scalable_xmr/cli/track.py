"""``xmr track``: log a finished run to MLflow from its run store alone.

For a run whose tracking failed during the job (the server went away: the job finished, warned and
said so in its footer), or that was trained with ``--no-tracking``. The run gets the params,
per-modality (per-member) child runs, metrics and artifacts the job logs, and run.json then points
at its parent run. A run has at most one parent run per tracking store: if the parent run.json
records is in the store, the run is completed in it (or, already complete, left as it is: one line
says so); a run tracked in another store gets a new parent in this one. The run's files other than
run.json are only read.

    xmr track --run runs/sdml-x
    xmr track --run runs/sdml-x --tracking-uri http://127.0.0.1:5000 --experiment xmedia
"""

from __future__ import annotations

import argparse

from scalable_xmr.store.run_store import RunStore


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("track", help="log a finished run to MLflow from its run store (e.g. after "
                       "the tracking server was down)", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", metavar="DIR", required=True, help="a finished run directory (SDML or branch)")
    p.add_argument("--tracking-uri", default=None,
                   help="MLflow URI (default: the one run.json recorded, else "
                   "sqlite:///<abs working dir>/mlflow.db)")
    p.add_argument("--experiment", default=None,
                   help="MLflow experiment name (default: the one run.json recorded, else scalable_xmr)")
    p.set_defaults(func=run_track)


def run_track(args: argparse.Namespace) -> int:
    from scalable_xmr.branch.job import RECORDS as BRANCH
    from scalable_xmr.runs.track import log_finished_run
    from scalable_xmr.sdml.job import RECORDS as SDML

    store = RunStore(args.run)
    records = SDML if store.read().kind == "sdml" else BRANCH
    outcome = log_finished_run(store, args.tracking_uri, args.experiment, records)
    print(outcome.line(store.uri))
    return 0
